"""Right column, bottom: the live cost panel (numbers, problems, the params/FLOPs-vs-χ chart, contraction steps).

Everything here is HTML and SVG in Panel panes, drawn from ``state.report`` and ``state.sweep``: no raw Bokeh
model is involved, so the panel can be redrawn from any callback (see :mod:`studio.session`).
"""
from __future__ import annotations

import html
import math
import re
from typing import Any

import panel as pn
import param
from panel.viewable import Viewer

from engine.contract.cost import CostReport
from engine.format import nbytes, ratio, si

from .state import DTYPES, SCHEDULE_CHOICES, StudioState
from .style import css, styled
from .widgets import BytesField, FieldNote, IntField, section


def chi_text(formula: str) -> str:
    """The cost model's ``O(chi^3)`` / ``2 * chi^4`` as the UI writes it: ``O(χ<sup>3</sup>)``, ``2·χ<sup>4</sup>``."""
    text = html.escape(formula).replace(" * ", "·").replace("chi", "χ")
    return re.sub(r"\^(\d+)", r"<sup>\1</sup>", text)


def _card(key: str, value: str, sub: str = "", raw: Any = None, slug: str | None = None) -> str:
    data = f" data-value='{html.escape(str(raw), quote=True)}'" if raw is not None else ""
    slug = slug or key.lower().replace(" ", "-")
    return (f"<div class='tn-card'><div class='k'>{key}</div>"
            f"<div class='v tn-metric-{slug}'{data}>{value}</div><div class='s'>{sub}</div></div>")


def compression_text(compression: float) -> str:
    """``99.9x smaller`` or, for a layer larger than dense, a red ``12.3x larger``."""
    if compression >= 1:
        return f"<b>{ratio(compression)}</b> smaller"
    return f"<span class='larger'>{ratio(1 / compression)} larger</span> than dense"


def cards_html(rep: CostReport | None) -> str:
    if not rep:
        return ("<div class='tn-empty'>No valid design yet: the numbers appear as soon as the drawing is a "
                "complete layer.</div>")
    image = getattr(rep, "image", None)  # a conv2d design's report (ConvCostReport): at this input size
    at = f"batch {rep.batch}" + (f" · image {image[0]}×{image[1]}" if image else "")
    program = getattr(rep, "program", None)
    return "<div class='tn-cards'>" + "".join([
        _card("Core params", f"{rep.params:,}", f"dense {si(rep.dense_params)} · {compression_text(rep.compression)}",
              raw=rep.params, slug="params"),
        _card("Forward", si(rep.forward_flops, "FLOP"),
              f"dense {si(rep.dense_forward_flops, 'FLOP')} · {at}", raw=rep.forward_flops),
        _card("Generate K" if image else "Generate W", si(rep.generate_flops, "FLOP"),
              "materialise cores → K (conv kernel)" if image else "materialise cores → W", raw=rep.generate_flops,
              slug="generate-w"),
        _card("Backward", si(rep.backward_flops, "FLOP"), "gradients of cores and x", raw=rep.backward_flops),
        _card("Peak memory", nbytes(rep.peak_memory_bytes), f"forward, {rep.dtype}", raw=rep.peak_memory_bytes),
        _card("Training memory", nbytes(rep.train_memory_bytes),
              f"with AdamW · dense {nbytes(rep.dense_train_memory_bytes)}", raw=rep.train_memory_bytes),
        _card("Schedule", html.escape(program or rep.schedule), html.escape(rep.method), raw=program or rep.schedule),
        _card("Scaling", chi_text(rep.scaling), chi_text(rep.scaling_detail.leading) + " FLOPs", raw=rep.scaling),
    ] + _budget_cards(rep)) + "</div>"


def _budget_cards(rep: CostReport) -> list[str]:
    """The sliced plan of a report asked with a memory budget (engine.contract.slicing); nothing otherwise."""
    if getattr(rep, "memory_budget", None) is None:
        return []
    legs = ", ".join(f"{i}/{c}" for i, c in (rep.slicing or {}).get("legs", []))
    bucket = f"; planned for batches up to {rep.planned_up_to:,}" if rep.planned_up_to else ""
    return [_card("Memory budget", nbytes(rep.memory_budget),
                  (f"{rep.slices} slices ({html.escape(legs)}), recomputed in backward" if rep.slicing
                   else "fits without slicing") + bucket, raw=rep.slices, slug="slices")]


def problems_html(problems: list[str], cost_error: str, has_report: bool) -> str:
    if not problems and not cost_error:
        return "<div class='tn-ok'>✓ valid design — numbers are live</div>"
    items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    if cost_error:
        items += f"<li>cost model: {html.escape(cost_error)}</li>"
    keep = " Numbers below are for the last valid design." if has_report else ""
    n = len(problems) + bool(cost_error)
    return f"<div class='tn-problems'><b>{n} problem{'s' if n != 1 else ''}</b>.{keep}<ul>{items}</ul></div>"


def steps_html(rep: CostReport | None) -> str:
    if not rep:
        return ""
    rows = []
    for s in rep.path:
        if s.op not in ("einsum", "conv2d") or not s.flops:  # conv programs: their F.conv2d steps too
            continue
        act = f" → {s.activation}" if s.activation else ""
        ins = ", ".join(x.replace("core:", "") for x in s.inputs)
        rows.append(f"<tr class='{s.phase}'><td>{s.step}</td><td>{html.escape(ins)} → "
                    f"{html.escape(s.output)}</td><td>{html.escape(s.einsum or '')}{html.escape(act)}</td>"
                    f"<td class='n'>{si(s.flops)}</td><td class='n'>{'×'.join(map(str, s.shape))}</td></tr>")
    return ("<table class='tn-steps'><thead><tr><th>#</th><th>contract</th><th>einsum</th><th>FLOPs</th>"
            "<th>result</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def decade_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten inside [lo, hi]; with 2x and 5x added when the range spans less than two decades."""
    exps = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [m * 10.0 ** e for e in exps for m in ((1,) if math.log10(hi / lo) >= 2 else (1, 2, 5))]
    return [t for t in ticks if lo <= t <= hi]


def _log_range(values: list[float]) -> tuple[float, float]:
    lo, hi = max(1.0, min(values)), max(1.0, max(values))
    if hi / lo < 10:
        mid = math.sqrt(lo * hi)
        lo, hi = mid / 3.3, mid * 3.3
    return lo / 1.4, hi * 1.4


def sweep_svg(sweep: dict[str, Any], width: int = 380, height: int = 196) -> str:
    """Params (left axis) and forward FLOPs (right axis) against the bond dimension, log-log, as inline SVG."""
    chis = sweep.get("chi") or []
    if len(chis) < 2:
        return "<div class='tn-empty'>The chart needs bonds to vary: this design has none.</div>"
    params, flops = sweep["params"], sweep["forward_flops"]
    left, right, top, bottom = 46, 54, 10, 34
    pw, ph = width - left - right, height - top - bottom
    x0, x1 = math.log(min(chis) / 1.15), math.log(max(chis) * 1.15)
    (pl, ph_), (fl, fh) = _log_range(params), _log_range(flops)

    def X(c: float) -> float:
        return left + (math.log(c) - x0) / (x1 - x0) * pw

    def Y(v: float, lo: float, hi: float) -> float:
        return top + ph - (math.log(max(v, 1.0)) - math.log(lo)) / (math.log(hi) - math.log(lo)) * ph

    out = [f"<svg viewBox='0 0 {width} {height}' role='img' aria-label='params and forward FLOPs against χ'>"]
    for t in decade_ticks(pl, ph_):
        y = Y(t, pl, ph_)
        out.append(f"<line class='grid' x1='{left}' x2='{left + pw}' y1='{y:.1f}' y2='{y:.1f}'/>"
                   f"<text x='{left - 5}' y='{y + 3.5:.1f}' text-anchor='end'>{si(t)}</text>")
    for t in decade_ticks(fl, fh):
        y = Y(t, fl, fh)
        out.append(f"<text x='{left + pw + 5}' y='{y + 3.5:.1f}'>{si(t)}</text>")
    for c in chis:
        out.append(f"<text x='{X(c):.1f}' y='{top + ph + 14}' text-anchor='middle'>{c}</text>")
    out.append(f"<line class='axis' x1='{left}' x2='{left + pw}' y1='{top + ph}' y2='{top + ph}'/>"
               f"<line class='axis' x1='{left}' x2='{left}' y1='{top}' y2='{top + ph}'/>"
               f"<line class='axis' x1='{left + pw}' x2='{left + pw}' y1='{top}' y2='{top + ph}'/>")
    current = sweep.get("current")
    if current and min(chis) / 1.15 <= current <= max(chis) * 1.15:
        out.append(f"<line class='now' x1='{X(current):.1f}' x2='{X(current):.1f}' y1='{top}' y2='{top + ph}'>"
                   f"<title>current χ = {current}</title></line>")
    for cls, vals, lo, hi in (("params", params, pl, ph_), ("flops", flops, fl, fh)):
        pts = " ".join(f"{X(c):.1f},{Y(v, lo, hi):.1f}" for c, v in zip(chis, vals))
        out.append(f"<polyline class='{cls}' points='{pts}'/>")
    for c, p, f in zip(chis, params, flops):
        tip = f"χ = {c}: {p:,} core params, {si(f, 'FLOP')} forward"
        out.append(f"<circle class='params' cx='{X(c):.1f}' cy='{Y(p, pl, ph_):.1f}' r='3.6'><title>{tip}</title>"
                   f"</circle><circle class='flops' cx='{X(c):.1f}' cy='{Y(f, fl, fh):.1f}' r='3.6'>"
                   f"<title>{tip}</title></circle>")
    out.append(f"<text class='title' x='{left + pw / 2}' y='{height - 4}' text-anchor='middle'>bond dimension χ "
               f"(all bonds)</text>")
    out.append(f"<text class='title' transform='translate(11 {top + ph / 2}) rotate(-90)' text-anchor='middle'>"
               f"core params</text>")
    out.append(f"<text class='title' transform='translate({width - 6} {top + ph / 2}) rotate(90)' "
               f"text-anchor='middle'>forward FLOPs</text></svg>")
    legend = "<div class='legend'><span><i></i>core params</span><span><i class='f'></i>forward FLOPs</span></div>"
    return f"<div class='tn-chart'>{''.join(out)}{legend}</div>"


class CostPanel(Viewer):
    """The live numbers of ``state.report``: cards, problems, the χ sweep chart and the contraction steps."""

    state = param.ClassSelector(class_=StudioState, doc="The studio state whose cost is shown.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        s = self.state
        self.batch = IntField(label="batch", value=s.batch, width=90, css_class="tn-batch")
        self.batch.param.watch(lambda e: setattr(s, "batch", e.new), "value")
        self.dtype = styled(pn.widgets.Select.from_param(s.param.dtype, label="dtype", options=list(DTYPES),
                                                         width=100))
        self.schedule = styled(pn.widgets.Select.from_param(s.param.schedule, label="schedule",
                                                            options=list(SCHEDULE_CHOICES), width=110))
        self.image = IntField.for_param(s, "image", label="image", width=80, css_class="tn-image")
        self.image_box = pn.Column(self.image, margin=0)
        # a memory budget (linear designs): the report shows the program that trains within it (sliced generation)
        self.budget = BytesField(label="memory budget", value=s.memory_budget, width=120, css_class="tn-budget",
                                 placeholder="none, e.g. 2GiB")
        self.budget.param.watch(lambda e: setattr(s, "memory_budget", e.new), "value")
        self.budget_note = FieldNote(state=s, field="memory_budget")
        self.budget_box = pn.Column(self.budget, self.budget_note, margin=0, sizing_mode="stretch_width")
        self._image_shown()
        kw = {"sizing_mode": "stretch_width", "margin": (0, 5)}
        self.status = pn.pane.HTML(stylesheets=[css("cards")], **kw, css_classes=["tn-cost-status"])
        self.cards = pn.pane.HTML(stylesheets=[css("cards")], **kw, css_classes=["tn-cost-cards"])
        self.chart = pn.pane.HTML(stylesheets=[css("cards", "chart")], **kw, css_classes=["tn-sweep"])
        self.steps = pn.pane.HTML(stylesheets=[css("cards")], sizing_mode="stretch_width", max_height=260,
                                  styles={"overflow-y": "auto"}, margin=(0, 5), css_classes=["tn-steps-pane"])
        self.update()

    @param.depends("state.report", "state.problems", "state.sweep", "state.cost_error", watch=True)
    def update(self) -> None:
        s = self.state
        self.status.object = problems_html(s.problems, s.cost_error, s.report is not None)
        self.cards.object = cards_html(s.report)
        self.chart.object = sweep_svg(s.sweep or {}) if s.report is not None else ""
        self.steps.object = steps_html(s.report)

    @param.depends("state.batch", watch=True)
    def _batch_shown(self) -> None:
        self.batch.value = self.state.batch

    @param.depends("state.image", "state.design", "state.memory_budget", watch=True)
    def _image_shown(self) -> None:
        """The input image side (H = W) applies to conv2d designs only, a memory budget to linear ones."""
        self.image.value = self.state.image
        self.image_box.visible = self.state.design.conv is not None
        self.budget.value = self.state.memory_budget
        self.budget_box.visible = self.state.design.conv is None

    def __panel__(self) -> pn.viewable.Viewable:
        title = pn.pane.HTML("<div class='tn-subtitle'>Contraction steps</div>", stylesheets=[css("cards")],
                             margin=(4, 5, 0, 5))
        return section("Live cost", pn.Column(
            pn.Row(self.batch, self.dtype, self.schedule, self.image_box, margin=0),
            self.budget_box, self.status, self.cards, self.chart, title, self.steps, margin=0, sizing_mode="stretch_width"))
