"""The nonlinear evaluation semantics, fragment by fragment (for spectra and bond features).

Tensors are absorbed in :meth:`Design.evaluation_order`: absorbing ``v`` merges ``v`` with every fragment that
shares an index with it, then applies ``v``'s activation (as :mod:`engine.design.model` defines and
:mod:`engine.contract.program` compiles). :func:`absorb` runs that on torch tensors and reports each absorption, so
callers can look at exactly what a tensor receives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from engine.design.model import Design


@dataclass(frozen=True)
class Fragment:
    """A contracted piece of the network: its value, index names (one per axis) and the tensors merged into it."""

    value: torch.Tensor
    indices: tuple[str, ...]
    members: tuple[str, ...]


def contract(operands: Sequence[tuple[torch.Tensor, Sequence[str]]], out: Sequence[str]) -> torch.Tensor:
    """``einsum`` over named indices (opt_einsum picks the pairwise order)."""
    import opt_einsum as oe

    names = list(dict.fromkeys([i for _, ix in operands for i in ix] + list(out)))
    sym = {i: oe.get_symbol(k) for k, i in enumerate(names)}
    eq = ",".join("".join(sym[i] for i in ix) for _, ix in operands) + "->" + "".join(sym[i] for i in out)
    return oe.contract(eq, *[v for v, _ in operands], backend="torch")


def last_activation(design: Design) -> int:
    """Position in the evaluation order of the last tensor with an activation (-1 for a linear design)."""
    order = design.evaluation_order()
    return max((k for k, tid in enumerate(order) if design.tensor(tid).activation), default=-1)


Observer = Callable[[str, list[Fragment]], None]


def absorb(design: Design, cores: Mapping[str, torch.Tensor], stop: int | None = None,
           observe: Observer | None = None, merge_last: bool = True) -> list[Fragment]:
    """Absorb the first ``stop`` tensors of the evaluation order (all by default).

    ``observe(tid, fragments)`` is called before each absorption with the fragments ``tid`` is about to merge.
    Returns the fragments made plus the tensors not absorbed (as one-tensor fragments, unactivated): W is a
    multilinear function of these. With ``merge_last=False`` the last absorption is observed but not computed.
    """
    from engine.nn.activations import ACTIVATION_FNS

    order = design.evaluation_order()
    stop = len(order) if stop is None else stop
    remaining = {k: set(v) for k, v in design.users().items()}
    frags: list[Fragment] = []
    for n, tid in enumerate(order[:stop]):
        t = design.tensor(tid)
        for i in t.indices:
            remaining[i].discard(tid)
        own = set(t.indices)
        touching = [f for f in frags if own & set(f.indices)]
        frags = [f for f in frags if not (own & set(f.indices))]
        if observe is not None:
            observe(tid, touching)
        if n == len(order) - 1 and not merge_last:
            break
        group = [(cores[tid], tuple(t.indices))] + [(f.value, f.indices) for f in touching]
        keep = [i for i in dict.fromkeys(i for _, ix in group for i in ix)
                if remaining.get(i) or design.indices[i].role != "bond"]
        val = contract(group, keep)
        if t.activation is not None:
            val = ACTIVATION_FNS[t.activation](val)
        frags.append(Fragment(val, tuple(keep), tuple(m for f in touching for m in f.members) + (tid,)))
    rest = [Fragment(cores[tid], tuple(design.tensor(tid).indices), (tid,)) for tid in order[stop:]]
    return frags + rest
