"""A search worker: ``python -m engine.search --study NAME [--runs-dir D] [--index I]`` (storage URL from
``$TNSTUDIO_SEARCH_STORAGE``, else the embedded journal of the study).

Any number of workers, on one machine or many, run the same study: each opens it, fails and queues again the
trials of workers that died (:func:`reap_dead_trials`, also after each of its own trials; journal storages), then
runs ``study.optimize`` with the :class:`~engine.search.objective.SearchObjective` until the study has trained
``trials`` candidates (counted over all workers, so the study ends after at least that many and at most
``workers - 1`` more), proposed ``max_candidates``, or was stopped (``tnstudio search stop``; SIGTERM / SIGINT
stop this worker alone). A trial interrupted by a stop is queued again, so a restarted worker continues where the
study was. A worker whose trials keep failing (:data:`MAX_FAILED_IN_ROW` in a row: a damaged run store, a
device gone) ends with exit status 2 and a last line ``error: ...`` naming the last failure, as it does when it
cannot start at all; ``tnstudio search`` reports that line. Finished trials are in the storage the moment they
finish: killing a worker loses only the trial it was training (RDB storages: failed and queued again through
heartbeats, see :mod:`engine.search.storage`).

Sampler: Optuna's multi-objective TPE (multivariate, grouped for the kind-dependent parameters, constant liar so
parallel workers spread out), ``startup_trials`` random candidates first; each worker seeds its own.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from engine.search.spec import SPEC_ATTR, STOP_ATTR, SearchSpec
from engine.search.storage import StorageError, mend_journal, open_storage, redact, storage_url

log = logging.getLogger(__name__)
UNCLAIMED_GRACE_S = 120  # a RUNNING trial without a worker record this old is taken as dead (journal storages)
MAX_FAILED_IN_ROW = 3  # trials of one worker failing one after another: the worker ends (the cause is not the design)


@dataclass(frozen=True)
class WorkerResult:
    """What one worker did."""

    study: str
    trials_run: int
    reaped: tuple[int, ...]
    stopped_by: str  # "target", "candidates", "stop", "signal", "failures"
    error: str | None = None  # stopped_by "failures": the last trial's error, one line

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "trials_run": self.trials_run, "reaped": list(self.reaped),
                "stopped_by": self.stopped_by, "error": self.error}


def one_line(error: BaseException | str) -> str:
    """An error's text on one line (a message may span several)."""
    text = " ".join(ln.strip() for ln in str(error).splitlines() if ln.strip())
    if isinstance(error, BaseException) and not isinstance(error, (StorageError, ValueError)):
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text or type(error).__name__


def make_sampler(spec: SearchSpec, index: int = 0):
    """Multi-objective TPE (see the module docstring), seeded per worker process."""
    import optuna

    seed = (spec.seed * 1_000_003 + index * 7_919 + os.getpid()) % (2 ** 31)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=spec.startup_trials, seed=seed)


def load_spec(study) -> SearchSpec:
    data = study.user_attrs.get(SPEC_ATTR)
    if not data:
        raise StorageError(f"study {study.study_name!r} was not made by tnstudio search (no {SPEC_ATTR})")
    return SearchSpec.from_dict(data)


def counts(study) -> dict[str, int]:
    """``trained``: finished trials that trained (complete or pruned on accuracy); ``proposed``: every trial
    that finished or runs (the candidate limit counts them); ``running``; ``waiting`` (queued retries)."""
    import optuna

    S = optuna.trial.TrialState
    trained = proposed = running = waiting = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == S.WAITING:
            waiting += 1
            continue
        if t.state == S.RUNNING:
            running += 1
        if t.state in (S.COMPLETE, S.PRUNED) and t.user_attrs.get("trained"):
            trained += 1
        if t.state != S.FAIL:
            proposed += 1
    return {"trained": trained, "proposed": proposed, "running": running, "waiting": waiting}


def finished_reason(study, spec: SearchSpec) -> str | None:
    """Why the study needs no more trials (``target``, ``candidates``, ``stop``), or None."""
    if study.user_attrs.get(STOP_ATTR):
        return "stop"
    c = counts(study)
    if c["trained"] >= spec.trials:
        return "target"
    if c["proposed"] >= spec.candidate_limit:
        return "candidates"
    return None


def reap_dead_trials(study, max_retries: int = 2) -> list[int]:
    """In a journal storage (one machine): fail the RUNNING trials whose worker process died, and trials that
    never recorded a worker for :data:`UNCLAIMED_GRACE_S`; fail their companion trials and queue their candidates
    again. Returns the trial numbers failed here. RDB storages are left to Optuna's heartbeats instead (see
    :mod:`engine.search.storage`): a process id says nothing about another machine, and containers may share a
    host name."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError

    from engine.search.objective import queue_retry
    from engine.train.store import pid_alive

    host, storage = socket.gethostname(), study._storage
    if isinstance(storage, optuna.storages.RDBStorage):
        return []
    now = datetime.datetime.now()
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if w:
            if w.get("host") != host or pid_alive(w.get("pid"), w.get("pid_start")):
                continue
            reason = f"worker process died (pid {w.get('pid')} on {host}); queued again"
        else:
            if t.datetime_start is None or (now - t.datetime_start).total_seconds() < UNCLAIMED_GRACE_S:
                continue
            reason = "its worker never recorded itself and is gone; queued again"
        try:
            storage.set_trial_user_attr(t._trial_id, "reason", reason)
            if not storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker was quicker
        comp = t.user_attrs.get("companion")
        if comp:
            try:
                storage.set_trial_state_values(comp["trial_id"], optuna.trial.TrialState.FAIL)
            except (UpdateFinishedTrialError, KeyError):
                pass
        _fail_orphan_run(t.user_attrs, reason)
        queue_retry(study, t.number, t.params, t.user_attrs, max_retries)
        reaped.append(t.number)
        log.warning("trial %d: %s", t.number, reason)
    return reaped


def _fail_orphan_run(attrs: dict, reason: str) -> None:
    """The run of a reaped trial: reading it fails it if its process died (the store's own check); a run still
    ``queued`` without a process (the worker died between recording it and starting it) is failed here."""
    from engine.train.store import RunNotFound, RunStore

    run_id, runs_dir = attrs.get("run_id"), attrs.get("runs_dir")
    if not run_id or not runs_dir:
        return
    try:
        store = RunStore(runs_dir)
        run = store.get_run(run_id, with_design=False)
        if run["status"] == "queued" and not run.get("pid"):
            store.set_status(run_id, "failed", f"its search worker died before the run started: {reason}")
    except (RunNotFound, OSError) as e:  # the run store is another machine's or gone: the trial's state stands
        log.info("run %s of a reaped trial not updated: %r", run_id, e)


def run_worker(name: str, url: str | None = None, runs_dir: str | None = None, index: int = 0) -> WorkerResult:
    """Work on study ``name`` until it is done (see the module docstring)."""
    import optuna

    from engine.search.objective import SearchObjective

    url = storage_url(name, url)
    notice = mend_journal(url)  # a torn last line (a crash mid-write) is set aside before this worker appends
    if notice:
        log.warning("%s", notice)
    storage = open_storage(url)
    try:
        probe = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise StorageError(f"no search {name!r} in {redact(url)}") from None
    spec = load_spec(probe)
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(spec, index))
    reaped = reap_dead_trials(study)
    flag = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:
        flag["signal"] = signal.Signals(signum).name

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    objective = SearchObjective(study, spec, url, runs_dir, stop_check=lambda: flag["signal"] is not None)
    ran = {"n": 0}
    why: dict[str, str | None] = {"reason": finished_reason(study, spec)}
    failed = {"in_row": 0, "error": None}

    def run_trial(trial):
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # noqa: BLE001 - remembered for the worker's last word, raised on to Optuna
            failed["error"] = one_line(e)
            raise

    def after_trial(st, trial) -> None:
        ran["n"] += 1
        if trial.state == optuna.trial.TrialState.FAIL and not str(
                trial.user_attrs.get("reason") or "").startswith("interrupted"):
            failed["in_row"] += 1
        else:
            failed["in_row"] = 0
        reaped.extend(reap_dead_trials(st))  # a worker beside this one may have died meanwhile
        if flag["signal"]:
            why["reason"] = "signal"
        elif failed["in_row"] >= MAX_FAILED_IN_ROW:
            why["reason"] = "failures"
        else:
            why["reason"] = finished_reason(st, spec)
        if why["reason"]:
            st.stop()

    try:
        if why["reason"] is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(run_trial, callbacks=[after_trial], catch=(Exception,), gc_after_trial=False)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    error = None
    if why["reason"] == "failures":
        error = (f"{failed['in_row']} trials in a row failed, the last: {failed['error'] or 'see the log above'}")
    return WorkerResult(study=name, trials_run=ran["n"], reaped=tuple(reaped),
                        stopped_by=why["reason"] or ("signal" if flag["signal"] else "stop"), error=error)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.search", description="Run one worker of a design search "
                                "(storage: $TNSTUDIO_SEARCH_STORAGE, else the study's embedded journal).")
    p.add_argument("--study", required=True)
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--index", type=int, default=0, help="worker number (seeds the sampler)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from engine.search.spec import SpecError
    from engine.train.store import StoreError

    # The last line of a worker that fails is "error: <cause>" (its log is where the CLI reads it from):
    try:
        res = run_worker(args.study, None, args.runs_dir, args.index)
    except (StorageError, SpecError, StoreError) as e:  # said in words already (e.g. runs.db and its repair)
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2
    except Exception as e:  # noqa: BLE001 - anything else: the traceback for the log, then the one line
        log.exception("worker %s failed", args.index)
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2
    if res.error:
        print(f"error: {res.error}", file=sys.stderr, flush=True)
        return 2
    print(f"worker {args.index} (pid {os.getpid()}): {res.trials_run} trials, ended by {res.stopped_by}"
          + (f", reaped {list(res.reaped)}" if res.reaped else ""), flush=True)
    return 0
