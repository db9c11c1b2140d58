"""Truncation (engine.analysis.truncate) against numpy: the reported error is ||W - W'|| / ||W|| of the dense
matrices, equals the discarded tail on trees, and truncating one bond is Eckart-Young across its cut. Also the
``tnstudio spectra`` and ``truncate`` commands on a run made by ``tnstudio train``."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.analysis.spectra import bond_spectra
from engine.analysis.truncate import truncate
from engine.cli import main
from engine.design import load_design
from engine.nn import TNLinear

try:
    from tests.analysis_helpers import random_layer as shared_random_layer, cli as _cli, train_mpo_run
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from analysis_helpers import random_layer as shared_random_layer, cli as _cli, train_mpo_run

TREES = [
    ("mpo", [2, 3, 2], [3, 2, 2], 5),
    ("mpo", [2, 2, 2, 2], [2, 2, 2, 2], [3, 4, 2]),
    ("ttn", [2, 2, 3, 2], [2, 3, 2, 2], 4),
    ("tucker", [2, 3, 2], [3, 2], 3),
]


def random_layer(kind, in_f, out_f, bond, activation=None, seed=0):
    return shared_random_layer(kind, in_f, out_f, bond, activation, seed, bias=True)


def dense(design, weights) -> np.ndarray:
    """W of a design from tensor id -> array, through TNLinear (the engine's own contraction)."""
    layer = TNLinear(design, bias=False, init=False, dtype=torch.float64)
    layer.load_state_dict({k: v for k, v in _state(design, weights).items()})
    with torch.no_grad():
        return layer.weight().numpy()


def _state(design, weights):
    from engine.nn.linear import id_to_key

    return {f"cores.{id_to_key(t.id)}": torch.as_tensor(weights[t.id], dtype=torch.float64)
            for t in design.tensors}


def cut_matrix(design, w, left):
    legs = design.open_legs
    t = w.reshape([design.dim(i) for i in legs])
    right = [i for i in legs if i not in left]
    t = np.transpose(t, [legs.index(i) for i in left] + [legs.index(i) for i in right])
    return t.reshape(math.prod(design.dim(i) for i in left), -1)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("kind,in_f,out_f,bond", TREES)
@pytest.mark.parametrize("args", [{"max_bond": 2}, {"max_bond": 1}, {"tol": 0.3}, {"tol": 0.05, "max_bond": 3}])
def test_tree_truncation_error_is_exact_and_equals_the_discarded_tail(kind, in_f, out_f, bond, args):
    d, layer = random_layer(kind, in_f, out_f, bond)
    w = dense(d, layer.core_tensors())
    res = truncate(d, layer, **args)
    w2 = dense(res.design, res.weights)
    assert res.method == "canonical"
    assert res.relative_error == pytest.approx(rel(w, w2), rel=1e-8, abs=1e-12)
    tail = math.sqrt(sum(b.discarded_norm ** 2 for b in res.bonds)) / np.linalg.norm(w)
    assert res.discarded_tail == pytest.approx(tail, rel=1e-12) and res.discarded_tail == res.relative_error
    if "tol" in args and "max_bond" not in args:  # with both, the cap may cost more than tol
        assert res.relative_error <= args["tol"] + 1e-12
    if "max_bond" in args:
        assert all(res.design.dim(b) <= args["max_bond"] for b in res.ranks)
    res.design.check()
    assert res.params_after == res.design.params <= res.params_before == d.params
    for b in res.bonds:
        assert b.before == d.dim(b.bond) and b.after == res.design.dim(b.bond)


@pytest.mark.parametrize("kind,in_f,out_f,bond", TREES)
def test_truncating_one_bond_is_the_best_rank_k_approximation_across_its_cut(kind, in_f, out_f, bond):
    d, layer = random_layer(kind, in_f, out_f, bond, seed=3)
    w = dense(d, layer.core_tensors())
    for s in bond_spectra(d, layer):
        m = cut_matrix(d, w, s.cut[0])
        u, sv, vt = np.linalg.svd(m, full_matrices=False)
        for k in range(1, min(s.dim, sv.size)):
            res = truncate(d, layer, max_bond={s.bond: k})
            best = (u[:, :k] * sv[:k]) @ vt[:k]
            np.testing.assert_allclose(cut_matrix(d, dense(res.design, res.weights), s.cut[0]), best,
                                       atol=1e-9 * sv[0])
            assert res.relative_error == pytest.approx(math.sqrt((sv[k:] ** 2).sum()) / np.linalg.norm(sv),
                                                       rel=1e-9)
            assert res.design.dim(s.bond) == k
            # other bonds lose nothing (W' is the best rank-k matrix); the QR sweeps may trim a bond to what its cut
            # allows (e.g. a 5-dim bond into an end site with 2 x 2 open legs carries rank 4 at most)
            assert all(res.design.dim(b) <= d.dim(b) for b in res.ranks)


@pytest.mark.parametrize("kind,in_f,out_f,bond", [("tensor_ring", [2, 3, 2], [3, 2, 2], 3),
                                                  ("mera", [2, 2, 2, 2], [2, 2, 2, 2], 2),
                                                  ("cp", [2, 3], [3, 2], 4)])
def test_truncation_with_loops_or_hyperedges_reports_the_exact_error(kind, in_f, out_f, bond):
    d, layer = random_layer(kind, in_f, out_f, bond)
    w = dense(d, layer.core_tensors())
    res = truncate(d, layer, max_bond=bond - 1)
    w2 = dense(res.design, res.weights)
    assert res.method in ("simple-gauge", "cp-weights")
    assert 0 < res.relative_error == pytest.approx(rel(w, w2), rel=1e-6)
    assert res.params_after < res.params_before
    same = truncate(d, layer, max_bond=bond)  # nothing dropped: the gauge moves keep W
    assert same.relative_error < 1e-6 and rel(w, dense(same.design, same.weights)) < 1e-9


def test_truncation_result_loads_into_a_layer_with_the_bias():
    d, layer = random_layer("mpo", [2, 3, 2], [3, 2, 2], 5)
    res = truncate(d, layer, max_bond=3)
    small = res.to_layer(bias=layer.bias, dtype=torch.float64)
    x = torch.randn(7, d.in_features, dtype=torch.float64)
    w2 = dense(res.design, res.weights)
    with torch.no_grad():
        np.testing.assert_allclose(small(x).numpy(), x.numpy() @ w2 + layer.bias.numpy(), atol=1e-10)
    state = res.state_dict(bias=layer.bias)
    assert state["bias"].dtype == torch.float32 and set(state) == set(TNLinear(res.design).state_dict())
    json.dumps(res.to_dict())


def test_truncate_refuses_what_it_cannot_do():
    d, layer = random_layer("mera", [2, 2, 2, 2], [2, 2, 2, 2], 2, activation="gelu")
    with pytest.raises(ValueError, match="only nonlinear trees"):  # nonlinear trees: tests/test_truncate_nonlinear.py
        truncate(d, layer, max_bond=1)
    d, layer = random_layer("mpo", [2, 3, 2], [3, 2, 2], 5)
    with pytest.raises(ValueError, match="max_bond or tol"):
        truncate(d, layer)
    with pytest.raises(ValueError, match="no bond 'nope'"):
        truncate(d, layer, max_bond={"nope": 2})


# --------------------------------------------------------------------- the CLI on a real run
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run made by ``tnstudio train`` (one epoch on digits): (runs dir, run id, design file)."""
    tmp = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TNSTUDIO_HOME", str(tmp / "home"))
        yield train_mpo_run(tmp)


def _run_w(runs, run_id, design_file):
    from engine.analysis.runs import load_run_layer

    layer = load_run_layer(run_id, runs)
    d = load_design(design_file)
    cores = {t.id: layer.state[f"cores.{t.id}"].double().numpy() for t in d.tensors}
    return d, cores, layer.state


def test_cli_spectra_of_a_trained_run(trained_run):
    runs, run_id, design_file = trained_run
    rc, out = _cli("spectra", "--run", run_id[:5], "--runs-dir", str(runs), "--json")
    assert rc == 0
    rep = json.loads(out)
    d, cores, _ = _run_w(runs, run_id, design_file)
    w = dense(d, cores)
    assert rep["exact"] and rep["norm"] == pytest.approx(np.linalg.norm(w), rel=1e-5)
    for b in rep["bonds"]:
        ref = np.linalg.svd(cut_matrix(d, w, b["cut"][0]), compute_uv=False)
        np.testing.assert_allclose(b["values"], ref[:b["dim"]], rtol=1e-5, atol=1e-6 * ref[0])
    rc, out = _cli("spectra", str(design_file), "--run", run_id, "--runs-dir", str(runs))
    assert rc == 0 and "exact" in out and "r0" in out and "r1" in out


def test_cli_truncate_of_a_trained_run_writes_design_and_weights(trained_run, tmp_path):
    runs, run_id, design_file = trained_run
    small = tmp_path / "small.json"
    rc, out = _cli("truncate", str(design_file), "--run", run_id, "--runs-dir", str(runs), "--max-bond", "2", "-o",
                   str(small), "--json")
    assert rc == 0
    rep = json.loads(out)
    d, cores, state = _run_w(runs, run_id, design_file)
    d2 = load_design(small)
    weights = torch.load(small.with_suffix(".pt"), weights_only=True)
    layer = TNLinear(d2)
    layer.load_state_dict(weights)  # the written weights fit the written design (cores and bias)
    assert torch.equal(layer.bias, state["bias"])
    w, w2 = dense(d, cores), dense(d2, {t.id: weights[f"cores.{t.id}"].double().numpy() for t in d2.tensors})
    assert rep["relative_error"] == pytest.approx(rel(w, w2), rel=1e-4)
    assert rep["params_after"] == d2.params < d.params and all(d2.dim(b) == 2 for b in ("r0", "r1"))
    # the truncated layer's file works as --weights, and spectra see the kept values
    rc, out = _cli("spectra", str(small), "--weights", str(small.with_suffix(".pt")), "--json")
    assert rc == 0 and all(b["dim"] == 2 for b in json.loads(out)["bonds"])
    rc, out = _cli("truncate", str(small), "--weights", str(small.with_suffix(".pt")), "--tol", "0.5", "-o",
                   str(tmp_path / "smaller.json"))
    assert rc == 0 and "relative error" in out


def test_cli_errors_are_one_line(trained_run, tmp_path, capsys):
    runs, run_id, design_file = trained_run
    assert main(["spectra", str(design_file)]) == 2
    assert "--run ID or --weights FILE" in capsys.readouterr().err
    assert main(["truncate", "--run", "nope", "--runs-dir", str(runs), "--tol", "0.1", "-o",
                 str(tmp_path / "x.json")]) == 2
    assert "no run" in capsys.readouterr().err
    assert main(["truncate", "--run", run_id, "--runs-dir", str(runs), "-o", str(tmp_path / "x.json")]) == 2
    assert "--max-bond" in capsys.readouterr().err
    for bonds in ("r0=1,r0=2", "r0=2, r0 =2"):  # the last one had silently won
        assert main(["truncate", "--run", run_id, "--runs-dir", str(runs), "--max-bond", bonds, "-o",
                     str(tmp_path / "x.json")]) == 2
        assert "gives bond 'r0' twice" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    other = tmp_path / "other.json"
    _cli("template", "ttn", "--in", "64", "--out", "64", "-o", str(other))
    assert main(["spectra", str(other), "--run", run_id, "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
