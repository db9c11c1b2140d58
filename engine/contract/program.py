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

FLOPs follow what ``torch.einsum`` really runs (and ``torch.utils.flop_counter`` counts): a pairwise step is one
batched matmul costing ``2 x`` the product of its index dimensions, except that an index summed in only one operand
is summed out beforehand (free), and a step with no summed index of size > 1 is an elementwise product (free).
Intermediates list their indices as ``torch.einsum`` lays them out (shared, then first-only, then second-only), so
every intermediate is a contiguous tensor.
"""
from __future__ import annotations

import dataclasses
import math
import string
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import opt_einsum as oe

from engine.design.model import Design, DesignError

LETTERS = string.ascii_letters  # torch.einsum accepts a-z and A-Z
BATCH, FLAT_IN, FLAT_OUT = "_b", "_in", "_out"
SCHEDULES = ("materialise", "stream")
GREEDY_WORK = 16  # the fast search runs GREEDY_WORK // n greedy trials on an n-tensor network (at least 1; 1 when
# the exact optimum was searched, up to 7 tensors); more trials found nothing the reconfiguration below does not
# (costmod, temperature) of the greedy trials: the plain greedy first, then randomised variants
GREEDY_TRIALS = ((1.0, 0.0), (0.5, 0.0), (2.0, 0.0), (1.0, 0.05), (0.3, 0.1), (1.5, 0.1), (0.8, 0.2), (3.0, 0.05),
                 (1.0, 0.3), (0.5, 0.1), (2.0, 0.1), (0.2, 0.05))
REFINE_MIN_TENSORS = 5  # below this the exact optimum was searched: nothing to refine
REFINE_DEEP_MAX = 72  # the second, wider reconfiguration (subtrees of 5) runs up to this many tensors


def einsum_flops(in_indices: Sequence[Sequence[str]], out_indices: Sequence[str], dims: dict[str, int]) -> int:
    """FLOPs of one ``torch.einsum`` step with one or two operands, as torch runs it (see the module docstring)."""
    if len(in_indices) < 2:
        return 0
    if len(in_indices) > 2:
        raise ValueError("program steps contract at most two operands")
    a, b = set(in_indices[0]), set(in_indices[1])
    out = set(out_indices)
    if not any(dims[i] > 1 for i in (a & b) - out):
        return 0
    one_sided = (a ^ b) - out
    return 2 * math.prod(dims[i] for i in a | b if i not in one_sided)


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
    fixed_cores: frozenset[str] = frozenset()  # cores that are not trained (delta tensors)

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

    @property
    def executable(self) -> bool:
        """Whether torch.einsum can run every step (at most 52 distinct indices per step)."""
        return all(s.op != "einsum" or s.n_indices <= len(LETTERS) for s in self.steps)

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
            eq = s.equation if s.op == "einsum" and s.n_indices <= len(LETTERS) else None
            rows.append({"step": n, "op": s.op, "inputs": list(s.inputs), "output": s.output,
                         "einsum": eq, "indices": [list(ix) for ix in s.in_indices] + [list(s.out_indices)],
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

        from engine.nn.activations import ACTIVATION_FNS

        if until_weight and self.schedule != "materialise":
            raise ValueError("until_weight needs a materialise program: a stream program never forms W")
        acts = activations or ACTIVATION_FNS
        es = einsum or torch.einsum
        plan = self.__dict__.get("_plan")
        if plan is None:  # equations, shapes and frees are fixed per program: derive them once
            last, plan = self.last_use(), []
            for n, s in enumerate(self.steps):
                frees = tuple(i for i in s.inputs if last.get(i) == n and not i.startswith("core:") and i != "x")
                arg = (tuple(-1 if i == BATCH else self.dims[i] for i in s.out_indices) if s.op == "reshape"
                       else None if s.is_identity else s.equation)
                plan.append((s.op, s.inputs, s.output, arg, s.activation, s.phase, frees))
            self.__dict__["_plan"] = plan
        env: dict[str, Any] = {f"core:{k}": v for k, v in cores.items()}
        if x is not None:
            env["x"] = x
        for op, inputs, output, arg, activation, phase, frees in plan:
            if until_weight and phase == "apply":
                break
            if op == "reshape":
                val = env[inputs[0]].reshape(arg)
            elif arg is None:
                val = env[inputs[0]]
            else:
                val = es(arg, *[env[i] for i in inputs])
            if activation is not None:
                val = acts[activation](val)
            env[output] = val
            for i in frees:  # free intermediates early
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
        in_idx = tuple(ix for _, ix in inputs)
        flops = einsum_flops(in_idx, out_idx, self.dims)
        name = out_name or self.fresh()
        self.steps.append(Step("einsum", tuple(i for i, _ in inputs), name, in_idx, tuple(out_idx), activation, phase,
                               flops, self.size(out_idx)))
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


def _natural_order(a: Sequence[str], b: Sequence[str], needed: Callable[[str], bool]) -> tuple[str, ...]:
    """The indices of ``a`` and ``b`` still needed, in torch.einsum's own layout: shared, a-only, b-only."""
    bs = set(b)
    shared = [i for i in a if i in bs and needed(i)]
    a_only = [i for i in a if i not in bs and needed(i)]
    aset = set(a)
    b_only = [i for i in b if i not in aset and needed(i)]
    return tuple(shared + a_only + b_only)


# --------------------------------------------------------------------- path search
def path_cost(index_sets: Sequence[Sequence[str]], path: Sequence[Sequence[int]], keep: set[str] | frozenset[str],
              dims: dict[str, int]) -> tuple[int, int]:
    """(FLOPs, largest intermediate) of a pairwise path, counted exactly as the program's steps are."""
    ops = [frozenset(ix) for ix in index_sets]
    holders: dict[str, int] = {}
    for ix in ops:
        for x in ix:
            holders[x] = holders.get(x, 0) + 1
    flops = peak = 0
    for pair in path:
        i, j = sorted(pair, reverse=True)
        a, b = ops.pop(i), ops.pop(j)
        for x in a:
            holders[x] -= 1
        for x in b:
            holders[x] -= 1
        u = a | b
        out = frozenset(x for x in u if holders[x] or x in keep)
        size = 1
        for x in out:
            holders[x] += 1
            size *= dims[x]
        ops.append(out)
        for x in a & b:
            if dims[x] > 1 and x not in out:  # a summed index: one batched matmul
                one_sided = (a ^ b) - out
                f = 2
                for y in u:
                    if y not in one_sided:
                        f *= dims[y]
                flops += f
                break
        if size > peak:
            peak = size
    return flops, peak


def _sequential_path(n: int) -> list[tuple[int, int]]:
    """Absorb operands in the given order (chains, trees listed bottom-up).

    In opt_einsum's linear format the result of a pair is appended last, so the running result is always the
    last operand and the next original operand sits at position 0.
    """
    return [(0, 1)] + [(0, n - 1 - k) for k in range(1, n - 1)] if n > 1 else []


def absorption_path(index_sets: Sequence[Sequence[str]], order: Sequence[int]) -> list[tuple[int, int]]:
    """The path that absorbs operands in ``order``, each merging (smallest first) with every fragment it touches.

    This is the nonlinear evaluation order of :mod:`engine.design`; for trees it contracts each subtree before its
    parent, the natural order for TTN and MERA.
    """
    ssa: list[tuple[int, int]] = []
    frags: list[tuple[int, frozenset[str]]] = []  # (ssa id, indices)
    nxt = len(index_sets)
    for v in order:
        cur_id, cur = v, frozenset(index_sets[v])
        touching = sorted((f for f in frags if f[1] & cur), key=lambda f: len(f[1]))
        frags = [f for f in frags if not (f[1] & cur)]
        for fid, fix in touching:
            ssa.append((fid, cur_id))
            cur_id, cur = nxt, cur | fix
            nxt += 1
        frags.append((cur_id, cur))
    while len(frags) > 1:  # disconnected pieces (outer products) at the end
        (a, ia), (b, ib) = frags.pop(0), frags.pop(0)
        ssa.append((a, b))
        frags.append((nxt, ia | ib))
        nxt += 1
    return [tuple(p) for p in oe.paths.ssa_to_linear(ssa)]


def _symbols(operands: list[tuple[str, tuple[str, ...]]], out_idx: Sequence[str]) -> tuple[str, dict[str, str]]:
    sym: dict[str, str] = {}
    for _, ix in operands:
        for i in ix:
            sym.setdefault(i, oe.get_symbol(len(sym)))
    for i in out_idx:
        sym.setdefault(i, oe.get_symbol(len(sym)))
    eq = ",".join("".join(sym[i] for i in ix) for _, ix in operands) + "->" + "".join(sym[i] for i in out_idx)
    return eq, sym


def cotengra_path(operands: list[tuple[str, tuple[str, ...]]], out_idx: Sequence[str], dims: dict[str, int],
                  time_budget: float, seed: int = 0) -> list[tuple[int, ...]]:
    """cotengra's HyperOptimizer (FLOPs objective) under ``time_budget`` seconds, as a linear path."""
    import warnings

    with warnings.catch_warnings():  # cotengra warns when the optional kahypar is missing; it works without it
        warnings.simplefilter("ignore")
        import cotengra as ctg

        opt = ctg.HyperOptimizer(max_time=time_budget, max_repeats=1_000_000, minimize="flops", progbar=False,
                                 parallel=False, seed=seed)
    inputs = [tuple(ix) for _, ix in operands]
    size_dict = {k: dims[k] for _, ix in operands for k in ix}
    tree = opt.search(inputs, tuple(out_idx), size_dict)
    return [tuple(p) for p in tree.get_path()]


def refine_path(index_sets: Sequence[Sequence[str]], out_idx: Sequence[str], dims: dict[str, int],
                path: Sequence[Sequence[int]]) -> list[list[tuple[int, ...]]]:
    """Locally re-optimised versions of ``path`` (cotengra's subtree reconfiguration, deterministic).

    Walking from the root down, every subtree of up to 4 leaves is replaced by its optimal contraction; on networks
    of at most ``REFINE_DEEP_MAX`` tensors the result is refined again with subtrees of 5 leaves. (Measured on the
    templates: this pair matches larger subtrees and cost-first selection in quality at about half their time.)
    Returns the candidate paths (the caller scores them with :func:`path_cost`: cotengra counts FLOPs slightly
    differently, so a reconfiguration is only a proposal).
    """
    try:
        import cotengra as ctg

        inputs = [tuple(ix) for ix in index_sets]
        size_dict = {k: dims[k] for ix in inputs for k in ix}
        tree = ctg.ContractionTree.from_path(inputs, tuple(out_idx), size_dict, path=[tuple(p) for p in path])
        tree = tree.subtree_reconfigure(subtree_size=4, select="descend", minimize="flops", seed=0)
        out = [[tuple(p) for p in tree.get_path()]]
        if len(inputs) <= REFINE_DEEP_MAX:
            tree = tree.subtree_reconfigure(subtree_size=5, select="descend", minimize="flops", seed=0)
            out.append([tuple(p) for p in tree.get_path()])
        return out
    except Exception:  # an optional improvement: the unrefined path stays valid
        return []


def search_path(operands: list[tuple[str, tuple[str, ...]]], out_idx: Sequence[str], dims: dict[str, int],
                search: str = "fast", time_budget: float = 2.0,
                hints: dict[str, list] | None = None,
                refine_hints: Sequence[str] = ()) -> tuple[list[tuple[int, ...]], str]:
    """The cheapest pairwise path (FLOPs, then largest intermediate) among several optimisers.

    ``fast`` (the live default) scores the given order, the structural ``hints`` (e.g. the tree order), the exact
    optimum for small networks (opt_einsum's optimal/dp up to 7 tensors), opt_einsum's greedy (up to 24) and
    cotengra's greedy, a fixed number of seeded randomised greedy trials (fewer on larger networks), and the best
    paths remembered for the same network structure at other bond dimensions; the best of these is then re-optimised
    locally (:func:`refine_path`, from 5 tensors), and so are the hints named in ``refine_hints`` (a structural
    order can be a poor path yet refine to the best one, e.g. the MERA sweep for W). ``thorough`` adds cotengra's hyper-optimiser under
    ``time_budget`` seconds. Every candidate is scored by :func:`path_cost`, the program's own count, and the
    search is deterministic (fixed seeds, no time limits) except for ``thorough``.
    """
    n = len(operands)
    if n <= 1:
        return [], "trivial"
    if n == 2:
        return [(0, 1)], "pair"
    sets = [ix for _, ix in operands]
    keep = frozenset(out_idx)
    best: tuple[tuple[int, int], list, str] | None = None

    def consider(name: str, path) -> None:
        nonlocal best
        path = [tuple(p) for p in path]
        if len(path) != n - 1 or any(len(p) != 2 for p in path):
            return  # not a complete pairwise path
        score = path_cost(sets, path, keep, dims)
        if best is None or score < best[0]:
            best = (score, path, name)

    consider("sequential", _sequential_path(n))
    for name, path in (hints or {}).items():
        consider(name, path)
    skey = (tuple(tuple(ix) for ix in sets), tuple(out_idx))
    for path in _PATHS.get(skey, ()):  # the best paths found before for this structure (other bond dimensions)
        consider("remembered", path)
    eq, sym = _symbols(operands, out_idx)
    shapes = [tuple(dims[i] for i in ix) for ix in sets]
    methods = (["optimal"] if n <= 4 else ["dp"] if n <= 7 else []) + (["greedy"] if n <= 24 else [])
    try:  # cotengra's greedy, then seeded randomised variants (a fixed number: the result is reproducible)
        from cotengra.pathfinders.path_basic import ContractionProcessor, ssa_to_linear
    except ImportError:  # pragma: no cover - cotengra is a dependency; opt_einsum's greedy is the fallback
        ContractionProcessor = None
    for m in methods:
        try:
            path, _ = oe.contract_path(eq, *shapes, shapes=True, optimize=m)
            consider(m, path)
        except Exception:  # an optimiser that cannot handle this network: the others still can
            pass
    if ContractionProcessor is not None:
        inputs = [tuple(ix) for ix in sets]
        size_dict = {k: dims[k] for ix in sets for k in ix}
        trials = 1 if n <= 7 else max(1, min(len(GREEDY_TRIALS), GREEDY_WORK // n))
        for seed, (costmod, temp) in enumerate(GREEDY_TRIALS[:trials]):
            cp = ContractionProcessor(inputs, tuple(out_idx), size_dict)
            cp.optimize_greedy(costmod=costmod, temperature=temp, seed=seed)
            cp.optimize_remaining_by_size()  # pieces the greedy left apart (e.g. a hyperedge on many tensors)
            consider("random-greedy" if temp else "greedy", ssa_to_linear(cp.ssa_path, n))
    if n >= REFINE_MIN_TENSORS and best[2] != "remembered":  # local re-optimisation of the best tree so far (a
        # remembered winner was refined when found: a bond change, e.g. the studio's sweep, skips this cost)
        starts = [best[1]] + [hints[h] for h in refine_hints if hints and h in hints]
        for start in starts:
            for path in refine_path(sets, out_idx, dims, start):
                consider("reconfigured", path)
    if search == "thorough" and n > 3:
        try:
            consider("cotengra", cotengra_path(operands, out_idx, dims, time_budget))
        except Exception:
            pass
    assert best is not None
    _remember(skey, best[1])
    return best[1], best[2]


# best paths per network structure (index names, not dimensions): a bond change re-scores them in microseconds,
# so what a slow search once found (e.g. a background "thorough" refinement) serves every later live report
_PATHS: dict[tuple, list[list[tuple[int, ...]]]] = {}
_PATHS_MAX, _PATHS_PER_KEY = 256, 4
_LOCK = threading.Lock()  # guards the two caches' evictions (compiles may run in a background thread)


def _remember(key: tuple, path: list[tuple[int, ...]]) -> None:
    with _LOCK:
        paths = [p for p in _PATHS.pop(key, []) if p != path]  # a new list: readers may hold the old one
        _PATHS[key] = ([path] + paths)[:_PATHS_PER_KEY]
        if len(_PATHS) > _PATHS_MAX:
            _PATHS.pop(next(iter(_PATHS)))


# --------------------------------------------------------------------- compiling designs
_CACHE: dict[tuple, Program] = {}
_CACHE_MAX = 512
_VALID: set[str] = set()  # fingerprints of designs that passed Design.check()


def _core_operands(design: Design) -> list[tuple[str, tuple[str, ...]]]:
    return [(f"core:{t.id}", tuple(t.indices)) for t in design.tensors]


def _structure_hints(design: Design, with_x: bool) -> dict[str, list]:
    """Structural paths for tree-like designs (those with an evaluation order or root).

    ``tree``: the evaluation order (subtrees before parents). With x (the stream schedule) also ``sweep``: x absorbs
    the tensors in depth-first post-order from the root, so it carries only the bonds of the current branch
    (O(log n) of them for a binary tree) instead of one per leaf; and ``tree, x last``.
    """
    if design.order is None and design.root is None:
        return {}
    pos = {t.id: k for k, t in enumerate(design.tensors)}
    order = [pos[t] for t in design.evaluation_order()]
    sets = [tuple(t.indices) for t in design.tensors]
    try:
        import networkx as nx

        root = design.root or design.evaluation_order()[-1]
        post = [pos[t] for t in nx.dfs_postorder_nodes(nx.Graph(design.graph()), source=root)]
    except Exception:  # a structural hint is optional: the general optimisers still run
        post = []
    if not with_x:
        hints = {"tree": absorption_path(sets, order)}
        if len(post) == len(sets):
            hints["sweep"] = absorption_path(sets, post)
        return hints
    sets = [tuple(design.in_legs)] + sets  # x's legs; batch left out (it is carried everywhere x goes)
    hints = {"tree": absorption_path(sets, [0] + [k + 1 for k in order]),
             "tree, x last": absorption_path(sets, [k + 1 for k in order] + [0])}
    if len(post) == len(sets) - 1:
        hints["sweep"] = absorption_path(sets, [0] + [k + 1 for k in post])
    return hints


def last_activation(design: Design) -> int:
    """Position in the evaluation order of the last tensor with an activation (-1 for a linear design)."""
    order = design.evaluation_order()
    return max((k for k, tid in enumerate(order) if design.tensor(tid).activation), default=-1)


def can_stream(design: Design) -> bool:
    """Whether x can be streamed: W must be linear in what is left after the last activation.

    True for linear designs, and for nonlinear ones whose last activated tensor is not the last one absorbed
    (e.g. a tree whose top tensor has no activation): the activated fragments are generated first, then x is
    contracted through them and the remaining cores, which is often far cheaper than building W.
    """
    return last_activation(design) < len(design.tensors) - 1


def _absorb(b: _StepBuilder, design: Design, final: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """Run the nonlinear semantics up to the last activation; returns the operands W is linear in.

    Tensors are absorbed in the evaluation order, each merging every fragment it touches and then applying its
    activation. Once the last activated tensor is absorbed, W is a multilinear function of the fragments made so
    far and the cores not yet absorbed: those are returned, in any order the caller may contract freely.
    """
    by_id = {t.id: t for t in design.tensors}
    order = design.evaluation_order()
    stop = last_activation(design)
    frags: list[tuple[str, tuple[str, ...]]] = []
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


def _generate(b: _StepBuilder, design: Design, search: str, time_budget: float) -> tuple[tuple[str, ...], str]:
    """Add the W-generation steps; returns the final fragment's indices and the method used."""
    final = tuple(design.in_legs + design.out_legs)
    if design.is_linear:
        ops = _core_operands(design)
        path, method = search_path(ops, final, b.dims, search, time_budget, _structure_hints(design, False),
                                   refine_hints=("sweep",))
        b.contract(ops, path, set(final), final, final_name="Wt")
        return final, method
    ops = _absorb(b, design, final)
    path, method = search_path(ops, final, b.dims, search, time_budget)
    b.contract(ops, path, set(final), final, final_name="Wt")
    return final, "evaluation order" + (f", then {method}" if len(ops) > 2 else "")


def compile_program(design: Design, batch: int = 1, schedule: str = "auto", search: str = "fast",
                    time_budget: float = 2.0) -> Program:
    """Compile ``design`` for a batch of ``batch`` rows under ``schedule`` (``auto`` picks the fewer FLOPs).

    Results are cached by design fingerprint, batch, schedule and search effort; a ``fast`` request is answered
    with the ``thorough`` program when one was compiled (e.g. by a background refinement), and every search starts
    from the best paths found for the same network at other bond dimensions. Compiling allocates no tensor, so
    designs whose W would not fit in memory are costed as quickly as small ones.
    """
    if schedule not in ("auto",) + SCHEDULES:
        raise ValueError(f"schedule must be auto, materialise or stream, got {schedule!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if search not in ("fast", "thorough"):
        raise ValueError(f"search must be fast or thorough, got {search!r}")
    return _compile_cached(design, design.fingerprint(), batch, schedule, search, time_budget)


def _compile_cached(design: Design, fp: str, batch: int, schedule: str, search: str, time_budget: float) -> Program:
    key = (fp, batch, schedule, search)
    refined = _CACHE.get((fp, batch, schedule, "thorough"))
    if search == "fast" and refined is not None:  # a (background) refinement ran, maybe after this fast compile:
        return refined  # serve its result, never worse (it scored the fast candidates too)
    if key in _CACHE:
        return _CACHE[key]
    if fp not in _VALID:
        design.check()
        _VALID.add(fp)
    if schedule == "auto":
        cands = [_compile_cached(design, fp, batch, "materialise", search, time_budget)]
        if can_stream(design):
            cands.append(_compile_cached(design, fp, batch, "stream", search, time_budget))
        prog = min(cands, key=lambda p: (p.flops, p.largest_intermediate))
    elif schedule == "stream" and not can_stream(design):
        raise ValueError("the stream schedule needs W to be linear in what follows the last activation: here the "
                         "last tensor absorbed has an activation, so W must be materialised")
    else:
        prog = _compile(design, fp, batch, schedule, search, time_budget)
    with _LOCK:  # a background refinement may compile in another thread
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = prog
    return prog


def _compile(design: Design, fp: str, batch: int, schedule: str, search: str, time_budget: float) -> Program:
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
        out = (BATCH,) + out_legs
        if design.is_linear:
            ops = [xs] + _core_operands(design)
            path, method = search_path(ops, out, dims, search, time_budget, _structure_hints(design, True))
        else:  # generate the activated fragments, then stream x through them and the linear remainder
            ops = [xs] + _absorb(b, design, in_legs + out_legs)
            path, method = search_path(ops, out, dims, search, time_budget)
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


def clear_cache(paths: bool = False) -> None:
    """Forget compiled programs (and, with ``paths``, the remembered best paths per network structure)."""
    with _LOCK:
        _CACHE.clear()
        _VALID.clear()
        if paths:
            _PATHS.clear()
