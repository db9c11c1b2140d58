"""Contraction programs: the one description of how a design is evaluated.

A :class:`Program` is an ordered list of :class:`Step` s. Each step is one ``torch.einsum`` with explicit
subscripts over named indices (optionally followed by an elementwise activation) or a free reshape. The cost model
counts FLOPs and bytes from these steps, the torch engine runs them (:func:`engine.nn.execute.run_program`), and
the exporter prints them, so an estimate describes exactly what runs. Schedules are described in
:mod:`engine.contract.schedule`, the FLOP rule in :mod:`engine.contract.flops`, the path search in
:mod:`engine.contract.paths`.

Operand names: ``x`` is the input (``B x in``), ``core:<id>`` a core, ``t<n>`` an intermediate, ``W`` the weight
and ``y`` the output (``B x out``). The batch index is ``_b``; flat features are ``_in`` and ``_out``.
Intermediates list their indices as ``torch.einsum`` lays them out (shared, then first-only, then second-only), so
every intermediate is a contiguous tensor.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple, Sequence

from engine.contract.cache import CACHE
from engine.contract.flops import einsum_flops
from engine.contract.paths import SEARCHES, search_path, structure_hints
from engine.contract.schedule import SCHEDULES, can_stream, check_schedule, last_activation
from engine.design.model import MAX_DIM, RESERVED_INDEX_NAMES, Design, DesignError
from engine.types import ContractionPath, IndexName, Indices, Operand, Phase, Schedule, ScheduleChoice, Search, TensorId

LETTERS = string.ascii_letters  # torch.einsum accepts a-z and A-Z
BATCH, FLAT_IN, FLAT_OUT = "_b", "_in", "_out"
assert {BATCH, FLAT_IN, FLAT_OUT} == set(RESERVED_INDEX_NAMES), "validation must reserve the program's index names"
MAX_TIME_BUDGET = 3600.0  # seconds of cotengra per network, at most
# a stream path is searched at its batch's power-of-two bucket: one path serves every batch of a bucket, so the
# exported module carries all of them (13) and runs the engine's program at any batch size
PATH_BATCHES = tuple(2 ** k for k in range(13))  # 1, 2, 4, ..., 4096


def path_batch(batch: int) -> int:
    """The batch a stream path for ``batch`` rows is searched at: the smallest power of two >= ``batch``, at most
    4096 (larger batches take 4096's path: x's terms dominate the FLOPs there already)."""
    return PATH_BATCHES[min(max(batch - 1, 0).bit_length(), len(PATH_BATCHES) - 1)]
StepOp = Literal["einsum", "reshape"]


@dataclass(frozen=True)
class Step:
    """One step: ``einsum`` (inputs -> output, then optional activation) or ``reshape`` (one input)."""

    op: StepOp
    inputs: tuple[str, ...]
    output: str
    in_indices: tuple[Indices, ...]
    out_indices: Indices
    activation: str | None = None
    phase: Phase = "generate"  # "generate" (builds W, batch independent) or "apply" (touches x)
    flops: int = 0
    size: int = 0  # elements of the output

    @property
    def n_indices(self) -> int:
        return len({i for ix in self.in_indices for i in ix} | set(self.out_indices))

    @property
    def equation(self) -> str:
        """The einsum subscripts in letters, assigned in order of first appearance."""
        letters: dict[str, str] = {}
        for name in [i for ix in self.in_indices for i in ix] + list(self.out_indices):
            if name not in letters:
                if len(letters) == len(LETTERS):
                    raise DesignError(f"step {self.output} involves more than {len(LETTERS)} indices, more than "
                                      f"torch.einsum accepts: split the network into smaller tensors")
                letters[name] = LETTERS[len(letters)]
        ins = ",".join("".join(letters[i] for i in ix) for ix in self.in_indices)
        return ins + "->" + "".join(letters[i] for i in self.out_indices)

    @property
    def is_identity(self) -> bool:
        return self.op == "einsum" and len(self.inputs) == 1 and self.in_indices[0] == self.out_indices


@dataclass(frozen=True)
class StepRow:
    """One step as reports show it: its einsum in letters (None beyond 52 indices) and its result's shape."""

    step: int
    op: StepOp
    inputs: tuple[str, ...]
    output: str
    einsum: str | None
    indices: tuple[Indices, ...]  # each input's indices, then the output's
    activation: str | None
    phase: Phase
    flops: int
    shape: tuple[int, ...]
    size: int

    def to_dict(self) -> dict[str, Any]:
        """The row as JSON-ready plain data (lists for tuples)."""
        return {"step": self.step, "op": self.op, "inputs": list(self.inputs), "output": self.output,
                "einsum": self.einsum, "indices": [list(ix) for ix in self.indices], "activation": self.activation,
                "phase": self.phase, "flops": self.flops, "shape": list(self.shape), "size": self.size}


class PlanStep(NamedTuple):
    """A step as the executor runs it; ``arg`` is the einsum equation, the reshape's shape (-1 for the batch) or
    None (identity); ``frees`` are the intermediates no later step reads."""

    op: StepOp
    inputs: tuple[str, ...]
    output: str
    arg: str | tuple[int, ...] | None
    activation: str | None
    phase: Phase
    frees: tuple[str, ...]


class StepCounts:
    """FLOP and size totals over ``self.steps`` (each with ``phase``, ``flops`` and ``size``): shared by the linear
    :class:`Program` and the conv program (engine.contract.conv)."""

    steps: list

    @property
    def generate_flops(self) -> int:
        """FLOPs of the steps that build W (or K) from the cores."""
        return sum(s.flops for s in self.steps if s.phase == "generate")

    @property
    def apply_flops(self) -> int:
        """FLOPs of the steps that meet the input."""
        return sum(s.flops for s in self.steps if s.phase == "apply")

    @property
    def flops(self) -> int:
        """Forward FLOPs (2 x multiply-adds) of the whole program at its batch size."""
        return sum(s.flops for s in self.steps)

    @property
    def largest_intermediate(self) -> int:
        """Elements of the largest tensor a step produces (inputs excluded)."""
        return max((s.size for s in self.steps), default=0)


@dataclass
class Program(StepCounts):
    """A compiled design: steps plus everything needed to execute, cost and print them."""

    design_name: str
    fingerprint: str
    schedule: Schedule
    batch: int
    dims: dict[IndexName, int]
    steps: list[Step]
    cores: dict[TensorId, Indices]  # core id -> its indices, in the design's order
    in_legs: Indices
    out_legs: Indices
    in_features: int
    out_features: int
    linear: bool
    method: str = ""
    fixed_cores: frozenset[TensorId] = frozenset()  # cores that are not trained (delta tensors)
    slicing: Any = None  # an engine.contract.slicing.Slicing: the generation runs slice by slice (memory budgets)

    # ----------------------------------------------------------------- counts (generate/apply/flops: StepCounts)
    @property
    def executable(self) -> bool:
        """Whether torch.einsum can run every step (at most 52 distinct indices per step)."""
        return all(s.op != "einsum" or s.n_indices <= len(LETTERS) for s in self.steps)

    def last_use(self) -> dict[str, int]:
        """Operand name -> index of the last step that reads it."""
        return last_use(self.steps)

    def describe(self) -> tuple[StepRow, ...]:
        """The steps as rows (for JSON, tables and the CLI)."""
        rows = []
        for n, s in enumerate(self.steps):
            eq = s.equation if s.op == "einsum" and s.n_indices <= len(LETTERS) else None
            rows.append(StepRow(step=n, op=s.op, inputs=s.inputs, output=s.output, einsum=eq,
                                indices=s.in_indices + (s.out_indices,), activation=s.activation, phase=s.phase,
                                flops=s.flops, shape=tuple(self.dims[i] for i in s.out_indices), size=s.size))
        return tuple(rows)

    @functools.cached_property
    def plan(self) -> tuple[PlanStep, ...]:
        """The steps as the executor runs them (:meth:`derive_plan`), derived once per program."""
        return self.derive_plan()

    def derive_plan(self) -> tuple[PlanStep, ...]:
        """The steps as the executor runs them: equations, reshape shapes and the intermediates to free."""
        last, plan = self.last_use(), []
        for n, s in enumerate(self.steps):
            frees = tuple(i for i in s.inputs if last.get(i) == n and not i.startswith("core:") and i != "x")
            arg = (tuple(-1 if i == BATCH else self.dims[i] for i in s.out_indices) if s.op == "reshape"
                   else None if s.is_identity else s.equation)
            plan.append(PlanStep(s.op, s.inputs, s.output, arg, s.activation, s.phase, frees))
        return tuple(plan)


# --------------------------------------------------------------------- building steps
class _StepBuilder:
    def __init__(self, dims: dict[IndexName, int]):
        self.dims = dims
        self.steps: list[Step] = []
        self.n = 0

    def fresh(self) -> str:
        name = f"t{self.n}"
        self.n += 1
        return name

    def size(self, idx: Sequence[str]) -> int:
        return math.prod(self.dims[i] for i in idx)

    def einsum(self, inputs: Sequence[Operand], out_idx: Sequence[str], out_name: str | None = None,
               activation: str | None = None, phase: Phase = "generate") -> Operand:
        in_idx = tuple(ix for _, ix in inputs)
        flops = einsum_flops(in_idx, out_idx, self.dims)
        name = out_name or self.fresh()
        self.steps.append(Step("einsum", tuple(i for i, _ in inputs), name, in_idx, tuple(out_idx), activation, phase,
                               flops, self.size(out_idx)))
        return name, tuple(out_idx)

    def reshape(self, inp: Operand, out_idx: Sequence[str], out_name: str, phase: Phase) -> Operand:
        self.steps.append(Step("reshape", (inp[0],), out_name, (inp[1],), tuple(out_idx), None, phase, 0,
                               self.size(out_idx)))
        return out_name, tuple(out_idx)

    def contract(self, operands: list[Operand], path: ContractionPath, keep: set[str],
                 final_idx: Sequence[str] | None, activation: str | None = None,
                 phase: Phase = "generate", final_name: str | None = None) -> Operand:
        """Contract ``operands`` pairwise along ``path`` (opt_einsum's linear format).

        An intermediate keeps the indices still needed by a remaining operand or listed in ``keep``, in the order
        torch.einsum lays them out (shared, first-only, second-only: a contiguous result); the last step emits
        ``final_idx`` (if given) and carries ``activation``.
        """
        ops = list(operands)
        if len(ops) == 1:
            name, idx = ops[0]
            out = tuple(final_idx) if final_idx is not None else idx
            if activation is None and out == idx and final_name is None:
                return ops[0]
            return self.einsum([ops[0]], out, final_name, activation, phase)
        holders = Counter(i for _, ix in ops for i in set(ix))
        for k, pair in enumerate(path):
            pair = sorted(pair, reverse=True)
            picked = [ops.pop(p) for p in pair][::-1]
            for _, ix in picked:
                holders.subtract(set(ix))
            is_last = k == len(path) - 1
            if is_last and final_idx is not None:
                out_idx = tuple(final_idx)
            else:
                out_idx = _natural_order(picked[0][1], picked[1][1], lambda i: holders[i] > 0 or i in keep)
            holders.update(out_idx)
            ops.append(self.einsum(picked, out_idx, final_name if is_last else None,
                                   activation if is_last else None, phase))
        assert len(ops) == 1, "path did not contract every operand"
        return ops[0]


def _natural_order(a: Sequence[str], b: Sequence[str], needed: Callable[[str], bool]) -> Indices:
    """The indices of ``a`` and ``b`` still needed, in torch.einsum's own layout: shared, a-only, b-only."""
    bs = set(b)
    shared = [i for i in a if i in bs and needed(i)]
    a_only = [i for i in a if i not in bs and needed(i)]
    aset = set(a)
    b_only = [i for i in b if i not in aset and needed(i)]
    return tuple(shared + a_only + b_only)


# --------------------------------------------------------------------- compiling designs
def _core_operands(design: Design) -> list[Operand]:
    return [(f"core:{t.id}", tuple(t.indices)) for t in design.tensors]


def _absorb(b: _StepBuilder, design: Design, final: Indices) -> list[Operand]:
    """Run the nonlinear semantics up to the last activation; returns the operands W is linear in.

    Tensors are absorbed in the evaluation order, each merging every fragment it touches and then applying its
    activation. Once the last activated tensor is absorbed, W is a multilinear function of the fragments made so
    far and the cores not yet absorbed: those are returned, in any order the caller may contract freely.
    """
    by_id = {t.id: t for t in design.tensors}
    order = design.evaluation_order()
    stop = last_activation(design)
    frags: list[Operand] = []
    remaining_users = design.users()
    for tid in order[: stop + 1]:
        t = by_id[tid]
        for i in t.indices:
            remaining_users[i] = [u for u in remaining_users[i] if u != tid]
        touching = [f for f in frags if set(f[1]) & set(t.indices)]
        frags = [f for f in frags if f not in touching]
        group = [(f"core:{tid}", tuple(t.indices))] + touching
        keep = {i for i in set().union(*(set(ix) for _, ix in group)) if remaining_users.get(i)} | set(final)
        out_idx = [i for i in dict.fromkeys(i for _, ix in group for i in ix) if i in keep]
        path = search_path(group, out_idx, b.dims, "fast")[0] if len(group) > 1 else []
        frags.append(b.contract(group, path, keep, None, t.activation))  # torch's natural layout: no copies
    rest = [(f"core:{tid}", tuple(by_id[tid].indices)) for tid in order[stop + 1:]]
    return rest + frags  # the absorbing core first, as an absorption step lists it


def _generate(b: _StepBuilder, design: Design, search: Search, time_budget: float) -> tuple[Indices, str]:
    """Add the W-generation steps; returns the final fragment's indices and the method used."""
    final = tuple(design.in_legs + design.out_legs)
    if design.is_linear:
        ops = _core_operands(design)
        path, method = search_path(ops, final, b.dims, search, time_budget, structure_hints(design, False),
                                   refine_hints=("sweep",))
        b.contract(ops, path, set(final), final, final_name="Wt")
        return final, method
    ops = _absorb(b, design, final)
    path, method = search_path(ops, final, b.dims, search, time_budget)
    b.contract(ops, path, set(final), final, final_name="Wt")
    return final, "evaluation order" + (f", then {method}" if len(ops) > 2 else "")


def _natural_last_step(b: _StepBuilder) -> None:
    """Write W's last contraction in torch's own layout, then permute it to (in legs, out legs) as a free step.

    torch.einsum aligns every operand to the requested output order before its batched matmul, so asking for the
    final order at once makes it permute the (often much larger) operands into that order; asked for its natural
    order, it only moves their summed indices, and the reshape to ``(in, out)`` that follows copies the smaller
    result once (a 4096 x 4096 gelu MERA: 15% less time per training step on the CPU).
    """
    s = b.steps[-1]
    if s.op != "einsum" or len(s.inputs) != 2 or s.output != "Wt":
        return
    if max(b.size(ix) for ix in s.in_indices) <= s.size:  # only an operand larger than W is worth sparing
        return
    out = set(s.out_indices)
    natural = _natural_order(s.in_indices[0], s.in_indices[1], lambda i: i in out)
    if natural == tuple(s.out_indices):
        return
    name = b.fresh()
    b.steps[-1] = dataclasses.replace(s, output=name, out_indices=natural)
    b.steps.append(Step("einsum", (name,), "Wt", (natural,), tuple(s.out_indices), None, s.phase, 0, s.size))


def last_use(steps: Sequence[Any]) -> dict[str, int]:
    """Operand name -> index of the last of ``steps`` that reads it."""
    return {i: n for n, s in enumerate(steps) for i in s.inputs}


def program_rank(prog: Program) -> tuple[int, int, int]:
    """The one order in which programs of a design compete, used by the engine (``schedule="auto"``), the cost
    report and the exported module alike: fewer FLOPs, then a smaller largest intermediate (elements), then
    ``materialise`` before ``stream``."""
    return prog.flops, prog.largest_intermediate, SCHEDULES.index(prog.schedule)


def pick_program(programs: Sequence[Program]) -> Program:
    """The best of ``programs`` by :func:`program_rank`."""
    return min(programs, key=program_rank)


def check_batch(batch: Any) -> int:
    """``batch`` if it is an integer from 1 to 2^31 - 1, else ``ValueError``."""
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_DIM:
        raise ValueError(f"batch must be an integer from 1 to {MAX_DIM}, got {batch!r}")
    return batch


def check_time_budget(seconds: Any) -> float:
    """``seconds`` as a float if it is a finite number in (0, 3600], else ``ValueError``."""
    ok = isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and math.isfinite(seconds)
    if not ok or not 0 < seconds <= MAX_TIME_BUDGET:
        raise ValueError(f"the search budget must be a number of seconds above 0 and at most {MAX_TIME_BUDGET:g}, "
                         f"got {seconds!r}")
    return float(seconds)


def compile_program(design: Design, batch: int = 1, schedule: ScheduleChoice = "auto", search: Search = "fast",
                    time_budget: float = 2.0) -> Program:
    """Compile ``design`` for a batch of ``batch`` rows under ``schedule`` (``auto``: the best by
    :func:`program_rank`).

    A ``fast`` program is a pure function of (design, batch, schedule): no process history (earlier batches, other
    designs, remembered paths) changes it, so ``tnstudio cost``, a fresh ``TNLinear`` and the exporter agree in any
    process. A stream path is searched at the batch's power-of-two bucket (:func:`path_batch`) and costed at the
    batch itself, so the exported module, which carries the path of every bucket, runs the same program at any batch. ``time_budget``: seconds of wall time a ``thorough`` search may take in all (``auto`` shares them
    between the schedules). Results are cached by design fingerprint, batch, schedule and search effort. The one
    exception is documented: once a ``thorough`` program was compiled in this process (the studio's background refinement), a
    ``fast`` request is answered with it; it is never worse by :func:`program_rank`, since the thorough search
    scores every fast candidate too. Compiling allocates no tensor, so designs whose W would not fit in memory are
    costed as quickly as small ones.
    """
    if getattr(design, "conv", None) is not None:  # conv2d targets compile to conv programs
        raise ValueError(f"design {design.name!r} has a conv2d target: compile it with "
                         f"engine.contract.conv.compile_conv_program (TNConv2d runs it)")
    check_schedule(None, schedule)
    check_batch(batch)
    if search not in SEARCHES:
        raise ValueError(f"search must be fast or thorough, got {search!r}")
    check_time_budget(time_budget)
    return _compile_cached(design, design.fingerprint(), batch, schedule, search, time_budget)


def _compile_cached(design: Design, fp: str, batch: int, schedule: ScheduleChoice, search: Search,
                    time_budget: float) -> Program:
    if schedule == "auto":  # picked afresh from the cached schedules, so a refinement of either one counts
        scheds = ("materialise", "stream") if can_stream(design) else ("materialise",)
        share = time_budget / len(scheds) if search == "thorough" else time_budget  # the budget is the wall time
        return pick_program([_compile_cached(design, fp, batch, s, search, share) for s in scheds])
    key = (fp, batch, schedule, search)
    refined = CACHE.program((fp, batch, schedule, "thorough"))
    if search == "fast" and refined is not None:  # a (background) refinement ran, maybe after this fast compile:
        return refined  # serve its result, never worse (it scored the fast candidates too)
    prog = CACHE.program(key)
    if prog is not None:
        return prog
    if not CACHE.is_valid(fp):
        design.check()
        CACHE.mark_valid(fp)
    check_schedule(design, schedule)  # stream needs W linear after the last activation
    prog = _compile(design, fp, batch, schedule, search, time_budget)
    CACHE.store_program(key, prog)
    return prog


def _compile(design: Design, fp: str, batch: int, schedule: Schedule, search: Search, time_budget: float) -> Program:
    dims = {k: v.dim for k, v in design.indices.items()}
    for reserved in (BATCH, FLAT_IN, FLAT_OUT):  # validation refuses them; a design built without it too
        if reserved in dims:
            raise DesignError(f"index name {reserved!r} is reserved by TN Studio: rename it")
    dims.update({BATCH: batch, FLAT_IN: design.in_features, FLAT_OUT: design.out_features})
    b = _StepBuilder(dims)
    in_legs, out_legs = tuple(design.in_legs), tuple(design.out_legs)
    x = ("x", (BATCH, FLAT_IN))
    if schedule == "materialise":
        final, method = _generate(b, design, search, time_budget)
        _natural_last_step(b)
        w = b.reshape(("Wt", final), (FLAT_IN, FLAT_OUT), "W", "generate")
        b.einsum([x, w], (BATCH, FLAT_OUT), "y", phase="apply")
    else:
        xs = b.reshape(x, (BATCH,) + in_legs, "xs", "apply")
        out = (BATCH,) + out_legs
        searched = {**dims, BATCH: path_batch(batch)}  # the path of the batch's bucket (see PATH_BATCHES)
        if design.is_linear:
            ops = [xs] + _core_operands(design)
            path, method = search_path(ops, out, searched, search, time_budget, structure_hints(design, True))
        else:  # generate the activated fragments, then stream x through them and the linear remainder
            ops = [xs] + _absorb(b, design, in_legs + out_legs)
            path, method = search_path(ops, out, searched, search, time_budget)
            method = f"evaluation order, then {method}"
        b.contract(ops, path, set(out), out, phase="apply", final_name="ys")
        b.reshape(("ys", out), (BATCH, FLAT_OUT), "y", "apply")
    # a step is "apply" when it depends on x, wherever the path put it; core-only merges are batch independent
    on_x = {"x"}
    for n, s in enumerate(b.steps):
        if any(i in on_x for i in s.inputs):
            on_x.add(s.output)
        elif s.phase != "generate":
            b.steps[n] = dataclasses.replace(s, phase="generate")
    return Program(design_name=design.name, fingerprint=fp, schedule=schedule, batch=batch,
                   dims=dims, steps=b.steps, cores={t.id: tuple(t.indices) for t in design.tensors},
                   in_legs=in_legs, out_legs=out_legs, in_features=design.in_features,
                   out_features=design.out_features, linear=design.is_linear, method=method,
                   fixed_cores=frozenset(t.id for t in design.tensors if t.kind == "delta"))
