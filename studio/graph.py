"""Design <-> canvas graph: the nodes and edges panel-reactflow draws for a design, and their ids.

Canvas node ids: ``T:<tensor>`` (a tensor), ``L:<leg>`` (an open leg terminal, in or out, or a bond that lost a
tensor), ``H:<index>`` (the hub of a hyperedge such as CP's shared rank). Edge ids: ``B:<bond>`` (a bond between
two tensors), ``LE:<leg>`` (a tensor to its open leg), ``HE:<index>:<tensor>`` (a tensor to a hub).

Every node has a connection point on each side (``TARGET_HANDLES`` / ``SOURCE_HANDLES``: React Flow draws edges
from a source handle to a target handle, so each side has one of each at the same spot; the stylesheet puts them on
the four sides). An edge runs from the upper node's bottom to the lower node's top, or from
the left node's right side to the right node's left side, whichever way the two are further apart, so edges never
leave a box on the side away from where they go. Any handle can start a drawn connection: bonds are undirected and
the leg identity lives in the edge id, not in the handle.

Open legs are drawn next to their tensor on a side free of its neighbours: input legs below and output legs above
when both are free (chains), all on the free side otherwise (tree leaves: below; a star's rows: outwards).
"""
from __future__ import annotations

from typing import Any

from engine.design.model import Design

from .layout import (HUB_H, LEG_GAP, LEG_H, SCALE, bounds, tensor_boxes, tensor_label, text_box)

# edges use l/t (targets) and r/b (sources); each side also has a handle of the other type at the same spot
# (rt, bt, ls, ts), so a connection can be drawn from any dot to any dot (React Flow joins a source to a target)
TARGET_HANDLES = ["l", "t", "rt", "bt"]
SOURCE_HANDLES = ["r", "b", "ls", "ts"]
Box = tuple[float, float, float, float]


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


def design_position(x: float, y: float) -> tuple[float, float]:
    """Canvas pixels -> design units (inverse of the drawing scale)."""
    return x / SCALE, y / SCALE


def _centre(b: Box) -> tuple[float, float]:
    return b[0] + b[2] / 2, b[1] + b[3] / 2


def _sides(c: tuple[float, float], others: list[tuple[float, float]]) -> dict[str, bool]:
    """Which sides of a box centred at ``c`` are free of the ``others`` (each lies on the side it is most along)."""
    taken = {"down": False, "up": False, "left": False, "right": False}
    for ox, oy in others:
        dx, dy = ox - c[0], oy - c[1]
        if abs(dy) >= 0.5 * abs(dx):
            taken["down" if dy > 0 else "up"] = True
        if abs(dx) >= 0.5 * abs(dy):
            taken["right" if dx > 0 else "left"] = True
    return {k: not v for k, v in taken.items()}


def leg_label(name: str, dim: int, dangling: bool = False) -> str:
    return f"{name} · {dim}" + (" ?" if dangling else "")


def _leg_boxes(design: Design, tboxes: dict[str, Box]) -> dict[str, Box]:
    """Default boxes of open legs (and dangling bonds), next to their tensor on a free side."""
    users = design.users()
    centres = {k: _centre(b) for k, b in tboxes.items()}
    out: dict[str, Box] = {}
    for t in design.tensors:
        legs = [(i, design.indices[i]) for i in t.indices if i in design.indices]
        loose = [(i, ix) for i, ix in legs if ix.role in ("in", "out", "kernel")
                 or (ix.role == "bond" and not ix.hyperedge and len(users.get(i, [])) == 1)]
        if not loose:
            continue
        nb = [centres[u] for i in t.indices for u in users.get(i, []) if u != t.id and u in centres]
        hubs = [n for n, ix in design.indices.items() if ix.hyperedge and t.id in users.get(n, [])]
        nb += [_hub_centre(users.get(h, []), centres) for h in hubs]
        free = _sides(centres[t.id], nb)
        groups: dict[str, list[tuple[str, Any]]] = {}
        if free["down"] and free["up"]:
            for i, ix in loose:
                groups.setdefault("up" if ix.role == "out" else "down", []).append((i, ix))
        else:
            side = next((s for s in ("down", "up", "right", "left") if free[s]), "down")
            groups[side] = loose
        x, y, w, h = tboxes[t.id]
        cx, cy = x + w / 2, y + h / 2
        for side, items in groups.items():
            sizes = [text_box(leg_label(i, ix.dim, ix.role == "bond"), "L") for i, ix in items]
            if side in ("down", "up"):
                total = sum(s[0] for s in sizes) + 10 * (len(sizes) - 1)
                lx = cx - total / 2
                ly = y + h + LEG_GAP if side == "down" else y - LEG_GAP - LEG_H
                for (i, _), (lw, lh) in zip(items, sizes):
                    out[i] = (lx, ly, lw, lh)
                    lx += lw + 10
            else:
                total = sum(s[1] for s in sizes) + 8 * (len(sizes) - 1)
                ly = cy - total / 2
                for (i, _), (lw, lh) in zip(items, sizes):
                    lx = x + w + LEG_GAP if side == "right" else x - LEG_GAP - lw
                    out[i] = (lx, ly, lw, lh)
                    ly += lh + 8
    return out


def _hub_centre(users: list[str], centres: dict[str, tuple[float, float]]) -> tuple[float, float]:
    pts = [centres[u] for u in users if u in centres]
    if not pts:
        return (0.0, 0.0)
    return sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)


def _saved(design: Design) -> dict[str, tuple[float, float]]:
    raw = design.meta.get("canvas")
    if not isinstance(raw, dict):
        return {}
    return {k: (float(v[0]) * SCALE, float(v[1]) * SCALE) for k, v in raw.items()
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(c, (int, float)) for c in v)}


def canvas_graph(design: Design, problems: list[str] | None = None,
                 selection: dict[str, list[str]] | None = None) -> tuple[list[dict], list[dict]]:
    """Nodes and edges (panel-reactflow dicts) for ``design``; works for invalid drafts too."""
    nodes, edges, _ = canvas_layout(design, problems, selection)
    return nodes, edges


def _size(w: float, h: float) -> dict[str, str]:
    """A node's drawn size: the layout's box, so spacing and overlap checks hold in the page."""
    return {"width": f"{w:g}px", "height": f"{h:g}px"}


def canvas_layout(design: Design, problems: list[str] | None = None,
                  selection: dict[str, list[str]] | None = None) -> tuple[list[dict], list[dict], dict[str, Box]]:
    """Nodes, edges and every node's box (x, y, w, h in px) for ``design``."""
    saved = _saved(design)
    users = design.users()
    sel_t = set((selection or {}).get("tensors", []))
    sel_i = set((selection or {}).get("indices", []))
    tboxes = tensor_boxes(design)
    boxes: dict[str, Box] = {f"T:{k}": b for k, b in tboxes.items()}
    centres = {k: _centre(b) for k, b in tboxes.items()}
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    bad = " ".join(problems or [])
    for t in design.tensors:
        cls = ["tn-tensor", f"tn-kind-{t.kind}"]
        style = {}
        if t.activation:
            cls.append("tn-act")
            style["--tn-act"] = f'"{t.activation}"'
        if f"'{t.id}'" in bad:
            cls.append("tn-problem")
        x, y, w, h = tboxes[t.id]
        style.update(_size(w, h))
        nodes.append({"id": f"T:{t.id}", "type": "tensor", "position": {"x": round(x, 1), "y": round(y, 1)},
                      "label": tensor_label(design, t.id), "data": {}, "className": " ".join(cls),
                      "style": style, "selected": t.id in sel_t})
    legs = _leg_boxes(design, tboxes)

    def place(key: str, default: Box) -> Box:
        if key in saved:
            return (saved[key][0], saved[key][1], default[2], default[3])
        return default

    def edge(eid: str, a: str, b: str, label: str, cls: str) -> dict[str, Any]:
        (ax, ay), (bx, by) = _centre(boxes[a]), _centre(boxes[b])
        if abs(by - ay) >= 0.5 * abs(bx - ax):  # mostly vertical: bottom of the upper -> top of the lower
            (src, dst), handles = ((a, b) if ay <= by else (b, a)), ("b", "t")
        else:  # side by side: right of the left one -> left of the right one
            (src, dst), handles = ((a, b) if ax <= bx else (b, a)), ("r", "l")
        index = parse_edge(eid)[1]
        return {"id": eid, "source": src, "target": dst, "sourceHandle": handles[0], "targetHandle": handles[1],
                "label": label, "data": {}, "type": "straight", "className": cls,
                "selected": eid.startswith("B:") and index in sel_i,
                "labelBgPadding": [4, 2], "labelBgBorderRadius": 4}

    for name, ix in design.indices.items():
        who = [u for u in users.get(name, []) if u in tboxes]
        if ix.role in ("in", "out", "kernel") or (ix.role == "bond" and len(who) <= 1 and not ix.hyperedge):
            dangling = ix.role == "bond"
            role = "bond" if dangling else ix.role
            label = leg_label(name, ix.dim, dangling)
            size = text_box(label, "L")
            default = legs.get(name) or (*_free_leg_spot(boxes, len(nodes)), *size)
            box = place(f"L:{name}", default)
            boxes[f"L:{name}"] = box
            nodes.append({"id": f"L:{name}", "type": "leg", "position": {"x": round(box[0], 1), "y": round(box[1], 1)},
                          "label": label, "data": {}, "selected": name in sel_i, "style": _size(*box[2:]),
                          "className": f"tn-leg tn-leg-{role}" + (" tn-problem" if dangling or not who else "")})
            if who:
                edges.append(edge(f"LE:{name}", f"T:{who[0]}", f"L:{name}", "",
                                  "tn-edge-bond-open" if dangling else f"tn-edge-{role}"))
        elif ix.role == "bond" and len(who) == 2 and not ix.hyperedge:
            edges.append(edge(f"B:{name}", f"T:{who[0]}", f"T:{who[1]}", f"{name} · {ix.dim}", "tn-edge-bond"))
        else:
            label = f"{name} · {ix.dim}"
            w, h = text_box(label, "H")
            cx, cy = _hub_centre(who, centres)
            box = place(f"H:{name}", (cx - w / 2, cy - h / 2, w, h))
            boxes[f"H:{name}"] = box
            nodes.append({"id": f"H:{name}", "type": "hub", "position": {"x": round(box[0], 1), "y": round(box[1], 1)},
                          "label": label, "data": {}, "className": "tn-hub", "selected": name in sel_i,
                          "style": _size(*box[2:])})
            for u in who:
                edges.append(edge(f"HE:{name}:{u}", f"T:{u}", f"H:{name}", "", "tn-edge-hyper"))
    return nodes, edges, boxes


def _free_leg_spot(boxes: dict[str, Box], n: int) -> tuple[float, float]:
    """A spot below the drawing for a leg that belongs to no tensor."""
    b = bounds(boxes.values())
    if b is None:
        return (40.0 * n, 0.0)
    return (b[0] + 40.0 * (n % 8), b[3] + 40.0 + HUB_H)


def graph_bounds(design: Design) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) in px around everything the canvas draws for ``design``."""
    return bounds(canvas_layout(design)[2].values())


def selection_from_canvas(node_ids: list[str], edge_ids: list[str]) -> dict[str, list[str]]:
    """Canvas selection -> ``{"tensors": [...], "indices": [...]}``."""
    tensors, indices = [], []
    for nid in node_ids:
        kind, name = parse_node(nid)
        if kind == "T":
            tensors.append(name)
        elif kind:
            indices.append(name)
    for eid in edge_ids:
        _, name, _ = parse_edge(eid)
        indices.append(name)
    return {"tensors": list(dict.fromkeys(tensors)), "indices": list(dict.fromkeys(indices))}
