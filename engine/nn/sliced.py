"""Running a sliced program (:mod:`engine.contract.slicing`): the generation slice by slice, recomputed in backward.

The shared generate steps run once, as in :func:`engine.nn.execute.run_program`. The region (every step that depends
on a sliced index) runs inside :class:`SlicedGeneration`, an autograd function: forward, without autograd, writes
(or, when a sliced bond is summed inside the region, adds) each slice's result into its block of one preallocated
``Wt`` whose memory order is the in legs then the out legs, so ``W`` is a view of it; backward recomputes each slice
under autograd from the saved inputs and back-propagates the slice's block of ``dL/dWt`` through it. This is
``torch.utils.checkpoint`` per slice, without concatenating the slices (which would hold W twice). Every step is
the same ``torch.einsum`` on narrowed operands, so ``FlopCounterMode`` counts what the cost model counts, the
recomputation included.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from engine.contract.program import Program
from engine.nn.execute import run_step

TensorFn = Callable[[torch.Tensor], torch.Tensor]


def _run_slice(prog: Program, env: Mapping[str, torch.Tensor], part: dict[str, tuple[int, int]],
               acts: Mapping[str, TensorFn], until: int | None = None) -> torch.Tensor:
    """One slice of the region: the narrowed cores (contiguous copies), then the sub-program's steps; with
    ``until``, only as far as the region's step ``until`` (an index into ``slicing.region``), whose result is
    returned before its activation."""
    sl = prog.slicing
    sub = sl.sub
    local: dict[str, torch.Tensor] = {}
    for name in sl.inputs:
        t = env[name]
        if name in sl.narrowed:
            t = _cut(t, list(prog.cores[name[5:]]), part).clone(memory_format=torch.contiguous_format)
        local[sl.input_name(name)] = t
    for k, (op, inputs, output, arg, activation, _, frees) in enumerate(sub.plan):
        val = local[inputs[0]] if arg is None else torch.einsum(arg, *[local[i] for i in inputs])
        if k == until:
            return val
        if activation is not None:
            val = acts[activation](val)
        local[output] = val
        for i in frees:
            local.pop(i, None)
    return local[sl.output]


def _cut(t: torch.Tensor, idx: list[str], part: dict[str, tuple[int, int]]) -> torch.Tensor:
    """``t`` (indices ``idx``) narrowed to one slice; an index cut into single entries is selected (dropped), as
    one slice's program (``slicing.sub``) leaves it out."""
    for i, (start, length) in part.items():
        if i in idx:
            k = idx.index(i)
            if length == 1:
                t = t.select(k, start)
                idx.pop(k)
            else:
                t = t.narrow(k, start, length)
    return t


def _block(t: torch.Tensor, prog: Program, part: dict[str, tuple[int, int]]) -> torch.Tensor:
    """The block of ``Wt`` (indices ``slicing.out_indices``) that one slice writes."""
    return _cut(t, list(prog.slicing.out_indices), part)


class SlicedGeneration(torch.autograd.Function):
    """``Wt`` from the region's inputs, slice by slice (module docstring)."""

    @staticmethod
    def forward(ctx, prog: Program, acts: Mapping[str, TensorFn],  # type: ignore[override]
                *inputs: torch.Tensor) -> torch.Tensor:
        sl = prog.slicing
        env = dict(zip(sl.inputs, inputs))
        ref = inputs[0]
        shape = [prog.dims[i] for i in sl.out_indices]
        wt = (torch.zeros if sl.summed else torch.empty)(shape, dtype=ref.dtype, device=ref.device)
        with torch.no_grad():
            for part in sl.slices(prog.dims):
                piece = _run_slice(prog, env, part, acts)
                block = _block(wt, prog, part)
                if sl.summed:
                    block.add_(piece)
                else:
                    block.copy_(piece)
                del piece
        ctx.prog, ctx.acts = prog, acts
        ctx.save_for_backward(*inputs)
        return wt

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        prog: Program = ctx.prog
        sl = prog.slicing
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        leaves = [t.detach().requires_grad_(n) for t, n in zip(saved, needs)]
        env = dict(zip(sl.inputs, leaves))
        wanted = [t for t, n in zip(leaves, needs) if n]
        acc: list[torch.Tensor | None] = [None] * len(wanted)
        for part in sl.slices(prog.dims):
            with torch.enable_grad():
                piece = _run_slice(prog, env, part, ctx.acts)
            g = _block(grad, prog, part).clone(memory_format=torch.contiguous_format)
            got = torch.autograd.grad(piece, wanted, g, allow_unused=True)
            del piece, g
            for k, v in enumerate(got):
                if v is None:
                    continue
                if acc[k] is None:
                    acc[k] = v
                else:
                    acc[k].add_(v)  # type: ignore[union-attr]
                del v
            del got
        it = iter(acc)
        out = [next(it) if n else None for n in needs]
        return (None, None, *out)


def run_shared(program: Program, env: dict[str, torch.Tensor], acts: Mapping[str, TensorFn]) -> None:
    """The generate steps outside the region, once, into ``env`` (which holds the cores as ``core:<id>``)."""
    region = set(program.slicing.region)
    for n, (op, inputs, output, arg, activation, phase, frees) in enumerate(program.plan):
        if n in region or phase != "generate" or op != "einsum":
            continue
        val = env[inputs[0]] if arg is None else torch.einsum(arg, *[env[i] for i in inputs])
        if activation is not None:
            val = acts[activation](val)
        env[output] = val
        del val  # env holds it; a local would keep the last shared intermediate alive until y is made
        for i in frees:  # a shared intermediate the region reads is last read in the region: not freed here
            env.pop(i, None)


@torch.no_grad()
def region_mean_square(program: Program, env: Mapping[str, torch.Tensor], acts: Mapping[str, TensorFn],
                       step: int) -> float:
    """Mean square of the entries of region step ``step``'s result (a program step number; before its activation)
    over every slice, each slice run only as far as that step: what the initialisation's calibration
    (:mod:`engine.nn.init`) measures, without running the rest of every slice. ``env``: after
    :func:`run_shared`."""
    sl = program.slicing
    until = sl.region.index(step)
    total, count = 0.0, 0
    for part in sl.slices(program.dims):
        v = _run_slice(program, env, part, acts, until)
        total += float((v if v.dtype == torch.float64 else v.float()).pow(2).sum(dtype=torch.float64))
        count += v.numel()
        del v
    return total / max(count, 1)


def run_sliced(program: Program, env: dict[str, torch.Tensor], acts: Mapping[str, TensorFn],
               until_weight: bool = False) -> torch.Tensor:
    """Run a sliced materialise program: ``env`` holds the cores (``core:<id>``) and ``x``; returns ``y`` or, with
    ``until_weight``, W."""
    sl = program.slicing
    plan = program.plan
    run_shared(program, env, acts)
    ins = [env[i] for i in sl.inputs]
    wt = SlicedGeneration.apply(program, acts, *ins)
    del ins
    for i in sl.inputs:  # the function keeps what its backward needs
        if not i.startswith("core:"):
            env.pop(i, None)
    w = wt.reshape(program.in_features, program.out_features)
    del wt
    if until_weight:
        return w
    env["W"] = w
    del w
    for op, inputs, output, arg, activation, phase, frees in plan:
        if phase == "apply":
            run_step(env, acts, op, inputs, output, arg, activation, frees)
    return env[program.steps[-1].output]
