"""StudioState: strict field edits, drafts while drawing, undo/redo, live cost and the design library."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from engine.contract.cost import cost_report
from engine.design.model import Design
from engine.design.templates import make_template
from engine.design import library
from studio.fmt import nbytes, ratio, si
from engine.design.edit import merge_designs, with_bond
from studio.state import StudioState


def independent_params(design_dict: dict) -> int:
    """Parameter count straight from the JSON: product of each non-delta tensor's index dims."""
    dims = {k: v["dim"] for k, v in design_dict["indices"].items()}
    return sum(int(np.prod([dims[i] for i in t["indices"]])) for t in design_dict["tensors"] if t["kind"] != "delta")


@pytest.fixture
def state(tmp_path):
    return StudioState(make_template("mera", 256, 256, 4), home=str(tmp_path))


def test_initial_report_matches_independent_count(state):
    assert state.problems == []
    assert state.report.params == independent_params(state.design.to_dict())
    assert state.report.dense_params == 256 * 256
    assert state.valid_design is not None and state.sweep["current"] == 4


def test_bond_dim_edit_updates_cost(state):
    assert state.set_dim("s0", 7)
    expect = independent_params(state.design.to_dict())
    assert state.design.indices["s0"].dim == 7
    assert state.report.params == expect
    # closed form for the changed leaf L0 (8, 8, s0) and its parent W0_0 (s0, d0_1, u0_0)
    base = independent_params(make_template("mera", 256, 256, 4).to_dict())
    assert expect - base == 8 * 8 * (7 - 4) + 4 * 4 * (7 - 4)


def test_invalid_field_edits_are_refused_with_message(state):
    before = state.to_json()
    steps = state.history_labels
    assert not state.set_dim("i0", 16)  # 16 x 8 x 4 != 256
    assert "multiply to 512" in state.field_errors["dim:i0"]
    assert not state.set_dim("s0", "abc")
    assert "whole number" in state.field_errors["dim:s0"]
    assert not state.set_dim("s0", 0)
    assert "dim must be an integer >= 1" in state.field_errors["dim:s0"]
    assert state.to_json() == before and state.history_labels == steps
    assert state.set_dim("s0", 5) and "dim:s0" not in state.field_errors


def test_drawing_keeps_a_draft_and_numbers_stay_at_last_valid(state):
    valid_params = state.report.params
    tid = state.add_tensor("core")
    assert any("has no indices" in p for p in state.problems)
    assert state.report.params == valid_params  # numbers stay at the last valid design
    assert state.design.tensor(tid)  # nothing lost
    bond = state.connect(tid, "top", dim=3)
    assert state.problems == []
    assert state.design.indices[bond].dim == 3
    assert state.report.params == independent_params(state.design.to_dict())
    assert state.report.params == valid_params - 16 + 16 * 3 + 3  # top (4,4) -> (4,4,3); new vector (3,)


def test_undo_redo_restore_exact_designs(state):
    j0 = state.to_json()
    state.set_dim("s0", 6)
    j1 = state.to_json()
    state.add_tensor()
    assert state.undo() and state.to_json() == j1
    assert state.undo() and state.to_json() == j0
    assert not state.can_undo
    assert state.redo() and state.to_json() == j1
    assert state.report.params == independent_params(json.loads(j1))


def test_undo_and_redo_of_a_whole_design_refit_the_view_and_edits_do_not(state):
    """Undoing a Generate brings back another drawing: the canvas must fit it (layout_version), as after Generate
    itself; undoing an edit of the same drawing keeps the user's view."""
    state.set_dim("s0", 6)
    state.generate("tucker", 128, 32, 3)
    fits = state.layout_version
    assert state.undo() and state.layout_version == fits + 1 and state.design.indices["s0"].dim == 6
    assert state.undo() and state.layout_version == fits + 1  # the bond edit: same drawing, same view
    assert state.redo() and state.layout_version == fits + 1
    assert state.redo() and state.layout_version == fits + 2 and state.design.name.startswith("tucker")
    state.set_dim(next(k for k, v in state.design.indices.items() if v.role == "bond"), 2)
    assert state.undo() and state.layout_version == fits + 2


def test_a_selection_cancels_only_the_inspector_fields_questions(state):
    """Selecting on the canvas (or a late selection event from the page) cancels a question of a field the
    inspector stops showing, never one of the gallery's: a Generate waiting for confirmation stays answerable (a
    late selection event cancelled it in a loaded browser run, and its Apply anyway vanished)."""
    assert not state.generate("mpo", 2 ** 15, 2 ** 14, 2)  # W of 2^29 entries: asks first
    assert state.pending["field"] == "template"
    state.select(["L0"], [])
    assert state.pending["field"] == "template" and state.confirm()
    bond = next(k for k, v in state.design.indices.items() if v.role == "bond")
    state.select([], [bond])
    assert not state.set_dim(bond, "abc") and f"dim:{bond}" in state.field_errors
    state.select([], [])
    assert f"dim:{bond}" not in state.field_errors
    state.select([], [bond])
    assert state.set_dim(bond, 3) and not state.set_dim(bond, 2 ** 20) and state.pending["field"] == f"dim:{bond}"
    state.select([], [])  # the inspector no longer shows that bond: its question goes
    assert state.pending == {}


def test_delete_tensor_removes_its_bonds_and_undo_brings_them_back(state):
    j0 = state.to_json()
    state.delete(tensors=["D0_0"])
    d = state.design
    assert "D0_0" not in [t.id for t in d.tensors]
    for bond in ("s1", "s2", "d0_1", "d0_2"):
        assert bond not in d.indices and all(bond not in t.indices for t in d.tensors)
    assert any("not connected" in p for p in state.problems)
    state.undo()
    assert state.to_json() == j0 and state.problems == []


def test_open_leg_then_fit_layer(state):
    leg = state.add_open_leg("L2", "in", 2)
    assert state.design.indices[leg].axis == 3
    assert any("multiply to 512" in p for p in state.problems)
    assert state.fit_features()
    assert state.design.in_features == 512 and state.problems == []
    assert state.report.dense_params == 512 * 256


def test_set_factors(state):
    assert state.set_factors("in", [4, 16, 4])
    assert [state.design.indices[k].dim for k in state.design.in_legs] == [4, 16, 4]
    assert not state.set_factors("out", [16, 16])
    assert "3 out legs" in state.field_errors["factors:out"]
    assert state.set_factors("out", [8, 8, 8]) and state.design.out_features == 512


def test_activation_and_schedule_errors(state):
    assert state.set_tensor("W0_0", activation="relu")
    assert state.report.linear is False and state.report.schedule == "materialise"
    assert not state.set_tensor("W0_0", activation="swishy")
    assert "unknown activation" in state.field_errors["activation:W0_0"]
    # the top tensor is linear, so x can still stream through the activated fragments
    state.schedule = "stream"
    assert "schedule" not in state.field_errors and state.report.schedule == "stream"
    state.schedule = "auto"
    assert state.set_tensor("top", activation="relu")  # now W itself is activated: only materialise is valid
    params = state.report.params
    state.schedule = "stream"
    assert "materialised" in state.field_errors["schedule"]
    assert state.report.params == params  # the last report stays
    state.schedule = "auto"
    assert "schedule" not in state.field_errors


def test_batch_and_dtype_recompute(state):
    r32 = state.report
    state.dtype = "float64"
    assert state.report.param_bytes == 2 * r32.param_bytes
    state.batch = 128
    ref = cost_report(state.design, batch=128, dtype="float64")
    assert state.report.forward_flops == ref.forward_flops
    # the apply phase is linear in the batch
    half = cost_report(state.design, batch=64, dtype="float64", schedule=state.report.schedule)
    assert state.report.forward_flops - state.report.generate_flops >= \
        2 * (half.forward_flops - half.generate_flops) * 0.99


def test_sweep_matches_closed_form_for_mpo(tmp_path):
    d = make_template("mpo", 64, 64, 4, in_factors=[4, 4, 4], out_factors=[4, 4, 4])
    s = StudioState(d, home=str(tmp_path))
    for chi, p in zip(s.sweep["chi"], s.sweep["params"]):
        assert p == 16 * chi + 16 * chi * chi + 16 * chi  # (i,o,r) + (r,i,o,r) + (r,i,o)
    assert s.sweep["chi"] == sorted(s.sweep["chi"]) and len(s.sweep["chi"]) >= 5
    assert with_bond(d, 9).indices["r0"].dim == 9 and with_bond(d, 9).indices["i0"].dim == 4


def test_generate_replace_and_add(state):
    v = state.layout_version
    assert state.generate("cp", 64, 32, 5)
    assert state.design.indices["R"].hyperedge and state.layout_version == v + 1
    n = len(state.design.tensors)
    assert state.generate("mpo", 64, 32, 3, mode="add")
    assert len(state.design.tensors) == n + len(make_template("mpo", 64, 32, 3).tensors)
    assert len({t.id for t in state.design.tensors}) == len(state.design.tensors)
    assert any("axes" in p or "multiply" in p for p in state.problems)
    assert not state.generate("cp", 64, 32, 4, activation="relu")
    assert "activations apply to" in state.field_errors["template"]


def test_merge_designs_renames_clashes():
    a, b = make_template("mpo", 16, 16, 2), make_template("mpo", 16, 16, 3)
    m = merge_designs(a, b)
    assert len(m.tensors) == len(a.tensors) + len(b.tensors)
    assert len(m.in_legs) == len(a.in_legs) + len(b.in_legs)
    assert sorted(m.indices[k].axis for k in m.in_legs) == list(range(len(m.in_legs)))


def test_load_json_refuses_bad_files(state):
    before = state.to_json()
    assert not state.load_json("{not json")
    assert "not valid JSON" in state.field_errors["open"]
    bad = json.loads(before)
    bad["indices"]["s0"]["dim"] = 0
    assert not state.load_json(json.dumps(bad), source="bad.json")
    assert "bad.json" in state.field_errors["open"] and "dim must be" in state.field_errors["open"]
    assert not state.load_json(b"\xff\xfe")
    assert state.to_json() == before
    tt = make_template("ttn", 64, 64, 3)
    assert state.load_json(tt.to_json()) and "open" not in state.field_errors
    assert state.design.fingerprint() == tt.fingerprint()


def test_library_round_trip(state, tmp_path):
    path = library.save_to_library(state.design, "my mera!", home=state.home)
    assert path.parent == tmp_path / "designs" and path.name == "my_mera.json"
    assert library.library(state.home) == {"my_mera": path}
    d = library.open_design(path)
    assert d.name == "my mera!" and d.fingerprint() == state.design.fingerprint()
    (tmp_path / "designs" / "broken.json").write_text("{}")
    with pytest.raises(Exception) as e:
        library.open_design(tmp_path / "designs" / "broken.json")
    assert "not a TN Studio design" in str(e.value)
    with pytest.raises(ValueError):
        library.safe_name("  ...  ")
    for name, p in library.presets().items():  # whatever presets the tree ships must load
        assert isinstance(library.open_design(p), Design), name


def test_home_defaults_to_tnstudio_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path / "h"))
    s = StudioState(make_template("mpo", 16, 16, 2))
    assert s.home == str(tmp_path / "h")
    assert library.designs_dir() == tmp_path / "h" / "designs"


def test_number_formatting():
    assert si(912) == "912" and si(1234) == "1.23k" and si(3.4e9, "FLOP") == "3.4 GFLOP"
    assert nbytes(1536) == "1.5 KiB" and nbytes(3 * 2 ** 20) == "3 MiB" and nbytes(10) == "10 B"
    assert ratio(71.9) == "71.9x" and ratio(12345) == "12,345x"
    assert math.isclose(float(si(2.5e6)[:-1]), 2.5)


def test_new_tensor_lands_inside_the_drawing_without_overlap(state):
    old = [t.position for t in state.design.tensors]
    tid = state.add_tensor("isometry")
    x, y = state.design.tensor(tid).position
    xs, ys = [p[0] for p in old], [p[1] for p in old]
    assert min(xs) - 200 <= x <= max(xs) + 200 and min(ys) - 200 <= y <= max(ys) + 200
    assert all(abs(x - px) > 120 or abs(y - py) > 72 for px, py in old)
    assert state.design.tensor(tid).kind == "isometry"


def test_the_draft_is_autosaved_and_restored(tmp_path):
    s = StudioState(home=str(tmp_path))
    s.generate("mpo", 64, 32, 3)
    s.add_tensor()  # an unfinished drawing is kept too
    again = StudioState(home=str(tmp_path))  # a reload, or a restarted studio
    assert again.design.to_dict() == s.design.to_dict() and again.problems == s.problems
    assert "restored" in again.message
    assert StudioState(make_template("ttn", 16, 16, 2), home=str(tmp_path)).design.name.startswith("ttn")
    (tmp_path / "draft.json").write_text("{broken")
    assert StudioState(home=str(tmp_path)).design.name.startswith("mera")  # a broken draft is ignored
    off = StudioState(home=str(tmp_path / "other"), autosave=False)
    off.generate("cp", 16, 16, 2)
    assert not (tmp_path / "other" / "draft.json").exists()


def test_each_browser_tab_keeps_its_own_draft(tmp_path, monkeypatch):
    """Every tab of a served studio autosaved to one draft.json: a tab reloaded after another tab had edited came
    back with the other tab's design, its own last edits lost. A tab's draft is now kept under its id (the tab's
    URL carries it) and restored first; a new tab starts from the newest draft of any tab, as before."""
    import studio.drafts as drafts_mod

    ttn, cp = make_template("ttn", 256, 256, 3), make_template("cp", 512, 256, 5)
    a = StudioState(home=str(tmp_path), draft_id="a" * 12, refine_s=0)
    a.generate("ttn", 256, 256, 3)
    b = StudioState(home=str(tmp_path), draft_id="b" * 12, refine_s=0)  # a new tab: the newest draft (a's)
    assert b.design.params == ttn.params and "restored" in b.message
    b.generate("cp", 512, 256, 5)
    assert StudioState(home=str(tmp_path), draft_id="a" * 12).design.params == ttn.params  # a reloaded: its own
    assert StudioState(home=str(tmp_path), draft_id="c" * 12).design.params == cp.params  # a new tab: the newest
    assert StudioState(home=str(tmp_path)).design.params == cp.params  # no tab (a script): the newest
    assert sorted(p.name for p in (tmp_path / "drafts").iterdir()) == ["a" * 12 + ".json", "b" * 12 + ".json"]
    (tmp_path / "drafts" / ("a" * 12 + ".json")).write_text("{broken")  # damaged: set aside, said, not fatal
    again = StudioState(home=str(tmp_path), draft_id="a" * 12)
    assert (tmp_path / "drafts" / ("a" * 12 + ".damaged.json")).exists() and "could not be restored" in again.message
    for bad in ("../../etc/passwd", "A" * 12, "a" * 13):
        with pytest.raises(ValueError):
            StudioState(home=str(tmp_path), draft_id=bad)
    monkeypatch.setattr(drafts_mod, "KEEP_TAB_DRAFTS", 3)  # a tab's first save keeps only the newest drafts
    for k in range(5):
        StudioState(home=str(tmp_path), draft_id=f"{k:012x}", refine_s=0).set_name(f"tab {k}")
    kept = sorted(p.stem for p in (tmp_path / "drafts").glob("*.json") if "damaged" not in p.name)
    assert kept == [f"{k:012x}" for k in (2, 3, 4)], kept


def test_a_draft_that_cannot_be_autosaved_says_so_in_the_status_line(tmp_path, monkeypatch):
    """A full disk (or a read-only home) kept the last draft whole but told only the server log."""
    import errno

    import studio.drafts as drafts_mod

    s = StudioState(home=str(tmp_path))
    s.generate("mpo", 64, 32, 3)
    saved = (tmp_path / "draft.json").read_bytes()

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(drafts_mod, "atomic_write_text", full)
    s.add_tensor()
    assert s.message.startswith("add tensor T0 · not autosaved (No space left on device)")
    assert (tmp_path / "draft.json").read_bytes() == saved


def test_sessions_autosaving_at_once_keep_a_whole_draft(tmp_path, caplog):
    """`make serve` gives every browser session its own state in one process, all autosaving to one home: their
    writes must not share a temporary file (one session's rename moved the file another was writing, whose own
    rename then failed and whose draft could be cut short)."""
    import threading

    states = [StudioState(make_template(kind, 64, 64, 2), home=str(tmp_path)) for kind in ("mpo", "ttn")]
    names = {st.design.name for st in states}
    start = threading.Barrier(len(states))

    def save(st: StudioState) -> None:
        start.wait()
        for _ in range(300):
            st._save_draft()

    with caplog.at_level(logging.WARNING):
        threads = [threading.Thread(target=save, args=(st,)) for st in states]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r.getMessage() for r in caplog.records if "autosave" in r.getMessage()] == []
    assert json.loads((tmp_path / "draft.json").read_text())["design"]["name"] in names
    assert not list(tmp_path.glob("*.tmp"))
    for st in states:
        st.close()


def test_new_design_starts_empty_and_forgets_the_old_numbers(state):
    assert state.new_design()
    assert state.design.tensors == [] and state.design.in_features == 256 and state.report is None
    assert state.valid_design is None and state.problems
    tid = state.add_tensor()
    state.add_open_leg(tid, "in", 16)
    state.add_open_leg(tid, "out", 4)
    assert state.fit_features() and state.problems == [] and state.report.params == 64
    assert state.undo() and state.undo() and state.undo() and state.undo()
    assert state.design.tensors == []
    assert state.undo() and state.design.name.startswith("mera") and state.report.params > 0


def test_refusals_are_cleared_by_the_next_edit_and_by_selecting(state):
    assert not state.set_dim("s0", 0) and "dim:s0" in state.field_errors and state.message.startswith("refused")
    assert state.set_dim("s1", 3)
    assert state.field_errors == {} and not state.message.startswith("refused")
    assert not state.load_json("{", source="bad3.json")
    state.select(["L0"], [])
    assert state.field_errors == {} and state.message == ""


def test_selecting_what_the_design_lacks_keeps_only_what_it_has(state):
    """A canvas event can still name the previous design's nodes after Generate replaced it."""
    tid, ix = state.design.tensors[0].id, next(iter(state.design.indices))
    state.select([tid, "gone", tid], [ix, "no_such_bond"])
    assert state.selection == {"tensors": [tid], "indices": [ix]}
    assert state.generate("tensor_ring", 784, 32, 4)
    state.select([tid + "_old"], ["s0_old"])
    assert state.selection == {"tensors": [], "indices": []}
    before = state.design.to_dict()
    state.move(tid + "_old", 10, 20)  # a late drag event from the previous canvas
    state.move("L:no_such_leg", 10, 20)
    state.move(state.design.tensors[0].id, float("nan"), 0)
    state.move(state.design.tensors[0].id, 0, 1.35e9)  # finite, but beyond what the format keeps (found by fuzzing)
    assert state.design.to_dict() == before
    state.move(state.design.tensors[0].id, 10, 20)
    assert state.design.tensors[0].position == (10.0, 20.0)


def test_much_larger_layers_wait_for_confirmation(state):
    from studio.state import CONFIRM_PARAMS, oversize

    assert oversize(state.design, state.design) is None
    assert not state.set_factors("in", [4096, 4096, 4096])  # W of 2^36 x 2^8 entries
    assert state.pending["field"] == "factors:in" and "W becomes" in state.pending["message"]
    state.cancel()
    assert state.design.in_features == 256
    assert not state.generate("mpo", 4096, 4096, 200)
    assert "core params" in state.pending["message"]
    assert state.confirm() and state.report.params > CONFIRM_PARAMS
    assert state.generate("mpo", 4096, 4096, 210)  # already past the line: no second question
    tiny = StudioState(make_template("mpo", 16, 16, 2), home=state.home)
    assert tiny.generate("mpo", 16, 16, 16)  # larger than dense, but a toy: no question
    assert tiny.report.params > tiny.report.dense_params


def test_uploads_have_a_size_limit(state):
    from studio.state import MAX_UPLOAD_BYTES

    big = state.design.to_dict()
    big["name"] = "x"
    text = json.dumps(big) + " " * MAX_UPLOAD_BYTES
    assert not state.load_json(text, source="big.json")
    assert "big.json" in state.field_errors["open"] and "2 MiB" in state.field_errors["open"]


def test_exit_during_a_background_search_is_clean(tmp_path):
    """The interpreter exiting while the refiner thread is inside cotengra's Rust backend used to abort the process
    ("FATAL: exception not rethrown", exit 134) after all work had succeeded; the refiners now finish first."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import time\n"
        "from engine.design.templates import make_template\n"
        "from studio.state import StudioState\n"
        f"s = StudioState(make_template('mera', 2 ** 10, 2 ** 10, 3, in_factors=[2] * 10, out_factors=[2] * 10),"
        f" home={str(tmp_path)!r}, refine_s=1.0, autosave=False)\n"
        "s.set_dim('s0', 4)\n"
        "time.sleep(0.6)\n"  # the search has started (quiet time 0.3 s)
        "assert s.refiner.busy\n"
    )
    root = Path(__file__).resolve().parents[1]
    for _ in range(3):
        p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "FATAL" not in p.stderr, (p.returncode, p.stderr[-2000:])
