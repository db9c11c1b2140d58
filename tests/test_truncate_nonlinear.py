"""Truncating nonlinear trees (engine.analysis.nonlinear) against an independent numpy implementation of a 4-site
TTN with gelu: a truncated activated fragment keeps exact rows of the original fragment and the parent absorbs the
least-squares coefficients; a raw leaf is replaced by its best rank-k approximation; the reported error is
``||W - W'|| / ||W||`` of the engine's own W (TNLinear, a different code path from the one truncate measures with)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import erf

from engine.analysis.truncate import truncate
from engine.nn import TNLinear

try:
    from tests.analysis_helpers import random_layer
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from analysis_helpers import random_layer

F2 = [2, 2, 2, 2]


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def random_ttn(bond=3, seed=0, kind="ttn", in_f=F2, out_f=F2):
    return random_layer(kind, in_f, out_f, bond, "gelu", seed, bias=True)


def cores_np(design, weights) -> dict[str, np.ndarray]:
    return {t.id: torch.as_tensor(weights[t.id]).detach().double().numpy() for t in design.tensors}


def fragments(c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The two activated halves of the 4-site TTN: FL[u, i0, o0, i1, o1], FR[v, i2, o2, i3, o3]."""
    fl = gelu(np.einsum("abs,cdt,stu->uabcd", c["L0"], c["L1"], c["N1_0"]))
    fr = gelu(np.einsum("abs,cdt,stu->uabcd", c["L2"], c["L3"], c["N1_1"]))
    return fl, fr


def w_numpy(c: dict[str, np.ndarray]) -> np.ndarray:
    fl, fr = fragments(c)
    w = np.einsum("uv,uaebf,vcgdh->abcdefgh", c["top"], fl, fr)  # (i0 i1 i2 i3, o0 o1 o2 o3)
    return w.reshape(16, 16)


def w_engine(design, weights) -> np.ndarray:
    layer = TNLinear(design, bias=False, init=False, dtype=torch.float64)
    from engine.nn.linear import id_to_key

    layer.load_state_dict({f"cores.{id_to_key(t.id)}": torch.as_tensor(weights[t.id]).detach().double()
                           for t in design.tensors})
    with torch.no_grad():
        return layer.weight().numpy()


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def test_the_numpy_reference_is_the_engines_w():
    d, layer = random_ttn()
    np.testing.assert_allclose(w_numpy(cores_np(d, layer.core_tensors())), w_engine(d, layer.core_tensors()),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2])
def test_an_activated_fragment_keeps_exact_rows_and_the_parent_absorbs_least_squares(k):
    d, layer = random_ttn(seed=1)
    c = cores_np(d, layer.core_tensors())
    res = truncate(d, layer, max_bond={"u1_0": k})
    c2 = cores_np(res.design, res.weights)
    assert res.method == "fragment" and res.error == "measured" and res.design.dim("u1_0") == k
    fl = fragments(c)[0].reshape(3, -1)
    fl2 = fragments(c2)[0].reshape(k, -1)
    # every row of the new fragment is a row of the old one (the subtree's core keeps slices of the bond)
    dist = np.linalg.norm(fl2[:, None, :] - fl[None, :, :], axis=2)
    rows = dist.argmin(1)
    assert np.all(dist[np.arange(k), rows] < 1e-12) and len(set(rows)) == k
    # the parent absorbs the least-squares coefficients X of F ~ X F[J]
    x = np.linalg.lstsq(fl[rows].T, fl.T, rcond=None)[0].T  # 3 x k
    np.testing.assert_allclose(c2["top"], x.T @ c["top"], rtol=1e-9, atol=1e-12)
    step = next(b for b in res.bonds if b.bond == "u1_0")
    assert step.residual == pytest.approx(np.linalg.norm(fl - x @ fl[rows]) / np.linalg.norm(fl), rel=1e-9)
    sv = np.linalg.svd(fl, compute_uv=False)
    np.testing.assert_allclose(step.discarded, sv[k:], rtol=1e-9)  # the fragment's spectrum tail, for reference
    assert step.residual >= math.sqrt((sv[k:] ** 2).sum()) / np.linalg.norm(sv) - 1e-12  # no better than the SVD
    # the reported error is ||W - W'|| / ||W|| of the engine's W, and the numpy semantics agree
    w, w2 = w_engine(d, layer.core_tensors()), w_engine(res.design, res.weights)
    np.testing.assert_allclose(w_numpy(c2), w2, rtol=1e-9, atol=1e-10)
    assert res.relative_error == pytest.approx(rel(w, w2), rel=1e-9)
    assert res.params_after == res.design.params == d.params - (3 - k) * (9 + 3)  # N1_0 loses slices, top rows


def test_a_raw_leaf_becomes_its_best_rank_k_approximation():
    d, layer = random_ttn(seed=2)
    c = cores_np(d, layer.core_tensors())
    res = truncate(d, layer, max_bond={"s0": 1})
    u, s, vt = np.linalg.svd(c["L0"].reshape(4, 3).T, full_matrices=False)  # (s0) x (i0 o0)
    best = dict(c, L0=((u[:, :1] * s[:1]) @ vt[:1]).T.reshape(2, 2, 3))
    np.testing.assert_allclose(w_engine(res.design, res.weights), w_numpy(best), rtol=1e-9, atol=1e-10)
    assert res.design.dim("s0") == 1
    step = next(b for b in res.bonds if b.bond == "s0")
    assert step.residual == pytest.approx(math.sqrt((s[1:] ** 2).sum()) / np.linalg.norm(s), rel=1e-9)


@pytest.mark.parametrize("tol", [0.05, 0.2, 0.5])
def test_tolerance_bounds_the_measured_error_of_w(tol):
    d, layer = random_ttn(bond=4, seed=3, in_f=[2, 3, 2, 2], out_f=[2, 2, 3, 2])
    w = w_engine(d, layer.core_tensors())
    res = truncate(d, layer, tol=tol)
    err = rel(w, w_engine(res.design, res.weights))
    assert res.relative_error == pytest.approx(err, rel=1e-8, abs=1e-12) and err <= tol
    assert res.error == "measured" and res.tol == tol
    res.design.check()
    if tol == 0.5:
        assert res.params_after < res.params_before
    loose = truncate(d, layer, tol=0.9)
    assert loose.params_after <= res.params_after


def test_a_nonlinear_chain_truncates_too():
    d, layer = random_ttn(bond=3, seed=4, kind="mpo", in_f=[2, 3, 2], out_f=[3, 2, 2])
    res = truncate(d, layer, max_bond=2)
    w, w2 = w_engine(d, layer.core_tensors()), w_engine(res.design, res.weights)
    assert res.relative_error == pytest.approx(rel(w, w2), rel=1e-9)
    assert all(res.design.dim(b) <= 2 for b in ("r0", "r1"))
    small = res.to_layer(bias=layer.bias, dtype=torch.float64)  # loads as a layer with the bias
    x = torch.randn(5, d.in_features, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(small(x).numpy(), x.numpy() @ w2 + layer.bias.numpy(), atol=1e-9)


def test_large_layers_estimate_the_error_from_probes(monkeypatch):
    import engine.analysis.nonlinear as nl

    d, layer = random_ttn(bond=4, seed=5, in_f=[2, 3, 2, 2], out_f=[2, 2, 3, 2])
    measured = truncate(d, layer, max_bond=2)
    monkeypatch.setattr(nl, "FORM_LIMIT", 0)
    estimated = truncate(d, layer, max_bond=2)
    assert estimated.error == "estimated" and any("Gaussian probes" in n for n in estimated.notes)
    assert estimated.design.fingerprint() == measured.design.fingerprint()
    assert estimated.relative_error == pytest.approx(measured.relative_error, rel=0.15)
