"""Elementwise activations by name: torch functions for execution, source text for exported code."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _flat(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` applied to the flattened tensor (elementwise, so the same values).

    Generator intermediates have many legs: torch's gelu kernel rejects 13 or more dimensions, and an elementwise
    backward over a many-dimensional gradient that arrives permuted runs up to 40x slower than on one flat
    contiguous buffer (measured: gelu_backward 4.4 s vs 0.2 s on a 67M-entry 10-leg tensor).
    """
    def flat(v: torch.Tensor) -> torch.Tensor:
        return fn(v.reshape(-1)).view(v.shape)

    flat.__name__ = getattr(fn, "__name__", "activation")
    flat.__doc__ = fn.__doc__
    return flat


_BASE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu,
    "elu": F.elu, "softplus": F.softplus, "leaky_relu": F.leaky_relu, "sin": torch.sin,
}
ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {k: _flat(f) for k, f in _BASE.items()}

# how exported code spells each activation (module-level names available there: torch, F)
ACTIVATION_SOURCE: dict[str, str] = {
    "relu": "F.relu", "gelu": "F.gelu", "tanh": "torch.tanh", "sigmoid": "torch.sigmoid", "silu": "F.silu",
    "elu": "F.elu", "softplus": "F.softplus", "leaky_relu": "F.leaky_relu", "sin": "torch.sin",
}
