"""End-to-end: the Inspect view of a finished run (made with ``tnstudio train`` in a temporary runs folder), served
on its own page in headless chromium: click a bond, see its spectrum, move the slider, truncate and fine-tune.

The page must raise no error and the server must log none (a Bokeh model changed off the session's thread shows
up there as ``_pending_writes should be non-None``). A screenshot lands in $TNSTUDIO_SCREENSHOTS.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math

import numpy as np
import pytest

from engine.analysis.runs import load_run_layer
from engine.cli import main
from engine.design.model import Design
from engine.train.launcher import wait
from engine.train.store import RunStore
from studio.inspect_view import InspectView
from studio.state import StudioState

try:
    from tests.browser import browser_page, require_browser, screenshot, serve_app
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from browser import browser_page, require_browser, screenshot, serve_app

pytestmark = pytest.mark.browser


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


def _cli(*argv: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(list(argv))


def test_inspect_a_finished_run_click_a_bond_and_truncate(tmp_path, monkeypatch):
    require_browser()
    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path / "home"))
    design_file, runs = tmp_path / "mpo.json", tmp_path / "runs"
    assert _cli("template", "mpo", "--in", "64", "--out", "64", "--bond", "4", "--in-factors", "4,4,4",
                "--out-factors", "4,4,4", "-o", str(design_file)) == 0
    assert _cli("train", str(design_file), "--dataset", "digits", "--epochs", "1", "--runs-dir", str(runs)) == 0
    (run,) = RunStore(runs).list_runs()
    assert run["status"] == "completed"
    layer = load_run_layer(run["id"], runs)
    views: list[InspectView] = []

    def factory():
        v = InspectView(StudioState(home=str(tmp_path / "home")), runs)
        views.append(v)
        return v

    errors = _Errors()
    logging.getLogger().addHandler(errors)
    page_errors: list[str] = []
    try:
        with serve_app(factory) as url, browser_page() as page:
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(url, timeout=90000)
            bond = page.get_by_test_id("rf__edge-B:r1")
            try:
                bond.wait_for(timeout=90000)  # the run's design on the canvas, bonds coloured by entropy
            except Exception:  # noqa: BLE001 - seen once in a loaded run (not again in 4 tries): say what was there
                shot = screenshot(page, "inspect_no_bond")
                v = views[-1] if views else None
                pytest.fail(f"bond r1 not drawn within 90 s; view source={getattr(v, 'source', None)!r}, "
                            f"error={getattr(v, 'error', None)!r}, page errors={page_errors}, edges="
                            f"{page.locator('.react-flow__edge').count()}, nodes="
                            f"{page.locator('.react-flow__node').count()}, screenshot {shot}")
            view = views[-1]
            assert view.wait_idle(120) and view.source == run["id"]
            page.locator(".tn-inspect-legend", has_text="entropy").wait_for()

            # click a bond: its spectrum (log scale) and the slider
            bond.locator(".react-flow__edge-textwrapper").click()
            page.locator(".tn-inspect-spectrum-title", has_text="r1").wait_for(timeout=30000)
            assert view.bond == "r1"
            page.locator(".tn-inspect-spectrum").wait_for()
            assert page.locator(".tn-inspect-spectrum canvas").count() > 0  # the Bokeh plot is drawn
            w = layer_w(layer)
            ref = cut_svals(layer.design, w, 1)[:4]
            np.testing.assert_allclose(view.spec_source.data["s"], ref, rtol=1e-5, atol=1e-6 * ref[0])
            assert type(view.spec_fig.y_scale).__name__ == "LogScale"

            # the slider keeps 2 of 4 values: error and params live
            handle = page.locator(".tn-inspect-slider .noUi-handle")
            handle.focus()
            handle.press("ArrowLeft")
            handle.press("ArrowLeft")
            readout = page.locator(".tn-inspect-readout .tn-i-readout[data-params='224']")
            readout.wait_for(timeout=60000)  # G0 4x4x4 + G1 4x4x4x2 + G2 2x4x4 = 64 + 128 + 32
            assert view.plan == {"r1": 2}
            shown = float(readout.get_attribute("data-error"))
            assert shown == pytest.approx(math.sqrt((ref[2:] ** 2).sum()) / np.linalg.norm(ref), rel=1e-4)
            screenshot(page, "inspect_view")

            # truncate and fine-tune: one epoch, as a child run of the run
            epochs = page.locator(".tn-inspect-epochs input")
            epochs.fill("1")
            epochs.press("Enter")
            page.locator(".tn-inspect-finetune button").click()
            page.locator(".tn-inspect-feedback", has_text="Launched child run").wait_for(timeout=90000)
            child_id = view.launched
            assert child_id and view.epochs == 1
            child = wait(child_id, runs, timeout=300)
            assert child["status"] == "completed" and child["parent"] == run["id"]
            full = RunStore(runs).get_run(child_id)
            assert Design.from_dict(full["design"]).dim("r1") == 2 and full["config"]["epochs"] == 1
            page.wait_for_timeout(500)
    finally:
        logging.getLogger().removeHandler(errors)
    assert page_errors == []
    assert [r for r in errors.records if "cotengra" not in r] == []


def layer_w(layer) -> np.ndarray:
    import torch

    from engine.nn import TNLinear

    tn = TNLinear(layer.design, init=False, dtype=torch.float64)
    tn.load_state_dict({k: v.double() for k, v in layer.state.items()})
    with torch.no_grad():
        return tn.weight().numpy()


def cut_svals(design: Design, w: np.ndarray, site: int) -> np.ndarray:
    legs = design.open_legs
    left = [f"i{k}" for k in range(site + 1)] + [f"o{k}" for k in range(site + 1)]
    t = np.transpose(w.reshape([design.dim(i) for i in legs]),
                     [legs.index(i) for i in left] + [legs.index(i) for i in legs if i not in left])
    return np.linalg.svd(t.reshape(math.prod(design.dim(i) for i in left), -1), compute_uv=False)
