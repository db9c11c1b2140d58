"""Bond features (engine.analysis.features) and the stack view (engine.analysis.stack), checked against direct
contractions, numpy statistics and the dense W; and ``tnstudio features`` on a run made by ``tnstudio train``."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from engine.analysis.features import bond_features, stream
from engine.analysis.stack import apply_stack, chain_order, stack_layers, stack_matrices
from engine.cli import main
from engine.design import make_template

try:
    from tests.analysis_helpers import random_layer as shared_random_layer
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from analysis_helpers import random_layer as shared_random_layer


def random_layer(kind, in_f, out_f, bond, activation=None, seed=0):
    return shared_random_layer(kind, in_f, out_f, bond, activation, seed, scale=0.5)


@pytest.mark.parametrize("kind,in_f,out_f,bond,act", [
    ("mpo", [2, 3, 2], [3, 2, 2], 3, None), ("ttn", [2, 2, 3, 2], [2, 3, 2, 2], 3, None),
    ("tucker", [2, 3], [3, 2], 2, None), ("tensor_ring", [2, 3, 2], [3, 2, 2], 2, None),
    ("cp", [2, 3], [3, 2], 3, None), ("mera", [2, 2, 2, 2], [2, 2, 2, 2], 2, None),
    ("ttn", [2, 2, 2, 2], [2, 2, 2, 2], 3, "gelu"), ("mpo", [2, 2, 2, 2], [2, 2, 2, 2], 3, "tanh")])
def test_the_feature_stream_computes_x_at_w(kind, in_f, out_f, bond, act):
    d, layer = random_layer(kind, in_f, out_f, bond, act)
    x = torch.randn(9, d.in_features, dtype=torch.float64)
    with torch.no_grad():
        ref = (x @ layer.weight()).numpy()
    np.testing.assert_allclose(stream(d, layer, x).numpy(), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_mpo_bond_statistics_match_a_direct_computation():
    d, layer = random_layer("mpo", [2, 3, 2], [3, 2, 2], 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 12))
    y = rng.integers(0, 3, 120)
    rep = bond_features(d, layer, x, y, fit=(x, y))
    assert rep.samples == rep.fit_samples == 120 and rep.classes == (0, 1, 2)
    assert rep.chance_accuracy == pytest.approx(np.bincount(y).max() / 120)
    assert not rep.not_carried and [b.bond for b in rep.bonds] == ["r0", "r1"]
    g0 = layer.core_tensors()["G0"].detach().numpy()  # (i0, o0, r0)
    # the chain streams from G0: when r0 appears the state is x contracted with G0 over i0
    h = np.einsum("nabc,aer->nbcer", x.reshape(120, 2, 3, 2), g0)  # (n, i1, i2, o0, r0)
    b = rep["r0"]
    assert set(b.other_legs) == {"i1", "i2", "o0"} and b.group == 3 * 2 * 3
    h = h.reshape(120, -1, 3)
    np.testing.assert_allclose(b.variance, h.var(0).sum(0), rtol=1e-5)
    act = np.sqrt((h ** 2).mean(1))
    np.testing.assert_allclose(b.class_means, [act[y == c].mean(0) for c in range(3)], rtol=1e-5)
    np.testing.assert_allclose(b.mean_activation, act.mean(0), rtol=1e-5)
    assert sum(b.variance_share) == pytest.approx(1.0)
    assert b.probe_inputs.startswith("flat") and 0 <= b.probe_accuracy <= 1
    json.dumps(rep.to_dict())


def test_the_probe_reads_labels_only_from_bonds_that_carry_them():
    """Two sites: G0 passes x's first leg into r0 and drops the second, which holds the label."""
    d = make_template("mpo", 16, 4, 4, in_factors=[4, 4], out_factors=[2, 2])
    g0 = np.zeros(d.shape("G0"))  # (i0, o0, r0): r0 copies i0
    for a in range(4):
        g0[a, 0, a] = 1.0
    g1 = np.random.default_rng(1).normal(size=d.shape("G1"))  # (r0, i1, o1)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    x = rng.normal(size=(400, 4, 4)) * 0.1
    x[:, 1, :] += np.where(labels == 1, 1.0, -1.0)[:, None]  # the label lives in i0 = 1 ...
    flat_labels = rng.integers(0, 2, 400)
    rep = bond_features(d, {"G0": g0, "G1": g1}, x.reshape(400, 16), labels)
    assert rep["r0"].probe_accuracy > 0.95
    x2 = rng.normal(size=(400, 4, 4)) * 0.1
    x2[:, :, 1] += np.where(flat_labels == 1, 1.0, -1.0)[:, None]  # ... or only in i1, which r0 does not see
    rep2 = bond_features(d, {"G0": g0, "G1": g1}, x2.reshape(400, 16), flat_labels)
    assert rep2["r0"].probe_accuracy > 0.95  # r0's state still holds i1 (not yet absorbed): the stream carries it
    g0_blind = np.zeros_like(g0)
    g0_blind[0, 0, 0] = 1.0  # r0 carries only i0 = 0, noise
    x3 = rng.normal(size=(400, 4, 4)) * 0.1
    x3[:, 2, 3] += np.where(flat_labels == 1, 1.0, -1.0)
    rep3 = bond_features(d, {"G0": g0_blind, "G1": g1}, x3.reshape(400, 16), flat_labels)
    assert rep3["r0"].probe_accuracy < 0.7  # the stream state at r0 is x[:, 0, :] only: no label there


def test_nonlinear_bonds_inside_fragments_are_not_carried():
    d, layer = random_layer("mpo", [2, 2, 2, 2], [2, 2, 2, 2], 3, "gelu")
    x = np.random.default_rng(0).normal(size=(40, 16))
    rep = bond_features(d, layer, x, np.arange(40) % 2)
    assert set(rep.not_carried) == {"r0", "r1"} and [b.bond for b in rep.bonds] == ["r2"]
    assert "activated fragment" in rep.not_carried["r0"]
    d2, layer2 = random_layer("ttn", [2, 2], [2, 2], 2)
    d2.tensor("top").activation = "gelu"
    with pytest.raises(ValueError, match="cannot stream"):
        bond_features(d2, layer2.core_tensors(), x[:, :4])


# --------------------------------------------------------------------- the stack view
@pytest.mark.parametrize("in_f,out_f,bond", [([2, 3, 2], [3, 2, 2], 3), ([4, 3], [2, 2, 3], [2, 3]),
                                             ([2, 2, 2, 2], [2, 2, 2, 2], [2, 3, 2]), ([12], [6], 2)])
def test_the_stack_of_sparse_layers_applied_to_x_equals_x_at_w(in_f, out_f, bond):
    d, layer = random_layer("mpo", in_f, out_f, bond)
    layers = stack_layers(d)
    mats = stack_matrices(d, layer, dtype=torch.float64)
    assert [lay.tensor for lay in layers] == chain_order(d) == [t.id for t in d.tensors]
    assert layers[0].in_units == d.in_features and layers[-1].out_units == d.out_features
    for a, b in zip(layers, layers[1:]):
        assert a.out_legs == b.in_legs and a.out_units == b.in_units
    for lay, m in zip(layers, mats):
        assert tuple(m.shape) == (lay.in_units, lay.out_units)
        assert m._nnz() == lay.nonzeros == lay.in_units * math.prod(d.shape(lay.tensor)) // math.prod(
            d.dim(i) for i in d.tensor(lay.tensor).indices if i in lay.in_legs)
    x = torch.randn(5, d.in_features, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(apply_stack(mats, x).numpy(), (x @ layer.weight()).numpy(), atol=1e-10)


def test_stack_shapes_of_a_4096_mpo_and_what_is_not_a_chain():
    d = make_template("mpo", 4096, 4096, 16)
    layers = stack_layers(d)  # structure only: no matrix built
    assert [lay.to_dict()["shape"] for lay in layers] == [[4096, 65536], [65536, 65536], [65536, 65536],
                                                          [65536, 4096]]
    assert [lay.nonzeros for lay in layers] == [512 * 8 * 8 * 16, 512 * 16 * 64 * 16, 512 * 16 * 64 * 16,
                                                512 * 16 * 8 * 8]
    for kind in ("tensor_ring", "ttn", "cp"):
        with pytest.raises(ValueError, match="not a chain"):
            stack_layers(make_template(kind, 16, 16, 2, in_factors=[2, 2, 2, 2], out_factors=[2, 2, 2, 2]))


def test_the_chain_stream_passes_through_the_stack_hidden_layers():
    """For a chain, the state when bond r_n appears is the stack's hidden layer n (same units, same order)."""
    from engine.analysis.features import BATCH, run_stream, stream_operands, stream_order

    d, layer = random_layer("mpo", [2, 3, 2], [3, 2, 2], 3)
    x = torch.randn(4, d.in_features, dtype=torch.float64)
    mats = stack_matrices(d, layer, dtype=torch.float64)
    cores = {k: v.detach() for k, v in layer.core_tensors().items()}
    ops = stream_operands(d, cores)
    states = {}
    run_stream(d, ops, stream_order(d, ops), x, lambda b, idx, s: states.setdefault(b, (idx, s)))
    h = x
    for n, (lay, m) in enumerate(zip(stack_layers(d)[:-1], mats)):
        h = torch.sparse.mm(m.t(), h.t()).t()
        idx, s = states[f"r{n}"]
        s = s.permute([idx.index(i) for i in (BATCH,) + lay.out_legs]).reshape(4, -1)
        np.testing.assert_allclose(s.numpy(), h.numpy(), atol=1e-10)


# --------------------------------------------------------------------- the CLI on a real run
def test_cli_features_of_a_trained_run(tmp_path, monkeypatch):
    from engine.train.store import RunStore

    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path / "home"))
    design, runs = tmp_path / "ttn.json", tmp_path / "runs"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["template", "ttn", "--in", "64", "--out", "64", "--bond", "3", "--in-factors", "4,4,4",
                     "--out-factors", "4,4,4", "-o", str(design)]) == 0
        assert main(["train", str(design), "--dataset", "digits", "--epochs", "1", "--runs-dir", str(runs)]) == 0
    (run,) = RunStore(runs).list_runs()
    from engine.analysis import runs as run_analysis

    reads, read = [], run_analysis._checkpoint
    monkeypatch.setattr(run_analysis, "_checkpoint", lambda r: reads.append(r["id"]) or read(r))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["features", "--run", run["id"], "--runs-dir", str(runs), "--samples", "300", "--json"]) == 0
    assert reads == [run["id"]]  # the checkpoint is read once (it was twice: the layer, then the model's inputs)
    rep = json.loads(out.getvalue())
    assert rep["dataset"] == "digits" and rep["samples"] == 300 and rep["fit_samples"] == 300
    assert rep["classes"] == list(range(10)) and not rep["not_carried"]
    assert {b["bond"] for b in rep["bonds"]} == {"s0", "s1", "s2", "u1_0"}  # leaves s_n, node N1_0 -> top
    for b in rep["bonds"]:
        assert len(b["class_means"]) == 10 and all(len(r) == b["dim"] for r in b["class_means"])
        assert len(b["variance"]) == b["dim"] and 0 <= b["probe_accuracy"] <= 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["features", "--run", run["id"][:4], "--runs-dir", str(runs), "--samples", "200"]) == 0
    assert "probe" in out.getvalue() and "chance" in out.getvalue()
    err = io.StringIO()  # another data set's shapes: the message names the tensor that differs, not torch's header
    with contextlib.redirect_stderr(err):
        assert main(["features", "--run", run["id"], "--runs-dir", str(runs), "--dataset", "teacher"]) == 2
    from engine.train.data import load_dataset

    teacher = load_dataset("teacher")
    assert err.getvalue().count("\n") == 1 and "trained on digits, and its model does not fit teacher" in err.getvalue()
    assert f"is 10x64 in the checkpoint, {teacher.num_outputs}x64 for teacher's" in err.getvalue(), err.getvalue()


def test_samples_of_another_width_are_refused():
    """x of 6 samples x 8 features for a 16-input layer was read as 3 samples of 16 (reshape), silently; a width
    that does not divide raised reshape's RuntimeError. Now a ValueError naming the shape, for x and the probe's x."""
    from engine.design import make_template

    d = make_template("mpo", 16, 16, 3, in_factors=[4, 4], out_factors=[4, 4])
    rng = np.random.default_rng(0)
    cores = {t.id: rng.standard_normal(d.shape(t.id)) for t in d.tensors}
    for x in (rng.standard_normal((6, 8)), rng.standard_normal((5, 7)), np.float64(1.0)):
        with pytest.raises(ValueError, match=r"its last dimension must be the layer's 16 in_features"):
            bond_features(d, cores, x)
    good = rng.standard_normal((6, 16))
    with pytest.raises(ValueError, match=r"the probe's x has shape \(6, 8\)"):
        bond_features(d, cores, good, np.arange(6) % 2, fit=(rng.standard_normal((6, 8)), np.arange(6) % 2))
    assert bond_features(d, cores, good.reshape(2, 3, 16)).samples == 6  # leading dimensions flattened
