"""Train and Export tabs without a browser: the form, the run table and curves fed by the run store, Stop, export."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from engine.format import ratio
from engine.nn.export import layer_state_dict, to_torch_source
from engine.nn.linear import TNLinear
from engine.train.store import RunStore, process_start_time
from studio.export_view import NO_WEIGHTS, ExportView, file_stem
from studio.state import StudioState
from studio.train_view import TrainView, elapsed_text, parse_hidden


@pytest.fixture
def state(tmp_path):
    s = StudioState(home=str(tmp_path))
    s.generate("mpo", 64, 32, 4)
    return s


def _run(store: RunStore, design, status="running", total=100, **cfg) -> str:
    rid = store.create_run({"dataset": "digits", "model": "mlp", **cfg}, design)
    store.set_status(rid, status)
    store.update(rid, total_steps=total)
    return rid


def _rows(step0: int, n: int, split="train"):
    return [{"step": step0 + 10 * k, "split": split, "loss": 2.0 / (1 + step0 + k), "accuracy": 0.1 * k,
             "epoch": (step0 + 10 * k) / 100} for k in range(n)]


def test_form_describes_the_model_and_refuses_what_does_not_fit(state):
    view = TrainView(state)
    assert "TN 64×32 · Linear 32×10" in view.plan.object and not view.launch_button.disabled
    view.hidden.value = "128"  # 64 -> 128 -> 10: no layer has the design's shape
    assert "no layer of the MLP 64 -&gt; 128 -&gt; 10" in view.plan.object and view.launch_button.disabled
    assert view.layer.options == ["auto", "0", "1"]
    view.hidden.value = "32, 16"
    view.layer.value = "0"
    assert "TN 64×32 · Linear 32×16 · Linear 16×10" in view.plan.object
    view.layer.value = "1"
    assert "layer 1 of the MLP expects in_features=32" in view.plan.object
    view.model.value = "cnn"
    assert "in_features=1024" in view.plan.object and view.hidden.disabled
    view.model.value = "mlp"
    view.hidden.value = "a, b"
    assert "hidden sizes must be integers" in view.plan.object
    assert parse_hidden(" 256 128 ") == [256, 128] and parse_hidden("") is None
    view.hidden.value = ""
    assert not view.config().compile
    view.compiled.value = True  # the tick reaches the run's config
    assert view.config().compile
    assert elapsed_text(5) == "5 s" and elapsed_text(125) == "2 min 05 s" and elapsed_text(3700) == "1 h 01 min"


def test_launch_records_the_run_and_its_dense_baseline(state, monkeypatch):
    started = []
    monkeypatch.setattr("engine.train.launcher.start_process", lambda rid, store, resume=False: started.append(rid))
    view = TrainView(state)
    view.epochs.value, view.batch_size.value, view.lr.value = 2, 32, 0.01
    view.baseline.value = True
    ids = view.launch()
    assert len(ids) == 2 and started == ids
    store = RunStore(view.root)
    tn, dense = store.get_run(ids[0]), store.get_run(ids[1])
    assert tn["config"]["epochs"] == 2 and tn["config"]["batch_size"] == 32 and tn["config"]["lr"] == 0.01
    assert tn["design"] == state.valid_design.to_dict() and not tn["config"]["baseline"]
    assert dense["config"]["baseline"] and dense["parent"] == ids[0]
    assert set(view.selected) == set(ids) and len(view.table.value) == 2
    view.dataset.value = "teacher"  # regression, 64 -> 8: the MLP is rebuilt around the design and fits
    view.lr.value = -1.0
    assert view.launch() == [] and "learning rate" in view.feedback.object
    assert len(store.list_runs()) == 2  # nothing recorded for the refused launch


def test_poll_streams_new_rows_once_and_overlays_selected_runs(state):
    view = TrainView(state)
    store = RunStore(view.root)
    a = _run(store, state.valid_design)
    store.log_metrics(a, _rows(10, 3))
    view.poll()
    assert view.selected == [a]  # a run appearing while active is shown
    curves = view.curves[a]
    assert curves.train.data["step"] == [10, 20, 30] and curves.test.data["step"] == []
    store.log_metrics(a, _rows(40, 2) + [{"step": 50, "split": "test", "loss": 0.5, "accuracy": 0.8}])
    view.poll()
    view.poll()  # nothing new: nothing appended twice
    assert curves.train.data["step"] == [10, 20, 30, 40, 50]
    assert curves.train.data["loss"] == [r["loss"] for r in store.metrics(a, split="train")]
    assert curves.test.data["accuracy"] == [0.8]
    row = view.table.value.iloc[0]
    assert row["id"] == a and "data-value='50'" in row["progress"] and ">50%<" in row["progress"]
    assert row["best"] == "80.0%" and "running" in row["status"]
    # a second, finished run: listed first (newest), overlaid once selected, with its own colour and legend entry
    b = _run(store, state.valid_design, status="completed", total=10)
    store.log_metrics(b, _rows(10, 1, "test"))
    view.poll()
    assert list(view.table.value["id"]) == [b, a] and view.selected == [a]
    view.table.selection = [0, 1]
    assert sorted(view.selected) == sorted([a, b])
    assert all(view.curves[i].label in view.legend.object for i in view.selected)  # one legend, outside the plots
    assert view.charts.visible and not view.placeholder.visible
    assert view.curves[a].color != view.curves[b].color and all(r.visible for r in view.curves[b].renderers)
    view.table.selection = [0]  # deselect a: its lines are hidden, its data kept
    assert view.selected == [b] and not any(r.visible for r in view.curves[a].renderers)
    assert "completed" in view.table.value.iloc[0]["status"] and ">100%<" in view.table.value.iloc[0]["progress"]
    view.table.selection = []  # nothing ticked: a placeholder instead of empty plots
    assert not view.charts.visible and view.placeholder.visible and view.legend.object == ""


def test_a_restarted_studio_shows_the_same_runs_and_curves(state):
    first = TrainView(state)
    store = RunStore(first.root)
    rid = _run(store, state.valid_design, status="completed")
    store.log_metrics(rid, _rows(10, 4) + _rows(40, 1, "test"))
    again = TrainView(StudioState(home=state.home))  # a new session over the same home
    assert again.selected == [rid]
    assert again.curves[rid].train.data["step"] == [10, 20, 30, 40]
    assert again.curves[rid].test.data["step"] == [40]


def test_stop_button_stops_the_selected_active_run(state):
    view = TrainView(state)
    store = RunStore(view.root)
    rid = _run(store, state.valid_design)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.update(rid, pid=proc.pid, pid_start=process_start_time(proc.pid))
        view.poll()
        assert view.selected == [rid] and not view.stop_button.disabled
        view.stop_button.clicks += 1
        assert proc.wait(timeout=10) == -15  # SIGTERM reached the run's process
        assert store.get_run(rid)["stop_requested"]
        assert "Asked" in view.feedback.object
    finally:
        proc.kill()


def test_export_view_previews_and_downloads_with_a_runs_weights(state):
    view = ExportView(state, background=False)
    design = state.valid_design
    assert view._text == to_torch_source(design)
    assert view.download.filename == "mpo_64x32_chi_4.py" and "einsum" in view.code.object
    view.format.value = "json"
    assert view._code_file().read().decode() == design.to_json() + "\n"
    view.format.value = "snippet"
    assert "TNLinear(load_design(HERE / 'mpo_64x32_chi_4.json'))" in view._text
    # a trained run of this design: its weights come with the export
    store = RunStore(view.runs_root)
    rid = _run(store, design, status="completed")
    layer = TNLinear(design, seed=3)
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), torch.nn.Linear(32, 10))
    ckpt = store.run_dir(rid) / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "step": 7}, ckpt)
    store.update(rid, checkpoint=str(ckpt))
    view.refresh_runs()
    label = next(o for o in view.weights.options if o.startswith(rid))
    view.format.value = "torch"
    view.weights.value = label
    assert view.download_weights.visible and f"run {rid}" in view._text
    weights = torch.load(io.BytesIO(view._weights_file().read()), weights_only=True)
    want = layer_state_dict(model.state_dict(), design)
    assert sorted(weights) == sorted(want) and all(torch.equal(weights[k], want[k]) for k in want)
    ns: dict = {}
    exec(compile(view._code_file().read().decode(), "layer.py", "exec"), ns)
    exported = ns["Layer"]()
    exported.load_state_dict(weights)
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), layer(x), rtol=1e-4, atol=1e-5)
    view.weights.value = NO_WEIGHTS
    assert not view.download_weights.visible


def test_export_view_explains_an_invalid_design(tmp_path):
    s = StudioState(home=str(tmp_path))
    s.generate("mpo", 64, 32, 4)
    view = ExportView(s, background=False)
    s.set_dim("i0", 3)  # the legs no longer multiply to in_features: the draft has a problem
    if s.problems:  # the edit is refused or accepted as a draft with problems: either way, export stays valid
        assert "last valid design" in view.info.object
    assert "torch.einsum" in view._text and not view.download.disabled


def test_numbers_agree_and_do_not_flip_when_a_run_starts(state):
    """The form, the run table and the export all count core params (the design's tensors, no bias), whatever the
    run's summary says once it runs."""
    view = TrainView(state)
    store = RunStore(view.root)
    rid = _run(store, state.valid_design, status="queued")
    view.poll()
    params = f"{state.valid_design.params:,}"
    assert f"{params} core params" in view.plan.object
    assert view.table.value.iloc[0]["params"] == params
    store.update(rid, summary={"layer_params": state.valid_design.params + 32, "layer_compression": 1.0})
    store.set_status(rid, "running")
    view.poll()
    assert view.table.value.iloc[0]["params"] == params
    assert ExportView(state, background=False).info.object.count(f"{params} core params") == 1


def test_curve_axes_follow_the_ticked_runs(state):
    view = TrainView(state)
    store = RunStore(view.root)
    a = _run(store, state.valid_design, status="completed")
    store.log_metrics(a, _rows(10, 3))  # steps 10..30
    b = _run(store, state.valid_design, status="completed")
    store.log_metrics(b, _rows(100, 5))  # steps 100..140
    view.poll()
    view.table.selection = [list(view.table.value["id"]).index(a)]
    assert view.loss_fig.x_range.end == pytest.approx(30 * 1.02)
    view.table.selection = [0, 1]
    assert view.loss_fig.x_range.end == pytest.approx(140 * 1.02) == view.acc_fig.x_range.end
    losses = view.curves[a].values("loss") + view.curves[b].values("loss")
    assert view.loss_fig.y_range.start <= min(losses) and view.loss_fig.y_range.end >= max(losses)
    assert 0 <= view.acc_fig.y_range.start and view.acc_fig.y_range.end <= 1


def test_a_double_click_on_launch_starts_one_run(state, monkeypatch):
    monkeypatch.setattr("engine.train.launcher.start_process", lambda rid, store, resume=False: None)
    view = TrainView(state)
    view.launch_button.clicks += 1
    view.launch_button.clicks += 1
    assert len(RunStore(view.root).list_runs()) == 1 and not view.launch_button.disabled


def test_form_fields_refuse_with_a_reason(state):
    view = TrainView(state)
    for field, typed, reason in ((view.epochs, "0", ">= 1"), (view.batch_size, "-3", ">= 1"),
                                 (view.lr, "abc", "must be a number"), (view.lr, "0", "> 0")):
        before = field.value
        field.input.value = typed
        assert field.value == before and reason in field.note.object.replace("&gt;", ">")
    view.epochs.input.value = "3"
    assert view.config().epochs == 3 and view.epochs.note.object == ""


def test_the_table_opened_after_a_run_changed_shows_the_run_as_it_is(state):
    """The run table polls before its tab is first opened (a page loaded, or reloaded, while a run is active): the
    view built when the tab opens shows the run's present status, not the one of the first poll."""
    from bokeh.document import Document

    view = TrainView(state)
    store = RunStore(view.root)
    rid = _run(store, state.valid_design, status="running")
    view.poll()  # the session starts: the table holds the running run, nothing is shown yet
    store.update(rid, step=100)
    store.set_status(rid, "completed")
    view.poll()
    assert "completed" in view.table.value.iloc[0]["status"]
    model = view.table.get_root(Document())  # the tab opens
    (status,) = model.source.data["status"]
    assert "completed" in status and "100%" in model.source.data["progress"][0]
    store.log_metrics(rid, _rows(10, 1))
    view.poll()  # and a view that exists gets the changes as they come
    assert "completed" in model.source.data["status"][0]


def test_the_export_carries_the_live_costs_memory_budget(tmp_path):
    """The Live cost card's memory budget did not reach the Export tab: the module shown and downloaded was the
    unbudgeted one. Now the torch module and the snippet are planned within it (the CLI line says so too), the design
    JSON is not, and a budget nothing fits shows the engine's reason instead of code."""
    from engine.nn.export import to_snippet

    s = StudioState(home=str(tmp_path), autosave=False, refine_s=0)
    s.generate("mera", 1024, 1024, 2, activation="gelu")
    view = ExportView(s, background=False)
    view.active = True
    assert "BUDGET_PLANS" not in view._text
    s.memory_budget = 10 << 20
    assert view._text == to_torch_source(s.valid_design, memory_budget=10 << 20)
    assert "SlicedGeneration.apply" in view._text and "--memory-budget 10485760" in view.info.object
    view.format.value = "snippet"
    assert view._text == to_snippet(s.valid_design, f"{file_stem(s.valid_design)}.json", None, 10 << 20)
    view.format.value = "json"
    assert view._code_file().read().decode() == s.valid_design.to_json() + "\n"
    view.format.value = "torch"
    s.memory_budget = 1 << 10  # nothing trains within 1 KiB: the reason, no code
    assert "within 1 KiB" in view.info.object and view.download.disabled

def test_the_export_shows_the_budget_its_code_was_planned_with(tmp_path, monkeypatch):
    """The code is generated in a worker thread and shown later on the session's thread: a budget changed in
    between made the shown command line (`--memory-budget`) name the new budget beside code planned with the old
    one. The command line now names the budget the code was planned with."""
    import studio.export_view as ev

    s = StudioState(home=str(tmp_path), autosave=False, refine_s=0)
    s.generate("mera", 1024, 1024, 2, activation="gelu")
    view = ExportView(s, background=False)
    view.active = True
    planned = []
    real = ev.export_source

    def export_then_change_the_budget(design, fmt, **kw):  # the user types a new budget while the worker runs
        planned.append(kw.get("memory_budget"))
        text = real(design, fmt, **kw)
        view.active = False  # (so the change only marks the export out of date instead of generating at once)
        s.memory_budget = 20 << 20
        return text

    monkeypatch.setattr(ev, "export_source", export_then_change_the_budget)
    s.memory_budget = 10 << 20
    assert planned[-1] == 10 << 20 and view._text == real(s.valid_design, "torch", memory_budget=10 << 20)
    assert "--memory-budget 10485760" in view.info.object and "20971520" not in view.info.object



def test_a_network_run_shows_its_tn_layers_not_dense(state):
    """A run of a whole network (Network tab or `tnstudio network train`) has no single design: its row names the
    network's TN layers with their cores counted on the built model, not "dense" with blank counts."""
    from engine.network.build import build_network
    from engine.network.format import new_network
    from engine.train.networks import network_config

    spec = new_network("mlp", [1, 40], 10, name="mlp on mnist1d").with_rules(["linear:ttn:4:min=3000"])
    model = build_network(spec)
    cores = sum(p.numel() for n, p in model.named_parameters() if ".cores." in n)
    tn = [m for m in model.modules() if hasattr(m, "design")]
    weights = sum(m.in_features * m.out_features for m in tn)
    view = TrainView(state)
    store = RunStore(view.root)
    config = network_config(spec, dataset="mnist1d").to_dict()
    rid = _run(store, None, **{**config, "dataset": "mnist1d"})
    base = _run(store, None, **{**config, "dataset": "mnist1d", "baseline": True})
    dense = _run(store, None, **network_config(new_network("mlp", [1, 40], 10), dataset="mnist1d").to_dict())
    view.poll()
    rows = {r["id"]: r for r in view.table.value.to_dict("records")}
    assert len(tn) == 2 and rows[rid]["design"] == "network · 2 TN layers"
    assert rows[rid]["params"] == f"{cores:,}" and rows[rid]["compression"] == ratio(weights / cores)
    assert rows[base]["design"] == "network · 2 TN layers (dense)" and rows[base]["params"] == f"{weights:,}"
    assert rows[dense]["design"] == "network" and rows[dense]["params"] == "" == rows[dense]["compression"]
