"""Right column, top: edit what is selected (a tensor, a bond or leg, several items, or the design itself).

Edits go through the state's strict field methods: a refused edit leaves the design as it was and shows the
validation message under the field that caused it.
"""
from __future__ import annotations

import html
from typing import Any, Callable

import panel as pn

from engine.design.model import ACTIVATIONS, KINDS
from engine.design.factorize import parse_factors

from .fmt import si
from .state import StudioState
from .widgets import ERROR_CSS, error_html, section

INFO_CSS = ".tn-info{font:12.5px Inter,system-ui,sans-serif;color:#334155;line-height:1.5}" \
           ".tn-info b{color:#0f172a}.tn-info code{background:#f1f5f9;border-radius:4px;padding:0 4px}" \
           ".tn-chip{display:inline-block;border-radius:999px;padding:0 7px;font-size:11px;font-weight:600}" \
           ".tn-in{background:#ecfeff;color:#0e7490}.tn-out{background:#fdf2f8;color:#be185d}" \
           ".tn-bond{background:#f1f5f9;color:#334155}"


def _info(text: str) -> pn.pane.HTML:
    return pn.pane.HTML(f"<div class='tn-info'>{text}</div>", stylesheets=[INFO_CSS], sizing_mode="stretch_width",
                        margin=(2, 5))


def _err(state: StudioState, field: str) -> pn.pane.HTML:
    return pn.pane.HTML(error_html(state.field_errors.get(field), field), stylesheets=[ERROR_CSS],
                        sizing_mode="stretch_width", margin=(0, 5))


class Inspector:
    """Rebuilds its body whenever the design, the selection or a field error changes."""

    def __init__(self, state: StudioState):
        self.state = state
        self.body = pn.Column(sizing_mode="stretch_width", margin=0)
        self.widgets: dict[str, pn.widgets.Widget] = {}  # by field key, for tests and the browser
        state.param.watch(lambda *_: self.rebuild(), ["version", "selection", "field_errors"])
        self.rebuild()

    def view(self) -> pn.viewable.Viewable:
        return section("Inspector", self.body)

    # ------------------------------------------------------------------ helpers
    def _int_field(self, key: str, label: str, value: int, on_change: Callable[[Any], Any], width: int = 90):
        w = pn.widgets.IntInput(label=label, value=int(value), start=1, width=width,
                                css_classes=["tn-field", f"tn-field-{key.replace(':', '-')}"])
        w.param.watch(lambda e: on_change(e.new), "value")
        self.widgets[key] = w
        return w

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
        name = pn.widgets.TextInput(label="design name", value=d.name, sizing_mode="stretch_width")
        name.param.watch(lambda e: s.set_name(e.new), "value")
        out = [_info(f"Nothing selected: the whole design. W is <b>{d.in_features:,} × {d.out_features:,}</b>, "
                     f"{len(d.tensors)} tensors, {'linear' if d.is_linear else 'nonlinear'}."), name, _err(s, "name")]
        for role in ("in", "out"):
            legs = d.in_legs if role == "in" else d.out_legs
            w = pn.widgets.TextInput(label=f"{role} legs ({', '.join(legs) or 'none'})",
                                     value=",".join(str(d.indices[k].dim) for k in legs), sizing_mode="stretch_width",
                                     css_classes=[f"tn-factors-{role}"])
            w.param.watch(lambda e, r=role: self._factors(r, e.new), "value")
            self.widgets[f"factors:{role}"] = w
            out += [w, _err(s, f"factors:{role}")]
        if any("multiply to" in p for p in s.problems):
            fit = pn.widgets.Button(label="Fit layer size to the legs", color="warning",
                                    sizing_mode="stretch_width")
            fit.on_click(lambda *_: s.fit_features())
            out.append(fit)
        out.append(_info("Select a tensor, bond or leg on the canvas to edit it."))
        return out

    def _factors(self, role: str, text: str) -> None:
        try:
            dims = parse_factors(text) or []
        except ValueError as e:
            self.state._refuse(f"factors:{role}", str(e))
            return
        self.state.set_factors(role, dims)

    def _tensor(self, tid: str) -> list:
        s, d = self.state, self.state.design
        t = d.tensor(tid)
        kind = pn.widgets.Select(label="kind", options=list(KINDS), value=t.kind, width=130)
        kind.param.watch(lambda e: s.set_tensor(tid, kind=e.new), "value")
        act = pn.widgets.Select(label="activation", options=["none", *ACTIVATIONS], value=t.activation or "none",
                                width=130, css_classes=["tn-activation"])
        act.param.watch(lambda e: s.set_tensor(tid, activation=e.new), "value")
        self.widgets[f"kind:{tid}"], self.widgets[f"activation:{tid}"] = kind, act
        users = d.users()
        params = d.tensor_params(tid) if all(i in d.indices for i in t.indices) else 0
        out = [_info(f"Tensor <b>{html.escape(tid)}</b> · {len(t.indices)} legs · {si(params)} parameters"),
               pn.Row(kind, act, margin=0), _err(s, f"kind:{tid}"), _err(s, f"activation:{tid}")]
        for i in t.indices:
            ix = d.indices.get(i)
            if ix is None:
                continue
            others = [u for u in users.get(i, []) if u != tid]
            role = ix.role if ix.role != "bond" else "bond"
            where = (f"axis {ix.axis}" if ix.role in ("in", "out") else
                     ("to " + ", ".join(others) if others else "dangling"))
            dim = self._int_field(f"dim:{i}", "", ix.dim, lambda v, i=i: s.set_dim(i, v), width=80)
            rm = pn.widgets.Button(label="✕", width=34, color="light", align="center",
                                   description=f"remove {i} from {tid}")
            rm.on_click(lambda *_, i=i, hyper=ix.hyperedge: s.delete(detach=[(tid, i)]) if hyper
                        else s.delete(indices=[i]))
            out.append(pn.Row(_info(f"<span class='tn-chip tn-{role}'>{role}</span> <code>{html.escape(i)}</code> "
                                    f"{html.escape(where)}"), dim, rm, margin=0, sizing_mode="stretch_width"))
            out.append(_err(s, f"dim:{i}"))
        role = pn.widgets.Select(label="new open leg", options=["in", "out"], value="in", width=110)
        dim = pn.widgets.IntInput(label="dim", value=2, start=1, width=70)
        add = pn.widgets.Button(label="+ Leg", width=70, align="end")
        add.on_click(lambda *_: s.add_open_leg(tid, role.value, int(dim.value)))
        delete = pn.widgets.Button(label=f"Delete {tid}", color="danger", sizing_mode="stretch_width")
        delete.on_click(lambda *_: s.delete(tensors=[tid]))
        out += [pn.Row(role, dim, add, margin=0), _err(s, "open_leg"), delete]
        return out

    def _index(self, name: str) -> list:
        s, d = self.state, self.state.design
        ix = d.indices[name]
        users = d.users().get(name, [])
        if ix.role in ("in", "out"):
            what = f"Open <b>{ix.role}</b> leg <code>{html.escape(name)}</code> (axis {ix.axis}) on " \
                   f"{', '.join(users) or 'no tensor'}"
        elif ix.hyperedge:
            what = f"Hyperedge <code>{html.escape(name)}</code> shared by {', '.join(users)}"
        else:
            what = f"Bond <code>{html.escape(name)}</code> between {' and '.join(users) or 'nothing'}"
        dim = self._int_field(f"dim:{name}", "dimension", ix.dim, lambda v: s.set_dim(name, v), width=120)
        delete = pn.widgets.Button(label=f"Delete {name}", color="danger", sizing_mode="stretch_width")
        delete.on_click(lambda *_: s.delete(indices=[name]))
        return [_info(what), dim, _err(s, f"dim:{name}"), delete]

    def _many(self, tensors: list[str], indices: list[str]) -> list:
        s = self.state
        act = pn.widgets.Select(label="activation for all selected tensors", options=["—", "none", *ACTIVATIONS],
                                value="—", sizing_mode="stretch_width", disabled=not tensors)

        def set_all(e):
            if e.new != "—":
                for t in tensors:
                    s.set_tensor(t, activation=e.new)

        act.param.watch(set_all, "value")
        delete = pn.widgets.Button(label=f"Delete {len(tensors) + len(indices)} selected", color="danger",
                                   sizing_mode="stretch_width")
        delete.on_click(lambda *_: s.delete(tensors=tensors, indices=indices))
        return [_info(f"<b>{len(tensors)}</b> tensors and <b>{len(indices)}</b> bonds/legs selected: "
                      f"{html.escape(', '.join(tensors + indices))}"), act, delete]
