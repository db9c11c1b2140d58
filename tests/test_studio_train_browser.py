"""End-to-end: launch a short digits run from the Train tab (a double click launches one run), watch it stream and
finish, download the export.

Screenshots of both tabs land in $TNSTUDIO_SCREENSHOTS (default /tmp/tnstudio_screenshots).
"""
from __future__ import annotations

import time

import pytest
import torch

from engine.nn.export import layer_state_dict
from engine.nn.linear import TNLinear
from engine.train.store import RunStore
from studio.app import create_app
from studio.state import StudioState

try:
    from tests.browser import Console, ServerLog, browser_page, require_browser, screenshot, serve_app
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from browser import Console, ServerLog, browser_page, require_browser, screenshot, serve_app

pytestmark = pytest.mark.browser


def test_launch_a_run_follow_it_and_download_the_export(tmp_path):
    require_browser()
    apps = []

    def factory():
        s = StudioState(home=str(tmp_path))
        s.generate("mpo", 64, 32, 4)  # digits MLP: 64 -> [TN 64x32] -> 10, a few seconds per epoch
        app = create_app(state=s)
        apps.append(app)
        return app

    with ServerLog() as server, serve_app(factory) as url, browser_page() as page:
        console = Console(page)
        page.goto(url, timeout=90000)
        page.locator(".bk-tab", has_text="Train").click()
        train = apps[-1].components["Train"]
        page.locator(".tn-train-plan", has_text="TN 64×32").wait_for(timeout=30000)
        page.locator(".tn-curves-empty", has_text="No runs ticked").wait_for()  # a placeholder, not bare plots
        epochs = page.locator(".tn-train-epochs input")
        epochs.fill("1")
        epochs.press("Enter")
        # the checkbox ticks from its label too
        for want in (True, False):
            page.locator(".tn-train-baseline label").click()
            deadline = time.monotonic() + 20
            while train.baseline.value != want:
                assert time.monotonic() < deadline, "clicking the label did not tick the box"
                page.wait_for_timeout(100)
        page.locator(".tn-train-launch button").dblclick()
        page.locator(".tn-train-feedback", has_text="Launched").wait_for(timeout=30000)
        page.wait_for_timeout(1500)
        (rid,) = [r["id"] for r in RunStore(train.root).list_runs()]  # one run for a double click
        # the curve grows as rows arrive, then the run completes (status in the table, progress 100)
        seen = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            points = train.curves[rid].points if rid in train.curves else 0
            if not seen or points != seen[-1]:
                seen.append(points)
            if page.locator(".tn-status-completed").count():
                # the poll that showed "completed" may have streamed the last rows after the read above
                seen.append(train.curves[rid].points if rid in train.curves else 0)
                break
            page.wait_for_timeout(250)
        if not page.locator(".tn-status-completed").count():
            screenshot(page, "studio_train_not_completed")
            pytest.fail(f"run {rid} not shown completed: {RunStore(train.root).get_run(rid)['status']}, table "
                        f"{train.table.value.to_dict('records')}, points seen {seen}")
        page.wait_for_timeout(1500)  # one more poll after the final rows
        store_rows = RunStore(train.root).metrics(rid)
        assert train.curves[rid].points == len(store_rows) > 0  # every row streamed, none twice
        assert seen == sorted(seen) and seen[-1] > 0
        assert ">100%<" in train.table.value.iloc[0]["progress"]
        assert page.locator(".tn-run-table .tabulator-row").count() == 1
        page.locator(".tn-run-table .tn-progress", has_text="100%").wait_for()
        page.locator(".tn-curve-legend", has_text=rid).wait_for()
        # a 1600-wide window gives its width to the run's name and design, not to the last column: both show whole
        for field in ("name", "design"):
            cell = page.locator(f".tn-run-table .tabulator-row .tabulator-cell[tabulator-field='{field}']")
            assert cell.evaluate("el => el.scrollWidth <= el.clientWidth"), (field, cell.inner_text())
        screenshot(page, "studio_train")

        # Export tab: pick the run's weights, download the module and the weights, check they reproduce the run
        page.locator(".bk-tab", has_text="Export").click()
        export = apps[-1].components["Export"]
        export.refresh_runs()
        label = next(o for o in export.weights.options if o.startswith(rid))
        page.locator(".tn-export-weights select").select_option(label=label)
        page.locator(".tn-download-weights button").wait_for(timeout=20000)
        page.locator(".tn-export-code", has_text=f"run {rid}").wait_for(timeout=20000)
        with page.expect_download(timeout=20000) as dl:
            page.locator(".tn-download-code button").click()
        code_path = tmp_path / dl.value.suggested_filename
        dl.value.save_as(code_path)
        with page.expect_download(timeout=20000) as dl_w:
            page.locator(".tn-download-weights button").click()
        weights_path = tmp_path / dl_w.value.suggested_filename
        dl_w.value.save_as(weights_path)
        screenshot(page, "studio_export")
    assert console.page_errors == [] and console.errors == [], (console.page_errors, console.errors)
    assert console.noise() == [], console.noise()[:5]
    assert server.records == [], "\n".join(server.records)

    assert code_path.name == "mpo_64x32_chi_4.py" and weights_path.name == "mpo_64x32_chi_4.pt"
    code = code_path.read_text()
    ns: dict = {}
    exec(compile(code, str(code_path), "exec"), ns)
    layer = ns["Layer"]()
    layer.load_state_dict(torch.load(weights_path, weights_only=True))
    run = RunStore(train.root).get_run(rid)
    ckpt = torch.load(run["checkpoint"], weights_only=True)
    reference = TNLinear(run["design"])
    reference.load_state_dict(layer_state_dict(ckpt["model"], reference.design))
    x = torch.randn(8, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-4, atol=1e-5)
