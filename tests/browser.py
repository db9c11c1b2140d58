"""Shared helper for end-to-end tests: serve a Panel app on loopback and drive it with playwright + chromium.

Usage::

    from tests.browser import browser_page, serve_app

    @pytest.mark.browser
    def test_something():
        with serve_app(lambda: create_app()) as url, browser_page() as page:
            page.goto(url)
            ...

Browser tests skip (with the reason) when playwright or a chromium binary is missing; ``make browser`` installs
Debian's chromium. The browser gets no network beyond loopback, like a user's offline machine.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"]
SCREENSHOT_DIR = Path(os.environ.get("TNSTUDIO_SCREENSHOTS", "/tmp/tnstudio_screenshots"))


def chromium_path() -> str | None:
    """The chromium binary: ``$TNSTUDIO_CHROMIUM``, else ``chromium`` on PATH, else /usr/bin/chromium."""
    for cand in (os.environ.get("TNSTUDIO_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 "/usr/bin/chromium"):
        if cand and Path(cand).is_file():
            return cand
    return None


def require_browser() -> str:
    """Skip the calling test with a clear reason when playwright or chromium is unavailable."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        pytest.skip("no chromium binary found: run `make browser` (apt-get install chromium) or set "
                    "TNSTUDIO_CHROMIUM")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(factory: Callable[[], object], timeout: float = 30.0) -> Iterator[str]:
    """Serve ``factory`` (called once per browser session) on 127.0.0.1; yields the URL, stops the server after."""
    import panel as pn

    port = free_port()
    server = pn.serve({"/": factory}, port=port, address="127.0.0.1", threaded=True, show=False,
                      websocket_origin="*", title="test")
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "favicon.ico", timeout=2).close()
            break
        except Exception:  # not up yet (any HTTP answer, even an error page, means it is)
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"the test server on {url} did not start within {timeout:.0f} s")
            time.sleep(0.1)
    try:
        yield url
    finally:
        server.stop()


class ServerLog(logging.Handler):
    """Collects what the server logs at ERROR and above, and exceptions that end threads: the tracebacks a test
    must not leave behind (use as a context manager around ``serve_app``)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[str] = []
        self._hook = None

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.records.append(f"{record.name}: {text}")

    def _thread_hook(self, args) -> None:
        self.records.append(f"thread {args.thread.name if args.thread else '?'}: " + "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))

    def __enter__(self) -> "ServerLog":
        logging.getLogger().addHandler(self)
        self._hook, threading.excepthook = threading.excepthook, self._thread_hook
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)
        threading.excepthook = self._hook


class Console:
    """The page's errors (``pageerror``) and console messages, as a test checks them."""

    NOISE = ("could not set initial ranges", "JSONEditor", "could not determine", "Plot has no renderers")

    def __init__(self, page) -> None:
        self.page_errors: list[str] = []
        self.messages: list[tuple[str, str]] = []
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("console", lambda m: self.messages.append((m.type, m.text)))

    @property
    def errors(self) -> list[str]:
        return [t for k, t in self.messages if k == "error"]

    def noise(self) -> list[str]:
        """Console lines the studio must not produce (Bokeh range warnings, missing JSON editor, ...)."""
        return [t for _, t in self.messages if any(n in t for n in self.NOISE)]


@contextlib.contextmanager
def browser_page(width: int = 1600, height: int = 1000, downloads: bool = True) -> Iterator[object]:
    """A fresh chromium page (playwright); skips the test when no browser is available."""
    path = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=downloads)
            page = context.new_page()
            page.set_default_timeout(30000)  # the shared test machine can be slow
            page.set_default_navigation_timeout(90000)
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """Save a full-page PNG under ``$TNSTUDIO_SCREENSHOTS`` (default /tmp/tnstudio_screenshots)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def drag(page, source, target, steps: int = 12) -> None:
    """Drag from the centre of ``source`` to the centre of ``target`` (locators) in small steps, as a hand does
    (React Flow starts a connection only after the pointer has moved)."""
    source.scroll_into_view_if_needed()
    a, b = source.bounding_box(), target.bounding_box()
    if a is None or b is None:
        raise AssertionError("a drag end is not on screen")
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=steps)
    page.mouse.up()


def choose_template(page, kind: str, timeout_s: float = 30.0) -> None:
    """Pick ``kind`` in the gallery and wait until the form has answered: its options shown or hidden and its
    activation enabled or disabled as the kind says. The server hides the options of kinds without them, which moves
    the Generate button up; a click computed before that move lands beside the button (seen as a lost Generate
    click in loaded full-suite runs)."""
    from engine.design.templates import TEMPLATES

    spec = TEMPLATES[kind]
    page.locator(".tn-g-kind select").select_option(label=spec.label)
    page.locator(".tn-g-lateral").wait_for(state="visible" if spec.options else "hidden", timeout=timeout_s * 1000)
    activation = page.locator(".tn-g-activation select")
    deadline = time.monotonic() + timeout_s
    while activation.is_disabled() == spec.nonlinear:
        assert time.monotonic() < deadline, f"the gallery's activation never followed the kind {kind!r}"
        time.sleep(0.05)
