"""Checks of state dicts read from files (weights files, run checkpoints) before any layer uses them."""
from __future__ import annotations

from typing import Any, Mapping

from engine.format import clip_middle


def state_problem(state: Mapping[Any, Any]) -> str | None:
    """Why a state dict read from a file cannot serve as a layer's weights (None when it can): an entry that is not a
    tensor (torch loads ints and lists with ``weights_only=True`` too), a complex tensor, or NaN / infinite values
    (a run that diverged), each named with its key."""
    import torch

    for key, value in state.items():
        name = clip_middle(repr(key))
        if not isinstance(value, torch.Tensor):
            return f"its entry {name} is a {type(value).__name__}, not a tensor"
        if value.is_complex():
            return f"its entry {name} is complex ({value.dtype}): a layer's weights are real"
        if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
            return f"its entry {name} holds NaN or infinite values (did the run diverge?)"
    return None
