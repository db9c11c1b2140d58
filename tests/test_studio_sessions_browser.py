"""Several browser sessions on one studio server, as a team (or one user with two tabs) uses it.

Two tabs share a server and a home: each tab's edits stay in that tab (each shows the parameter count of its own
design), a run launched in one is listed in the other, and a tab reloaded and another closed while the server still
has changes to send them leave the remaining tab working and the server's log free of errors; the reloaded tab shows
the run completed (its run table, polled before the Train tab opened, used to keep the status of that first poll:
``tests/test_studio_train.py`` has the case without a browser).

Closing a tab at such a moment used to log asyncio's "Task exception was never retrieved" with a traceback (Panel
1.9.4 awaits a session's websocket writes on the document's next tick, which never comes once the session is gone):
:class:`studio.session.ClosedTabWrites` drops exactly those records; the first tests check that it does, that the
record is real without it, and that every other error still gets through.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest
from tornado.websocket import WebSocketClosedError

from engine.design.templates import make_template
from engine.train.store import RunStore
from studio.app import create_app
from studio.session import ClosedTabWrites
from studio.state import StudioState

try:
    from tests.browser import CHROMIUM_ARGS, Console, ServerLog, require_browser, screenshot, serve_app
    from tests.test_studio_browser import generate, wait_params
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from browser import CHROMIUM_ARGS, Console, ServerLog, require_browser, screenshot, serve_app
    from test_studio_browser import generate, wait_params


def _unretrieved_task_errors(exc: BaseException) -> list[logging.LogRecord]:
    """The ERROR records that reach the root logger when a task fails with ``exc`` and nobody awaits it."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    async def write() -> None:
        raise exc

    handler = Keep(level=logging.ERROR)
    logging.getLogger().addHandler(handler)
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(write())
        loop.run_until_complete(asyncio.sleep(0.01))
        assert task.done()
        del task
        gc.collect()  # asyncio logs an exception nobody retrieved when the task is collected
    finally:
        loop.close()
        logging.getLogger().removeHandler(handler)
    return records


def test_a_write_to_a_closed_tab_is_not_logged_as_an_error():
    assert any(isinstance(f, ClosedTabWrites) for f in logging.getLogger("asyncio").filters)  # studio.app installs it
    assert _unretrieved_task_errors(WebSocketClosedError()) == []
    other = _unretrieved_task_errors(ValueError("a real failure"))
    assert len(other) == 1 and "never retrieved" in other[0].getMessage()
    assert isinstance(other[0].exc_info[1], ValueError)


def test_without_the_filter_asyncio_logs_the_closed_tab_write():
    """The record the filter drops is real: without it, the same task is an ERROR with the exception."""
    logger = logging.getLogger("asyncio")
    mine = [f for f in logger.filters if isinstance(f, ClosedTabWrites)]
    for f in mine:
        logger.removeFilter(f)
    try:
        records = _unretrieved_task_errors(WebSocketClosedError())
    finally:
        for f in mine:
            logger.addFilter(f)
    assert len(records) == 1 and isinstance(records[0].exc_info[1], WebSocketClosedError)


@pytest.mark.browser
def test_two_tabs_share_a_server_and_a_home_and_closing_one_logs_nothing(tmp_path):
    path = require_browser()
    from playwright.sync_api import sync_playwright

    def factory():
        s = StudioState(home=str(tmp_path))
        s.generate("mpo", 64, 32, 4)  # digits MLP: 64 -> [TN 64x32] -> 10, seconds per epoch
        return create_app(state=s)

    with ServerLog() as server, serve_app(factory) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            tabs = []
            for _ in range(2):  # two contexts: two users (or two windows), one session each
                page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
                page.set_default_timeout(60000)
                tabs.append((page, Console(page)))
                page.goto(url, timeout=90000)
                page.locator(".tn-canvas .react-flow__node").first.wait_for(timeout=90000)
            (a, console_a), (b, _) = tabs

            # each tab's edits stay in that tab, also when they interleave
            for k in range(3):
                generate(a, "ttn", 256, 256, 2 + k)
                generate(b, "cp", 512, 256, 4 + k)
            wait_params(a, make_template("ttn", 256, 256, 4).params)
            wait_params(b, make_template("cp", 512, 256, 6).params)
            wait_params(a, make_template("ttn", 256, 256, 4).params)  # b's last edit did not reach a

            # a run launched in one tab is listed in the other
            generate(a, "mpo", 64, 32, 4)
            generate(b, "mpo", 64, 32, 4)
            for page in (a, b):
                page.locator(".bk-tab", has_text="Train").click()
                page.locator(".tn-train-plan", has_text="TN 64×32").wait_for(timeout=30000)
            epochs = a.locator(".tn-train-epochs input")
            epochs.fill("3")
            epochs.press("Enter")
            a.locator(".tn-train-launch button").click()
            a.locator(".tn-train-feedback", has_text="Launched").wait_for(timeout=30000)
            b.locator(".tn-run-table .tabulator-row").first.wait_for(timeout=30000)

            # b closes while its run table and curves still change; a reloads mid-run and carries on
            b.locator(".bk-tab", has_text="Design").click()
            generate(b, "mera", 4096, 4096, 4)  # the server is still busy sending b this design when b closes
            b.context.close()
            a.reload(timeout=90000)
            a.locator(".bk-tab", has_text="Train").click()
            try:
                a.locator(".tn-status-completed").first.wait_for(timeout=120000)
            except Exception:
                screenshot(a, "two_tabs_run_not_completed")
                raise AssertionError(f"the run is not shown completed: {RunStore(tmp_path / 'runs').list_runs()}")
            a.locator(".bk-tab", has_text="Design").click()
            generate(a, "tucker", 512, 512, 4)
            wait_params(a, make_template("tucker", 512, 512, 4).params)
            time.sleep(2)  # the closed session's writes are collected by now
            screenshot(a, "two_tabs_after_one_closed")
        finally:
            browser.close()
        gc.collect()
    assert console_a.page_errors == [] and console_a.errors == [], (console_a.page_errors, console_a.errors)
    assert console_a.noise() == [], console_a.noise()[:5]
    (run,) = RunStore(tmp_path / "runs").list_runs()
    assert run["status"] == "completed"
    assert server.records == [], "\n".join(server.records)


@pytest.mark.browser
def test_a_reloaded_tab_comes_back_to_its_own_draft(tmp_path):
    """Two tabs on one home autosaved to one draft: tab a, reloaded after tab b had edited, showed b's design and
    a's last edits were gone. A tab's URL now carries its draft id (?draft=...), which a reload keeps: a comes back
    to its own design, and a tab opened afresh starts from the newest draft. The id replaces the tab's URL without
    a history entry of its own."""
    path = require_browser()
    from playwright.sync_api import sync_playwright

    with ServerLog() as server, serve_app(lambda: create_app(home=str(tmp_path))) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            pages = []
            for _ in range(2):
                page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
                page.set_default_timeout(60000)
                page.goto(url, timeout=90000)
                page.locator(".tn-canvas .react-flow__node").first.wait_for(timeout=90000)
                pages.append(page)
            a, b = pages
            generate(a, "ttn", 256, 256, 3)
            wait_params(a, make_template("ttn", 256, 256, 3).params)
            generate(b, "cp", 512, 256, 5)
            wait_params(b, make_template("cp", 512, 256, 5).params)
            assert "draft=" in a.url and "draft=" in b.url and a.url != b.url, (a.url, b.url)
            # the id replaced the URL in the history (entries: about:blank, the studio): Back leaves the studio
            # rather than landing on the bare URL, where a reload would restore the newest draft (a pushed entry did)
            assert a.evaluate("window.history.length") == 2 == b.evaluate("window.history.length")
            a.reload(timeout=90000)
            a.locator(".tn-canvas .react-flow__node").first.wait_for(timeout=90000)
            wait_params(a, make_template("ttn", 256, 256, 3).params)  # its own draft, not b's newer one
            fresh = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
            fresh.goto(url, timeout=90000)
            fresh.locator(".tn-canvas .react-flow__node").first.wait_for(timeout=90000)
            wait_params(fresh, make_template("cp", 512, 256, 5).params)  # a new tab: the newest draft
        finally:
            browser.close()
        gc.collect()
    assert server.records == [], "\n".join(server.records)
