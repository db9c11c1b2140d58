"""The Inspect view (studio/inspect_view.py) server-side, on a run made by ``tnstudio train``: what it shows is
checked against independent computations (numpy SVDs of W across each bond's cut, the closed-form parameter count
and stack shapes of the MPO, Eckart-Young errors), and its actions (click, slider, tolerance, truncate and
fine-tune) against the run store."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.analysis.runs import load_run_layer
from engine.design.model import Design
from engine.nn import TNLinear
from engine.train.launcher import wait
from engine.train.store import RunStore

from studio.inspect_view import CURRENT, InspectView, entropy_colour, entropy_width
from studio.state import StudioState

try:
    from tests.analysis_helpers import train_mpo_run
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from analysis_helpers import train_mpo_run

IN = OUT = [4, 4, 4]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run made with the CLI: (runs dir, run id, design, W as numpy)."""
    tmp = tmp_path_factory.mktemp("inspect")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TNSTUDIO_HOME", str(tmp / "home"))
        runs, run_id, _ = train_mpo_run(tmp)
        layer = load_run_layer(run_id, runs)
        yield runs, run_id, layer.design, dense(layer.design, layer.state)


def dense(design: Design, state) -> np.ndarray:
    layer = TNLinear(design, init=False, bias="bias" in state, dtype=torch.float64)
    layer.load_state_dict({k: v.double() for k, v in state.items()})
    with torch.no_grad():
        return layer.weight().numpy()


def cut_svals(design: Design, w: np.ndarray, bond: str) -> np.ndarray:
    """Singular values of W across an MPO bond: the legs of the sites before it vs the rest (numpy)."""
    site = int(bond[1:])  # r0: between G0 and G1
    legs = design.open_legs
    left = [f"i{k}" for k in range(site + 1)] + [f"o{k}" for k in range(site + 1)]
    t = w.reshape([design.dim(i) for i in legs])
    order = [legs.index(i) for i in left] + [legs.index(i) for i in legs if i not in left]
    m = np.transpose(t, order).reshape(math.prod(design.dim(i) for i in left), -1)
    return np.linalg.svd(m, compute_uv=False)


def entropy(s: np.ndarray) -> float:
    p = s ** 2 / (s ** 2).sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.fixture
def view(run, tmp_path):
    runs, run_id, _, _ = run
    v = InspectView(StudioState(home=str(tmp_path)), runs)
    assert v.wait_idle(120)
    yield v
    v.wait_idle(120)


def test_it_opens_the_newest_run_with_its_exact_spectra(view, run):
    runs, run_id, design, w = run
    assert view.source == run_id and view.design.to_dict() == design.to_dict() and view.error == ""
    assert "Current design (initial weights)" in view.source_select.options
    for bond in ("r0", "r1"):
        view.bond = bond
        ref = cut_svals(design, w, bond)[:design.dim(bond)]
        shown = np.array(view.spec_source.data["s"], dtype=float)
        np.testing.assert_allclose(shown, ref, rtol=1e-5, atol=1e-6 * ref[0])
        assert view.slider.end == design.dim(bond) and view.slider.value == design.dim(bond)
        assert f">{bond}<" in view.spec_title.object and "exact" in view.spec_title.object


def test_bonds_are_coloured_and_thickened_by_entropy(view, run):
    _, _, design, w = run
    top = math.log(max(design.dim(b) for b in ("r0", "r1")))
    widths = {}
    for e in view.flow.edges:
        if not e["id"].startswith("B:"):
            continue
        bond = e["id"][2:]
        t = entropy(cut_svals(design, w, bond)) / top
        assert e["style"]["stroke"] == entropy_colour(t)
        assert e["style"]["strokeWidth"] == pytest.approx(entropy_width(t), abs=0.01)
        widths[bond] = (t, e["style"]["strokeWidth"])
    assert set(widths) == {"r0", "r1"}
    (ta, wa), (tb, wb) = widths.values()
    assert (ta - tb) * (wa - wb) >= 0  # more entropy, thicker
    assert "entropy" in view.legend.object and "ln 4" in view.legend.object


def test_clicking_a_bond_selects_it(view):
    view._edge_clicked({"edge_id": "B:r1", "position": {"x": 0, "y": 0}})
    assert view.bond == "r1"
    view._selection_changed({"nodes": [], "edges": ["B:r0"]})
    assert view.bond == "r0"
    view._edge_clicked({"edge_id": "LE:i0"})  # an open leg has no spectrum: nothing changes
    assert view.bond == "r0"
    assert [e["id"] for e in view.flow.edges if e.get("selected")] == ["B:r0"]


def test_the_slider_plans_a_truncation_with_its_exact_error_and_params(view, run):
    _, _, design, w = run
    view.bond = "r0"
    view.slider.value = 2
    assert view.plan == {"r0": 2}
    assert view.wait_idle(60)
    res = view.preview
    s = cut_svals(design, w, "r0")
    assert res.relative_error == pytest.approx(math.sqrt((s[2:] ** 2).sum()) / np.linalg.norm(s), rel=1e-4)
    assert res.params_after == 4 * 4 * 2 + 2 * 16 * 4 + 4 * 16  # G0 (4,4,2), G1 (2,4,4,4), G2 (4,4,4)
    assert f"data-params='{res.params_after}'" in view.readout.object and "exact" in view.readout.object
    assert view.spec_source.data["state"] == ["kept", "kept", "dropped", "dropped"]
    assert view.cut.location == 2.5
    edge = next(e for e in view.flow.edges if e["id"] == "B:r0")
    assert "4→2" in edge["label"]
    view.slider.value = 4  # back to the full bond: nothing planned
    assert view.plan == {} and view.wait_idle(60) and view.preview is None


def test_apply_tolerance_makes_a_plan_within_it(view, run):
    _, _, design, w = run
    view.tol = 0.7
    view.apply_tolerance()
    assert view.wait_idle(60)
    assert view.plan and all(k < design.dim(b) for b, k in view.plan.items())
    res = view.preview
    w2 = dense(res.design, res.state_dict())
    err = np.linalg.norm(w - w2) / np.linalg.norm(w)
    assert res.relative_error == pytest.approx(err, rel=1e-4) and err <= 0.7
    assert {b.bond: b.after for b in res.bonds if b.after < b.before} == view.plan
    view.reset_button.clicks += 1
    assert view.plan == {}


def test_stack_view_shows_each_sparse_layer(view):
    view.mode = "stack"
    assert view.stack_pane.visible and not view.canvas_box.visible
    text = view.stack_pane.object
    # 4x4x4 -> 4x4x4, chi 4: 64 -> (o0 r0 i1 i2) 256 -> (o0 o1 r1 i2) 256 -> (o0 o1 o2) 64; nonzeros per layer:
    # untouched combinations x core entries
    for shape, nnz in (("64 × 256", 16 * 64), ("256 × 256", 16 * 256), ("256 × 64", 16 * 64)):
        assert shape in text and f"{nnz:,}" in text
    view.mode = "network"
    assert view.canvas_box.visible and not view.stack_pane.visible


def test_bond_features_heatmap_per_class(view):
    rep = view.features
    assert rep is not None and view.features_error == ""
    view.bond = "r1"
    b = rep["r1"]
    data = view.heat_source.data
    assert len(data["v"]) == len(rep.classes) * b.dim == 10 * 4
    got = np.array(data["v"]).reshape(len(rep.classes), b.dim)
    np.testing.assert_allclose(got, np.array(b.class_means), rtol=1e-12)
    assert view.heat_pane.visible and "linear probe" in view.heat_note.object


def test_truncate_and_finetune_launches_a_child_run(view, run):
    runs, run_id, design, _ = run
    view.bond = "r1"
    view.slider.value = 2
    view.epochs = 1
    assert not view.finetune_button.disabled
    view.truncate_and_finetune()
    assert view.wait_idle(120)
    assert view.error == "" and view.launched and "Launched child run" in view.feedback.object
    child = RunStore(runs).get_run(view.launched)
    assert child["parent"] == run_id and child["config"]["epochs"] == 1
    assert Design.from_dict(child["design"]).dim("r1") == 2
    assert view.launched in view.source_select.options.values()  # the list shows the new child run
    assert wait(view.launched, runs, timeout=300)["status"] == "completed"


def test_refusals_are_shown_next_to_the_action(view):
    view.launching = True
    assert view.finetune_button.disabled and "starting" in view.feedback.object
    view.launching = False
    view.plan = {}
    assert view.finetune_button.disabled and "plan a truncation first" in view.feedback.object
    view.truncate_and_finetune()
    assert "nothing to truncate" in view.feedback.object
    view.source = CURRENT
    assert view.wait_idle(60)
    view.bond = view.spectra.spectra[0].bond
    view.slider.value = 1
    assert view.plan and view.finetune_button.disabled and "pick a run" in view.feedback.object
    view.truncate_and_finetune()
    assert "pick a run" in view.error


def test_current_design_uses_its_initial_weights_and_follows_edits(tmp_path):
    state = StudioState(home=str(tmp_path))
    state.generate("ttn", 64, 64, 3, activation="gelu", in_factors=[4, 4, 2, 2], out_factors=[4, 4, 2, 2])
    v = InspectView(state, tmp_path / "no_runs")
    assert v.wait_idle(120) and v.source == CURRENT
    d = state.valid_design
    assert v.design.to_dict() == d.to_dict()
    init = TNLinear(d, seed=0, bias=True).state_dict()
    assert all(torch.equal(v.weights[k], init[k]) for k in init)
    assert not v.spectra.linear and "fragment" in v.legend.object
    assert "pick a run" in v.heat_note.object
    # a nonlinear tree: the slider's error is measured by forming W
    bond = next(s.bond for s in v.spectra if s.dim > 1 and s.values[-1] > 0)
    v.bond = bond
    v.slider.value = 2
    assert v.wait_idle(60)
    res = v.preview
    w, w2 = dense(d, init), dense(res.design, res.state_dict())
    assert res.error == "measured"
    assert res.relative_error == pytest.approx(np.linalg.norm(w - w2) / np.linalg.norm(w), rel=1e-4)
    state.generate("mpo", 64, 32, 2)
    assert v.wait_idle(120) and v.design.name == state.valid_design.name and v.plan == {}


class Queue:
    """A stand-in for a served session's dispatcher: calls wait until ``drain`` (the session's next tick)."""

    served = True

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, fn) -> None:
        self.calls.append(fn)

    def drain(self) -> None:
        while self.calls:
            self.calls.pop(0)()

    def close(self) -> None:
        pass


def test_clicks_and_edits_hand_plot_changes_to_the_session(view):
    """Clicks, the slider and Reset run in callbacks Panel may run without the document lock: the plots' Bokeh
    models change only when the session runs what was handed to it, never in the callback itself."""
    design = view.design  # the newest run (a fine-tuned child run when that test ran first)
    view.bond = "r0"
    queue = view.dispatcher = Queue()
    before = dict(view.spec_source.data)
    view._edge_clicked({"edge_id": "B:r1"})
    assert view.bond == "r1" and view.spec_source.data == before and queue.calls  # not drawn yet
    assert ">r1<" in view.spec_title.object  # Panel panes change at once
    queue.drain()
    assert len(view.spec_source.data["s"]) == design.dim("r1") and view.spec_fig.x_range.end == design.dim("r1") + .5
    view.slider.value = 1
    assert view.cut.location == design.dim("r1") + 0.5  # still the old cut until the session draws
    queue.drain()
    assert view.cut.location == 1.5 and view.spec_source.data["state"].count("kept") == 1
    view.reset_button.clicks += 1  # Reset: the plan and the plot go back, through the session again
    assert view.plan == {} and view.cut.location == 1.5
    queue.drain()
    assert view.cut.location == design.dim("r1") + 0.5
    assert view.wait_idle(60)
    queue.drain()


def test_nothing_loads_while_the_tab_is_behind(tmp_path):
    state = StudioState(home=str(tmp_path))
    v = InspectView(state, tmp_path / "no_runs")
    assert v.wait_idle(120) and v.design is not None
    v.active = False
    state.generate("mpo", 64, 32, 2)
    assert v.wait_idle(5) and v.design.name != state.valid_design.name  # an edit elsewhere: not loaded yet
    v.active = True
    assert v.wait_idle(120) and v.design.name == state.valid_design.name
    v.close()


def test_a_network_runs_tn_layers_are_sources_of_their_own(tmp_path):
    """Network runs were not listed (they record no single design); each of their TN layers is now a source
    ("<run id>/<module>"), loaded from the recorded network and the checkpoint: the spectra are those of the
    module's own cores; fine-tuning one of them trains the network with that layer truncated (a child run)."""
    from engine.analysis.spectra import bond_spectra
    from engine.network.build import build_network
    from engine.network.format import new_network
    from engine.train.networks import network_config

    spec = new_network("mlp", [1, 40], 10, name="net").with_rules(["linear:mpo:3:min=20000", "linear:ttn:2:max=3000"])
    runs = tmp_path / "runs"
    store = RunStore(runs)
    rid = store.create_run(network_config(spec, dataset="mnist1d", epochs=1).to_dict(), None, name="net run")
    torch.manual_seed(1)
    model = build_network(spec)
    ckpt = store.run_dir(rid) / "checkpoint.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    store.set_status(rid, "completed", checkpoint=str(ckpt), results={"test_accuracy": 0.5})
    v = InspectView(StudioState(home=str(tmp_path)), runs)
    assert v.wait_idle(120)
    sources = {value: label for label, value in v.source_select.options.items() if value != CURRENT}
    assert set(sources) == {f"{rid}/fc2", f"{rid}/fc3"} and "· fc2 ·" in sources[f"{rid}/fc2"]
    for module in ("fc2", "fc3"):
        v.source = f"{rid}/{module}"
        assert v.wait_idle(120) and v.error == "", v.error
        layer = model.get_submodule(module)
        want = bond_spectra(layer.design, {k: c.detach() for k, c in layer.cores.items()})
        assert v.design.fingerprint() == layer.design.fingerprint()
        for got, ref in zip(v.spectra, want):
            np.testing.assert_allclose(got.values, ref.values, rtol=1e-6)
        assert v.features_error == "" and v.features is not None  # mnist1d streamed through the network to it
    v.bond = next(s.bond for s in v.spectra if s.dim > 1)
    v.slider.value = 1
    assert v.wait_idle(60) and v.plan
    plan = dict(v.plan)
    v.truncate_and_finetune()
    assert v.wait_idle(60) and v.error == "", v.error
    assert v.launched and f"fine-tuning from fc3 of run {rid}" in v.message
    child = RunStore(runs).get_run(v.launched)  # the network again, with fc3's design truncated as planned
    assert child["parent"] == rid and child["design"] is None
    layers = child["config"]["network"]["layers"]
    truncated = Design.from_dict(layers["fc3"]["design"])
    assert {b: truncated.indices[b].dim for b in plan} == plan
    assert layers["fc2"] == RunStore(runs).get_run(rid)["config"]["network"]["layers"]["fc2"]
    assert wait(v.launched, runs, timeout=300)["status"] == "completed"


def test_the_view_imports_quimb_before_the_first_spectra():
    """Built, the view imports quimb (about a second) on its worker, before a user opens the tab; in a fresh
    interpreter, since the import is the process's."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from studio.inspect_view import InspectView\n"
            "from studio.state import StudioState\n"
            "assert 'quimb.tensor' not in sys.modules\n"
            "v = InspectView(StudioState(home=sys.argv[1]), sys.argv[1] + '/runs', active=False)\n"
            "assert v.wait_idle(120)\n"
            "print('quimb.tensor' in sys.modules)\n")
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run([sys.executable, "-c", code, home], capture_output=True, text=True, timeout=300,
                             check=True)
    assert out.stdout.split()[-1] == "True"
