"""The cost report: every number the studio and ``tnstudio cost`` show, read off the contraction programs.

Everything is derived from :func:`engine.contract.program.compile_program`, the same object the torch engine runs
and the exporter prints, and nothing allocates a tensor, so designs whose W would not fit in memory cost as quickly
as small ones. FLOPs follow :mod:`engine.contract.flops`, bytes :mod:`engine.contract.memory`.
"""
from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from engine.contract.flops import backward_flops, flop_indices
from engine.contract.memory import ADAM_STATE, dtype_bytes, memory
from engine.contract.program import Program, StepRow, check_time_budget, compile_program, pick_program
from engine.contract.schedule import SCHEDULES, can_stream, check_schedule
from engine.contract.slicing import budget_program, parse_bytes, plan_batch
from engine.contract.traffic import traffic
from engine.design.model import Design
from engine.format import nbytes, si
from engine.types import Schedule, ScheduleChoice, Search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scaling:
    """Leading-order FLOPs as a polynomial in the bond dimension ``chi`` (every bond scaled together)."""

    formula: str  # e.g. "O(chi^4)"
    exponent: int
    leading: str  # the leading term, e.g. "32 * chi^4"
    terms: tuple[tuple[int, int], ...]  # (coefficient, power of chi), highest power first

    def to_dict(self) -> dict[str, Any]:
        return {"formula": self.formula, "exponent": self.exponent, "leading": self.leading,
                "terms": [list(t) for t in self.terms]}


@dataclass(frozen=True)
class ScheduleCost:
    """The numbers of one schedule at the report's batch size and dtype."""

    forward_flops: int
    generate_flops: int
    apply_flops: int
    backward_flops: int
    peak_memory_bytes: int
    train_memory_bytes: int
    largest_intermediate_bytes: int
    method: str  # where the contraction path came from
    executable: bool  # torch.einsum can run every step

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class CostReport:
    """Every number of :func:`cost_report`; :meth:`to_dict` is the ``tnstudio cost --json`` output."""

    name: str
    params: int
    dense_params: int
    compression: float
    tensors: int
    linear: bool
    batch: int
    dtype: str
    schedule: Schedule  # the schedule the numbers below describe (the chosen one)
    method: str
    generate_flops: int  # building W (the materialise schedule's generate phase)
    forward_flops: int
    backward_flops: int
    train_step_flops: int
    dense_forward_flops: int
    param_bytes: int
    largest_intermediate_bytes: int
    peak_memory_bytes: int
    train_memory_bytes: int
    dense_train_memory_bytes: int
    schedules: dict[str, ScheduleCost]  # every schedule the design can run (read-only)
    executable: bool
    scaling: str  # the formula, e.g. "O(chi^2)"
    scaling_detail: Scaling
    path: tuple[StepRow, ...]  # the chosen program's steps
    # a memory budget (engine.contract.slicing): the budget in bytes, and how the chosen program slices its
    # generation (slices 1 and slicing None: not sliced); keyword-only so subclasses may add plain fields
    memory_budget: int | None = field(default=None, kw_only=True)
    slices: int = field(default=1, kw_only=True)
    slicing: dict[str, Any] | None = field(default=None, kw_only=True)
    # bytes the chosen program's steps read and write (engine.contract.traffic): forward, and a training step
    traffic_bytes: int = field(default=0, kw_only=True)
    train_traffic_bytes: int = field(default=0, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data, keys in the order ``tnstudio cost --json`` prints them."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["schedules"] = {k: v.to_dict() for k, v in self.schedules.items()}
        out["scaling_detail"] = self.scaling_detail.to_dict()
        out["path"] = [row.to_dict() for row in self.path]
        return out

    @property
    def planned_up_to(self) -> int | None:
        """Under a memory budget at a batch that is not a power of two: the largest batch of its power-of-two bucket,
        which the budget's plan was made for (:func:`engine.contract.slicing.plan_batch`); else ``None``."""
        top = plan_batch(self.batch) if self.memory_budget is not None else self.batch
        return top if top != self.batch else None

    def format(self) -> str:
        """A short human-readable summary (``tnstudio cost`` without ``--json``)."""
        others = ", ".join(f"{k} {si(v.forward_flops)}" for k, v in self.schedules.items() if k != self.schedule)
        lines = [
            f"{self.name}: {self.tensors} tensors, {'linear' if self.linear else 'nonlinear'}",
            f"  params          {self.params:,} (dense {self.dense_params:,}, compression {self.compression:,.1f}x)",
            f"  schedule        {self.schedule} at batch {self.batch} ({self.method})"
            + (f"; other: {others}" if others else ""),
            f"  FLOPs           generate W {si(self.generate_flops)}, forward {si(self.forward_flops)}, "
            f"backward {si(self.backward_flops)} (dense forward {si(self.dense_forward_flops)})",
            f"  memory ({self.dtype}) params {nbytes(self.param_bytes)}, largest intermediate "
            f"{nbytes(self.largest_intermediate_bytes)}, peak forward {nbytes(self.peak_memory_bytes)}, "
            f"training {nbytes(self.train_memory_bytes)}",
            f"  scaling         {self.scaling}  (leading term {self.scaling_detail.leading})",
        ]
        if self.traffic_bytes:
            lines.insert(5, f"  traffic         {nbytes(self.traffic_bytes)} read+written forward, "
                            f"{nbytes(self.train_traffic_bytes)} per training step")
        if self.memory_budget is not None:
            how = (f"generation in {self.slices} slices ({', '.join(f'{i}/{c}' for i, c in self.slicing['legs'])}"
                   f"{'; summed: ' + ', '.join(self.slicing['summed']) if self.slicing['summed'] else ''}), "
                   f"recomputed in backward" if self.slicing else "not sliced")
            top = self.planned_up_to
            bucket = f"; planned for batches up to {top:,} (the batch's power-of-two bucket)" if top else ""
            lines.insert(2, f"  memory budget   {nbytes(self.memory_budget)} per training step: {how}{bucket}")
        if not self.executable:
            lines.append("  note            a step has more than 52 indices: torch.einsum cannot run it (cost only)")
        lines.append("  path:")
        for s in self.path:
            if s.op == "einsum" and s.flops:
                act = f" -> {s.activation}" if s.activation else ""
                eq = s.einsum or "(more than 52 indices)"
                lines.append(f"    {s.step:>3} {', '.join(s.inputs):<28} {eq:<24}{act:<8} {si(s.flops)} FLOPs")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def scaling(prog: Program, design: Design) -> Scaling:
    """Leading-order FLOPs as a polynomial in the bond dimension, every bond scaled together as ``chi``.

    Each step's FLOPs are a product of index dimensions (:func:`~engine.contract.flops.flop_indices`); the bond
    indices in it give the power of ``chi`` and the rest the coefficient. The formula is the highest power with its
    summed coefficient.
    """
    bonds = {k for k, v in design.indices.items() if v.role == "bond"}
    terms: Counter = Counter()
    for s in prog.steps:
        if len(s.in_indices) != 2:
            continue
        a, b = (set(ix) for ix in s.in_indices)
        counted = flop_indices(a, b, set(s.out_indices), prog.dims)
        if counted is None:  # a free step
            continue
        p = sum(1 for i in counted if i in bonds)
        terms[p] += s.flops // math.prod(prog.dims[i] for i in counted if i in bonds)
    if not terms:
        return Scaling("O(1)", 0, "0", ())
    p = max(terms)
    chi = "chi" if p == 1 else f"chi^{p}"
    coef = si(terms[p]) if terms[p] >= 1e15 else f"{terms[p]:.3g}"  # si: no float overflow on huge counts
    return Scaling(formula=f"O({chi})" if p else "O(1)", exponent=p,
                   leading=f"{coef} * {chi}" if p else coef,
                   terms=tuple((int(c), int(e)) for e, c in sorted(terms.items(), reverse=True)))


def _schedule_cost(design: Design, batch: int, sched: Schedule, itemsize: int, search: Search,
                   time_budget: float, params: int) -> tuple[Program, ScheduleCost]:
    prog = compile_program(design, batch, sched, search, time_budget)
    return prog, _program_cost(prog, itemsize, params)


def _program_cost(prog: Program, itemsize: int, params: int) -> ScheduleCost:
    mem = memory(prog, itemsize, params, training=True)
    assert mem.train_bytes is not None
    return ScheduleCost(forward_flops=prog.flops, generate_flops=prog.generate_flops,
                              apply_flops=prog.apply_flops, backward_flops=backward_flops(prog),
                              peak_memory_bytes=mem.peak_forward_bytes, train_memory_bytes=mem.train_bytes,
                              largest_intermediate_bytes=prog.largest_intermediate * itemsize, method=prog.method,
                              executable=prog.executable)


# A loopy network's stream path is searched in a thread beside the materialise one (cotengra's Rust trials release
# the GIL). Measured on this 2-core machine (4 interleaved rounds, cold caches): loopy networks of 32-80 tensors
# 0.73-0.80x the report's wall time (CPU time 2-10% more), 24 tensors no gain (0.96-1.01x), so from
# THREAD_MIN_TENSORS on; templates, whose searches are Python, stay serial (two threads contend for the GIL there:
# 1.16-1.33x slower when they were threaded too). Identical paths either way (the search is a pure function).
THREAD_STREAM_SEARCH = True
THREAD_MIN_TENSORS = 32


def _stream_beside(design: Design, batch: int, search: Search, time_budget: float) -> "threading.Thread | None":
    """On a loopy network, search the stream schedule's path in a thread beside the materialise one (cotengra's
    Rust trials release the GIL), so that the report's two searches overlap; None elsewhere (templates' searches
    are Python: two threads would contend for the GIL). The thread's program lands in the cache; an error there is
    left for the serial compile to raise."""
    from engine.contract.paths import is_loopy

    if not THREAD_STREAM_SEARCH or search != "fast" or len(design.tensors) < THREAD_MIN_TENSORS:
        return None
    try:
        if not (is_loopy([(t.id, tuple(t.indices)) for t in design.tensors]) and can_stream(design)):
            return None
    except Exception as e:  # noqa: BLE001 - an invalid design: the serial compile says why
        log.debug("no side-by-side search for %r: %r", design.name, e)
        return None

    def run() -> None:
        try:
            compile_program(design, batch, "stream", search, time_budget)
        except Exception as e:  # noqa: BLE001 - raised again (with its reason) where the report compiles it serially
            log.debug("the stream path search beside the materialise one failed: %r", e)

    t = threading.Thread(target=run, name="stream-path", daemon=True)
    t.start()
    return t


def cost_report(design: Design, batch: int = 64, dtype: str = "float32", schedule: ScheduleChoice = "auto",
                search: Search = "fast", time_budget: float = 2.0,
                memory_budget: int | str | None = None) -> CostReport:
    """Every number the studio and ``tnstudio cost`` show, for ``schedule`` (``auto``: the program the engine
    runs, picked by :func:`~engine.contract.program.program_rank`: fewer FLOPs, then a smaller largest
    intermediate, then materialise).

    ``search="thorough"`` adds cotengra's hyper-optimiser for ``time_budget`` seconds in all, shared by the
    schedules (cached, so a background refinement pays it once per design).

    ``memory_budget`` (bytes, or text such as ``"2GiB"``): the numbers describe the program
    :func:`engine.contract.slicing.budget_program` picks, whose generation may run in slices (``slices``,
    ``slicing``); ``schedules`` keeps each schedule's unsliced numbers.

    A conv2d design gets :func:`engine.contract.conv.conv_cost_report` at its default input size (``meta["image"]``,
    else 32x32): a :class:`~engine.contract.conv.ConvCostReport`, ``batch`` counting images.
    """
    if getattr(design, "conv", None) is not None:
        from engine.contract.conv import conv_cost_report

        if memory_budget is not None:
            raise ValueError(f"design {design.name!r} has a conv2d target: memory budgets (sliced generation) apply "
                             f"to linear designs")
        return conv_cost_report(design, batch=batch, dtype=dtype, schedule=schedule, search=search,
                                time_budget=time_budget)
    itemsize = dtype_bytes(dtype)
    check_schedule(None, schedule)
    if search == "thorough":  # the budget is the wall time: the schedules' searches share it
        time_budget = check_time_budget(time_budget) / (2 if can_stream(design) else 1)
    helper = _stream_beside(design, batch, search, time_budget)
    try:
        compile_program(design, batch, "materialise", search, time_budget)  # validates the design (once per print)
    finally:
        if helper is not None:
            helper.join()
    check_schedule(design, schedule)
    params = design.params
    per = {s: _schedule_cost(design, batch, s, itemsize, search, time_budget, params) for s in SCHEDULES
           if s == "materialise" or can_stream(design)}  # schedule -> (program, cost)
    costs = {s: c for s, (_, c) in per.items()}
    chosen = schedule if schedule != "auto" else pick_program([p for p, _ in per.values()]).schedule
    prog, c = per[chosen]
    budget = None if memory_budget is None else parse_bytes(memory_budget)
    if budget is not None:  # the program that trains within the budget (maybe with its generation sliced)
        prog = budget_program(design, batch, schedule, search, time_budget, budget, itemsize)
        chosen, c = prog.schedule, _program_cost(prog, itemsize, params)
    moved = traffic(prog, itemsize, params)
    sc = scaling(prog, design)
    return CostReport(
        name=design.name,
        params=params,
        dense_params=design.dense_params,
        compression=design.dense_params / max(params, 1),
        tensors=len(design.tensors),
        linear=design.is_linear,
        batch=batch,
        dtype=str(dtype),
        schedule=chosen,
        method=prog.method,
        generate_flops=costs["materialise"].generate_flops,
        forward_flops=c.forward_flops,
        backward_flops=c.backward_flops,
        train_step_flops=c.forward_flops + c.backward_flops,
        dense_forward_flops=2 * batch * design.in_features * design.out_features,
        param_bytes=params * itemsize,
        largest_intermediate_bytes=c.largest_intermediate_bytes,
        peak_memory_bytes=c.peak_memory_bytes,
        train_memory_bytes=c.train_memory_bytes,
        dense_train_memory_bytes=dense_train_bytes(design.in_features, design.out_features, batch, itemsize),
        schedules=costs,
        executable=prog.executable,
        scaling=sc.formula,
        scaling_detail=sc,
        path=prog.describe(),
        memory_budget=budget,
        slices=prog.slicing.count if prog.slicing is not None else 1,
        slicing=prog.slicing.to_dict() if prog.slicing is not None else None,
        traffic_bytes=moved.forward_bytes,
        train_traffic_bytes=moved.train_bytes,
    )


def dense_train_bytes(in_features: int, out_features: int, batch: int, itemsize: int) -> int:
    """Bytes of an AdamW training step of ``nn.Linear(in, out)`` at ``batch`` as :mod:`engine.train` runs it (torch's
    fused AdamW, which makes no parameter-sized temporaries): weight and bias with their gradients and AdamW's two
    moments, and x, y and dL/dx (checked against the CPU allocator in tests/test_cost.py)."""
    params = in_features * out_features + out_features
    return ((2 + ADAM_STATE) * params + batch * (2 * in_features + out_features)) * itemsize


def init_memory_bytes(design: Design) -> int:
    """Bytes initialising ``design``'s cores needs (:func:`engine.nn.init.init_cores`, float32 on the CPU): the
    cores, and for a nonlinear design the calibration, which generates W under autograd (the materialise program
    at batch 1, replayed as training)."""
    if design.is_linear:
        return 2 * 4 * design.params  # the cores, and one copy while they move to the target device and dtype
    if getattr(design, "conv", None) is not None:  # a conv design initialises through its im2col view
        from engine.design.conv import im2col_view

        design = im2col_view(design)
    prog = compile_program(design, 1, "materialise")
    return int(memory(prog, 4, design.params, training=True).train_bytes or 0)
