"""Lateral mixing tensors (option ``lateral`` of ttn, attn, mera): placement, closed-form parameter counts, W against
hand-written numpy semantics, FLOPs against FlopCounterMode, the cost model's growth, initialisation, CLI, schema."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import erf
from torch.utils.flop_counter import FlopCounterMode

from engine.cli import main
from engine.contract.cost import cost_report
from engine.contract.flops import backward_flops
from engine.contract.program import compile_program
from engine.contract.schedule import can_stream
from engine.design.model import load_design
from engine.design.templates import TEMPLATES, lateral_levels, make_template
from engine.nn.activations import ACTIVATION_FNS
from engine.nn.execute import run_program
from engine.nn.init import raw_cores, target_std
from engine.nn.linear import TNLinear

pytestmark = pytest.mark.usefixtures("one_thread")

LATERAL_KINDS = ("ttn", "attn", "mera")
SCHEMA = Path(__file__).resolve().parents[1] / "engine" / "assets" / "design.schema.json"
NP_ACT = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0.0),
          "gelu": lambda v: 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))}


# ----------------------------------------------------------------------------- closed forms, written independently
def phys(nin: list[int], nout: list[int]) -> list[int]:
    k = max(len(nin), len(nout))
    return [(nin[n] if n < len(nin) else 1) * (nout[n] if n < len(nout) else 1) for n in range(k)]


def plain_params(p: list[int], chi: int, n_dis: int) -> int:
    """TTN / aTTN / MERA without laterals: leaves chi * p_n, k - 2 nodes chi^3, the top chi^2, disentanglers chi^4."""
    return chi * sum(p) + (len(p) - 2) * chi ** 3 + chi ** 2 + n_dis * chi ** 4


def laterals_power_of_two(kind: str, lateral: str, k: int) -> int:
    """Number of lateral tensors for k = 2^L sites, in closed form.

    TTN, level l (2^(L-l) bonds): the neighbours with different parents are (1,2), (3,4), ..., 2^(L-l-1) - 1 of them;
    the top level (two bonds of one parent) has none: sum_l (2^(L-l-1) - 1) = k - 1 - L; top: level L-2, one.
    aTTN: level 0 bonds go to the disentanglers (1,2), (3,4), ... or to N1_0 / the last node, so laterals go on
    (0,1), (2,3), ...: k/2 of them; above, as in the TTN: k/2 - L more; top: one (L >= 3) or level 0's two (L = 2).
    MERA: every level with m > 2 bonds has disentanglers on the odd pairs, so laterals on the m/2 even pairs:
    k/2 + k/4 + ... + 2 = k - 2; top: the 4-bond level, two.
    """
    L = int(math.log2(k))
    assert 2 ** L == k
    if kind == "ttn":
        return k - 1 - L if lateral == "all" else 1
    if kind == "attn":
        return k - L if lateral == "all" else (1 if L >= 3 else 2)
    return k - 2 if lateral == "all" else 2


def attn_disentanglers_power_of_two(k: int) -> int:
    return k // 2 - 1  # (1,2), (3,4), ..., (k-3, k-2): neighbours with different parents in a perfect tree


def mera_disentanglers_power_of_two(k: int) -> int:
    return k - int(math.log2(k)) - 1


def laterals_by_rule(kind: str, k: int) -> dict[int, list[tuple[int, int]]]:
    """The documented placement rule, re-implemented on (lo, hi) site ranges: on each level, the neighbouring bonds
    whose next tensors differ, left to right without overlap. Returns level -> pairs (positions on the level)."""
    def greedy(nxt: list) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for j in range(len(nxt) - 1):
            if nxt[j] != nxt[j + 1] and all(j > b for _, b in out):
                out.append((j, j + 1))
        return out

    if kind == "mera":
        def owner(j: int, m: int) -> tuple[str, int]:
            """The tensor that absorbs bond j of an m-bond MERA level first."""
            if j % 2 == 1 and j <= m - 2:
                return ("D", j)  # left bond of the disentangler (j, j+1)
            if j % 2 == 0 and j >= 2:
                return ("D", j - 1)  # right bond of the disentangler (j-1, j), also an odd m's carried last bond
            return ("W", j // 2)  # bond 0, or bond m-1 of an even m: straight into an isometry

        res, m, level = {}, k, 0
        while m > 2:  # each layer halves the bonds (an odd one is carried) until the top's two
            res[level] = greedy([owner(j, m) for j in range(m)])
            m, level = (m + 1) // 2, level + 1
        return {lv: p for lv, p in res.items() if p}

    def children(lo: int, hi: int) -> tuple[tuple[int, int], tuple[int, int]]:
        mid = lo + (hi - lo + 1) // 2
        return (lo, mid), (mid, hi)

    def height(r: tuple[int, int]) -> int:
        return 0 if r[1] - r[0] == 1 else 1 + max(height(c) for c in children(*r))

    root = (0, k)
    parent: dict[tuple[int, int], tuple[int, int]] = {}
    stack = [root]
    while stack:
        r = stack.pop()
        if r[1] - r[0] > 1:
            for c in children(*r):
                parent[c] = r
                stack.append(c)
    dis: dict[int, int] = {}
    if kind == "attn":  # aTTN's own disentanglers: sites with different parents, left to right, no overlap
        for j, _ in greedy([parent[(n, n + 1)] for n in range(k)]):
            dis[j] = dis[j + 1] = j
    res = {}
    for level in range(height(root)):
        front: list[tuple[int, int]] = []

        def collect(r: tuple[int, int]) -> None:
            if height(r) <= level:
                front.append(r)
            else:
                for c in children(*r):
                    collect(c)

        collect(root)
        owner = [("D", dis[r[0]]) if level == 0 and r[0] in dis else parent[r] for r in front]
        res[level] = greedy(owner)
    return {lv: p for lv, p in res.items() if p}


def laterals_of(d) -> list:
    return [t for t in d.tensors if t.kind == "lateral"]


# ----------------------------------------------------------------------------- placement and parameter counts
@pytest.mark.parametrize("kind", LATERAL_KINDS)
@pytest.mark.parametrize("lateral", ["all", "top"])
@pytest.mark.parametrize("L", [2, 3, 4])
@pytest.mark.parametrize("chi", [2, 3])
def test_param_counts_equal_closed_forms_power_of_two(kind, lateral, L, chi):
    k = 2 ** L
    nin, nout = [2] * k, [3] + [2] * (k - 1)
    d = make_template(kind, 2 ** k, 3 * 2 ** (k - 1), chi, in_factors=nin, out_factors=nout, lateral=lateral)
    n_dis = {"ttn": 0, "attn": attn_disentanglers_power_of_two(k), "mera": mera_disentanglers_power_of_two(k)}[kind]
    n_lat = laterals_power_of_two(kind, lateral, k)
    assert len(laterals_of(d)) == n_lat
    assert d.params == plain_params(phys(nin, nout), chi, n_dis) + n_lat * chi ** 4
    assert all(d.shape(t.id) == (chi,) * 4 for t in laterals_of(d))


@pytest.mark.parametrize("kind", LATERAL_KINDS)
@pytest.mark.parametrize("k", [3, 4, 5, 6, 7, 9, 12])
def test_placement_follows_the_documented_rule(kind, k):
    """Every level's laterals sit where the rule (re-implemented here on site ranges) puts them; ``all`` takes every
    level with places, ``top`` the highest, a list exactly those levels; parameter counts follow."""
    nin = [2] * k
    plain = make_template(kind, 2 ** k, 2 ** k, 2, in_factors=nin, out_factors=nin)
    expect = laterals_by_rule(kind, k)
    assert lateral_levels(kind, 2 ** k, 2 ** k, nin, nin) == sorted(expect)
    first = sorted(expect)[:1]
    for lateral, levels in (("all", sorted(expect)), ("top", sorted(expect)[-1:]), (first, first)):
        d = make_template(kind, 2 ** k, 2 ** k, 3, in_factors=nin, out_factors=nin, lateral=lateral)
        lats = laterals_of(d)
        by_level = {}
        for t in lats:
            level, n = map(int, t.id[1:].split("_"))
            by_level.setdefault(level, []).append(n)
        assert sorted(by_level) == levels and d.meta["lateral_levels"] == levels
        assert all(len(by_level[lv]) == len(expect[lv]) for lv in levels)
        # each lateral's output bonds are named by their positions on the level: x<level>_<j>, x<level>_<j+1>
        for t in lats:
            level, n = map(int, t.id[1:].split("_"))
            j, j1 = expect[level][n]
            assert t.indices[2:] == [f"x{level}_{j}", f"x{level}_{j1}"]
        plain3 = make_template(kind, 2 ** k, 2 ** k, 3, in_factors=nin, out_factors=nin)
        assert d.params == plain3.params + len(lats) * 3 ** 4
    assert plain.meta.get("lateral") is None


def test_five_sites_by_hand():
    """The README's 5-site example, tree ((0,1),2),(3,4): level 0 bonds s0..s4 have parents N1_0, N1_0, N2_0, N1_1,
    N1_1, so the TTN's level-0 lateral joins (s1, s2); level 1 holds (u1_0, x0_2, u1_1) with parents N2_0, N2_0,
    top, so its lateral joins (x0_2, u1_1). aTTN has its disentangler on (1,2), so its level-0 laterals go on (0,1)
    and (2,3). MERA level 0: disentanglers (1,2), (3,4) -> laterals (0,1), (2,3); level 1: three bonds, disentangler
    (1,2), isometry (0,1) -> lateral (0,1)."""
    f = [4, 4, 4, 2, 2]
    t = make_template("ttn", 256, 256, 2, "gelu", f, f, lateral="all")
    assert [(x.id, x.indices) for x in laterals_of(t)] == [
        ("X0_0", ["s1", "s2", "x0_1", "x0_2"]), ("X1_0", ["x0_2", "u1_1", "x1_1", "x1_2"])]
    assert t.tensor("N1_0").indices == ["s0", "x0_1", "u1_0"]
    assert t.tensor("N2_0").indices == ["u1_0", "x1_1", "u2_0"] and t.tensor("top").indices == ["u2_0", "x1_2"]
    assert t.evaluation_order() == ["L0", "L1", "L2", "L3", "L4", "X0_0", "N1_0", "N1_1", "X1_0", "N2_0", "top"]
    a = make_template("attn", 256, 256, 2, "gelu", f, f, lateral="all")
    assert [(x.id, x.indices[:2]) for x in laterals_of(a)] == [
        ("X0_0", ["s0", "s1"]), ("X0_1", ["s2", "s3"]), ("X1_0", ["d0_2", "u1_1"])]
    assert a.tensor("D0_0").indices[:2] == ["x0_1", "x0_2"]
    m = make_template("mera", 256, 256, 2, "gelu", f, f, lateral="all")
    assert [(x.id, x.indices[:2]) for x in laterals_of(m)] == [
        ("X0_0", ["s0", "s1"]), ("X0_1", ["s2", "s3"]), ("X1_0", ["u0_0", "u0_1"])]
    assert m.evaluation_order().index("X1_0") == m.evaluation_order().index("D1_0") - 1
    for d in (t, a, m):
        assert all(x.activation == "gelu" for x in laterals_of(d)) and d.tensor("top").activation is None


def test_none_is_the_plain_template_and_bad_options_are_refused():
    for kind in LATERAL_KINDS:
        plain = make_template(kind, 4096, 4096, 3, "gelu")
        for off in (None, "none", "", False, "NONE"):
            assert make_template(kind, 4096, 4096, 3, "gelu", lateral=off).to_dict() == plain.to_dict()
        assert make_template(kind, 4096, 4096, 3, lateral=True).meta["lateral"] == "all"
        assert make_template(kind, 4096, 4096, 3, lateral="0").meta["lateral"] == [0]
    assert [k for k, s in TEMPLATES.items() if any(o.name == "lateral" for o in s.options)] == list(LATERAL_KINDS)
    with pytest.raises(ValueError, match="cp has no lateral option: it applies to ttn, attn, mera"):
        make_template("cp", 64, 64, 2, lateral="all")
    with pytest.raises(ValueError, match="lateral must be none, all, top or levels such as 0,1"):
        make_template("ttn", 64, 64, 2, lateral="sideways")
    with pytest.raises(ValueError, match="level 1 has no place for a lateral tensor"):
        make_template("ttn", 256, 256, 2, in_factors=[4] * 4, out_factors=[4] * 4, lateral=[1])
    with pytest.raises(ValueError, match="over 2 sites has no neighbouring bonds"):
        make_template("mera", 64, 64, 2, in_factors=[8, 8], out_factors=[8, 8], lateral="top")


def test_positions_put_each_lateral_on_the_level_it_mixes():
    """The canvas draws a lateral between the tensors that emit its input bonds and those that absorb its outputs
    (tree y decreases upwards in the templates), centred between its two neighbours."""
    for kind in LATERAL_KINDS:
        d = make_template(kind, 2 ** 8, 2 ** 8, 2, in_factors=[2] * 8, out_factors=[2] * 8, lateral="all")
        users = d.users()
        for t in laterals_of(d):
            below = [d.tensor(u).position for i in t.indices[:2] for u in users[i] if u != t.id]
            above = [d.tensor(u).position for i in t.indices[2:] for u in users[i] if u != t.id]
            assert min(p[1] for p in below) > t.position[1] > max(p[1] for p in above), (kind, t.id)
            assert t.position[0] == pytest.approx((below[0][0] + below[1][0]) / 2)


# ----------------------------------------------------------------------------- W against the documented semantics
def test_weight_equals_hand_written_semantics_five_site_ttn():
    """TTN over 5 sites with laterals on both levels, evaluated by hand from the documented order: X0_0 merges
    leaves 1 and 2, N1_0 merges leaf 0 with that, N1_1 merges leaves 3 and 4, X1_0 merges the two fragments,
    N2_0 absorbs it, top contracts the rest; gelu after every absorption but the top's."""
    nin, nout = [2, 3, 2, 2, 1], [1, 2, 2, 3, 2]
    d = make_template("ttn", 24, 24, 2, "gelu", nin, nout, lateral="all")
    m = TNLinear(d, seed=3).double()
    c = {k: v.detach().numpy() for k, v in m.core_tensors().items()}
    g = NP_ACT["gelu"]
    assert d.tensor("L0").indices == ["i0", "s0"] and d.tensor("L4").indices == ["o4", "s4"]
    x0 = g(np.einsum("aos,bpt,stmn->aobpmn", c["L1"], c["L2"], c["X0_0"]))         # i1 o1 i2 o2, x0_1 x0_2
    n10 = g(np.einsum("ir,aobpmn,rmu->iaobpnu", c["L0"], x0, c["N1_0"]))           # i0 i1o1 i2o2, x0_2 u1_0
    n11 = g(np.einsum("cqs,et,stv->cqev", c["L3"], c["L4"], c["N1_1"]))           # i3 o3 o4, u1_1
    x1 = g(np.einsum("iaobpnu,cqev,nvkl->iaobpcqeukl", n10, n11, c["X1_0"]))      # ..., u1_0 x1_1 x1_2
    n20 = g(np.einsum("iaobpcqeukl,ukw->iaobpcqelw", x1, c["N2_0"]))              # ..., x1_2 u2_0
    full = np.einsum("iaobpcqelw,wl->iabcopqe", n20, c["top"])  # i0 i1 i2 i3, then o1 o2 o3 o4
    np.testing.assert_allclose(m.weight().detach().numpy(), full.reshape(24, 24), rtol=1e-9, atol=1e-12)


def semantics_weight(design, cores: dict[str, np.ndarray]) -> np.ndarray:
    """The documented nonlinear semantics, independently of engine.contract: absorb tensors in the evaluation order,
    each merging every fragment it shares an index with (one np.einsum), then applying its activation."""
    names: dict[str, str] = {}

    def sub(idx) -> str:
        return "".join(names.setdefault(i, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(names)])
                       for i in idx)

    open_legs = design.in_legs + design.out_legs
    holders = design.users()
    absorbed: set[str] = set()
    frags: list[tuple[list[str], np.ndarray]] = []
    for tid in design.evaluation_order():
        t = design.tensor(tid)
        absorbed.add(tid)
        touching = [f for f in frags if set(f[0]) & set(t.indices)]
        frags = [f for f in frags if all(f is not g for g in touching)]
        parts = [(list(t.indices), cores[tid])] + touching
        seen = list(dict.fromkeys(i for ix, _ in parts for i in ix))
        keep = [i for i in seen if i in open_legs or any(u not in absorbed for u in holders[i])]
        val = np.einsum(",".join(sub(ix) for ix, _ in parts) + "->" + sub(keep), *[a for _, a in parts],
                        optimize=True)
        frags.append((keep, NP_ACT[t.activation](val) if t.activation else val))
    (idx, full), = frags
    return np.einsum(sub(idx) + "->" + sub(open_legs), full).reshape(design.in_features, design.out_features)


@pytest.mark.parametrize("kind", LATERAL_KINDS)
@pytest.mark.parametrize("lateral,act", [("all", "tanh"), ("top", "relu"), ([0], "gelu"), ("all", None)])
def test_weight_equals_numpy_semantics(kind, lateral, act):
    nin, nout = [2, 3, 2, 2, 2, 1], [2, 1, 2, 3, 2, 2]
    d = make_template(kind, 48, 48, 2, act, nin, nout, lateral=lateral)
    m = TNLinear(d, seed=4).double()
    cores = {k: v.detach().numpy() for k, v in m.core_tensors().items()}
    np.testing.assert_allclose(m.weight().detach().numpy(), semantics_weight(d, cores), rtol=1e-9, atol=1e-12)
    x = torch.randn(3, 48, dtype=torch.float64)
    ref = x.numpy() @ semantics_weight(d, cores) + m.bias.detach().numpy()
    for sched in ("materialise", "stream") if can_stream(d) else ("materialise",):
        m.schedule = sched
        np.testing.assert_allclose(m(x).detach().numpy(), ref, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- FLOPs and the cost of joining
@pytest.mark.parametrize("kind", LATERAL_KINDS)
@pytest.mark.parametrize("lateral,act", [("all", "gelu"), ("top", "tanh"), ("all", None)])
def test_flops_equal_flop_counter(kind, lateral, act):
    d = make_template(kind, 96, 64, 3, act, [2, 3, 2, 4, 2], [2, 2, 2, 4, 2], lateral=lateral)
    for sched in ("materialise", "stream") if can_stream(d) else ("materialise",):
        for batch, input_grad in ((1, False), (6, True)):
            prog = compile_program(d, batch, sched)
            g = torch.Generator().manual_seed(0)
            cores = {cid: (torch.randn(*[prog.dims[i] for i in idx], generator=g, dtype=torch.float64) * 0.5)
                      .requires_grad_(True) for cid, idx in prog.cores.items()}
            x = torch.randn(batch, 96, generator=g, dtype=torch.float64, requires_grad=input_grad)
            with FlopCounterMode(display=False) as fc:
                y = run_program(prog, cores, x)
                forward = fc.get_total_flops()
                y.sum().backward()
            assert forward == prog.flops, (sched, batch)
            assert fc.get_total_flops() == prog.flops + backward_flops(prog, input_grad), (sched, batch)


def test_cost_model_shows_the_growth_of_joined_fragments():
    """Five sites ((0,1),2),(3,4), chi = 3, materialised. Plain TTN: its largest tensor is W itself (in x out).
    ``top`` (one lateral on (leaf 2's bond, subtree (3,4)'s bond)): the lateral holds sites 2..4 with its two
    outputs, then N2_0 joins subtree (0,1) and leaves x1_2 and u2_0 open: W x chi^2. ``all``: the level-0 lateral
    already tied leaf 2 to subtree (0,1) (bonds u1_0, x0_2 open), so the level-1 lateral joins everything with
    u1_0, x1_1, x1_2 open: W x chi^3. The cost model says so from the program (nothing allocated), and the tensors
    the engine then builds (recorded at each activation) are exactly that large."""
    f_in, f_out, chi = [4, 4, 4, 2, 2], [4, 4, 4, 2, 2], 3
    n = 256 * 256
    expect = {"none": n, "top": n * chi ** 2, "all": n * chi ** 3}
    for lateral, elements in expect.items():
        d = make_template("ttn", 256, 256, chi, "gelu", f_in, f_out, lateral=lateral)
        rep = cost_report(d, batch=64, schedule="materialise")
        assert rep.largest_intermediate_bytes == 4 * elements, lateral
        sizes: list[int] = []

        def record(v: torch.Tensor) -> torch.Tensor:
            sizes.append(v.numel())
            return ACTIVATION_FNS["gelu"](v)

        prog = compile_program(d, 1, "materialise")
        with torch.no_grad():
            w = run_program(prog, TNLinear(d, seed=0).core_tensors(), until_weight=True,
                            activations={"gelu": record})
        assert max(sizes + [w.numel()]) == elements
    # and every number the report derives grows with it
    reps = {lat: cost_report(make_template("ttn", 256, 256, chi, "gelu", f_in, f_out, lateral=lat), batch=64)
            for lat in expect}
    assert reps["none"].generate_flops < reps["top"].generate_flops < reps["all"].generate_flops
    assert reps["none"].train_memory_bytes < reps["top"].train_memory_bytes < reps["all"].train_memory_bytes


def test_lateral_between_already_joined_fragments_costs_no_extra_size():
    """In a MERA the disentanglers have joined everything below the top level's neighbours already, so a lateral
    there (``top`` on 5 sites: on the two isometry outputs of layer 0) merges one fragment with itself: the largest
    tensor stays that of the plain MERA."""
    f = [4, 4, 4, 2, 2]
    plain = cost_report(make_template("mera", 256, 256, 3, "gelu", f, f), schedule="materialise")
    top = cost_report(make_template("mera", 256, 256, 3, "gelu", f, f, lateral="top"), schedule="materialise")
    assert top.largest_intermediate_bytes == plain.largest_intermediate_bytes == 4 * 256 * 256 * 3 ** 3


# ----------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("kind", LATERAL_KINDS)
@pytest.mark.parametrize("act", [None, "gelu", "tanh", "relu"])
@pytest.mark.parametrize("lateral", ["all", "top"])
def test_init_keeps_nn_linear_variance(kind, act, lateral):
    d = make_template(kind, 512, 128, 3, activation=act, in_factors=[8, 4, 4, 4], out_factors=[4, 4, 4, 2],
                      lateral=lateral)
    m = TNLinear(d, seed=5)
    w = m.weight().detach()
    dense = torch.nn.Linear(512, 128)
    assert abs(float(w.std()) / target_std(512) - 1) < 0.2
    assert abs(float(w.std()) / float(dense.weight.detach().std()) - 1) < 0.2
    assert abs(float(w.mean())) < 0.2 * target_std(512)
    x = torch.randn(4096, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        var_tn, var_dense = float((x @ w).var()), float((x @ dense.weight.detach().T).var())
    assert abs(var_tn / var_dense - 1) < 0.2  # a fresh layer's outputs have nn.Linear's variance


def test_raw_lateral_cores_start_near_identity_on_each_bond():
    d = make_template("mera", 4096, 4096, 4, "gelu", [4] * 6, [4] * 6, lateral="all")
    raw = raw_cores(d, 0.1, seed=0)
    for t in laterals_of(d):
        mat = raw[t.id].reshape(16, 16)
        assert float((mat - torch.eye(16)).abs().max()) < 0.5, t.id
    # a lateral on widened leaf bonds (6, 6) -> (2, 2) passes the first two values of *each* bond through
    wide = d.copy()
    for name in ("s0", "s1"):
        wide.indices[name].dim = 6
    assert laterals_of(wide)[0].indices[:2] == ["s0", "s1"]
    x = raw_cores(wide.check(), 0.1, seed=0)["X0_0"]
    ones = torch.zeros(6, 6, 4, 4)
    for a in range(4):
        for b in range(4):
            ones[a, b, a, b] = 1.0
    assert x.shape == (6, 6, 4, 4) and float((x - ones).abs().max()) < 0.5


# ----------------------------------------------------------------------------- CLI and schema
def test_cli_template_lateral(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["template", "attn", "--in", "256", "--out", "256", "--bond", "2", "--activation", "gelu",
                 "--in-factors", "4,4,4,2,2", "--out-factors", "4,4,4,2,2", "--lateral", "0,1", "-o", str(out)]) == 0
    d = load_design(out)
    assert d.meta["lateral"] == [0, 1] and d.meta["lateral_levels"] == [0, 1] and len(laterals_of(d)) == 3
    assert "lateral=0,1" in d.name
    assert main(["template", "tucker", "--in", "64", "--out", "64", "--lateral", "top"]) == 2
    assert "tucker has no lateral option" in capsys.readouterr().err
    import argparse

    from engine.cli import build_parser

    parser: argparse.ArgumentParser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["template"]
    assert any("--lateral" in a.option_strings for a in sub._actions)


def test_schema_documents_the_lateral_option_from_the_registry():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    meta = schema["properties"]["meta"]["properties"]
    assert meta["lateral"]["anyOf"][0]["enum"] == ["none", "all", "top"]
    assert meta["template"]["enum"] == list(TEMPLATES)
    for kind in LATERAL_KINDS:
        for lateral in ("all", "top", [0]):
            jsonschema.validate(make_template(kind, 4096, 4096, 2, "gelu", lateral=lateral).to_dict(), schema)
    bad = make_template("ttn", 4096, 4096, 2, lateral="all").to_dict()
    bad["meta"]["lateral"] = "sideways"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
