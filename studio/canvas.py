"""The canvas: a panel-reactflow graph that shows ``state.design`` and turns drawing gestures into state edits.

The canvas never changes the design itself: every gesture (connect, delete, move, select) becomes a
:class:`~studio.state.StudioState` call, and the graph is then redrawn from the state, so a refused gesture
(e.g. connecting to an open leg that already belongs to a tensor) simply disappears again and leaves a message.
"""
from __future__ import annotations

from typing import Any

import panel as pn
from panel_reactflow import NodeType, ReactFlow

from engine.design.model import ACTIVATIONS

from .graph import canvas_graph, design_position, parse_edge, parse_node, selection_from_canvas
from .state import StudioState

KIND_COLOURS = {"core": ("#2f6fdb", "#eef4ff"), "isometry": ("#15803d", "#ecfdf3"),
                "disentangler": ("#c2410c", "#fff4ec"), "lateral": ("#7c3aed", "#f5f0ff"),
                "delta": ("#334155", "#f1f5f9")}

CANVAS_CSS = """
:host { --tn-ink: #1f2937; }
.react-flow__node.tn-tensor { width: auto !important; min-width: 84px; padding: 5px 11px 6px; border-radius: 10px;
  border: 2px solid #2f6fdb; background: #fff; color: var(--tn-ink); font-family: Inter, system-ui, sans-serif;
  box-shadow: 0 1px 3px rgba(15,23,42,.14); text-align: center; }
.react-flow__node.tn-tensor .rf-node-label { white-space: pre-line; margin: 0 !important; font-weight: 400 !important;
  font-size: 10.5px; line-height: 1.35; color: #475569; }
.react-flow__node.tn-tensor .rf-node-label::first-line { font-weight: 700; font-size: 13.5px; color: #0f172a; }
.react-flow__node.tn-leg { width: auto !important; padding: 1px 8px; border-radius: 999px; font-size: 10.5px;
  font-family: Inter, system-ui, sans-serif; border: 1.5px solid #0e7490; background: #ecfeff; color: #0e7490; }
.react-flow__node.tn-leg-out { border-color: #be185d; background: #fdf2f8; color: #be185d; }
.react-flow__node.tn-leg-bond { border-style: dashed; border-color: #dc2626; background: #fef2f2; color: #b91c1c; }
.react-flow__node.tn-leg .rf-node-label { margin: 0 !important; font-weight: 600 !important; }
.react-flow__node.tn-hub { width: auto !important; min-width: 36px; padding: 4px 8px; border-radius: 999px; background: #0f172a;
  color: #fff; border: 2px solid #0f172a; font-size: 11px; font-family: Inter, system-ui, sans-serif; }
.react-flow__node.tn-hub .rf-node-label { margin: 0 !important; }
.react-flow__node.selected { box-shadow: 0 0 0 3px rgba(47,111,219,.45) !important; }
.react-flow__node.tn-problem { border-color: #dc2626 !important; box-shadow: 0 0 0 3px rgba(220,38,38,.22); }
.react-flow__node.tn-tensor .rf-node-content, .react-flow__node.tn-leg .rf-node-content,
.react-flow__node.tn-hub .rf-node-content { min-width: 0; padding: 0; }
.react-flow__node.tn-leg, .react-flow__node.tn-hub { min-width: 0; }
.react-flow__handle { width: 9px; height: 9px; background: #94a3b8; border: 2px solid #fff; }
.react-flow__handle:hover { background: #2f6fdb; }
.react-flow__edge.tn-edge-bond .react-flow__edge-path { stroke: #475569; stroke-width: 2.2; }
.react-flow__edge.tn-edge-in .react-flow__edge-path { stroke: #0e7490; stroke-width: 1.6; }
.react-flow__edge.tn-edge-out .react-flow__edge-path { stroke: #be185d; stroke-width: 1.6; }
.react-flow__edge.tn-edge-hyper .react-flow__edge-path { stroke: #0f172a; stroke-width: 1.8; stroke-dasharray: 5 3; }
.react-flow__edge.selected .react-flow__edge-path { stroke: #2f6fdb !important; stroke-width: 3.2; }
.react-flow__edge-textbg { fill: #ffffff; stroke: #cbd5e1; stroke-width: .8; }
.react-flow__edge-text { font-size: 11px; font-weight: 600; fill: #334155; font-family: Inter, system-ui, sans-serif; }
.react-flow__edge.selected .react-flow__edge-text { fill: #2f6fdb; }
"""


def _kind_css() -> str:
    rules = []
    for kind, (line, fill) in KIND_COLOURS.items():
        rules.append(f".react-flow__node.tn-kind-{kind} {{ border-color: {line}; background: {fill}; }}")
    for act in ACTIVATIONS:
        rules.append(f'.react-flow__node.tn-act-{act}::after {{ content: "{act}"; }}')
    rules.append(".react-flow__node.tn-tensor[class*='tn-act-']::after { position: absolute; top: -10px; right: -10px;"
                 " background: #f59e0b; color: #fff; font-size: 10px; font-weight: 700; padding: 1px 6px;"
                 " border-radius: 8px; box-shadow: 0 1px 2px rgba(0,0,0,.2); }")
    return "\n".join(rules)


NODE_TYPES = {"tensor": NodeType(type="tensor", label="Tensor"), "leg": NodeType(type="leg", label="Leg"),
              "hub": NodeType(type="hub", label="Hyperedge")}


class Canvas:
    """The drawing surface bound to a :class:`StudioState`; ``panel`` is the viewable, ``flow`` the graph."""

    def __init__(self, state: StudioState, height: int = 640):
        self.state = state
        self.height = height
        self.flow = self._make_flow()
        self.panel = pn.Column(self.flow, sizing_mode="stretch_both", min_height=height, margin=0)
        state.param.watch(self._on_version, ["version"])
        state.param.watch(self._on_layout, ["layout_version"])

    # ------------------------------------------------------------------ drawing
    def _make_flow(self) -> ReactFlow:
        nodes, edges = canvas_graph(self.state.design, self.state.problems)
        flow = ReactFlow(nodes=nodes, edges=edges, node_types=NODE_TYPES, editor_mode="side",
                         sizing_mode="stretch_both", min_height=self.height, show_minimap=False, min_zoom=0.2,
                         max_zoom=2.5, stylesheets=[CANVAS_CSS + _kind_css()], css_classes=["tn-canvas"],
                         default_edge_options={"type": "straight"})
        for name, fn in (("edge_added", self._edge_added), ("node_deleted", self._node_deleted),
                         ("edge_deleted", self._edge_deleted), ("node_moved", self._node_moved),
                         ("selection_changed", self._selection_changed)):
            flow.on(name, fn)
        return flow

    def redraw(self) -> None:
        nodes, edges = canvas_graph(self.state.design, self.state.problems)
        sel_t = set(self.state.selection.get("tensors", []))
        sel_i = set(self.state.selection.get("indices", []))
        for n in nodes:
            kind, name = parse_node(n["id"])
            n["selected"] = (kind == "T" and name in sel_t) or (kind in ("L", "H") and name in sel_i)
        for e in edges:
            e["selected"] = parse_edge(e["id"])[1] in sel_i and e["id"].startswith("B:")
        self.flow.param.update(nodes=nodes, edges=edges)

    def _on_version(self, *_: Any) -> None:
        self.redraw()

    def _on_layout(self, *_: Any) -> None:
        """A new design: a fresh graph component fits the view to it."""
        self.flow = self._make_flow()
        self.panel[:] = [self.flow]

    # ------------------------------------------------------------------ gestures
    def _edge_added(self, payload: dict[str, Any]) -> None:
        edge = payload.get("edge") or {}
        (ka, a), (kb, b) = parse_node(edge.get("source", "")), parse_node(edge.get("target", ""))
        before = self.state.version
        if ka == "T" and kb == "T":
            self.state.connect(a, b)
        elif {ka, kb} == {"T", "H"} or {ka, kb} == {"T", "L"}:
            tensor, index = (a, b) if ka == "T" else (b, a)
            self.state.attach(tensor, index)
        else:
            self.state._refuse("connect", "connect a tensor to a tensor, a hyperedge hub or a free leg")
        if self.state.version == before:
            self.redraw()  # refused: take the drawn edge away again

    def _node_deleted(self, payload: dict[str, Any]) -> None:
        kind, name = parse_node(payload.get("node_id", ""))
        if kind == "T":
            self.state.delete(tensors=[name], merge="delete")
        elif kind in ("L", "H"):
            self.state.delete(indices=[name], merge="delete")

    def _edge_deleted(self, payload: dict[str, Any]) -> None:
        ids = list(payload.get("edge_ids") or []) or [payload.get("edge_id")]
        for eid in ids:
            kind, index, tensor = parse_edge(eid or "")
            if index not in self.state.design.indices:
                continue
            if kind == "HE" and tensor:
                self.state.delete(detach=[(tensor, index)], merge="delete")
            elif kind in ("B", "LE"):
                self.state.delete(indices=[index], merge="delete")

    def _node_moved(self, payload: dict[str, Any]) -> None:
        kind, name = parse_node(payload.get("node_id", ""))
        pos = payload.get("position") or {}
        if kind and "x" in pos and "y" in pos:
            self.state.move(name if kind == "T" else f"{kind}:{name}", *design_position(pos["x"], pos["y"]))

    def _selection_changed(self, payload: dict[str, Any]) -> None:
        sel = selection_from_canvas(payload.get("nodes") or [], payload.get("edges") or [])
        if sel != self.state.selection:
            self.state.select(sel["tensors"], sel["indices"])
