"""Export of sliced programs (:mod:`engine.contract.slicing`): the pieces :func:`engine.nn.export.to_torch_source`
adds when a memory budget makes it slice W's generation.

The generated module gets fixed helper code (:data:`HELPERS`, the same algorithm as :mod:`engine.nn.sliced`: the
region slice by slice into one preallocated ``Wt``, recomputed per slice in backward) and one constant, ``SLICING``:
the region's steps, its inputs and how each is cut, as a plain-data literal (:func:`engine.nn.export._lit`), so no
string of the design can become code here either. Activations are looked up in ``SLICE_ACTIVATIONS``, printed from
the registry's checked sources.
"""
from __future__ import annotations

from typing import Any

from engine.contract.program import Program

HELPERS = '''\
def _slice_parts(spec):
    """Each slice as {index: (start, length)}, the first sliced index varying slowest."""
    parts = [{}]
    for index, chunks, block in spec["legs"]:
        parts = [{**p, index: (k * block, block)} for p in parts for k in range(chunks)]
    return parts


def _cut(t, indices, part):
    """t (its indices listed) narrowed to one slice; an index cut into single entries is selected (dropped)."""
    indices = list(indices)
    for index, (start, length) in part.items():
        if index in indices:
            k = indices.index(index)
            if length == 1:
                t = t.select(k, start)
                indices.pop(k)
            else:
                t = t.narrow(k, start, length)
    return t


def _run_slice(spec, inputs, part):
    """One slice of the sliced steps: narrowed (contiguous) cores, then the steps in order."""
    env = {}
    for name, value, cut in zip(spec["inputs"], inputs, spec["narrowed"]):
        env[name] = _cut(value, cut, part).clone(memory_format=torch.contiguous_format) if cut is not None else value
    for output, args, equation, act, frees in spec["steps"]:
        v = torch.einsum(equation, *[env[a] for a in args]) if equation else env[args[0]]
        if act is not None:
            v = SLICE_ACTIVATIONS[act](v.reshape(-1)).view(v.shape)
        env[output] = v
        for name in frees:
            env.pop(name, None)
    return env[spec["output"]]


class SlicedGeneration(torch.autograd.Function):
    """Wt slice by slice into one buffer without autograd; each slice recomputed in backward (a memory budget)."""

    @staticmethod
    def forward(ctx, spec, *inputs):
        ref = inputs[0]
        make = torch.zeros if spec["summed"] else torch.empty
        wt = make(spec["shape"], dtype=ref.dtype, device=ref.device)
        with torch.no_grad():
            for part in _slice_parts(spec):
                piece = _run_slice(spec, inputs, part)
                block = _cut(wt, spec["out_indices"], part)
                if spec["summed"]:
                    block.add_(piece)
                else:
                    block.copy_(piece)
                del piece
        ctx.spec = spec
        ctx.save_for_backward(*inputs)
        return wt

    @staticmethod
    def backward(ctx, grad):
        spec = ctx.spec
        needs = ctx.needs_input_grad[1:]
        leaves = [t.detach().requires_grad_(n) for t, n in zip(ctx.saved_tensors, needs)]
        wanted = [t for t, n in zip(leaves, needs) if n]
        acc = [None] * len(wanted)
        for part in _slice_parts(spec):
            with torch.enable_grad():
                piece = _run_slice(spec, leaves, part)
            g = _cut(grad, spec["out_indices"], part).clone(memory_format=torch.contiguous_format)
            got = torch.autograd.grad(piece, wanted, g, allow_unused=True)
            del piece, g
            for k, v in enumerate(got):
                if v is not None:
                    acc[k] = v if acc[k] is None else acc[k].add_(v)
        it = iter(acc)
        return (None, *[next(it) if n else None for n in needs])'''


def slicing_spec(prog: Program) -> dict[str, Any]:
    """The ``SLICING`` constant of an exported module: plain data (names, indices, equations, sizes)."""
    sl = prog.slicing
    sub = sl.sub
    steps = []
    for op, inputs, output, arg, activation, _, frees in sub.plan:
        steps.append((output, tuple(inputs), arg if isinstance(arg, str) else None, activation, tuple(frees)))
    narrowed = [tuple(prog.cores[i[5:]]) if i in sl.narrowed else None for i in sl.inputs]
    return {"inputs": [sl.input_name(i) for i in sl.inputs], "narrowed": narrowed, "steps": steps,
            "output": sl.output, "out_indices": tuple(sl.out_indices),
            "shape": [prog.dims[i] for i in sl.out_indices],
            "legs": tuple((i, c, sl.block(i)) for i, c in sl.legs), "summed": bool(sl.summed)}


def activations_used(prog: Program) -> list[str]:
    """Names of the activations the sliced steps apply (sorted)."""
    return sorted({s.activation for s in prog.slicing.sub.steps if s.activation is not None})
