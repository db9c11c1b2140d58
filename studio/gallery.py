"""Left column: the template gallery and the tensor palette.

Everything the gallery offers comes from the engine's registries: template kinds with their labels, which of them
take an activation (``TemplateSpec.nonlinear``) and their extra options (``TemplateSpec.options``, e.g. lateral
mixing tensors, with the levels :func:`~engine.design.templates.lateral_levels` reports for the chosen size); the
activations from :data:`engine.design.activations.ACTIVATIONS`; tensor kinds from :data:`engine.design.model.KINDS`.
The target switch makes a linear layer (in/out features) or a conv2d layer (in/out channels, kernel, stride,
padding: :func:`~engine.design.conv.make_conv_template`).
"""
from __future__ import annotations

from typing import Any, Callable

import panel as pn
import param
from panel.viewable import Viewer

from engine.design.activations import ACTIVATIONS
from engine.design.factorize import parse_factors
from engine.design.model import KINDS
from engine.design.conv import conv_lateral_levels
from engine.design.templates import TEMPLATE_OPTIONS, TEMPLATES, TemplateOption, lateral_levels

from .state import StudioState
from .style import css, styled
from .widgets import FieldNote, IntField, button, hint, note_html, section

NO_ACTIVATION = "none"
LEVEL = "level "
TARGETS = ("linear", "conv2d")  # what a template generates: a matrix W, or a conv kernel (nn.Conv2d.weight)


def option_values(option: TemplateOption, levels: list[int]) -> list[str]:
    """What the gallery offers for ``option``: its named choices, then each level that has places."""
    return list(option.choices) + ([f"{LEVEL}{lv}" for lv in levels] if option.levels else [])


def option_value(text: str) -> str | list[int]:
    """A gallery choice as ``make_template`` takes it (``"level 1"`` -> ``[1]``)."""
    return [int(text[len(LEVEL):])] if text.startswith(LEVEL) else text


class Gallery(Viewer):
    """Template controls; :meth:`generate` is what Generate and Add to canvas call."""

    state = param.ClassSelector(class_=StudioState, doc="The studio state templates are generated into.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        d = self.state.design
        conv = d.conv
        self.target = styled(pn.widgets.RadioButtonGroup(options=list(TARGETS),
                                                         value="conv2d" if conv is not None else "linear",
                                                         sizing_mode="stretch_width", css_classes=["tn-g-target"]))
        self.kernel = IntField(label="kernel", value=conv.kernel_size[0] if conv else 3, width=70,
                               css_class="tn-g-kernel")
        self.stride = IntField(label="stride", value=conv.stride[0] if conv else 1, width=70, css_class="tn-g-stride")
        self.padding = IntField(label="padding", value=conv.padding[0] if conv else 1, minimum=0, width=70,
                                css_class="tn-g-padding")
        self.conv_row = pn.Row(self.kernel, self.stride, self.padding, margin=0)
        self.kind = styled(pn.widgets.Select(label="Template", options={s.label: k for k, s in TEMPLATES.items()},
                                             value="mera" if "mera" in TEMPLATES else next(iter(TEMPLATES)),
                                             sizing_mode="stretch_width", css_classes=["tn-g-kind"]))
        self.in_features = IntField(label="in features", value=conv.in_channels if conv else d.in_features, width=112,
                                    css_class="tn-g-in")
        self.out_features = IntField(label="out features", value=d.out_features, width=112, css_class="tn-g-out")
        self.in_factors = styled(pn.widgets.TextInput(label="in factors", placeholder="auto, e.g. 8,8,4", width=112,
                                                      css_classes=["tn-g-infactors"]))
        self.out_factors = styled(pn.widgets.TextInput(label="out factors", placeholder="auto", width=112,
                                                       css_classes=["tn-g-outfactors"]))
        self.factors_note = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 5), stylesheets=[css("notes")])
        self.bond = IntField(label="bond dim χ", value=4, width=112, css_class="tn-g-bond")
        self.activation = styled(pn.widgets.Select(label="activation", options=[NO_ACTIVATION, *ACTIVATIONS],
                                                   value=NO_ACTIVATION, width=112, css_classes=["tn-g-activation"]))
        self.options: dict[str, pn.widgets.Select] = {
            o.name: styled(pn.widgets.Select(label=o.label, options=option_values(o, []), value=o.default,
                                             sizing_mode="stretch_width", description=o.help,
                                             css_classes=[f"tn-g-{o.name}"]))
            for o in TEMPLATE_OPTIONS}
        self.generate_button = button("Generate", lambda: self.generate("replace"), once=True, key=self._situation,
                                      color="primary", sizing_mode="stretch_width", css_classes=["tn-generate"],
                                      margin=(5, 5))
        self.add_button = button("Add to canvas", lambda: self.generate("add"), once=True, key=self._situation,
                                 sizing_mode="stretch_width", css_classes=["tn-add-template"], margin=(5, 5))
        self.note = FieldNote(state=self.state, field="template")
        for w in (self.in_factors, self.out_factors):
            w.param.watch(lambda *_: self._refresh(), "value")
        self.kind.param.watch(lambda *_: self._refresh(), "value")
        self.target.param.watch(lambda *_: self._refresh(), "value")
        self.kernel.param.watch(lambda *_: self._refresh(), "value")
        self.in_features.param.watch(lambda *_: self._refresh(), "value")
        self.out_features.param.watch(lambda *_: self._refresh(), "value")
        self._refresh()

    def _situation(self) -> tuple:
        """What Generate / Add to canvas act on: the form and the design (a double click repeats neither)."""
        return (self.target.value, self.kernel.value, self.stride.value, self.padding.value, self.kind.value,
                self.in_features.value, self.out_features.value, self.in_factors.value, self.out_factors.value,
                self.bond.value, self.activation.value, tuple(w.value for w in self.options.values()),
                self.state.version)

    def _factors(self) -> tuple[list[int] | None, list[int] | None]:
        return parse_factors(self.in_factors.value), parse_factors(self.out_factors.value)

    def _refresh(self) -> None:
        """Offer what the chosen kind accepts: an activation if it has internal tensors, its options, and the levels
        lateral tensors can go on at this size."""
        spec = TEMPLATES[self.kind.value]
        conv = self.target.value == "conv2d"
        self.conv_row.visible = conv  # a conv2d target: kernel, stride, padding; in/out are channels
        self.in_features.input.label = "in channels" if conv else "in features"
        self.out_features.input.label = "out channels" if conv else "out features"
        self.activation.disabled = not spec.nonlinear
        if not spec.nonlinear:
            self.activation.value = NO_ACTIVATION
        try:
            inf, outf = self._factors()
            self.factors_note.object = ""
        except ValueError as e:
            inf = outf = None
            self.factors_note.object = note_html(str(e), "factors")
        for opt in TEMPLATE_OPTIONS:
            w = self.options[opt.name]
            w.visible = opt in spec.options
            levels: list[int] = []
            if w.visible and opt.name == "lateral":
                try:
                    levels = (conv_lateral_levels(self.kind.value, self.in_features.value, self.out_features.value,
                                                  self.kernel.value, inf, outf) if conv else
                              lateral_levels(self.kind.value, self.in_features.value, self.out_features.value, inf,
                                             outf))
                except ValueError:
                    levels = []
            values = option_values(opt, levels)
            if w.options != values:
                keep = w.value if w.value in values else opt.default
                w.options = values
                w.value = keep

    def generate(self, mode: str = "replace") -> bool:
        try:
            inf, outf = self._factors()
        except ValueError as e:
            self.state.refuse("template", str(e))
            return False
        spec = TEMPLATES[self.kind.value]
        act = None if self.activation.value == NO_ACTIVATION else self.activation.value
        options = {o.name: option_value(self.options[o.name].value) for o in spec.options
                   if self.options[o.name].value != o.default}
        conv = ({"kernel_size": self.kernel.value, "stride": self.stride.value, "padding": self.padding.value}
                if self.target.value == "conv2d" else None)
        return self.state.generate(self.kind.value, self.in_features.value, self.out_features.value,
                                   self.bond.value, act, inf, outf, mode=mode, options=options, conv=conv)

    def __panel__(self) -> pn.viewable.Viewable:
        return section("Template gallery", pn.Column(
            self.target, self.kind, self.conv_row,
            pn.Row(self.in_features, self.out_features, margin=0),
            pn.Row(self.in_factors, self.out_factors, margin=0), self.factors_note,
            pn.Row(self.bond, self.activation, margin=0),
            *self.options.values(),
            pn.Row(self.generate_button, self.add_button, margin=(4, 0)),
            self.note, margin=0, sizing_mode="stretch_width"))


class Palette(Viewer):
    """Add tensors to the canvas, choose the dimension of bonds drawn by dragging, start a new design."""

    state = param.ClassSelector(class_=StudioState, doc="The studio state tensors are added to.")
    place = param.Callable(default=None, doc="kind -> adds a tensor where the canvas shows it (default: the state).")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.kind = styled(pn.widgets.Select(label="kind", options=list(KINDS), value=KINDS[0], width=112,
                                             css_classes=["tn-p-kind"]))
        adder: Callable[[str], Any] = self.place or (lambda k: self.state.add_tensor(k))
        self.add_button = button("+ Tensor", lambda: adder(self.kind.value), color="success", width=112,
                                 align="end", css_classes=["tn-add-tensor"],
                                 key=lambda: (self.kind.value, self.state.version))
        self.bond = IntField.for_param(self.state, "new_bond_dim", label="new bond χ", width=112, css_class="tn-p-bond")
        # what the canvas and these buttons did, refused or waiting for confirmation: a drawn bond ("connect"), an
        # added tensor ("tensor"), and edits with no field of their own ("edit": a delete, an opened design)
        self.notes = [FieldNote(state=self.state, field=f) for f in CANVAS_FIELDS]

    def __panel__(self) -> pn.viewable.Viewable:
        return section("Palette", pn.Column(
            pn.Row(self.kind, self.add_button, margin=0), self.bond,
            hint("Drag from a tensor's dot to another tensor to make a bond. Select and press <b>Delete</b> to "
                 "remove; <b>Shift</b>-click or drag a box with <b>Shift</b> to select several."),
            *self.notes, margin=0, sizing_mode="stretch_width"))


CANVAS_FIELDS = ("connect", "tensor", "edit")
