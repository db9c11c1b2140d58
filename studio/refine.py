"""Background path refinement: cotengra's thorough search for the newest design, one worker thread at a time.

The live cost report is computed at once with the fast search. Once a design has been still for ``quiet_s``
seconds, :class:`PathRefiner` compiles its programs with the thorough search in a worker thread (the engine caches
them, so later reports of the same design, and bond-dimension changes of the same network, reuse the better paths)
and computes a fresh report. The worker never touches the studio's state or views: it hands ``(job, report)`` to
``deliver``, which the owner makes run on its own thread (the browser session's, see
:class:`studio.session.SessionDispatcher`). A newer request replaces a queued one (newest wins).
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

from engine.contract.cost import CostReport, cost_report
from engine.contract.program import compile_program
from engine.contract.schedule import can_stream
from engine.design.model import Design

log = logging.getLogger(__name__)

QUIET_S = 0.3  # a search starts once the design has not changed for this long (it shares the GIL with edits)
MIN_TENSORS = 4  # smaller networks are searched exactly by the fast search already
EXIT_WAIT_S = 10.0  # at interpreter exit, how long running searches may take to finish (see _finish_at_exit)
_LIVE: weakref.WeakSet[PathRefiner] = weakref.WeakSet()


@dataclass(frozen=True)
class RefineJob:
    """A design and the cost settings its report is for."""

    design: Design
    batch: int
    dtype: str
    schedule: str
    budget_s: float

    @property
    def settings(self) -> tuple[int, str, str]:
        return self.batch, self.dtype, self.schedule


class PathRefiner:
    """One worker thread that refines the newest requested design; results go to ``deliver(job, report)``."""

    def __init__(self, deliver: Callable[[RefineJob, CostReport], None], quiet_s: float = QUIET_S):
        self.deliver = deliver
        self.quiet_s = quiet_s
        self._lock = threading.Lock()
        self._job: RefineJob | None = None  # the newest request, waiting
        self._stamp = 0.0  # when it was made
        self._thread: threading.Thread | None = None
        self._closed = False
        _LIVE.add(self)

    def request(self, job: RefineJob) -> bool:
        """Queue ``job`` (replacing a waiting one); False when it is not worth a search or the refiner is closed."""
        if self._closed or job.budget_s <= 0 or len(job.design.tensors) < MIN_TENSORS:
            return False
        with self._lock:
            self._job, self._stamp = job, time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, daemon=True, name="tn-refine")
                self._thread.start()
        return True

    @property
    def busy(self) -> bool:
        """Whether a search is running or waiting."""
        t = self._thread
        return t is not None and t.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the worker is idle (``timeout`` seconds at most); True when idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            t = self._thread
            if t is None or not t.is_alive():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            t.join(0.5 if left is None else min(left, 0.5))

    def close(self) -> None:
        """Drop the waiting job; a running search finishes but is not delivered."""
        self._closed = True
        with self._lock:
            self._job = None

    def _work(self) -> None:
        while True:
            with self._lock:
                wait = self._stamp + self.quiet_s - time.monotonic()
                if wait <= 0:
                    job, self._job = self._job, None
                    if job is None:
                        self._thread = None
                        return
            if wait > 0:
                time.sleep(wait)
                continue
            report = self._search(job)
            if report is not None and not self._closed:
                self.deliver(job, report)

    @staticmethod
    def _search(job: RefineJob) -> CostReport | None:
        if getattr(job.design, "conv", None) is not None:
            return None  # conv designs: the live report (the conv programs' fast paths) stands
        scheds = [job.schedule] if job.schedule != "auto" else ["materialise", "stream"][:1 + can_stream(job.design)]
        try:
            for s in scheds:
                compile_program(job.design, job.batch, s, "thorough", job.budget_s / len(scheds))
            return cost_report(job.design, batch=job.batch, dtype=job.dtype, schedule=job.schedule)
        except Exception:  # noqa: BLE001 - cotengra's optimisers can raise anything; a refinement is optional and
            # the live report stands, so say what failed (with the traceback) and carry on
            log.warning("background path search failed for %r (%d tensors); keeping the live report",
                        job.design.name, len(job.design.tensors), exc_info=True)
            return None


@atexit.register
def _finish_at_exit() -> None:
    """Let running searches end before the interpreter does. A daemon thread still inside cotengra's Rust backend
    when Python finalises is torn down mid-call, which aborts the whole process ("FATAL: exception not rethrown")
    after everything else succeeded; atexit runs while threads still run, so close every refiner and wait."""
    refiners = list(_LIVE)
    for r in refiners:
        r.close()
    deadline = time.monotonic() + EXIT_WAIT_S
    for r in refiners:
        r.wait(max(deadline - time.monotonic(), 0.0))
