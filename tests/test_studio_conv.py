"""The studio's conv parts, server side: the gallery's conv2d target, the cost cards at the chosen image size, kernel
legs on the canvas and in the inspector, the Train tab's plan for a conv design."""
from __future__ import annotations

import pytest

from engine.contract.conv import conv_cost_report
from engine.design.conv import make_conv_template


@pytest.fixture
def state(tmp_path):
    from studio.state import StudioState

    s = StudioState(home=tmp_path, autosave=False, refine_s=0)
    yield s
    s.close()


def test_gallery_generates_conv_targets_and_the_cost_follows_the_image(state):
    from studio.cost_view import CostPanel, cards_html, steps_html
    from studio.gallery import Gallery

    gallery, panel = Gallery(state=state), CostPanel(state=state)
    assert not panel.image_box.visible  # a linear design: no image size
    gallery.target.value = "conv2d"
    assert gallery.conv_row.visible and gallery.in_features.input.label == "in channels"
    gallery.kind.value, gallery.in_features.value, gallery.out_features.value = "cp", 32, 64
    gallery.kernel.value, gallery.stride.value, gallery.padding.value = 3, 2, 1
    assert gallery.generate("replace"), state.field_errors
    d = state.design
    assert d.conv.label == "conv 3x3 32->64 stride 2 padding 1" and panel.image_box.visible
    state.image = 16
    want = conv_cost_report(d, batch=state.batch, image=16)
    rep = state.report
    assert rep.image == (16, 16) and rep.out_image == (8, 8) and rep.forward_flops == want.forward_flops
    cards = cards_html(rep)
    assert "image 16×16" in cards and "Generate K" in cards and f">{want.program}<" in cards
    assert "conv2d" in steps_html(rep)  # the conv steps are listed with the einsums
    assert state.sweep["chi"] and all(p > 0 for p in state.sweep["params"])
    gallery.target.value = "linear"
    gallery.kind.value, gallery.in_features.value, gallery.out_features.value = "mpo", 64, 32
    assert gallery.generate("replace") and state.design.conv is None and not panel.image_box.visible


def test_kernel_legs_are_drawn_apart_and_listed_in_the_inspector(state):
    from studio.graph import canvas_graph
    from studio.inspector import Inspector

    state.replace(make_conv_template("mpo", 16, 8, 3, 2, padding=1))
    nodes, edges = canvas_graph(state.design)
    legs = {n["id"]: n["className"] for n in nodes if n["type"] == "leg"}
    assert {k for k, c in legs.items() if "tn-leg-kernel" in c} == {"L:kh", "L:kw"}
    assert all("tn-leg-kernel" not in c for k, c in legs.items() if k not in ("L:kh", "L:kw"))
    assert {e["className"] for e in edges if e["id"] in ("LE:kh", "LE:kw")} == {"tn-edge-kernel"}
    inspector = Inspector(state=state)
    text = " ".join(str(getattr(x, "object", "")) for x in inspector.body)
    assert "nn.Conv2d's weight" in text and "kernel legs" in text and "in channels" in " ".join(
        getattr(x, "label", "") or "" for x in inspector.body)
    assert state.set_factors("in", [4, 4]) and state.design.conv.in_channels == 16
    assert state.set_factors("out", [4, 4]) and state.design.conv.out_channels == 16
    assert state.design.in_features == 16 * 9  # the im2col matrix follows the channels


def test_train_tab_plans_a_cnn_around_a_conv_design(state):
    from engine.train.config import RunConfig
    from studio.train_view import model_plan

    d = make_conv_template("cp", 32, 64, 3, 4, padding=1)
    assert model_plan(RunConfig(dataset="digits", model="cnn"), d).startswith("Conv 32 · TN conv 3x3 32->64")
    with pytest.raises(ValueError, match="the MLP has no conv layer"):
        model_plan(RunConfig(dataset="digits", model="mlp"), d)
    with pytest.raises(ValueError, match="replaces the CNN's second conv layer, 32 -> 64"):
        model_plan(RunConfig(dataset="digits", model="cnn"), make_conv_template("cp", 16, 64, 3, 4))
