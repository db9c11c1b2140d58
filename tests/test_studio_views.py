"""Studio views without a browser: the canvas graph, canvas gestures, inspector, cost panel, files and the app."""
from __future__ import annotations

import json
import sys
import types

import panel as pn
import pytest

from engine.contract.cost import cost_report
from engine.design.templates import make_template
from studio.app import create_app
from studio.canvas import Canvas
from studio.cost_view import CostPanel, cards_html, steps_html
from studio.files_view import Files
from studio.graph import canvas_graph, parse_edge, parse_node, selection_from_canvas
from studio.inspector import Inspector
from studio.state import StudioState


@pytest.fixture
def state(tmp_path):
    return StudioState(make_template("mera", 256, 256, 4), home=str(tmp_path))


def _ids(items):
    return {x["id"] for x in items}


def test_canvas_graph_has_every_tensor_leg_and_bond():
    d = make_template("mera", 256, 256, 4, activation="relu")
    nodes, edges = canvas_graph(d)
    bonds = [k for k, v in d.indices.items() if v.role == "bond"]
    assert _ids(nodes) == {f"T:{t.id}" for t in d.tensors} | {f"L:{k}" for k in d.open_legs}
    assert _ids(edges) == {f"B:{b}" for b in bonds} | {f"LE:{k}" for k in d.open_legs}
    for e in edges:
        if e["id"].startswith("B:"):
            assert e["label"].endswith(f"· {d.indices[parse_edge(e['id'])[1]].dim}")  # dim on every bond
    by_id = {n["id"]: n for n in nodes}
    for t in d.tensors:
        node = by_id[f"T:{t.id}"]
        assert t.kind in node["label"] and f"tn-kind-{t.kind}" in node["className"]
        assert (f"tn-act-{t.activation}" in node["className"]) == (t.activation is not None)
        assert node["position"]["x"] != 0 or node["position"]["y"] != 0 or t.position == (0.0, 0.0)


def test_hyperedge_gets_a_hub():
    d = make_template("cp", 64, 64, 6)
    nodes, edges = canvas_graph(d)
    assert "H:R" in _ids(nodes)
    hub_edges = [e for e in edges if e["id"].startswith("HE:R:")]
    assert sorted(parse_edge(e["id"])[2] for e in hub_edges) == sorted(t.id for t in d.tensors)


def test_id_parsing_and_selection():
    assert parse_node("T:G0") == ("T", "G0") and parse_node("weird") == ("", "weird")
    assert parse_edge("HE:R:A0") == ("HE", "R", "A0") and parse_edge("B:r0") == ("B", "r0", None)
    assert selection_from_canvas(["T:G0", "L:i0"], ["B:r1", "HE:R:A0"]) == \
        {"tensors": ["G0"], "indices": ["i0", "r1", "R"]}


def test_canvas_gestures_edit_the_state(state):
    canvas = Canvas(state)
    tid = state.add_tensor()
    assert f"T:{tid}" in _ids(canvas.flow.nodes)
    n_edges = len(canvas.flow.edges)
    canvas.flow._process_msg({"type": "edge_added", "edge": {"id": "x", "source": f"T:{tid}", "target": "T:top"}})
    bond = [i for i in state.design.tensor(tid).indices][0]
    assert state.design.users()[bond] == [tid, "top"] or sorted(state.design.users()[bond]) == sorted([tid, "top"])
    assert f"B:{bond}" in _ids(canvas.flow.edges) and "x" not in _ids(canvas.flow.edges)
    assert len(canvas.flow.edges) == n_edges + 1 and state.problems == []
    # an open leg already belongs to a tensor: refused, the drawn edge disappears, a message says why
    canvas.flow._process_msg({"type": "edge_added", "edge": {"id": "y", "source": "L:i0", "target": "T:top"}})
    assert "y" not in _ids(canvas.flow.edges) and "already belongs" in state.field_errors["connect"]
    # delete a bond edge, then a tensor node
    canvas.flow._process_msg({"type": "edge_deleted", "edge_ids": [f"B:{bond}"]})
    assert bond not in state.design.indices
    canvas.flow._process_msg({"type": "node_deleted", "node_ids": [f"T:{tid}"]})
    assert tid not in [t.id for t in state.design.tensors] and state.problems == []
    canvas.flow._process_msg({"type": "node_moved", "node_id": "T:top", "position": {"x": 135.0, "y": -270.0}})
    assert state.design.tensor("top").position == pytest.approx((100.0, -200.0))
    canvas.flow._process_msg({"type": "selection_changed", "nodes": ["T:L0"], "edges": ["B:s0"]})
    assert state.selection == {"tensors": ["L0"], "indices": ["s0"]}


def test_inspector_edits_and_shows_refusals(state):
    insp = Inspector(state)
    state.select(["L0"], [])
    assert {"kind:L0", "activation:L0", "dim:i0", "dim:s0"} <= set(insp.widgets)
    insp.widgets["dim:s0"].value = 6
    assert state.design.indices["s0"].dim == 6
    assert state.report.params == cost_report(state.design).params
    state.select([], ["s0"])
    insp.widgets["dim:s0"].value = 9
    assert state.design.indices["s0"].dim == 9
    state.select([], ["i0"])
    insp.widgets["dim:i0"].value = 3
    assert state.design.indices["i0"].dim == 8  # refused
    errors = [o.object for o in insp.body.objects if isinstance(o, pn.pane.HTML) and "tn-error" in str(o.object)]
    assert errors and "multiply to" in errors[0]
    assert insp.widgets["dim:i0"].value == 8  # the field shows the design's value again
    state.select([], [])
    insp.widgets["factors:in"].value = "16,4,4"
    assert [state.design.indices[k].dim for k in state.design.in_legs] == [16, 4, 4]


def test_cost_panel_shows_problems_and_keeps_numbers(state):
    panel = CostPanel(state)
    params = state.report.params
    assert f"data-value='{params}'" in panel.cards.object and "valid design" in panel.status.object
    state.add_tensor()
    assert "has no indices" in panel.status.object and f"data-value='{params}'" in panel.cards.object
    assert list(panel.source.data["chi"]) == state.sweep["chi"]
    assert panel.span.location == 4
    rows = steps_html(state.report).count("<tr class=")
    assert rows == sum(1 for s in state.report.path if s.op == "einsum" and s.flops)
    assert cards_html(None) == "<div class='tn-cards'></div>"


def test_files_download_upload_and_library(state):
    files = Files(state)
    payload = json.loads(files._payload().getvalue())
    assert payload == state.design.to_dict()
    files.name.value = "saved one"
    assert files.save()
    assert any("saved_one" in k for k in files.choice.options)
    other = make_template("tucker", 64, 64, 3)
    files.upload.filename = "tucker.json"
    files.upload.value = other.to_json().encode()
    assert state.design.fingerprint() == other.fingerprint()
    files.upload.value = b'{"format": "nope"}'
    assert "not a TN Studio design" in state.field_errors["open"]
    files.choice.value = next(v for k, v in files.choice.options.items() if "saved_one" in k)
    assert files.open_selected()
    assert state.design.fingerprint() == make_template("mera", 256, 256, 4).fingerprint()


def test_app_tabs_include_optional_modules(monkeypatch, tmp_path):
    app = create_app(home=str(tmp_path))
    tabs = app[1]
    assert tabs._names[0] == "Design"
    fake = types.ModuleType("studio.train_view")
    fake.view = lambda st: pn.pane.Markdown(f"train {st.design.name}")
    monkeypatch.setitem(sys.modules, "studio.train_view", fake)
    app2 = create_app(home=str(tmp_path))
    assert "Train" in app2[1]._names
    assert app2._studio_state.home == str(tmp_path)


def test_hub_connections_attach_and_detach(tmp_path):
    s = StudioState(make_template("cp", 64, 64, 5), home=str(tmp_path))
    canvas = Canvas(s)
    n_users = len(s.design.users()["R"])
    tid = s.add_tensor()
    canvas.flow._process_msg({"type": "edge_added", "edge": {"id": "z", "source": "H:R", "target": f"T:{tid}"}})
    assert "R" in s.design.tensor(tid).indices and len(s.design.users()["R"]) == n_users + 1
    assert f"HE:R:{tid}" in _ids(canvas.flow.edges)
    assert s.report.params == cost_report(s.design).params  # a (5,) vector on the rank: +5
    canvas.flow._process_msg({"type": "edge_deleted", "edge_ids": [f"HE:R:{tid}"]})
    assert "R" not in s.design.tensor(tid).indices and "R" in s.design.indices
    assert s.undo() and "R" in s.design.tensor(tid).indices
