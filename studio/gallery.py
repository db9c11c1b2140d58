"""Left column: the template gallery (generate mpo/ring/tucker/cp/ttn/attn/mera) and the tensor palette."""
from __future__ import annotations

import panel as pn

from engine.design.model import ACTIVATIONS, KINDS
from engine.design.factorize import parse_factors
from engine.design.templates import NONLINEAR_CAPABLE, TEMPLATES

from .state import StudioState
from .widgets import error_note, section



class Gallery:
    """Template controls; ``generate(mode)`` is what the buttons call."""

    def __init__(self, state: StudioState):
        self.state = state
        self.kind = pn.widgets.Select(label="Template", options={s.label: k for k, s in TEMPLATES.items()},
                                      value="mera", sizing_mode="stretch_width", css_classes=["tn-g-kind"])
        self.in_features = pn.widgets.IntInput(label="in features", value=256, start=1, width=110,
                                              css_classes=["tn-g-in"])
        self.out_features = pn.widgets.IntInput(label="out features", value=256, start=1, width=110,
                                               css_classes=["tn-g-out"])
        self.in_factors = pn.widgets.TextInput(label="in factors", placeholder="auto, e.g. 8,8,4", width=110)
        self.out_factors = pn.widgets.TextInput(label="out factors", placeholder="auto", width=110)
        self.bond = pn.widgets.IntInput(label="bond dim χ", value=4, start=1, width=110, css_classes=["tn-g-bond"])
        self.activation = pn.widgets.Select(label="activation", options=["none", *ACTIVATIONS], value="none",
                                            width=110)
        self.replace_btn = pn.widgets.Button(label="Generate", color="primary", css_classes=["tn-generate"],
                                             sizing_mode="stretch_width")
        self.add_btn = pn.widgets.Button(label="Add to canvas", color="default", sizing_mode="stretch_width")
        self.replace_btn.on_click(lambda *_: self.generate("replace"))
        self.add_btn.on_click(lambda *_: self.generate("add"))
        self.kind.param.watch(self._kind_changed, "value")
        self.error = error_note(state, "template")

    def _kind_changed(self, event) -> None:
        self.activation.disabled = event.new not in NONLINEAR_CAPABLE
        if self.activation.disabled:
            self.activation.value = "none"

    def generate(self, mode: str = "replace") -> bool:
        try:
            inf, outf = parse_factors(self.in_factors.value), parse_factors(self.out_factors.value)
        except ValueError as e:
            self.state._refuse("template", str(e))
            return False
        act = None if self.activation.value == "none" else self.activation.value
        return self.state.generate(self.kind.value, int(self.in_features.value), int(self.out_features.value),
                                   int(self.bond.value), act, inf, outf, mode=mode)

    def view(self) -> pn.viewable.Viewable:
        return section("Template gallery", pn.Column(
            self.kind,
            pn.Row(self.in_features, self.out_features, margin=0),
            pn.Row(self.in_factors, self.out_factors, margin=0),
            pn.Row(self.bond, self.activation, margin=0),
            pn.Row(self.replace_btn, self.add_btn, margin=(4, 0)),
            self.error, margin=0, sizing_mode="stretch_width"))


class Palette:
    """Add tensors to the canvas and choose the dimension of bonds drawn by dragging."""

    def __init__(self, state: StudioState):
        self.state = state
        self.kind = pn.widgets.Select(label="kind", options=list(KINDS), value="core", width=110)
        self.add_btn = pn.widgets.Button(label="+ Tensor", color="success", css_classes=["tn-add-tensor"],
                                         width=110, align="end")
        self.add_btn.on_click(lambda *_: state.add_tensor(self.kind.value))
        self.bond = pn.widgets.IntInput.from_param(state.param.new_bond_dim, label="new bond χ", width=110)

    def view(self) -> pn.viewable.Viewable:
        hint = pn.pane.HTML(
            "<div class='tn-hint'>Drag from a tensor's dot to another tensor to make a bond. Select and press "
            "<b>Delete</b> to remove; <b>Shift</b>-click or drag a box with <b>Shift</b> to select several.</div>",
            stylesheets=[".tn-hint{font-size:11.5px;color:#64748b;line-height:1.4}"], sizing_mode="stretch_width",
            margin=(0, 5))
        return section("Palette", pn.Column(pn.Row(self.kind, self.add_btn, margin=0), self.bond, hint, margin=0,
                                            sizing_mode="stretch_width"))
