"""Shared view pieces: titled sections, notes under fields (refusals and confirmations), validated number fields
and buttons that cannot start their work twice."""
from __future__ import annotations

import html
import logging
import time
from typing import Any, Callable

import panel as pn
import param
from panel.viewable import Viewer

from engine.format import clip_quotes

from .state import StudioState
from .style import css, styled

log = logging.getLogger(__name__)

# A click processed this soon after the same button's work ended, with nothing it acts on changed, is the second half
# of a double click. Not shorter: the browser sends both clicks at once, but the server processes the second one after
# the first one's work and whatever else is queued; on a loaded 2-core machine (the test suite, two busy processes)
# the second half of a double click on Launch was processed 0.93 s after the first launch ended (0.6 s let it launch
# a second run). A deliberate repeat of the very same action comes later than that.
COOLDOWN_S = 1.5


def section(title: str, *objects: Any, **kw: Any) -> pn.Column:
    """A white card with an uppercase title."""
    head = pn.pane.HTML(f"<div class='tn-title'>{html.escape(title)}</div>", stylesheets=[css("text")],
                        margin=(6, 10, 0, 10))
    return pn.Column(head, *objects, stylesheets=[css("section")], sizing_mode="stretch_width",
                     margin=kw.pop("margin", (0, 0, 10, 0)), **kw)


def hint(text_html: str, **kw: Any) -> pn.pane.HTML:
    return pn.pane.HTML(f"<div class='tn-hint'>{text_html}</div>", stylesheets=[css("text")],
                        sizing_mode="stretch_width", margin=kw.pop("margin", (0, 5)), **kw)


def note_html(message: str | None, field: str = "", kind: str = "error") -> str:
    """A refusal (``kind="error"``) or a confirmation question (``"warn"``) as the note under a field."""
    if not message:
        return ""
    return (f"<div class='tn-{kind}' data-field='{html.escape(field, quote=True)}'>"
            f"{html.escape(clip_quotes(message))}</div>")


def error_html(message: str) -> str:
    """A refusal or failure shown in a panel of its own (quoted input clipped, escaped)."""
    return f"<div class='tn-error'>{html.escape(clip_quotes(message))}</div>"


def field_note_html(state: StudioState, field: str) -> str:
    """The note under ``field`` now: its refusal, or the question about an edit of it waiting for confirmation."""
    if state.pending.get("field") == field:
        return note_html(f"{state.pending['message']}. Apply anyway?", field, "warn")
    return note_html(state.field_errors.get(field), field)


def button(label: str, action: Callable[[], Any] | None = None, *, once: bool = False,
           key: Callable[[], Any] | None = None, dedupe: bool = True, **kw: Any) -> pn.widgets.Button:
    """A styled button running ``action`` on a click. With ``once`` (buttons that start work), the button is
    disabled while ``action`` runs, and the page does not even send the second click of a double click (class
    ``tn-once``, see :func:`studio.session.swallow_double_clicks`). With ``dedupe`` (the default), the server ignores
    the second click of a double click: see :func:`guard` (``key`` describes the situation a click acts on)."""
    if once:
        kw["css_classes"] = [*kw.get("css_classes", []), "tn-once"]
    b = styled(pn.widgets.Button(label=label, **kw))
    if action is not None:
        guard(b, action, disable=once, key=key, dedupe=dedupe)
    return b


def guard(btn: pn.widgets.Button, action: Callable[[], Any], cooldown_s: float = COOLDOWN_S,
          disable: bool = True, key: Callable[[], Any] | None = None, dedupe: bool = True) -> None:
    """Run ``action`` on clicks of ``btn``, never twice for one double click.

    Clicks arriving while the action runs wait in line and are processed right after it, so a click within
    ``cooldown_s`` of the end of the last run is the second half of a double click when nothing it acts on has
    changed since: ``key()`` (e.g. the form's values and the design's version) returns what it returned after the
    last run. Such a click is ignored. With ``disable``, the button is also disabled while the action runs (Panel
    sends that to the browser at once, so further clicks are not even sent)."""
    flags: dict[str, Any] = {"busy": False, "until": 0.0, "key": None}

    def situation() -> Any:
        return key() if key is not None else None

    def on_click(_event: Any) -> None:
        if flags["busy"] or (dedupe and time.monotonic() < flags["until"] and situation() == flags["key"]):
            log.debug("ignored a repeated click on %r", btn.label)
            return
        flags["busy"] = True
        was = btn.disabled
        if disable:
            btn.disabled = True
        try:
            action()
        finally:
            flags["busy"], flags["until"], flags["key"] = False, time.monotonic() + cooldown_s, situation()
            if disable and btn.disabled:
                btn.disabled = was

    btn.on_click(on_click)


def confirm_buttons(state: StudioState, **kw: Any) -> pn.Row:
    """Apply anyway / Cancel, for the edit waiting for confirmation."""
    apply = button("Apply anyway", state.confirm, color="warning", width=120, css_classes=["tn-confirm"],
                   key=lambda: state.version)
    cancel = button("Cancel", state.cancel, width=90, css_classes=["tn-cancel"])
    return pn.Row(apply, cancel, margin=kw.pop("margin", (0, 5, 4, 5)), **kw)


class FieldNote(Viewer):
    """The note under one field of a long-lived view: its refusal, or a confirmation question with Apply anyway /
    Cancel (for views rebuilt on every change, use :func:`field_note_html` and :func:`confirm_buttons`)."""

    state = param.ClassSelector(class_=StudioState, doc="The studio state whose notes are shown.")
    field = param.String(default="", doc="The field key (see StudioState's field keys).")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.text = pn.pane.HTML("", stylesheets=[css("notes")], sizing_mode="stretch_width", margin=(0, 5))
        self.buttons = confirm_buttons(self.state, visible=False)
        self._render()

    @param.depends("state.field_errors", "state.pending", watch=True)
    def _render(self) -> None:
        self.text.object = field_note_html(self.state, self.field)
        self.buttons.visible = self.state.pending.get("field") == self.field

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.text, self.buttons, sizing_mode="stretch_width", margin=0)


def parse_int(text: Any, what: str, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number in [``minimum``, ``maximum``] from a text field; ``ValueError`` saying why not."""
    s = str(text).strip().replace(",", "").replace("_", "")
    try:
        value = int(s)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {str(text).strip()!r}") from None
    if value < minimum:
        raise ValueError(f"{what} must be a whole number >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{what} must be at most {maximum:,}, got {value:,}")
    return value


class TextField(Viewer):
    """A text field holding a parsed value: a refused entry shows why under the field and the field returns to the
    last accepted value (``value``). Subclasses say how text becomes a value (``parse``) and back (``show``)."""

    value = param.Parameter(default=None, doc="The last accepted value.")
    label = param.String(default="", doc="The field's label (also names it in messages).")
    css_base = ""  # the CSS class every field of the subclass has

    def __init__(self, css_class: str = "", width: int | None = None, placeholder: str = "", **params: Any):
        super().__init__(**params)
        size = {"width": width} if width else {"sizing_mode": "stretch_width"}
        self.input = styled(pn.widgets.TextInput(label=self.label, value=self.show(self.value), placeholder=placeholder,
                                                 **size, css_classes=[c for c in (self.css_base, css_class) if c]))
        self.note = pn.pane.HTML("", stylesheets=[css("notes")], sizing_mode="stretch_width", margin=(0, 5),
                                 css_classes=["tn-int-note"])
        self.input.param.watch(self._typed, "value")

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> str:
        return "" if value is None else str(value)

    def _typed(self, event: Any) -> None:
        if event.new == self.show(self.value):
            return  # the field shows the accepted value (again): keep the note about what was refused
        try:
            value = self.parse(event.new)
        except ValueError as e:
            self.note.object = note_html(str(e), self.label)
            self.input.value = self.show(self.value)
            return
        self.note.object = ""
        self.value = value
        if self.input.value != self.show(value):
            self.input.value = self.show(value)

    @param.depends("value", watch=True)
    def _shown(self) -> None:
        if self.input.value != self.show(self.value):
            self.input.value = self.show(self.value)

    def __panel__(self) -> pn.viewable.Viewable:
        size = {"width": self.input.width + 20} if self.input.width else {"sizing_mode": "stretch_width"}
        return pn.Column(self.input, self.note, margin=0, **size)


class IntField(TextField):
    """A text field holding a whole number in [``minimum``, ``maximum``]."""

    value = param.Integer(default=1, doc="The last accepted value.")
    minimum = param.Integer(default=1, doc="The smallest accepted value.")
    maximum = param.Integer(default=None, allow_None=True, doc="The largest accepted value (None: no limit).")
    css_base = "tn-int"

    def parse(self, text: str) -> int:
        return parse_int(text, self.label or "the value", self.minimum, self.maximum)

    @classmethod
    def for_param(cls, owner: param.Parameterized, name: str, **params: Any) -> "IntField":
        """A field for ``owner``'s integer parameter ``name``: its value and bounds, and each accepted value written
        back to the parameter (a refused one says why under the field)."""
        low, high = owner.param[name].bounds
        field = cls(value=getattr(owner, name), minimum=low, maximum=high, **params)
        field.param.watch(lambda e: setattr(owner, name, e.new), "value")
        return field


class BytesField(TextField):
    """A text field holding a memory size in bytes (``2GiB``, ``512MiB``, plain bytes), or nothing (``None``)."""

    value = param.Integer(default=None, allow_None=True, doc="The last accepted size in bytes (None: none).")
    css_base = "tn-bytes"

    def parse(self, text: str) -> int | None:
        from engine.contract.slicing import parse_bytes

        return None if not str(text).strip() else parse_bytes(str(text).strip())

    def show(self, value: Any) -> str:
        """Exactly the value: the largest binary unit that divides it (``1536MiB``), else bytes."""
        if value is None:
            return ""
        for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{value // size}{unit}"
        return str(value)


class Tick(Viewer):
    """A checkbox whose label ticks it too (Bokeh's single Checkbox draws its label as a plain ``div``, which does
    not; a one-item checkbox group draws a real ``label``)."""

    value = param.Boolean(default=False, doc="Whether it is ticked.")
    label = param.String(default="", doc="The text beside the box.")

    def __init__(self, css_class: str = "", **params: Any):
        super().__init__(**params)
        self.group = styled(pn.widgets.CheckBoxGroup(options=[self.label], value=[self.label] if self.value else [],
                                                     inline=True, css_classes=[c for c in ("tn-tick", css_class) if c]))
        self.group.param.watch(lambda e: setattr(self, "value", self.label in e.new), "value")

    @param.depends("value", watch=True)
    def _shown(self) -> None:
        want = [self.label] if self.value else []
        if self.group.value != want:
            self.group.value = want

    def __panel__(self) -> pn.viewable.Viewable:
        return self.group


def parse_positive_float(text: Any, what: str) -> float:
    """A number > 0 (``3e-3``, ``0.001``) from a text field; ``ValueError`` saying why not."""
    s = str(text).strip()
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {s!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{what} must be a number > 0, got {s}")
    return value


class FloatField(Viewer):
    """A text field holding a number > 0 (a learning rate): like :class:`IntField`."""

    value = param.Number(default=1e-3, doc="The last accepted value.")
    label = param.String(default="", doc="The field's label (also names it in messages).")

    def __init__(self, css_class: str = "", width: int | None = None, **params: Any):
        super().__init__(**params)
        size = {"width": width} if width else {"sizing_mode": "stretch_width"}
        self.input = styled(pn.widgets.TextInput(label=self.label, value=self._text(self.value), **size,
                                                 css_classes=[c for c in ("tn-float", css_class) if c]))
        self.note = pn.pane.HTML("", stylesheets=[css("notes")], sizing_mode="stretch_width", margin=(0, 5))
        self.input.param.watch(self._typed, "value")

    @staticmethod
    def _text(value: float) -> str:
        return f"{value:g}"

    def _typed(self, event: Any) -> None:
        if event.new == self._text(self.value):
            return
        try:
            value = parse_positive_float(event.new, self.label or "the value")
        except ValueError as e:
            self.note.object = note_html(str(e), self.label)
            self.input.value = self._text(self.value)
            return
        self.note.object = ""
        self.value = value

    @param.depends("value", watch=True)
    def _shown(self) -> None:
        if self.input.value != self._text(self.value):
            self.input.value = self._text(self.value)

    def __panel__(self) -> pn.viewable.Viewable:
        size = {"width": self.input.width + 20} if self.input.width else {"sizing_mode": "stretch_width"}
        return pn.Column(self.input, self.note, margin=0, **size)


# --------------------------------------------------------------------- forms kept in drafts
MAX_FORM_TEXT = 1000  # the longest text a draft may put back into a text box (the boxes take what is typed; a draft
# is a file)


def form_values(fields: dict[str, Any]) -> dict[str, Any]:
    """The values of a form's ``fields`` (name -> widget), as a draft keeps them (JSON: str, int, float, bool)."""
    return {name: widget.value for name, widget in fields.items()}


def restore_form(fields: dict[str, Any], values: Any) -> list[str]:
    """Put a draft's ``values`` back into ``fields``, in their order (a field whose options follow an earlier one
    comes after it), each only where the widget takes it as it would take what a user picks or types; returns the
    names of the values refused (an option this studio does not offer, a number out of range, the wrong type)."""
    if not isinstance(values, dict):
        return list(fields)
    refused = []
    for name, widget in fields.items():
        if name not in values:
            continue
        if _takes(widget, values[name]):
            widget.value = values[name]
        else:
            refused.append(name)
    return refused


def _takes(widget: Any, v: Any) -> bool:
    if isinstance(widget, (pn.widgets.Select, pn.widgets.RadioButtonGroup)):
        options = widget.options
        return isinstance(v, str) and v in (options.values() if isinstance(options, dict) else options)
    if isinstance(widget, Tick):
        return isinstance(v, bool)
    if isinstance(widget, FloatField):
        try:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and parse_positive_float(v, "") == v
        except ValueError:
            return False
    if isinstance(widget, TextField):  # parsed as if typed (an IntField's range, a BytesField's units)
        try:
            return not isinstance(v, bool) and widget.parse(widget.show(v)) == v
        except (ValueError, TypeError):
            return False
    if isinstance(widget, pn.widgets.IntInput):
        lo, hi = widget.start, widget.end
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)
                             and (hi is None or v <= hi) and abs(v) < 2 ** 31)
    if isinstance(widget, pn.widgets.TextInput):
        return isinstance(v, str) and len(v) <= MAX_FORM_TEXT
    return False
