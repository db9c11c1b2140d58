"""Right column, bottom: the live cost panel (numbers, problems, contraction steps, params/FLOPs vs χ chart)."""
from __future__ import annotations

import html
from typing import Any

import panel as pn
from bokeh.models import (ColumnDataSource, FixedTicker, HoverTool, LogAxis, LogScale, NumeralTickFormatter, Range1d,
                          Span)
from bokeh.plotting import figure

from engine.contract.cost import CostReport
from engine.format import nbytes, ratio, si

from .state import DTYPES, SCHEDULE_CHOICES, StudioState
from .widgets import section

CARDS_CSS = """
.tn-cards{display:grid;grid-template-columns:1fr 1fr;gap:8px;font-family:Inter,system-ui,sans-serif}
.tn-card{background:#f8fafc;border:1px solid #e2e8f0;border-radius:8px;padding:7px 9px}
.tn-card .k{font-size:10.5px;text-transform:uppercase;letter-spacing:.05em;color:#64748b}
.tn-card .v{font-size:19px;font-weight:700;color:#0f172a;line-height:1.25}
.tn-card .s{font-size:11px;color:#475569}
.tn-card.wide{grid-column:span 2}
.tn-problems{font:12.5px Inter,system-ui,sans-serif;color:#7f1d1d;background:#fef2f2;border:1px solid #fecaca;
  border-radius:8px;padding:7px 10px;margin-bottom:2px}
.tn-problems ul{margin:4px 0 0 16px;padding:0}
.tn-ok{font:12px Inter,system-ui,sans-serif;color:#166534;background:#f0fdf4;border:1px solid #bbf7d0;border-radius:8px;
  padding:5px 10px}
.tn-steps{border-collapse:collapse;width:100%;font:11.5px ui-monospace,SFMono-Regular,Menlo,monospace;color:#1e293b}
.tn-steps th{font:600 10.5px Inter,system-ui,sans-serif;text-transform:uppercase;color:#64748b;text-align:left;
  border-bottom:1px solid #e2e8f0;padding:3px 5px;position:sticky;top:0;background:#fff}
.tn-steps td{border-bottom:1px solid #f1f5f9;padding:3px 5px;vertical-align:top}
.tn-steps td.n{text-align:right}
.tn-steps tr.apply td:first-child{border-left:3px solid #2f6fdb}
.tn-steps tr.generate td:first-child{border-left:3px solid #16a34a}
"""


def _card(key: str, value: str, sub: str = "", cls: str = "", raw: Any = None) -> str:
    data = f" data-value='{raw}'" if raw is not None else ""
    return (f"<div class='tn-card {cls}'><div class='k'>{key}</div>"
            f"<div class='v tn-metric-{key.lower().replace(' ', '-')}'{data}>{value}</div>"
            f"<div class='s'>{sub}</div></div>")


def cards_html(rep: CostReport | None) -> str:
    if not rep:
        return "<div class='tn-cards'></div>"
    return "<div class='tn-cards'>" + "".join([
        _card("Params", f"{rep.params:,}", f"dense {si(rep.dense_params)} · "
              f"<b>{ratio(rep.compression)}</b> smaller", raw=rep.params),
        _card("Forward", si(rep.forward_flops, "FLOP"),
              f"dense {si(rep.dense_forward_flops, 'FLOP')} · batch {rep.batch}", raw=rep.forward_flops),
        _card("Generate W", si(rep.generate_flops, "FLOP"), "materialise cores → W", raw=rep.generate_flops),
        _card("Backward", si(rep.backward_flops, "FLOP"), "gradients of cores and x", raw=rep.backward_flops),
        _card("Peak memory", nbytes(rep.peak_memory_bytes), f"forward, {rep.dtype}", raw=rep.peak_memory_bytes),
        _card("Training memory", nbytes(rep.train_memory_bytes),
              f"with Adam · dense {nbytes(rep.dense_train_memory_bytes)}", raw=rep.train_memory_bytes),
        _card("Schedule", html.escape(rep.schedule), html.escape(rep.method), cls="", raw=rep.schedule),
        _card("Scaling", html.escape(rep.scaling), html.escape(rep.scaling_detail.leading) + " FLOPs",
              raw=rep.scaling),
    ]) + "</div>"


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
        if s.op != "einsum" or not s.flops:
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
    import math

    exps = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [m * 10.0 ** e for e in exps for m in ((1,) if math.log10(hi / lo) >= 2 else (1, 2, 5))]
    return [t for t in ticks if lo <= t <= hi]


def sweep_figure() -> tuple[Any, ColumnDataSource, Span]:
    src = ColumnDataSource({"chi": [], "params": [], "flops": []})
    fig = figure(height=210, sizing_mode="stretch_width", x_axis_type="log", y_axis_type="log",
                 toolbar_location=None, x_axis_label="bond dimension χ (all bonds)", y_axis_label="parameters")
    fig.extra_y_ranges = {"flops": Range1d(1, 10)}
    fig.extra_y_scales = {"flops": LogScale()}
    # explicit decade ticks: Bokeh's LogTicker falls back to crowded linear ticks over a few decades
    fig.add_layout(LogAxis(y_range_name="flops", axis_label="forward FLOPs", ticker=FixedTicker(ticks=[]),
                           formatter=NumeralTickFormatter(format="0.[0]a")), "right")
    fig.yaxis[0].formatter = NumeralTickFormatter(format="0.[0]a")
    fig.xaxis.formatter = NumeralTickFormatter(format="0")
    fig.line("chi", "params", source=src, color="#2f6fdb", line_width=2.5, legend_label="params")
    fig.scatter("chi", "params", source=src, color="#2f6fdb", size=6)
    fig.line("chi", "flops", source=src, color="#ea580c", line_width=2.5, y_range_name="flops",
             legend_label="forward FLOPs", line_dash="dashed")
    fig.scatter("chi", "flops", source=src, color="#ea580c", size=6, y_range_name="flops")
    span = Span(location=4, dimension="height", line_color="#94a3b8", line_dash="dotted", line_width=2)
    fig.add_layout(span)
    fig.add_tools(HoverTool(tooltips=[("χ", "@chi"), ("params", "@params{0,0}"), ("FLOPs", "@flops{0.00a}")]))
    fig.legend.location = "top_left"
    fig.legend.background_fill_alpha = 0.7
    fig.legend.label_text_font_size = "10px"
    fig.xaxis.axis_label_text_font_size = fig.yaxis.axis_label_text_font_size = "11px"
    fig.outline_line_color = None
    return fig, src, span


class CostPanel:
    """Watches ``report``, ``problems`` and ``sweep`` and redraws the numbers, the table and the chart."""

    def __init__(self, state: StudioState):
        self.state = state
        self.batch = pn.widgets.IntInput.from_param(state.param.batch, label="batch", width=90, start=1)
        self.dtype = pn.widgets.Select.from_param(state.param.dtype, label="dtype", options=list(DTYPES), width=100)
        self.schedule = pn.widgets.Select.from_param(state.param.schedule, label="schedule",
                                                     options=list(SCHEDULE_CHOICES), width=110)
        self.status = pn.pane.HTML(stylesheets=[CARDS_CSS], sizing_mode="stretch_width", margin=(0, 5))
        self.cards = pn.pane.HTML(stylesheets=[CARDS_CSS], sizing_mode="stretch_width", margin=(0, 5),
                                  css_classes=["tn-cost-cards"])
        self.steps = pn.pane.HTML(stylesheets=[CARDS_CSS], sizing_mode="stretch_width", max_height=260,
                                  styles={"overflow-y": "auto"}, margin=(0, 5))
        self.fig, self.source, self.span = sweep_figure()
        self.chart = pn.pane.Bokeh(self.fig, sizing_mode="stretch_width", height=215, margin=(0, 5))
        state.param.watch(lambda *_: self.update(), ["report", "problems", "sweep", "cost_error"])
        self.update()

    def update(self) -> None:
        s = self.state
        self.status.object = problems_html(s.problems, s.cost_error, s.report is not None)
        self.cards.object = cards_html(s.report)
        self.steps.object = steps_html(s.report)
        sw = s.sweep or {}
        if sw.get("chi"):
            self.source.data = {"chi": sw["chi"], "params": sw["params"], "flops": sw["forward_flops"]}
            lo, hi = max(1, min(sw["forward_flops"])), max(sw["forward_flops"])
            self.fig.extra_y_ranges["flops"].start = lo / 1.5
            self.fig.extra_y_ranges["flops"].end = hi * 1.5
            self.fig.yaxis[1].ticker.ticks = decade_ticks(lo / 1.5, hi * 1.5)
            self.span.location = sw.get("current") or sw["chi"][0]

    def view(self) -> pn.viewable.Viewable:
        return section("Live cost", pn.Column(
            pn.Row(self.batch, self.dtype, self.schedule, margin=0),
            self.status, self.cards, self.chart,
            pn.pane.HTML("<div class='tn-title' style='font:600 11px Inter,system-ui;color:#64748b;"
                         "text-transform:uppercase;letter-spacing:.06em'>Contraction steps</div>", margin=(4, 5, 0, 5)),
            self.steps, margin=0, sizing_mode="stretch_width"))
