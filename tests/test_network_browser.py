"""The Network tab in a browser: apply a bulk rule, see the totals, train an MNIST-1D network with TN layers; the
Network tab and the Train tab's form come back after a reload.

``test_studio_network_tab_trains_an_mnist1d_network`` drives the whole studio (``studio.app.create_app``), whose
optional-tab list (``studio.app.OPTIONAL_TABS``) shows ``studio.network_view.NetworkView`` as the Network tab; it
fails with that reason if the tab is missing. There the network is trained on the Train tab (the Network tab's
"Train it" button shows it, set to the current network). ``test_network_view_trains_an_mnist1d_network`` serves the
tab's view alone, with its own train card (``long``: ``make test-all``; the whole studio's test covers the tab in
``make test``).
"""
from __future__ import annotations

import time

import pytest

from tests.browser import browser_page, screenshot, serve_app

pytestmark = pytest.mark.browser


def _train_in_page(page, name: str, on_train_tab: bool = False) -> None:
    page.locator(".tn-net-table .tabulator-row", has_text="fc2").first.wait_for(timeout=90000)
    rule = page.locator(".tn-net-rule input")
    rule.fill("linear:ttn:4:gelu:min=20000")
    page.locator(".tn-net-apply button").click()
    page.locator(".tn-net-totals[data-params='13978']").wait_for(timeout=60000)
    page.locator(".tn-net-table .tabulator-row", has_text="fc2 ttn chi=4 gelu").wait_for(timeout=30000)
    if on_train_tab:
        page.locator(".tn-net-goto-train button").click()
        page.locator(".tn-net-train-summary", has_text="13,978 params").wait_for(timeout=30000)
    epochs = page.locator(".tn-net-epochs input")
    epochs.fill("1")
    epochs.press("Enter")
    page.locator(".tn-net-device select").select_option("cpu")
    page.locator(".tn-net-launch button").click()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if page.locator(".tn-net-run-line[data-status='completed']").count():
            break
        if page.locator(".tn-net-run-line[data-status='failed']").count():
            break
        time.sleep(1)
    screenshot(page, name)
    status = " ".join(page.locator(".tn-net-run-line").all_inner_texts())
    assert "completed: test accuracy" in status, status


@pytest.mark.long
def test_network_view_trains_an_mnist1d_network(tmp_path):
    import panel as pn

    from studio.network_view import NetworkView
    from studio.state import StudioState

    def factory():
        pn.extension("tabulator")
        state = StudioState(home=str(tmp_path), refine_s=0, autosave=False)
        return NetworkView(state, tmp_path).__panel__()

    with serve_app(factory) as url, browser_page() as page:
        page.goto(url)
        _train_in_page(page, "network_view_trained")


def test_studio_network_tab_trains_an_mnist1d_network(tmp_path, monkeypatch):
    from studio.app import create_app

    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path))
    with serve_app(lambda: create_app(str(tmp_path))) as url, browser_page() as page:
        page.goto(url)
        tab = page.locator(".bk-tab", has_text="Network")
        try:
            tab.wait_for(timeout=60000)
        except Exception:  # noqa: BLE001 - the reason, not playwright's timeout
            pytest.fail("the studio has no Network tab: studio.app.OPTIONAL_TABS should list "
                        "('Network', 'studio.network_view', 'NetworkView', ...)")
        tab.click()
        _train_in_page(page, "studio_network_tab_trained", on_train_tab=True)


def test_a_reloaded_page_brings_the_network_back(tmp_path, monkeypatch):
    """The Network tab lost its network on a reload (rules, overrides, canvas edits); it is autosaved with the
    browser tab's draft id (the page's URL) and restored, in the whole studio."""
    from studio.app import create_app

    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path))
    page_errors: list[str] = []
    with serve_app(lambda: create_app(str(tmp_path))) as url, browser_page() as page:
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto(url)
        page.wait_for_url("**draft=*", timeout=60000)  # the tab's draft id, written into its URL
        page.locator(".bk-tab", has_text="Network").click()
        page.locator(".tn-net-table .tabulator-row", has_text="fc2").first.wait_for(timeout=90000)
        page.locator(".tn-net-rule input").fill("linear:ttn:4:gelu:min=20000")
        page.locator(".tn-net-apply button").click()
        page.locator(".tn-net-totals[data-params='13978']").wait_for(timeout=60000)
        page.reload()
        page.locator(".bk-tab", has_text="Network").click()
        page.locator(".tn-net-totals[data-params='13978']").wait_for(timeout=90000)
        page.locator(".tn-net-table .tabulator-row", has_text="fc2 ttn chi=4 gelu").wait_for(timeout=30000)
        page.locator(".tn-net-status", has_text="restored").wait_for(timeout=30000)
        screenshot(page, "network_restored")
    assert page_errors == []


def test_a_reloaded_page_brings_the_train_form_back(tmp_path, monkeypatch):
    """The Train tab's New-run form was lost on a reload (a tuned learning rate, the data set, epochs): it is
    autosaved with the browser tab's draft id and restored, in the whole studio."""
    from studio.app import create_app

    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path))
    page_errors: list[str] = []
    with serve_app(lambda: create_app(str(tmp_path))) as url, browser_page() as page:
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto(url)
        page.wait_for_url("**draft=*", timeout=60000)
        page.locator(".bk-tab", has_text="Train").click()
        for field, text in ((".tn-train-epochs input", "7"), (".tn-train-lr input", "0.02")):
            page.locator(field).fill(text)
            page.locator(field).press("Enter")
        page.locator(".tn-train-dataset select").select_option(label="MNIST-1D")
        page.locator(".tn-train-plan", has_text="40").wait_for(timeout=30000)  # the server took the form
        page.reload()
        page.locator(".bk-tab", has_text="Train").click()
        page.locator(".tn-train-epochs input").wait_for(timeout=90000)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and page.locator(".tn-train-epochs input").input_value() != "7":
            time.sleep(0.2)
        assert page.locator(".tn-train-epochs input").input_value() == "7"
        assert page.locator(".tn-train-lr input").input_value() == "0.02"
        assert page.locator(".tn-train-dataset select option:checked").inner_text() == "MNIST-1D"
        screenshot(page, "train_form_restored")
    assert page_errors == []
