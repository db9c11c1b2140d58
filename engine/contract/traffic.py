"""Memory traffic: bytes the steps of a program read and write, forward and for a training step (no torch).

Elementwise activations over W x chi^k intermediates, operand copies and layouts cost time that FLOPs do not show
(a 4096 x 4096 gelu MERA has 1.19x nn.Linear's FLOPs and takes several times its time). This module counts, per
step as the torch engine runs it: an einsum reads its operands and writes its result, plus a read and a write of
every operand copy torch makes (:func:`engine.contract.memory.replay`'s ``copies``); an activation reads and
writes its tensor; a reshape that copies reads and writes it. Backward, per einsum step and per input needing a
gradient: the incoming gradient and the other operand are read and the input's gradient written; an activation's
backward reads the gradient and what it saved and writes a gradient. A sliced program (:mod:`engine.contract.
slicing`) reads its shared inputs once per slice, writes each slice's block of W, and recomputes its region in
backward. It is a count of bytes touched, not of DRAM transfers: what stays in cache (a small slice) costs less.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.contract.flops import grad_operands
from engine.contract.program import Program


@dataclass(frozen=True)
class Traffic:
    """Bytes read plus written by a program's steps."""

    forward_bytes: int
    train_bytes: int  # forward + backward (+ a sliced region's recomputation) + Adam's update of the parameters

    def to_dict(self) -> dict[str, int]:
        return {"forward_bytes": self.forward_bytes, "train_bytes": self.train_bytes}


def _sizes(prog: Program) -> dict[str, int]:
    out = {f"core:{c}": _prod(prog, ix) for c, ix in prog.cores.items()}
    out["x"] = prog.batch * prog.in_features
    for s in prog.steps:
        out[s.output] = s.size
    return out


def _prod(prog: Program, ix) -> int:
    n = 1
    for i in ix:
        n *= prog.dims[i]
    return n


def _elements(prog: Program, input_grad: bool) -> tuple[int, int]:
    """(forward, backward) elements touched by ``prog``'s steps (no slicing)."""
    from engine.contract.memory import replay

    size = _sizes(prog)
    grad = grad_operands(prog, input_grad)
    fwd = 2 * replay(prog).copies
    bwd = 0
    for s in prog.steps:
        if s.op == "reshape":
            continue
        ins = [size[i] for i in s.inputs]
        fwd += sum(ins) + s.size
        if s.activation is not None:
            fwd += 2 * s.size
            if s.output in grad:
                bwd += 3 * s.size
        if len(s.inputs) == 2:
            for k, i in enumerate(s.inputs):
                if i in grad:
                    bwd += s.size + ins[1 - k] + ins[k]
        elif s.inputs[0] in grad and len(s.in_indices[0]) != len(s.out_indices):
            bwd += s.size + ins[0]
    return fwd, bwd


def traffic(prog: Program, itemsize: int, params: int, input_grad: bool = False) -> Traffic:
    """Bytes read plus written by ``prog`` forward, and by a training step (module docstring)."""
    sl = getattr(prog, "slicing", None)
    fwd, bwd = _elements(prog if sl is None else _unsliced(prog), input_grad)
    if sl is not None:  # the region's forward per slice (shared inputs read by every slice), again in backward
        sub_fwd, _ = _elements(sl.sub, False)
        region_once = sum(_elements_step(prog, n) for n in sl.region)
        wt = _prod(prog, sl.out_indices)
        extra = sl.count * sub_fwd - region_once + (3 if sl.summed else 2) * wt
        fwd += extra
        bwd += sl.count * sub_fwd + wt  # recomputed, and each slice's block of dL/dWt copied
    adam = 7 * params  # read parameter, gradient and two moments; write parameter and moments
    return Traffic(fwd * itemsize, (fwd + bwd + adam) * itemsize)


def _elements_step(prog: Program, n: int) -> int:
    s = prog.steps[n]
    size = _sizes(_unsliced(prog))
    return sum(size[i] for i in s.inputs) + s.size + (2 * s.size if s.activation else 0)


def _unsliced(prog: Program) -> Program:
    """``prog`` with its region's steps at full size (the slicing's totals are what the unsliced program does)."""
    import dataclasses
    import math

    sl = prog.slicing
    if sl is None:
        return prog
    steps = list(prog.steps)
    for n in sl.region:
        s = steps[n]
        steps[n] = dataclasses.replace(s, size=math.prod(prog.dims[i] for i in s.out_indices))
    return dataclasses.replace(prog, steps=steps, slicing=None)
