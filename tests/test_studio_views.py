"""Studio components without a browser: the canvas graph and layout, canvas gestures and fitting, the inspector
(refusals, confirmations), the gallery (registries, lateral option), cost panel, files, header and the app's tabs,
the stylesheet, and the rules for threads and exceptions."""
from __future__ import annotations

import ast
import html
import json
import re
import sys
import types
from pathlib import Path

import panel as pn
import pytest
from bokeh.document import Document
from bokeh.document.events import ModelChangedEvent

from engine.contract.cost import cost_report
from engine.design.activations import ACTIVATIONS
from engine.design.model import KINDS
from engine.design.templates import TEMPLATES, lateral_levels, make_template
from engine.format import si
from studio import app as app_module
from studio.app import StudioApp, create_app, tab_list
from studio.canvas import Canvas
from studio.cost_view import CostPanel, cards_html, chi_text, steps_html, sweep_svg
from studio.files_view import Files
from studio.gallery import Gallery, Palette
from studio.graph import canvas_graph, canvas_layout, parse_edge, parse_node, selection_from_canvas
from studio.inspector import Inspector
from studio.layout import SCALE, arrange, fit_viewport, overlapping, star_centre, tensor_label
from studio.state import MAX_UPLOAD_BYTES, StudioState
from studio.style import css, sections, stylesheet
from studio.widgets import IntField, button

STUDIO = Path(__file__).resolve().parents[1] / "studio"
# the studio's frame (other tabs' modules, written by their own authors, are checked by their own tests)
OWN = ["__init__", "app", "canvas", "cli", "cost_view", "export_view", "files_view", "fmt", "gallery", "graph",
       "inspector", "layout", "refine", "session", "state", "style", "train_view", "widgets"]


@pytest.fixture
def state(tmp_path):
    return StudioState(make_template("mera", 256, 256, 4), home=str(tmp_path))


def _ids(items):
    return {x["id"] for x in items}


def _centre(box):
    return box[0] + box[2] / 2, box[1] + box[3] / 2


# ---------------------------------------------------------------------------------------------- graph and layout
def test_canvas_graph_has_every_tensor_leg_and_bond():
    d = make_template("mera", 256, 256, 4, activation="relu")
    nodes, edges = canvas_graph(d)
    bonds = [k for k, v in d.indices.items() if v.role == "bond"]
    assert _ids(nodes) == {f"T:{t.id}" for t in d.tensors} | {f"L:{k}" for k in d.open_legs}
    assert _ids(edges) == {f"B:{b}" for b in bonds} | {f"LE:{k}" for k in d.open_legs}
    by_id = {n["id"]: n for n in nodes}
    for e in edges:
        if e["id"].startswith("B:"):
            assert e["label"] == f"{parse_edge(e['id'])[1]} · {d.indices[parse_edge(e['id'])[1]].dim}"
    for t in d.tensors:
        node = by_id[f"T:{t.id}"]
        assert node["label"] == tensor_label(d, t.id)
        assert node["label"].split("\n")[2] == f"{'×'.join(str(x) for x in d.shape(t.id))} · {si(d.tensor_params(t.id))} p"
        assert f"tn-kind-{t.kind}" in node["className"]
        assert ("tn-act" in node["className"]) == (t.activation is not None)
        if t.activation:
            assert node["style"]["--tn-act"] == f'"{t.activation}"'  # the badge text comes from the design
    for leg in d.open_legs:
        assert by_id[f"L:{leg}"]["label"] == f"{leg} · {d.indices[leg].dim}"


@pytest.mark.parametrize("kind", list(TEMPLATES))
def test_edges_leave_and_enter_on_facing_sides_and_legs_sit_by_their_tensor(kind):
    d = arrange(make_template(kind, 256, 256, 3))
    nodes, edges, boxes = canvas_layout(d)
    for e in edges:
        (sx, sy), (tx, ty) = _centre(boxes[e["source"]]), _centre(boxes[e["target"]])
        if (e["sourceHandle"], e["targetHandle"]) == ("b", "t"):
            assert sy <= ty  # from the upper node's bottom to the lower node's top
        else:
            assert (e["sourceHandle"], e["targetHandle"]) == ("r", "l") and sx <= tx
    users = d.users()
    for leg in d.open_legs:
        tb, lb = boxes[f"T:{users[leg][0]}"], boxes[f"L:{leg}"]
        gap_x = max(lb[0] - (tb[0] + tb[2]), tb[0] - (lb[0] + lb[2]), 0)
        gap_y = max(lb[1] - (tb[1] + tb[3]), tb[1] - (lb[1] + lb[3]), 0)
        assert max(gap_x, gap_y) <= 60 and min(gap_x, gap_y) <= 1 or (gap_x <= 60 and gap_y <= 60), leg


@pytest.mark.parametrize("kind", list(TEMPLATES))
@pytest.mark.parametrize("size", [(64, 32), (784, 256), (4096, 4096)])
def test_generated_designs_have_no_overlapping_boxes(kind, size):
    options = [{}] + ([{"lateral": "all"}] if lateral_levels(kind, *size) else [])
    for opt in options:
        d = arrange(make_template(kind, *size, 3, **opt))
        assert not overlapping(d), (kind, size, opt)
        _, _, boxes = canvas_layout(d)
        items = list(boxes.items())
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                (ka, (ax, ay, aw, ah)), (kb, (bx, by, bw, bh)) = items[a], items[b]
                assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah), (kind, opt, ka, kb)


def test_star_layouts_for_cp_and_tucker():
    cp = arrange(make_template("cp", 256, 256, 5))
    assert star_centre(cp) == ("H", "R")
    nodes, _, boxes = canvas_layout(cp)
    hub_y = _centre(boxes["H:R"])[1]
    ins = [t.id for t in cp.tensors if t.id.startswith("Ai")]
    outs = [t.id for t in cp.tensors if t.id.startswith("Ao")]
    assert all(_centre(boxes[f"T:{t}"])[1] < hub_y for t in ins) and all(_centre(boxes[f"T:{t}"])[1] > hub_y for t in outs)
    assert [t for t in sorted(ins, key=lambda t: boxes[f"T:{t}"][0])] == sorted(ins)  # in axis order, left to right
    tucker = arrange(make_template("tucker", 256, 256, 4))
    assert star_centre(tucker) == ("T", "C")
    _, _, boxes = canvas_layout(tucker)
    cy = _centre(boxes["T:C"])[1]
    assert all(_centre(boxes[f"T:{t.id}"])[1] < cy for t in tucker.tensors if t.id.startswith("Ui"))
    assert star_centre(make_template("mpo", 256, 256, 4)) is None  # a chain is not a star


def test_lateral_tensors_get_their_colour_between_the_levels_they_mix():
    d = arrange(make_template("ttn", 256, 256, 3, activation="gelu", lateral="all"))
    laterals = [t for t in d.tensors if t.kind == "lateral"]
    assert laterals
    nodes, _, boxes = canvas_layout(d)
    by_id = {n["id"]: n for n in nodes}
    assert "tn-kind-lateral" in sections()["canvas"]
    for t in laterals:
        assert "tn-kind-lateral" in by_id[f"T:{t.id}"]["className"]
        users = d.users()
        ins = [u for i in t.indices[:2] for u in users[i] if u != t.id]
        outs = [u for i in t.indices[2:] for u in users[i] if u != t.id]
        y = _centre(boxes[f"T:{t.id}"])[1]  # below (larger y) what it feeds, above what it reads
        assert all(_centre(boxes[f"T:{u}"])[1] > y for u in ins) and all(_centre(boxes[f"T:{u}"])[1] < y for u in outs)


def test_fit_viewport_shows_the_whole_drawing_clear_of_the_zoom_buttons():
    for kind in TEMPLATES:
        d = arrange(make_template(kind, 4096, 4096, 4))
        _, _, boxes = canvas_layout(d)
        x0 = min(b[0] for b in boxes.values())
        y0 = min(b[1] for b in boxes.values())
        x1 = max(b[0] + b[2] for b in boxes.values())
        y1 = max(b[1] + b[3] for b in boxes.values())
        for w, h in ((846, 893), (560, 690)):
            vp = fit_viewport((x0, y0, x1, y1), w, h, min_zoom=0.05)
            z = vp["zoom"]
            assert 63.5 <= x0 * z + vp["x"] and x1 * z + vp["x"] <= w - 29.5, kind
            assert 35.5 <= y0 * z + vp["y"] and y1 * z + vp["y"] <= h - 35.5, kind


def test_id_parsing_and_selection():
    assert parse_node("T:G0") == ("T", "G0") and parse_node("weird") == ("", "weird")
    assert parse_edge("HE:R:A0") == ("HE", "R", "A0") and parse_edge("B:r0") == ("B", "r0", None)
    assert selection_from_canvas(["T:G0", "L:i0"], ["B:r1", "HE:R:A0"]) == \
        {"tensors": ["G0"], "indices": ["i0", "r1", "R"]}


# ---------------------------------------------------------------------------------------------- canvas
def test_canvas_gestures_edit_the_state(state):
    canvas = Canvas(state=state)
    tid = state.add_tensor()
    assert f"T:{tid}" in _ids(canvas.flow.nodes)
    n_edges = len(canvas.flow.edges)
    canvas.flow._process_msg({"type": "edge_added", "edge": {"id": "x", "source": f"T:{tid}", "target": "T:top"}})
    bond = state.design.tensor(tid).indices[0]
    assert sorted(state.design.users()[bond]) == sorted([tid, "top"])
    assert f"B:{bond}" in _ids(canvas.flow.edges) and "x" not in _ids(canvas.flow.edges)
    assert len(canvas.flow.edges) == n_edges + 1 and state.problems == []
    # an open leg already belongs to a tensor: refused, the drawn edge disappears, a message says why
    canvas.flow._process_msg({"type": "edge_added", "edge": {"id": "y", "source": "L:i0", "target": "T:top"}})
    assert "y" not in _ids(canvas.flow.edges) and "already belongs" in state.field_errors["connect"]
    canvas.flow._process_msg({"type": "edge_deleted", "edge_ids": [f"B:{bond}"]})
    assert bond not in state.design.indices
    canvas.flow._process_msg({"type": "node_deleted", "node_ids": [f"T:{tid}"]})
    assert tid not in [t.id for t in state.design.tensors] and state.problems == []
    canvas.flow._process_msg({"type": "node_moved", "node_id": "T:top", "position": {"x": 135.0, "y": -270.0}})
    assert state.design.tensor("top").position == pytest.approx((100.0, -200.0))
    for bad in ({"x": "1e3", "y": 0}, {"x": None}, {}, "not a dict"):  # a crafted message moves nothing, raises nothing
        canvas.flow._process_msg({"type": "node_moved", "node_id": "T:top", "position": bad})
    assert state.design.tensor("top").position == pytest.approx((100.0, -200.0))
    canvas.flow._process_msg({"type": "selection_changed", "nodes": ["T:L0"], "edges": ["B:s0"]})
    assert state.selection == {"tensors": ["L0"], "indices": ["s0"]}


def test_canvas_has_no_json_editors_and_four_connection_points(state):
    canvas = Canvas(state=state)
    canvas.flow._process_msg({"type": "selection_changed", "nodes": ["T:L0"], "edges": []})
    assert canvas.flow._selected_editor is None  # panel-reactflow's JSON editor (needs an extension) is not made
    spec = canvas.flow.node_types["tensor"]
    handles = {h if isinstance(h, str) else h["id"] for h in spec["inputs"] + spec["outputs"]}
    assert handles == {"l", "t", "r", "b", "rt", "bt", "ls", "ts"}
    for hid in handles:
        assert f'data-handleid="{hid}"' in css("canvas")


def test_generate_fits_the_view_and_new_tensors_land_in_the_middle_of_it(state):
    canvas = Canvas(state=state)
    canvas.size = (846, 893)
    before = dict(canvas.flow.viewport)
    assert state.generate("cp", 256, 256, 4)
    vp = canvas.flow.viewport
    assert vp != before
    _, _, boxes = canvas_layout(state.design)
    for x, y, w, h in boxes.values():  # everything inside the canvas
        assert 0 <= x * vp["zoom"] + vp["x"] and (x + w) * vp["zoom"] + vp["x"] <= 846
        assert 0 <= y * vp["zoom"] + vp["y"] and (y + h) * vp["zoom"] + vp["y"] <= 893
    canvas.flow.viewport = {"x": -500.0, "y": 120.0, "zoom": 0.8}  # the user panned and zoomed
    tid = canvas.add_tensor("core")
    x, y = state.design.tensor(tid).position
    cx, cy = canvas.visible_centre()
    assert abs(x + 42 / SCALE - cx) < 160 and abs(y + 31 / SCALE - cy) < 160
    assert not overlapping(state.design)


@pytest.mark.parametrize("kind,n_in,n_out,bond", [("mera", 256, 256, 4), ("ttn", 64, 64, 3), ("cp", 256, 256, 4),
                                                  ("mpo", 784, 64, 4)])
def test_new_tensors_never_overlap_however_many_are_added(tmp_path, kind, n_in, n_out, bond):
    """"+ Tensor" twelve times in a row (cores and isometries): each lands clear of every box by the width its own
    label gives it (the placement used a fixed 84 px while a new tensor's box is about 108 px wide, so from the
    second to the fifth add a new tensor touched its neighbour)."""
    st = StudioState(make_template(kind, n_in, n_out, bond), home=str(tmp_path), refine_s=0, autosave=False)
    canvas = Canvas(state=st)
    canvas.size = (846, 893)
    for n in range(12):
        canvas.add_tensor("isometry" if n % 2 else "core")
        assert not overlapping(st.design), f"tensor {n + 1} overlaps"
    st.close()


@pytest.mark.parametrize("field", ["connect", "tensor", "edit", "open", "library", "template", "name", "factors:in",
                                   "factors:out", "memory_budget"])
def test_every_field_note_has_a_place_on_the_design_tab(tmp_path, field):
    """A refusal or a pending confirmation at any field the Design tab's actions use is shown there, with Apply
    anyway / Cancel for a confirmation: a bond drawn on the canvas that would make the layer larger than dense waited
    for a confirmation nobody could see or answer (seen in a randomised browser run, seed 17)."""
    from studio.app import DesignTab

    st = StudioState(make_template("mpo", 64, 64, 2), home=str(tmp_path), refine_s=0, autosave=False)
    view = pn.panel(DesignTab(state=st))

    def notes(kind: str) -> list[str]:  # the notes of that kind (tn-error: a refusal, tn-warn: a question) there
        return [str(o.object) for o in view.select(pn.pane.HTML)
                if f"class='tn-{kind}' data-field='{html.escape(field, quote=True)}'" in str(o.object)]

    st.refuse(field, "refused for a reason")
    assert any("refused for a reason" in n for n in notes("error")), f"no note for a refusal at {field!r}"
    st.param.update(field_errors={}, pending={"field": field, "message": "the layer gets larger"})
    assert any("the layer gets larger" in n for n in notes("warn")), f"no note for a confirmation at {field!r}"
    confirms = [r for r in view.select(pn.Row) if r.visible and any(
        isinstance(b, pn.widgets.Button) and "tn-confirm" in b.css_classes and b.visible for b in r.objects)]
    assert confirms, f"no visible Apply anyway for {field!r}"
    st.close()


# ---------------------------------------------------------------------------------------------- inspector
def _notes(insp):
    return [html.unescape(o.object) for o in insp.body.objects
            if isinstance(o, pn.pane.HTML) and "data-field" in str(o.object)]


def test_inspector_edits_and_shows_refusals_under_the_field(state):
    insp = Inspector(state=state)
    state.select(["L0"], [])
    assert {"kind:L0", "activation:L0", "dim:i0", "dim:s0", "leg_dim"} <= set(insp.widgets)
    insp.widgets["dim:s0"].value = "6"
    assert state.design.indices["s0"].dim == 6
    assert state.report.params == cost_report(state.design).params
    state.select([], ["s0"])
    for typed, reason in (("0", "dim must be an integer >= 1"), ("-3", "dim must be an integer >= 1"),
                          ("abc", "must be a whole number")):
        insp.widgets["dim:s0"].value = typed
        assert state.design.indices["s0"].dim == 6
        assert insp.widgets["dim:s0"].value == "6"  # the field shows the committed value again ...
        notes = _notes(insp)
        assert len(notes) == 1 and reason in notes[0] and "data-field='dim:s0'" in notes[0]  # ... and why
    insp.widgets["dim:s0"].value = "7"
    assert state.design.indices["s0"].dim == 7 and _notes(insp) == []  # the stale refusal is gone
    state.select([], [])
    insp.widgets["factors:in"].value = "16,4,4"
    assert [state.design.indices[k].dim for k in state.design.in_legs] == [16, 4, 4]
    insp.widgets["factors:in"].value = "49,16,1"
    assert state.design.in_features == 784 and insp.widgets["factors:in"].value == "49,16,1"


def test_a_huge_value_waits_for_confirmation(state):
    insp = Inspector(state=state)
    state.select([], ["s0"])
    params = state.report.params
    insp.widgets["dim:s0"].value = "99999"
    assert state.design.indices["s0"].dim == 4 and state.report.params == params
    assert state.pending["field"] == "dim:s0" and "larger than dense" in state.pending["message"]
    assert insp.widgets["dim:s0"].value == "4" and "Apply anyway" in _notes(insp)[0]
    assert state.message.startswith("confirm:")
    state.cancel()
    assert state.pending == {} and state.design.indices["s0"].dim == 4
    insp.widgets["dim:s0"].value = "99999"
    assert state.confirm() and state.design.indices["s0"].dim == 99999 and state.pending == {}
    assert state.report.params > state.report.dense_params
    assert "larger</span> than dense" in cards_html(state.report)
    insp.widgets["dim:s0"].value = "100000"  # already larger than dense: no second question
    assert state.design.indices["s0"].dim == 100000


def test_lists_of_many_legs_wrap(state):
    d = make_template("mpo", 2 ** 12, 2 ** 12, 2, in_factors=[2] * 12, out_factors=[2] * 12)
    s = StudioState(d, home=state.home)
    insp = Inspector(state=s)
    text = " ".join(str(o.object) for o in insp.body.objects if isinstance(o, pn.pane.HTML))
    assert "<code>i11</code>" in text and "overflow-wrap: anywhere" in css("info")
    assert "(i0" not in insp.widgets["factors:in"].label  # the names are not crammed into the field's label


# ---------------------------------------------------------------------------------------------- gallery and palette
def test_gallery_offers_what_the_registries_hold(state):
    g = Gallery(state=state)
    assert list(g.kind.options.values()) == list(TEMPLATES)
    assert list(g.kind.options) == [s.label for s in TEMPLATES.values()]
    assert g.activation.options == ["none", *ACTIVATIONS]
    for kind, spec in TEMPLATES.items():
        g.kind.value = kind
        assert g.activation.disabled == (not spec.nonlinear)
        assert g.options["lateral"].visible == any(o.name == "lateral" for o in spec.options)
    g.kind.value = "ttn"
    g.in_features.input.value, g.out_features.input.value = "256", "256"
    assert g.options["lateral"].options[:3] == ["none", "all", "top"]
    assert "level 0" in g.options["lateral"].options
    g.options["lateral"].value = "level 0"
    g.activation.value = "gelu"
    assert g.generate()
    assert [t.kind for t in state.design.tensors].count("lateral") >= 1 and state.design.meta.get("lateral")
    assert Palette(state=state).kind.options == list(KINDS)


def test_gallery_fields_refuse_with_a_reason_and_keep_the_last_value(state):
    g = Gallery(state=state)
    g.in_features.input.value = "-3"
    assert g.in_features.value == 256 and g.in_features.input.value == "256"
    assert "&gt;= 1" in g.in_features.note.object
    g.in_features.input.value = "784"
    assert g.in_features.value == 784 and g.in_features.note.object == ""
    g.bond.input.value = "abc"
    assert g.bond.value == 4 and "whole number" in g.bond.note.object
    g.in_factors.value = "8,a"
    assert g.factors_note.object and not g.generate() and "template" in state.field_errors
    g.in_factors.value = ""
    g.bond.input.value = "99"
    assert not g.generate() and state.pending["field"] == "template"
    assert state.confirm() and state.design.indices["s0"].dim == 99
    g.bond.input.value = "99999"  # more than torch can hold: the engine refuses, with the reason under the buttons
    assert not g.generate() and "2^63" in state.field_errors["template"]


def test_a_pasted_kilobyte_value_is_refused_with_a_short_reason(state):
    """Every refusal quotes what was typed; a pasted page of text is quoted by its ends, not whole."""
    pasted = "7y" * 2000
    g = Gallery(state=state)
    g.in_factors.value = pasted
    assert not g.generate()
    shown = state.field_errors["template"]
    assert "factors must be integers" in shown and len(shown) < 200 and "…" in shown
    assert shown in state.message and len(state.message) < 220
    g.in_factors.value = "x".join(["7"] * 2000)  # 2,000 factors: shown by their ends and their number
    assert not g.generate()
    assert "(2000 dims) multiply to about 2^5614, not 256" in state.field_errors["template"]
    assert len(state.field_errors["template"]) < 200
    g.bond.input.value = pasted
    assert g.bond.value == 4 and "whole number" in g.bond.note.object and len(g.bond.note.object) < 300


def test_a_double_click_starts_the_work_once(state):
    calls = []
    b = button("Go", lambda: calls.append(1), once=True)
    b.clicks += 1
    b.clicks += 1  # the second click of a double click arrives right after the first finished
    assert calls == [1] and not b.disabled


def test_a_double_clicks_second_half_processed_late_by_a_loaded_server_is_still_ignored(state, monkeypatch):
    """A loaded server processed the second half of a double click on Launch 0.93 s after the first launch ended
    (a second run was launched); the same click with nothing changed is ignored, a later one runs again."""
    import studio.widgets as widgets

    now = [100.0]
    monkeypatch.setattr(widgets, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    calls = []
    b = button("Launch", lambda: calls.append(1), once=True, key=lambda: "same form")
    b.clicks += 1
    now[0] += 0.93
    b.clicks += 1
    assert calls == [1]
    now[0] += widgets.COOLDOWN_S + 0.1  # a deliberate repeat, later
    b.clicks += 1
    assert calls == [1, 1] and not b.disabled


def test_palette_bond_field(state):
    p = Palette(state=state)
    p.bond.input.value = "0"
    assert state.new_bond_dim == 4 and "&gt;= 1" in p.bond.note.object
    p.bond.input.value = "7"
    assert state.new_bond_dim == 7


# ---------------------------------------------------------------------------------------------- cost panel
def test_cost_panel_shows_problems_and_keeps_numbers(state):
    panel = CostPanel(state=state)
    params = state.report.params
    assert f"data-value='{params}'" in panel.cards.object and "valid design" in panel.status.object
    state.add_tensor()
    assert "has no indices" in panel.status.object and f"data-value='{params}'" in panel.cards.object
    assert "<svg" in panel.chart.object
    rows = steps_html(state.report).count("<tr class=")
    assert rows == sum(1 for s in state.report.path if s.op == "einsum" and s.flops)
    assert state.new_design()
    assert "No valid design yet" in panel.cards.object and panel.chart.object == ""


def test_sweep_chart_and_scaling_are_written_as_the_ui_writes_numbers(state):
    svg = sweep_svg(state.sweep)
    labels = re.findall(r">([0-9.]+[kMG]?)</text>", svg)
    assert labels and all(not lab.endswith("m") for lab in labels)  # 10M, never 10m
    assert any(lab.endswith(("k", "M")) for lab in labels)
    for chi in state.sweep["chi"]:
        assert f">{chi}</text>" in svg
    assert "<title>χ = 4:" in svg and "class='now'" in svg
    assert chi_text("O(chi^3)") == "O(χ<sup>3</sup>)" and chi_text("2 * chi^4") == "2·χ<sup>4</sup>"
    shown = re.sub(r"data-value='[^']*'", "", cards_html(state.report))
    assert "O(χ<sup>" in shown and "chi" not in shown
    assert "needs bonds" in sweep_svg({"chi": [4], "params": [1], "forward_flops": [1]})


def test_the_design_tab_writes_no_raw_bokeh_model():
    """Every change the Design tab makes to the document is to a model a Panel component manages (so it is safe
    from any callback); a raw Bokeh write (a ColumnDataSource, a range) is what raised _pending_writes."""
    doc = Document()
    app = create_app(home=None, state=StudioState(make_template("mera", 256, 256, 4), autosave=False))
    tab = app.design
    root = pn.panel(tab).get_root(doc)
    doc.add_root(root)
    events = []
    doc.on_change(events.append)
    s = app.state
    s.generate("cp", 64, 32, 4)
    s.select([], ["R"])
    s.set_dim("R", 6)
    s.generate("ttn", 256, 256, 3, options={"lateral": "all"})
    s._apply_refinement(s.valid_design, (s.batch, s.dtype, s.schedule), s.report)
    changed = {e.model for e in events if isinstance(e, ModelChangedEvent)}
    assert changed
    managed = set()
    for obj in pn.panel(tab).select():
        for model, _ in getattr(obj, "_models", {}).values():
            managed.add(model)
    raw = [m for m in changed if m not in managed]
    assert raw == [], [type(m).__name__ for m in raw]


# ---------------------------------------------------------------------------------------------- files
def test_files_download_upload_and_library(state):
    files = Files(state=state)
    payload = json.loads(files._payload().getvalue())
    assert payload == state.design.to_dict()
    files.save_name.value = "saved one"
    assert files.save()
    assert state.design.name == "saved one" and files.save_name.value == "saved one"  # one name, one truth
    assert any("saved_one" in k for k in files.choice.options)
    other = make_template("tucker", 64, 64, 3)
    files.upload.filename = "tucker.json"
    files.upload.value = other.to_json().encode()
    assert state.design.fingerprint() == other.fingerprint()
    assert files.save_name.value == other.name and files.download.filename == "tucker_64x64_chi_3.json"
    files.upload.filename = "nope.json"
    files.upload.value = b'{"format": "nope"}'
    assert "not a TN Studio design" in state.field_errors["open"] and "nope.json" in state.field_errors["open"]
    files.upload.filename = "big.json"
    files.upload.value = b" " * (MAX_UPLOAD_BYTES + 1)
    assert "at most 2 MiB" in state.field_errors["open"]
    assert state.design.fingerprint() == other.fingerprint()
    files.choice.value = next(v for k, v in files.choice.options.items() if "saved_one" in k)
    assert files.open_selected()
    assert state.design.fingerprint() == make_template("mera", 256, 256, 4).fingerprint()
    assert "open" not in state.field_errors  # the refusal was cleared by the next action


def test_saving_over_another_library_design_asks_first(state):
    """Save replaced whatever the library file held: another design whose name maps to the same file ('fc 6' and
    'fc_6'), or another design saved under the same name. Re-saving the file the draft came from does not ask."""
    from engine.design.library import designs_dir
    from engine.design.model import load_design

    files = Files(state=state)
    first = state.design.copy()
    files.save_name.value = "fc_6"
    assert files.save()
    path = designs_dir(state.home) / "fc_6.json"
    assert state.generate("ttn", 64, 64, 3, "gelu")  # another design, saved as a name that maps to the same file
    files.save_name.value = "fc 6"
    assert not files.save()
    assert state.pending == {"field": "library", "message": "saving replaces fc_6.json, which holds the design 'fc_6'"}
    assert load_design(path).fingerprint() == first.fingerprint()  # nothing replaced yet
    state.cancel()
    assert load_design(path).fingerprint() == first.fingerprint() and not state.pending
    assert not files.save() and state.pending["field"] == "library"
    assert state.confirm()  # Apply anyway
    saved = load_design(path)
    assert saved.name == "fc 6" and saved.fingerprint() == state.design.fingerprint() != first.fingerprint()
    bond = next(k for k, v in state.design.indices.items() if v.role == "bond")
    assert state.set_dim(bond, 2)  # an edit of the draft saved from that file
    files.save_name.value = "fc 6"
    assert files.save() and not state.pending  # its own file: saved again without asking
    assert load_design(path).fingerprint() == state.design.fingerprint()
    assert state.generate("mpo", 64, 64, 2)  # a new design under the same name: another version of it
    files.save_name.value = "fc 6"
    assert not files.save()
    assert state.pending["message"].startswith("saving replaces fc_6.json, which holds another version of 'fc 6'")
    state.cancel()
    files.choice.value = str(path)
    assert files.open_selected()  # opened from the library: its own file again
    assert state.set_dim(bond, 3) and files.save() and not state.pending


# ---------------------------------------------------------------------------------------------- the app
@pytest.mark.parametrize("damage", ["garbage", "folder", "bad row"])
def test_the_studio_opens_on_a_damaged_run_store_and_says_how_to_repair_it(damage, tmp_path):
    """A damaged runs.db made the whole page blank (the Train tab opened the store while the app was built)."""
    import sqlite3

    from engine.train.store import RunStore

    runs = tmp_path / "runs"
    if damage == "bad row":
        store = RunStore(runs)
        rid = store.create_run({"dataset": "digits"}, None)
        con = sqlite3.connect(runs / "runs.db")
        with con:
            con.execute("UPDATE runs SET summary = '{not json' WHERE id = ?", (rid,))
        con.close()
    else:
        runs.mkdir()
        if damage == "folder":
            (runs / "runs.db").mkdir()
        else:
            (runs / "runs.db").write_bytes(b"garbage " * 512)
    app = create_app(home=str(tmp_path))
    hint = app.components["Train"].table_hint.object
    assert "Run store unavailable" in hint and "repair" in hint
    assert app.state.design.tensors  # the Design tab works as ever
    inspect = app.components["Inspect"]
    inspect.refresh_runs()
    assert "cannot read the runs" in inspect.error


@pytest.mark.parametrize("draft", [b'{"design": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"\xff\xfe garbage",
                                   b'{"design": {"format": "tnstudio-design", "version": 1, "name": "d", '
                                   b'"target": {"kind": "linear", "in_features": 4, "out_features": 4}, '
                                   b'"indices": {"i": {"dim": 4, "role": "in", "axis": 0}, "o": {"dim": 4, '
                                   b'"role": "out", "axis": 0}}, "tensors": [{"id": "A", "indices": ["i", "o"], '
                                   b'"position": [1e400, 0]}]}}'])
def test_a_damaged_draft_is_set_aside_and_the_studio_says_so(draft, tmp_path):
    (tmp_path / "draft.json").write_bytes(draft)
    app = create_app(home=str(tmp_path))
    assert app.state.design.tensors and "could not be restored" in app.state.message
    assert (tmp_path / "draft.damaged.json").read_bytes() == draft  # kept, not overwritten by the next autosave
    assert len(app.state.message) < 300


def test_app_components_and_tabs(tmp_path):
    app = create_app(home=str(tmp_path))
    assert isinstance(app, StudioApp) and app.state.home == str(tmp_path)
    assert list(app.components)[0] == "Design" and {"Train", "Export"} <= set(app.components)
    assert app.design.canvas.state is app.state and app.components["Train"].state is app.state
    assert [t for t, _ in tab_list()][: len(app_module.TABS)] != [] and app.tabs._names == list(app.components)
    assert app.show("Export") is app.components["Export"] and app.tabs.active == list(app.components).index("Export")


def test_optional_tabs_are_added_when_their_module_exists(monkeypatch, tmp_path):
    monkeypatch.setattr(app_module, "OPTIONAL_TABS", [("Extra", "studio.extra_view_for_test", "ExtraView", "Design")])
    assert "Extra" not in [t for t, _ in tab_list()]
    fake = types.ModuleType("studio.extra_view_for_test")

    class ExtraView(pn.viewable.Viewer):
        def __init__(self, state=None, **kw):
            super().__init__(**kw)
            self.state = state

        def __panel__(self):
            return pn.pane.Markdown(f"extra {self.state.design.name}")

    fake.ExtraView = ExtraView
    monkeypatch.setitem(sys.modules, "studio.extra_view_for_test", fake)
    titles = [t for t, _ in tab_list()]
    assert titles.index("Extra") == titles.index("Design") + 1
    app = create_app(home=str(tmp_path))
    assert app.components["Extra"].state is app.state


def test_header_shows_name_size_and_clears_stale_refusals(state):
    app = StudioApp(state=state, tabs=[])
    h = app.header
    assert "mera 256x256 chi=4" in h.info.object and f"data-version='{state.version}'" in h.info.object
    state.load_json("{", source="bad3.json")
    assert "refused" in h.info.object and "bad3.json" in h.info.object
    state.set_dim("s0", 5)
    assert "bad3.json" not in h.info.object and "refused" not in h.info.object
    assert not h.undo.disabled and h.redo.disabled
    assert state.new_design() and state.design.tensors == [] and "untitled" in h.info.object
    assert state.undo() and state.design.indices["s0"].dim == 5


def test_serve_warns_on_an_open_address_without_authentication(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(pn, "serve", lambda *a, **kw: seen.update(kw))
    with pytest.warns(UserWarning, match="--basic-auth"):
        app_module.serve(port=5999, address="0.0.0.0")
    assert seen["address"] == "0.0.0.0" and seen["websocket_origin"] == "*"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app_module.serve(port=5999, address="0.0.0.0", basic_auth="secret")  # protected: no warning
        app_module.serve(port=5999)  # loopback: no warning
    assert seen["basic_auth"] is None if "basic_auth" not in seen else True
    from engine.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--basic-auth" in out and "--oauth-provider" in out and "--cookie-secret" in out


def test_int_field():
    f = IntField(label="batch", value=64, maximum=4096)
    f.input.value = "8192"
    assert f.value == 64 and "at most 4,096" in f.note.object
    f.input.value = " 1,024 "
    assert f.value == 1024 and f.input.value == "1024"


# ---------------------------------------------------------------------------------------------- style and rules
def test_stylesheet_is_package_data_with_a_rule_for_every_kind():
    import tomllib

    pyproject = tomllib.loads((STUDIO.parent / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["studio"]
    assert (STUDIO / "static" / "studio.css").is_file() and "react-flow__node" in stylesheet()
    for kind in KINDS:
        assert f".tn-kind-{kind}" in css("canvas"), kind
    used = set()
    for path in STUDIO.glob("*.py"):
        used |= set(re.findall(r"css\(([^)]*)\)", path.read_text()))
    names = {n.strip().strip("\"'") for call in used for n in call.split(",") if n.strip().startswith(("'", '"'))}
    assert names and names <= set(sections()), names - set(sections())
    for path in (STUDIO / f"{m}.py" for m in OWN):  # no CSS left in Python strings
        assert not re.search(r"\{[^{}]*:\s*#[0-9a-f]{3,6}", path.read_text().split('"""', 2)[-1]), path.name


def test_no_test_hooks_and_no_unexplained_broad_excepts():
    for path in (STUDIO / f"{m}.py" for m in OWN):
        text = path.read_text()
        assert "# for tests" not in text and "._studio" not in text and "_export_view" not in text, path.name
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and (node.type is None or (isinstance(node.type, ast.Name)
                                                                              and node.type.id == "Exception")):
                body = ast.unparse(node)
                assert re.search(r"\blog\.(exception|warning|error|info|debug)\(", body), (path.name, node.lineno)
                line = text.splitlines()[node.lineno - 1]
                assert "#" in line, (path.name, node.lineno)  # and the reason is written next to it


def test_views_follow_the_registries():
    from engine.train.data import dataset_names
    from engine.train.models import model_names
    from studio.train_view import TrainView

    s = StudioState(make_template("mpo", 64, 32, 4), autosave=False)
    tv = TrainView(state=s)
    assert sorted(tv.dataset.options.values()) == sorted(dataset_names())
    # every design model kind is offered; the network kind is the "Current network" switch above the form
    assert list(tv.model.options.values()) + ["network"] == list(model_names())
    assert "network" in tv.what.options.values()
    assert tv.device.options[:2] == ["auto", "cpu"]


def test_memory_budget_field_shows_the_plan_the_cost_model_picks():
    """The Live cost's memory budget: typed text -> state -> the report the engine gives for that budget (sliced
    plan on its card); a malformed size or an unreachable budget is refused under the field; conv designs hide it."""
    d = make_template("mera", 1024, 1024, 2, activation="gelu")
    s = StudioState(d, autosave=False, refine_s=0)
    panel = CostPanel(state=s)
    unbudgeted = cost_report(d, batch=64)
    assert s.report.train_memory_bytes == unbudgeted.train_memory_bytes and s.report.memory_budget is None
    budget = unbudgeted.train_memory_bytes // 4  # too little for the unsliced program
    panel.budget.input.value = str(budget)
    want = cost_report(d, batch=64, memory_budget=budget)
    assert s.memory_budget == budget and want.slices > 1
    assert (s.report.slices, s.report.train_memory_bytes) == (want.slices, want.train_memory_bytes)
    assert s.report.train_memory_bytes <= budget
    text = re.sub(r"<[^>]+>", " ", panel.cards.object)
    assert "Memory budget" in text and f"{want.slices} slices" in text and "planned for" not in text
    s.batch = 20  # not a power of two: the engine plans for the batch's bucket (up to 32), and the card says so
    text = re.sub(r"<[^>]+>", " ", panel.cards.object)
    assert "planned for batches up to 32" in text
    assert s.report.slices == cost_report(d, batch=20, memory_budget=budget).slices
    s.batch = 64
    panel.budget.input.value = "two gigs"  # refused: the note says why, the last budget stays
    assert "memory size" in panel.budget.note.object and s.memory_budget == budget
    assert panel.budget.input.value == panel.budget.show(budget)
    panel.budget.input.value = "1KiB"  # nothing trains within it: the reason under the field, the report stays
    assert "within 1 KiB" in panel.budget_note.text.object and s.report.slices == want.slices
    panel.budget.input.value = ""  # no budget: the unbudgeted report again, the note gone
    assert s.memory_budget is None and s.report.memory_budget is None and panel.budget_note.text.object == ""
    from engine.design.conv import make_conv_template

    s.replace(make_conv_template("cp", 16, 8, 3, 2, padding=1))
    assert not panel.budget_box.visible
