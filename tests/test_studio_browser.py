"""End-to-end: the served studio in headless chromium (playwright).

One server and one page go through the story a user would: generate a MERA, change a bond dimension on the
canvas and see the engine's parameter count, connect two tensors by dragging, download the design JSON and open it
again. Screenshots land in $TNSTUDIO_SCREENSHOTS (default /tmp/tnstudio_screenshots).
"""
from __future__ import annotations

import json

import pytest

from engine.design.model import Design
from engine.design.templates import make_template
from studio.app import create_app
from studio.state import StudioState

try:
    from tests.browser import browser_page, require_browser, screenshot, serve_app
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from browser import browser_page, require_browser, screenshot, serve_app

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    require_browser()
    home = tmp_path_factory.mktemp("studio_home")
    states: list[StudioState] = []

    def factory():
        s = StudioState(home=str(home))
        states.append(s)
        return create_app(state=s)

    with serve_app(factory) as url, browser_page() as page:
        outside: list[str] = []  # the app must load nothing from the internet
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(url[:-1]) else None)
        page.goto(url)
        page.get_by_test_id("rf__node-T:top").wait_for(timeout=60000)
        yield page, states
        assert [u for u in outside if not u.startswith(("data:", "blob:"))] == []


def params_shown(page) -> int:
    return int(page.locator(".tn-metric-params").first.get_attribute("data-value"))


def wait_params(page, value: int) -> None:
    page.locator(f".tn-metric-params[data-value='{value}']").wait_for(timeout=30000)


def test_generate_mera_and_change_bond_on_canvas(studio):
    page, states = studio
    page.locator(".tn-g-kind select").select_option(label="MERA")
    page.locator(".tn-g-in input").fill("512")
    page.locator(".tn-g-in input").press("Enter")
    page.locator(".tn-generate button").click()
    expected = make_template("mera", 512, 256, 4)
    wait_params(page, expected.params)
    page.get_by_test_id("rf__node-T:W0_0").wait_for()
    assert states[-1].design.in_features == 512
    # select the bond s0 on the canvas (click its label) and give it dimension 7 in the inspector
    page.get_by_test_id("rf__edge-B:s0").locator(".react-flow__edge-textwrapper").click()
    field = page.locator(".tn-field-dim-s0 input")
    field.fill("7")
    field.press("Enter")
    expected.indices["s0"].dim = 7
    wait_params(page, expected.params)
    assert params_shown(page) == states[-1].report.params == expected.params
    page.get_by_test_id("rf__edge-B:s0").get_by_text("s0 · 7").wait_for()  # the edge shows the new dimension
    screenshot(page, "studio_mera")


def test_connect_two_tensors_by_dragging(studio):
    page, states = studio
    before = len(states[-1].design.indices)
    page.locator(".tn-add-tensor button").click()
    node = page.get_by_test_id("rf__node-T:T0")
    node.wait_for()
    page.locator(".react-flow__controls-fitview").click()
    page.wait_for_timeout(400)
    node.locator(".react-flow__handle-left").drag_to(
        page.get_by_test_id("rf__node-T:top").locator(".react-flow__handle-right"))
    page.locator("[data-testid^='rf__edge-B:b']").first.wait_for(timeout=30000)
    s = states[-1]
    bond = next(i for i in s.design.tensor("T0").indices)
    assert sorted(s.design.users()[bond]) == ["T0", "top"] and len(s.design.indices) == before + 1
    assert s.problems == []
    wait_params(page, s.design.params)
    screenshot(page, "studio_connected")


def test_download_and_reopen_design(studio, tmp_path):
    page, states = studio
    with page.expect_download() as info:
        page.locator(".tn-download").click()
    path = tmp_path / "design.json"
    info.value.save_as(path)
    saved = Design.from_json(path.read_text())
    assert saved.to_dict() == json.loads(states[-1].to_json())
    # change the design, then open the downloaded file again
    page.locator(".tn-g-kind select").select_option(label="Tucker")
    page.locator(".tn-generate button").click()
    wait_params(page, make_template("tucker", 512, 256, 4).params)
    page.locator(".tn-upload input[type=file]").set_input_files(str(path))
    wait_params(page, saved.params)
    assert states[-1].design.fingerprint() == saved.fingerprint()
    page.get_by_test_id("rf__node-T:T0").wait_for()
    # a broken file is refused with a message, and the design stays
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "tnstudio-design", "version": 1}')
    page.locator(".tn-upload input[type=file]").set_input_files(str(bad))
    page.locator(".tn-error[data-field='open']").wait_for()
    assert "target" in page.locator(".tn-error[data-field='open']").inner_text()
    assert states[-1].design.fingerprint() == saved.fingerprint()
    screenshot(page, "studio_reopened")
