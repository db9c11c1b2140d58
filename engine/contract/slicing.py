"""Sliced generation: W built slice by slice under a memory budget, priced exactly like any program (no torch).

Why it is exact. A nonlinear generator applies each activation elementwise, so fixing the value of an index that is
not summed before the last activation commutes with every activation: ``gelu(T)[..., i=k, ...] = gelu(T[..., i=k,
...])``. Such indices are the open legs (``in``/``out``: never summed) and the bonds summed only in the linear
remainder after the last activation (e.g. the two bonds of a MERA's top tensor). Slicing them (as cotengra slices a
network, :func:`cotengra.SliceFinder`) splits the generation into independent pieces: the steps that depend on a
sliced index (the *region*) run once per slice on narrowed cores; the other steps (the *shared* ones) run once. Each
slice's piece of ``Wt`` is written into its block of the full ``Wt`` (open legs), or added to it when a sliced bond
is summed inside the region (partial sums of a linear remainder).

Training: the torch engine (:mod:`engine.nn.sliced`) runs the region under ``no_grad`` and recomputes each slice in
backward (gradient checkpointing per slice, as ``torch.utils.checkpoint`` does, with the slices written into one
preallocated ``Wt`` instead of concatenated, so W is never held twice). So the training peak is the largest slice's
working set plus W and its gradient instead of the whole W x chi^k generator, and the backward pass pays the
region's forward FLOPs again (:func:`engine.contract.flops.backward_flops` adds them).

A sliced program is the materialise :class:`~engine.contract.program.Program` with ``slicing`` set: its steps are
the same, a region step's ``flops`` are the total over the slices and its ``size`` the elements of one slice's
result, so FLOPs, the largest intermediate and exports read as usual. :func:`sliced_memory` replays it (the shared
steps, one slice as a program of its own, the full ``Wt`` and the apply step, forward and backward).

:func:`budget_program` picks the program under a memory budget (bytes of a training step, as
:class:`~engine.contract.cost.CostReport` counts them): the unbudgeted choice when it fits, else the fitting program
with the fewest training FLOPs among the other schedule and the slicings of the materialise program with the fewest
slices that fit, found greedily (each further split is the one that lowers the training peak most). The budget is
checked at the largest batch of the batch's power-of-two bucket (:func:`plan_batch`), so one plan per bucket
(:class:`BudgetPlan`) holds at each of its batches and an exported module carries the engine's plan for every batch.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from engine.contract.cache import CACHE
from engine.contract.flops import einsum_flops, grad_operands
from engine.contract.program import (BATCH, FLAT_IN, FLAT_OUT, Program, check_batch, compile_program,
                                     program_rank)
from engine.contract.schedule import SCHEDULES, can_stream
from engine.design.model import MAX_DIM, Design
from engine.types import Indices, ScheduleChoice, Search

MAX_SLICES = 1 << 16  # at most this many slices (the Python loop's overhead grows with the count)
# The greedy search replays every candidate split of every round: at most this many program steps replayed in all
# (the VGG-16 fc6 presets need 250-480; a 1000-tensor chain with 1001 sliceable bonds or a 30-tensor clique with 437
# had taken minutes). A search that would exceed it stops with the slicings found so far: a pure function still.
MAX_SLICE_WORK = 20_000
_INPUT = "~"  # prefix of a shared intermediate seen as an input of one slice's program (ids cannot hold "~")


@dataclass(frozen=True)
class Slicing:
    """How a materialise program's generation is sliced (see the module docstring)."""

    legs: tuple[tuple[str, int], ...]  # (index, chunks): the index is cut into ``chunks`` equal blocks
    region: tuple[int, ...]  # step numbers run once per slice, in program order
    inputs: tuple[str, ...]  # operands the region reads and does not make: cores and shared intermediates
    narrowed: tuple[str, ...]  # the inputs holding a sliced index (cores), narrowed to each slice
    summed: tuple[str, ...]  # sliced indices summed inside the region: the slices' results are added up
    output: str  # the region's result ("Wt")
    out_indices: Indices  # its indices (the in legs, then the out legs)
    sub: Program  # one slice as a program: sliced indices at their block size, the inputs as its cores

    @property
    def count(self) -> int:
        """Number of slices."""
        return math.prod(c for _, c in self.legs)

    def block(self, index: str) -> int:
        """Size of one block of a sliced index (its full size when it is not sliced). Indices cut into blocks of
        one entry are absent from :attr:`sub`'s steps (torch drops them too: size-1 dims change its layouts)."""
        return self.sub.dims[index]

    def describe(self) -> str:
        """E.g. ``"64 slices: i0/8, u0_0/2 (summed)"``."""
        parts = [f"{i}/{c}" + (" (summed)" if i in self.summed else "") for i, c in self.legs]
        return f"{self.count} slices: {', '.join(parts)}"

    def slices(self, dims: dict[str, int]) -> Iterator[dict[str, tuple[int, int]]]:
        """Each slice as {index: (start, length)}, the first leg varying slowest (summed bonds innermost, so a
        block of Wt is finished before the next one starts)."""
        names = [i for i, _ in self.legs]
        for combo in itertools.product(*(range(c) for _, c in self.legs)):
            yield {i: (k * self.block(i), self.block(i)) for i, k in zip(names, combo)}

    def input_name(self, operand: str) -> str:
        """The name ``operand`` has in :attr:`sub` (cores keep theirs; shared intermediates are cores there too)."""
        return operand if operand.startswith("core:") else f"core:{_INPUT}{operand}"

    def to_dict(self) -> dict[str, Any]:
        return {"slices": self.count, "legs": [[i, c] for i, c in self.legs], "summed": list(self.summed),
                "region_steps": list(self.region)}


# --------------------------------------------------------------------- which indices may be sliced
def _generate_einsums(prog: Program) -> list[int]:
    return [n for n, s in enumerate(prog.steps) if s.phase == "generate" and s.op == "einsum"]


def sliceable_indices(prog: Program) -> tuple[str, ...]:
    """Indices of ``prog``'s generation that slicing keeps exact (size > 1): the open legs, and the bonds summed
    only after the last activation (in the linear remainder). Empty unless ``prog`` materialises W."""
    if prog.schedule != "materialise" or prog.slicing is not None:
        return ()
    gen = _generate_einsums(prog)
    last_act = max((n for n in gen if prog.steps[n].activation), default=-1)
    summed_at: dict[str, list[int]] = {}
    for n in gen:
        s = prog.steps[n]
        out = set(s.out_indices)
        for i in {i for ix in s.in_indices for i in ix} - out:
            summed_at.setdefault(i, []).append(n)
    names: list[str] = []
    for i in dict.fromkeys(i for ix in prog.cores.values() for i in ix):
        if i in (BATCH, FLAT_IN, FLAT_OUT) or prog.dims[i] < 2:
            continue
        if i in prog.in_legs or i in prog.out_legs or all(n > last_act for n in summed_at.get(i, [-1])):
            names.append(i)
    return tuple(names)


# --------------------------------------------------------------------- building a sliced program
def slice_program(prog: Program, legs: Sequence[tuple[str, int]]) -> Program:
    """``prog`` (a materialise program) with its generation sliced: each ``(index, chunks)`` cuts a sliceable index
    into ``chunks`` equal blocks (``chunks`` divides its size). ``legs`` empty or all 1: ``prog`` itself."""
    legs = tuple((i, int(c)) for i, c in legs if int(c) > 1)
    if not legs:
        return prog
    allowed = set(sliceable_indices(prog))
    for i, c in legs:
        if i not in allowed:
            raise ValueError(f"index {i!r} cannot be sliced in this program (sliceable: {', '.join(sorted(allowed))})")
        if prog.dims[i] % c:
            raise ValueError(f"index {i!r} of size {prog.dims[i]} cannot be cut into {c} equal blocks")
    if len({i for i, _ in legs}) != len(legs):
        raise ValueError("each index can be sliced once")
    sliced = {i for i, _ in legs}
    dep = {f"core:{cid}" for cid, idx in prog.cores.items() if sliced & set(idx)}
    region: list[int] = []
    for n in _generate_einsums(prog):
        s = prog.steps[n]
        if any(i in dep for i in s.inputs):
            dep.add(s.output)
            region.append(n)
    made = {prog.steps[n].output for n in region}
    inputs = tuple(dict.fromkeys(i for n in region for i in prog.steps[n].inputs if i not in made))
    narrowed = tuple(i for i in inputs if i.startswith("core:") and sliced & set(prog.cores[i[5:]]))
    summed = tuple(i for i, _ in legs if any(i in set().union(*prog.steps[n].in_indices) and
                                             i not in prog.steps[n].out_indices for n in region))
    out = prog.steps[region[-1]]
    sub_dims = dict(prog.dims)
    for i, c in legs:
        sub_dims[i] = prog.dims[i] // c
    count = math.prod(c for _, c in legs)
    grad = grad_operands(prog, input_grad=False)
    sub_steps, new_steps = [], list(prog.steps)
    name = (lambda o: o if o.startswith("core:") else f"core:{_INPUT}{o}")
    gone = {i for i, c in legs if sub_dims[i] == 1}  # cut to single entries: one slice does not hold them at all
    keep = (lambda ix: tuple(i for i in ix if i not in gone))
    for n in region:
        s = prog.steps[n]
        flops = einsum_flops(s.in_indices, s.out_indices, sub_dims)
        size = math.prod(sub_dims[i] for i in s.out_indices)
        sub_steps.append(dataclasses.replace(s, inputs=tuple(name(i) if i in inputs else i for i in s.inputs),
                                             in_indices=tuple(keep(ix) for ix in s.in_indices),
                                             out_indices=keep(s.out_indices), flops=flops, size=size))
        new_steps[n] = dataclasses.replace(s, flops=flops * count, size=size)
    sub_cores = {name(i)[5:]: keep(prog.cores[i[5:]] if i.startswith("core:") else _indices_of(prog, i))
                 for i in inputs}
    fixed = frozenset(name(i)[5:] for i in inputs if i not in grad)
    sub = Program(design_name=prog.design_name, fingerprint=prog.fingerprint, schedule="materialise", batch=1,
                  dims=sub_dims, steps=sub_steps, cores=sub_cores, in_legs=(), out_legs=(), in_features=0,
                  out_features=0, linear=prog.linear, method="one slice", fixed_cores=fixed)
    spec = Slicing(legs=legs, region=tuple(region), inputs=inputs, narrowed=narrowed, summed=summed,
                   output=out.output, out_indices=tuple(out.out_indices), sub=sub)
    return dataclasses.replace(prog, steps=new_steps, slicing=spec,
                               method=f"{prog.method}; generation in {spec.describe()}")


def _indices_of(prog: Program, operand: str) -> Indices:
    for s in prog.steps:
        if s.output == operand:
            return tuple(s.out_indices)
    raise KeyError(operand)


# --------------------------------------------------------------------- memory
def sliced_memory(prog: Program, itemsize: int, params: int, training: bool = False, input_grad: bool = False):
    """Bytes of a sliced program (:class:`engine.contract.memory.MemoryBytes`), replayed as the torch engine runs it:

    1. the shared generate steps (:func:`~engine.contract.memory.replay` of them alone; the region's inputs stay
       alive, and under autograd so does what they save);
    2. the region, without autograd: the full ``Wt`` (one buffer in the in-legs-then-out-legs order, so ``W`` is a
       view of it), the narrowed cores of one slice (contiguous copies) and one slice's replay;
    3. ``y = x @ W`` (under autograd W is kept only when x needs a gradient: ``dL/dx = dL/dy W^T``);
    4. training: the matmul's backward (``dL/dW`` and, with ``input_grad``, ``dL/dx``), then each slice recomputed
       under autograd (one slice's training replay, the slice's block of ``dL/dWt`` as a contiguous copy, and the
       gradients of the region's inputs: one accumulated and one in flight each), then the shared steps' backward.
    """
    from engine.contract.memory import ADAM_STATE, MemoryBytes, replay

    sl: Slicing = prog.slicing
    dims = prog.dims
    region = set(sl.region)
    shared_steps = [s for n, s in enumerate(prog.steps) if n not in region and s.phase == "generate"
                    and s.op == "einsum"]
    shared = dataclasses.replace(prog, steps=shared_steps, slicing=None)
    wt = math.prod(dims[i] for i in sl.out_indices)
    y = prog.batch * prog.out_features
    gx = prog.batch * prog.in_features if input_grad else 0
    inter = [i for i in sl.inputs if not i.startswith("core:")]
    inter_size = sum(math.prod(dims[k] for k in _indices_of(prog, i)) for i in inter)
    narrowed = sum(math.prod(sl.sub.dims[k] for k in prog.cores[i[5:]]) for i in sl.narrowed)

    def peaks(train: bool) -> tuple[int, int]:
        rep_sh = replay(shared, training=train) if shared_steps else None
        live0 = rep_sh.timeline[-1] if rep_sh else 0
        sub = replay(sl.sub)  # the region runs without autograd, in training too
        fwd = max(rep_sh.peak if rep_sh else 0, live0 + wt + narrowed + sub.peak)
        live1 = live0 + wt - (0 if train else inter_size)
        fwd = max(fwd, live1 + y)
        if not train:
            return fwd, 0
        held = live1 + y - (0 if input_grad else wt)  # y stays with the caller; W is saved for dL/dx only
        bwd = held + y + wt + gx  # dL/dy in, dL/dW (and dL/dx) out
        held -= wt if input_grad else 0  # the matmul's saved W goes once its backward has run
        sub_t = replay(sl.sub, training=True)
        grad = grad_operands(prog, input_grad=False)
        acc = 2 * sum(math.prod(dims[k] for k in _indices_of(prog, i)) for i in inter if i in grad)
        acc += 2 * sum(math.prod(dims[k] for k in prog.cores[i[5:]]) for i in sl.inputs
                       if i.startswith("core:") and i in grad)
        bwd = max(bwd, held + gx + wt + acc + narrowed + max(sub_t.peak, sub_t.backward_peak))
        if rep_sh:  # the shared steps' backward: their saved tensors, the region inputs' gradients in flight
            biggest = max(s.size for s in shared_steps)
            bwd = max(bwd, rep_sh.timeline[-1] + y + gx + inter_size + 2 * biggest)
        return fwd, bwd

    resident = params + prog.batch * prog.in_features
    peak = (resident + peaks(False)[0]) * itemsize
    if not training:
        return MemoryBytes(peak)
    fwd, bwd = peaks(True)
    train = ((2 + ADAM_STATE) * params + prog.batch * prog.in_features + max(fwd, bwd)) * itemsize
    return MemoryBytes(peak, train)


# --------------------------------------------------------------------- choosing slices
def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def _train_bytes(prog: Program, itemsize: int, params: int) -> int:
    from engine.contract.memory import memory

    return int(memory(prog, itemsize, params, training=True).train_bytes or 0)


def train_flops(prog: Program) -> int:
    """Forward + backward FLOPs of a training step (the backward recomputes a sliced region)."""
    from engine.contract.flops import backward_flops

    return prog.flops + backward_flops(prog)


def slicing_sequence(prog: Program, itemsize: int, params: int, max_slices: int = MAX_SLICES) -> list[Program]:
    """Sliced versions of ``prog`` with more and more slices, each split (an index cut by one more prime factor)
    the one that lowers the training peak most (ties: fewer training FLOPs, then the index name); ends when no
    split lowers it or ``max_slices`` is reached. Deterministic: a pure function of ``prog``."""
    return list(_slicings(prog, itemsize, params, max_slices))


def _slicings(prog: Program, itemsize: int, params: int, max_slices: int = MAX_SLICES) -> Iterator[Program]:
    """:func:`slicing_sequence` one program at a time (a budget stops at the first that fits)."""
    names = sliceable_indices(prog)
    if not names:
        return
    chunks = {i: 1 for i in names}
    best_bytes = _train_bytes(prog, itemsize, params)
    work = len(prog.steps)
    while True:
        count = math.prod(chunks.values())
        work += len(names) * len(prog.steps)
        if work > MAX_SLICE_WORK:  # a network too large for this search: no further split is tried
            return
        trials = []
        for i in names:
            left = prog.dims[i] // chunks[i]
            if left < 2:
                continue
            p = _prime_factors(left)[0]
            if count * p > max_slices:
                continue
            legs = {**chunks, i: chunks[i] * p}
            cand = slice_program(prog, [(k, legs[k]) for k in names])
            trials.append((_train_bytes(cand, itemsize, params), train_flops(cand), i, legs, cand))
        if not trials:
            return
        b, _, _, legs, cand = min(trials, key=lambda t: t[:3])
        if b >= best_bytes:
            return
        best_bytes, chunks = b, legs
        yield cand


@dataclass(frozen=True)
class BudgetPlan:
    """What a memory budget decides for one power-of-two bucket of batch sizes (see :func:`plan_batch`): whether
    each unsliced schedule fits at the bucket's largest batch, and the program to run when the unbudgeted choice
    does not (``fallback``: a schedule and the materialise program's slicing legs; ``None``: nothing fits, and
    ``least`` is the fewest bytes the cost model found)."""

    top: int  # the largest batch of the bucket: the plan is made there, so it holds at every batch of the bucket
    fits: dict[str, bool]  # schedule -> its unsliced program trains within the budget at ``top``
    fallback: tuple[str, tuple[tuple[str, int], ...]] | None  # (schedule, slicing legs) or None: nothing fits
    least: int  # the fewest training bytes found at ``top`` (0 when the unbudgeted choice fits)

    def choose(self, schedule: str) -> tuple[str, tuple[tuple[str, int], ...]] | None:
        """The program for a batch whose unbudgeted choice is ``schedule``: it, when it fits, else the fallback."""
        return (schedule, ()) if self.fits.get(schedule) else self.fallback


def plan_batch(batch: int) -> int:
    """The batch a memory budget's plan for ``batch`` rows is made at: the largest of its power-of-two bucket (the
    smallest power of two >= ``batch``, at most 2^31 - 1). Training memory grows with the batch, so the plan fits
    every batch of the bucket, and an exported module can carry one plan per bucket (the engine's, at any batch)."""
    return min(1 << (check_batch(batch) - 1).bit_length(), MAX_DIM)


_PLANS: dict[tuple, BudgetPlan] = {}
_PLANS_LOCK = threading.Lock()


def budget_plan(design: Design, top: int, schedule: ScheduleChoice = "auto", search: Search = "fast",
                time_budget: float = 2.0, *, memory_budget: int, itemsize: int = 4) -> BudgetPlan:
    """The :class:`BudgetPlan` of the bucket whose largest batch is ``top``: each allowed schedule's unsliced
    program at ``top`` checked against the budget, and the fallback: among the fitting unsliced programs and the
    materialise program sliced as little as fits (:func:`slicing_sequence`), the one with the fewest training FLOPs
    (then :func:`~engine.contract.program.program_rank`). A pure function of its arguments."""
    budget = check_memory_budget(memory_budget)
    key = (design.fingerprint(), top, schedule, search, budget, itemsize, CACHE.thorough_stored)
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    params = design.params
    scheds = [s for s in SCHEDULES if (schedule in ("auto", s)) and (s == "materialise" or can_stream(design))]
    unsliced = {s: compile_program(design, top, s, search, time_budget) for s in scheds}
    need = {s: _train_bytes(p, itemsize, params) for s, p in unsliced.items()}
    fits = {s: need[s] <= budget for s in scheds}
    least = min(need.values())
    cands = [p for s, p in unsliced.items() if fits[s]]
    if "materialise" in scheds and not fits["materialise"]:
        for cand in _slicings(unsliced["materialise"], itemsize, params):
            b = _train_bytes(cand, itemsize, params)
            least = min(least, b)
            if b <= budget:
                cands.append(cand)
                break
    best = min(cands, key=lambda p: (train_flops(p), program_rank(p))) if cands else None
    fallback = None if best is None else (best.schedule, best.slicing.legs if best.slicing else ())
    plan = BudgetPlan(top, fits, fallback, 0 if all(fits.values()) else least)
    with _PLANS_LOCK:
        if len(_PLANS) > 256:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def budget_program(design: Design, batch: int, schedule: ScheduleChoice = "auto", search: Search = "fast",
                   time_budget: float = 2.0, memory_budget: int | None = None, itemsize: int = 4) -> Program:
    """The program to run under ``memory_budget`` bytes of a training step (``None``: no budget, which is
    :func:`~engine.contract.program.compile_program`'s choice).

    Planned for the batch's bucket (:func:`plan_batch`, :func:`budget_plan`) and compiled at ``batch``: the
    unbudgeted choice at ``batch`` when it fits at the bucket's largest batch, else the bucket's fallback (the other
    schedule, or the materialise program sliced as little as fits). Nothing fits: ``ValueError`` with the least
    memory found. A pure function of its arguments, like ``compile_program``.
    """
    base = compile_program(design, batch, schedule, search, time_budget)
    if memory_budget is None:
        return base
    top = plan_batch(batch)
    plan = budget_plan(design, top, schedule, search, time_budget, memory_budget=check_memory_budget(memory_budget),
                       itemsize=itemsize)
    choice = plan.choose(base.schedule)
    if choice is None:
        from engine.format import nbytes

        bucket = f" (planned for its bucket, batches up to {top:,})" if top != batch else ""
        raise ValueError(f"no program of design {design.name!r} trains at batch {batch}{bucket} within "
                         f"{nbytes(memory_budget)}: the least the cost model finds is {nbytes(plan.least)}")
    sched, legs = choice
    if sched == base.schedule and not legs:
        return base
    return slice_program(compile_program(design, batch, sched, search, time_budget), legs)


# --------------------------------------------------------------------- budgets as text
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3,
          "t": 1000 ** 4, "tb": 1000 ** 4, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")
MAX_MEMORY_BUDGET = 1 << 60


def parse_bytes(text: str | int | float) -> int:
    """``"2GiB"`` -> 2147483648, ``"512MiB"``, ``"1.5G"`` (powers of 1000), ``"2e9"`` (bytes, as ``tnstudio search``'s
    budgets take it), plain integers are bytes; ``ValueError`` naming the accepted forms otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"a memory size must be bytes or a number with a unit, got {text!r}")
    if isinstance(text, (int, float)):
        return check_memory_budget(text)
    m = _SIZE.fullmatch(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ValueError(f"a memory size must be a number with an optional unit (B, KiB, MiB, GiB, TiB, or KB, MB, "
                         f"GB, TB), e.g. 2GiB or 2e9, got {text!r}")
    value = float(m.group(1)) * _UNITS[unit]
    if not 1 <= value <= MAX_MEMORY_BUDGET:  # say it as typed (0.5 -> 0, 1e29 -> its float, were shown)
        raise ValueError(f"the memory budget must be from 1 byte to 2^60 bytes (1 EiB), got {str(text).strip()!r}")
    return check_memory_budget(int(value))


def check_memory_budget(value: Any) -> int:
    """``value`` as an int of bytes if it is a finite number from 1 byte to 2^60, else ``ValueError``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 1 <= value <= MAX_MEMORY_BUDGET:
        raise ValueError(f"the memory budget must be a number of bytes from 1 to 2^60, got {value!r}")
    return int(value)


__all__ = ["MAX_SLICES", "BudgetPlan", "Slicing", "budget_plan", "budget_program", "check_memory_budget", "parse_bytes",
           "plan_batch", "slice_program", "sliceable_indices", "sliced_memory", "slicing_sequence", "train_flops"]
