"""The activation registry: every registered activation resolves to a torch function, its ``saves`` is what
autograd really keeps for backward, and every layer reads the registry (names, export spelling, memory model)."""
from __future__ import annotations

import pytest
import torch

from engine.design.activations import ACTIVATIONS, Activation, register_activation
from engine.nn.activations import ACTIVATION_FNS, resolve_source

NAMES = sorted(ACTIVATIONS)


def _saved(fn, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``fn(x)`` and the tensors autograd saved for its backward."""
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return y, saved


@pytest.mark.parametrize("name", NAMES)
def test_registered_activation_runs_and_saves_what_the_registry_says(name):
    act = ACTIVATIONS[name]
    raw = resolve_source(act.source)
    assert callable(raw) and name in ACTIVATION_FNS
    x = torch.randn(6, 5, 7, dtype=torch.float64, requires_grad=True)
    y, saved = _saved(ACTIVATION_FNS[name], x)  # the engine's (flattening) wrapper, as programs run it
    torch.testing.assert_close(y, raw(x))  # elementwise: flattening changes nothing
    ptr = {t.untyped_storage().data_ptr() for t in saved}
    x_kept, y_kept = x.untyped_storage().data_ptr() in ptr, y.untyped_storage().data_ptr() in ptr
    assert x_kept != y_kept, f"{name} saves {'both' if x_kept else 'neither'} of input and output"
    assert act.saves == ("input" if x_kept else "output")
    negatives = -torch.logspace(-6, 3, 200, dtype=torch.float64)
    assert act.zero_below == bool((raw(negatives) == 0).all())  # what the export's dead-W check relies on


def test_names_and_export_spelling_come_from_the_registry():
    from engine.design.model import ACTIVATIONS as NAMES_IN_DESIGNS
    from engine.design.templates import make_template
    from engine.nn.export import to_torch_source

    assert NAMES_IN_DESIGNS == tuple(ACTIVATIONS)
    src = to_torch_source(make_template("mera", 256, 256, 3, activation="silu"))
    assert f"{ACTIVATIONS['silu'].source}(" in src


def test_register_activation_checks_its_arguments():
    with pytest.raises(ValueError, match="already registered"):
        register_activation("relu", "F.relu", "output")
    with pytest.raises(ValueError, match="source"):
        register_activation("my_act", "__import__('os').system", "input")
    with pytest.raises(ValueError, match="saves"):
        register_activation("my_act", "torch.erf", "both")  # type: ignore[arg-type]
    assert "my_act" not in ACTIVATIONS
    assert isinstance(ACTIVATIONS["gelu"], Activation) and ACTIVATIONS["gelu"].source == "F.gelu"


def test_resolve_source_looks_names_up_without_eval():
    assert resolve_source("F.gelu") is torch.nn.functional.gelu
    assert resolve_source("torch.sin") is torch.sin
    with pytest.raises(ValueError):
        resolve_source("os.system")
    with pytest.raises(AttributeError):
        resolve_source("torch.no_such_function")
