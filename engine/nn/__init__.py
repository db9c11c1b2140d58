"""Layer 3, torch: activations, initialisation, the TN modules that run contraction programs, tensorizing dense
models and exporting designs as torch-only code.

The public names load on first use (PEP 562), so code generation (:mod:`engine.nn.export`) and the CLI's option
lists do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {"TNLinear": "engine.nn.linear", "TNConv2d": "engine.nn.conv", "count_parameters": "engine.nn.linear",
           "run_program": "engine.nn.execute", "tensorize": "engine.nn.tensorize"}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'engine.nn' has no attribute {name!r}")
