"""Templates: parameter counts equal the closed forms, W equals an independent einsum, factorisations behave."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.design.model import Design
from engine.design.factorize import balanced_factors, default_legs, parse_factors, prime_factors
from engine.design.templates import TEMPLATE_KINDS, make_template

SHAPES = [  # (in, out, in_factors, out_factors)
    (64, 48, [4, 4, 4], [4, 4, 3]),
    (256, 256, [4, 4, 4, 4], [4, 4, 4, 4]),
    (4096, 1000, [8, 8, 8, 8], [10, 10, 5, 2]),
    (1024, 1024, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2], [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]),
    (25088, 4096, [8, 8, 8, 7, 7], [8, 8, 4, 4, 4]),
]


def closed_form(kind: str, nin: list[int], nout: list[int], chi: int) -> int:
    """Parameter counts written out independently of the template code."""
    k = max(len(nin), len(nout))
    phys = [(nin[n] if n < len(nin) else 1) * (nout[n] if n < len(nout) else 1) for n in range(k)]
    if kind == "mpo":
        r = [1] + [chi] * (k - 1) + [1]
        return sum(r[n] * phys[n] * r[n + 1] for n in range(k))
    if kind == "tensor_ring":
        return sum(chi * p * chi for p in phys)
    if kind == "tucker":
        return chi * (sum(nin) + sum(nout)) + chi ** (len(nin) + len(nout))
    if kind == "cp":
        return chi * (sum(nin) + sum(nout))
    ttn = sum(phys) * chi + (k - 2) * chi ** 3 + chi ** 2
    if kind == "ttn":
        return ttn
    if kind == "attn":
        return ttn + attn_disentanglers(k) * chi ** 4
    if kind == "mera":
        n_d, n = 0, k  # disentanglers on (1,2),(3,4),... then isometries halve the sites, down to two
        while n > 2:
            n_d += (n - 1) // 2
            n = (n + 1) // 2
        return sum(phys) * chi + n_d * chi ** 4 + (k - 2) * chi ** 3 + chi ** 2
    raise KeyError(kind)


def attn_disentanglers(k: int) -> int:
    """Disentanglers of the aTTN template: neighbouring leaves with different parents in the balanced tree
    (sites split into the first ceil(n/2) and the rest, recursively), taken left to right without overlap."""
    parent: dict[int, tuple[int, int]] = {}

    def split(lo: int, hi: int, up: tuple[int, int]) -> None:
        if hi - lo == 1:
            parent[lo] = up
            return
        mid = lo + (hi - lo + 1) // 2
        split(lo, mid, (lo, hi))
        split(mid, hi, (lo, hi))

    split(0, k, (0, k))
    count, last = 0, -2
    for j in range(k - 1):
        if parent[j] != parent[j + 1] and last < j - 1:
            count, last = count + 1, j
    return count


def test_attn_disentangler_counts():
    # 4 sites: one across the middle; 8 sites: (1,2), (3,4), (5,6); 5 sites split 3+2: only (1,2) is free
    assert [attn_disentanglers(k) for k in (2, 3, 4, 5, 8)] == [0, 1, 1, 1, 3]


def test_trees_are_balanced():
    d = make_template("ttn", 25088, 4096, 2, in_factors=[8, 8, 8, 7, 7], out_factors=[8, 8, 4, 4, 4])
    g = d.graph()
    top = d.tensor("top")
    # the top joins a 3-site subtree and a 2-site subtree, not a 4-site one and a lone leaf
    import networkx as nx

    h = nx.Graph(g)
    h.remove_node("top")
    sizes = sorted(sum(1 for n in comp if n.startswith("L")) for comp in nx.connected_components(h))
    assert len(top.indices) == 2 and sizes == [2, 3]


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("chi", [2, 3])
def test_param_count_equals_closed_form(kind, shape, chi):
    nin, nout = shape[2], shape[3]
    if kind == "tucker" and len(nin) + len(nout) > 10:
        pytest.skip("a Tucker core over 20 legs is astronomically large by design")
    d = make_template(kind, shape[0], shape[1], chi, in_factors=nin, out_factors=nout)
    assert d.params == closed_form(kind, nin, nout, chi)
    assert d.dense_params == shape[0] * shape[1]
    assert d.compression == pytest.approx(shape[0] * shape[1] / d.params)


def test_mera_power_of_two_matches_textbook_counts():
    # binary MERA on k = 2^L sites: k - L - 1 disentanglers, k - 2 isometries, one top tensor
    for L in (2, 3, 4):
        k = 2 ** L
        d = make_template("mera", 2 ** k, 2 ** k, 3, in_factors=[2] * k, out_factors=[2] * k)
        kinds = [t.kind for t in d.tensors]
        assert kinds.count("disentangler") == k - L - 1
        assert kinds.count("isometry") == k - 2


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_template_weight_equals_independent_einsum(kind):
    """W built by contracting the cores with numpy, leg by leg, against a direct formula for small cases."""
    import opt_einsum as oe

    d = make_template(kind, 24, 12, 2, in_factors=[2, 3, 4], out_factors=[3, 2, 2])
    rng = np.random.default_rng(0)
    cores = {t.id: rng.standard_normal(d.shape(t.id)) for t in d.tensors}
    sym = {n: oe.get_symbol(j) for j, n in enumerate(d.indices)}
    eq = ",".join("".join(sym[i] for i in t.indices) for t in d.tensors)
    full = np.einsum(eq + "->" + "".join(sym[i] for i in d.in_legs + d.out_legs), *cores.values(), optimize=True)
    W = full.reshape(24, 12)
    # the row-major convention: in axis 0 is the most significant digit of the row index
    i0, i1, i2, o0, o1, o2 = 1, 2, 3, 2, 1, 0
    row, col = (i0 * 3 + i1) * 4 + i2, (o0 * 2 + o1) * 2 + o2
    assert W[row, col] == pytest.approx(full[i0, i1, i2, o0, o1, o2])
    import torch

    from engine.contract.program import compile_program
    from engine.nn.execute import run_program

    prog = compile_program(d, 5, "materialise")
    Wp = run_program(prog, {k: torch.from_numpy(v) for k, v in cores.items()}, until_weight=True)
    np.testing.assert_allclose(Wp.numpy(), W, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["ttn", "attn", "mera", "mpo", "tensor_ring"])
def test_nonlinear_templates_activate_internal_tensors_only(kind):
    d = make_template(kind, 256, 256, 3, activation="gelu", in_factors=[4] * 4, out_factors=[4] * 4)
    assert not d.is_linear
    order = d.evaluation_order()
    assert sorted(order) == sorted(t.id for t in d.tensors)
    last = d.tensor(order[-1])
    assert last.activation is None, "the last tensor would squash W itself"
    for t in d.tensors:
        if t.id.startswith("L"):
            assert t.activation is None
    # every tensor is absorbed after all tensors below it: leaves first
    pos = {tid: n for n, tid in enumerate(order)}
    leaves = [t.id for t in d.tensors if t.id.startswith(("L", "G0"))]
    assert all(pos[leaf] <= pos[t.id] for leaf in leaves for t in d.tensors if t.activation)


def test_template_bad_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="unknown template 'foo'"):
        make_template("foo", 16, 16, 2)
    with pytest.raises(ValueError, match="multiply to 12, not 16"):
        make_template("mpo", 16, 16, 2, in_factors=[3, 4])
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        make_template("ttn", 16, 16, 2, activation="swish2")
    with pytest.raises(ValueError, match="no internal tensors to activate"):
        make_template("cp", 16, 16, 2, activation="relu")
    with pytest.raises(ValueError, match="needs 3 bond dimensions"):
        make_template("mpo", 256, 256, [2, 2], in_factors=[4] * 4, out_factors=[4] * 4)


def test_mpo_accepts_per_bond_dimensions():
    d = make_template("mpo", 256, 256, [2, 3, 5], in_factors=[4] * 4, out_factors=[4] * 4)
    assert [d.dim(f"r{n}") for n in range(3)] == [2, 3, 5]
    assert d.params == 1 * 16 * 2 + 2 * 16 * 3 + 3 * 16 * 5 + 5 * 16 * 1


def test_templates_round_trip_through_json():
    for kind in TEMPLATE_KINDS:
        d = make_template(kind, 4096, 4096, 4, activation="gelu" if kind in ("ttn", "mera") else None)
        again = Design.from_json(d.to_json())
        assert again.to_dict() == d.to_dict()
        assert again.fingerprint() == d.fingerprint()


@pytest.mark.parametrize("n,k", [(4096, 4), (25088, 5), (1000, 3), (97, 2), (1, 3), (360, 4)])
def test_balanced_factors(n, k):
    f = balanced_factors(n, k)
    assert len(f) == k and math.prod(f) == n
    assert f == sorted(f, reverse=True)
    # balanced: moving the smallest prime of the largest factor onto the smallest factor would not lower the maximum
    if k > 1 and f[0] > 1:
        p = min(prime_factors(f[0]))
        assert f[-1] * p >= f[0], f


def test_factor_helpers():
    assert prime_factors(25088) == [2] * 9 + [7, 7]
    assert parse_factors("8,8,4") == [8, 8, 4] and parse_factors("8x8") == [8, 8] and parse_factors(" ") is None
    assert parse_factors(" 4 x 8 ") == [4, 8] and parse_factors("2*3") == [2, 3]
    for bad in ("8,a", "3,x", "4,,4", "4,4,", "x4", "4_0", "+4", "\u0664"):  # "3,x" was read as [3]
        with pytest.raises(ValueError, match="integers separated by commas"):
            parse_factors(bad)
    for bad in ("0", "-1", "4,0"):
        with pytest.raises(ValueError, match=">= 1"):
            parse_factors(bad)
    assert default_legs(4096, 4096) == 4 and default_legs(64, 10) == 2


@settings(max_examples=200, deadline=None, database=None)
@given(vals=st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=6),
       seps=st.lists(st.sampled_from([",", "x", "*", " , ", " x "]), min_size=5, max_size=5),
       junk=st.text(st.characters(blacklist_categories=("Nd", "Zs", "Cc"), blacklist_characters=",x*-"), min_size=1,
                    max_size=3),
       where=st.integers(0, 10 ** 6))
def test_parse_factors_reads_exactly_what_is_written(vals, seps, junk, where):
    """A list written with any of the separators reads back as itself (a 0 is refused); anything else in the text,
    or an empty part, is refused: nothing is dropped ("3,x" had been read as [3])."""
    text = str(vals[0]) + "".join(sep + str(v) for sep, v in zip(seps, vals[1:]))
    if 0 in vals:
        with pytest.raises(ValueError, match=">= 1"):
            parse_factors(text)
    else:
        assert parse_factors(text) == vals
    at = where % (len(text) + 1)
    for bad in (text[:at] + junk + text[at:], text + seps[0], seps[1] + text):
        with pytest.raises(ValueError, match="integers separated by commas"):
            parse_factors(bad)
