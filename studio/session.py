"""Handing work to a browser session's document: the one way background results and raw Bokeh changes reach the UI.

Why this exists (the cause of the ``_pending_writes should be non-None when we have a document lock`` tracebacks):
Bokeh lets a session's document change only while its lock is held. Panel runs some browser events - button clicks,
Enter in a text field, and any value change still waiting when such an event arrives - through
``param.parameterized.async_executor``, which schedules them as *nolock* callbacks: the watchers of ``StudioState``
then run without the document lock. Panel's own widgets and panes cope (Panel dispatches their changes itself), but
a raw Bokeh model written there (``ColumnDataSource.data = ...``, a range, a renderer) raises, and the exception ends
the chain of watchers, so the views after it (the canvas, the save-as name) were never redrawn. A background thread
(the path refinement, the export preview) that set state parameters ran the same watchers on a thread that never
holds the lock. The rule in the studio: views show state through Panel panes and widgets; the few raw Bokeh models
(the Train tab's live curves) are changed only in callbacks Bokeh runs under the lock - periodic callbacks and
:class:`SessionDispatcher` calls - and background threads never touch state or views: they hand their results over
with :class:`SessionDispatcher`, which runs them on the session's event loop, under the lock.
"""
from __future__ import annotations

import logging
import secrets
from typing import Any, Callable

import panel as pn
from bokeh.models import CustomJS
from tornado.websocket import WebSocketClosedError

from .state import TAB_DRAFT_ID

log = logging.getLogger(__name__)


def session_doc() -> Any:
    """The document of the browser session being built or served (``pn.state.curdoc``); None outside a server
    session (tests, scripts, notebooks)."""
    doc = pn.state.curdoc
    return doc if doc is not None and getattr(doc, "session_context", None) is not None else None


class SessionDispatcher:
    """Runs callables under one browser session's document lock (``doc.add_next_tick_callback``).

    Outside a server session (tests, scripts, notebooks) there is no document and no lock: callables run at once,
    on the calling thread. ``close()`` (called when the session ends) makes later calls no-ops.
    """

    def __init__(self, doc: Any = None):
        self.doc = doc
        self.closed = False

    @classmethod
    def current(cls) -> "SessionDispatcher":
        """The dispatcher of the session being built (``pn.state.curdoc``), or an immediate one outside a server."""
        return cls(session_doc())

    @property
    def served(self) -> bool:
        return self.doc is not None

    def __call__(self, fn: Callable[[], Any]) -> None:
        if self.closed:
            return
        if self.doc is None:
            fn()
            return
        try:
            self.doc.add_next_tick_callback(fn)
        except (RuntimeError, ValueError):  # the session was destroyed meanwhile: nobody is left to show it
            log.debug("session gone; dropped a hand-over to it", exc_info=True)

    def close(self) -> None:
        self.closed = True


def on_session_end(callback: Callable[[], Any]) -> None:
    """Call ``callback`` when the current browser session ends (no-op outside a server session)."""
    doc = session_doc()
    if doc is not None:
        doc.on_session_destroyed(lambda _ctx: callback())


# run in the browser once the page is ready: the tab's URL gets its draft id without a new history entry
_SET_DRAFT_IN_URL = """
const url = new URL(window.location.href)
url.searchParams.set("draft", draft)
window.history.replaceState(window.history.state, "", url.toString())
"""


def tab_draft_id() -> str:
    """The browser tab's draft id: the ``?draft=`` of the URL that opened the session (a reload keeps it), else a new
    one, written into the tab's URL once the page is ready so that a reload finds this tab's draft. Empty outside a
    server session.

    The URL is rewritten in the browser (``history.replaceState``, the id passed as the callback's argument, never
    formatted into its code): ``pn.state.location.update_query`` pushed a second history entry, so the browser's
    Back button led to the bare URL, where a reload restored the newest draft instead of the tab's own."""
    doc = session_doc()
    if doc is None:
        return ""
    given = [v.decode("ascii", "replace") for v in pn.state.session_args.get("draft", [])]
    if given and TAB_DRAFT_ID.fullmatch(given[-1]):
        return given[-1]
    draft = secrets.token_hex(6)
    doc.js_on_event("document_ready", CustomJS(args={"draft": draft}, code=_SET_DRAFT_IN_URL))
    return draft


# run in the browser once the page is ready: the second (third, ...) click of a multiple click on a button that starts
# work (class tn-once) stops at the document, in the capture phase, before the button's own listener sends it
_SWALLOW_DOUBLE_CLICKS = """
if (!window.tnSwallowsDoubleClicks) {
  window.tnSwallowsDoubleClicks = true
  document.addEventListener("click", (event) => {
    if (event.detail > 1 && event.composedPath().some((el) => el.classList && el.classList.contains("tn-once"))) {
      event.stopPropagation()
      event.preventDefault()
    }
  }, true)
}
"""


def swallow_double_clicks() -> None:
    """Make the page drop the second click of a double click on buttons that start work (class ``tn-once``), so
    that the server never receives it. The server's own guard (:func:`studio.widgets.guard`) tells a double click's
    second half by time and can be outrun by a loaded server; the browser tells it by the click's count
    (``MouseEvent.detail``: 2 for a double click's second click, 0 for Enter or Space). No-op outside a server
    session."""
    doc = session_doc()
    if doc is not None:
        doc.js_on_event("document_ready", CustomJS(code=_SWALLOW_DOUBLE_CLICKS))


class ClosedTabWrites(logging.Filter):
    """Drops asyncio's error for a write to a closed browser tab's websocket (a Panel 1.9.4 bug, worked around here).

    Panel sends a session's changes as websocket writes and awaits them on the document's next tick. A tab closed or
    reloaded before that tick ends the session, the awaiting callback never runs, and asyncio logs each failed
    write (``WebSocketClosedError``) as "Task exception was never retrieved", an error with a traceback, when the
    write is collected. Nothing was lost (the tab is gone), so the record goes to this module's debug log instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], WebSocketClosedError):
            log.debug("a write to a closed browser tab was dropped: %s", record.getMessage())
            return False
        return True


def quiet_closed_tab_writes() -> None:
    """Install :class:`ClosedTabWrites` on asyncio's logger (once)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, ClosedTabWrites) for f in logger.filters):
        logger.addFilter(ClosedTabWrites())
