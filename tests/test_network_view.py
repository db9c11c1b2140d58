"""The studio's Network tab, server side: architecture, rules, the layer table and totals, the canvas link (click a
layer: its design opens on the canvas; committed edits flow back), training and export."""
from __future__ import annotations

import time

import pytest

from engine.design.templates import make_template
from engine.network.format import new_network
from engine.network.report import network_report
from studio.network_view import TABLE_COLUMNS, NetworkView, parse_options, parse_shape
from studio.state import StudioState


@pytest.fixture
def view(tmp_path):
    state = StudioState(home=str(tmp_path), refine_s=0, autosave=False)
    v = NetworkView(state, tmp_path)
    yield v
    state.close()


def test_starts_with_a_dense_mnist1d_mlp_and_its_report(view):
    assert view.spec.architecture.name == "mlp" and view.spec.resolved_input_shape == (1, 40)
    frame = view.table_frame()
    assert list(frame.columns) == TABLE_COLUMNS and list(frame["layer"]) == ["fc1", "fc2", "fc3"]
    assert view.report.totals.params == view.report.totals.dense_params == 78_858
    assert abs(frame["params % dense"].sum() - 100) < 0.05
    assert "78,858" in view.totals_html() and view.error == ""


def test_rules_update_totals_and_bad_rules_are_refused_with_the_reason(view):
    assert view.apply_rule("linear:ttn:4:gelu:min=20000")
    ref = network_report(new_network("mlp", [1, 40], 10).with_rules(["linear:ttn:4:gelu:min=20000"]))
    assert view.report.totals.params == ref.totals.params == 13_978
    row = view.table_frame().set_index("layer").loc["fc2"]
    assert row["assignment"] == "fc2 ttn chi=4 gelu" and row["params % TN"] < 2 < row["params % dense"]
    assert not view.apply_rule("linear:ttn:four")
    assert "bond must be an integer" in view.error and view.spec.rules == ("linear:ttn:4:gelu:min=20000",)
    assert view.clear_rules() and view.report.totals.params == 78_858 and view.error == ""


def test_a_rule_that_makes_layers_larger_than_dense_is_applied_with_a_warning(view, tmp_path):
    """A bond of 99999 on the MLP's layers was taken silently (about 10^15 parameters per layer)."""
    from engine.cli import main
    from engine.network.format import save_network

    assert view.apply_rule("linear:ttn:4:gelu") and "warning" not in view.message  # every layer smaller
    assert view.apply_rule("linear:ttn:999:gelu")
    grown = [r for r in view.report.rows if r.params > r.dense_params]  # (both with the same bias)
    worst = max(grown, key=lambda r: r.params / r.dense_params)
    assert grown and "warning:" in view.message and all(r.name in view.message for r in grown)
    assert f"largest growth: {worst.name}" in view.message
    path = tmp_path / "n.json"
    save_network(new_network("mlp", [1, 40], 10), path)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["network", "assign", str(path), "--rule", "linear:ttn:999:gelu"]) == 0
    assert err.getvalue().startswith("warning: fc1, fc2, fc3 get more parameters than the dense weights")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["network", "assign", str(path), "--clear-rules", "--rule", "linear:ttn:4:gelu"]) == 0
    assert err.getvalue() == ""


def test_a_rule_that_matches_no_layer_is_kept_with_a_warning(view, tmp_path):
    """A conv rule on the MLP (or a weight range no layer has) was applied silently and changed nothing."""
    import contextlib
    import io

    from engine.cli import main
    from engine.network.format import load_network, save_network

    assert view.apply_rule("conv:cp:8") and view.spec.rules == ("conv:cp:8",) and view.error == ""
    assert "warning: rule 'conv:cp:8' matches no layer" in view.message and "3 linear" in view.message
    assert view.report.totals.params == view.report.totals.dense_params  # nothing changed
    assert view.apply_rule("linear:ttn:4:gelu:min=20000") and "warning" not in view.message  # fc2 matches
    path = tmp_path / "n.json"
    save_network(new_network("mlp", [1, 40], 10), path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["network", "assign", str(path), "--rule", "linear:mpo:2", "--rule", "linear:cp:4:max=100",
                     "--rule", "conv3x3:cp:4"]) == 0
    assert err.getvalue() == ("warning: rules 'linear:cp:4:max=100', 'conv3x3:cp:4' match no layer, so they change "
                              "nothing (assignable layers: 3 linear)\n")
    assert load_network(path).rules == ("linear:mpo:2", "linear:cp:4:max=100", "conv3x3:cp:4")  # kept
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["network", "assign", str(path), "--rule", "linear:dense:name=fc1"]) == 0
    assert err.getvalue() == ""  # the older rules that match nothing were reported when they were added


def test_clicking_a_layer_opens_its_design_and_canvas_edits_flow_back(view):
    state = view.state
    view.apply_rule("linear:ttn:4:gelu:min=20000")
    opened = view.opened_design
    assert view.select("fc2") and view.editing == "fc2" and view.opened_design == opened + 1  # the app shows Design
    assert state.design.name == "fc2 ttn chi=4 gelu" and (state.design.in_features, state.design.out_features) == (
        256, 256)
    bond = next(k for k, i in state.design.indices.items() if i.role == "bond")
    assert state.set_dim(bond, 6)  # an edit on the canvas, committed by the state
    assert view.spec.layers["fc2"].design.fingerprint() == state.valid_design.fingerprint()
    assert view.report.row("fc2").params == state.valid_design.params + 256
    # a design of another shape is not applied; the link stays and the tab says why
    state.generate("mpo", 64, 64, 2)
    assert "not applied" in view.error and view.editing == "fc2"
    assert view.spec.layers["fc2"].design.in_features == 256
    # a dense layer opens a suggested TTN; it becomes the layer's design at the first edit
    assert view.select("fc1") and view.editing == "fc1" and "fc1" not in view.spec.layers
    bond = next(k for k, i in state.design.indices.items() if i.role == "bond")
    state.set_dim(bond, 3)
    assert view.report.row("fc1").assignment == state.valid_design.name
    assert view.set_dense("fc1") and view.report.row("fc1").assignment == "dense" and view.editing == ""
    assert view.clear_override("fc1") and "fc1" not in view.spec.layers
    view.unlink()
    state.generate("ttn", 256, 256, 2)
    assert view.spec.layers["fc2"].design.params != state.valid_design.params  # unlinked: nothing flows


def test_conv_layers_take_conv_designs(view):
    assert view.new_network("lenet5")
    assert [r for r in view.table_frame()["kind"]][:2] == ["conv2d", "conv2d"]
    state = view.state
    assert view.select("conv2") and view.editing == "conv2" and "CP-conv" in view.message
    c = state.design.conv  # a suggested conv2d design of the layer's own target
    assert (c.in_channels, c.out_channels, c.kernel_size) == (6, 16, (5, 5))
    state.set_dim("R", 4)  # an edit on the canvas flows back to the layer
    assert view.report.row("conv2").assignment == state.valid_design.name
    assert view.report.row("conv2").params == 4 * (6 + 16 + 5 + 5) + 16  # CP cores + bias
    assert view.apply_rule("conv:cp:8") and view.report.totals.tn_layers == 2
    assert not view.set_design("conv1", make_template("cp", 25, 6, 2)) and "linear target" in view.error


def test_new_network_from_the_form_and_files(view, tmp_path):
    view.arch.value = "transformer"
    view.dataset.value = "synthetic_images"
    view.options.value = "dim=32; depth=1; heads=2; mlp_dim=64"
    assert view.new_from_form(), view.error
    assert view.spec.resolved_input_shape == (3, 16, 16) and view.spec.architecture.options["dim"] == 32
    kinds = list(view.table_frame()["kind"])
    assert kinds.count("attention") == 4 and "attention core" in kinds
    assert view.apply_rule("attention:mpo:4") and view.report.totals.tn_layers == 4
    path = view.save("my net")
    assert path.name == "my_net.json"
    assert view.new_network("mlp", dataset="mnist1d") and view.load_file(path) and view.report.totals.tn_layers == 4
    assert view.load_json(view._download_json().getvalue(), "x.json") and view.spec.rules == ("attention:mpo:4",)
    assert not view.load_json(b"{}", "bad.json") and "bad.json" in view.error
    view.input_shape.value = "3,a"
    assert not view.new_from_form() and "input shape" in view.error


def test_an_opened_network_shows_in_the_form_with_a_data_set_that_fits_it(view, tmp_path):
    """Opening a network file left the form (and the data set the Train card trains on) as it was: a transformer
    made for 3x16x16 images opened while mnist1d was chosen would have been trained on 1x40 rows. The form now shows
    what the network is made of (New network remakes it) and a data set that fits it, or none, said."""
    from engine.network.format import new_network, save_network

    made = new_network("transformer", [3, 16, 16], 10, {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64},
                       name="small vit").with_rules(["attention:mpo:4"])
    save_network(made, tmp_path / "vit.json")
    assert view.dataset.value == "mnist1d"
    assert view.load_file(tmp_path / "vit.json"), view.error
    assert (view.arch.value, view.input_shape.value, view.classes.value) == ("transformer", "3,16,16", 10)
    assert view.dataset.value == "synthetic_images" and "data set synthetic_images: it fits" in view.message
    assert "synthetic_images" in view.train_summary.object
    opened = view.spec
    assert view.new_from_form() and view.spec.arch_key() == opened.arch_key()  # the form remakes its dense model
    assert view.load_file(tmp_path / "vit.json") and "data set" not in view.message  # it fits already: kept
    big = new_network("vgg16", name="vgg")  # 3x224x224, 1000 classes: nothing here fits
    save_network(big, tmp_path / "vgg.json")
    assert view.load_file(tmp_path / "vgg.json") and view.dataset.value == "(none)"
    assert "no data set here fits its input 3x224x224, 1000 classes" in view.message
    assert view.input_shape.value == "" and view.classes.value is None and view.options.value == ""


def test_saving_never_replaces_another_network(view):
    """Save as <name> replaced whatever networks/<name>.json held; now another network there is kept and this one
    goes to <name>-2.json, while the file the network came from is saved over."""
    from engine.network.format import load_network

    first = view.save("net")
    assert first.name == "net.json" and "holds another" not in view.message
    assert view.apply_rule("linear:ttn:4:gelu")
    assert view.save("net") == first  # its own file
    kept = load_network(first).fingerprint()
    assert kept == view.spec.fingerprint()
    assert view.new_network("mlp", dataset="mnist1d")  # another network, the same name
    second = view.save("net")
    assert second.name == "net-2.json" and "net.json holds another network, kept" in view.message
    assert load_network(first).fingerprint() == kept and load_network(second).fingerprint() == view.spec.fingerprint()
    assert view.save("net") == second  # now its own file
    (first.parent / "bad.json").write_text("{broken")
    assert view.save("bad").name == "bad-2.json"  # a damaged file is kept too
    assert view.load_file(first) and view.apply_rule("linear:cp:4") and view.save("net") == first  # opened: its own
    assert load_network(first).fingerprint() == view.spec.fingerprint() != kept


def test_helpers():
    assert parse_shape("3x32x32") == [3, 32, 32] and parse_shape(" ") is None
    assert parse_options("mlp", "hidden=128,64; activation=gelu") == {"hidden": [128, 64], "activation": "gelu"}
    with pytest.raises(ValueError):
        parse_options("mlp", "hidden")
    assert parse_shape("3 32 32") == parse_shape(" 3 , 32x 32 ") == [3, 32, 32]
    for bad in ("3,,32", "3x", "x3", "3,a", "3.5", "0,4"):  # a part was dropped: "3,,32" was [3, 32]
        with pytest.raises(ValueError, match="input shape must be integers"):
            parse_shape(bad)
    assert parse_options("mlp", "hidden=[128, 64]") == {"hidden": [128, 64]}  # as the architecture's help shows it
    with pytest.raises(ValueError, match="'hidden' is given twice"):
        parse_options("mlp", "hidden=128; hidden=64")


def test_the_studio_app_has_the_network_tab_and_clicks_show_the_design_tab(tmp_path):
    from studio.app import create_app

    app = create_app(str(tmp_path))
    try:
        view = app.components["Network"]
        assert isinstance(view, NetworkView) and view.state is app.state
        view.apply_rule("linear:ttn:4:gelu:min=20000")
        app.show("Network")
        view.select("fc2")
        assert list(app.components)[app.tabs.active] == "Design" and app.state.design.name == "fc2 ttn chi=4 gelu"
    finally:
        app.close()


def test_export_without_and_with_trained_weights(view, tmp_path):
    view.apply_rule("linear:mpo:2:min=20000")
    path = view.export()
    assert path is not None and path.is_file() and not path.with_suffix(".pt").exists()
    assert "class Network(nn.Module)" in path.read_text() and not view.export_download.disabled
    assert view.weights_download.disabled


@pytest.mark.slow
def test_training_the_whole_network_from_the_tab(view):
    view.new_network("mlp", dataset="mnist1d", options={"hidden": [64, 64]})
    view.apply_rule("linear:mpo:2:min=4000")
    ids = view.launch(dataset="mnist1d", epochs=1, batch_size=128, device="cpu", baseline=False)
    assert len(ids) == 1 and view.error == ""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        view.refresh_runs()
        if "completed" in view.run_status or "failed" in view.run_status:
            break
        time.sleep(1)
    assert "completed: test accuracy" in view.run_status, view.run_status
    path = view.export()
    assert path.with_suffix(".pt").is_file() and "weights of run" in view.message


# --------------------------------------------------------------------- the autosaved network
def _tab(home, draft_id="", autosave=True):
    state = StudioState(home=str(home), refine_s=0, autosave=autosave, draft_id=draft_id)
    return state, NetworkView(state, home)


def test_a_reload_restores_the_network_with_its_rules_and_canvas_edits(tmp_path):
    """The Network tab kept nothing: a reload (or a crash) lost the rules and every layer's design. It is
    autosaved like the Design tab's draft: the tab's own file, and the newest of any tab for a new tab."""
    from studio.drafts import draft_paths

    state, v = _tab(tmp_path, "0123456789ab")
    assert v.apply_rule("linear:ttn:4:gelu:min=20000") and v.select("fc2")
    bond = next(k for k, i in state.design.indices.items() if i.role == "bond")
    assert state.set_dim(bond, 5)  # a canvas edit that flowed into fc2
    edited = v.spec
    v.options.value, v.arch.value = "hidden=128", "lenet5"  # the form, kept with the next change ...
    v.dataset.value = "digits"  # ... which choosing the data set (the Train card's too) is
    v.train_epochs.value, v.train_lr.value, v.train_baseline.value = 7, 0.01, True  # the Train card, each kept
    assert all(p.is_file() for p in draft_paths(tmp_path, "network", "0123456789ab"))
    state.close()
    for draft_id in ("0123456789ab", "ffffffffffff"):  # the same tab reloaded; a new tab (the newest network)
        state2, again = _tab(tmp_path, draft_id)
        assert again.spec.fingerprint() == edited.fingerprint() and again.spec.rules == edited.rules
        assert again.spec.layers["fc2"].design.dim(bond) == 5
        assert again.message.startswith("restored") and again.error == ""
        assert (again.dataset.value, again.arch.value, again.options.value) == ("digits", "lenet5", "hidden=128")
        assert (again.train_epochs.value, again.train_lr.value, again.train_baseline.value) == (7, 0.01, True)
        assert again.report.totals.params == network_report(edited, batch=1).totals.params
        state2.close()
    state3, off = _tab(tmp_path / "other", autosave=False)  # autosave off: nothing read or written
    off.apply_rule("linear:mpo:3")
    assert off.spec.name == "mlp on mnist1d" and not (tmp_path / "other").joinpath("network_draft.json").exists()
    state3.close()


@pytest.mark.parametrize("content, words", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "no 'network'"),
    (b'{"network": {"format": "tnstudio-network", "version": 1, "name": "x", "architecture": {"name": "nope"}}}',
     "nope"),
    (b'{"network": {"format": "tnstudio-network", "version": 1, "name": "x", '
     b'"architecture": {"import": "os:system"}, "input_shape": [4]}}', "not trusted"),
    (b"\xff\xfe", "UTF-8"),
])
def test_a_damaged_autosaved_network_is_set_aside_and_the_tab_opens(tmp_path, content, words):
    (tmp_path / "network_draft.json").write_bytes(content)
    state, v = _tab(tmp_path)
    assert v.spec.name == "mlp on mnist1d" and v.report is not None  # the default network
    assert "could not be restored" in v.error and words in v.error and "\n" not in v.error
    aside = tmp_path / "network_draft.damaged.json"
    assert aside.read_bytes() == content and not (tmp_path / "network_draft.json").exists()
    assert v.apply_rule("linear:mpo:3")  # the next change autosaves afresh; the damaged file is kept
    assert (tmp_path / "network_draft.json").is_file() and aside.read_bytes() == content
    state.close()


def test_a_failing_autosave_is_said_and_work_goes_on(tmp_path, monkeypatch):
    import errno

    import studio.drafts as drafts

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    state, v = _tab(tmp_path)
    monkeypatch.setattr(drafts, "atomic_write_text", full)
    assert v.apply_rule("linear:mpo:3") and v.spec.rules == ("linear:mpo:3",)
    assert "not autosaved (No space left on device)" in v.message
    state.close()


def _json_values():
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=8)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                               max_size=4), max_leaves=12)


def test_fuzz_any_autosaved_network_opens_the_tab(tmp_path_factory):
    """Fuzz: whatever the autosaved file holds (bytes, any JSON, a real network with one field replaced by any
    JSON value, any form), the tab opens: with that network when it resolves (the form's values where the widgets
    take them), else with the default and the file set aside."""
    import json

    from hypothesis import HealthCheck, given, settings, strategies as st

    base = new_network("mlp", [1, 40], 10, name="saved").with_rules(["linear:mpo:3:min=20000"]).to_dict(inline=True)
    mutated = st.tuples(st.sampled_from(sorted(base)), _json_values()).map(
        lambda kv: json.dumps({"network": {**base, kv[0]: kv[1]}}).encode())
    form = st.one_of(_json_values(), st.dictionaries(st.sampled_from(["arch", "dataset", "classes", "options",
                                                                      "input_shape", "import_path"]), _json_values()))
    with_form = form.map(lambda f: json.dumps({"network": base, "form": f}).encode())
    drafts = (st.binary(max_size=64) | _json_values().map(lambda v: json.dumps({"network": v}).encode()) | mutated
              | with_form)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(content=drafts)
    def check(content):
        home = tmp_path_factory.mktemp("fuzzdraft")
        (home / "network_draft.json").write_bytes(content)
        state, v = _tab(home)
        try:
            if v.message.startswith("restored"):
                assert v.error == "" and v.report is not None
                assert (home / "network_draft.json").read_bytes() == content
            else:
                assert v.spec.name == "mlp on mnist1d" and "could not be restored" in v.error
                assert (home / "network_draft.damaged.json").read_bytes() == content
        finally:
            state.close()

    check()


def test_an_autosaved_network_replaced_by_a_link_to_a_huge_file_is_not_read_whole(tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(64 * 2 ** 20)  # sparse: 64 MiB of zeros
    (tmp_path / "network_draft.json").symlink_to(big)
    state, v = _tab(tmp_path)
    assert v.spec.name == "mlp on mnist1d" and "more than 16 MiB" in v.error and "\n" not in v.error
    state.close()


def test_opening_a_network_saves_its_draft_once_with_its_data_set(tmp_path, monkeypatch):
    """Opening a file whose network needs another data set wrote the draft twice: first the old network with the
    new data set (the data set field's watcher), then the new one. Now once, the opened network with its data set."""
    import json

    import studio.network_view as network_view
    from engine.network.format import save_network

    state = StudioState(home=str(tmp_path), refine_s=0, autosave=True)
    view = NetworkView(state, tmp_path)
    made = new_network("transformer", [3, 16, 16], 10, {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64},
                       name="small vit")
    save_network(made, tmp_path / "vit.json")
    written = []
    real = network_view.write_draft
    monkeypatch.setattr(network_view, "write_draft", lambda text, *paths: (written.append(json.loads(text)),
                                                                           real(text, *paths))[1])
    try:
        assert view.dataset.value == "mnist1d"
        assert view.load_file(tmp_path / "vit.json"), view.error
        assert len(written) == 1
        assert written[0]["network"]["name"] == "small vit" and written[0]["form"]["dataset"] == "synthetic_images"
        view.dataset.value = "(none)"  # the watcher saves again once the file is open
        assert len(written) == 2 and written[1]["form"]["dataset"] == "(none)"
    finally:
        state.close()


def test_a_conv_layer_that_takes_no_design_says_why(view, tmp_path, monkeypatch):
    """Clicking a conv layer that takes no conv2d design always said "(grouped)"; a reflect-padded one is not.
    The engine's reason is shown, and a plain conv opens on the canvas."""
    import json
    from pathlib import Path

    monkeypatch.setenv("TNSTUDIO_TRUSTED_MODULES", "unregistered")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"format": "tnstudio-network", "version": 1, "name": "odd convs",
                                "architecture": {"import": "unregistered:odd_convs"}, "input_shape": [1, 8, 8],
                                "num_classes": 10, "rules": [], "layers": {}}))
    assert view.load_file(path), view.error
    assert view.select("0") and view.editing == ""
    assert view.message == "layer 0 pads with padding_mode='reflect': TN conv layers pad with zeros only (dense only)"
    assert view.select("2") and view.editing == ""
    assert view.message == "layer 2 is a grouped conv (groups 2): conv2d designs have groups 1 (dense only)"
    assert view.select("4") and view.editing == "4"
