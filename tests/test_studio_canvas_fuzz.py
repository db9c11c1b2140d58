"""The canvas as an attacker's input surface: random sequences of the messages the browser sends (moves,
selections, drawn and deleted edges and nodes, whole-graph syncs), naming current, stale and made-up ids with well-
and ill-formed payloads, interleaved with Generate / undo. After every message the state must still agree with the
engine, and the canvas must show the state's design."""
from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.design.model import Design
from engine.design.templates import make_template
from studio.canvas import EDGE_KEYS, NODE_KEYS, Canvas, _drawn, _misplaced
from studio.graph import canvas_layout
from studio.state import StudioState

JUNK = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=6),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
STALE = ["T:G0", "T:old", "L:i9", "H:zz", "B:r7", "HE:R:A0", "LE:o5", "T:", ":", ""]


def ids_of(state: StudioState) -> tuple[list[str], list[str]]:
    """The ids the canvas shows now: node ids and edge ids."""
    nodes, edges, _ = canvas_layout(state.design, state.problems, state.selection)
    return [n["id"] for n in nodes], [e["id"] for e in edges]


@st.composite
def canvas_message(draw, nodes: list[str], edges: list[str]) -> dict:
    node_id = st.sampled_from(nodes + STALE) if nodes else st.sampled_from(STALE)
    edge_id = st.sampled_from(edges + STALE) if edges else st.sampled_from(STALE)
    kind = draw(st.sampled_from(["node_moved", "selection_changed", "edge_added", "node_deleted", "edge_deleted",
                                 "sync"]))
    msg: dict = {"type": kind}
    if kind == "node_moved":
        pos = draw(st.one_of(st.fixed_dictionaries({"x": st.floats(-1e4, 1e4), "y": st.floats(-1e4, 1e4)}),
                             st.fixed_dictionaries({"x": JUNK, "y": JUNK}), JUNK))
        msg.update(node_id=draw(node_id), position=pos)
    elif kind == "selection_changed":
        msg.update(nodes=draw(st.lists(node_id, max_size=3)), edges=draw(st.lists(edge_id, max_size=2)))
    elif kind == "edge_added":
        msg["edge"] = {"id": draw(st.text(max_size=4)), "source": draw(node_id), "target": draw(node_id)}
    elif kind == "node_deleted":
        msg["node_ids"] = draw(st.lists(node_id, max_size=2))
    elif kind == "sync":  # the browser's whole graph: the one shown now, or one it showed before (stale ids)
        msg["nodes"] = [{"id": i, "position": {"x": draw(st.floats(-1e4, 1e4)), "y": 0.0}, "type": "tensor",
                         "data": {}} for i in draw(st.lists(node_id, max_size=4, unique=True))]
        msg["edges"] = [{"id": i, "source": draw(node_id), "target": draw(node_id)}
                        for i in draw(st.lists(edge_id, max_size=3, unique=True))]
    else:
        msg["edge_ids"] = draw(st.lists(edge_id, max_size=2))
    return msg


def independent_params(d: Design) -> int:
    return sum(int(np.prod([d.indices[i].dim for i in t.indices])) for t in d.tensors if t.kind != "delta")


def assert_consistent(state: StudioState, canvas: Canvas, step: str) -> None:
    d = state.design
    tensor_ids = {t.id for t in d.tensors}
    assert set(state.selection["tensors"]) <= tensor_ids, step
    assert set(state.selection["indices"]) <= set(d.indices), step
    assert state.problems == d.problems(), step
    assert Design.from_dict(json.loads(json.dumps(d.to_dict())), validate=False).to_dict() == d.to_dict(), step
    nodes, edges, _ = canvas_layout(state.design, state.problems, state.selection)
    for what, shown, drawn, keys in (("nodes", canvas.flow.nodes, nodes, NODE_KEYS),
                                     ("edges", canvas.flow.edges, edges, EDGE_KEYS)):
        got, want = _drawn(shown, keys), _drawn(drawn, keys)
        assert got == want, f"{step}: the canvas's {what} {sorted(got)} are not the design's {sorted(want)}"
    assert not _misplaced(canvas.flow.nodes, nodes), f"{step}: a node is not where the design puts it"
    if not state.problems:
        assert state.valid_design is d and state.report.params == independent_params(d), step


def test_random_canvas_messages_keep_the_state_true(tmp_path):
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data(), template=st.sampled_from(["mera", "tensor_ring", "cp", "ttn"]))
    def run(data, template):
        state = StudioState(make_template(template, 64, 64, 3), home=str(tmp_path), refine_s=0, autosave=False)
        canvas = Canvas(state=state)
        try:
            steps(state, canvas, data)
        finally:
            state.close()

    run()


def steps(state: StudioState, canvas: Canvas, data) -> None:
    """Twelve things the browser (or someone posing as it) may send, the state checked after each."""
    before: list = []  # drawings shown before (nodes, edges), as a stale property change from the page may bring back
    for n in range(12):
        before.append((list(canvas.flow.nodes), list(canvas.flow.edges)))
        if data.draw(st.integers(0, 9), label="switch") == 0:  # the canvas may still send the old ids after
            other, act = data.draw(st.sampled_from([("mpo", None), ("tucker", None), ("mera", None),
                                                    ("ttn", "relu"), ("ttn", "gelu")]), label="generate")
            state.generate(other, 256 if act else 64, 32, 2, activation=act)  # 256: a TTN with activated tensors
            step = f"{n}: generate {other} {act or ''}"
        elif data.draw(st.integers(0, 5), label="stale") == 0:  # the flow's nodes or edges set back to an old drawing
            old_nodes, old_edges = data.draw(st.sampled_from(before), label="drawing")
            which = data.draw(st.sampled_from(["nodes", "edges", "both"]), label="which")
            canvas.flow.param.update(**({"nodes": old_nodes} if which != "edges" else {}),
                                     **({"edges": old_edges} if which != "nodes" else {}))
            step = f"{n}: the flow's {which} set back to drawing {before.index((old_nodes, old_edges))}"
        elif data.draw(st.integers(0, 9), label="undo") == 0:
            state.undo()
            step = f"{n}: undo"
        else:
            msg = data.draw(canvas_message(*ids_of(state)), label="message")
            canvas.flow._process_msg(msg)
            step = f"{n}: {msg}"
        assert_consistent(state, canvas, step)


def test_a_drawing_that_differs_only_in_its_node_styles_is_drawn_again(tmp_path):
    """A node's activation badge and box size are in its style: a drawing from the page that differs from the
    design's only there (a relu badge for gelu, another width) is noticed and drawn again."""
    state = StudioState(make_template("ttn", 256, 256, 3, activation="gelu"), home=str(tmp_path), refine_s=0,
                        autosave=False)
    canvas = Canvas(state=state)
    try:
        def restyled(n: dict) -> dict:
            style = dict(n.get("style") or {})
            if "--tn-act" in style:
                style["--tn-act"] = '"relu"'
            elif n["id"].startswith("T:"):
                style["width"] = "300px"
            return dict(n, style=style)

        stale = [restyled(dict(n)) for n in canvas.flow.nodes]
        canvas.flow.param.update(nodes=stale)
        assert_consistent(state, canvas, "the flow's nodes restyled")
        styles = [str(n.get("style") if isinstance(n, dict) else n.style) for n in canvas.flow.nodes]
        assert any('"gelu"' in s for s in styles) and not any('"relu"' in s or "300px" in s for s in styles)
    finally:
        state.close()
