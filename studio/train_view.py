"""The Train tab: launch runs of the current design, follow them live, compare them, stop them.

Everything shown comes from the engine's run store (:class:`engine.runs.RunStore` under ``<home>/runs``), polled
once a second by a periodic callback of the browser session: runs launched from the CLI appear, and reloading the
page or restarting the studio shows the same runs and curves. Runs are started by :func:`engine.launcher.launch`
(each in its own process) and stopped by :func:`engine.launcher.stop`. New metric rows are streamed into Bokeh
``ColumnDataSource`` s (``after_seq`` polling: no row is fetched twice or missed); the periodic callback runs on the
session's document, where Bokeh models may be changed.
"""
from __future__ import annotations

import html
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem, NumeralTickFormatter
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from engine.design.model import Design
from engine.train.config import ConfigError, RunConfig
from engine.train.data import dataset_names, dataset_spec
from engine.train.models import CNN_FEATURES, check_fit, mlp_plan, model_kinds
from engine.train.store import ACTIVE, RunStore

from .fmt import ratio, si
from .state import StudioState
from .widgets import ERROR_CSS, section

log = logging.getLogger(__name__)
POLL_MS = 1000
TABLE_COLUMNS = ["id", "name", "status", "design", "params", "compression", "best", "progress", "elapsed"]
STATUS_COLORS = {"queued": "#64748b", "running": "#2563eb", "completed": "#16a34a", "failed": "#dc2626",
                 "stopped": "#d97706"}
FORM_CSS = """
.tn-plan{font:12.5px/1.45 Inter,system-ui,sans-serif;color:#334155;background:#f8fafc;border:1px solid #e2e8f0;
  border-radius:8px;padding:7px 9px}
.tn-plan b{color:#0f172a}
.tn-plan .arch{font:12px ui-monospace,Menlo,monospace;color:#1e3a8a}
.tn-launched{font:12.5px Inter,system-ui,sans-serif;color:#166534;background:#f0fdf4;border:1px solid #bbf7d0;
  border-radius:6px;padding:5px 8px}
.tn-hint{font:12px Inter,system-ui,sans-serif;color:#64748b;padding:2px 2px}
"""


# --------------------------------------------------------------------- small formatting helpers
def elapsed_text(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def status_badge(status: str, reason: str | None = None) -> str:
    color = STATUS_COLORS.get(status, "#64748b")
    title = f" title='{html.escape(reason, quote=True)}'" if reason else ""
    dot = "◉" if status == "running" else "●"
    return (f"<span class='tn-status tn-status-{status}' style='color:{color};font-weight:600'{title}>"
            f"{dot} {html.escape(status)}</span>")


def parse_hidden(text: str) -> list[int] | None:
    """``"256, 128"`` -> ``[256, 128]``; empty -> None (the MLP is built around the design)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        sizes = [int(t) for t in text.replace("x", ",").replace(" ", ",").split(",") if t]
    except ValueError:
        raise ValueError(f"hidden sizes must be integers separated by commas, got {text!r}") from None
    if not sizes:
        raise ValueError(f"hidden sizes must be integers separated by commas, got {text!r}")
    return sizes  # the run config checks that they are >= 1


def form_error(e: Exception) -> str:
    """An error of the form in words: a config error is prefixed with the field's name."""
    if isinstance(e, ConfigError) and e.key and RunConfig.label(e.key) != e.key:
        return f"{RunConfig.label(e.key)}: {e}"
    return str(e)


def model_plan(config: RunConfig, design: Design | None) -> str:
    """The model a config builds around a design, layer by layer (raises ModelError when it does not fit)."""
    check_fit(config, design)
    spec = dataset_spec(config.dataset)
    outputs = spec.num_outputs
    tn = "TN" if not config.baseline else "Linear"
    if config.model == "cnn":
        head = f"{tn} {CNN_FEATURES}×{design.out_features}" if design else f"Linear {CNN_FEATURES}×256"
        tail = ""
        if design is None:
            tail = f" · Linear 256×{outputs}"
        elif design.out_features != outputs:
            tail = f" · Linear {design.out_features}×{outputs}"
        return f"Conv 32 · Conv 64 · Pool 4×4 · {head}{tail}"
    n_in = spec.in_features
    hidden, layer = mlp_plan(n_in, outputs, design, list(config.hidden) if config.hidden is not None else None,
                             config.layer)
    sizes = [n_in] + hidden + [outputs]
    return " · ".join(f"{tn if k == layer else 'Linear'} {sizes[k]}×{sizes[k + 1]}" for k in range(len(sizes) - 1))


# --------------------------------------------------------------------- curves
class RunCurves:
    """One run's data sources (train and test rows) and its renderers in the loss and accuracy figures."""

    def __init__(self, run_id: str, label: str, color: str, loss_fig: Any, acc_fig: Any):
        self.run_id, self.label, self.color = run_id, label, color
        cols = ("step", "loss", "accuracy", "epoch", "run")
        self.train = ColumnDataSource({c: [] for c in cols})  # separate lists: stream() appends in place
        self.test = ColumnDataSource({c: [] for c in cols})
        self.last_seq = 0
        self.renderers = [
            loss_fig.line("step", "loss", source=self.train, color=color, line_width=1.8, alpha=0.85),
            loss_fig.line("step", "loss", source=self.test, color=color, line_width=2, line_dash="dashed"),
            loss_fig.scatter("step", "loss", source=self.test, color=color, size=6, marker="circle"),
            acc_fig.line("step", "accuracy", source=self.train, color=color, line_width=1.4, alpha=0.45),
            acc_fig.line("step", "accuracy", source=self.test, color=color, line_width=2.4),
            acc_fig.scatter("step", "accuracy", source=self.test, color=color, size=7, marker="circle"),
        ]
        self.loss_item = LegendItem(label=label, renderers=self.renderers[:3])
        self.acc_item = LegendItem(label=label, renderers=self.renderers[3:])

    def stream(self, rows: list[dict[str, Any]]) -> int:
        """Append metric rows (already ordered by seq); returns how many were added."""
        if not rows:
            return 0
        for split, src in (("train", self.train), ("test", self.test)):
            part = [r for r in rows if r["split"] == split]
            if part:
                src.stream({"step": [r["step"] for r in part],
                            "loss": [r["loss"] if r["loss"] is not None else float("nan") for r in part],
                            "accuracy": [r["accuracy"] if r["accuracy"] is not None else float("nan")
                                         for r in part],
                            "epoch": [r["epoch"] if r["epoch"] is not None else float("nan") for r in part],
                            "run": [self.label] * len(part)})
        self.last_seq = max(r["seq"] for r in rows)
        return len(rows)

    @property
    def points(self) -> int:
        return len(self.train.data["step"]) + len(self.test.data["step"])

    def best_accuracy(self) -> float | None:
        vals = [a for a in self.test.data["accuracy"] if a == a]
        return max(vals) if vals else None

    def set_visible(self, visible: bool) -> None:
        for r in self.renderers:
            r.visible = visible


def make_figure(y_label: str, percent: bool = False) -> Any:
    fig = figure(height=300, sizing_mode="stretch_width", x_axis_label="step", y_axis_label=y_label,
                 tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="above")
    fig.add_tools(HoverTool(tooltips=[("run", "@run"), ("step", "@step"), ("epoch", "@epoch{0.00}"),
                                      ("loss", "@loss{0.0000}"), ("accuracy", "@accuracy{0.0%}")]))
    if percent:
        fig.yaxis.formatter = NumeralTickFormatter(format="0%")
    fig.outline_line_color = None
    fig.xaxis.axis_label_text_font_size = fig.yaxis.axis_label_text_font_size = "11px"
    fig.toolbar.logo = None
    legend = Legend(items=[], location="top_right" if not percent else "bottom_right", background_fill_alpha=0.75,
                    label_text_font_size="10.5px", click_policy="hide", spacing=0, padding=6)
    fig.add_layout(legend)
    return fig


# --------------------------------------------------------------------- the tab
class TrainView:
    """Launch form, run table, live curves and stop button over one run store."""

    def __init__(self, state: StudioState, runs_root: str | Path | None = None):
        self.state = state
        self.store = RunStore(runs_root or Path(state.home) / "runs")
        self.root = self.store.root
        w = {"sizing_mode": "stretch_width"}
        self.dataset = pn.widgets.Select(label="Data set", options=list(dataset_names()), value="digits", **w)
        self.model = pn.widgets.Select(label="Model", options={k.name.upper(): k.name for k in model_kinds()},
                                       value="mlp", **w)
        self.hidden = pn.widgets.TextInput(label="MLP hidden sizes", placeholder="empty: built around the design",
                                           **w)
        self.layer = pn.widgets.Select(label="Layer the design replaces", options=["auto"], value="auto", **w)
        self.epochs = pn.widgets.IntInput(label="Epochs", value=5, start=1, css_classes=["tn-train-epochs"], **w)
        self.batch_size = pn.widgets.IntInput(label="Batch size", value=64, start=1, css_classes=["tn-train-batch"],
                                              **w)
        self.lr = pn.widgets.FloatInput(label="Learning rate", value=3e-3, start=1e-7, step=5e-4, format="0.[0000]",
                                        **w)
        self.device = pn.widgets.Select(label="Device", options=["auto", "cpu", "cuda"], value="auto", **w)
        self.baseline = pn.widgets.Checkbox(label="also run the dense baseline", value=False,
                                            css_classes=["tn-train-baseline"])
        self.launch_button = pn.widgets.Button(label="▶  Launch run", color="primary", height=40, **w,
                                               css_classes=["tn-train-launch"])
        self.plan = pn.pane.HTML(stylesheets=[FORM_CSS, ERROR_CSS], **w, margin=(4, 10),
                                 css_classes=["tn-train-plan"])
        self.feedback = pn.pane.HTML(stylesheets=[FORM_CSS, ERROR_CSS], **w, margin=(0, 10),
                                     css_classes=["tn-train-feedback"])
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=TABLE_COLUMNS), selectable="checkbox", show_index=False, disabled=True,
            layout="fit_data_stretch", height=230, sizing_mode="stretch_width", css_classes=["tn-run-table"],
            titles={"id": "run", "name": "name", "status": "status", "design": "design", "params": "layer params",
                    "compression": "compr.", "best": "best acc.", "progress": "progress", "elapsed": "elapsed"},
            formatters={"status": {"type": "html"},
                        "progress": {"type": "progress", "max": 100, "color": "#2f6fdb", "legend": True,
                                     "legendColor": "#0f172a"}},
            widths={"progress": 140, "name": 230, "status": 120, "id": 90},
            text_align={"params": "right", "compression": "right", "best": "right", "elapsed": "right"})
        self.stop_button = pn.widgets.Button(label="■  Stop selected", color="danger", variant="outline",
                                             width=150, disabled=True, css_classes=["tn-train-stop"])
        self.table_hint = pn.pane.HTML(stylesheets=[FORM_CSS], sizing_mode="stretch_width", margin=(8, 10))
        self.loss_fig = make_figure("loss")
        self.acc_fig = make_figure("accuracy", percent=True)
        self.curves: dict[str, RunCurves] = {}
        self.colors: dict[str, str] = {}
        self.runs: list[dict[str, Any]] = []
        self.selected: list[str] = []
        self._design_info: dict[str, tuple[str, int | None, float | None]] = {}
        self._first_poll = True
        self._seen: set[str] = set()
        self._doc = None  # the browser session's document, once the view is served
        self._syncing = False

        for wdg in (self.dataset, self.model, self.hidden, self.layer):
            wdg.param.watch(lambda *_: self.update_plan(), "value")
        state.param.watch(lambda *_: self.update_plan(), ["version"])
        self.launch_button.on_click(lambda *_: self.launch())
        self.stop_button.on_click(lambda *_: self.stop_selected())
        self.table.param.watch(self._on_selection, "selection")
        self.update_plan()
        self.poll()

    # ------------------------------------------------------------------ the form
    def config(self) -> RunConfig:
        """The run config the form describes; its checks raise ConfigError naming the field (ValueError for
        hidden sizes that are not numbers)."""
        is_mlp = self.model.value == "mlp"
        hidden = parse_hidden(self.hidden.value) if is_mlp else None
        layer = None if self.layer.value in ("auto", None) or not is_mlp else int(self.layer.value)
        return RunConfig(dataset=self.dataset.value, model=self.model.value, hidden=hidden, layer=layer,
                         epochs=self.epochs.value, batch_size=self.batch_size.value, lr=self.lr.value,
                         device=self.device.value)

    def _layer_options(self) -> None:
        is_mlp = self.model.value == "mlp"
        self.hidden.disabled = self.layer.disabled = not is_mlp
        try:
            hidden = parse_hidden(self.hidden.value)
        except ValueError:
            hidden = None
        opts = ["auto"] + ([str(k) for k in range(len(hidden) + 1)] if hidden else [])
        if self.layer.options != opts:
            keep = self.layer.value if self.layer.value in opts else "auto"
            self.layer.options = opts
            self.layer.value = keep

    def update_plan(self) -> None:
        """Check the form against the current design and describe the model it builds."""
        self._layer_options()
        design = self.state.valid_design
        if design is None:
            self.plan.object = "<div class='tn-error'>The design has problems: fix them on the Design tab first.</div>"
            self.launch_button.disabled = True
            return
        try:
            arch = model_plan(self.config(), design)
        except ValueError as e:  # ConfigError, ModelError, DataError, bad hidden sizes
            self.plan.object = f"<div class='tn-error'>{html.escape(form_error(e))}</div>"
            self.launch_button.disabled = True
            return
        self.launch_button.disabled = False
        problems = " (last valid version: the draft has problems)" if self.state.problems else ""
        self.plan.object = (f"<div class='tn-plan'>Trains <b>{html.escape(design.name)}</b>{problems}: "
                            f"{design.params:,} params, {ratio(design.compression)} compression<br>"
                            f"<span class='arch'>{html.escape(arch)}</span></div>")

    def launch(self) -> list[str]:
        """Launch a run of the current design (and its dense baseline); returns the new run ids."""
        from engine.train.launcher import launch

        design = self.state.valid_design
        try:
            if design is None:
                raise ValueError("the design has problems: fix them on the Design tab first")
            config = self.config()
            ids = [launch(config, design, runs_dir=self.root)]
            if self.baseline.value:
                ids.append(launch(replace(config, baseline=True), design, runs_dir=self.root, parent=ids[0]))
        except ValueError as e:  # config, device, data or fit: the user's to fix, said in one line
            self.feedback.object = f"<div class='tn-error'>Not launched: {html.escape(form_error(e))}</div>"
            return []
        except Exception as e:  # noqa: BLE001 - the store or the process failed: say so, keep the traceback
            log.exception("launching a run failed")
            self.feedback.object = f"<div class='tn-error'>Not launched: {html.escape(str(e))}</div>"
            return []
        self.feedback.object = (f"<div class='tn-launched'>Launched {', '.join(ids)} — "
                                f"{'with its dense baseline, ' if len(ids) > 1 else ''}follow it below.</div>")
        self.selected = list(dict.fromkeys(ids + self.selected))
        self.request_poll()
        return ids

    def stop_selected(self) -> list[str]:
        from engine.train.launcher import stop

        stopped = []
        for rid in self.selected:
            run = next((r for r in self.runs if r["id"] == rid), None)
            if run is not None and run["status"] in ACTIVE:
                try:
                    if stop(rid, runs_dir=self.root):
                        stopped.append(rid)
                except Exception as e:
                    self.feedback.object = f"<div class='tn-error'>Could not stop {rid}: {html.escape(str(e))}</div>"
        if stopped:
            self.feedback.object = (f"<div class='tn-launched'>Asked {', '.join(stopped)} to stop: "
                                    f"it checkpoints and ends.</div>")
        self.request_poll()
        return stopped

    # ------------------------------------------------------------------ polling the store
    def request_poll(self) -> None:
        """Poll soon, on the session's document (widget callbacks run without the document lock, and raw
        Bokeh changes - new renderers, streamed rows - must happen under it); at once outside a server."""
        if self._doc is not None:
            self._doc.add_next_tick_callback(self.poll)
        else:
            self.poll()

    def _design_of(self, run: dict[str, Any]) -> tuple[str, int | None, float | None]:
        """(design name, layer params, compression) of a run, from its summary or (once) its design."""
        summary = run.get("summary") or {}
        if summary.get("layer_params"):
            comp = summary.get("layer_compression")
            return run.get("design_name") or "dense", summary["layer_params"], comp
        if run["id"] not in self._design_info:
            name, params, comp = run.get("design_name") or "dense", None, None
            if run.get("design_name"):
                try:
                    full = self.store.get_run(run["id"])
                    d = Design.from_dict(full["design"], validate=False)
                    if (run.get("config") or {}).get("baseline"):
                        params = d.in_features * d.out_features + d.out_features
                        comp = 1.0
                    else:
                        params, comp = d.params, d.compression
                except Exception:
                    pass
            self._design_info[run["id"]] = (name, params, comp)
        return self._design_info[run["id"]]

    def _row(self, run: dict[str, Any]) -> dict[str, Any]:
        name, params, comp = self._design_of(run)
        if (run.get("config") or {}).get("baseline"):
            name = f"{name} (dense)"
        best = (run.get("results") or {}).get("best_test_accuracy")
        if best is None and run["id"] in self.curves:
            best = self.curves[run["id"]].best_accuracy()
        total, step = run.get("total_steps"), run.get("step") or 0
        progress = 100 if run["status"] == "completed" else (int(100 * step / total) if total else 0)
        start = run.get("created")  # what the user waited: process start-up and data loading included
        end = run.get("finished") if run["status"] not in ACTIVE else time.time()
        return {"id": run["id"], "name": run["name"], "status": status_badge(run["status"], run.get("reason")),
                "design": name, "params": f"{params:,}" if params else "", "compression":
                    ratio(comp) if comp else "", "best": f"{best:.1%}" if best is not None else "",
                "progress": progress, "elapsed": elapsed_text((end or time.time()) - start) if start else ""}

    def _curves_for(self, run: dict[str, Any]) -> RunCurves:
        rid = run["id"]
        if rid not in self.curves:
            color = self.colors.setdefault(rid, Category10_10[len(self.colors) % 10])
            label = f"{rid} · {run['name']}"[:48]
            self.curves[rid] = RunCurves(rid, label, color, self.loss_fig, self.acc_fig)
        return self.curves[rid]

    def poll(self) -> None:
        """Read the store: refresh the table, stream new metric rows of selected and active runs."""
        try:
            self._poll()
        except Exception as e:  # never let one bad poll stop the next ones; say what happened
            log.exception("polling the run store failed")
            self.table_hint.object = f"<div class='tn-error'>Could not refresh the runs: {html.escape(str(e))}</div>"

    def _poll(self) -> None:
        try:
            runs = self.store.list_runs()
        except Exception as e:  # the store is busy or broken: say so, keep what is shown
            self.table_hint.object = f"<div class='tn-error'>Run store unavailable: {html.escape(str(e))}</div>"
            return
        self.runs = runs
        ids = [r["id"] for r in runs]
        # a fresh page shows the newest run and every active one; runs appearing later (launched here or from
        # the CLI) are shown while they are active
        new_active = [r["id"] for r in runs if r["id"] not in self._seen and r["status"] in ACTIVE]
        if self._first_poll and runs:
            self._first_poll = False
            new_active = new_active or ids[:1]
        self._seen.update(ids)
        self.selected = [i for i in dict.fromkeys(self.selected + new_active) if i in ids]
        for run in runs:
            if run["id"] in self.selected or run["status"] in ACTIVE:
                curves = self._curves_for(run)
                try:
                    curves.stream(self.store.metrics(run["id"], after_seq=curves.last_seq))
                except Exception:
                    pass  # the run was deleted meanwhile
        self._refresh_table([self._row(r) for r in runs])
        self._refresh_legend()
        n_active = sum(r["status"] in ACTIVE for r in runs)
        self.table_hint.object = (f"<div class='tn-hint'>{len(runs)} run{'s' if len(runs) != 1 else ''} in "
                                  f"<code>{html.escape(str(self.root))}</code> · {n_active} active · tick runs to "
                                  f"overlay their curves (solid: train, dashed/dots: test)</div>")
        self.stop_button.disabled = not any(r["id"] in self.selected and r["status"] in ACTIVE for r in runs)

    def _refresh_table(self, rows: list[dict[str, Any]]) -> None:
        old = self.table.value
        new = pd.DataFrame(rows, columns=TABLE_COLUMNS)
        want_sel = [k for k, r in enumerate(rows) if r["id"] in self.selected]
        self._syncing = True
        try:
            if len(old) == len(new) and list(old["id"]) == list(new["id"]):
                patch: dict[str, list] = {}
                for col in TABLE_COLUMNS[1:]:
                    changed = [(k, new[col].iloc[k]) for k in range(len(new)) if old[col].iloc[k] != new[col].iloc[k]]
                    if changed:
                        patch[col] = changed
                if patch:
                    try:
                        self.table.patch(patch, as_index=False)
                    except Exception:  # a dtype the patch cannot take: replace the whole table instead
                        self.table.value = new
            else:
                self.table.value = new
            if sorted(self.table.selection) != want_sel:
                self.table.selection = want_sel
        finally:
            self._syncing = False

    def _on_selection(self, event: Any) -> None:
        if self._syncing:
            return
        ids = list(self.table.value["id"]) if len(self.table.value) else []
        self.selected = [ids[k] for k in event.new if k < len(ids)]
        self.request_poll()

    def _refresh_legend(self) -> None:
        shown = [self.curves[i] for i in self.selected if i in self.curves]
        for rid, c in self.curves.items():
            c.set_visible(rid in self.selected)
        loss_items = [c.loss_item for c in shown]
        acc_items = [c.acc_item for c in shown]
        if list(self.loss_fig.legend[0].items) != loss_items:
            self.loss_fig.legend[0].items = loss_items
            self.acc_fig.legend[0].items = acc_items

    # ------------------------------------------------------------------ layout
    def view(self) -> pn.viewable.Viewable:
        pn.extension("tabulator")  # the run table's JS (served by the studio's own server)
        form = section("New run", pn.Column(
            self.dataset, self.model, self.hidden, self.layer,
            pn.Row(self.epochs, self.batch_size, sizing_mode="stretch_width", margin=0),
            pn.Row(self.lr, self.device, sizing_mode="stretch_width", margin=0),
            self.baseline, self.plan, self.launch_button, self.feedback, sizing_mode="stretch_width",
            margin=(0, 0, 8, 0)))
        left = pn.Column(form, width=340, margin=(10, 8, 10, 10))
        runs = section("Runs", pn.Column(self.table, pn.Row(self.stop_button, self.table_hint, margin=(4, 10)),
                                         sizing_mode="stretch_width", margin=(0, 0, 6, 0)))
        charts = section("Curves", pn.Row(pn.pane.Bokeh(self.loss_fig, sizing_mode="stretch_width"),
                                          pn.pane.Bokeh(self.acc_fig, sizing_mode="stretch_width"),
                                          sizing_mode="stretch_width", margin=(0, 6, 6, 6)))
        right = pn.Column(runs, charts, sizing_mode="stretch_both", margin=(10, 10, 10, 4))
        row = pn.Row(left, right, sizing_mode="stretch_both", min_height=720)
        row._train_view = self  # for tests
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            self._doc = pn.state.curdoc
            pn.state.add_periodic_callback(self.poll, period=POLL_MS)
        return row


def view(state: StudioState) -> pn.viewable.Viewable:
    """The Train tab for one studio session."""
    return TrainView(state).view()
