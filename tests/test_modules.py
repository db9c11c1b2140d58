"""TNLinear: weights against independent numpy contractions, schedules, gradients, FLOPs, init, AMP, compile."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import erf
from torch.utils.flop_counter import FlopCounterMode

from engine.design.model import Design
from hypothesis import assume, example, given, settings
from engine.contract.program import compile_program
from engine.nn.execute import run_program
from engine.nn.init import init_cores, linear_core_stds, raw_cores, target_std
from engine.nn.linear import TNLinear, id_to_key, key_to_id
from engine.design.templates import TEMPLATE_KINDS, make_template

try:
    from tests.drawn import all_offset_design, nonlinear_drawn, one_torch_thread
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from drawn import all_offset_design, nonlinear_drawn, one_torch_thread

NP_ACT = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0.0),
          "gelu": lambda v: 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))}
NONLINEAR = ("mpo", "ttn", "attn", "mera")


pytestmark = pytest.mark.usefixtures("one_thread")

def numpy_weight(design: Design, cores: dict[str, np.ndarray]) -> np.ndarray:
    """W by the design's semantics, written independently of engine.program: one np.einsum per absorbed tensor."""
    letters: dict[str, str] = {}

    def sub(idx) -> str:
        return "".join(letters.setdefault(i, chr(ord("a") + len(letters)) if len(letters) < 26
                                          else chr(ord("A") + len(letters) - 26)) for i in idx)

    final = design.in_legs + design.out_legs
    if design.is_linear:
        eq = ",".join(sub(t.indices) for t in design.tensors) + "->" + sub(final)
        full = np.einsum(eq, *[cores[t.id] for t in design.tensors], optimize=True)
    else:
        users = design.users()
        done: set[str] = set()
        frags: list[tuple[list[str], np.ndarray]] = []
        for tid in design.evaluation_order():
            t = design.tensor(tid)
            done.add(tid)
            touch = [f for f in frags if set(f[0]) & set(t.indices)]
            frags = [f for f in frags if not any(f is g for g in touch)]
            group = [(list(t.indices), cores[tid])] + touch
            alive = [i for ix, _ in group for i in ix]
            keep = list(dict.fromkeys(i for i in alive if i in final or set(users[i]) - done))
            val = np.einsum(",".join(sub(ix) for ix, _ in group) + "->" + sub(keep), *[a for _, a in group],
                            optimize=True)
            if t.activation:
                val = NP_ACT[t.activation](val)
            frags.append((keep, val))
        (idx, full), = frags
        full = np.einsum(sub(idx) + "->" + sub(final), full)
    return full.reshape(design.in_features, design.out_features)


def np_cores(m: TNLinear) -> dict[str, np.ndarray]:
    return {k: v.detach().double().numpy() for k, v in m.core_tensors().items()}


ALL_DESIGNS = [(k, None) for k in TEMPLATE_KINDS] + [(k, a) for k in NONLINEAR for a in ("gelu", "tanh", "relu")]


@pytest.mark.parametrize("kind,act", ALL_DESIGNS)
def test_weight_equals_independent_numpy_einsum(kind, act):
    d = make_template(kind, 96, 60, 3, activation=act, in_factors=[4, 3, 2, 4], out_factors=[3, 5, 2, 2])
    m = TNLinear(d, seed=1).double()
    w = m.weight().detach().numpy()
    assert w.shape == (96, 60)
    np.testing.assert_allclose(w, numpy_weight(d, np_cores(m)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind,act", ALL_DESIGNS)
def test_forward_is_x_at_w_plus_b_for_any_leading_dims(kind, act):
    d = make_template(kind, 24, 20, 2, activation=act, in_factors=[2, 3, 2, 2], out_factors=[5, 2, 2, 1])
    m = TNLinear(d, seed=2).double()
    x = torch.randn(2, 3, 5, 24, dtype=torch.float64)
    y = m(x)
    assert y.shape == (2, 3, 5, 20)
    ref = x.numpy() @ numpy_weight(d, np_cores(m)) + m.bias.detach().numpy()
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-9, atol=1e-12)


def test_state_dict_keys_are_tensor_ids_and_odd_ids_round_trip():
    d = make_template("ttn", 64, 64, 3)
    m = TNLinear(d)
    assert set(m.state_dict()) == {f"cores.{t.id}" for t in d.tensors} | {"bias"}
    assert sum(p.numel() for p in m.cores.values()) == d.params
    odd = ["in.core", "update", "x_1", "keys", "", "Ω"]
    for tid in odd + ["G0", "N1_0", "top", "D0_0", "Ui0"]:
        key = id_to_key(tid)
        assert "." not in key and key_to_id(key) == tid
    raw = d.to_dict()
    for t, new in zip(raw["tensors"], ["in.core", "update", "x_1", "keys", "top"]):
        t["id"] = new
    raw["order"] = raw["root"] = None
    raw.pop("order")
    raw.pop("root")
    m2 = TNLinear(Design.from_dict(raw))
    assert sorted(m2.core_tensors()) == sorted(t["id"] for t in raw["tensors"])
    m2.load_state_dict(m2.state_dict())


def test_delta_tensors_are_fixed_buffers():
    """A CP layer written with a copy tensor instead of a hyperedge gives the same W as the hyperedge einsum."""
    raw = {"format": "tnstudio-design", "version": 1, "name": "cp-delta",
           "target": {"kind": "linear", "in_features": 12, "out_features": 10},
           "indices": {"i0": {"dim": 3, "role": "in", "axis": 0}, "i1": {"dim": 4, "role": "in", "axis": 1},
                       "o0": {"dim": 10, "role": "out", "axis": 0},
                       "a": {"dim": 5, "role": "bond"}, "b": {"dim": 5, "role": "bond"},
                       "c": {"dim": 5, "role": "bond"}},
           "tensors": [{"id": "A", "indices": ["i0", "a"]}, {"id": "B", "indices": ["i1", "b"]},
                       {"id": "C", "indices": ["o0", "c"]},
                       {"id": "copy", "indices": ["a", "b", "c"], "kind": "delta"}]}
    m = TNLinear(Design.from_dict(raw), seed=0).double()
    assert "delta_copy" in dict(m.named_buffers()) and "cores.copy" not in m.state_dict()
    c = np_cores(m)
    ref = np.einsum("ir,jr,or->ijo", c["A"], c["B"], c["C"]).reshape(12, 10)
    np.testing.assert_allclose(m.weight().detach().numpy(), ref, rtol=1e-10)
    assert abs(float(m.weight().detach().std()) / target_std(12) - 1) < 0.2


@pytest.mark.parametrize("kind", ["mpo", "tensor_ring", "tucker", "cp", "ttn", "mera"])
def test_stream_and_materialise_agree_on_outputs_and_gradients(kind):
    d = make_template(kind, 48, 36, 3, in_factors=[4, 3, 4], out_factors=[3, 4, 3])
    m = TNLinear(d, seed=3).double()
    x = torch.randn(7, 48, dtype=torch.float64, requires_grad=True)
    outs = {}
    for sched in ("stream", "materialise"):
        m.schedule = sched
        assert m.program(7).schedule == sched
        m.zero_grad()
        x.grad = None
        y = m(x)
        (y * torch.linspace(-1, 1, 36, dtype=torch.float64)).sum().backward()
        outs[sched] = [y.detach(), x.grad.clone()] + [p.grad.clone() for p in m.cores.values()]
    for a, b in zip(outs["stream"], outs["materialise"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,act", [("mpo", None), ("cp", None), ("ttn", "tanh")])
def test_gradcheck_float64(kind, act):
    d = make_template(kind, 8, 8, 2, activation=act, in_factors=[2, 2, 2], out_factors=[2, 2, 2])
    m = TNLinear(d, seed=4).double()
    ids = list(m.core_tensors())
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    schedules = ("stream", "materialise") if d.is_linear else ("materialise",)
    for sched in schedules:
        prog = m.program(3, sched)

        def f(x, *cores):
            return run_program(prog, dict(zip(ids, cores)), x)

        cores = [c.detach().clone().requires_grad_(True) for c in m.core_tensors().values()]
        assert torch.autograd.gradcheck(f, (x, *cores))


@pytest.mark.parametrize("kind,act,batch", [("mpo", None, 1), ("mpo", None, 32), ("tucker", None, 8),
                                            ("cp", None, 16), ("tensor_ring", None, 64), ("ttn", "gelu", 4),
                                            ("mera", "tanh", 16), ("attn", None, 16)])
def test_forward_flops_equal_the_cost_model(kind, act, batch):
    d = make_template(kind, 256, 128, 3, activation=act)
    m = TNLinear(d, seed=0)
    x = torch.randn(batch, 256)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(x)
    assert fc.get_total_flops() == m.program(batch).flops


def test_auto_schedule_follows_the_cost_model_and_can_be_forced():
    d = make_template("mpo", 256, 256, 8)
    m = TNLinear(d)
    from engine.contract.program import compile_program

    for b in (1, 4096):
        assert m.program(b).schedule == compile_program(d, b).schedule
    m.schedule = "materialise"
    m(torch.randn(3, 256))
    assert m.program(3).schedule == "materialise"
    assert TNLinear(d, schedule="stream").program(5).schedule == "stream"
    top_activated = make_template("ttn", 256, 256, 2, activation="gelu")
    top_activated.tensor(top_activated.evaluation_order()[-1]).activation = "gelu"
    with pytest.raises(ValueError, match="cannot stream"):
        TNLinear(top_activated, schedule="stream")
    with pytest.raises(ValueError, match="schedule must be"):
        m.schedule = "fast"
    with pytest.raises(ValueError, match="last dimension 256"):
        m(torch.randn(4, 255))
    with pytest.raises(ValueError, match=r"last dimension 256, got shape \(\)"):  # was an IndexError
        m(torch.tensor(1.0))


# ------------------------------------------------------------------------- initialisation
INIT_CASES = [(k, None) for k in TEMPLATE_KINDS] + [(k, a) for k in NONLINEAR for a in ("gelu", "tanh", "relu")]


@pytest.mark.parametrize("kind,act", INIT_CASES)
def test_init_matches_nn_linear_std(kind, act):
    d = make_template(kind, 512, 256, 4, activation=act)
    m = TNLinear(d, seed=5)
    w = m.weight().detach()
    dense = torch.nn.Linear(512, 256).weight.detach()
    assert abs(float(w.std()) / target_std(512) - 1) < 0.2
    assert abs(float(w.std()) / float(dense.std()) - 1) < 0.2
    assert abs(float(w.mean())) < 0.2 * target_std(512)
    bound = 1 / math.sqrt(512)
    assert float(m.bias.abs().max()) <= bound and float(m.bias.std()) > 0.4 * bound


@pytest.mark.parametrize("kind", ["mpo", "tucker", "cp", "ttn", "mera"])
def test_closed_form_core_stds_give_the_target_variance_on_average(kind):
    """Before the exact normalisation, i.i.d. cores with the closed-form stds give E[W_ij^2] = target^2."""
    d = make_template(kind, 32, 24, 3)
    target = target_std(32)
    draws = [raw_cores(d, target, seed=s) for s in range(300)]
    m = TNLinear(d, init=False)
    ms = []
    with torch.no_grad():
        for cores in draws:
            ms.append(float(run_program(m.program(1, "materialise"), cores, until_weight=True).pow(2).mean()))
    assert abs(np.mean(ms) / target ** 2 - 1) < 0.15
    stds = linear_core_stds(d, target)
    assert set(stds) == {t.id for t in d.tensors}


def test_init_is_deterministic_under_a_seed_and_isometries_start_orthogonal():
    d = make_template("attn", 256, 256, 4, activation="gelu")
    a, b = init_cores(d, seed=7), init_cores(d, seed=7)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["L0"], init_cores(d, seed=8)["L0"])
    raw = raw_cores(d, 0.1, seed=0)
    iso = raw["N1_0"].reshape(-1, raw["N1_0"].shape[-1])
    torch.testing.assert_close(iso.T @ iso, torch.eye(iso.shape[1]), atol=1e-5, rtol=0)
    dis = raw["D0_0"].reshape(16, 16)
    assert float((dis - torch.eye(16)).abs().max()) < 0.5


_MEAN_MANY_STDS = {  # drawn by a fresh clone's run: in float32 the mean left after the projection was 5e-4 std
    "format": "tnstudio-design", "version": 1, "name": "drawn",
    "target": {"kind": "linear", "in_features": 8, "out_features": 64},
    "indices": {"b0": {"dim": 4, "role": "bond"}, "b1": {"dim": 2, "role": "bond"}, "b2": {"dim": 3, "role": "bond"},
                "b3": {"dim": 3, "role": "bond"}, "b4": {"dim": 3, "role": "bond"},
                "i0": {"dim": 4, "role": "in", "axis": 0}, "i1": {"dim": 2, "role": "in", "axis": 1},
                "o0": {"dim": 4, "role": "out", "axis": 0}, "o1": {"dim": 4, "role": "out", "axis": 1},
                "o2": {"dim": 4, "role": "out", "axis": 2}},
    "tensors": [{"id": "T0", "indices": ["b0"], "activation": "relu"},
                {"id": "T1", "indices": ["b2", "o0", "b0", "i1", "o1", "b4", "b1"], "activation": "gelu"},
                {"id": "T2", "indices": ["b1", "b3"], "activation": None},
                {"id": "T3", "indices": ["b2"], "activation": "relu"},
                {"id": "T4", "indices": ["b3"], "activation": "gelu"},
                {"id": "T5", "indices": ["o2", "i0", "b4"], "activation": "relu"}],
    "order": ["T0", "T4", "T5", "T1", "T3", "T2"]}


@settings(max_examples=25, deadline=None)
@given(data=nonlinear_drawn())
@example(data=_MEAN_MANY_STDS)
@example(data=all_offset_design(0, None))
@example(data=all_offset_design(1, "gelu"))
def test_calibration_in_one_pass_equals_measuring_each_prefix(data):
    """An unsliced program's calibration rescales each activation's input as it arrives, in one pass; measuring each
    activation's input again after rescaling the tensors before it (what a sliced program's calibration does) gives
    the same cores, and then every activation's input has unit RMS, mean(W) = 0 and std(W) = the target; unless
    removing the mean leaves no W (W all offset): then the mean stays and std(W) = the target, with finite cores.
    The first example failed in float32 (a fresh clone's run drew it; the test runs in float64), the others before
    the all-offset case was kept."""
    from engine.contract.program import compile_program
    from engine.nn.init import PRE_ACTIVATION_RMS, _pre_activation_rms, _recording, _remove_mean, calibrate

    d = Design.from_dict(data)
    std = target_std(d.in_features)
    prog = compile_program(d, 1, "materialise")
    order = d.evaluation_order()
    activated = [t for t in order if d.tensor(t).activation is not None]
    assume(activated and sum(s.activation is not None for s in prog.steps) == len(activated))
    with one_torch_thread():  # in float64: the claim is the two ways' equality, not float32's rounding (a drawn
        # design whose raw W had a mean many times its std left 5e-4 std of it after float32's cancellation)
        one = {k: v.double() for k, v in raw_cores(d, std, seed=3).items()}
        calibrate(d, one, std)
        seq = {k: v.double() for k, v in raw_cores(d, std, seed=3).items()}
        for k, tid in enumerate(activated):
            rms = _pre_activation_rms(prog, seq, k)
            if rms > 0 and math.isfinite(rms):
                seq[tid].mul_(PRE_ACTIVATION_RMS / rms)
        with torch.no_grad():
            w0 = run_program(prog, seq, until_weight=True)
            kept = seq[order[-1]].clone()
            _remove_mean(prog, seq, order[-1])
            rms0 = float(w0.pow(2).mean().sqrt())
            assume(rms0 > 0)  # a relu that zeroes everything: no W to calibrate
            left = float(run_program(prog, seq, until_weight=True).std()) / rms0
            assume(left < 1e-9 or left > 1e-3)  # all offset (rounding left) or clearly not
            all_offset = left < 1e-9
            if all_offset:
                seq[order[-1]] = kept
            w = run_program(prog, seq, until_weight=True)
            assume(float(w.std()) > 0)
            seq[order[-1]].mul_(std / float(w.std()))
            for k in one:
                assert torch.isfinite(one[k]).all()
                torch.testing.assert_close(one[k], seq[k], rtol=1e-4, atol=1e-6 * float(seq[k].abs().max()))
            rec: list[float] = []
            w = run_program(prog, one, activations=_recording(rec, None), until_weight=True)
    assert len(rec) == len(activated) and all(r == 0 or abs(r - PRE_ACTIVATION_RMS) < 1e-4 for r in rec), rec
    assert abs(float(w.std()) / std - 1) < 1e-4
    assert all_offset or abs(float(w.mean())) < 1e-4 * std


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_a_design_whose_w_is_all_offset_keeps_its_mean_and_moderate_cores(activation):
    """``init_cores`` in float32 (what layers get) on a design whose W can have no zero mean for some seeds: W's std
    is the target and no core is large (removing the mean had made W rounding and the cores up to 1e15). For 1 in
    8-9 seeds T1's relu zeroed every entry of W (a dead layer: no gradient reaches its cores); such a draw is drawn
    again from the same generator, and every other seed's cores are the calibration of its first draw."""
    from engine.nn.init import calibrate

    d = Design.from_dict(all_offset_design(0, activation))
    std = target_std(d.in_features)
    prog = compile_program(d, 1, "materialise")
    biggest, redrawn = 0.0, 0
    for seed in range(40):
        cores = init_cores(d, seed=seed)
        w = run_program(prog, cores, until_weight=True)
        assert abs(float(w.std()) / std - 1) < 1e-3, seed
        biggest = max(biggest, max(float(v.abs().max()) for v in cores.values()))
        first = raw_cores(d, std, seed)
        calibrate(d, first, std)  # (a gelu rescaled by the calibration can make the relu's inputs all negative)
        if float(run_program(prog, first, until_weight=True).abs().max()) == 0:
            redrawn += 1
            continue
        for k, v in cores.items():
            torch.testing.assert_close(v, first[k], rtol=0, atol=0)
    assert 0 < biggest < 1e4 and redrawn >= 2  # largest here 118 (a 2-entry bond); before, 1e15


# ------------------------------------------------------------------------- training, AMP, compile
def test_training_reduces_the_loss():
    torch.manual_seed(0)
    teacher = TNLinear(make_template("mpo", 64, 32, 4), seed=11)
    student = TNLinear(make_template("mpo", 64, 32, 4), seed=12)
    opt = torch.optim.Adam(student.parameters(), lr=0.01)
    x = torch.randn(256, 64)
    with torch.no_grad():
        target = teacher(x)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (student(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("kind,act,dtype", [("mpo", None, torch.bfloat16), ("ttn", "gelu", torch.bfloat16),
                                            ("mera", "tanh", torch.float16)])
def test_autocast_on_cpu(kind, act, dtype):
    m = TNLinear(make_template(kind, 128, 64, 4, activation=act), seed=0)
    x = torch.randn(16, 128)
    ref = m(x).detach()
    with torch.autocast("cpu", dtype=dtype):
        y = m(x)
    assert y.dtype == dtype
    assert float((y.float() - ref).abs().max()) < 0.05 * float(ref.abs().max())
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.cores.values())


def test_torch_compile_traces_and_matches():
    """Dynamo + AOT autograd (the inductor-free part of torch.compile): same outputs and gradients."""
    for kind, act in (("mpo", None), ("ttn", "tanh")):
        torch._dynamo.reset()
        m = TNLinear(make_template(kind, 32, 16, 2, activation=act), seed=0)
        cm = torch.compile(m, backend="aot_eager")
        for shape in ((4, 32), (2, 3, 32)):
            x = torch.randn(*shape)
            y = cm(x)
            torch.testing.assert_close(y, m(x))
        y.sum().backward()
        assert all(p.grad is not None for p in m.cores.values())


def test_run_program_traces_in_one_graph_on_a_fresh_program():
    """A program never run before (its execution plan not derived yet) still traces as one graph."""
    from engine.contract.cache import clear_cache
    from engine.contract.program import compile_program

    torch._dynamo.reset()
    d = make_template("ttn", 32, 16, 2, activation="tanh")
    cores = init_cores(d, seed=0)
    clear_cache()
    prog = compile_program(d, 4, "stream")
    x = torch.randn(4, 32)
    cf = torch.compile(lambda x: run_program(prog, cores, x), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(cf(x), run_program(prog, cores, x))


@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    m = TNLinear(make_template("mpo", 32, 16, 2), seed=0)
    cm = torch.compile(m)
    x = torch.randn(4, 32)
    torch.testing.assert_close(cm(x), m(x))


def test_device_follows_the_parameters():
    m = TNLinear(make_template("cp", 32, 16, 4), device="meta")
    assert all(p.device.type == "meta" for p in m.parameters())
    y = m(torch.randn(4, 32, device="meta"))
    assert y.device.type == "meta" and y.shape == (4, 16)


DELTA_LAST = {"format": "tnstudio-design", "version": 1, "name": "copy tensor last",
              "target": {"kind": "linear", "in_features": 6, "out_features": 4},
              "indices": {"b0": {"dim": 3, "role": "bond"}, "b1": {"dim": 3, "role": "bond"},
                          "b2": {"dim": 3, "role": "bond"}, "i0": {"dim": 2, "role": "in", "axis": 0},
                          "i1": {"dim": 3, "role": "in", "axis": 1}, "o0": {"dim": 4, "role": "out", "axis": 0}},
              "tensors": [{"id": "A", "indices": ["i0", "b0"], "activation": "relu"},
                          {"id": "B", "indices": ["o0", "b1"]},
                          {"id": "C", "indices": ["i1", "b2"], "activation": "gelu"},
                          {"id": "D", "kind": "delta", "indices": ["b0", "b1", "b2"]}],
              "order": ["A", "B", "C", "D"]}


def test_a_copy_tensor_absorbed_last_leaves_the_scale_to_a_trainable_tensor(tmp_path):
    """The calibration scaled the last tensor absorbed, even a copy tensor, whose values the layer rebuilds: W's std
    came out at 0.5-0.7 of nn.Linear's while calibrate reported the target. It now scales the last trainable tensor no
    activation reaches (W is linear in it): here B; for every template the top. The export calibrates the same one."""
    import importlib.util

    from engine.nn.export import to_torch_source
    from engine.nn.init import scale_tensor

    d = Design.from_dict(DELTA_LAST)
    assert scale_tensor(d) == ("B", True)
    for kind in ("ttn", "attn", "mera", "mpo"):
        t = make_template(kind, 256, 256, 2, "gelu")
        assert scale_tensor(t) == (t.evaluation_order()[-1], True)
    all_activated = Design.from_dict({**DELTA_LAST, "tensors": [{**t, "activation": t.get("activation") or "tanh"}
                                                                 if t["id"] != "D" else t
                                                                 for t in DELTA_LAST["tensors"]]})
    assert scale_tensor(all_activated) == ("C", False)
    path = tmp_path / "m.py"
    path.write_text(to_torch_source(d))
    spec = importlib.util.spec_from_file_location("delta_last", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.Layer.INIT_LAST == "B"
    for seed in range(4):
        w = TNLinear(d, seed=seed).weight().detach()
        assert abs(float(w.std()) / target_std(6) - 1) < 1e-3, seed
        torch.manual_seed(seed)
        w = mod.Layer().weight().detach()
        assert abs(float(w.std()) / target_std(6) - 1) < 1e-3, seed


def test_calibrate_runs_without_autograd_on_cores_that_require_grad():
    """calibrate() rescales cores in place without recording a graph: its @torch.no_grad() had slid onto the
    scale_tensor() inserted above it, so cores that require grad (parameters) raised 'a leaf Variable that requires
    grad is being used in an in-place operation'."""
    from engine.nn.init import calibrate

    d = make_template("ttn", 64, 64, 2, "gelu")
    drawn = raw_cores(d, target_std(64), torch.Generator().manual_seed(0))
    cores = {k: v.requires_grad_(True) for k, v in drawn.items()}
    got = calibrate(d, cores, target_std(64))
    assert got["std"] > 0 and all(v.grad_fn is None and v.requires_grad for v in cores.values())
