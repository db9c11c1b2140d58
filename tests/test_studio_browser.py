"""End-to-end: the served studio in headless chromium (playwright).

One server and one page go through what a user does first: generate every template at two window sizes (each must
fit the view, boxes must not overlap, the zoom buttons must not cover them), change a bond dimension on the canvas
and see the engine's parameter count, type values the studio refuses and see why, confirm a much larger layer,
connect two tensors by dragging, double-click a button that adds a template, download the design JSON and open it
again. The page must load nothing from the internet, log no page error and no console noise, and the server must
log no error. Screenshots land in $TNSTUDIO_SCREENSHOTS (default /tmp/tnstudio_screenshots).
"""
from __future__ import annotations

import json
import time

import pytest

from engine.design.model import Design
from engine.design.templates import TEMPLATES, make_template
from studio.app import create_app
from studio.state import StudioState
from studio.widgets import COOLDOWN_S

try:
    from tests.browser import (Console, ServerLog, browser_page, choose_template, drag, require_browser, screenshot,
                               serve_app)
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from browser import (Console, ServerLog, browser_page, choose_template, drag, require_browser, screenshot,
                         serve_app)

pytestmark = pytest.mark.browser
CANVAS = ".tn-canvas"


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    require_browser()
    home = tmp_path_factory.mktemp("studio_home")
    apps = []

    def factory():
        app = create_app(state=StudioState(home=str(home)))
        apps.append(app)
        return app

    with ServerLog() as server, serve_app(factory) as url, browser_page() as page:
        outside: list[str] = []  # the app must load nothing from the internet
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url[:-1]) else None)
        console = Console(page)
        page.goto(url)
        page.locator(CANVAS).get_by_test_id("rf__node-T:top").wait_for(timeout=90000)
        yield page, apps
        assert [u for u in outside if not u.startswith(("data:", "blob:"))] == []
        assert console.page_errors == [] and console.errors == [], (console.page_errors, console.errors)
        assert console.noise() == [], console.noise()[:5]
        assert server.records == [], "\n".join(server.records)


def wait_value(locator, value: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while locator.input_value() != value:
        assert time.monotonic() < deadline, f"the field shows {locator.input_value()!r}, not {value!r}"
        time.sleep(0.1)


def wait_params(page, value: int) -> None:
    try:
        page.locator(f".tn-metric-params[data-value='{value}']").wait_for(timeout=30000)
    except Exception:
        screenshot(page, "studio_params_timeout")
        raise AssertionError(f"the cards never showed {value} params; header: "
                             f"{page.locator('.tn-header').first.inner_text()!r}") from None


def generate(page, kind: str, inf: int = 256, outf: int = 256, bond: int = 4, lateral: str | None = None) -> None:
    choose_template(page, kind)
    for sel, v in ((".tn-g-in input", inf), (".tn-g-out input", outf), (".tn-g-bond input", bond)):
        field = page.locator(sel)
        if field.input_value() != str(v):
            field.fill(str(v))
            field.press("Enter")
    if TEMPLATES[kind].options:
        page.locator(".tn-g-lateral select").select_option(lateral or "none")
    page.locator(".tn-generate button").click()


def boxes(page, selector: str) -> dict[str, dict]:
    return dict(page.locator(selector).evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect(); "
        "return [e.getAttribute('data-id') || e.className, {x: r.x, y: r.y, w: r.width, h: r.height}] })"))


def overlap(a: dict, b: dict, margin: float = 0.0) -> bool:
    return (a["x"] < b["x"] + b["w"] - margin and b["x"] < a["x"] + a["w"] - margin
            and a["y"] < b["y"] + b["h"] - margin and b["y"] < a["y"] + a["h"] - margin)


@pytest.mark.parametrize("size", [(1600, 1000), pytest.param((1280, 800), marks=pytest.mark.long)])
def test_every_template_fits_the_view_without_overlaps(studio, size):
    page, apps = studio
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.wait_for_timeout(500)
    for kind in TEMPLATES:
        lateral = "all" if TEMPLATES[kind].options else None
        generate(page, kind, lateral=lateral)
        expected = make_template(kind, 256, 256, 4, lateral=lateral)
        wait_params(page, expected.params)
        ids = {f"T:{t.id}" for t in expected.tensors}
        page.locator(CANVAS).get_by_test_id(f"rf__node-T:{expected.tensors[-1].id}").wait_for()
        page.wait_for_timeout(600)  # the viewport moves to the fit
        canvas = boxes(page, f"{CANVAS} .react-flow")
        area = next(iter(canvas.values()))
        nodes = boxes(page, f"{CANVAS} .react-flow__node")
        assert ids <= set(nodes), kind
        for nid, b in nodes.items():  # everything in view
            assert area["x"] - 1 <= b["x"] and b["x"] + b["w"] <= area["x"] + area["w"] + 1, (kind, nid, b, area)
            assert area["y"] - 1 <= b["y"] and b["y"] + b["h"] <= area["y"] + area["h"] + 1, (kind, nid, b, area)
        tensors = [(k, v) for k, v in nodes.items() if k.startswith("T:")]
        for i in range(len(tensors)):
            for j in range(i + 1, len(tensors)):
                assert not overlap(tensors[i][1], tensors[j][1], 1), (kind, tensors[i][0], tensors[j][0])
        controls = next(iter(boxes(page, f"{CANVAS} .react-flow__controls").values()))
        assert not any(overlap(controls, b) for b in nodes.values()), kind  # zoom buttons cover no label
        screenshot(page, f"template_{kind}_{size[0]}x{size[1]}")
    page.set_viewport_size({"width": 1600, "height": 1000})


DRAWN = ("els => els.map(e => { const l = e.querySelector('.rf-node-label'); return [e.getAttribute('data-id'), "
         "[e.offsetWidth, e.offsetHeight, l ? l.scrollWidth - l.clientWidth : 0]] })")


@pytest.mark.parametrize("kind, inf, outf, bond", [("mpo", 1024, 1024, 16), ("tensor_ring", 4096, 1024, 32),
                                                   ("cp", 256, 256, 4), ("mera", 512, 256, 4)])
def test_the_canvas_draws_every_box_at_the_layouts_size(studio, kind, inf, outf, bond):
    """The layout's spacing, overlap checks and fits use the boxes the page draws: every node (tensors with long
    shape lines, legs, CP's hub) is drawn at its layout box's size, and no label is cut in this browser's font
    (DejaVu Sans, the widest common one). Before, a tensor's box grew with the browser's font (here up to 1.29x
    the layout's width), so boxes placed apart could overlap."""
    from studio.graph import canvas_layout

    page, apps = studio
    expected = make_template(kind, inf, outf, bond)
    generate(page, kind, inf=inf, outf=outf, bond=bond)
    wait_params(page, expected.params)
    deadline, mismatch = time.monotonic() + 30, None
    while True:
        _, _, planned = canvas_layout(apps[-1].state.design)
        drawn = dict(page.locator(f"{CANVAS} .react-flow__node").evaluate_all(DRAWN))
        mismatch = [(nid, drawn.get(nid), [round(v) for v in box[2:]]) for nid, box in planned.items()
                    if nid not in drawn or abs(drawn[nid][0] - box[2]) > 1 or abs(drawn[nid][1] - box[3]) > 1]
        if not mismatch and set(drawn) == set(planned):
            break
        assert time.monotonic() < deadline, (kind, mismatch[:5], sorted(set(drawn) ^ set(planned))[:5])
        page.wait_for_timeout(200)
    assert any(nid.startswith("T:") for nid in drawn)
    cut = {nid: v[2] for nid, v in drawn.items() if v[2] > 0}
    assert not cut, (kind, cut)  # px of label beyond its box


def test_generate_mera_and_change_bond_on_canvas(studio):
    page, apps = studio
    generate(page, "mera", inf=512)
    expected = make_template("mera", 512, 256, 4)
    wait_params(page, expected.params)
    page.locator(CANVAS).get_by_test_id("rf__node-T:W0_0").wait_for()
    assert apps[-1].state.design.in_features == 512
    # select the bond s0 on the canvas (click its label) and give it dimension 7 in the inspector
    page.locator(CANVAS).get_by_test_id("rf__edge-B:s0").locator(".react-flow__edge-textwrapper").click()
    field = page.locator(".tn-field-dim-s0 input")
    for typed, reason in (("0", "dim must be an integer >= 1"), ("-3", "dim must be an integer >= 1"),
                          ("abc", "must be a whole number")):
        field.fill(typed)
        field.press("Enter")
        note = page.locator(".tn-error[data-field='dim:s0']", has_text=f"got {typed if typed != 'abc' else repr(typed)}")
        note.wait_for()
        assert reason in note.inner_text()
        wait_value(field, "4")  # the field shows the committed value again
    field.fill("7")
    field.press("Enter")
    expected.indices["s0"].dim = 7
    wait_params(page, expected.params)
    assert page.locator(".tn-error[data-field='dim:s0']").count() == 0  # stale refusals are gone
    assert apps[-1].state.report.params == expected.params
    page.locator(CANVAS).get_by_test_id("rf__edge-B:s0").get_by_text("s0 · 7").wait_for()
    # a much larger layer is asked about first
    field.fill("5000")
    field.press("Enter")
    warn = page.locator(".tn-warn[data-field='dim:s0']")
    warn.wait_for()
    assert "larger than dense" in warn.inner_text()
    screenshot(page, "studio_confirm")
    page.locator(".tn-inspector .tn-confirm button").click()
    expected.indices["s0"].dim = 5000
    wait_params(page, expected.params)
    assert "larger" in page.locator(".tn-cost-cards .tn-card").first.inner_text()
    screenshot(page, "studio_mera")


def test_connect_two_tensors_by_dragging(studio):
    page, apps = studio
    generate(page, "ttn")
    wait_params(page, make_template("ttn", 256, 256, 4).params)
    before = len(apps[-1].state.design.indices)
    page.locator(".tn-add-tensor button").click()
    node = page.locator(CANVAS).get_by_test_id("rf__node-T:T0")
    node.wait_for()
    page.wait_for_timeout(500)
    drag(page, node.locator("[data-handleid='ls']"),
         page.locator(CANVAS).get_by_test_id("rf__node-T:top").locator("[data-handleid='r']"))
    s = apps[-1].state
    deadline = time.monotonic() + 30
    while not s.design.tensor("T0").indices:
        if time.monotonic() > deadline:
            screenshot(page, "studio_connect_failed")
            raise AssertionError(f"no bond drawn: {s.message}")
        page.wait_for_timeout(100)
    page.locator(f"{CANVAS} [data-testid^='rf__edge-B:b']").first.wait_for(timeout=30000)
    bond = s.design.tensor("T0").indices[0]
    assert sorted(s.design.users()[bond]) == ["T0", "top"] and len(s.design.indices) == before + 1
    assert s.problems == []
    wait_params(page, s.design.params)
    screenshot(page, "studio_connected")


def test_a_double_click_adds_one_copy(studio):
    page, apps = studio
    generate(page, "mpo", 64, 32, 2)
    wait_params(page, make_template("mpo", 64, 32, 2).params)
    n = len(apps[-1].state.design.tensors)
    add = apps[-1].design.gallery.add_button
    clicks = add.clicks
    page.locator(".tn-add-template button").dblclick()
    page.locator(CANVAS).get_by_test_id("rf__node-T:G0_1").wait_for()
    page.wait_for_timeout(1500)
    assert len(apps[-1].state.design.tensors) == 2 * n
    assert page.locator(CANVAS).get_by_test_id("rf__node-T:G0_2").count() == 0
    assert not page.locator(".tn-add-template button").is_disabled()  # enabled again once done
    # the page sent one click: the second one of the double click stopped in the browser (a loaded server cannot
    # take it for a new click however late it gets there), while a single click later is sent as always
    assert add.clicks == clicks + 1
    page.wait_for_timeout(2000 * COOLDOWN_S)  # past the server's own window for a double click's second half
    page.locator(".tn-add-template button").click()
    page.locator(CANVAS).get_by_test_id("rf__node-T:G0_2").wait_for()
    assert add.clicks == clicks + 2 and len(apps[-1].state.design.tensors) == 3 * n


def test_download_and_reopen_design(studio, tmp_path):
    page, apps = studio
    generate(page, "mera")
    wait_params(page, make_template("mera", 256, 256, 4).params)
    with page.expect_download() as info:
        page.locator(".tn-download button").click()
    path = tmp_path / "design.json"
    info.value.save_as(path)
    saved = Design.from_json(path.read_text())
    assert saved.to_dict() == json.loads(apps[-1].state.to_json())
    # change the design, then open the downloaded file again
    generate(page, "tucker")
    wait_params(page, make_template("tucker", 256, 256, 4).params)
    page.locator(".tn-upload input[type=file]").set_input_files(str(path))
    wait_params(page, saved.params)
    assert apps[-1].state.design.fingerprint() == saved.fingerprint()
    page.locator(CANVAS).get_by_test_id("rf__node-T:W0_0").wait_for()
    # the name field follows the opened design (a moment after the canvas on a loaded machine)
    deadline = time.monotonic() + 30
    while page.locator(".tn-save-name input").input_value() != saved.name:
        assert time.monotonic() < deadline, page.locator(".tn-save-name input").input_value()
        page.wait_for_timeout(100)
    # a broken file is refused with a message under the upload, and the design stays
    bad = tmp_path / "bad3.json"
    bad.write_text('{"format": "tnstudio-design", "version": 1}')
    page.locator(".tn-upload input[type=file]").set_input_files(str(bad))
    note = page.locator(".tn-error[data-field='open']")
    note.wait_for()
    assert "target" in note.inner_text() and "bad3.json" in note.inner_text()
    assert apps[-1].state.design.fingerprint() == saved.fingerprint()
    page.locator(".tn-header .tn-msg.refused", has_text="bad3.json").wait_for()  # also in the status line
    # the next edit clears the stale message
    page.locator(".tn-undo button").click()
    page.locator(".tn-error[data-field='open']").wait_for(state="detached")
    page.locator(".tn-header .tn-msg", has_text="undid").wait_for()
    assert "bad3.json" not in page.locator(".tn-header .tn-msg").inner_text()
    screenshot(page, "studio_reopened")
