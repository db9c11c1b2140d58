"""Every tab of the served studio in chromium, opened in turn as a new user does: Design, Train, Export, Inspect,
Network, Search, then the whole network on the Train and Export tabs.

The home holds a small finished design search, so every tab has something to show (its trials are runs for the
Train and Inspect tabs and points on the Search tab's scatter). The page must ask nothing of the internet and log
no page error, no console error or warning (Bokeh's range warnings, a deprecation, a stylesheet that failed to
load), and the server must log no error: a Bokeh model written from a click's callback, which Panel runs without the
document lock, shows up there (``_pending_writes should be non-None``), so the Inspect tab's bond clicks, slider and
Reset are exercised too; every field of the Search form is emptied (each once raised a ValueError on the server) and
its whole-number fields, like the Inspect tab's fine-tune epochs, refuse empty, ``abc`` and out-of-range entries with
the reason under the field. Screenshots of every tab at 1280 x 800 and 1600 x 1000 land in $TNSTUDIO_SCREENSHOTS
(``tab_<name>_<width>x<height>.png``).

A second test opens files of 25 MB, over the websocket's 20 MB message limit, in the Design tab's and the Network
tab's file choosers: each is refused in the browser with the size limit shown under the field, and the page stays
connected (a valid file opened next is opened).
"""
from __future__ import annotations

import json
import time

import optuna
import pytest

from engine.design.templates import make_template
from engine.search import Budget, LayerSpace, SearchSpec, run_search
from studio.app import create_app
from studio.state import StudioState

try:
    from tests.browser import Console, ServerLog, browser_page, require_browser, screenshot, serve_app
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from browser import Console, ServerLog, browser_page, require_browser, screenshot, serve_app

pytestmark = pytest.mark.browser
optuna.logging.set_verbosity(optuna.logging.WARNING)
TABS = ["Design", "Train", "Export", "Inspect", "Network", "Search"]
READY = {  # what shows that a tab has been drawn, with its content
    "Design": ".tn-canvas .react-flow__node",
    "Train": ".tn-run-table .tabulator-row",
    "Export": ".tn-export-code pre.tn-code",
    "Inspect": ".tn-inspect-canvas .react-flow__node",  # the drawing itself, not only its legend
    "Network": ".tn-net-table .tabulator-row",
    "Search": ".tn-search-plot canvas",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A studio home with a finished search of four trained trials (each one a run)."""
    require_browser()
    home = tmp_path_factory.mktemp("tabs_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TNSTUDIO_HOME", str(home))
        space = LayerSpace(64, 64, kinds=("ttn", "mpo"), legs=(3,), activations=("none",), per_bond=False,
                           bond_ranges=(("ttn", (2, 3)), ("mpo", (2, 3))))
        rep = run_search(SearchSpec(name="demo", space=space, budget=Budget(max_params=1500), trials=4, epochs=1,
                                    startup_trials=4), workers=0)
    assert rep.counts["trained"] >= 2
    return home


def show(page, tab: str) -> None:
    page.locator(".bk-tab", has_text=tab).first.click()
    try:
        page.locator(READY[tab]).first.wait_for(timeout=60000)
    except Exception:  # noqa: BLE001 - keep a picture of the tab that did not draw, then fail
        screenshot(page, f"tab_failed_{tab.lower()}")
        raise
    page.wait_for_timeout(800)  # late layout (plot sizes, the canvas fitting itself) settles before the picture


def clean(console: Console, server: ServerLog, outside: list[str]) -> None:
    assert outside == [], outside
    assert console.page_errors == [], console.page_errors
    noise = [(kind, text) for kind, text in console.messages if kind in ("error", "warning")]
    assert noise == [], noise[:5]
    assert server.records == [], "\n".join(server.records)


@pytest.mark.parametrize("size", [(1280, 800), pytest.param((1600, 1000), marks=pytest.mark.long)],
                         ids=["1280x800", "1600x1000"])
def test_every_tab_opens_clean(home, size, monkeypatch):
    monkeypatch.setenv("TNSTUDIO_HOME", str(home))
    w, h = size
    with ServerLog() as server, serve_app(lambda: create_app(state=StudioState(home=str(home)))) as url, \
            browser_page(w, h) as page:
        outside: list[str] = []
        page.on("request", lambda r: outside.append(r.url)
                if not r.url.startswith((url[:-1], "data:", "blob:")) else None)
        console = Console(page)
        t0 = time.monotonic()
        page.goto(url)
        page.locator(READY["Design"]).first.wait_for(timeout=90000)
        for tab in TABS:
            show(page, tab)
            screenshot(page, f"tab_{tab.lower()}_{w}x{h}")
        if size == (1280, 800):  # clicks whose callbacks run without the document lock change the plots
            show(page, "Inspect")
            label = page.locator(".tn-inspect-canvas [data-testid^='rf__edge-B:'] .react-flow__edge-textwrapper")
            bond = label.first.locator("xpath=..").get_attribute("data-testid") or ""
            label.first.click()
            name = bond.split(":", 1)[-1]
            page.locator(".tn-inspect-spectrum-title", has_text=name).wait_for(timeout=30000)
            handle = page.locator(".tn-inspect-slider .noUi-handle")
            handle.focus()
            handle.press("ArrowLeft")
            page.locator(".tn-inspect-readout .tn-i-readout[data-params]").wait_for(timeout=60000)
            page.locator(".tn-inspect-reset button").click()
            page.locator(".tn-inspect-readout", has_text="no truncation planned").wait_for(timeout=30000)
            epochs = page.locator(".tn-inspect-epochs input")  # over its bound: refused with the reason (was a
            epochs.fill("99999999999")  # ValueError on the server)
            epochs.press("Enter")
            page.locator(".tn-int-note", has_text="fine-tune epochs must be at most 10,000").wait_for(timeout=10000)
            assert epochs.input_value() == "3"
        if size == (1600, 1000):  # every field of the Search form emptied (the server once raised on each)
            show(page, "Search")
            fields = page.locator(".tn-search-form input[type=text], .tn-search-form input[type=number], "
                                  ".tn-search-form input:not([type])")
            assert fields.count() >= 9
            for k in range(fields.count()):
                fields.nth(k).fill("")
                fields.nth(k).press("Enter")
                page.wait_for_timeout(150)
            workers = page.locator(".tn-search-workers input")
            page.locator(".tn-int-note", has_text="Workers must be a whole number").wait_for(timeout=10000)
            assert workers.input_value() == "2"  # the value in force comes back
            for typed, reason in (("abc", "Workers must be a whole number"), ("99", "at most 64")):
                workers.fill(typed)
                workers.press("Enter")
                page.locator(".tn-int-note", has_text=reason).wait_for(timeout=10000)
            workers.fill("3")
            workers.press("Enter")
            page.locator(".tn-int-note", has_text="at most 64").wait_for(state="detached", timeout=10000)
            screenshot(page, f"search_fields_refused_{w}x{h}")
        # the whole network: the Network tab sends the user to the Train and Export tabs, set to the network
        show(page, "Network")
        page.locator(".tn-net-goto-train button").click()
        page.locator(".tn-net-train-card", has_text="Train the whole network").wait_for(timeout=30000)
        assert page.locator(".tn-train-launch").is_hidden()  # the design's form gives way to the network's card
        page.wait_for_timeout(500)
        screenshot(page, f"tab_train_network_{w}x{h}")
        show(page, "Network")
        page.locator(".tn-net-goto-export button").click()
        page.locator(".tn-net-export-card").wait_for(timeout=30000)
        page.locator(".tn-net-export button").click()
        page.locator(".tn-export-network-code pre.tn-code", has_text="class").wait_for(timeout=60000)
        page.wait_for_timeout(500)
        screenshot(page, f"tab_export_network_{w}x{h}")
        page.locator(".tn-export-what button", has_text="Current design").click()
        page.locator(".tn-download-code").wait_for(timeout=30000)
        page.wait_for_timeout(500)
        elapsed = time.monotonic() - t0
    clean(console, server, outside)
    assert elapsed < 80, f"opening every tab took {elapsed:.0f} s"


def test_oversized_uploads_are_refused_in_the_page(tmp_path, monkeypatch):
    require_browser()
    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path / "home"))
    big = tmp_path / "huge.json"
    big.write_bytes(b" " * 25_000_000)  # over Bokeh's 20 MB websocket message limit
    good = tmp_path / "tucker.json"
    good.write_text(make_template("tucker", 64, 64, 3).to_json())
    net = tmp_path / "net.json"
    apps = []

    def factory():
        app = create_app(state=StudioState(home=str(tmp_path / "home")))
        apps.append(app)
        return app

    with ServerLog() as server, serve_app(factory) as url, browser_page(1280, 800) as page:
        outside: list[str] = []
        page.on("request", lambda r: outside.append(r.url)
                if not r.url.startswith((url[:-1], "data:", "blob:")) else None)
        console = Console(page)
        page.goto(url)
        page.locator(READY["Design"]).first.wait_for(timeout=90000)
        chooser = page.locator(".tn-upload input[type=file]")
        chooser.set_input_files(str(big))
        note = page.locator(".tn-error[data-field='open']")
        note.wait_for(timeout=30000)
        assert "huge.json is 25,000,000 bytes" in note.inner_text() and "at most 2 MiB" in note.inner_text()
        # the connection is alive: the next file is opened
        chooser.set_input_files(str(good))
        page.locator(".tn-header .tn-name", has_text="tucker").wait_for(timeout=30000)
        assert apps[-1].state.design.name.startswith("tucker")
        # the Network tab's chooser: the same refusal, then a network file opens
        show(page, "Network")
        net.write_text(apps[-1].components["Network"].spec.to_json(inline=True))
        spec = json.loads(net.read_text())
        spec["name"] = "uploaded net"
        net.write_text(json.dumps(spec))
        chooser = page.locator(".tn-net-upload input[type=file]")
        chooser.set_input_files(str(big))
        page.locator(".tn-net-status .tn-net-error", has_text="at most 8 MiB").wait_for(timeout=30000)
        chooser.set_input_files(str(net))
        page.locator(".tn-net-status", has_text="uploaded net").wait_for(timeout=30000)
        screenshot(page, "upload_refused_network")
    clean(console, server, outside)
