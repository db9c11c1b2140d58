"""Contraction programs: the one description of how a design is evaluated.

A :class:`Program` is an ordered list of :class:`Step` s. Each step is one ``torch.einsum`` with explicit
subscripts over named indices (optionally followed by an elementwise activation) or a free reshape. The cost model
counts FLOPs and bytes from these steps, the torch engine executes them, and the exporter prints them, so an
estimate describes exactly what runs.

Two schedules:

- ``materialise``: generate W from the cores (for nonlinear designs in the order fixed by the design's
  evaluation semantics, see :mod:`engine.design`), reshape it to ``(in, out)``, then ``y = x @ W``.
- ``stream`` (linear designs only): reshape x to ``(B, in_1, ..., in_k)`` and contract it through the cores.

Operand names: ``x`` is the input (``B x in``), ``core:<id>`` a core, ``t<n>`` an intermediate, ``W`` the weight
and ``y`` the output (``B x out``). The batch index is ``_b``; flat features are ``_in`` and ``_out``.
"""
from __future__ import annotations

import dataclasses
import math
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import opt_einsum as oe

from .design import Design, DesignError

LETTERS = string.ascii_letters  # torch.einsum accepts a-z and A-Z
BATCH, FLAT_IN, FLAT_OUT = "_b", "_in", "_out"
SCHEDULES = ("materialise", "stream")


@dataclass(frozen=True)
class Step:
    """One step: ``einsum`` (inputs -> output, then optional activation) or ``reshape`` (one input)."""

    op: str
    inputs: tuple[str, ...]
    output: str
    in_indices: tuple[tuple[str, ...], ...]
    out_indices: tuple[str, ...]
    activation: str | None = None
    phase: str = "generate"  # "generate" (builds W, batch independent) or "apply" (touches x)
    flops: int = 0
    size: int = 0  # elements of the output

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


@dataclass
class Program:
    """A compiled design: steps plus everything needed to execute, cost and print them."""

    design_name: str
    fingerprint: str
    schedule: str
    batch: int
    dims: dict[str, int]
    steps: list[Step]
    cores: dict[str, tuple[str, ...]]  # core id -> its indices, in the design's order
    in_legs: tuple[str, ...]
    out_legs: tuple[str, ...]
    in_features: int
    out_features: int
    linear: bool
    method: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- counts
    @property
    def generate_flops(self) -> int:
        return sum(s.flops for s in self.steps if s.phase == "generate")

    @property
    def apply_flops(self) -> int:
        return sum(s.flops for s in self.steps if s.phase == "apply")

    @property
    def flops(self) -> int:
        """Forward FLOPs (2 x multiply-adds) of the whole program at its batch size."""
        return sum(s.flops for s in self.steps)

    @property
    def largest_intermediate(self) -> int:
        """Elements of the largest tensor a step produces (inputs excluded)."""
        return max((s.size for s in self.steps), default=0)

    def last_use(self) -> dict[str, int]:
        """Operand name -> index of the last step that reads it."""
        out: dict[str, int] = {}
        for n, s in enumerate(self.steps):
            for i in s.inputs:
                out[i] = n
        return out

    def describe(self) -> list[dict[str, Any]]:
        """The steps as plain dicts (for JSON, tables and the CLI)."""
        rows = []
        for n, s in enumerate(self.steps):
            rows.append({"step": n, "op": s.op, "inputs": list(s.inputs), "output": s.output,
                         "einsum": s.equation if s.op == "einsum" else None,
                         "indices": [list(ix) for ix in s.in_indices] + [list(s.out_indices)],
                         "activation": s.activation, "phase": s.phase, "flops": s.flops,
                         "shape": [self.dims[i] for i in s.out_indices], "size": s.size})
        return rows

    # ----------------------------------------------------------------- execution
    def execute(self, cores: dict[str, Any], x: Any | None = None, activations: dict[str, Callable] | None = None,
                einsum: Callable | None = None, until_weight: bool = False) -> Any:
        """Run the program on torch tensors: ``cores`` maps core id -> tensor, ``x`` is ``(B, in)``.

        Returns ``y`` (``B x out``), or W (``in x out``) with ``until_weight`` (materialise schedule only).
        """
        import torch

        from .activations import ACTIVATION_FNS

        acts = activations or ACTIVATION_FNS
        es = einsum or torch.einsum
        env: dict[str, Any] = {f"core:{k}": v for k, v in cores.items()}
        if x is not None:
            env["x"] = x
        last = self.last_use()
        for n, s in enumerate(self.steps):
            if until_weight and s.phase == "apply":
                break
            args = [env[i] for i in s.inputs]
            if s.op == "reshape":
                shape = [(-1 if i == BATCH else self.dims[i]) for i in s.out_indices]
                val = args[0].reshape(shape)
            elif s.is_identity:
                val = args[0]
            else:
                val = es(s.equation, *args)
            if s.activation is not None:
                val = acts[s.activation](val)
            env[s.output] = val
            for i in s.inputs:  # free intermediates early
                if last.get(i) == n and not i.startswith("core:") and i != "x":
                    env.pop(i, None)
        return env["W"] if until_weight else env[self.steps[-1].output]


# --------------------------------------------------------------------- building steps
class _StepBuilder:
    def __init__(self, dims: dict[str, int]):
        self.dims = dims
        self.steps: list[Step] = []
        self.n = 0

    def fresh(self) -> str:
        name = f"t{self.n}"
        self.n += 1
        return name

    def size(self, idx: Sequence[str]) -> int:
        return math.prod(self.dims[i] for i in idx)

    def einsum(self, inputs: Sequence[tuple[str, tuple[str, ...]]], out_idx: Sequence[str], out_name: str | None = None,
               activation: str | None = None, phase: str = "generate") -> tuple[str, tuple[str, ...]]:
        union: list[str] = []
        for _, ix in inputs:
            union += [i for i in ix if i not in union]
        macs = self.size(union)
        summed = set(union) - set(out_idx)
        # torch lowers a contraction to a batched matmul (2 FLOPs per multiply-add); a product with nothing
        # summed is an elementwise multiply, which the FLOP counters (and we) leave out.
        flops = 2 * macs if len(inputs) > 1 and summed else 0
        name = out_name or self.fresh()
        self.steps.append(Step("einsum", tuple(i for i, _ in inputs), name, tuple(ix for _, ix in inputs),
                               tuple(out_idx), activation, phase, flops, self.size(out_idx)))
        return name, tuple(out_idx)

    def reshape(self, inp: tuple[str, tuple[str, ...]], out_idx: Sequence[str], out_name: str,
                phase: str) -> tuple[str, tuple[str, ...]]:
        self.steps.append(Step("reshape", (inp[0],), out_name, (inp[1],), tuple(out_idx), None, phase, 0,
                               self.size(out_idx)))
        return out_name, tuple(out_idx)

    def contract(self, operands: list[tuple[str, tuple[str, ...]]], path: Sequence[Sequence[int]],
                 keep: set[str], final_idx: Sequence[str] | None, activation: str | None = None,
                 phase: str = "generate", final_name: str | None = None) -> tuple[str, tuple[str, ...]]:
        """Contract ``operands`` pairwise along ``path`` (opt_einsum's linear format).

        An intermediate keeps the indices still needed by a remaining operand or listed in ``keep``; the last
        step emits ``final_idx`` (if given) and carries ``activation``.
        """
        ops = list(operands)
        if len(ops) == 1:
            name, idx = ops[0]
            out = tuple(final_idx) if final_idx is not None else idx
            if activation is None and out == idx and final_name is None:
                return ops[0]
            return self.einsum([ops[0]], out, final_name, activation, phase)
        for k, pair in enumerate(path):
            pair = sorted(pair, reverse=True)
            picked = [ops.pop(p) for p in pair][::-1]
            is_last = k == len(path) - 1
            rest = {i for _, ix in ops for i in ix}
            if is_last and final_idx is not None:
                out_idx = tuple(final_idx)
            else:
                seen: list[str] = []
                for _, ix in picked:
                    seen += [i for i in ix if i not in seen and (i in rest or i in keep)]
                out_idx = tuple(seen)
            ops.append(self.einsum(picked, out_idx, final_name if is_last else None,
                                   activation if is_last else None, phase))
        assert len(ops) == 1, "path did not contract every operand"
        return ops[0]


def _symbols(operands: list[tuple[str, tuple[str, ...]]], out_idx: Sequence[str]) -> tuple[str, dict[str, int]]:
    sym: dict[str, str] = {}
    for _, ix in operands:
        for i in ix:
            sym.setdefault(i, oe.get_symbol(len(sym)))
    for i in out_idx:
        sym.setdefault(i, oe.get_symbol(len(sym)))
    eq = ",".join("".join(sym[i] for i in ix) for _, ix in operands) + "->" + "".join(sym[i] for i in out_idx)
    return eq, sym


def _sequential_path(n: int) -> list[tuple[int, int]]:
    """Absorb operands in the given order (chains, trees listed bottom-up).

    In opt_einsum's linear format the result of a pair is appended last, so the running result is always the
    last operand and the next original operand sits at position 0.
    """
    return [(0, 1)] + [(0, n - 1 - k) for k in range(1, n - 1)] if n > 1 else []


def _simulate_cost(operands: list[tuple[str, tuple[str, ...]]], path: Sequence[Sequence[int]],
                   out_idx: Sequence[str], dims: dict[str, int]) -> tuple[int, int]:
    """(FLOPs, largest intermediate) of a path, counted exactly as :class:`_StepBuilder` would."""
    b = _StepBuilder(dims)
    b.contract(operands, path, set(out_idx), out_idx)
    return sum(s.flops for s in b.steps), max((s.size for s in b.steps), default=0)


def search_path(operands: list[tuple[str, tuple[str, ...]]], out_idx: Sequence[str], dims: dict[str, int],
                search: str = "fast", time_budget: float = 2.0) -> tuple[list[tuple[int, ...]], str]:
    """The cheapest pairwise path (FLOPs, then largest intermediate) among several optimisers.

    ``fast`` tries the given order, opt_einsum's greedy and (for small networks) its exact dynamic programme;
    ``thorough`` adds cotengra's hyper-optimiser under ``time_budget`` seconds.
    """
    n = len(operands)
    if n <= 1:
        return [], "trivial"
    if n == 2:
        return [(0, 1)], "pair"
    eq, sym = _symbols(operands, out_idx)
    shapes = [tuple(dims[i] for i in ix) for _, ix in operands]
    candidates: dict[str, list] = {"sequential": _sequential_path(n)}
    methods = ["greedy"] + (["optimal"] if n <= 4 else []) + (["dp"] if n <= 12 else [])
    for m in methods:
        try:
            path, _ = oe.contract_path(eq, *shapes, shapes=True, optimize=m)
            candidates[m] = [tuple(p) for p in path]
        except Exception:  # an optimiser that cannot handle this network: the others still can
            pass
    if search == "thorough" and n > 3:
        try:
            import cotengra as ctg

            opt = ctg.HyperOptimizer(max_time=time_budget, max_repeats=10_000, minimize="flops", progbar=False,
                                     parallel=False)
            inputs = [tuple(sym[i] for i in ix) for _, ix in operands]
            size_dict = {sym[k]: v for k, v in dims.items() if k in sym}
            tree = opt.search(inputs, tuple(sym[i] for i in out_idx), size_dict)
            candidates["cotengra"] = [tuple(p) for p in tree.get_path()]
        except Exception:
            pass
    best = min(candidates.items(), key=lambda kv: _simulate_cost(operands, kv[1], out_idx, dims))
    return best[1], best[0]


# --------------------------------------------------------------------- compiling designs
_CACHE: dict[tuple, Program] = {}
_CACHE_MAX = 512


def _core_operands(design: Design) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"core:{t.id}", tuple(t.indices)) for t in design.tensors]


def _generate(b: _StepBuilder, design: Design, search: str, time_budget: float) -> tuple[tuple[str, ...], str]:
    """Add the W-generation steps; returns the final fragment's indices and the method used."""
    final = tuple(design.in_legs + design.out_legs)
    ops = _core_operands(design)
    if design.is_linear:
        path, method = search_path(ops, final, b.dims, search, time_budget)
        b.contract(ops, path, set(final), final, final_name="Wt")
        return final, method
    # nonlinear: absorb tensors in the evaluation order, merging every fragment they touch
    by_id = {t.id: t for t in design.tensors}
    frags: list[tuple[str, tuple[str, ...]]] = []
    order = design.evaluation_order()
    remaining_users = design.users()
    for k, tid in enumerate(order):
        t = by_id[tid]
        for i in t.indices:
            remaining_users[i] = [u for u in remaining_users[i] if u != tid]
        touching = [f for f in frags if set(f[1]) & set(t.indices)]
        frags = [f for f in frags if f not in touching]
        group = [(f"core:{tid}", tuple(t.indices))] + touching
        is_last = k == len(order) - 1
        keep = {i for i in set().union(*(set(ix) for _, ix in group)) if remaining_users.get(i)} | set(final)
        if len(group) > 1:
            out_idx: list[str] = []
            for _, ix in group:
                out_idx += [i for i in ix if i in keep and i not in out_idx]
            eq_ops = group
            path, _ = search_path(eq_ops, out_idx, b.dims, "fast")
            frag = b.contract(eq_ops, path, keep, final if is_last else tuple(out_idx), t.activation,
                              final_name="Wt" if is_last else None)
        else:
            frag = b.contract(group, [], keep, final if is_last else None, t.activation,
                              final_name="Wt" if is_last else None)
        frags.append(frag)
    if len(frags) != 1:
        raise DesignError("the network is not connected: evaluation left several fragments")
    return final, "evaluation order"


def compile_program(design: Design, batch: int = 1, schedule: str = "auto", search: str = "fast",
                    time_budget: float = 2.0) -> Program:
    """Compile ``design`` for a batch of ``batch`` rows under ``schedule`` (``auto`` picks the fewer FLOPs).

    Results are cached by design fingerprint, batch, schedule and search effort.
    """
    if schedule not in ("auto",) + SCHEDULES:
        raise ValueError(f"schedule must be auto, materialise or stream, got {schedule!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    key = (design.fingerprint(), batch, schedule, search)
    if key in _CACHE:
        return _CACHE[key]
    design.check()
    if schedule == "auto":
        cands = [compile_program(design, batch, "materialise", search, time_budget)]
        if design.is_linear:
            cands.append(compile_program(design, batch, "stream", search, time_budget))
        prog = min(cands, key=lambda p: (p.flops, p.largest_intermediate))
    elif schedule == "stream" and not design.is_linear:
        raise ValueError("the stream schedule needs a linear design: activations make W a nonlinear function of "
                         "the cores, so it must be materialised")
    else:
        prog = _compile(design, batch, schedule, search, time_budget)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = prog
    return prog


def _compile(design: Design, batch: int, schedule: str, search: str, time_budget: float) -> Program:
    dims = {k: v.dim for k, v in design.indices.items()}
    for reserved in (BATCH, FLAT_IN, FLAT_OUT):
        if reserved in dims:
            raise DesignError(f"index name {reserved!r} is reserved by TN Studio: rename it")
    dims.update({BATCH: batch, FLAT_IN: design.in_features, FLAT_OUT: design.out_features})
    b = _StepBuilder(dims)
    in_legs, out_legs = tuple(design.in_legs), tuple(design.out_legs)
    x = ("x", (BATCH, FLAT_IN))
    if schedule == "materialise":
        final, method = _generate(b, design, search, time_budget)
        w = b.reshape(("Wt", final), (FLAT_IN, FLAT_OUT), "W", "generate")
        b.einsum([x, w], (BATCH, FLAT_OUT), "y", phase="apply")
    else:
        xs = b.reshape(x, (BATCH,) + in_legs, "xs", "apply")
        ops = [xs] + _core_operands(design)
        out = (BATCH,) + out_legs
        path, method = search_path(ops, out, dims, search, time_budget)
        b.contract(ops, path, set(out), out, phase="apply", final_name="ys")
        b.reshape(("ys", out), (BATCH, FLAT_OUT), "y", "apply")
    # a step is "apply" when it depends on x, wherever the path put it; core-only merges are batch independent
    on_x = {"x"}
    for n, s in enumerate(b.steps):
        if any(i in on_x for i in s.inputs):
            on_x.add(s.output)
        elif s.phase != "generate":
            b.steps[n] = dataclasses.replace(s, phase="generate")
    return Program(design_name=design.name, fingerprint=design.fingerprint(), schedule=schedule, batch=batch,
                   dims=dims, steps=b.steps, cores={t.id: tuple(t.indices) for t in design.tensors},
                   in_legs=in_legs, out_legs=out_legs, in_features=design.in_features,
                   out_features=design.out_features, linear=design.is_linear, method=method)


def clear_cache() -> None:
    _CACHE.clear()
