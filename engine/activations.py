"""Elementwise activations by name: torch functions for execution, source text for exported code."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu,
    "elu": F.elu, "softplus": F.softplus, "leaky_relu": F.leaky_relu, "sin": torch.sin,
}

# how exported code spells each activation (module-level names available there: torch, F)
ACTIVATION_SOURCE: dict[str, str] = {
    "relu": "F.relu", "gelu": "F.gelu", "tanh": "torch.tanh", "sigmoid": "torch.sigmoid", "silu": "F.silu",
    "elu": "F.elu", "softplus": "F.softplus", "leaky_relu": "F.leaky_relu", "sin": "torch.sin",
}
