"""Canvas geometry: the boxes the canvas draws, readable arrangements of designs, and fitting the view.

Positions in a design are in *design units*; the canvas draws them ``SCALE`` times larger, in pixels (React Flow's
flow coordinates, a node's position being its top-left corner). Box sizes are estimated from the labels the canvas
shows (:mod:`studio.glyphs`: the widest common UI font's glyph widths, at ``studio.css``'s sizes), and the canvas
draws every box at exactly that size (its label cut with an ellipsis in the rare font wider still), so what a layout,
an overlap check or a fit computes is what the page shows whatever fonts the browser has.

:func:`arrange` lays out a generated design: a *star* (every tensor joined to one hub, CP; or to one core tensor,
Tucker) gets the tensors carrying input legs in a row above the centre and those carrying output legs in a row
below it; other designs keep their template's drawing, spread out so that neighbouring boxes keep room for the bond
label between them. :func:`fit_viewport` is the viewport that shows a set of boxes in a canvas of a given size.
"""
from __future__ import annotations

import math
from typing import Iterable

from engine.design.model import Design
from engine.format import si

from .glyphs import text_width

SCALE = 1.35  # design units -> canvas pixels
TENSOR_H = 62.0  # px: three label lines (13.5 px bold, then 10.5 px) and the padding
LEG_H = 20.0
HUB_H = 26.0
GAP_X = 110.0  # px between boxes side by side: a bond label ("r12 · 16") fits in between
GAP_Y = 80.0  # px between rows
LEG_GAP = 44.0  # px from a tensor's box to its open legs
ROW = 190.0  # px between the rows of a star layout


def tensor_label(design: Design, tid: str) -> str:
    """What a tensor's box shows: id, kind, then shape and parameters (``8×4×4 · 128 p``)."""
    t = design.tensor(tid)
    shape = "×".join(str(design.indices[i].dim) for i in t.indices if i in design.indices) or "no legs"
    complete = all(i in design.indices for i in t.indices)
    params = design.tensor_params(tid) if complete else 0
    return f"{tid}\n{t.kind}\n{shape} · {si(params)} p"


def text_box(label: str, kind: str) -> tuple[float, float]:
    """(width, height) in px of the box the canvas draws for ``label`` (``kind``: T tensor, L leg, H hub): the
    widest line at ``studio.css``'s font sizes, plus the box's padding and borders and 2 px to spare."""
    if kind == "T":  # padding 11 + 11, borders 2 + 2; the id in 13.5 px bold, the other lines in 10.5 px
        first, *rest = label.split("\n")
        text = max(text_width(first, 13.5, bold=True), *(text_width(r, 10.5) for r in rest))
        return max(84.0, float(math.ceil(text + 28))), TENSOR_H
    if kind == "H":  # padding 8 + 8, borders 2 + 2; 11 px, bold
        return max(36.0, float(math.ceil(text_width(label, 11.0, bold=True) + 22))), HUB_H
    # a leg: padding 8 + 8, borders 1.5 + 1.5; 10.5 px, bold
    return max(30.0, float(math.ceil(text_width(label, 10.5, bold=True) + 21))), LEG_H


def tensor_boxes(design: Design) -> dict[str, tuple[float, float, float, float]]:
    """Tensor id -> (x, y, w, h) in px (missing positions count as the origin)."""
    out = {}
    for t in design.tensors:
        x, y = t.position or (0.0, 0.0)
        w, h = text_box(tensor_label(design, t.id), "T")
        out[t.id] = (x * SCALE, y * SCALE, w, h)
    return out


def overlapping(design: Design, margin: float = 8.0) -> bool:
    """Whether two tensor boxes overlap (or a tensor has no position)."""
    if any(t.position is None for t in design.tensors):
        return True
    boxes = list(tensor_boxes(design).values())
    for a in range(len(boxes)):
        ax, ay, aw, ah = boxes[a]
        for b in range(a + 1, len(boxes)):
            bx, by, bw, bh = boxes[b]
            if ax < bx + bw + margin and bx < ax + aw + margin and ay < by + bh + margin and by < ay + ah + margin:
                return True
    return False


def _neighbours(design: Design) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {t.id: set() for t in design.tensors}
    for name, users in design.users().items():
        ix = design.indices.get(name)
        if ix is None or ix.role != "bond":
            continue
        for u in users:
            out.setdefault(u, set()).update(v for v in users if v != u)
    return out


def star_centre(design: Design) -> tuple[str, str] | None:
    """``("H", index)`` when one hyperedge joins every tensor (CP), ``("T", id)`` when one tensor is joined to all
    of at least three others and they are not joined among themselves (Tucker), else None."""
    ids = [t.id for t in design.tensors]
    if len(ids) < 3:
        return None
    users = design.users()
    for name, ix in design.indices.items():
        if ix.role == "bond" and ix.hyperedge and sorted(users.get(name, [])) == sorted(ids):
            return ("H", name)
    nb = _neighbours(design)
    for tid in ids:
        others = [u for u in ids if u != tid]
        if len(others) >= 3 and nb[tid] >= set(others) and all(nb[u] <= {tid} for u in others):
            return ("T", tid)
    return None


def _legs_of(design: Design, tid: str, role: str) -> list[int]:
    return [design.indices[i].axis or 0 for i in design.tensor(tid).indices
            if i in design.indices and design.indices[i].role == role]


def _row(ids: list[str], widths: dict[str, float], y: float) -> dict[str, tuple[float, float]]:
    """Centred row of boxes (top-left corners, px)."""
    total = sum(widths[i] for i in ids) + GAP_X * max(0, len(ids) - 1)
    x = -total / 2
    out = {}
    for i in ids:
        out[i] = (x, y)
        x += widths[i] + GAP_X
    return out


def _star(design: Design, centre: tuple[str, str]) -> dict[str, tuple[float, float]]:
    widths = {t.id: text_box(tensor_label(design, t.id), "T")[0] for t in design.tensors}
    ring = [t.id for t in design.tensors if not (centre[0] == "T" and t.id == centre[1])]
    ins = sorted((t for t in ring if _legs_of(design, t, "in") and not _legs_of(design, t, "out")),
                 key=lambda t: min(_legs_of(design, t, "in")))
    outs = sorted((t for t in ring if _legs_of(design, t, "out") and not _legs_of(design, t, "in")),
                  key=lambda t: min(_legs_of(design, t, "out")))
    rest = [t for t in ring if t not in ins and t not in outs]
    pos: dict[str, tuple[float, float]] = {}
    pos.update(_row(ins, widths, -ROW - TENSOR_H / 2))
    pos.update(_row(outs, widths, ROW - TENSOR_H / 2))
    middle = rest[: len(rest) // 2] + ([centre[1]] if centre[0] == "T" else []) + rest[len(rest) // 2:]
    if centre[0] == "H" and not middle:
        return pos
    if centre[0] == "H":  # keep the middle of the centre row free for the hub
        half = len(middle) // 2
        left, right = _row(middle[:half], widths, -TENSOR_H / 2), _row(middle[half:], widths, -TENSOR_H / 2)
        shift = 90.0 + sum(widths[i] for i in middle[:half]) / 2
        pos.update({k: (x - shift, y) for k, (x, y) in left.items()})
        pos.update({k: (x + 90.0 + sum(widths[i] for i in middle[half:]) / 2, y) for k, (x, y) in right.items()})
    else:
        pos.update(_row(middle, widths, -TENSOR_H / 2))
    return pos


def _spread(design: Design) -> dict[str, tuple[float, float]]:
    """The design's own drawing (px), scaled so that no two boxes crowd each other."""
    boxes = tensor_boxes(design)
    centres = {k: (x + w / 2, y + h / 2) for k, (x, y, w, h) in boxes.items()}
    fx = fy = 1.0
    ids = list(boxes)
    for a in range(len(ids)):
        ca, (_, _, wa, ha) = centres[ids[a]], boxes[ids[a]]
        for b in range(a + 1, len(ids)):
            cb, (_, _, wb, hb) = centres[ids[b]], boxes[ids[b]]
            dx, dy = abs(ca[0] - cb[0]), abs(ca[1] - cb[1])
            need_x, need_y = (wa + wb) / 2 + GAP_X, (ha + hb) / 2 + GAP_Y
            if dx < need_x and dy < need_y:  # too close: widen in the direction they are apart most
                if dx >= 1 and dx / need_x >= dy / need_y:
                    fx = max(fx, need_x / dx)
                elif dy >= 1:
                    fy = max(fy, need_y / dy)
                else:
                    return {}  # coinciding boxes: needs a fresh layout
    return {k: (cx * fx - boxes[k][2] / 2, cy * fy - boxes[k][3] / 2) for k, (cx, cy) in centres.items()}


def arrange(design: Design) -> Design:
    """A copy of ``design`` with positions that read well on the canvas (see the module docstring)."""
    d = design.copy()
    if not d.tensors:
        return d
    centre = star_centre(d)
    if centre is not None:
        pos = _star(d, centre)
        d.meta.pop("canvas", None)
    else:
        if any(t.position is None for t in d.tensors):
            d.layout(force=True)
        pos = _spread(d)
        if not pos:
            d.layout(force=True)
            pos = _spread(d) or {t.id: (t.position[0] * SCALE, t.position[1] * SCALE) for t in d.tensors}
    for t in d.tensors:
        x, y = pos.get(t.id, (0.0, 0.0))
        t.position = (round(x / SCALE, 1), round(y / SCALE, 1))
    return d


def bounds(boxes: Iterable[tuple[float, float, float, float]]) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) around boxes (x, y, w, h); None for none."""
    boxes = list(boxes)
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[0] + b[2] for b in boxes),
            max(b[1] + b[3] for b in boxes))


def fit_viewport(box: tuple[float, float, float, float] | None, width: float, height: float,
                 pad: tuple[float, float, float, float] = (36.0, 30.0, 36.0, 64.0), min_zoom: float = 0.2,
                 max_zoom: float = 1.2) -> dict[str, float]:
    """The viewport ``{"x", "y", "zoom"}`` showing ``box`` (x0, y0, x1, y1) in a ``width`` x ``height`` canvas,
    with ``pad`` (top, right, bottom, left) px kept free (the zoom buttons sit at the bottom left)."""
    if box is None:
        return {"x": width / 2, "y": height / 2, "zoom": 1.0}
    top, right, bottom, left = pad
    x0, y0, x1, y1 = box
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    zoom = min((width - left - right) / w, (height - top - bottom) / h)
    zoom = max(min_zoom, min(max_zoom, zoom))
    x = left + (width - left - right - w * zoom) / 2 - x0 * zoom
    y = top + (height - top - bottom - h * zoom) / 2 - y0 * zoom
    return {"x": round(x, 1), "y": round(y, 1), "zoom": round(zoom, 4)}


def visible_centre(viewport: dict[str, float] | None, width: float, height: float) -> tuple[float, float] | None:
    """The centre of the visible canvas in design units, or None without a viewport."""
    if not viewport or not viewport.get("zoom"):
        return None
    zoom = float(viewport["zoom"])
    cx, cy = (width / 2 - float(viewport["x"])) / zoom, (height / 2 - float(viewport["y"])) / zoom
    return cx / SCALE, cy / SCALE


def free_box(centre: tuple[float, float], size: tuple[float, float], boxes: Iterable[tuple[float, float, float, float]],
             points: Iterable[tuple[float, float]] = (), margin: float = 24.0) -> tuple[float, float]:
    """Top-left corner (px) of a ``size`` box as near ``centre`` as possible that keeps ``margin`` from every box
    and does not cover any of ``points`` (e.g. the middles of edges, where their labels are)."""
    boxes, points = list(boxes), list(points)
    w, h = size

    def free(x: float, y: float) -> bool:
        x0, y0, x1, y1 = x - margin, y - margin, x + w + margin, y + h + margin
        return (all(x1 <= bx or bx + bw <= x0 or y1 <= by or by + bh <= y0 for bx, by, bw, bh in boxes)
                and all(not (x0 <= px <= x1 and y0 <= py <= y1) for px, py in points))

    cx, cy = centre[0] - w / 2, centre[1] - h / 2
    for ring in range(0, 40):
        steps = max(1, 8 * ring)
        for k in range(steps):
            ang = 2 * math.pi * k / steps
            x, y = cx + ring * 36.0 * math.cos(ang), cy + ring * 28.0 * math.sin(ang)
            if free(x, y):
                return round(x, 1), round(y, 1)
    b = bounds(boxes)
    return (round((b[2] if b else cx) + GAP_X, 1), round(cy, 1))


def distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])
