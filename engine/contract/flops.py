"""The FLOP rule of one pairwise step, written once: the program's steps, the path search and the scaling read it.

FLOPs follow what ``torch.einsum`` runs (and ``torch.utils.flop_counter`` counts): a pairwise step is one batched
matmul costing ``2 x`` the product of its index dimensions, except that an index summed in only one operand is
summed out beforehand (free), and a step with no summed index of size > 1 is an elementwise product (free). The
backward pass costs one such contraction per step input that needs a gradient.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, AbstractSet, Mapping, Sequence

if TYPE_CHECKING:
    from engine.contract.program import Program


def flop_indices(a: AbstractSet[str], b: AbstractSet[str], out: AbstractSet[str],
                 dims: Mapping[str, int]) -> AbstractSet[str] | None:
    """The indices whose sizes multiply to half the FLOPs of contracting ``a`` with ``b`` into ``out``.

    ``None`` when the step is free (no index of size > 1 summed between the two operands); otherwise every index
    of either operand except those summed in one operand only: the shared ones and the output's (``out`` is a
    subset of ``a | b``, as in any einsum). The path search calls this for every pair it scores: keep it lean.
    """
    shared = a & b
    for i in shared:
        if dims[i] > 1 and i not in out:  # a summed index: one batched matmul
            return shared | out
    return None


def pair_flops(a: AbstractSet[str], b: AbstractSet[str], out: AbstractSet[str], dims: Mapping[str, int]) -> int:
    """FLOPs of contracting ``a`` with ``b`` into ``out`` (index sets), by :func:`flop_indices`."""
    counted = flop_indices(a, b, out, dims)
    if counted is None:
        return 0
    f = 2
    for i in counted:
        f *= dims[i]
    return f


def einsum_flops(in_indices: Sequence[Sequence[str]], out_indices: Sequence[str], dims: Mapping[str, int]) -> int:
    """FLOPs of one ``torch.einsum`` step with one or two operands (one operand: a free permutation or sum)."""
    if len(in_indices) < 2:
        return 0
    if len(in_indices) > 2:
        raise ValueError("program steps contract at most two operands")
    return pair_flops(set(in_indices[0]), set(in_indices[1]), set(out_indices), dims)


def grad_operands(prog: Program, input_grad: bool = True) -> set[str]:
    """Operand names that require a gradient: trainable cores, x (with ``input_grad``) and what they feed (of a
    linear or a conv program)."""
    grad = {f"core:{c}" for c in prog.cores if c not in prog.fixed_cores}
    if input_grad:
        grad.add("x")
    for s in prog.steps:
        if any(i in grad for i in s.inputs):
            grad.add(s.output)
    return grad


def backward_flops(prog: Program, input_grad: bool = True) -> int:
    """FLOPs of the backward pass: for each step, one contraction as costly as the step per input needing a gradient.

    ``x`` needs a gradient when the layer sits after another trainable layer (``input_grad``). A sliced program
    (:mod:`engine.contract.slicing`) also recomputes its region's forward steps in backward.
    """
    grad = grad_operands(prog, input_grad)
    total = sum(s.flops * sum(i in grad for i in s.inputs) for s in prog.steps if s.op == "einsum")
    sliced = getattr(prog, "slicing", None)
    if sliced is not None and any(i in grad for i in sliced.inputs):  # each slice's forward runs again in backward
        total += sum(prog.steps[n].flops for n in sliced.region)
    return total
