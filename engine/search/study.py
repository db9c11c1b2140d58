"""A search's life: create (or continue) its study, start workers, stop it.

API::

    study = create_search(spec, url=None)       # a new study, or the same search continued (its size may grow)
    study, spec = open_search(name, url=None)   # StorageError when there is no such search
    procs = start_workers(name, n, url=None, runs_dir=None)   # n worker processes on this machine
    report = run_search(spec, url=None, workers=2, runs_dir=None, progress=None)   # all of it, waiting
    refit_front(name, url=None, runs_dir=None)  # retrain the front's designs on all training data: test numbers
    stop_search(name, url=None)                 # workers stop at their next evaluation; the trial is queued again
    resume_search(name, url=None)               # clear the stop flag (start_workers / join then continue)

``url`` is an RDB URL or a journal path; None is ``$TNSTUDIO_SEARCH_STORAGE`` or the embedded journal of the study
(:mod:`engine.search.storage`). Workers get the URL through their environment, never on their command line, and
log to ``<TNSTUDIO_HOME>/search/<name>.worker<i>.log``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from engine.search.report import StudyReport, study_report
from engine.search.spec import REFIT_ATTR, SPEC_ATTR, STOP_ATTR, SearchSpec, SpecError
from engine.search.storage import (ENV_STORAGE, StorageError, mend_journal, open_storage, redact, search_dir,
                                   storage_url)
from engine.search.worker import load_spec

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
DIRECTIONS = ("maximize", "minimize")  # validation accuracy, params (or FLOPs)
log = logging.getLogger(__name__)
_LOG_TAIL = 1 << 16  # bytes of a worker's log read for its last error line


class WorkerFailed(RuntimeError):
    """Workers of a search ended with an error (a non-zero exit status); the message names the first one, its
    cause (the last ``error:`` line of its log) and its log."""


def _say(notice: str | None) -> None:
    if notice:
        log.warning("%s", notice)


def _differences(a: SearchSpec, b: SearchSpec) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    out = []
    for k in da:
        if k in ("trials", "max_candidates"):
            continue
        if json.dumps(da[k], sort_keys=True) != json.dumps(db.get(k), sort_keys=True):
            out.append(f"{k} {json.dumps(db.get(k))} (asked {json.dumps(da[k])})")
    return out


def create_search(spec: SearchSpec, url: str | None = None):
    """The study of ``spec``: created with the spec stored in it, or, when a study of that name exists with the
    same search, that study continued (its ``trials`` / ``max_candidates`` set to the new values and its stop
    flag cleared). A study of that name with another search raises :class:`SpecError`."""
    import optuna

    url = storage_url(spec.name, url)
    _say(mend_journal(url))  # a torn last line (a crash mid-write) is set aside before anything is appended
    storage = open_storage(url)
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, directions=list(DIRECTIONS))
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
        study.set_user_attr("tnstudio.created", {"time": time.time(), "host": socket.gethostname()})
        return study
    except optuna.exceptions.DuplicatedStudyError:
        pass
    study = optuna.load_study(study_name=spec.name, storage=storage)
    old = study.user_attrs.get(SPEC_ATTR)
    if old is None:  # created a moment ago by another process that has not stored its spec yet
        time.sleep(1.0)
        old = study.user_attrs.get(SPEC_ATTR)
    if old is None:
        raise SpecError(f"study {spec.name!r} in {redact(url)} was not made by tnstudio search")
    old_spec = SearchSpec.from_dict(old)
    if not old_spec.same_search(spec):
        raise SpecError(f"search {spec.name!r} exists with another search: " + "; ".join(
            _differences(spec, old_spec)) + ". Choose another --name, or continue it with: tnstudio search join "
            f"{spec.name}")
    if (old_spec.trials, old_spec.max_candidates) != (spec.trials, spec.max_candidates):
        study.set_user_attr(SPEC_ATTR, spec.to_dict())
    if study.user_attrs.get(STOP_ATTR):
        study.set_user_attr(STOP_ATTR, None)
    return study


def open_search(name: str, url: str | None = None):
    """``(study, spec)`` of an existing search (:class:`StorageError` when there is none)."""
    import optuna

    url = storage_url(name, url)
    if "://" not in url and not Path(url).exists():
        raise StorageError(f"no search {name!r} (no {url}; searches here: "
                           f"{', '.join(sorted(p.stem for p in search_dir().glob('*.journal'))) or 'none'})")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    except KeyError:
        held = "" if "://" in url else (f": the file records no search of that name (cut short, damaged, or not a "
                                         f"search journal; {Path(url).stat().st_size:,} bytes)")
        raise StorageError(f"no search {name!r} in {redact(url)}{held}") from None
    return study, load_spec(study)


def stop_search(name: str, url: str | None = None) -> bool:
    """Ask every worker of the search to stop (returns False when it was asked already). Each stops at its
    trial's next evaluation, records the run ``stopped`` and queues the trial again."""
    study, _ = open_search(name, url)
    if study.user_attrs.get(STOP_ATTR):
        return False
    study.set_user_attr(STOP_ATTR, {"time": time.time(), "host": socket.gethostname()})
    return True


def resume_search(name: str, url: str | None = None, trials: int | None = None):
    """Clear the stop flag (and set a new size); returns the study. A torn last line of its journal is set aside
    first (:func:`engine.search.storage.mend_journal`)."""
    _say(mend_journal(storage_url(name, url)))
    study, spec = open_search(name, url)
    if study.user_attrs.get(STOP_ATTR):
        study.set_user_attr(STOP_ATTR, None)
    if trials is not None and trials != spec.trials:
        study.set_user_attr(SPEC_ATTR, spec.resized(trials, None if spec.max_candidates is None
                                                    or spec.max_candidates < trials else spec.max_candidates
                                                    ).to_dict())
    return study


def refit_front(name: str, url: str | None = None, runs_dir: str | None = None,
                progress: Callable[[int, dict], None] | None = None) -> dict[int, dict]:
    """Train each design of the Pareto front again on all training examples (the hand sweep's protocol: selection
    used the validation split, so this is each design's fair test accuracy). Results go into the study (user
    attribute ``tnstudio.refit``: trial number -> run id, test accuracy) and the report; designs refitted
    already are skipped. Returns the refits of the front."""
    from engine.search.objective import refit

    study, spec = open_search(name, url)
    done = {int(k): v for k, v in (study.user_attrs.get(REFIT_ATTR) or {}).items()}
    rep = study_report(name, url)
    for t in rep.front:
        if t.number in done or not t.candidate:
            continue
        done[t.number] = refit(spec, name, t.number, t.candidate, storage_url(name, url), runs_dir)
        study.set_user_attr(REFIT_ATTR, {str(k): v for k, v in done.items()})
        if progress is not None:
            progress(t.number, done[t.number])
    return {t.number: done[t.number] for t in rep.front if t.number in done}


def worker_log(name: str, index: int) -> Path:
    return search_dir() / f"{name}.worker{index}.log"


def start_workers(name: str, n: int, url: str | None = None, runs_dir: str | None = None,
                  first_index: int = 0) -> list[subprocess.Popen]:
    """Start ``n`` worker processes for search ``name`` on this machine (each in its own session, so closing
    the terminal does not end them); returns their ``Popen`` objects."""
    url = storage_url(name, url)
    env = dict(os.environ)
    env[ENV_STORAGE] = url
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    procs = []
    for i in range(first_index, first_index + n):
        cmd = [sys.executable, "-m", "engine.search", "--study", name, "--index", str(i)]
        if runs_dir:
            cmd += ["--runs-dir", str(runs_dir)]
        try:
            with open(worker_log(name, i), "ab") as out:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
        except OSError as e:  # no process slot, no memory, no room for the log: stop the ones started, say why
            for started in procs:
                started.terminate()  # SIGTERM: a worker queues its trial again and ends
            for started in procs:
                started.wait()
            kept = f" (the {len(procs)} started before it were stopped)" if procs else ""
            raise WorkerFailed(f"search {name}: worker {i} could not be started: {e.strerror or e}{kept}; run "
                               f"`tnstudio search join {name}` once the machine has room") from e
        proc.worker_index = i  # type: ignore[attr-defined]  # for wait_workers: which log is whose
        procs.append(proc)
    return procs


def _last_error_line(log: Path) -> str | None:
    """The cause a worker's log ends with: its last ``error: ...`` line (what a worker prints before it exits
    with an error), else the last line of a traceback, else its last line."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _LOG_TAIL))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return None
    for ln in reversed(lines):
        if ln.startswith("error: "):
            return ln[len("error: "):]
    return lines[-1] if lines else None


def worker_failures(procs: list[subprocess.Popen], name: str) -> str | None:
    """One line on the workers in ``procs`` that ended with an error (None when every one ended well)."""
    import signal

    bad = [p for p in procs if p.returncode not in (None, 0)]
    if not bad:
        return None
    p = bad[0]
    index = getattr(p, "worker_index", None)
    if p.returncode < 0:
        try:
            how = f"was killed ({signal.Signals(-p.returncode).name})"
        except ValueError:
            how = f"was killed (signal {-p.returncode})"
    else:
        how = f"failed (exit status {p.returncode})"
    who = f"worker {index}" if index is not None else f"worker pid {p.pid}"
    cause = _last_error_line(worker_log(name, index)) if index is not None else None
    more = f"; {len(bad) - 1} more worker(s) failed too" if len(bad) > 1 else ""
    where = f" (log {worker_log(name, index)})" if index is not None else ""
    return f"search {name}: {who} {how}" + (f": {cause}" if cause and p.returncode > 0 else "") + where + more


def wait_workers(procs: list[subprocess.Popen], name: str, url: str | None = None,
                 progress: Callable[[StudyReport], None] | None = None, poll: float = 1.0,
                 timeout: float | None = None) -> StudyReport:
    """Wait for the workers to end, calling ``progress(report)`` whenever a trial finished; returns the final
    report. A worker that ended with an error raises :class:`WorkerFailed` (once all have ended) naming its cause.
    On KeyboardInterrupt the search is stopped and the workers are waited for."""
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = -1
    try:
        while any(p.poll() is None for p in procs):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"search {name!r} still running after {timeout:.0f} s")
            time.sleep(poll)
            if progress is not None:
                rep = study_report(name, url)
                done = sum(1 for t in rep.trials if t.status not in ("running", "waiting"))
                if done != seen:
                    seen = done
                    progress(rep)
    except KeyboardInterrupt:
        stop_search(name, url)
        for p in procs:
            p.wait()
        raise
    failure = worker_failures(procs, name)
    if failure:
        raise WorkerFailed(failure)
    return study_report(name, url)


def run_search(spec: SearchSpec, url: str | None = None, workers: int = 2, runs_dir: str | None = None,
               progress: Callable[[StudyReport], None] | None = None, timeout: float | None = None) -> StudyReport:
    """Create (or continue) the search, run ``workers`` worker processes until it is done, return its report.
    ``workers=0`` runs one worker in this process (no start-up cost; for scripts and tests)."""
    create_search(spec, url)
    if workers <= 0:
        from engine.search.worker import run_worker

        run_worker(spec.name, url, runs_dir)
        return study_report(spec.name, url)
    procs = start_workers(spec.name, workers, url, runs_dir)
    return wait_workers(procs, spec.name, url, progress=progress, timeout=timeout)


__all__ = ["DIRECTIONS", "WorkerFailed", "create_search", "open_search", "refit_front", "resume_search", "run_search",
           "start_workers", "stop_search", "wait_workers", "worker_failures", "worker_log"]
