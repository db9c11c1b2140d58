"""A random user in chromium: clicks, typing, choices and ticks anywhere in the studio, on every tab.

Each step picks, with a seeded generator, one of: open a tab, click a visible button (not those that start long
work: training, a search, a fine-tune, or downloads), type a hostile or ordinary value into a visible field and
press Enter (empty, ``0``, ``-1``, ``abc``, ``nan``, ``2GiB``, ``8,8``, 11 digits, 80 characters, ...), choose an
option of a visible select, or tick a checkbox; then waits 50-600 ms. Whatever it does, the page must log no error
and the server no error record: every refusal is a message in the page, never a traceback. Such a session found a
``ValueError`` on the server for an emptied whole-number field of the Search tab and for fine-tune epochs over
their bound on the Inspect tab (both now refused under the field); against the code before those fixes, this test
failed for two of seeds 1-3 at 150 steps, and for seed 2 again in a later run (what is visible depends on timing, so
a seed's session repeats only roughly). ``$TNSTUDIO_MONKEY_SEEDS`` (default ``0``) and
``$TNSTUDIO_MONKEY_STEPS`` (default 40) make longer sessions; a failure names the seed and the last steps, and
leaves a screenshot (``monkey_<seed>.png``).
"""
from __future__ import annotations

import os
import random

import pytest

from studio.app import create_app
from studio.state import StudioState

try:
    from tests.browser import Console, ServerLog, browser_page, require_browser, screenshot, serve_app
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from browser import Console, ServerLog, browser_page, require_browser, screenshot, serve_app

pytestmark = pytest.mark.browser
SEEDS = [int(s) for s in os.environ.get("TNSTUDIO_MONKEY_SEEDS", "0").split(",") if s.strip()]
STEPS = int(os.environ.get("TNSTUDIO_MONKEY_STEPS", "40"))
VALUES = ["", " ", "0", "-1", "1", "2", "3", "4", "7", "64", "256", "1.5", "1e9", "nan", "abc", "2,2", "4,4,4",
          "8,8", "2GiB", "0B", "99999999999", "x" * 80]
LONG_WORK = ("Launch", "Start", "fine-tune", "Train", "Download", "Stop")  # buttons that start (or end) real work
FIELDS = "input[type=text]:visible, input[type=number]:visible, input:not([type]):visible"


def _pick(page, rng: random.Random, selector: str):
    """One of the elements ``selector`` finds, at random; ``None`` when there is none."""
    found = page.locator(selector)
    n = found.count()
    return found.nth(rng.randrange(n)) if n else None


def _step(page, rng: random.Random) -> str:
    """One random action on whatever is visible; returns what it did."""
    r = rng.random()
    kind = ("tab" if r < 0.12 else "button" if r < 0.5 else "field" if r < 0.8 else "select" if r < 0.9
            else "checkbox")
    el = _pick(page, rng, {"tab": ".bk-tab", "button": "button:visible", "field": FIELDS, "select": "select:visible",
                           "checkbox": "input[type=checkbox]:visible"}[kind])
    if el is None:
        return f"no {kind}"
    if kind == "tab":
        name = el.inner_text()
        el.click()
        return f"tab {name}"
    if kind == "button":
        text = " ".join((el.inner_text() or "").split())[:40]
        if any(w in text for w in LONG_WORK):
            return f"left {text!r}"
        el.click(timeout=3000)
        return f"click {text!r}"
    if kind == "field":
        value = rng.choice(VALUES)
        label = el.get_attribute("placeholder") or el.input_value()[:20]
        el.fill(value)
        el.press("Enter")
        return f"type {value[:20]!r} into the field showing {label!r}"
    if kind == "select":
        options = el.locator("option").all_inner_texts()
        if not options:
            return "empty select"
        choice = rng.choice(options)
        el.select_option(label=choice)
        return f"choose {choice!r}"
    el.click(timeout=3000)
    return "tick a checkbox"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_user_never_meets_a_traceback(seed, tmp_path, monkeypatch):
    require_browser()
    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path))
    rng = random.Random(seed)
    done: list[str] = []
    with ServerLog() as server, serve_app(lambda: create_app(state=StudioState(home=str(tmp_path)))) as url, \
            browser_page(1400, 900) as page:
        console = Console(page)
        page.set_default_timeout(5000)
        page.goto(url, timeout=90000)
        page.locator(".tn-canvas .react-flow__node").first.wait_for(timeout=90000)
        for _ in range(STEPS):
            try:
                done.append(_step(page, rng))
            except Exception as e:  # noqa: BLE001 - an element that moved or hid meanwhile: the next step goes on
                done.append(f"(skipped: {type(e).__name__})")
            page.wait_for_timeout(rng.choice([50, 200, 600]))
            if console.page_errors or server.records:
                break
        page.wait_for_timeout(2000)  # late answers of the last steps
        if console.page_errors or console.errors or server.records:
            screenshot(page, f"monkey_{seed}")
    last = "\n".join(done[-15:])
    assert console.page_errors == [] and console.errors == [], (seed, console.page_errors, console.errors, last)
    assert console.noise() == [], (seed, console.noise()[:5], last)
    assert server.records == [], f"seed {seed}, last steps:\n{last}\n\n" + "\n".join(server.records)[:4000]
