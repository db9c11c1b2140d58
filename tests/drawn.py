"""Hypothesis strategies for random designs as a user might draw them (the fuzz tests' inputs), and the one-thread
setting those tests measure under."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from hypothesis import strategies as st

ACTIVATIONS = ("gelu", "relu", "tanh", "sigmoid", "silu")


def _drawn(draw, tensors: tuple[int, int], nonlinear: bool) -> dict:
    """A random connected design: tensors on a random spanning tree plus up to two more bonds (loops), 1-3 in and
    out legs on random tensors, every dimension 2-4, indices in random order; ``nonlinear``: a random evaluation
    order and an activation on about half the tensors (not the last)."""
    n = draw(st.integers(*tensors))
    legs: dict[int, list[str]] = {k: [] for k in range(n)}
    indices: dict[str, dict] = {}
    pairs = [(k, draw(st.integers(0, k - 1))) for k in range(1, n)]
    pairs += draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1]),
                           max_size=2))
    for b, (u, v) in enumerate(pairs):
        indices[f"b{b}"] = {"dim": draw(st.integers(2, 4)), "role": "bond"}
        legs[u].append(f"b{b}")
        legs[v].append(f"b{b}")
    features = {}
    for role in ("in", "out"):
        features[role] = 1
        for a in range(draw(st.integers(1, 3))):
            dim = draw(st.integers(2, 4))
            indices[f"{role[0]}{a}"] = {"dim": dim, "role": role, "axis": a}
            legs[draw(st.integers(0, n - 1))].append(f"{role[0]}{a}")
            features[role] *= dim
    order = draw(st.permutations(range(n))) if nonlinear else None
    tensors_ = []
    for k in range(n):
        t = {"id": f"T{k}", "indices": draw(st.permutations(legs[k]))}
        if nonlinear:
            t["activation"] = draw(st.sampled_from((None,) + ACTIVATIONS)) if k != order[-1] else None
        tensors_.append(t)
    design = {"format": "tnstudio-design", "version": 1, "name": "drawn",
              "target": {"kind": "linear", "in_features": features["in"], "out_features": features["out"]},
              "indices": indices, "tensors": tensors_}
    if nonlinear:
        design["order"] = [f"T{k}" for k in order]
    return design


@st.composite
def linear_drawn(draw) -> dict:
    """A random linear design of 2-5 tensors (see :func:`_drawn`)."""
    return _drawn(draw, (2, 5), nonlinear=False)


@st.composite
def nonlinear_drawn(draw) -> dict:
    """A random nonlinear design of 3-6 tensors (see :func:`_drawn`)."""
    return _drawn(draw, (3, 6), nonlinear=True)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside, as the ``one_thread`` fixture sets it (hypothesis runs a function-scoped fixture
    only once for all its examples, so the fuzz tests set it themselves)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def all_offset_design(i: int, activation: str | None) -> dict:
    """A design CI's run drew (`test_modules`): T1's relu zeroes one of T3's two bond values, so W = c * M with
    mean(M) != 0 and removing the mean left rounding (1e-17 of W), which the std rescaling made 1e16-sized cores
    (before, for both). About 1 in 15 draws of its cores give a W of zeros (the relu's inputs all negative)."""
    return {"format": "tnstudio-design", "version": 1, "name": f"all offset {i}",
            "target": {"kind": "linear", "in_features": 2, "out_features": 2},
            "indices": {"b0": {"dim": 2, "role": "bond"}, "b1": {"dim": 2, "role": "bond"},
                        "b2": {"dim": 2, "role": "bond"}, "i0": {"dim": 2, "role": "in", "axis": 0},
                        "o0": {"dim": 2, "role": "out", "axis": 0}},
            "tensors": [{"id": "T0", "indices": ["b0", "b1", "b2"], "activation": activation},
                        {"id": "T1", "indices": ["b0"], "activation": "relu"},
                        {"id": "T2", "indices": ["b1", "i0", "o0"], "activation": None},
                        {"id": "T3", "indices": ["b2"], "activation": None}],
            "order": ["T0", "T1", "T2", "T3"]}
