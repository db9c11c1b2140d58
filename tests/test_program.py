"""Contraction programs: results against numpy, FLOPs against torch's counter and opt_einsum, path search."""
from __future__ import annotations

import math

import numpy as np
import opt_einsum as oe
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.design.model import Design, Index, Tensor
from engine.contract.cache import clear_cache
from engine.contract.flops import einsum_flops
from engine.contract.paths import absorption_path, path_cost, search_path
from engine.contract.program import BATCH, LETTERS, compile_program
from engine.contract.schedule import can_stream
from engine.nn.execute import run_program
from engine.design.templates import TEMPLATE_KINDS, make_template

LINEAR = [(k, None) for k in TEMPLATE_KINDS]
NONLINEAR = [(k, a) for k in ("mpo", "tensor_ring", "ttn", "attn", "mera") for a in ("relu", "tanh")]


def _design(kind: str, act: str | None, in_f: int = 64, out_f: int = 96, bond: int = 3) -> Design:
    return make_template(kind, in_f, out_f, bond, activation=act)


def _cores(prog, seed: int = 0, grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {cid: (torch.randn(*[prog.dims[i] for i in idx], generator=g, dtype=torch.float64) * 0.5)
            .requires_grad_(grad) for cid, idx in prog.cores.items()}


def _dense_w(prog, cores) -> np.ndarray:
    """W from one numpy einsum over every core (independent of the program's order)."""
    names = {}
    for idx in prog.cores.values():
        for i in idx:
            names.setdefault(i, oe.get_symbol(len(names)))
    ops = [cores[c].detach().numpy() for c in prog.cores]
    eq = ",".join("".join(names[i] for i in idx) for idx in prog.cores.values()) + "->" + "".join(
        names[i] for i in prog.in_legs + prog.out_legs)
    return np.einsum(eq, *ops, optimize=True).reshape(prog.in_features, prog.out_features)


@pytest.mark.parametrize("kind,act", LINEAR)
def test_linear_programs_compute_x_at_w(kind, act):
    d = _design(kind, act)
    for sched in ("materialise", "stream"):
        prog = compile_program(d, 5, sched)
        cores = _cores(prog)
        x = torch.randn(5, d.in_features, dtype=torch.float64)
        w = _dense_w(prog, cores)
        y = run_program(prog, cores, x).numpy()
        np.testing.assert_allclose(y, x.numpy() @ w, rtol=1e-9, atol=1e-9)
        if sched == "materialise":
            np.testing.assert_allclose(run_program(prog, cores, until_weight=True).numpy(), w, rtol=1e-9, atol=1e-12)


def _reference_nonlinear_w(d: Design, cores) -> np.ndarray:
    """The design's nonlinear semantics, written independently: absorb tensors in order with numpy."""
    acts = {"relu": lambda a: np.maximum(a, 0), "tanh": np.tanh}
    frags: list[tuple[np.ndarray, list[str]]] = []
    for tid in d.evaluation_order():
        t = d.tensor(tid)
        touching = [f for f in frags if set(f[1]) & set(t.indices)]
        frags = [f for f in frags if not any(f is g for g in touching)]
        group = [(cores[tid].detach().numpy(), list(t.indices))] + touching
        later = {i for u in d.tensors if u.id not in {*d.evaluation_order()[:d.evaluation_order().index(tid) + 1]}
                 for i in u.indices}
        allidx = list(dict.fromkeys(i for _, ix in group for i in ix))
        out = [i for i in allidx if i in later or d.indices[i].role != "bond"]
        names = {i: oe.get_symbol(k) for k, i in enumerate(allidx)}
        eq = ",".join("".join(names[i] for i in ix) for _, ix in group) + "->" + "".join(names[i] for i in out)
        arr = np.einsum(eq, *[a for a, _ in group])
        if t.activation:
            arr = acts[t.activation](arr)
        frags.append((arr, out))
    (arr, idx), = frags
    order = d.in_legs + d.out_legs
    return np.transpose(arr, [idx.index(i) for i in order]).reshape(d.in_features, d.out_features)


@pytest.mark.parametrize("kind,act", NONLINEAR)
def test_nonlinear_programs_follow_the_evaluation_semantics(kind, act):
    d = _design(kind, act)
    prog = compile_program(d, 4, "materialise")
    cores = _cores(prog, seed=1)
    np.testing.assert_allclose(run_program(prog, cores, until_weight=True).numpy(), _reference_nonlinear_w(d, cores),
                               rtol=1e-9, atol=1e-12)
    # the templates leave the last tensor unactivated, so x can stream through the activated fragments
    assert can_stream(d)
    stream = compile_program(d, 4, "stream")
    x = torch.randn(4, d.in_features, dtype=torch.float64)
    W = torch.from_numpy(_reference_nonlinear_w(d, cores))
    np.testing.assert_allclose(run_program(stream, cores, x).numpy(), (x @ W).numpy(), rtol=1e-9, atol=1e-12)
    assert [s.activation for s in stream.steps if s.activation] == [s.activation for s in prog.steps if s.activation]


def test_stream_is_refused_when_the_last_tensor_is_activated():
    d = _design("ttn", "tanh")
    d.tensor(d.evaluation_order()[-1]).activation = "tanh"  # now W itself is squashed: only materialise is valid
    assert not can_stream(d)
    with pytest.raises(ValueError, match="must be materialised"):
        compile_program(d, 4, "stream")
    assert compile_program(d, 4).schedule == "materialise"


def _torch_flops(prog, input_grad: bool) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs that FlopCounterMode counts while the program runs and trains."""
    cores = _cores(prog, grad=True)
    x = torch.randn(prog.batch, prog.in_features, dtype=torch.float64, requires_grad=input_grad)
    with FlopCounterMode(display=False) as fc:
        y = run_program(prog, cores, x)
        forward = fc.get_total_flops()
        y.sum().backward()  # sum and its backward (an expand) are not FLOPs for the counter
    return forward, fc.get_total_flops()


@pytest.mark.parametrize("kind,act", LINEAR + NONLINEAR)
def test_step_flops_equal_torch_flop_counter(kind, act):
    """Forward and forward+backward FLOPs of every program equal what FlopCounterMode counts running it."""
    from engine.contract.flops import backward_flops

    d = _design(kind, act)
    for sched in (("materialise", "stream") if d.is_linear else ("materialise",)):
        for batch, input_grad in ((1, False), (5, True)):
            prog = compile_program(d, batch, sched)
            forward, total = _torch_flops(prog, input_grad)
            assert forward == prog.flops
            assert total == prog.flops + backward_flops(prog, input_grad)


def test_flop_rule_matches_torch_on_random_pairs():
    """The per-step rule (outer products free, one-sided sums free, size-1 sums free) on random equations."""
    rng = np.random.default_rng(0)
    for _ in range(150):
        labels = list("abcdefg")[: rng.integers(2, 7)]
        dims = {i: int(rng.choice([1, 2, 3])) for i in labels}
        a = list(rng.choice(labels, rng.integers(1, len(labels) + 1), replace=False))
        b = list(rng.choice(labels, rng.integers(1, len(labels) + 1), replace=False))
        union = list(dict.fromkeys(a + b))
        out = [i for i in union if rng.random() < 0.4]
        ta = torch.randn(*[dims[i] for i in a], requires_grad=True)
        tb = torch.randn(*[dims[i] for i in b], requires_grad=True)
        with FlopCounterMode(display=False) as fc:
            torch.einsum(f"{''.join(a)},{''.join(b)}->{''.join(out)}", ta, tb).sum().backward()
        assert fc.get_total_flops() == 3 * einsum_flops([a, b], out, dims), (a, b, out, dims)


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_flops_agree_with_opt_einsum(kind):
    """opt_einsum's opt_cost for the same path counts 2 x size per summed pair, like us, but also counts a product
    with nothing summed (an outer product or Hadamard product: ``num_terms - 1`` = 1 FLOP per output element),
    which torch runs as an elementwise ``mul`` that FLOP counters (and we) leave out. So
    ``opt_cost == program FLOPs + sum(output size of the steps with 0 FLOPs)``."""
    d = _design(kind, None, 128, 256, 4)
    for sched in ("materialise", "stream"):
        prog = compile_program(d, 8, sched)
        steps = [s for s in prog.steps if s.op == "einsum" and len(s.inputs) == 2]
        # the program's pairwise steps as one einsum over its leaves, with the program's path
        leaves = [(s.inputs[k], s.in_indices[k]) for s in steps for k in range(2)
                  if not s.inputs[k].startswith("t") and s.inputs[k] not in ("Wt", "ys")]
        if sched == "materialise":
            leaves = [lf for lf in leaves if lf[0] != "x" and lf[0] != "W"]
            steps = [s for s in steps if s.output != "y"]
        syms = {}
        for _, ix in leaves:
            for i in ix:
                syms.setdefault(i, oe.get_symbol(len(syms)))
        final = steps[-1].out_indices
        eq = ",".join("".join(syms[i] for i in ix) for _, ix in leaves) + "->" + "".join(syms[i] for i in final)
        # rebuild the linear path from the steps
        pos = [name for name, _ in leaves]
        path = []
        for s in steps:
            i, j = pos.index(s.inputs[0]), pos.index(s.inputs[1])
            path.append((i, j))
            pos = [p for k, p in enumerate(pos) if k not in (i, j)] + [s.output]
        _, info = oe.contract_path(eq, *[tuple(prog.dims[i] for i in ix) for _, ix in leaves], shapes=True,
                                   optimize=path)
        ours = sum(s.flops for s in steps)
        products = sum(s.size for s in steps if s.flops == 0)
        assert int(info.opt_cost) == ours + products


def test_path_cost_matches_the_compiled_steps():
    for kind in TEMPLATE_KINDS:
        d = _design(kind, None, 256, 256, 5)
        prog = compile_program(d, 1, "materialise")
        ops = [tuple(t.indices) for t in d.tensors]
        path, _ = search_path([(f"core:{t.id}", tuple(t.indices)) for t in d.tensors], d.in_legs + d.out_legs,
                              prog.dims)
        flops, peak = path_cost(ops, path, frozenset(d.in_legs + d.out_legs), prog.dims)
        assert flops == prog.generate_flops
        assert peak == max(s.size for s in prog.steps if s.phase == "generate" and s.op == "einsum")


def test_search_never_worse_than_greedy_or_the_given_order():
    for kind in ("mera", "attn", "ttn", "tensor_ring", "tucker"):
        d = make_template(kind, 2 ** 12, 2 ** 12, 4, in_factors=[2] * 12, out_factors=[2] * 12)
        dims = {k: v.dim for k, v in d.indices.items()}
        ops = [(t.id, tuple(t.indices)) for t in d.tensors]
        out = d.in_legs + d.out_legs
        path, _ = search_path(ops, out, dims)
        best = path_cost([ix for _, ix in ops], path, frozenset(out), dims)
        eq = ",".join("".join(oe.get_symbol(list(dims).index(i)) for i in ix) for _, ix in ops) + "->" + "".join(
            oe.get_symbol(list(dims).index(i)) for i in out)
        greedy, _ = oe.contract_path(eq, *[tuple(dims[i] for i in ix) for _, ix in ops], shapes=True,
                                     optimize="greedy")
        assert best <= path_cost([ix for _, ix in ops], greedy, frozenset(out), dims)


def test_absorption_path_contracts_subtrees_first():
    d = make_template("ttn", 256, 256, 4, in_factors=[4] * 4, out_factors=[4] * 4)
    sets = [tuple(t.indices) for t in d.tensors]
    ids = [t.id for t in d.tensors]
    path = absorption_path(sets, [ids.index(t) for t in d.evaluation_order()])
    assert len(path) == len(sets) - 1
    flops, peak = path_cost(sets, path, frozenset(d.in_legs + d.out_legs), {k: v.dim for k, v in d.indices.items()})
    assert peak == 256 * 256  # the largest tensor is W itself: every subtree is merged before its parent


def test_cache_by_fingerprint_and_bond_change():
    clear_cache()
    d = make_template("mpo", 256, 256, 4)
    p1 = compile_program(d, 8)
    assert compile_program(d.copy(), 8) is p1  # same maths, same program
    d2 = make_template("mpo", 256, 256, 5)
    assert compile_program(d2, 8) is not p1
    assert compile_program(d2, 8).flops != p1.flops


def test_thorough_refinement_serves_later_fast_reports():
    """After a thorough (cotengra) search, a fast request for the same design returns it. After a bond change the
    fast search stays a pure function of the design (what was remembered does not change it), and the next
    thorough search also scores the remembered refined path, so it is never worse than either."""
    def mera(bond):
        return make_template("mera", 2 ** 8, 2 ** 8, bond, in_factors=[2] * 8, out_factors=[2] * 8)

    clear_cache(paths=True)
    cold = compile_program(mera(4), 4, "materialise")
    clear_cache(paths=True)
    refined = compile_program(mera(3), 4, "materialise", "thorough", time_budget=0.3)
    assert compile_program(mera(3), 4, "materialise") is refined
    warm = compile_program(mera(4), 4, "materialise")
    assert [s.in_indices for s in warm.steps] == [s.in_indices for s in cold.steps]  # pure: the same program
    d = mera(4)
    dims = {k: v.dim for k, v in d.indices.items()}
    sets = [tuple(t.indices) for t in d.tensors]
    steps = [s for s in refined.steps if s.op == "einsum" and len(s.inputs) == 2 and s.phase == "generate"]
    pos = [f"core:{t.id}" for t in d.tensors]
    path = []
    for s in steps:  # the refined program's path, replayed on the new bond dimension
        i, j = pos.index(s.inputs[0]), pos.index(s.inputs[1])
        path.append((i, j))
        pos = [p for k, p in enumerate(pos) if k not in (i, j)] + [s.output]
    replayed = path_cost(sets, path, frozenset(d.in_legs + d.out_legs), dims)[0]
    again = compile_program(mera(4), 4, "materialise", "thorough", time_budget=0.3)
    assert again.generate_flops <= min(cold.generate_flops, replayed)
    assert compile_program(mera(4), 4, "materialise") is again  # and the live report now shows it
    clear_cache(paths=True)


def test_intermediates_are_contiguous_in_torch():
    """Intermediate index order is torch.einsum's own layout, so every intermediate comes out contiguous."""
    d = make_template("mera", 2 ** 8, 2 ** 8, 3, in_factors=[2] * 8, out_factors=[2] * 8)
    prog = compile_program(d, 2, "materialise")
    cores = _cores(prog)
    env = {f"core:{k}": v for k, v in cores.items()}
    for s in prog.steps:
        if s.op != "einsum":
            break
        env[s.output] = torch.einsum(s.equation, *[env[i] for i in s.inputs])
        if s.output.startswith("t"):
            assert env[s.output].is_contiguous(), s


def test_huge_designs_are_costed_without_tensors():
    """A 2^20 x 2^20 MPO (W would be 4 TiB) compiles and costs from integers alone: no torch op runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from engine.contract.cost import cost_report

    class NoTensors(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            raise AssertionError(f"cost model ran a torch op: {func}")

    d = make_template("mpo", 2 ** 20, 2 ** 20, 8)
    clear_cache()
    with NoTensors():
        rep = cost_report(d, batch=256)
    assert rep.dense_params == 2 ** 40
    assert rep.schedule == "stream"
    assert rep.schedules["materialise"].peak_memory_bytes >= 2 ** 40 * 4  # W itself is counted


def test_more_indices_than_letters_still_costs():
    d = make_template("mpo", 2 ** 30, 2 ** 30, 2, in_factors=[2] * 30, out_factors=[2] * 30)
    prog = compile_program(d, 1, "materialise")
    assert not prog.executable
    rows = prog.describe()
    assert any(r.einsum is None for r in rows)
    assert len(LETTERS) == 52


def test_bad_arguments():
    d = make_template("mpo", 64, 64, 2)
    with pytest.raises(ValueError, match="batch"):
        compile_program(d, 0)
    with pytest.raises(ValueError, match="schedule"):
        compile_program(d, 1, "sideways")
    with pytest.raises(ValueError, match="search"):
        compile_program(d, 1, search="slow")


def test_reserved_index_name_is_rejected():
    d = Design("bad", 4, 4, {BATCH: Index(4, "in", 0), "o": Index(4, "out", 0)}, [Tensor("A", [BATCH, "o"])])
    with pytest.raises(Exception, match="reserved"):
        compile_program(d, 1, "materialise")


def test_delta_cores_need_no_gradient():
    from engine.contract.flops import backward_flops

    d = make_template("cp", 64, 64, 4)
    prog = compile_program(d, 4, "stream")
    d2 = d.copy()
    d2.tensors[0].kind = "delta"
    prog2 = compile_program(d2, 4, "stream")
    assert prog2.fixed_cores == {d.tensors[0].id}
    assert backward_flops(prog2, False) < backward_flops(prog, False)
    assert math.isclose(prog2.flops, prog.flops)


def _networks(kind: str, sites: int, bond: int = 4, batch: int = 64):
    """The two linear networks of a template on 2-dim legs: cores -> W, and x + cores -> y."""
    d = make_template(kind, 2 ** sites, 2 ** sites, bond, in_factors=[2] * sites, out_factors=[2] * sites)
    dims = {k: v.dim for k, v in d.indices.items()}
    dims[BATCH] = batch
    cores = [(t.id, tuple(t.indices)) for t in d.tensors]
    yield cores, tuple(d.in_legs + d.out_legs), dims
    yield [("x", (BATCH,) + tuple(d.in_legs))] + cores, (BATCH,) + tuple(d.out_legs), dims


@pytest.mark.parametrize("kind,sites", [("ttn", 8), ("mera", 8), ("cp", 8), ("tensor_ring", 16), ("attn", 8)])
def test_reconfiguration_is_deterministic_and_never_worse(kind, sites, monkeypatch):
    import engine.contract.paths as path_search

    for ops, out, dims in _networks(kind, sites):
        sets = [ix for _, ix in ops]
        clear_cache(paths=True)
        path, _ = search_path(ops, out, dims)
        clear_cache(paths=True)
        assert search_path(ops, out, dims)[0] == path  # same network, same path
        cost = path_cost(sets, path, frozenset(out), dims)
        with monkeypatch.context() as m:  # the same search without the local reconfiguration
            m.setattr(path_search, "REFINE_MIN_TENSORS", 10 ** 9)
            clear_cache(paths=True)
            plain, _ = search_path(ops, out, dims)
        assert cost <= path_cost(sets, plain, frozenset(out), dims)
        for cand in path_search.refine_path(sets, out, dims, plain):  # every proposal is a complete pairwise path
            assert len(cand) == len(sets) - 1 and all(len(p) == 2 for p in cand)
            assert cost <= path_cost(sets, cand, frozenset(out), dims)
        clear_cache(paths=True)


def test_reconfiguration_fixes_a_bad_tree():
    """From a poor order (materialise W top-down, then apply x), the reconfiguration reaches at least the cost of
    opt_einsum's exact search on this small network."""
    from engine.contract.paths import refine_path

    ops, out, dims = list(_networks("ttn", 4, bond=3))[1]
    sets = [ix for _, ix in ops]
    n = len(sets)
    # the cores from the top down (W is built first), x absorbed at the very end
    bad = [tuple(p) for p in oe.paths.ssa_to_linear([(n - 1, n - 2)] + [(n - 3 - k, n + k) for k in range(n - 2)])]
    exact, _ = oe.contract_path(
        ",".join("".join(oe.get_symbol(sorted(dims).index(i)) for i in ix) for ix in sets) + "->"
        + "".join(oe.get_symbol(sorted(dims).index(i)) for i in out),
        *[tuple(dims[i] for i in ix) for ix in sets], shapes=True, optimize="optimal")
    start = path_cost(sets, bad, frozenset(out), dims)[0]
    best = min(path_cost(sets, p, frozenset(out), dims)[0] for p in refine_path(sets, out, dims, bad))
    assert best < start
    assert best <= path_cost(sets, exact, frozenset(out), dims)[0]


def test_thorough_result_replaces_an_earlier_fast_compile():
    """A fast compile cached first is superseded once a thorough one exists (the studio's background refinement)."""
    clear_cache(paths=True)
    d = make_template("ttn", 2 ** 8, 2 ** 8, 3, in_factors=[2] * 8, out_factors=[2] * 8)
    fast = compile_program(d, 16, "stream")
    thorough = compile_program(d, 16, "stream", "thorough", time_budget=0.2)
    assert compile_program(d, 16, "stream") is thorough
    assert thorough.flops <= fast.flops
    clear_cache(paths=True)  # leave no time-dependent path behind for later tests


def test_one_schedule_rule_everywhere():
    """compile_program, cost_report and TNLinear refuse a schedule with the same words (check_schedule)."""
    from engine.contract.cost import cost_report
    from engine.contract.schedule import SCHEDULE_CHOICES, check_schedule
    from engine.nn.linear import TNLinear

    d = _design("ttn", "tanh")
    d.tensor(d.evaluation_order()[-1]).activation = "tanh"
    messages = set()
    for refuse in (lambda: compile_program(d, 4, "stream"), lambda: cost_report(d, schedule="stream"),
                   lambda: TNLinear(d, schedule="stream"), lambda: check_schedule(d, "stream")):
        with pytest.raises(ValueError, match="cannot stream") as e:
            refuse()
        messages.add(str(e.value))
    assert len(messages) == 1
    with pytest.raises(ValueError, match="schedule must be auto, materialise or stream"):
        check_schedule(None, "bogus")
    assert SCHEDULE_CHOICES == ("auto", "materialise", "stream")


def test_execution_plan_is_derived_once_and_weight_needs_materialise():
    d = _design("mpo", None)
    prog = compile_program(d, 2, "stream")
    assert prog.plan is prog.plan and len(prog.plan) == len(prog.steps)
    with pytest.raises(ValueError, match="materialise"):
        run_program(prog, _cores(prog), until_weight=True)


def test_cotengra_hyper_optimiser_runs_with_the_installed_optional_libraries():
    """The thorough search's cotengra call must really run (a failure would be logged and silently skipped):
    cotengra picks optuna as its optimiser library when installed, and its adapter broke on optuna 5."""
    from engine.contract.paths import cotengra_path

    d = make_template("mera", 256, 256, 3)
    ops = [(f"core:{t.id}", tuple(t.indices)) for t in d.tensors]
    dims = {k: v.dim for k, v in d.indices.items()}
    path = cotengra_path(ops, tuple(d.in_legs + d.out_legs), dims, time_budget=0.3)
    assert len(path) == len(ops) - 1 and all(len(p) == 2 for p in path)


def test_thorough_search_keeps_to_its_wall_time_budget():
    """``--search thorough`` with a budget of B seconds takes about B seconds of wall time in all: ``auto`` shares
    it between the two schedules, and cotengra gets what the fast part of each search left. Measured with a clock
    (cotengra would otherwise spend the whole budget on each schedule); a loopy network makes the fast part slow."""
    import time

    from engine.contract.cache import clear_cache
    from engine.contract.cost import cost_report

    d = make_template("mpo", 2 ** 12, 2 ** 12, 4, in_factors=[2] * 12, out_factors=[2] * 12)
    budget = 1.0
    for run in (lambda: compile_program(d, 64, "auto", "thorough", budget),
                lambda: cost_report(d, batch=64, search="thorough", time_budget=budget)):
        clear_cache(paths=True)
        t = time.perf_counter()
        run()
        took = time.perf_counter() - t
        assert took <= 1.35 * budget, took  # cotengra finishes its running trial after the deadline: a margin
    # the budget is spent: each schedule searched for about half of it (not a fixed short search)
    clear_cache(paths=True)
    t = time.perf_counter()
    compile_program(d, 64, "stream", "thorough", budget / 2)
    assert time.perf_counter() - t >= 0.3 * budget


def test_cotengra_backends_run_on_our_index_names(caplog):
    """Every cotengra call of the fast search really runs on networks whose index names are words (``b17``,
    ``core:L0``): cotengra's Rust backend takes single characters only, and a failure there is caught and logged
    (the search would silently fall back to fewer candidates). Each candidate is a complete pairwise path whose
    FLOPs, by the program's own count, are at most the plain greedy's."""
    import logging

    import networkx as nx

    from engine.contract.paths import _greedy_paths, _sampled_greedy, refine_path

    edges = sorted(tuple(sorted(e)) for e in nx.random_regular_graph(3, 30, seed=4).edges())
    sets = [tuple(f"bond_{k}" for k, e in enumerate(edges) if v in e) + (f"leg_{v}",) for v in range(30)]
    out = tuple(f"leg_{v}" for v in range(30))
    dims = {i: 2 for ix in sets for i in ix}
    keep = frozenset(out)
    with caplog.at_level(logging.DEBUG, logger="engine.contract.paths"):
        greedy = _greedy_paths(sets, out, dims, 4)
        sampled = _sampled_greedy(sets, out, dims, 16)
        refined = refine_path(sets, out, dims, greedy[0][1])
    assert not [r for r in caplog.records if "failed" in r.getMessage()], caplog.text
    assert len(greedy) == 4 and len(sampled) == 1 and refined
    plain = path_cost(sets, greedy[0][1], keep, dims)
    for path in [p for _, p in greedy] + sampled + refined:
        assert len(path) == len(sets) - 1 and all(len(p) == 2 for p in path)
    assert path_cost(sets, refined[0], keep, dims) <= plain
    # the search's answer is no worse than any of these greedy trials (its own first ones), and the same in a
    # second call (a pure function)
    ops = [(f"T{v}", ix) for v, ix in enumerate(sets)]
    first, how = search_path(ops, out, dims)
    assert search_path(ops, out, dims) == (first, how)
    assert path_cost(sets, first, keep, dims) <= min(path_cost(sets, p, keep, dims) for _, p in greedy)


def _loopy(n: int, seed: int = 0):
    """A random 3-regular network of ``n`` tensors with one leg each (as benchmarks/cost_latency.py's)."""
    from engine.design.graphs import regular_graph_design

    return regular_graph_design(n, seed=seed)


def test_a_regular_graph_design_is_that_graph():
    """``regular_graph_design``: tensor k holds one leg and a bond per edge of networkx's seeded regular graph, so
    its network (without the legs) is that graph, loopy in the path search's sense."""
    import networkx as nx

    from engine.contract.paths import is_loopy
    from engine.design.graphs import regular_graph_design

    d = regular_graph_design(40, bond=3, seed=5, degree=4, leg=2)
    g = nx.random_regular_graph(4, 40, seed=5)
    bonds = [i for i, x in d.indices.items() if x.role == "bond"]
    got = {tuple(sorted(int(t.id[1:]) for t in d.tensors if b in t.indices)) for b in bonds}
    assert got == {tuple(sorted(e)) for e in g.edges()} and len(bonds) == g.number_of_edges()
    assert all(d.dim(b) == 3 for b in bonds) and (d.in_features, d.out_features) == (2 ** 20, 2 ** 20)
    assert all(sum(d.indices[i].role != "bond" for i in t.indices) == 1 for t in d.tensors)
    assert is_loopy([(t.id, tuple(t.indices)) for t in d.tensors])


def test_a_loopy_report_searches_its_two_schedules_side_by_side(monkeypatch):
    """On a loopy network of >= THREAD_MIN_TENSORS tensors the stream path is searched in a thread beside the
    materialise one; the report is the serial one exactly (the searches are pure functions of the network), and
    templates and small networks stay serial."""
    import threading

    import engine.contract.cost as cost
    from engine.contract.cache import clear_cache

    started: list[str] = []
    real = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), real(self))[1])
    loopy = _loopy(cost.THREAD_MIN_TENSORS + 8)
    reports = {}
    for threaded in (True, False):
        monkeypatch.setattr(cost, "THREAD_STREAM_SEARCH", threaded)
        clear_cache(paths=True)
        started.clear()
        reports[threaded] = cost.cost_report(loopy, batch=64)
        assert started.count("stream-path") == (1 if threaded else 0)
    a, b = reports[True].to_dict(), reports[False].to_dict()
    assert a == b and set(a["schedules"]) == {"materialise", "stream"}
    monkeypatch.setattr(cost, "THREAD_STREAM_SEARCH", True)
    for serial in (_loopy(cost.THREAD_MIN_TENSORS - 8), make_template("mera", 4096, 4096, 2, "gelu"),
                   make_template("ttn", 2 ** 16, 2 ** 16, 3)):
        clear_cache(paths=True)
        started.clear()
        cost.cost_report(serial, batch=64)
        assert "stream-path" not in started, serial.name
