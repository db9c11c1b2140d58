"""Right column, top: edit what is selected (a tensor, a bond or leg, several items, or the design itself).

Edits go through the state's strict field methods: a refused edit leaves the design as it was, the field shows the
committed value again and the reason appears under it; an edit that makes the layer much larger waits under its
field for Apply anyway / Cancel. Every number field is a text field, so whatever is typed reaches the state and
gets an answer (a number field of the browser would silently drop "abc" or clamp -3).
"""
from __future__ import annotations

import html
from typing import Any, Callable

import panel as pn
import param
from panel.viewable import Viewer

from engine.design.activations import ACTIVATIONS
from engine.design.factorize import parse_factors
from engine.design.model import KINDS
from engine.format import si

from .state import StudioState, safe_params
from .style import css, styled
from .widgets import button, confirm_buttons, field_note_html, section

KEEP = "—"


def info(text_html: str, **kw: Any) -> pn.pane.HTML:
    return pn.pane.HTML(f"<div class='tn-info'>{text_html}</div>", stylesheets=[css("info")],
                        sizing_mode="stretch_width", margin=kw.pop("margin", (2, 5)), **kw)


class Inspector(Viewer):
    """Rebuilds its body whenever the design, the selection, a refusal or a confirmation changes.

    ``widgets`` maps field keys (``"dim:<index>"``, ``"kind:<tensor>"``, ``"activation:<tensor>"``,
    ``"factors:in"``, ``"factors:out"``, ``"name"``, ``"leg_dim"``, ``"leg_role"``) to the widgets now shown.
    """

    state = param.ClassSelector(class_=StudioState, doc="The studio state whose selection is edited.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.body = pn.Column(sizing_mode="stretch_width", margin=0)
        self.widgets: dict[str, pn.widgets.Widget] = {}
        self.rebuild()

    def __panel__(self) -> pn.viewable.Viewable:
        return section("Inspector", self.body, css_classes=["tn-inspector"])

    # ------------------------------------------------------------------ helpers
    def _text(self, key: str, label: str, value: Any, on_change: Callable[[str], Any], **kw: Any) -> pn.widgets.TextInput:
        size = {"sizing_mode": "stretch_width"} if "width" not in kw else {}
        w = styled(pn.widgets.TextInput(label=label, value=str(value), **size, **kw,
                                        css_classes=["tn-field", f"tn-field-{key.replace(':', '-')}"]))
        w.param.watch(lambda e: on_change(e.new), "value")
        self.widgets[key] = w
        return w

    def _note(self, key: str) -> list:
        """The note under field ``key``: its refusal, or the confirmation question with its buttons."""
        text = field_note_html(self.state, key)
        if not text:
            return []
        out: list = [pn.pane.HTML(text, stylesheets=[css("notes")], sizing_mode="stretch_width", margin=(0, 5))]
        if self.state.pending.get("field") == key:
            out.append(confirm_buttons(self.state))
        return out

    @param.depends("state.version", "state.selection", "state.field_errors", "state.pending", watch=True)
    def rebuild(self) -> None:
        self.widgets = {}
        s, d = self.state, self.state.design
        tensors = [t for t in s.selection.get("tensors", []) if any(x.id == t for x in d.tensors)]
        indices = [i for i in s.selection.get("indices", []) if i in d.indices]
        if len(tensors) == 1 and not indices:
            items = self._tensor(tensors[0])
        elif len(indices) == 1 and not tensors:
            items = self._index(indices[0])
        elif tensors or indices:
            items = self._many(tensors, indices)
        else:
            items = self._design()
        self.body[:] = items

    # ------------------------------------------------------------------ views
    def _design(self) -> list:
        s, d = self.state, self.state.design
        kind = "linear" if d.is_linear else "nonlinear"
        c = d.conv
        what = (f"K is <b>{c.out_channels:,} × {c.in_channels:,} × {c.kernel_size[0]} × {c.kernel_size[1]}</b> "
                f"(nn.Conv2d's weight: {html.escape(c.label)})" if c is not None else
                f"W is <b>{d.in_features:,} × {d.out_features:,}</b>")
        out = [info(f"Nothing selected: the whole design. {what}, {len(d.tensors)} tensors, {kind}.",
                    css_classes=["tn-design-info"]),
               self._text("name", "design name", d.name, s.set_name)]
        out += self._note("name")
        size = "channels" if c is not None else "features"
        for role in ("in", "out"):
            legs = d.in_legs if role == "in" else d.out_legs
            out.append(info(f"<span class='tn-chip tn-{role}'>{role} legs</span> "
                            + (" ".join(f"<code>{html.escape(k)}</code>" for k in legs) or "none"),
                            margin=(6, 5, 0, 5)))
            out.append(self._text(f"factors:{role}", f"{role} leg dims (multiply to {role} {size})",
                                  ",".join(str(d.indices[k].dim) for k in legs), lambda t, r=role: self._factors(r, t)))
            out += self._note(f"factors:{role}")
        if c is not None:  # the kernel's spatial legs: their dims multiply to kh * kw (the kernel is the target's)
            out.append(info("<span class='tn-chip tn-kernel'>kernel legs</span> "
                            + (" ".join(f"<code>{html.escape(k)}</code> · {d.indices[k].dim}" for k in d.kernel_legs)
                               or "none") + f" (multiply to {c.kernel_size[0]} × {c.kernel_size[1]})",
                            margin=(6, 5, 0, 5), css_classes=["tn-kernel-info"]))
        if any("multiply to" in p for p in s.problems):
            out.append(button("Fit layer size to the legs", s.fit_features, color="warning",
                              sizing_mode="stretch_width", css_classes=["tn-fit"], key=lambda: s.version))
            out += self._note("fit")
        out.append(info("Select a tensor, bond or leg on the canvas to edit it."))
        return out

    def _factors(self, role: str, text: str) -> None:
        try:
            dims = parse_factors(text) or []
        except ValueError as e:
            self.state.refuse(f"factors:{role}", str(e))
            return
        self.state.set_factors(role, dims)

    def _tensor(self, tid: str) -> list:
        s, d = self.state, self.state.design
        t = d.tensor(tid)
        kind = styled(pn.widgets.Select(label="kind", options=list(dict.fromkeys([*KINDS, t.kind])), value=t.kind,
                                        width=130, css_classes=["tn-kind"]))
        kind.param.watch(lambda e: s.set_tensor(tid, kind=e.new), "value")
        acts = ["none", *ACTIVATIONS] + ([t.activation] if t.activation and t.activation not in ACTIVATIONS else [])
        act = styled(pn.widgets.Select(label="activation", options=acts, value=t.activation or "none", width=130,
                                       css_classes=["tn-activation"]))
        act.param.watch(lambda e: s.set_tensor(tid, activation=e.new), "value")
        self.widgets[f"kind:{tid}"], self.widgets[f"activation:{tid}"] = kind, act
        users = d.users()
        params = d.tensor_params(tid) if all(i in d.indices for i in t.indices) else 0
        out = [info(f"Tensor <b>{html.escape(tid)}</b> · {len(t.indices)} legs · {params:,} core params",
                    css_classes=["tn-tensor-info"]),
               pn.Row(kind, act, margin=0)] + self._note(f"kind:{tid}") + self._note(f"activation:{tid}")
        for i in t.indices:
            ix = d.indices.get(i)
            if ix is None:
                continue
            others = [u for u in users.get(i, []) if u != tid]
            where = (f"axis {ix.axis}" if ix.role in ("in", "out", "kernel") else
                     ("to " + ", ".join(others) if others else "dangling"))
            dim = self._text(f"dim:{i}", "", ix.dim, lambda v, i=i: s.set_dim(i, v), width=80)
            rm = button("✕", (lambda i=i, hyper=ix.hyperedge: s.delete(detach=[(tid, i)]) if hyper
                              else s.delete(indices=[i])), width=36, align="center", key=lambda: s.version,
                        description=f"remove {i} from {tid}", css_classes=["tn-remove-leg"])
            out.append(pn.Row(info(f"<span class='tn-chip tn-{ix.role}'>{ix.role}</span> <code>{html.escape(i)}</code> "
                                   f"{html.escape(where)}"), dim, rm, margin=0, sizing_mode="stretch_width"))
            out += self._note(f"dim:{i}")
        role = styled(pn.widgets.Select(label="new open leg", options=["in", "out"], value="in", width=110,
                                        css_classes=["tn-leg-role"]))
        leg_dim = styled(pn.widgets.TextInput(label="dim", value="2", width=70, css_classes=["tn-leg-dim"]))
        self.widgets["leg_role"], self.widgets["leg_dim"] = role, leg_dim
        add = button("+ Leg", lambda: s.add_open_leg(tid, role.value, leg_dim.value), width=70, align="end",
                     css_classes=["tn-add-leg"], key=lambda: s.version)
        delete = button(f"Delete {tid}", lambda: s.delete(tensors=[tid]), color="danger",
                        sizing_mode="stretch_width", css_classes=["tn-delete"], key=lambda: s.version)
        out += [pn.Row(role, leg_dim, add, margin=0)] + self._note("open_leg") + [delete]
        return out

    def _index(self, name: str) -> list:
        s, d = self.state, self.state.design
        ix = d.indices[name]
        users = d.users().get(name, [])
        if ix.role in ("in", "out", "kernel"):
            what = f"Open <b>{ix.role}</b> leg <code>{html.escape(name)}</code> (axis {ix.axis}) on " \
                   f"{html.escape(', '.join(users)) or 'no tensor'}"
        elif ix.hyperedge:
            what = f"Hyperedge <code>{html.escape(name)}</code> shared by {html.escape(', '.join(users))}"
        else:
            what = f"Bond <code>{html.escape(name)}</code> between {html.escape(' and '.join(users)) or 'nothing'}"
        dim = self._text(f"dim:{name}", "dimension", ix.dim, lambda v: s.set_dim(name, v), width=140)
        delete = button(f"Delete {name}", lambda: s.delete(indices=[name]), color="danger",
                        sizing_mode="stretch_width", css_classes=["tn-delete"], key=lambda: s.version)
        return [info(what, css_classes=["tn-index-info"]), dim, *self._note(f"dim:{name}"), delete]

    def _many(self, tensors: list[str], indices: list[str]) -> list:
        s = self.state
        act = styled(pn.widgets.Select(label="activation for all selected tensors", options=[KEEP, "none", *ACTIVATIONS],
                                       value=KEEP, sizing_mode="stretch_width", disabled=not tensors,
                                       css_classes=["tn-activation-all"]))

        def set_all(e: Any) -> None:
            if e.new != KEEP:
                for t in tensors:
                    s.set_tensor(t, activation=e.new)

        act.param.watch(set_all, "value")
        delete = button(f"Delete {len(tensors) + len(indices)} selected",
                        lambda: s.delete(tensors=tensors, indices=indices), color="danger",
                        sizing_mode="stretch_width", css_classes=["tn-delete"], key=lambda: s.version)
        params = sum(self.state.design.tensor_params(t) for t in tensors
                     if all(i in self.state.design.indices for i in self.state.design.tensor(t).indices))
        return [info(f"<b>{len(tensors)}</b> tensors ({si(params)} core params) and <b>{len(indices)}</b> "
                     f"bonds/legs selected: {html.escape(', '.join(tensors + indices))}"), act, delete]


__all__ = ["Inspector", "safe_params"]
