"""The Train tab: launch runs of the current design, follow them live, compare them, stop them.

Everything shown comes from the engine's run store (:class:`engine.train.store.RunStore` under ``<home>/runs``),
polled once a second by a periodic callback of the browser session: runs launched from the CLI appear, and
reloading the page or restarting the studio shows the same runs and curves. Runs are started by
:func:`engine.train.launcher.launch` (each in its own process, after the same :class:`RunConfig` checks as the CLI)
and stopped by :func:`engine.train.launcher.stop`.

The live curves are raw Bokeh models (``ColumnDataSource.stream`` appends only the new rows). They are changed only
in :meth:`TrainView.poll`, which runs under the session's document lock: from the periodic callback, or handed to
the session by :class:`~studio.session.SessionDispatcher` after a click (see :mod:`studio.session` for why).
The axes use explicit ranges that follow the ticked runs; with no run ticked the charts give way to a placeholder.
Parameter counts are *core params* (the design's tensors, no bias), as everywhere in the studio.
"""
from __future__ import annotations

import html
import logging
import math
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn
import param
from bokeh.models import CustomJSTickFormatter, HoverTool, NumeralTickFormatter, Range1d
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.models import ColumnDataSource
from panel.viewable import Viewer

from engine.design.model import Design, DesignError
from engine.format import int_list
from engine.home import runs_dir
from engine.train.config import ConfigError, RunConfig
from engine.train.data import dataset_spec, dataset_specs
from engine.train.models import CNN_FEATURES, check_fit, mlp_plan, model_kinds
from engine.train.networks import tn_layer_totals
from engine.train.store import ACTIVE, RunNotFound, RunStore, StoreError

from .drafts import draft_paths, read_form_draft, write_form_draft
from .fmt import ratio
from .session import SessionDispatcher
from .state import StudioState
from .style import css, styled
from .widgets import FloatField, IntField, Tick, button, error_html, form_values, restore_form, section

log = logging.getLogger(__name__)
POLL_MS = 1000
TRAIN_FORM = ("what", "dataset", "model", "hidden", "layer", "epochs", "batch_size", "lr", "device", "baseline",
              "compiled")  # autosaved (drafts/train/<tab id>.json), restored in this order
NETWORK_KIND = "network"  # the model kind that trains a whole network file (engine.train.models)
TABLE_COLUMNS = ["id", "name", "status", "design", "params", "compression", "best", "progress", "elapsed"]
STATUS_COLORS = {"queued": "#64748b", "running": "#2563eb", "completed": "#16a34a", "failed": "#dc2626",
                 "stopped": "#d97706"}
STEP_FORMAT = """
const a = Math.abs(tick);
for (const [v, s] of [[1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
  if (a >= v) return (tick / v).toPrecision(3).replace(/\\.?0+$/, "") + s;
}
return String(tick);
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


def progress_html(percent: int) -> str:
    """A progress bar that says its percentage."""
    p = max(0, min(100, int(percent)))
    return f"<div class='tn-progress' data-value='{p}'><b style='width:{p}%'></b><span>{p}%</span></div>"


def parse_hidden(text: str) -> list[int] | None:
    """``"256, 128"`` -> ``[256, 128]``; empty -> None (the MLP is built around the design)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        sizes = int_list(text, spaces=True)  # "256,x" too (it was [256])
    except ValueError:
        raise ValueError(f"hidden sizes must be integers separated by commas, got {text!r}") from None
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
    if config.model == "cnn" and design is not None and design.conv is not None:  # the design is conv layer 2
        conv = "TN conv" if not config.baseline else "Conv"
        return (f"Conv 32 · {conv} {design.conv.label.removeprefix('conv ')} · Pool 4×4 · "
                f"Linear {CNN_FEATURES}×256 · Linear 256×{outputs}")
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


def device_options() -> list[str]:
    """auto, cpu, and the CUDA devices torch sees."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu"] + (["cuda"] + [f"cuda:{k}" for k in range(n)] if n else [])


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

    def values(self, column: str) -> list[float]:
        return [v for src in (self.train, self.test) for v in src.data[column] if v == v and v is not None]

    def best_accuracy(self) -> float | None:
        vals = [a for a in self.test.data["accuracy"] if a == a]
        return max(vals) if vals else None

    def set_visible(self, visible: bool) -> None:
        for r in self.renderers:
            if r.visible != visible:
                r.visible = visible


def make_figure(y_label: str, percent: bool = False) -> Any:
    """A figure with explicit ranges (set by :meth:`TrainView.poll`), SI step labels and a hover tool."""
    fig = figure(height=290, sizing_mode="stretch_width", x_axis_label="step", y_axis_label=y_label,
                 x_range=Range1d(0, 1), y_range=Range1d(0, 1), tools="pan,wheel_zoom,box_zoom,reset,save",
                 toolbar_location="above")
    fig.add_tools(HoverTool(tooltips=[("run", "@run"), ("step", "@step"), ("epoch", "@epoch{0.00}"),
                                      ("loss", "@loss{0.0000}"), ("accuracy", "@accuracy{0.0%}")]))
    fig.xaxis.formatter = CustomJSTickFormatter(code=STEP_FORMAT)
    if percent:
        fig.yaxis.formatter = NumeralTickFormatter(format="0%")
    fig.outline_line_color = None
    fig.xaxis.axis_label_text_font_size = fig.yaxis.axis_label_text_font_size = "11px"
    fig.toolbar.logo = None
    fig.toolbar.autohide = True  # the tools show when the pointer is over the plot
    fig.line(x=[], y=[], visible=False)  # a figure without renderers makes Bokeh warn until the first run appears
    return fig


def padded(lo: float, hi: float, frac: float = 0.06, floor: float | None = None,
           ceil: float | None = None) -> tuple[float, float]:
    """[lo, hi] widened by ``frac`` of its span (a point gets a small span), clipped to [floor, ceil]."""
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    lo, hi = lo - frac * span, hi + frac * span
    if floor is not None:
        lo = max(lo, floor)
    if ceil is not None:
        hi = min(hi, ceil)
    return lo, hi


# --------------------------------------------------------------------- the tab
class TrainView(Viewer):
    """Launch form, run table, live curves and stop button over one run store.

    Parts (documented attributes): ``dataset``, ``model``, ``hidden``, ``layer``, ``epochs``, ``batch_size``,
    ``lr``, ``device``, ``baseline`` (form widgets), ``launch_button``, ``plan``, ``feedback``, ``table``,
    ``stop_button``, ``loss_fig``, ``acc_fig``, ``legend``, ``curves`` (run id -> :class:`RunCurves`),
    ``selected`` (ticked run ids), ``store``.
    """

    state = param.ClassSelector(class_=StudioState, doc="The studio state whose valid design is trained.")

    def __init__(self, state: StudioState | None = None, runs_root: str | Path | None = None, **params: Any):
        super().__init__(state=state, **params)
        self.root = runs_dir(runs_root or Path(self.state.home) / "runs", create=False)
        self._store: RunStore | None = None  # opened on first use: a damaged store must not keep the page away
        self.dispatcher = SessionDispatcher.current()
        self.network: Any = None  # the Network tab's view, once attached: "Current network" trains its network
        self.what = styled(pn.widgets.RadioButtonGroup(options={"Current design": "design",
                                                                "Current network": "network"},
                                                       value="design", visible=False, sizing_mode="stretch_width",
                                                       css_classes=["tn-train-what"], margin=(0, 0, 8, 0)))
        self.what.param.watch(lambda *_: self._show_what(), "value")
        self._cards: tuple[Any, Any] = (None, None)
        w = {"sizing_mode": "stretch_width"}
        specs = dataset_specs()
        self.dataset = styled(pn.widgets.Select(label="Data set", options={s.label: s.name for s in specs},
                                                value="digits" if any(s.name == "digits" for s in specs)
                                                else specs[0].name, **w, css_classes=["tn-train-dataset"]))
        # the "network" kind trains a network file, not a design: this tab offers it as "Current network"
        self.model = styled(pn.widgets.Select(label="Model", options={k.name.upper(): k.name for k in model_kinds()
                                                                      if k.name != NETWORK_KIND},
                                              value="mlp", **w, css_classes=["tn-train-model"]))
        self.hidden = styled(pn.widgets.TextInput(label="MLP hidden sizes", placeholder="empty: built around the design",
                                                  **w))
        self.layer = styled(pn.widgets.Select(label="Layer the design replaces", options=["auto"], value="auto", **w))
        # text fields: a refused value says why under the field (a browser number field drops or clamps it)
        self.epochs = IntField(label="Epochs", value=5, css_class="tn-train-epochs", width=140)
        self.batch_size = IntField(label="Batch size", value=64, css_class="tn-train-batch", width=140)
        self.lr = FloatField(label="Learning rate", value=3e-3, css_class="tn-train-lr", width=140)
        self.device = styled(pn.widgets.Select(label="Device", options=device_options(), value="auto", width=140))
        self.baseline = Tick(label="also run the dense baseline", css_class="tn-train-baseline")
        self.compiled = Tick(label="compile the step (torch.compile)", css_class="tn-train-compile")
        self.launch_button = button("▶  Launch run", self.launch, once=True, color="primary", height=40, **w,
                                    css_classes=["tn-train-launch"], key=self._situation)
        self.plan = pn.pane.HTML(stylesheets=[css("train", "notes")], **w, margin=(4, 10),
                                 css_classes=["tn-train-plan"])
        self.feedback = pn.pane.HTML(stylesheets=[css("train", "notes")], **w, margin=(0, 10),
                                     css_classes=["tn-train-feedback"])
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=TABLE_COLUMNS), selectable="checkbox", show_index=False, disabled=True,
            layout="fit_columns", height=230, sizing_mode="stretch_width", css_classes=["tn-run-table"],
            titles={"id": "run", "name": "name", "status": "status", "design": "design", "params": "core params",
                    "compression": "compr.", "best": "best", "progress": "progress", "elapsed": "elapsed"},
            formatters={"status": {"type": "html"}, "progress": {"type": "html"}},
            # every column fits at 1280 x 800 (long names end in an ellipsis); name and design share what a wider
            # window adds (with the last column stretched, a 1600-wide window gave it 350 px and cut the names)
            widths={"id": 78, "status": 112, "params": 106, "compression": 80, "best": 62, "progress": 96,
                    "elapsed": 80},
            text_align={"params": "right", "compression": "right", "best": "right", "elapsed": "right"},
            stylesheets=[css("progress", "table")])
        self.stop_button = button("■  Stop selected", self.stop_selected, once=True, color="danger",
                                  variant="outline", width=150, disabled=True, css_classes=["tn-train-stop"],
                                  key=lambda: tuple(self.selected))
        self.table_hint = pn.pane.HTML(stylesheets=[css("train", "notes")], sizing_mode="stretch_width",
                                       margin=(8, 10))
        self.loss_fig = make_figure("loss")
        self.acc_fig = make_figure("accuracy", percent=True)
        self.legend = pn.pane.HTML("", stylesheets=[css("train")], sizing_mode="stretch_width", margin=(2, 8),
                                   css_classes=["tn-curve-legend"])
        self.placeholder = pn.pane.HTML(
            "<div class='tn-placeholder'>No runs ticked: tick runs in the table above to plot their loss and "
            "accuracy.</div>", stylesheets=[css("train")], sizing_mode="stretch_width", height=250,
            css_classes=["tn-curves-empty"])
        self.charts = pn.Row(pn.pane.Bokeh(self.loss_fig, sizing_mode="stretch_width"),
                             pn.pane.Bokeh(self.acc_fig, sizing_mode="stretch_width"), sizing_mode="stretch_width",
                             margin=0, visible=False)
        self.curves: dict[str, RunCurves] = {}
        self.colors: dict[str, str] = {}
        self.runs: list[dict[str, Any]] = []
        self.selected: list[str] = []
        self._design_info: dict[str, tuple[str, int | None, float | None]] = {}
        self._first_poll = True
        self._seen: set[str] = set()
        self._syncing = False

        for wdg in (self.dataset, self.model, self.hidden, self.layer, self.epochs, self.batch_size, self.lr):
            wdg.param.watch(lambda *_: self.update_plan(), "value")
        self.table.param.watch(self._on_selection, "selection")
        self.update_plan()
        self._restore_form()
        for wdg in self._form_fields().values():
            wdg.param.watch(lambda *_: self._save_form(), "value")
        self.poll()

    @property
    def store(self) -> RunStore:
        """The run store, opened on first use (:class:`StoreError` while it cannot be: the page says why and polls
        again, so a store repaired meanwhile is picked up)."""
        if self._store is None:
            self._store = RunStore(self.root)
        return self._store

    # ------------------------------------------------------------------ the form
    def _form_fields(self) -> dict[str, Any]:
        """The New-run form (and which of design and network it trains), as the autosaved draft keeps it, in the
        order it is restored (the layer after the hidden sizes that give its options)."""
        return {name: getattr(self, name) for name in TRAIN_FORM}

    def _save_form(self) -> None:
        """Keep the form as the Design tab keeps its draft: a reload or a crash loses none of it."""
        if not getattr(self.state, "autosave", False):
            return
        draft_id = getattr(self.state, "draft_id", "")
        try:
            write_form_draft(self.state.home, "train", draft_id, form_values(self._form_fields()))
        except OSError as e:  # a read-only home or a full disk: keep working, say so
            log.warning("could not autosave the train form to %s: %s", draft_paths(self.state.home, "train")[0], e)
            self.feedback.object = error_html(f"the form was not autosaved ({e.strerror or e})")

    def _restore_form(self) -> None:
        """The autosaved form (this tab's own, else the newest of any tab), value by value: a value the form does
        not take (a data set or device this machine lacks, a batch of 0) keeps the default; a file that is not a
        form is set aside and said."""
        if not getattr(self.state, "autosave", False):
            return
        values, note = read_form_draft(self.state.home, "train", getattr(self.state, "draft_id", ""), "train form")
        refused = restore_form(self._form_fields(), values or {})
        if refused:
            log.info("autosaved train form: not taken: %s", ", ".join(refused))
        if note:
            self.feedback.object = error_html(note)

    def _situation(self) -> tuple:
        """What Launch acts on: the form and the design (a double click launches once)."""
        return (self.dataset.value, self.model.value, self.hidden.value, self.layer.value, self.epochs.value,
                self.batch_size.value, self.lr.value, self.device.value, self.baseline.value, self.compiled.value,
                self.state.version)

    def config(self) -> RunConfig:
        """The run config the form describes; its checks raise ConfigError naming the field (ValueError for
        hidden sizes that are not numbers)."""
        is_mlp = self.model.value == "mlp"
        hidden = parse_hidden(self.hidden.value) if is_mlp else None
        layer = None if self.layer.value in ("auto", None) or not is_mlp else int(self.layer.value)
        return RunConfig(dataset=self.dataset.value, model=self.model.value, hidden=hidden, layer=layer,
                         epochs=self.epochs.value, batch_size=self.batch_size.value, lr=self.lr.value,
                         device=self.device.value, compile=self.compiled.value, baseline=False)

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

    @param.depends("state.version", "state.valid_design", watch=True)
    def update_plan(self) -> None:
        """Check the form against the current design and describe the model it builds."""
        self._layer_options()
        design = self.state.valid_design
        if design is None:
            self.plan.object = error_html("The design has problems: fix them on the Design tab first.")
            self.launch_button.disabled = True
            return
        try:
            arch = model_plan(self.config(), design)
        except ValueError as e:  # ConfigError, ModelError, DataError, bad hidden sizes
            self.plan.object = error_html(form_error(e))
            self.launch_button.disabled = True
            return
        self.launch_button.disabled = False
        problems = " (last valid version: the draft has problems)" if self.state.problems else ""
        self.plan.object = (f"<div class='tn-plan'>Trains <b>{html.escape(design.name)}</b>{problems}: "
                            f"{design.params:,} core params, {ratio(design.compression)} compression<br>"
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
        except ValueError as e:  # config, device, data, fit or the store: the user's to fix, said in one line
            self.feedback.object = error_html(f"Not launched: {form_error(e)}")
            return []
        except OSError as e:  # the process could not be started: say so, keep the traceback in the log
            log.exception("starting a training process failed")
            self.feedback.object = error_html(f"Not launched: {e}")
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
                except (OSError, KeyError, ValueError) as e:  # gone meanwhile, or the store refused
                    self.feedback.object = error_html(f"Could not stop {rid}: {e}")
        if stopped:
            self.feedback.object = (f"<div class='tn-launched'>Asked {', '.join(stopped)} to stop: "
                                    f"it checkpoints and ends.</div>")
        self.request_poll()
        return stopped

    # ------------------------------------------------------------------ polling the store
    def request_poll(self) -> None:
        """Poll soon, under the session's document lock (at once outside a server)."""
        self.dispatcher(self.poll)

    def _design_of(self, run: dict[str, Any]) -> tuple[str, int | None, float | None]:
        """(design name, core params, compression) of a run, from its design or, for a network run, from its
        network's TN layers together (read once)."""
        if run["id"] not in self._design_info:
            name, params, comp = run.get("design_name") or "dense", None, None
            config = run.get("config") or {}
            if config.get("model") == "network":
                name = "network"
                try:
                    t = tn_layer_totals(config.get("network") or {})
                except (ValueError, KeyError, TypeError) as e:  # NetworkError and DesignError are ValueErrors
                    log.debug("run %s: no network to count (%s)", run["id"], e)
                else:
                    if t.layers:
                        name = f"network · {t.label}"
                        params, comp = ((t.dense_weights, 1.0) if config.get("baseline")
                                        else (t.core_params, t.compression))
            elif run.get("design_name"):
                try:
                    d = Design.from_dict(self.store.get_run(run["id"])["design"], validate=False)
                except (RunNotFound, StoreError, DesignError, KeyError, TypeError) as e:
                    log.debug("run %s: no design to count (%s)", run["id"], e)
                else:
                    if (run.get("config") or {}).get("baseline"):
                        params, comp = d.in_features * d.out_features, 1.0
                    else:
                        params, comp = d.params, d.compression
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
                "progress": progress_html(progress),
                "elapsed": elapsed_text((end or time.time()) - start) if start else ""}

    def _curves_for(self, run: dict[str, Any]) -> RunCurves:
        rid = run["id"]
        if rid not in self.curves:
            color = self.colors.setdefault(rid, Category10_10[len(self.colors) % 10])
            label = f"{rid} · {run['name']}"
            self.curves[rid] = RunCurves(rid, label, color, self.loss_fig, self.acc_fig)
        return self.curves[rid]

    def poll(self) -> None:
        """Read the store: refresh the table, stream new metric rows of selected and active runs."""
        try:
            self._poll()
        except Exception as e:  # noqa: BLE001 - a periodic callback that raises is dropped by nobody and logged
            # by Bokeh without context: say what failed (traceback in the log) and keep polling
            log.exception("polling the run store failed")
            self.table_hint.object = error_html(f"Could not refresh the runs: {e}")

    def _poll(self) -> None:
        try:
            runs = self.store.list_runs()
        except (StoreError, sqlite3.Error, OSError) as e:  # the store is busy or broken: say so, keep what is shown
            self.table_hint.object = error_html(f"Run store unavailable: {e}")
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
                except (RunNotFound, StoreError) as e:  # deleted meanwhile
                    log.debug("run %s: no metrics (%s)", run["id"], e)
        self._refresh_table([self._row(r) for r in runs])
        self._refresh_curves()
        n_active = sum(r["status"] in ACTIVE for r in runs)
        self.table_hint.object = (f"<div class='tn-hint'>{len(runs)} run{'s' if len(runs) != 1 else ''} in "
                                  f"<code>{html.escape(str(self.root))}</code> · {n_active} active · tick runs to "
                                  f"overlay their curves</div>")
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
                if patch and self.table._models:  # shown: send the changed cells only
                    self.table.patch(patch, as_index=False)
                elif patch:  # not shown yet (the tab never opened): Panel 1.9.4's patch would leave stale the
                    # data the table's view is built from when the tab opens, and no later patch repeats these cells
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

    def _refresh_curves(self) -> None:
        """Show the ticked runs' curves (ranges fitted to them), their legend, or the placeholder."""
        shown = [self.curves[i] for i in self.selected if i in self.curves]
        for rid, c in self.curves.items():
            c.set_visible(rid in self.selected)
        self.charts.visible = bool(shown)
        self.placeholder.visible = not shown
        items = "".join(f"<span><i style='border-color:{c.color}'></i>{html.escape(c.label)}</span>" for c in shown)
        key = ("<span class='key'><i class='solid' style='border-color:#64748b'></i>train</span>"
               "<span class='key'><i class='dash' style='border-color:#64748b'></i>test (dots: evaluations)</span>")
        self.legend.object = f"<div class='tn-legend'>{items}{key}</div>" if shown else ""
        steps = [v for c in shown for v in c.values("step")]
        if steps:
            x0, x1 = 0.0, max(max(steps), 1) * 1.02
            _set_range(self.loss_fig.x_range, x0, x1)
            _set_range(self.acc_fig.x_range, x0, x1)
        losses = [v for c in shown for v in c.values("loss") if math.isfinite(v)]
        if losses:
            _set_range(self.loss_fig.y_range, *padded(min(losses), max(losses), floor=0.0 if min(losses) >= 0 else None))
        accs = [v for c in shown for v in c.values("accuracy") if math.isfinite(v)]
        if accs:
            _set_range(self.acc_fig.y_range, *padded(min(accs), max(accs), floor=0.0, ceil=1.0))

    def show_run(self, run_id: str) -> None:
        """Tick ``run_id`` (its curves are plotted) and refresh."""
        self.selected = list(dict.fromkeys([run_id] + self.selected))
        self.request_poll()

    def close(self) -> None:
        self.dispatcher.close()

    # ------------------------------------------------------------------ layout
    def attach_network(self, network: Any) -> None:
        """Offer ``network``'s network (a :class:`studio.network_view.NetworkView`) next to the design: a switch
        above the form shows its train card (``network.train_panel()``) instead of the design's form."""
        self.network = network
        self.what.visible = True

    def show_network(self) -> None:
        """Switch to training the current network (the Network tab's "Train it" button)."""
        if self.network is not None:
            self.what.value = "network"

    def _show_what(self) -> None:
        form, net = self._cards
        network = self.what.value == "network" and self.network is not None
        if form is not None:
            form.visible = not network
        if net is not None:
            net.visible = network

    def __panel__(self) -> pn.viewable.Viewable:
        form = section("New run", pn.Column(
            self.dataset, self.model, self.hidden, self.layer,
            pn.Row(self.epochs, self.batch_size, margin=0),
            pn.Row(self.lr, self.device, margin=0),
            self.baseline, self.compiled, self.plan, self.launch_button, self.feedback, sizing_mode="stretch_width",
            margin=(0, 0, 8, 0)))
        net = self.network.train_panel() if self.network is not None else None
        self._cards = (form, net)
        self._show_what()
        left = pn.Column(self.what, form, *([net] if net is not None else []), width=340, margin=(10, 8, 10, 10),
                         scroll=True, sizing_mode="stretch_height", min_height=200)
        runs = section("Runs", pn.Column(self.table, pn.Row(self.stop_button, self.table_hint, margin=(4, 10)),
                                         sizing_mode="stretch_width", margin=(0, 0, 6, 0)))
        charts = section("Curves", pn.Column(self.legend, self.charts, self.placeholder, sizing_mode="stretch_width",
                                             margin=(0, 6, 6, 6)))
        right = pn.Column(runs, charts, sizing_mode="stretch_both", margin=(10, 10, 10, 4))
        if self.dispatcher.served:
            pn.state.add_periodic_callback(self.poll, period=POLL_MS)
        return pn.Row(left, right, sizing_mode="stretch_both", min_height=520)


def _set_range(rng: Range1d, start: float, end: float) -> None:
    if (rng.start, rng.end) != (start, end):
        rng.update(start=start, end=end)
