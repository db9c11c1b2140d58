"""Export under a memory budget: the engine's plan for every batch and dtype, and the pieces
:func:`engine.nn.export.to_torch_source` adds when a plan slices W's generation (:mod:`engine.contract.slicing`).

The engine plans a budget per power-of-two bucket of batch sizes (:func:`engine.contract.slicing.plan_batch`) and per
bytes per entry; :func:`budget_tables` evaluates those plans for every bucket (1, 2, 4, ..., 2^30, 2^31 - 1) at 2, 4
and 8 bytes, until x, the parameters, their gradients and Adam's state alone exceed the budget (from there on nothing
fits at any larger batch). The module carries them as ``BUDGET_PLANS`` and runs, like the engine, the unbudgeted
choice when it fits at its bucket's largest batch and the bucket's fallback otherwise.

A sliced variant gets fixed helper code (:data:`HELPERS`, the same algorithm as :mod:`engine.nn.sliced`: the region
slice by slice into one preallocated ``Wt``, recomputed per slice in backward) and an entry of ``SLICINGS``: the
region's steps, its inputs and how each is cut, as a plain-data literal (:func:`engine.nn.export._lit`), so no string
of the design can become code here either. Activations are looked up in ``SLICE_ACTIVATIONS``, printed from the
registry's checked sources.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.contract.program import Program, path_batch
from engine.design.model import MAX_DIM, Design

ITEMSIZES = (2, 4, 8)  # bytes per entry the export plans for: float16/bfloat16, float32, float64
BUCKET_TOPS = tuple(min(1 << k, MAX_DIM) for k in range(32))  # 1, 2, 4, ..., 2^30, 2^31 - 1


@dataclass(frozen=True)
class BudgetTables:
    """What a module exported under a memory budget carries (see the module docstring)."""

    budget: int  # bytes of a training step
    plans: dict[int, dict[int, tuple[bool, bool, str | None, int]]]  # itemsize -> bucket top -> (materialise fits,
    # the bucket's stream path fits, the fallback variant or None, the least bytes found)
    weight_plans: dict[int, str | None]  # itemsize -> the variant weight() generates W with (TNLinear.weight)
    sliced: dict[str, Program]  # "sliced_<n>" -> the materialise program sliced that way


def budget_tables(design: Design, mat: Program, stream_by_bucket: dict[int, str], budget: int) -> BudgetTables:
    """The engine's memory-budget plans of ``design`` for every bucket and entry size (``mat``: its materialise
    program; ``stream_by_bucket``: its stream variant per path bucket, empty when it cannot stream)."""
    from engine.contract.memory import ADAM_STATE
    from engine.contract.slicing import budget_plan, slice_program

    sliced: dict[tuple, str] = {}

    def name(choice: tuple[str, tuple] | None, top: int) -> str | None:
        if choice is None:
            return None
        sched, legs = choice
        if legs:
            return sliced.setdefault(legs, f"sliced_{len(sliced) + 1}")
        return "materialise" if sched == "materialise" else stream_by_bucket[path_batch(top)]

    plans: dict[int, dict[int, tuple]] = {}
    weight_plans: dict[int, str | None] = {}
    for itemsize in ITEMSIZES:
        plans[itemsize] = {}
        for top in BUCKET_TOPS:
            if ((2 + ADAM_STATE) * design.params + top * design.in_features) * itemsize > budget:
                break  # x and the parameters' training state alone: nothing fits here or at any larger batch
            plan = budget_plan(design, top, memory_budget=budget, itemsize=itemsize)
            plans[itemsize][top] = (plan.fits["materialise"], plan.fits.get("stream", False),
                                    name(plan.fallback, top), plan.least)
        one = budget_plan(design, 1, "materialise", memory_budget=budget, itemsize=itemsize)
        weight_plans[itemsize] = name(one.choose("materialise"), 1)
    programs = {n: slice_program(mat, list(legs)) for legs, n in sliced.items()}
    return BudgetTables(budget, plans, weight_plans, programs)


BUDGET_PLANNING = '''\
@classmethod
def budget_plan(cls, batch: int, itemsize: int = 4) -> str:
    """The program forward() runs at this batch size under MEMORY_BUDGET bytes of a training step, at ``itemsize``
    bytes per entry: the unbudgeted choice (plan()) when it fits at the largest batch of the batch's power-of-two
    bucket, else that bucket's fallback (TN Studio's engine.contract.slicing.budget_program)."""
    if itemsize not in cls.BUDGET_PLANS:
        raise ValueError(f"this module was planned for entries of {sorted(cls.BUDGET_PLANS)} bytes, not {itemsize}")
    top = min(1 << max(batch - 1, 0).bit_length(), 2 ** 31 - 1)
    entry = cls.BUDGET_PLANS[itemsize].get(top)
    if entry is None:
        raise ValueError(f"no program of this layer trains at batch {batch} within {cls.MEMORY_BUDGET:,} bytes: x, "
                         f"the parameters, their gradients and Adam's state alone take more")
    fits_materialise, fits_stream, fallback, least = entry
    unbudgeted = cls.plan(batch)
    if fits_materialise if unbudgeted == "materialise" else fits_stream:
        return unbudgeted
    if fallback is None:
        raise ValueError(f"no program of this layer trains at batch {batch} (planned for its bucket, batches up "
                         f"to {top:,}) within {cls.MEMORY_BUDGET:,} bytes: the least the cost model finds is "
                         f"{least:,}")
    return fallback

def itemsize(self) -> int:
    """Bytes per entry of the cores (the budget's plans depend on it: .double() doubles them)."""
    return next((p.element_size() for p in self.cores.values()), 4)

def weight(self) -> torch.Tensor:
    """The dense weight W (in_features x out_features) from the cores, as the budget's plan at batch 1 makes it."""
    itemsize = self.itemsize()
    if itemsize not in self.WEIGHT_PLANS:
        raise ValueError(f"this module was planned for entries of {sorted(self.WEIGHT_PLANS)} bytes, "
                         f"not {itemsize}")
    variant = self.WEIGHT_PLANS[itemsize]
    if variant is None:
        raise ValueError(f"W cannot be generated within {self.MEMORY_BUDGET:,} bytes at {itemsize} bytes per entry")
    return getattr(self, "generate_" + variant)()'''

_PLAN_MATERIALISE = '''\
@classmethod
def plan(cls, batch: int) -> str:
    """The program forward() runs at this batch size without a budget: W must be generated."""
    return "materialise"'''


def plan_materialise_source() -> str:
    """``plan()`` of a module that cannot stream (its last tensor absorbed is activated)."""
    return _PLAN_MATERIALISE

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
    """An entry of an exported module's ``SLICINGS``: plain data (names, indices, equations, sizes)."""
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
