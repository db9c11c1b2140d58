"""Bond spectra (engine.analysis.spectra) against independent computations: numpy's SVD of the dense W reshaped
across each bond's cut, direct contractions of fragments, and the textbook formulas."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import opt_einsum as oe
import pytest
import torch
from hypothesis import given, settings, strategies as st

from engine.analysis.spectra import BondSpectrum, bond_spectra
from engine.design import make_template
from engine.nn import TNLinear

try:
    from tests.analysis_helpers import random_layer
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from analysis_helpers import random_layer

TREES = [
    ("mpo", [2, 3, 2], [3, 2, 2], 5),
    ("mpo", [2, 2, 2, 2], [2, 2, 2, 2], [3, 4, 2]),
    ("ttn", [2, 2, 3, 2], [2, 3, 2, 2], 3),
    ("ttn", [2, 3, 2], [3, 2, 2], 4),
    ("tucker", [2, 3], [3, 2], 2),
    ("tucker", [3, 2, 2], [2, 4], 3),
]



def dense_w(layer) -> np.ndarray:
    with torch.no_grad():
        return layer.weight().numpy()


def cut_matrix(design, w: np.ndarray, left: tuple[str, ...]) -> np.ndarray:
    """W as a matrix (open legs in ``left``) x (the other open legs)."""
    legs = design.open_legs
    t = w.reshape([design.dim(i) for i in legs])
    right = [i for i in legs if i not in left]
    t = np.transpose(t, [legs.index(i) for i in left] + [legs.index(i) for i in right])
    return t.reshape(math.prod(design.dim(i) for i in left), -1)


@pytest.mark.parametrize("kind,in_f,out_f,bond", TREES)
def test_tree_spectra_are_the_singular_values_of_w_across_each_cut(kind, in_f, out_f, bond):
    d, layer = random_layer(kind, in_f, out_f, bond)
    w = dense_w(layer)
    rep = bond_spectra(d, layer)
    assert rep.exact and rep.tree and rep.linear
    assert {s.bond for s in rep} == {k for k, v in d.indices.items() if v.role == "bond"}
    assert rep.norm == pytest.approx(np.linalg.norm(w), rel=1e-12)
    for s in rep:
        assert s.method == "canonical" and s.exact and len(s.values) == s.dim == d.dim(s.bond)
        left, right = s.cut
        assert set(left) | set(right) == set(d.open_legs) and not set(left) & set(right) and left and right
        ref = np.linalg.svd(cut_matrix(d, w, left), compute_uv=False)
        k = min(s.dim, ref.size)
        np.testing.assert_allclose(s.values[:k], ref[:k], rtol=1e-9, atol=1e-9 * ref[0])
        assert np.all(np.asarray(s.values[k:]) <= 1e-9 * ref[0])  # padding beyond what the cut allows
        assert np.all(ref[s.dim:] <= 1e-9 * ref[0])  # the bond bounds W's rank across its cut
        assert s.norm == pytest.approx(np.linalg.norm(w), rel=1e-9)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=2, max_size=4), st.integers(1, 5),
       st.integers(0, 10_000))
def test_mpo_spectra_match_numpy_for_random_shapes(sites, bond, seed):
    in_f, out_f = [a for a, _ in sites], [b for _, b in sites]
    if math.prod(in_f) == 1 or math.prod(out_f) == 1:
        return
    d, layer = random_layer("mpo", in_f, out_f, bond, seed=seed)
    w = dense_w(layer)
    for s in bond_spectra(d, layer):
        ref = np.linalg.svd(cut_matrix(d, w, s.cut[0]), compute_uv=False)
        k = min(s.dim, ref.size)
        np.testing.assert_allclose(s.values[:k], ref[:k], rtol=1e-8, atol=1e-9 * max(ref[0], 1e-300))


def test_simple_gauge_on_a_tree_agrees_with_the_exact_spectra():
    """The approximate method used for loops is exact on trees: a check of the gauge and its scaling."""
    d, layer = random_layer("mpo", [2, 3, 2, 2], [2, 2, 3, 2], 4)
    exact = bond_spectra(d, layer)
    gauge = bond_spectra(d, layer, method="simple-gauge")
    assert not gauge.exact and all(s.method == "simple-gauge" for s in gauge)
    for s in exact:
        np.testing.assert_allclose(gauge[s.bond].values, s.values, rtol=1e-6, atol=1e-8 * s.values[0])


@pytest.mark.parametrize("kind,in_f,out_f,bond", [("tensor_ring", [2, 3, 2], [3, 2, 2], 3),
                                                  ("mera", [2, 2, 2, 2], [2, 2, 2, 2], 2),
                                                  ("attn", [2, 2, 2, 2], [2, 2, 2, 2], 2)])
def test_loop_spectra_are_labelled_approximate_and_scaled_to_the_norm(kind, in_f, out_f, bond):
    d, layer = random_layer(kind, in_f, out_f, bond)
    w = dense_w(layer)
    rep = bond_spectra(d, layer)
    assert not rep.exact and not rep.tree and rep.notes
    assert rep.norm == pytest.approx(np.linalg.norm(w), rel=1e-9)
    for s in rep:
        assert s.method == "simple-gauge" and not s.exact and len(s.values) == s.dim
        assert list(s.values) == sorted(s.values, reverse=True)
        assert s.norm == pytest.approx(np.linalg.norm(w), rel=1e-9)
    with pytest.raises(ValueError, match="loops"):
        bond_spectra(d, layer, method="canonical")


def test_cp_weights_are_products_of_slice_norms():
    d, layer = random_layer("cp", [2, 3], [3, 2], 4)
    rep = bond_spectra(d, layer)
    (s,) = rep.spectra
    assert s.method == "cp-weights" and not s.exact
    cores = {k: v.detach().numpy() for k, v in layer.core_tensors().items()}
    ref = np.ones(4)
    for tid, core in cores.items():  # factors (leg, R)
        ref *= np.linalg.norm(core, axis=0)
    np.testing.assert_allclose(s.values, np.sort(ref)[::-1], rtol=1e-12)


def test_nonlinear_fragment_spectra_are_what_the_parent_receives():
    d, layer = random_layer("ttn", [2, 2, 2, 2], [2, 2, 2, 2], 3, activation="gelu")
    c = {k: v.detach() for k, v in layer.core_tensors().items()}
    rep = bond_spectra(d, layer)
    assert not rep.linear and rep.norm is None
    assert all(s.method == "fragment" for s in rep) and len(rep) == 6

    def svals(t: torch.Tensor, axis: int) -> np.ndarray:
        return torch.linalg.svdvals(t.movedim(axis, 0).reshape(t.shape[axis], -1)).numpy()

    # a leaf is absorbed raw: L0 (i0, o0, s0) across s0
    np.testing.assert_allclose(rep["s0"].values, svals(c["L0"], 2), rtol=1e-10)
    # the node N1_0 (s0, s1, u1_0) absorbs L0, L1, then gelu: the top receives that fragment across u1_0
    node = d.tensor("N1_0")
    assert node.indices == ["s0", "s1", "u1_0"]
    frag = torch.nn.functional.gelu(torch.einsum("abx,cdy,xyu->abcdu", c["L0"], c["L1"], c["N1_0"]))
    np.testing.assert_allclose(rep["u1_0"].values, svals(frag, 4), rtol=1e-10)
    assert set(rep["u1_0"].fragment) == {"L0", "L1", "N1_0"}


def test_entropy_rank_and_used_fraction_follow_their_definitions():
    s = BondSpectrum("r", 4, ("A", "B"), (4.0, 2.0, 1.0, 0.0), True, "canonical")
    p = np.array([16, 4, 1, 0]) / 21
    assert s.entropy == pytest.approx(-(p[:3] * np.log(p[:3])).sum())
    assert s.effective_rank(0.0) == 3  # the zero costs nothing
    assert s.effective_rank(math.sqrt(1 / 21) + 1e-12) == 2
    assert s.effective_rank(math.sqrt(5 / 21) + 1e-12) == 1
    assert s.effective_rank(1.0) == 0
    assert s.used_fraction(0.0) == 0.75
    assert s.tail(1) == pytest.approx(math.sqrt(5 / 21))
    assert BondSpectrum("z", 2, ("A", "B"), (0.0, 0.0), True, "canonical").effective_rank() == 0
    json.dumps(s.to_dict())


def test_spectra_of_a_4096_mpo_never_form_w():
    """chi=16: every bond's squared spectrum sums to ||W||^2, computed here from the doubled network."""
    d = make_template("mpo", 4096, 4096, 16)
    layer = TNLinear(d, seed=0, bias=False)
    bond_spectra(d, layer)  # warm-up (imports)
    t0 = time.perf_counter()
    rep = bond_spectra(d, layer)
    assert time.perf_counter() - t0 < 2.0  # forming W (2^24 entries) and one SVD of it takes far longer
    cores = {k: v.detach().double().numpy() for k, v in layer.core_tensors().items()}
    ops = []
    for t in d.tensors:  # <W, W>: each core with its copy, bonds renamed, open legs shared
        ops += [cores[t.id], t.indices, cores[t.id], [i + "'" if d.indices[i].role == "bond" else i for i in t.indices]]
    norm2 = float(oe.contract(*ops, []))
    assert rep.exact and len(rep) == 3
    for s in rep:
        assert s.norm ** 2 == pytest.approx(norm2, rel=1e-9)
    json.dumps(rep.to_dict())


# --------------------------------------------------------------------- a whole network's run
def test_spectra_features_and_truncate_of_a_network_run_pick_its_tn_layer(tmp_path, capsys):
    """A network run's TN layers were 'a dense model (no design): no bonds to analyse'. Its layer is found in the
    recorded network (the only TN layer, or --layer NAME), its cores read from the checkpoint under that module's
    name; the spectra equal those of the same cores analysed on their own."""
    import contextlib
    import io

    from engine.cli import main
    from engine.network.build import build_network
    from engine.network.format import new_network
    from engine.train.networks import network_config
    from engine.train.store import RunStore

    spec = new_network("mlp", [1, 40], 10, name="net").with_rules(["linear:mpo:3:min=20000", "linear:ttn:2:max=3000"])
    config = network_config(spec, dataset="mnist1d", epochs=1)
    runs = tmp_path / "runs"
    store = RunStore(runs)
    rid = store.create_run(config.to_dict(), None)
    torch.manual_seed(0)
    model = build_network(spec)
    ckpt = store.run_dir(rid) / "checkpoint.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    store.set_status(rid, "completed", checkpoint=str(ckpt), results={"test_accuracy": 0.5})
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["spectra", "--run", rid, "--runs-dir", str(runs), "--json"]) == 2
    assert "has 2 TN layers (fc2, fc3): name one with --layer NAME" in err.getvalue()
    for name in ("fc2", "fc3."):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["spectra", "--run", rid, "--runs-dir", str(runs), "--layer", name, "--json"]) == 0
        got = json.loads(out.getvalue())
        layer = model.get_submodule(name.rstrip("."))
        want = bond_spectra(layer.design, {k: v.detach() for k, v in layer.cores.items()})
        assert [b["bond"] for b in got["bonds"]] == [s.bond for s in want]
        for b, s in zip(got["bonds"], want):
            np.testing.assert_allclose(b["values"], s.values, rtol=1e-6)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["spectra", "--run", rid, "--runs-dir", str(runs), "--layer", "fc1"]) == 2
    assert "no TN layer 'fc1' (its TN layers: fc2, fc3)" in err.getvalue()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["truncate", "--run", rid, "--runs-dir", str(runs), "--layer", "fc2", "--max-bond", "2", "-o",
                     str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["target"]["in_features"] == 256
    out = io.StringIO()  # features: the run's data set streamed through the network up to fc2
    with contextlib.redirect_stdout(out):
        assert main(["features", "--run", rid, "--runs-dir", str(runs), "--layer", "fc2", "--samples", "40",
                     "--json"]) == 0
    rep = json.loads(out.getvalue())
    assert rep["dataset"] == "mnist1d" and rep["samples"] == 40 and rep["bonds"]


def test_reported_seconds_leave_out_quimbs_first_import():
    """The first spectra in a process imports quimb (about a second); the report's time is the spectra's own. In a
    fresh interpreter: the call's wall time includes the import, ``seconds`` is a small part of it."""
    import subprocess
    import sys

    code = ("import sys, time\n"
            "from engine.design import make_template\n"
            "from engine.nn import TNLinear\n"
            "from engine.analysis.spectra import bond_spectra\n"
            "d = make_template('mpo', 64, 64, 4)\n"
            "w = TNLinear(d).state_dict()\n"
            "assert 'quimb.tensor' not in sys.modules\n"
            "t = time.perf_counter(); r = bond_spectra(d, w); wall = time.perf_counter() - t\n"
            "t = time.perf_counter(); again = bond_spectra(d, w).seconds; second = time.perf_counter() - t\n"
            "print(wall, r.seconds, second)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    wall, seconds, second = (float(v) for v in out.stdout.split())
    assert wall > second  # the first call paid the import
    assert seconds < (wall - second) / 2 + second  # and its report did not count it


@pytest.mark.parametrize("kind", ["tensor_ring", "mera", "attn", "mpo", "cp"])
def test_a_zero_w_has_zero_spectra_and_truncates_exactly(kind):
    """W = 0 (a zero core, or int weights that round to zero): designs with loops failed ('Array must not contain
    infs or NaNs', with quimb's warnings) where trees gave zero spectra; now every design does."""
    import warnings

    from engine.analysis.truncate import truncate

    d = make_template(kind, 16, 16, 2, in_factors=[2] * 4, out_factors=[2] * 4)
    rng = np.random.default_rng(0)
    cores = {t.id: rng.standard_normal(d.shape(t.id)) for t in d.tensors}
    cores[d.tensors[0].id][:] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings either
        rep = bond_spectra(d, cores)
        res = truncate(d, cores, max_bond=1)
    assert rep.norm == 0 and all(v == 0 for s in rep.spectra for v in s.values)
    assert res.relative_error == 0
    assert all(res.design.dim(b) == 1 for b in res.design.indices if res.design.indices[b].role == "bond")


@pytest.mark.parametrize("bad", ["complex", "nan", "inf"])
def test_complex_or_non_finite_weights_are_refused_by_the_api(bad):
    """The CLI refused complex and NaN weights files, the API cast complex cores to their real part (||W|| 24.1
    where it is 52.1) and sent NaN to an SVD ('did not converge'): now a ValueError naming the tensor."""
    from engine.analysis.truncate import truncate

    d = make_template("mpo", 16, 16, 3, in_factors=[4, 4], out_factors=[4, 4])
    rng = np.random.default_rng(0)
    cores = {t.id: rng.standard_normal(d.shape(t.id)) for t in d.tensors}
    first = d.tensors[0].id
    if bad == "complex":
        cores[first] = cores[first] + 1j * rng.standard_normal(d.shape(first))
    else:
        cores[first][0] = float(bad)
    message = "is complex" if bad == "complex" else "holds NaN or infinite values"
    for weights in (cores, {k: torch.from_numpy(v) for k, v in cores.items()}):
        with pytest.raises(ValueError, match=f"tensor '{first}' {message}"):
            bond_spectra(d, weights)
        with pytest.raises(ValueError, match=message):
            truncate(d, weights, max_bond=1)
