"""Design <-> canvas graph: the nodes and edges panel-reactflow draws for a design, and their ids.

Canvas node ids: ``T:<tensor>`` (a tensor), ``L:<leg>`` (an open leg terminal, in or out), ``H:<index>`` (the hub
of a hyperedge such as CP's shared rank). Edge ids: ``B:<bond>`` (a bond between two tensors), ``LE:<leg>`` (a
tensor to its open leg), ``HE:<index>:<tensor>`` (a tensor to a hub).

Every node has one generic connection handle on each side and the leg identity lives in the edge id, not in the
handle: a tensor's leg count changes while drawing, and a fixed pair of handles keeps connect-by-dragging
reliable (any handle to any handle creates a bond; bonds are undirected, so the edge runs from the left node to
the right one purely for drawing).
"""
from __future__ import annotations

import math
from typing import Any

from engine.design.model import Design

from .fmt import si

SCALE = 1.35  # design units -> canvas pixels (templates space tensors 150 apart; boxes are ~130 px wide)
LEG_DISTANCE = 62.0
LEG_SPREAD = 48.0
TENSOR_HALF = (50.0, 24.0)  # rough half size of a tensor box (positions are top-left corners), design units
LEG_HALF = (18.0, 8.0)


def node_id(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def parse_node(nid: str) -> tuple[str, str]:
    """``"T:G0" -> ("T", "G0")``; unknown ids give ``("", nid)``."""
    kind, _, name = str(nid).partition(":")
    return (kind, name) if kind in ("T", "L", "H") and name else ("", str(nid))


def parse_edge(eid: str) -> tuple[str, str, str | None]:
    """``"B:r0" -> ("B", "r0", None)``, ``"HE:R:A0" -> ("HE", "R", "A0")``, ``"LE:i0" -> ("LE", "i0", None)``."""
    kind, _, rest = str(eid).partition(":")
    if kind == "HE":
        index, _, tensor = rest.rpartition(":")
        return kind, index, tensor
    return kind, rest, None


def _pos(p: tuple[float, float] | list[float] | None) -> dict[str, float]:
    x, y = (p or (0.0, 0.0))
    return {"x": round(float(x) * SCALE, 1), "y": round(float(y) * SCALE, 1)}


def design_position(x: float, y: float) -> tuple[float, float]:
    """Canvas pixels -> design units (inverse of the drawing scale)."""
    return x / SCALE, y / SCALE


def _tensor_label(design: Design, tid: str) -> str:
    t = design.tensor(tid)
    shape = "×".join(str(design.indices[i].dim) for i in t.indices if i in design.indices) or "no legs"
    params = design.tensor_params(tid) if all(i in design.indices for i in t.indices) else 0
    kind = t.kind if t.kind != "core" else "core"
    return f"{tid}\n{kind}\n{shape} · {si(params)} p"


def _leg_positions(design: Design) -> dict[str, tuple[float, float]]:
    """Default spots for open legs and hubs: legs point away from the tensor's neighbours."""
    pos = {t.id: (t.position or (0.0, 0.0)) for t in design.tensors}
    users = design.users()
    out: dict[str, tuple[float, float]] = {}
    for t in design.tensors:
        x, y = pos[t.id]
        neighbours = [pos[u] for i in t.indices for u in users.get(i, []) if u != t.id]
        if neighbours:
            mx = sum(p[0] for p in neighbours) / len(neighbours)
            my = sum(p[1] for p in neighbours) / len(neighbours)
            dx, dy = x - mx, y - my
        else:
            dx, dy = 0.0, 1.0
        norm = math.hypot(dx, dy)
        if norm < 1e-6 or abs(dy) < 0.35 * norm:  # chains: hang legs below
            dx, dy, norm = 0.0, 1.0, 1.0
        elif abs(dx) <= 1.05 * abs(dy):  # mostly vertical (trees): straight down or up
            dx, dy, norm = 0.0, math.copysign(1.0, dy), 1.0
        ux, uy = dx / norm, dy / norm
        cx, cy = x + TENSOR_HALF[0], y + TENSOR_HALF[1]
        reach = LEG_DISTANCE + abs(uy) * TENSOR_HALF[1] + abs(ux) * TENSOR_HALF[0]
        legs = [i for i in t.indices if design.indices.get(i) and design.indices[i].role in ("in", "out")]
        legs += [i for i in t.indices if design.indices.get(i) and design.indices[i].role == "bond"
                 and len(users.get(i, [])) == 1 and not design.indices[i].hyperedge]
        for n, leg in enumerate(legs):
            off = (n - (len(legs) - 1) / 2) * LEG_SPREAD
            out[f"L:{leg}"] = (cx + ux * reach - uy * off - LEG_HALF[0], cy + uy * reach + ux * off - LEG_HALF[1])
    for name, ix in design.indices.items():
        if ix.role == "bond" and (ix.hyperedge or len(users.get(name, [])) > 2):
            pts = [pos[u] for u in users.get(name, [])]
            if pts:
                out[f"H:{name}"] = (sum(p[0] for p in pts) / len(pts) + 35, sum(p[1] for p in pts) / len(pts))
    return out


def canvas_graph(design: Design, problems: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """Nodes and edges (panel-reactflow dicts) for ``design``; works for invalid drafts too."""
    saved = design.meta.get("canvas", {}) if isinstance(design.meta.get("canvas"), dict) else {}
    defaults = _leg_positions(design)
    users = design.users()
    xs = {t.id: (t.position or (0.0, 0.0))[0] for t in design.tensors}
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    bad = " ".join(problems or [])
    for t in design.tensors:
        cls = ["tn-tensor", f"tn-kind-{t.kind}"]
        if t.activation:
            cls.append(f"tn-act-{t.activation}")
        if f"'{t.id}'" in bad:
            cls.append("tn-problem")
        nodes.append({"id": f"T:{t.id}", "type": "tensor", "position": _pos(t.position),
                      "label": _tensor_label(design, t.id), "data": {}, "className": " ".join(cls)})

    def spot(key: str) -> dict[str, float]:
        p = saved.get(key)
        if isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p):
            return _pos(p)
        return _pos(defaults.get(key))

    half_width = {"T": TENSOR_HALF[0] * SCALE, "L": LEG_HALF[0] * SCALE, "H": 20.0}

    def centre_x(nid: str) -> float:
        x = next((n["position"]["x"] for n in nodes if n["id"] == nid), 0.0)
        return x + half_width.get(parse_node(nid)[0], 0.0)

    def edge(eid: str, a: str, b: str, label: str, cls: str) -> dict[str, Any]:
        ax, bx = centre_x(a), centre_x(b)
        src, dst = (a, b) if ax <= bx else (b, a)
        return {"id": eid, "source": src, "target": dst, "label": label, "data": {}, "type": "straight",
                "className": cls, "labelBgPadding": [4, 2], "labelBgBorderRadius": 4}

    for name, ix in design.indices.items():
        who = [u for u in users.get(name, []) if u in xs]
        if ix.role in ("in", "out") or (ix.role == "bond" and len(who) <= 1 and not ix.hyperedge):
            dangling = ix.role == "bond"
            role = "bond" if dangling else ix.role
            text = f"{name} · {ix.dim}" if not dangling else f"{name} · {ix.dim} ?"
            nodes.append({"id": f"L:{name}", "type": "leg", "position": spot(f"L:{name}"), "label": text,
                          "data": {}, "className": f"tn-leg tn-leg-{role}" + (" tn-problem" if dangling or not who
                                                                                else "")})
            if who:
                edges.append(edge(f"LE:{name}", f"T:{who[0]}", f"L:{name}", "", f"tn-edge-{role}"))
        elif ix.role == "bond" and len(who) == 2 and not ix.hyperedge:
            edges.append(edge(f"B:{name}", f"T:{who[0]}", f"T:{who[1]}", f"{name} · {ix.dim}", "tn-edge-bond"))
        else:
            nodes.append({"id": f"H:{name}", "type": "hub", "position": spot(f"H:{name}"),
                          "label": f"{name} · {ix.dim}", "data": {}, "className": "tn-hub"})
            for u in who:
                edges.append(edge(f"HE:{name}:{u}", f"T:{u}", f"H:{name}", "", "tn-edge-hyper"))
    return nodes, edges


def selection_from_canvas(node_ids: list[str], edge_ids: list[str]) -> dict[str, list[str]]:
    """Canvas selection -> ``{"tensors": [...], "indices": [...]}``."""
    tensors, indices = [], []
    for nid in node_ids:
        kind, name = parse_node(nid)
        (tensors if kind == "T" else indices).append(name) if kind else None
    for eid in edge_ids:
        _, name, _ = parse_edge(eid)
        indices.append(name)
    return {"tensors": list(dict.fromkeys(tensors)), "indices": list(dict.fromkeys(indices))}
