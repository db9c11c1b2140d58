"""The Train tab's New-run form is autosaved like the Design tab's draft (the tab's own file, and the newest of any
tab for a new tab) and restored value by value: only what the form itself would take comes back."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.state import StudioState
from studio.train_view import TRAIN_FORM, TrainView

EDITED = {"what": "network", "dataset": "mnist1d", "model": "cnn", "hidden": "128,64", "layer": "1", "epochs": 7,
          "batch_size": 32, "lr": 0.01, "device": "cpu", "baseline": True, "compiled": True}


def _tab(home: Path, draft_id: str = "", autosave: bool = True) -> tuple[StudioState, TrainView]:
    state = StudioState(home=str(home), refine_s=0, autosave=autosave, draft_id=draft_id)
    return state, TrainView(state)


def _form(view: TrainView) -> dict:
    return {name: getattr(view, name).value for name in TRAIN_FORM}


def test_a_reload_restores_the_new_run_form(tmp_path):
    """The form was lost on a reload (a long hidden-size list, a tuned learning rate): it comes back for the same
    tab, and a new tab starts from the newest form of any tab; with autosave off nothing is read or written."""
    state, view = _tab(tmp_path, "0123456789ab")
    defaults = _form(view)
    assert all(defaults[k] != v for k, v in EDITED.items())  # every field is really changed below
    for name, value in EDITED.items():  # as a user would: each widget in turn (the layer after the hidden sizes)
        getattr(view, name).value = value
    assert _form(view) == EDITED
    state.close()
    assert (tmp_path / "drafts" / "train" / "0123456789ab.json").is_file()
    for draft_id in ("0123456789ab", "fedcba987654"):
        again_state, again = _tab(tmp_path, draft_id)
        assert _form(again) == EDITED
        assert not again.feedback.object  # no note: the file was read whole
        again_state.close()
    off_state, off = _tab(tmp_path / "off", autosave=False)
    assert _form(off) == defaults
    off.epochs.value = 9
    assert not (tmp_path / "off" / "train_draft.json").exists()
    off_state.close()


def test_a_damaged_train_form_is_set_aside_and_the_tab_opens(tmp_path):
    (tmp_path / "train_draft.json").write_bytes(b"{not json")
    state, view = _tab(tmp_path)
    assert "could not be restored" in view.feedback.object and "not valid JSON" in view.feedback.object
    assert (tmp_path / "train_draft.damaged.json").read_bytes() == b"{not json"
    view.epochs.value = 3  # the next autosave writes a fresh file beside the damaged one, which stays
    assert json.loads((tmp_path / "train_draft.json").read_text())["train"]["epochs"] == 3
    assert (tmp_path / "train_draft.damaged.json").read_bytes() == b"{not json"
    state.close()


def test_an_autosaved_train_form_takes_only_what_the_form_takes(tmp_path):
    """Fuzz: any JSON as the form's values. Each value the form would take (an offered option, a whole number in
    range, a learning rate > 0, a tick) is restored, every other keeps its default; the tab always opens."""
    state, fresh = _tab(tmp_path / "defaults", autosave=False)
    defaults = _form(fresh)
    state.close()
    scalars = (st.none() | st.booleans() | st.integers(-10, 2 ** 40) | st.floats(allow_nan=False)
               | st.text(max_size=6) | st.sampled_from(["mnist1d", "cnn", "cuda", "network", "64,32", "2", "1e-2"]))
    values = scalars | st.lists(scalars, max_size=2) | st.text(min_size=1001, max_size=1001)
    forms = st.dictionaries(st.sampled_from(list(TRAIN_FORM) + ["x"]), values, max_size=8)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(form=forms)
    def check(form):
        home = Path(tempfile.mkdtemp(dir=tmp_path))
        (home / "train_draft.json").write_text(json.dumps({"train": form}))
        state, view = _tab(home)
        try:
            for name in TRAIN_FORM:
                got = getattr(view, name).value
                assert got == defaults[name] or (name in form and got == form[name]), (name, got, form.get(name))
            assert isinstance(view.epochs.value, int) and view.epochs.value >= 1 and view.lr.value > 0
            for name in ("what", "dataset", "model", "layer", "device"):
                w = getattr(view, name)
                opts = w.options.values() if isinstance(w.options, dict) else w.options
                assert w.value in opts, (name, w.value)
        finally:
            state.close()

    check()


def test_a_failing_autosave_is_said_and_the_form_works_on(tmp_path, monkeypatch):
    """A full disk (or a read-only home): the form keeps every value typed, says it was not autosaved, and the last
    file written stays whole."""
    import errno

    import studio.drafts as drafts

    state, view = _tab(tmp_path)
    view.epochs.value = 3
    kept = (tmp_path / "train_draft.json").read_bytes()

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(drafts, "atomic_write_text", full)
    view.epochs.value, view.lr.value = 9, 0.05
    assert (view.epochs.value, view.lr.value) == (9, 0.05)
    assert "not autosaved (No space left on device)" in view.feedback.object
    assert (tmp_path / "train_draft.json").read_bytes() == kept
    assert view.config().epochs == 9  # what Launch would train
    state.close()
