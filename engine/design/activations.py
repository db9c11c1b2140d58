"""Elementwise activations: the one registry every layer reads (no torch).

Adding an activation is one :func:`register_activation` call below. From it the design format takes the name
(:data:`engine.design.model.ACTIVATIONS`), the torch engine resolves its function from ``source``
(:mod:`engine.nn.activations`), the exporter prints ``source``, and the memory model keeps what its backward reads
(``saves``). The published JSON Schema (``engine/assets/design.schema.json``) lists the names too; a test checks
that it agrees with this registry, and that every ``saves`` matches what autograd really keeps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.types import Saves

SOURCE_NAMESPACES = ("torch", "F")  # module-level names of exported code (F is torch.nn.functional)
_SOURCE = re.compile(r"^(torch|F)(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class Activation:
    """One activation: its name in designs, its spelling in exported code and what its backward reads."""

    name: str
    source: str  # e.g. "F.gelu" or "torch.sin", as exported code spells it (called on one tensor)
    saves: Saves  # "input": autograd keeps the pre-activation for backward; "output": the activated tensor
    doc: str = ""
    zero_below: bool = False  # exactly 0 for every negative input: a draw of the cores can give a W of zeros


ACTIVATIONS: dict[str, Activation] = {}


def register_activation(name: str, source: str, saves: Saves, doc: str = "", zero_below: bool = False) -> Activation:
    """Add an activation to the registry (names are unique); returns it.

    Register new activations in this module: :data:`engine.design.model.ACTIVATIONS` (the names designs may use)
    is read from the registry when :mod:`engine.design.model` is first imported.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"activation name {name!r}: use lowercase letters, digits and underscores")
    if name in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is already registered")
    if not _SOURCE.match(source):
        raise ValueError(f"activation source {source!r}: spell it as torch.<name> or F.<name>")
    if saves not in ("input", "output"):
        raise ValueError(f"saves must be 'input' or 'output', got {saves!r}")
    act = ACTIVATIONS[name] = Activation(name, source, saves, doc, zero_below)
    return act


def activation(name: str) -> Activation:
    """The registered activation ``name`` (``KeyError`` listing the known names otherwise)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise KeyError(f"unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})") from None


register_activation("relu", "F.relu", "output", "max(x, 0)", zero_below=True)
register_activation("gelu", "F.gelu", "input", "Gaussian error linear unit (exact erf form)")
register_activation("tanh", "torch.tanh", "output", "hyperbolic tangent")
register_activation("sigmoid", "torch.sigmoid", "output", "logistic sigmoid")
register_activation("silu", "F.silu", "input", "x * sigmoid(x) (swish)")
register_activation("elu", "F.elu", "input", "exponential linear unit (alpha 1)")
register_activation("softplus", "F.softplus", "input", "log(1 + exp(x))")
register_activation("leaky_relu", "F.leaky_relu", "input", "max(x, 0.01 x)")
register_activation("sin", "torch.sin", "input", "sine")
