"""The canvas: a panel-reactflow graph that shows ``state.design`` and turns drawing gestures into state edits.

The canvas never changes the design itself: every gesture (connect, delete, move, select) becomes a
:class:`~studio.state.StudioState` call, and the graph is then redrawn from the state, so a refused gesture
(e.g. connecting to an open leg that already belongs to a tensor) simply disappears again and leaves a message.
A whole new design (generate, open, add, new) re-fits the view: the viewport is computed from the drawing and the
canvas size, which a tiny probe component reports from the browser.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import panel as pn
import param
from panel.custom import JSComponent
from panel.viewable import Viewer
from panel_reactflow import NodeType, ReactFlow

from engine.design import edit

from .graph import (SOURCE_HANDLES, TARGET_HANDLES, canvas_layout, design_position, parse_edge, parse_node,
                    selection_from_canvas)
from .layout import SCALE, bounds, fit_viewport, free_box, tensor_label, text_box, visible_centre
from .state import StudioState
from .style import css

log = logging.getLogger(__name__)

NODE_TYPES = {name: NodeType(type=name, label=label, inputs=list(TARGET_HANDLES), outputs=list(SOURCE_HANDLES))
              for name, label in (("tensor", "Tensor"), ("leg", "Leg"), ("hub", "Hyperedge"))}
DEFAULT_SIZE = (900, 640)  # px, until the browser says


def no_editor(data: Any, schema: Any, *, id: str, type: str, on_patch: Any) -> None:  # noqa: A002
    """The inspector edits the design, so the graph's own editors (a JSON editor per node) are not made."""
    return None


class CanvasProbe(JSComponent):
    """Reports the size of the layout it sits in (the canvas area) as ``size`` = [width, height] in px."""

    size = param.List(default=[], doc="[width, height] of the enclosing layout, in px.")

    _esm = """
export function render({ model, el }) {
  const target = () => {
    const host = el.getRootNode().host;          // this component's element
    const parent = host && host.parentNode;       // the enclosing layout's shadow root
    return parent && parent.host ? parent.host : host;
  };
  const measure = () => {
    const box = target();
    if (!box) return;
    const r = box.getBoundingClientRect();
    const next = [Math.round(r.width), Math.round(r.height)];
    if (next[0] > 0 && String(next) !== String(model.size)) model.size = next;
  };
  const observer = new ResizeObserver(measure);
  requestAnimationFrame(() => { const box = target(); if (box) observer.observe(box); measure(); });
}
"""


class Canvas(Viewer):
    """The drawing surface bound to a :class:`StudioState`; ``flow`` is the graph, ``probe`` measures it."""

    state = param.ClassSelector(class_=StudioState, doc="The studio state the canvas shows and edits.")
    height = param.Integer(default=480, doc="Minimum height of the canvas in px.")
    size = param.Tuple(default=DEFAULT_SIZE, length=2, doc="Canvas size in px as the browser reports it.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        nodes, edges, boxes = canvas_layout(self.state.design, self.state.problems, self.state.selection)
        self._from_canvas: dict[str, list[str]] | None = None  # the selection the canvas itself reported last
        self._drawing = False  # True while redraw sets the flow's graph
        self._check_queued = False
        self.flow = ReactFlow(
            nodes=nodes, edges=edges, node_types=NODE_TYPES, editor_mode="side", default_node_editor=no_editor,
            default_edge_editor=no_editor, sizing_mode="stretch_both", min_height=self.height, show_minimap=False,
            min_zoom=0.15, max_zoom=2.0, stylesheets=[css("canvas")], css_classes=["tn-canvas"],
            default_edge_options={"type": "straight"}, viewport=self._fit(boxes))
        for name, fn in (("edge_added", self._edge_added), ("node_deleted", self._node_deleted),
                         ("edge_deleted", self._edge_deleted), ("node_moved", self._node_moved),
                         ("selection_changed", self._selection_changed)):
            self.flow.on(name, fn)
        self.flow.param.watch(self._graph_changed, ["nodes", "edges"])
        self.probe = CanvasProbe(width=0, height=0, margin=0)
        self.probe.param.watch(self._measured, "size")

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.flow, self.probe, sizing_mode="stretch_both", min_height=self.height, margin=(10, 4),
                         stylesheets=[css("canvas-box")], css_classes=["tn-canvas-box"])

    # ------------------------------------------------------------------ drawing
    @param.depends("state.version", watch=True)
    def redraw(self) -> None:
        """Show the state's design (and its selection)."""
        s = self.state
        nodes, edges, _ = canvas_layout(s.design, s.problems, s.selection)
        self._from_canvas = None
        self._draw(nodes=nodes, edges=edges)

    def _draw(self, **graph: list) -> None:
        self._drawing = True
        try:
            self.flow.param.update(**graph)
        finally:
            self._drawing = False

    @param.depends("state.selection", watch=True)
    def _selection_moved(self) -> None:
        if self.state.selection != self._from_canvas:  # selected elsewhere (inspector, undo): show it here
            self.redraw()

    @param.depends("state.layout_version", watch=True)
    def fit(self) -> None:
        """Fit the view to the whole drawing."""
        self.flow.viewport = self._fit(canvas_layout(self.state.design)[2])

    def _fit(self, boxes: dict) -> dict[str, float]:
        return fit_viewport(bounds(boxes.values()), *self.size, min_zoom=0.15, max_zoom=1.25)

    def _measured(self, event: Any) -> None:
        if isinstance(event.new, list) and len(event.new) == 2 and min(event.new) > 0:
            self.size = (int(event.new[0]), int(event.new[1]))

    def visible_centre(self) -> tuple[float, float] | None:
        """The centre of what the canvas shows now, in design units (None before the view is known)."""
        return visible_centre(self.flow.viewport, *self.size)

    def free_position(self, kind: str = "core") -> tuple[float, float]:
        """Where a new ``kind`` tensor goes: the free spot nearest the centre of the visible area, clear of every
        box and bond label by the size its box will have (design units, top-left corner)."""
        centre = self.visible_centre()
        _, edges, boxes = canvas_layout(self.state.design)
        if centre is None:
            b = bounds(boxes.values())
            centre = ((b[0] + b[2]) / 2 / SCALE, (b[1] + b[3]) / 2 / SCALE) if b else (0.0, 0.0)
        labels = [((boxes[e["source"]][0] + boxes[e["source"]][2] / 2 + boxes[e["target"]][0]
                    + boxes[e["target"]][2] / 2) / 2,
                   (boxes[e["source"]][1] + boxes[e["source"]][3] / 2 + boxes[e["target"]][1]
                    + boxes[e["target"]][3] / 2) / 2) for e in edges if e.get("label")]
        new, tid = edit.add_tensor(self.state.design, kind, (0.0, 0.0))
        x, y = free_box((centre[0] * SCALE, centre[1] * SCALE), text_box(tensor_label(new, tid), "T"),
                        boxes.values(), labels)
        return design_position(x, y)

    def add_tensor(self, kind: str = "core") -> str | None:
        return self.state.add_tensor(kind, self.free_position(kind))

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
            self.state.refuse("connect", "connect a tensor to a tensor, a hyperedge hub or a free leg")
        if self.state.version == before:
            self.redraw()  # refused (or waiting for confirmation): take the drawn edge away again

    def _node_deleted(self, payload: dict[str, Any]) -> None:
        ids = list(payload.get("node_ids") or []) or [payload.get("node_id", "")]
        tensors = [n for k, n in map(parse_node, ids) if k == "T"]
        indices = [n for k, n in map(parse_node, ids) if k in ("L", "H") and n in self.state.design.indices]
        if tensors or indices:
            self.state.delete(tensors=tensors, indices=indices, merge="delete")

    def _edge_deleted(self, payload: dict[str, Any]) -> None:
        ids = list(payload.get("edge_ids") or []) or [payload.get("edge_id")]
        detach, indices = [], []
        for eid in ids:
            kind, index, tensor = parse_edge(eid or "")
            if index not in self.state.design.indices:
                continue
            if kind == "HE" and tensor:
                detach.append((tensor, index))
            elif kind in ("B", "LE"):
                indices.append(index)
        if detach or indices:
            self.state.delete(indices=indices, detach=detach, merge="delete")

    def _node_moved(self, payload: dict[str, Any]) -> None:
        kind, name = parse_node(payload.get("node_id", ""))
        pos = payload.get("position")
        pos = pos if isinstance(pos, dict) else {}
        if kind and all(isinstance(pos.get(k), (int, float)) for k in ("x", "y")):
            self.state.move(name if kind == "T" else f"{kind}:{name}", *design_position(pos["x"], pos["y"]))
        # its legs follow it and its bonds leave from the sides that face their other ends; a position the design
        # cannot keep (refused above) is put back
        self._check_drawing()

    def _graph_changed(self, *_: Any) -> None:
        """The flow's nodes or edges were set by another hand than :meth:`redraw`: panel-reactflow applying a
        message from the browser (a whole-graph sync, a drawn or deleted edge, a deleted node) or, seen in long
        randomised browser runs (about 1 in 9 at 70 steps), the previous drawing's edges coming back right after
        Generate while the nodes were the new design's, so the page showed no edge at all. After the message has
        been handled (next tick, under the session's lock), whatever the flow holds that the state's design does
        not draw is replaced by the design's drawing."""
        if self._drawing or self._check_queued:
            return
        self._check_queued = True
        self.state.dispatch(self._check_drawing)

    def _check_drawing(self) -> None:
        """Show the state's design where the flow shows something else: other nodes, or nodes elsewhere (after a
        tensor is dragged, its open legs follow it), or only other edges (after a move, which side of a tensor a
        bond leaves from)."""
        self._check_queued = False
        nodes, edges, _ = canvas_layout(self.state.design, self.state.problems, self.state.selection)
        if _drawn(self.flow.nodes, NODE_KEYS) != _drawn(nodes, NODE_KEYS) or _misplaced(self.flow.nodes, nodes):
            self.redraw()
        elif _drawn(self.flow.edges, EDGE_KEYS) != _drawn(edges, EDGE_KEYS):
            self._draw(edges=edges)

    def _selection_changed(self, payload: dict[str, Any]) -> None:
        sel = selection_from_canvas(payload.get("nodes") or [], payload.get("edges") or [])
        self._from_canvas = sel
        if sel != self.state.selection:
            self.state.select(sel["tensors"], sel["indices"])


NODE_KEYS = ("id", "type", "label", "className", "style")  # what a node shows (its size and activation badge
# are in its style; not where it is or whether it is selected)
EDGE_KEYS = ("id", "source", "target", "sourceHandle", "targetHandle", "label", "className")


def _misplaced(shown: list[Any], nodes: list[dict], tolerance: float = 1.0) -> bool:
    """Whether a node of ``shown`` (the flow's) lies more than ``tolerance`` px from where ``nodes`` put it (the
    design keeps positions to a tenth of a unit, so a dragged node's own place may differ by less)."""
    def place(n: Any) -> tuple[float, float] | None:  # None: no usable position (a malformed message's)
        p = n.get("position") if isinstance(n, dict) else getattr(n, "position", None)
        x, y = (p.get("x"), p.get("y")) if isinstance(p, dict) else (None, None)
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x, y))
        return (float(x), float(y)) if ok else None  # type: ignore[arg-type]

    want = {n["id"]: place(n) for n in nodes}
    for n in shown:
        nid = n.get("id") if isinstance(n, dict) else getattr(n, "id", None)
        if nid in want:
            got, wanted = place(n), want[nid]
            if got is None or wanted is None:
                if got != wanted:
                    return True
            elif abs(got[0] - wanted[0]) > tolerance or abs(got[1] - wanted[1]) > tolerance:
                return True
    return False


def _drawn(items: list[Any], keys: tuple[str, ...]) -> list[tuple]:
    """What a graph's nodes or edges (dicts, or panel-reactflow's Node / Edge objects) draw, in order."""
    return [tuple(str(i.get(k) if isinstance(i, dict) else getattr(i, k, None)) for k in keys) for i in items]
