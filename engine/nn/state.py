"""Checks of state dicts read from files (weights files, run checkpoints) before any layer uses them."""
from __future__ import annotations

from typing import Any, Mapping

from engine.format import clip_middle


def state_problem(state: Mapping[Any, Any]) -> str | None:
    """Why a state dict read from a file cannot serve as a layer's weights (None when it can): an entry that is not a
    tensor (torch loads ints and lists with ``weights_only=True`` too), a complex tensor, or NaN / infinite values
    (a run that diverged), each named with its key."""
    import torch

    floats = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
    plain = floats | {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
    for key, value in state.items():
        name = clip_middle(repr(key))
        if not isinstance(key, str):
            return f"its key {name} is a {type(key).__name__}, not a parameter name"
        if not isinstance(value, torch.Tensor):
            return f"its entry {name} is a {type(value).__name__}, not a tensor"
        if value.is_complex():
            return f"its entry {name} is complex ({value.dtype}): a layer's weights are real"
        if value.layout != torch.strided or value.is_quantized or value.dtype not in plain:
            return (f"its entry {name} is a {str(value.layout).removeprefix('torch.')} tensor of "
                    f"{str(value.dtype).removeprefix('torch.')}: weights are dense float, integer or bool tensors")
        if value.dtype in floats and value.numel() and not bool(torch.isfinite(value).all()):
            return f"its entry {name} holds NaN or infinite values (did the run diverge?)"
    return None
