"""The Search tab without a browser: the form builds the search, Launch starts real workers, the scatter and the
front come from the real study, a click opens the design on the canvas or the run on the Train tab, and Bokeh
models change only on the session's thread."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import panel as pn
import pytest

from engine.search import Budget, LayerSpace, SearchSpec, run_search
from engine.search.space import Candidate
from engine.train.store import RunStore
from studio.app import DesignTab, StudioApp
from studio.search_view import SearchView, accuracy_span, log_span
from studio.state import StudioState
from studio.train_view import TrainView

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def state(_tnstudio_home):
    return StudioState(home=str(_tnstudio_home))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A small real search (in this process), in a home of its own: (home, report)."""
    home = tmp_path_factory.mktemp("search_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TNSTUDIO_HOME", str(home))
    try:
        space = LayerSpace(256, 256, kinds=("ttn", "mpo", "tucker"), legs=(4, 5),
                           bond_ranges=(("ttn", (2, 3)), ("mpo", (2, 3)), ("tucker", (1, 3))))
        spec = SearchSpec(name="shown", space=space, budget=Budget(max_params=1500), trials=5, epochs=2,
                          startup_trials=3)
        rep = run_search(spec, workers=0)
    finally:
        mp.undo()
    return home, rep


def test_form_builds_the_search_and_says_what_is_wrong(state):
    view = SearchView(state)
    view.param.update(study_name="mine", kinds=["ttn", "mera"], legs=[4, 5], activations=["gelu"],
                      max_params=900, max_train_memory_mib=4.0, trials=7, epochs=3)
    spec = view.spec()
    assert spec.name == "mine" and spec.space.kinds == ("ttn", "mera") and spec.space.legs == (4, 5)
    assert spec.budget.max_params == 900 and spec.budget.max_train_memory == 4 * 2 ** 20 and spec.trials == 7
    assert "teacher" not in view.param.dataset.objects  # regression sets cannot be searched on accuracy
    view.param.update(kinds=[])
    assert view.launch() == [] and "at least one template kind" in view.error
    view.param.update(kinds=["ttn"], study_name="bad name")
    assert view.launch() == [] and "study name" in view.feedback.object
    assert "No search yet" in view.counts.object and view.open_design_button.disabled
    assert view.placeholder.visible and not view.plot.visible  # nothing trained: a placeholder, not empty axes
    assert view.figure.x_range.start > 0  # explicit ranges, valid on the log axis before any data


def test_the_storage_field_takes_a_database_url_and_never_creates_files(state, tmp_path, monkeypatch):
    """Typing a name into the storage field (the page polls the searches each second) created a journal file of that
    name in the server's working folder; a path is refused next to the field, and Launch says why."""
    monkeypatch.chdir(tmp_path)
    view = SearchView(state)
    view.param.update(study_name="s", kinds=["ttn"], legs=[5], activations=["none"], max_params=500)
    for typed in ("abc", "../../tmp/evil.journal", str(tmp_path / "j.journal")):
        view.storage = typed
        assert view._study_names() == [] and "database URL" in view.storage_note.object
        assert view.launch() == [] and "database URL" in view.error
    view.storage = "sqlite:///" + str(tmp_path / "s.db")  # a URL: taken (optuna's RDB storage)
    assert view.storage_note.object == "" and view._study_names() == []
    view.storage = ""
    assert view.storage_note.object == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]  # nothing but the database the URL named


def test_listing_a_journal_that_does_not_exist_creates_nothing(tmp_path):
    from engine.search.storage import list_studies

    assert list_studies(str(tmp_path / "typo.journal")) == [] and not (tmp_path / "typo.journal").exists()


def test_ranges_follow_the_data():
    assert log_span([]) == (1.0, 1e4)
    lo, hi = log_span([200, 5000])
    assert lo == pytest.approx(125) and hi == pytest.approx(8000)
    lo, hi = log_span([300])
    assert lo < 300 < hi and lo > 0
    assert accuracy_span([]) == (0.0, 1.0)
    lo, hi = accuracy_span([0.5, 0.9])
    assert 0.45 < lo < 0.5 and 0.9 < hi < 0.95
    assert accuracy_span([0.0, 1.0]) == (0.0, 1.0)


def test_scatter_front_and_click_to_open_design_and_run(searched):
    home, rep = searched
    state = StudioState(home=str(home))  # the studio of that home: its Train tab reads the search's runs
    view = SearchView(state)
    assert view.studies.options == ["shown"] and view.shown == "shown"  # the existing search is shown
    data = view.source.data
    trained = [t for t in rep.trials if t.val_accuracy is not None and t.duplicate_of is None]
    assert sorted(data["number"]) == sorted(t.number for t in trained)
    for k, n in enumerate(data["number"]):
        t = rep.trial(n)
        assert data["x"][k] == t.params and data["accuracy"][k] == pytest.approx(t.val_accuracy)
        assert data["kind"][k] == t.kind and data["front"][k] == t.on_front
    assert view.front_source.data["x"] == [t.params for t in rep.front]
    assert f"<b>{rep.counts['trained']}</b> of 5 trained" in view.counts.object
    assert "Pareto front" in view.front_table.object
    # a click on a front point picks its trial (TapTool -> selected indices -> on_change)
    pick = rep.front[-1]
    view.source.selected.indices = [list(data["number"]).index(pick.number)]
    assert view.selected_trial == pick.number and pick.label in view.detail.object
    assert not view.open_design_button.disabled and not view.open_run_button.disabled
    assert view.plot.visible and not view.placeholder.visible  # trained trials: the scatter, not the placeholder
    # explicit ranges around the points (a log axis with nothing to guess: no console warnings in the browser)
    assert 0 < view.figure.x_range.start < min(data["x"]) and view.figure.x_range.end > max(data["x"])
    assert 0 <= view.figure.y_range.start <= min(data["accuracy"]) and view.figure.y_range.end >= max(data["accuracy"])
    # open its design on the canvas, its run on the Train tab: the app wires the requests to its tabs
    app = StudioApp(state=state, tabs=[("Design", DesignTab), ("Train", TrainView), ("Search", SearchView)])
    try:
        wired = app.components["Search"]
        app.show("Search")
        wired.select(pick.number)
        assert wired.selected_trial == pick.number
        assert wired.open_design() and state.design.name == pick.label and app.tabs.active == 0
        assert state.design.params == Candidate.from_dict(pick.candidate).build().params
        app.show("Search")
        assert wired.request_run() == pick.run_id and app.tabs.active == 1
        assert pick.run_id in app.components["Train"].selected  # the Train tab plots that run's curves
        assert pick.run_id in {r["id"] for r in RunStore(home / "runs").list_runs()}
    finally:
        app.close()
    # the whole tab renders (Bokeh and Panel models) without a browser
    assert view.__panel__() is view.__panel__() and pn.panel(view).get_root() is not None


def test_background_reads_are_applied_on_the_session_thread(state, searched):
    home, rep = searched
    view = SearchView(state, home=home)
    view.refresh()
    view._apply(None)  # blank it, then let the poller bring it back
    assert view.source.data["number"] == []
    session = threading.get_ident()
    deadline = time.monotonic() + 30
    while not view.source.data["number"] and time.monotonic() < deadline:
        view.poll()  # what the periodic callback does on the session's thread
        time.sleep(0.05)
    assert len(view.source.data["number"]) == len([t for t in rep.trials if t.val_accuracy is not None
                                                  and t.duplicate_of is None])
    assert view.applied_on == session  # the reading thread handed the report over; it never touched Bokeh


def test_launch_runs_workers_and_stop(state):
    view = SearchView(state)
    view.param.update(study_name="live", kinds=["ttn"], legs=[5], activations=["none"], per_bond=False,
                      max_params=500, trials=2, epochs=1, workers=1)
    procs = view.launch()
    assert len(procs) == 1 and "Launched live" in view.feedback.object and view.shown == "live"
    assert procs[0].wait(timeout=120) == 0
    view.refresh()
    assert view.report.counts["trained"] >= 2 and view.report.done and len(view.source.data["number"]) >= 1
    assert view.stop() and "stop" in view.message
    assert view.studies.options == ["live"]


def test_random_forms_build_a_search_or_say_why_and_names_stay_in_the_search_folder(state, _tnstudio_home):
    """The form as an input surface (hypothesis): any name, sizes, kinds, legs, activations and budgets either
    describe a search whose spec mirrors the form, or are refused with a ValueError naming the problem; an accepted
    name's embedded storage lies inside ``<home>/search`` (no name reaches another folder)."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    view = SearchView(state)
    folder = (view.home / "search").resolve()
    outcomes: set[str] = set()
    names = st.one_of(st.sampled_from(["s1", "../x", "a/b", "..", ".hidden", "a..b", "x" * 101, "", " s ", "é",
                                       "a\nb", "con", "a;rm -rf"]), st.text(max_size=12))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(name=names, n_in=st.integers(1, 10 ** 7), n_out=st.integers(1, 10 ** 7),
           kinds=st.lists(st.sampled_from(view.param.kinds.objects), unique=True, max_size=3),
           legs=st.lists(st.sampled_from(view.param.legs.objects), unique=True, max_size=3),
           acts=st.lists(st.sampled_from(view.param.activations.objects), unique=True, max_size=2),
           max_params=st.one_of(st.none(), st.integers(1, 10 ** 12)),
           max_mem=st.one_of(st.none(), st.floats(0, 1e6)))
    @example(name="s1", n_in=256, n_out=256, kinds=["ttn"], legs=[4], acts=["gelu"], max_params=2000, max_mem=None)
    @example(name="../s1", n_in=256, n_out=256, kinds=["ttn"], legs=[4], acts=["gelu"], max_params=2000,
             max_mem=None)
    def run(name, n_in, n_out, kinds, legs, acts, max_params, max_mem):
        view.param.update(study_name=name, in_features=n_in, out_features=n_out, kinds=kinds, legs=legs,
                          activations=acts, max_params=max_params, max_train_memory_mib=max_mem)
        try:
            spec = view.spec()
        except ValueError as e:
            assert str(e) and "\n" not in str(e)
            outcomes.add("refused")
            return
        assert spec.name == name.strip() and spec.space.kinds == tuple(kinds)
        assert (spec.space.in_features, spec.space.out_features) == (n_in, n_out)
        assert spec.budget.max_params == max_params
        try:
            path = Path(view.url(spec.name)).resolve()
        except ValueError:
            return  # a name storage refuses (the launch says so)
        assert path.parent == folder, path
        outcomes.add("accepted")

    run()
    assert outcomes == {"refused", "accepted"}


def test_workers_that_fail_say_why_on_the_page(state, _tnstudio_home):
    """Workers that died at once (here: a damaged run store) left the page saying "Launched"; their cause is now the
    form's error, with the repair command the store's message gives."""
    runs = Path(state.home) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "runs.db").write_bytes(b"garbage " * 512)
    view = SearchView(state)
    view.param.update(study_name="broken", kinds=["ttn"], legs=[5], activations=["none"], per_bond=False,
                      max_params=500, trials=2, epochs=1, workers=1)
    procs = view.launch()
    assert len(procs) == 1 and procs[0].wait(timeout=120) == 2
    failed = view.check_workers()
    assert failed and "worker 0 failed (exit status 2)" in failed and "runs.db" in failed and "repair" in failed
    assert view.error == failed and "worker 0 failed (exit status 2)" in view.feedback.object
    assert view.check_workers() is None  # said once


# --------------------------------------------------------------------- the autosaved form
def test_a_search_being_defined_survives_a_reload_but_not_its_password(tmp_path):
    """A search defined on the tab but not launched was lost on a reload. The form is autosaved with the tab's draft
    id (its own file, and the newest of any tab for a new tab), value by value; the storage URL is not (it may hold
    a password)."""
    state = StudioState(home=str(tmp_path), refine_s=0, draft_id="0123456789ab")
    view = SearchView(state)
    view.param.update(study_name="wide", kinds=["mpo", "ttn"], legs=[2, 3], max_params=5000, epochs=3,
                      max_train_memory_mib=64.0, storage="postgresql://me:s3cret@db/x")
    state.close()
    for draft_id in ("0123456789ab", "fedcba987654"):
        again_state = StudioState(home=str(tmp_path), refine_s=0, draft_id=draft_id)
        again = SearchView(again_state)
        assert (again.study_name, again.kinds, again.legs, again.max_params, again.epochs,
                again.max_train_memory_mib, again.storage) == ("wide", ["mpo", "ttn"], [2, 3], 5000, 3, 64.0, "")
        again_state.close()
    kept = b"".join(p.read_bytes() for p in tmp_path.rglob("*.json"))
    assert b"s3cret" not in kept and b"wide" in kept


def test_an_autosaved_search_form_takes_only_what_the_form_takes(tmp_path):
    """Fuzz: any JSON as the form's values: each value the form accepts is restored, every other keeps its
    default; a file that is no form is set aside with the reason; the tab always opens."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    from studio.search_view import FORM_PARAMS

    defaults = SearchView(StudioState(home=str(tmp_path / "d"), autosave=False))
    scalars = st.none() | st.booleans() | st.integers(-10, 10 ** 6) | st.floats(allow_nan=False) | st.text(max_size=6)
    values = st.one_of(scalars, st.lists(scalars | st.sampled_from(["mpo", "ttn", "gelu", "none"]), max_size=3),
                       st.sampled_from(["mpo", "digits", "params", "median"]))
    forms = st.dictionaries(st.sampled_from(list(FORM_PARAMS) + ["storage", "x"]), values, max_size=6)

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(form=forms | scalars)
    def check(form):
        import json
        import tempfile
        from pathlib import Path

        home = Path(tempfile.mkdtemp(dir=tmp_path))
        (home / "search_draft.json").write_text(json.dumps({"search": form}))
        state = StudioState(home=str(home), refine_s=0)
        try:
            view = SearchView(state)
            if not isinstance(form, dict):
                assert "could not be restored" in view.error and (home / "search_draft.damaged.json").exists()
                return
            for k in FORM_PARAMS:
                got = getattr(view, k)
                assert got == getattr(defaults, k) or (k in form and got == form[k]), (k, got, form.get(k))
            assert view.storage == ""
        finally:
            state.close()

    check()


def test_an_infinite_budget_is_not_kept_but_the_rest_is(tmp_path):
    """JSON has no Infinity: a form whose FLOPs budget was inf would have been written as a file no reload can read
    (the whole form then set aside); the infinite value is left out instead."""
    state = StudioState(home=str(tmp_path), refine_s=0)
    view = SearchView(state)
    view.param.update(study_name="inf", max_flops=float("inf"))
    state.close()
    again_state = StudioState(home=str(tmp_path), refine_s=0)
    again = SearchView(again_state)
    assert again.study_name == "inf" and again.max_flops is None and again.error == ""
    again_state.close()
