"""Background path refinement in StudioState: the live report is instant, a thorough search runs in one worker
thread (newest design wins), and its result replaces the report only for the same design and only when better."""
from __future__ import annotations

import dataclasses

from engine.contract.cache import clear_cache
from engine.contract.cost import cost_report
from engine.contract.program import compile_program
from engine.design.templates import make_template
from studio.state import StudioState


def ttn(bond: int = 3):
    return make_template("ttn", 2 ** 8, 2 ** 8, bond, in_factors=[2] * 8, out_factors=[2] * 8)


def test_refinement_runs_in_background_and_serves_the_thorough_programs(tmp_path):
    clear_cache(paths=True)
    s = StudioState(ttn(), home=str(tmp_path), refine_s=0.6)
    live = s.report
    assert live is not None and s.refining  # the report is there while the search still runs
    assert s.wait_refined(timeout=60)
    d = s.valid_design
    for sched in ("materialise", "stream"):  # the worker compiled the thorough programs of this very design ...
        thorough = compile_program(d, s.batch, sched, "thorough")
        assert compile_program(d, s.batch, sched) is thorough  # ... which later fast requests are served
    ref = cost_report(d, batch=s.batch, dtype=s.dtype, schedule=s.schedule)
    assert s.report.forward_flops == ref.forward_flops <= live.forward_flops
    assert s.report.generate_flops == ref.generate_flops <= live.generate_flops


def test_newest_design_wins_and_stale_results_are_dropped(tmp_path):
    s = StudioState(ttn(), home=str(tmp_path), refine_s=0.3)
    first = s.valid_design
    for dim in (5, 6, 7):  # a burst of edits: one search at a time, the last design is refined last
        assert s.set_dim("s0", dim)
    assert s.wait_refined(timeout=60)
    assert s.valid_design.indices["s0"].dim == 7
    assert s.report.params == s.valid_design.params
    # a result for an older design never replaces the report, even a (fake) cheaper one
    shown = s.report
    better = dataclasses.replace(shown, forward_flops=1, generate_flops=1)
    s._apply_refinement(first, (s.batch, s.dtype, s.schedule), better)
    assert s.report is shown
    # nor one computed under other settings, nor a worse one for the current design
    s._apply_refinement(s.valid_design, (s.batch + 1, s.dtype, s.schedule), better)
    assert s.report is shown
    worse = dataclasses.replace(shown, forward_flops=shown.forward_flops + 1)
    s._apply_refinement(s.valid_design, (s.batch, s.dtype, s.schedule), worse)
    assert s.report is shown
    s._apply_refinement(s.valid_design, (s.batch, s.dtype, s.schedule), better)
    assert s.report.forward_flops == 1  # the same design, cheaper: shown


def test_refinement_can_be_switched_off(tmp_path):
    s = StudioState(ttn(), home=str(tmp_path), refine_s=0)
    assert s.set_dim("s0", 5)
    assert not s.refining and s.wait_refined(timeout=0)


def test_results_are_handed_to_the_states_thread(tmp_path):
    """The worker never changes the state itself: it gives the result to ``dispatch`` (in the app: the browser
    session's event loop), and the state changes only when that runs it."""
    import threading

    queued = []
    s = StudioState(ttn(), home=str(tmp_path), refine_s=0.4, dispatch=queued.append, autosave=False)
    live = s.report
    assert s.wait_refined(timeout=60)
    assert s.report is live and len(queued) <= 1  # nothing applied from the worker thread
    if queued:  # a better path was found: it is applied when the owner runs the hand-over
        main = threading.current_thread()
        seen = []
        s.param.watch(lambda e: seen.append(threading.current_thread() is main), ["report"])
        queued[0]()
        assert seen in ([], [True]) and s.report.forward_flops <= live.forward_flops


def test_a_failing_search_is_logged_and_the_live_report_stays(tmp_path, monkeypatch, caplog):
    import studio.refine as refine

    def boom(*a, **k):
        raise RuntimeError("optimiser exploded")

    monkeypatch.setattr(refine, "compile_program", boom)
    s = StudioState(ttn(), home=str(tmp_path), refine_s=0.3, autosave=False)
    live = s.report
    assert s.wait_refined(timeout=30)
    assert s.report is live
    assert any("background path search failed" in r.getMessage() for r in caplog.records)
