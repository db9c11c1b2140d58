"""Path search: the cheapest pairwise contraction order of a network, scored exactly as the program counts it.

Operands are ``(name, indices)`` pairs; paths are in opt_einsum's linear format (pairs of positions, the result of
each pair appended last). Every candidate, whichever optimiser proposed it, is scored by :func:`path_cost`.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Mapping, Sequence

import opt_einsum as oe

from engine.contract.cache import CACHE
from engine.contract.flops import flop_indices
from engine.design.model import Design
from engine.types import ContractionPath, Operand, Search

log = logging.getLogger(__name__)

SEARCHES: tuple[Search, ...] = ("fast", "thorough")
GREEDY_WORK = 16  # the fast search runs GREEDY_WORK // n greedy trials on an n-tensor network (at least 1; 1 when
# the exact optimum was searched, up to 7 tensors); more trials found nothing the reconfiguration below does not
# (costmod, temperature) of the greedy trials: the plain greedy first, then randomised variants
GREEDY_TRIALS = ((1.0, 0.0), (0.5, 0.0), (2.0, 0.0), (1.0, 0.05), (0.3, 0.1), (1.5, 0.1), (0.8, 0.2), (3.0, 0.05),
                 (1.0, 0.3), (0.5, 0.1), (2.0, 0.1), (0.2, 0.05))
REFINE_MIN_TENSORS = 5  # below this the exact optimum was searched: nothing to refine
REFINE_FIRST = 4  # the local re-optimisation replaces every subtree of this many leaves by its optimum,
REFINE_DEEP = 6  # then, on networks of at most REFINE_DEEP_ALWAYS tensors or where the first pass improved the
REFINE_DEEP_ALWAYS = 32  # tree, every subtree of REFINE_DEEP leaves (cheap with cotengra's Rust backend; measured on
# the templates: it brings the 78-127-tensor aTTN, MERA and TTN streams from 2-57x to within 2x of cotengra's 2 s
# hyper-search, chains and rings are left as they were). On networks of more than REFINE_LARGE tensors only where
# the first pass gained more than REFINE_DEEP_LARGE_GAIN: the 128-site chains' streams gain 2% there and nothing
# from the deeper pass, which took a third of their report (the trees that profit gained 1.8x to 10^5x)
REFINE_LARGE = 96
REFINE_DEEP_LARGE_GAIN = 1.1
# Loopy networks (random graphs): one greedy trial and a local refinement can be orders of magnitude off there, so
# a network whose cores (x left out) have a cyclomatic number of at least LOOPY_RATIO x tensors (and at least
# LOOPY_MIN tensors) gets LOOPY_GREEDY greedy trials, the best of LOOPY_SAMPLED randomised ones and the refinement
# of its LOOPY_REFINE best candidates (measured on 3-regular networks of 24-80 tensors: 64 sampled trials put all 24
# live paths within 1.33x of cotengra's 10 s search, 256 were no better and 16 left 4 beyond 1.5x).
# Templates (trees, chains, rings, aTTN and MERA, whose ratio is at most 0.31) keep the lean search. cotengra's
# kahypar partitioner was measured as a further candidate and left out: on 3-regular random networks of 24-80
# tensors (3 seeds each, benchmarks/cost_latency.py) it put 17 instead of 15 of 24 live paths within 1.5x of
# cotengra's 10 s hyper-optimisation (worst 4.8x either way) for 1.5-1.7x the report's latency.
LOOPY_RATIO = 0.4
LOOPY_MIN = 12
LOOPY_GREEDY = 4
LOOPY_REFINE = 1
# The refinement of a loopy network's best path goes straight to subtrees of LOOPY_REFINE_SIZE leaves. Without the
# pass over subtrees of 4 first, and with 4 instead of 8 greedy trials, the 40-tensor report took 49 instead of 62 ms
# (medians of one run); on 36 loopy networks of 24-60 tensors (6 seeds) the worst live path stayed at 1.43x of
# cotengra's 10 s search and the median went from 1.07x to 1.09x.
LOOPY_REFINE_SIZE = 6
# With cotengra's Rust backend (cotengrust) a batch of randomised greedy trials costs well under a millisecond per
# trial, so the fast search adds the best of SAMPLED_WORK // n of them (at most SAMPLED_MAX; LOOPY_SAMPLED on loopy
# networks) as one more candidate, seeded: still a pure function of the network
SAMPLED_WORK = 1024
SAMPLED_MAX = 64
LOOPY_SAMPLED = 64
# Running a loopy network's sampled trials on a worker thread (cotengrust releases the GIL) while this thread scored
# the other candidates was measured and left out: 12 ms faster per 40-tensor report on a loaded machine, 6 ms slower
# on an idle one (the thread's start and the GIL's hand-back cost about what the overlap saved). What pays is a
# coarser split: the report searches the stream schedule's whole path in a thread beside the materialise one
# (engine.contract.cost.THREAD_STREAM_SEARCH, loopy networks of 32 tensors or more).
# cotengra's hyper-optimiser samples these path finders (its default adds kahypar's partitioner when kahypar happens
# to be installed, which made the 2 s background refinement worse on loopy networks: 17 instead of 21 of 24 within
# 1.1x of cotengra's 10 s search, worst 2.2x instead of 1.15x); pinned, the search does not depend on what else is
# installed
HYPER_METHODS = ("greedy", "labels")


def path_cost(index_sets: Sequence[Sequence[str]], path: Sequence[Sequence[int]], keep: frozenset[str] | set[str],
              dims: Mapping[str, int]) -> tuple[int, int]:
    """(FLOPs, largest intermediate) of a pairwise path, counted exactly as the program's steps are.

    An intermediate keeps the indices another operand still holds or ``keep`` lists (the search's hot loop).
    """
    ops = [frozenset(ix) for ix in index_sets]
    holders: dict[str, int] = {}
    for ix in ops:
        for x in ix:
            holders[x] = holders.get(x, 0) + 1
    flops = peak = 0
    for pair in path:
        i, j = sorted(pair, reverse=True)
        a, b = ops.pop(i), ops.pop(j)
        gone = []  # indices no other operand holds any more
        for x in itertools.chain(a, b):
            c = holders[x] = holders[x] - 1
            if not c:
                gone.append(x)
        union = a | b
        out = union.difference(gone).union(keep.intersection(gone)) if gone else union
        size = 1
        for x in out:
            holders[x] += 1
            size *= dims[x]
        ops.append(out)
        counted = flop_indices(a, b, out, dims)
        if counted is not None:
            f = 2
            for x in counted:
                f *= dims[x]
            flops += f
        if size > peak:
            peak = size
    return flops, peak


def sequential_path(n: int) -> ContractionPath:
    """Absorb operands in the given order (chains, trees listed bottom-up).

    In opt_einsum's linear format the result of a pair is appended last, so the running result is always the
    last operand and the next original operand sits at position 0.
    """
    return [(0, 1)] + [(0, n - 1 - k) for k in range(1, n - 1)] if n > 1 else []


def absorption_path(index_sets: Sequence[Sequence[str]], order: Sequence[int]) -> ContractionPath:
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


def _postorder(design: Design, root: str) -> list[str]:
    """Tensor ids in depth-first post-order from ``root`` ([] when the graph cannot be walked)."""
    try:
        import networkx as nx
    except ImportError:  # pragma: no cover - networkx is a dependency; the general optimisers still run
        return []
    try:
        return list(nx.dfs_postorder_nodes(nx.Graph(design.graph()), source=root))
    except (nx.NetworkXException, KeyError) as e:  # a structural hint is optional: the general optimisers still run
        log.debug("no depth-first sweep for design %r: %s", design.name, e)
        return []


def structure_hints(design: Design, with_x: bool) -> dict[str, ContractionPath]:
    """Structural paths for tree-like designs (those with an evaluation order or root).

    ``tree``: the evaluation order (subtrees before parents). With x (the stream schedule, x first) also ``sweep``:
    x absorbs the tensors in depth-first post-order from the root, so it carries only the bonds of the current
    branch (O(log n) of them for a binary tree) instead of one per leaf; and ``tree, x last``.
    """
    if design.order is None and design.root is None:
        return {}
    pos = {t.id: k for k, t in enumerate(design.tensors)}
    evaluation = design.evaluation_order()
    order = [pos[t] for t in evaluation]
    sets = [tuple(t.indices) for t in design.tensors]
    post = [pos[t] for t in _postorder(design, design.root or evaluation[-1])]
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


# a network with one character per index name: (inputs, output, size_dict), as _symbolic makes it
Symbolic = tuple[list[tuple[str, ...]], tuple[str, ...], dict[str, int]]


def _equation(symbolic: Symbolic) -> str:
    """The network (as :func:`_symbolic` names it) as an opt_einsum equation."""
    inputs, output, _ = symbolic
    return ",".join("".join(ix) for ix in inputs) + "->" + "".join(output)


def _symbolic(index_sets: Sequence[Sequence[str]], out_idx: Sequence[str], dims: Mapping[str, int]) -> Symbolic:
    """The network with one character per index name (opt_einsum's symbols), for cotengra: its Rust backend
    (cotengrust) takes only single-character indices. Paths name tensors by position, so they carry over.
    :func:`search_path` makes it once and hands it to each finder (``symbolic``); called alone they make it."""
    sym: dict[str, str] = {}
    for ix in list(index_sets) + [out_idx]:
        for i in ix:
            sym.setdefault(i, oe.get_symbol(len(sym)))
    inputs = [tuple(sym[i] for i in ix) for ix in index_sets]
    return inputs, tuple(sym[i] for i in out_idx), {sym[i]: dims[i] for i in sym}


def cotengra_path(operands: Sequence[Operand], out_idx: Sequence[str], dims: Mapping[str, int],
                  time_budget: float, seed: int = 0, methods: Sequence[str] | None = HYPER_METHODS,
                  symbolic: Symbolic | None = None, reconfigure: bool = True) -> ContractionPath:
    """cotengra's HyperOptimizer (FLOPs objective) under ``time_budget`` seconds, as a linear path; ``methods``:
    the path finders it samples (``None``: cotengra's default, with kahypar when it is installed); ``reconfigure``:
    cotengra reconfigures each sampled tree (its ``reconf_opts``) before scoring it, which on loopy random networks
    of 60-80 tensors took the 2 s refinement from 1.10-1.16x to at most 1.05x of cotengra's 10 s default search
    (``False``: cotengra's defaults, the benchmarks' reference)."""
    import warnings

    with warnings.catch_warnings():  # cotengra warns when the optional kahypar is missing; it works without it
        warnings.simplefilter("ignore")
        import cotengra as ctg

        # optlib pinned to cotengra's own dependency-free Nelder-Mead subplex: its default becomes "optuna" once
        # optuna is installed (the design search needs it), and cotengra's optuna adapter fails on optuna 5
        opt = ctg.HyperOptimizer(max_time=time_budget, max_repeats=1_000_000, minimize="flops", progbar=False,
                                 parallel=False, seed=seed, optlib="sbplx",
                                 **({"reconf_opts": {}} if reconfigure else {}),
                                 **({"methods": list(methods)} if methods is not None else {}))
    inputs, output, size_dict = symbolic or _symbolic([ix for _, ix in operands], out_idx, dims)
    tree = opt.search(inputs, output, size_dict)
    return [tuple(p) for p in tree.get_path()]


def refine_path(index_sets: Sequence[Sequence[str]], out_idx: Sequence[str], dims: Mapping[str, int],
                path: Sequence[Sequence[int]], symbolic: Symbolic | None = None,
                subtree: int | None = None) -> list[ContractionPath]:
    """Locally re-optimised versions of ``path`` (cotengra's subtree reconfiguration, deterministic).

    Walking from the root down, every subtree of up to ``REFINE_FIRST`` leaves is replaced by its optimal
    contraction; on small networks, and where that improved the tree, the result is refined again with subtrees of
    ``REFINE_DEEP`` leaves. With ``subtree``, one pass with subtrees of that many leaves instead.
    Returns the candidate paths (the caller scores them with :func:`path_cost`: cotengra counts FLOPs slightly
    differently, so a reconfiguration is only a proposal).
    """
    try:
        import cotengra as ctg
    except ImportError:  # pragma: no cover - cotengra is a dependency; the unrefined path stays valid
        return []
    inputs, output, size_dict = symbolic or _symbolic(index_sets, out_idx, dims)
    try:
        tree = ctg.ContractionTree.from_path(inputs, output, size_dict, path=[tuple(p) for p in path])
        if subtree is not None:
            tree = tree.subtree_reconfigure(subtree_size=subtree, select="descend", minimize="flops", seed=0)
            return [[tuple(p) for p in tree.get_path()]]
        before = tree.total_flops()
        tree = tree.subtree_reconfigure(subtree_size=REFINE_FIRST, select="descend", minimize="flops", seed=0)
        out = [[tuple(p) for p in tree.get_path()]]
        # the deeper pass only where the first one found something (or on small networks, where it is cheap): a
        # tree no subtree of 4 improves (e.g. a chain's sweep) is rarely improved by larger subtrees
        gained = before / max(tree.total_flops(), 1)
        if len(inputs) <= REFINE_DEEP_ALWAYS or gained > (REFINE_DEEP_LARGE_GAIN if len(inputs) > REFINE_LARGE
                                                          else 1.0):
            tree = tree.subtree_reconfigure(subtree_size=REFINE_DEEP, select="descend", minimize="flops", seed=0)
            out.append([tuple(p) for p in tree.get_path()])
        return out
    except Exception as e:  # noqa: BLE001 - cotengra's failure modes are not documented; a refinement is an
        # optional improvement (the unrefined path stays valid), so log why and go on without it
        log.debug("path refinement failed on a %d-tensor network: %r", len(inputs), e)
        return []


def search_path(operands: Sequence[Operand], out_idx: Sequence[str], dims: Mapping[str, int],
                search: Search = "fast", time_budget: float = 2.0,
                hints: Mapping[str, ContractionPath] | None = None,
                refine_hints: Sequence[str] = ()) -> tuple[ContractionPath, str]:
    """The cheapest pairwise path among several optimisers, and its origin.

    Candidates compete in one total order: FLOPs, then the largest intermediate, then the path itself (its pairs
    compared as tuples), so the winner does not depend on the order candidates were proposed in. ``fast`` (the
    live default) scores the given order, the structural ``hints`` (e.g. the tree order), the exact optimum for
    small networks (opt_einsum's optimal/dp up to 7 tensors), opt_einsum's greedy (up to 24) and cotengra's greedy
    with a fixed number of seeded randomised trials (fewer on larger networks); the best of these is then always
    re-optimised locally (:func:`refine_path`, from 5 tensors), and so are the hints named in ``refine_hints`` (a
    structural order can be a poor path yet refine to the best one, e.g. the MERA sweep for W). Every candidate is
    scored by :func:`path_cost`, the program's own count, and nothing remembered from earlier searches takes part:
    a ``fast`` result is a pure function of the network (fixed seeds, no time limits).

    Loopy networks (:func:`is_loopy`: many independent cycles, e.g. random graphs) get more of the same, still a
    pure function of the network: ``LOOPY_GREEDY`` greedy trials and the refinement of the ``LOOPY_REFINE`` best.

    ``thorough`` runs the whole fast search, then also scores the best paths remembered for the same network
    structure (index names) at other bond dimensions and cotengra's hyper-optimiser (its tree refined locally too),
    all within about ``time_budget`` seconds of wall time (cotengra gets what the fast part left): never worse than
    ``fast``, but time dependent.
    """
    started = time.perf_counter()
    n = len(operands)
    if n <= 1:
        return [], "trivial"
    if n == 2:
        return [(0, 1)], "pair"
    sets = [ix for _, ix in operands]
    keep = frozenset(out_idx)
    best: tuple[tuple[int, int, tuple[tuple[int, ...], ...]], ContractionPath, str] | None = None
    loopy = is_loopy(operands)
    seen: dict[tuple, tuple] = {}  # every candidate: path -> rank (loopy networks refine the best few)

    def consider(name: str, path: Sequence[Sequence[int]]) -> None:
        nonlocal best
        path = [tuple(p) for p in path]
        if len(path) != n - 1 or any(len(p) != 2 for p in path):
            return  # not a complete pairwise path
        key = tuple(path)
        rank = seen.get(key)
        if rank is None:  # a path proposed again (e.g. a refinement that changed nothing) is not counted again
            rank = seen[key] = path_cost(sets, path, keep, dims) + (key,)
        if best is None or rank < best[0]:
            best = (rank, path, name)

    consider("sequential", sequential_path(n))
    for name, path in (hints or {}).items():
        consider(name, path)
    sym = _symbolic(sets, out_idx, dims)  # the network as cotengra takes it, made once for every finder
    eq = _equation(sym)
    shapes = [tuple(dims[i] for i in ix) for ix in sets]
    methods = (["optimal"] if n <= 4 else ["dp"] if n <= 7 else []) + (["greedy"] if n <= 24 else [])
    for m in methods:
        try:
            path, _ = oe.contract_path(eq, *shapes, shapes=True, optimize=m)
        except Exception as e:  # noqa: BLE001 - an optimiser that cannot handle this network (its failure modes
            # are opt_einsum's): the others still can, so log why and go on
            log.debug("opt_einsum's %s path failed on a %d-tensor network: %r", m, n, e)
            continue
        consider(m, path)
    for name, path in _greedy_paths(sets, out_idx, dims, LOOPY_GREEDY if loopy else None, sym):
        consider(name, path)
    if n > 7:
        trials = LOOPY_SAMPLED if loopy else min(SAMPLED_MAX, SAMPLED_WORK // n)
        for path in _sampled_greedy(sets, out_idx, dims, trials, sym):
            consider("sampled-greedy", path)
    if n >= REFINE_MIN_TENSORS:  # local re-optimisation of the best tree so far, always (a pure function)
        tops = [list(p) for p, _ in sorted(seen.items(), key=lambda kv: kv[1])[:LOOPY_REFINE]] if loopy else []
        starts = [best[1]] + [t for t in tops if t != best[1]] + [hints[h] for h in refine_hints
                                                                    if hints and h in hints]
        for start in starts:
            for path in refine_path(sets, out_idx, dims, start, sym, LOOPY_REFINE_SIZE if loopy else None):
                consider("reconfigured", path)
    structure = (tuple(tuple(ix) for ix in sets), tuple(out_idx))
    if search == "thorough" and n > 3:
        for path in CACHE.paths(structure):  # the best paths found before for this structure (other bond dims)
            consider("remembered", path)
        # the budget is the wall time of the whole search: cotengra gets what the fast part left, less a tenth for
        # the reconfiguration of its tree (at least a tenth of the budget, so it always runs)
        left = max(0.9 * time_budget - (time.perf_counter() - started), 0.1 * time_budget)
        try:
            found = cotengra_path(operands, out_idx, dims, left, symbolic=sym)
            consider("cotengra", found)
            for path in refine_path(sets, out_idx, dims, found, sym):  # its local structure re-optimised by our count
                consider("cotengra, reconfigured", path)
        except Exception as e:  # noqa: BLE001 - cotengra's failure modes are not documented; the fast search's
            # path stays valid, so warn (the user asked for more) and keep it
            log.warning("cotengra's hyper-optimiser failed on a %d-tensor network, keeping the fast path: %r", n, e)
    assert best is not None
    CACHE.remember_path(structure, best[1])  # seeds later thorough searches only
    return best[1], best[2]


def is_loopy(operands: Sequence[Operand]) -> bool:
    """Whether the network of ``operands`` without x (``x``/``xs``) has many independent cycles: a cyclomatic
    number (bonds - tensors + pieces, a bond on k tensors counting k - 1) of at least ``LOOPY_RATIO`` per tensor."""
    sets = [ix for name, ix in operands if name not in ("x", "xs")]
    n = len(sets)
    if n < LOOPY_MIN:
        return False
    holders: dict[str, list[int]] = {}
    for k, ix in enumerate(sets):
        for i in set(ix):
            holders.setdefault(i, []).append(k)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    edges = 0
    for h in holders.values():
        edges += len(h) - 1
        for other in h[1:]:
            parent[find(other)] = find(h[0])
    pieces = len({find(k) for k in range(n)})
    return edges - n + pieces >= LOOPY_RATIO * n


def _sampled_greedy(sets: Sequence[Sequence[str]], out_idx: Sequence[str], dims: Mapping[str, int],
                    trials: int, symbolic: Symbolic | None = None) -> list[ContractionPath]:
    """The best of ``trials`` seeded randomised greedy paths (cotengra's batch with its own FLOP tracking), only
    with its Rust backend: the Python one takes milliseconds per trial, too slow for the live report."""
    import importlib.util

    if trials < 1 or importlib.util.find_spec("cotengrust") is None:
        return []
    from cotengra.pathfinders.path_basic import get_optimize_random_greedy_track_flops

    inputs, output, size_dict = symbolic or _symbolic(sets, out_idx, dims)
    try:
        path, _ = get_optimize_random_greedy_track_flops()(inputs, output, size_dict, ntrials=trials, seed=0,
                                                           simplify=False)
    except (OverflowError, ValueError) as e:  # sizes beyond a float: the other candidates still stand
        log.debug("cotengra's sampled greedy failed on a %d-tensor network: %r", len(sets), e)
        return []
    return [[tuple(p) for p in path]]


def _greedy_paths(sets: Sequence[Sequence[str]], out_idx: Sequence[str],
                  dims: Mapping[str, int], trials: int | None = None,
                  symbolic: Symbolic | None = None) -> list[tuple[str, ContractionPath]]:
    """cotengra's greedy, then seeded randomised variants (a fixed number: the result is reproducible).

    Runs through cotengra's ``get_optimize_greedy``: its Rust backend (cotengrust, a dependency: 10-50x faster
    than the Python one, which is what lets loopy networks get many trials within the live budget) when installed,
    the Python one otherwise, with the same trials and results of the same quality."""
    try:
        from cotengra.pathfinders.path_basic import get_optimize_greedy
    except ImportError:  # pragma: no cover - cotengra is a dependency; opt_einsum's greedy still ran
        return []
    n = len(sets)
    inputs, output, size_dict = symbolic or _symbolic(sets, out_idx, dims)
    if trials is None:
        trials = 1 if n <= 7 else max(1, min(len(GREEDY_TRIALS), GREEDY_WORK // n))
    greedy = get_optimize_greedy()
    out = []
    for seed in range(trials):
        costmod, temp = GREEDY_TRIALS[seed % len(GREEDY_TRIALS)]
        if seed >= len(GREEDY_TRIALS):  # more trials than listed: the listed ones again, hotter
            temp = temp + 0.05 * (seed // len(GREEDY_TRIALS))
        try:
            # simplify=False: a pairwise path over exactly these tensors (no single-term steps); both backends
            # join pieces the greedy left apart (e.g. a hyperedge on many tensors) by size at the end
            path = greedy(inputs, output, size_dict, costmod=costmod, temperature=temp, seed=seed,
                          simplify=False)
        except (OverflowError, ValueError) as e:  # sizes beyond a float (cotengra scores in floats): the other
            log.debug("cotengra's greedy failed on a %d-tensor network: %r", n, e)  # candidates still stand
            continue
        out.append(("random-greedy" if temp else "greedy", [tuple(p) for p in path]))
    return out
