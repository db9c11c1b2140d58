"""The Inspect view: a trained run's layer (or the current design's initial weights) seen through its bonds.

- **Canvas**: the design drawn as on the Design tab (read-only), each bond coloured and thickened by the entropy of
  its spectrum (legend below it); click a bond to select it. For chain designs (MPO) a **Stack** view shows the
  same design as the sequence of sparse fully-connected layers it equals (:func:`engine.analysis.stack_layers`).
- **Spectrum** of the selected bond (log scale) with a **slider**: how many values the bond keeps. Every bond keeps
  its own choice (the *plan*); the relative error ``||W - W'|| / ||W||`` and the parameters of the whole plan are
  computed by :func:`engine.analysis.truncate` (exact for linear designs, measured by forming W for nonlinear
  trees) and shown live. **Apply tolerance** turns a relative error budget into a plan.
- **Truncate and fine-tune** launches the truncated layer as a child run of the run
  (:func:`engine.analysis.finetune.finetune`: the parent's checkpoint for the other layers, its own process);
  disabled while it starts, refusals shown next to it.
- **Bond features**: per class, the mean activation of each of the selected bond's components on the run's test
  data (:func:`engine.analysis.bond_features`), with the linear probe's accuracy.

Threads (see :mod:`studio.session`): loading a run, spectra, truncation previews and launches run on one background
worker, bond features on another; each result is handed to the session with :class:`~studio.session.SessionDispatcher`
(the session's document lock held), where Bokeh models may be changed. The two Bokeh plots (spectrum, feature heatmap)
are only ever written through the dispatcher too: clicks on a bond, the slider, Reset and design edits elsewhere
arrive in callbacks Panel may run without the lock, so they change Panel panes at once and hand the plot's new data
over. Without a session (tests, notebooks) everything applies at once. Work waits while the tab is not in front
(:attr:`InspectView.active`): a design edited on the Design tab is loaded when the tab is shown again.
``wait_idle(timeout)`` waits until no background work is left (tests, scripts).
"""
from __future__ import annotations

import html
import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import panel as pn
import param
from bokeh.models import BasicTicker, ColorBar, ColumnDataSource, LinearColorMapper, LogTicker, Range1d, Span
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from panel.viewable import Viewer
from panel_reactflow import NodeType, ReactFlow

from engine.design.model import Design
from engine.format import si
from engine.train.networks import tn_layer_names

from .graph import SOURCE_HANDLES, TARGET_HANDLES, canvas_layout, parse_edge
from .canvas import CanvasProbe
from .layout import bounds, fit_viewport
from .session import SessionDispatcher
from .state import StudioState
from .style import css, styled
from .widgets import IntField, button, section

log = logging.getLogger(__name__)

CURRENT = ""  # the source value of "the current design with its initial weights"
LAYER_SEP = "/"  # a network run's TN layer as a source: "<run id>/<module name>" (ids are hex, module names no "/")


def split_source(source: str) -> tuple[str, str | None]:
    """``"<run id>"`` -> (id, None); ``"<run id>/<module>"`` (a network run's TN layer) -> (id, module)."""
    run_id, sep, module = source.partition(LAYER_SEP)
    return run_id, (module if sep else None)

FEATURE_SAMPLES = 500  # test samples streamed for the bond features (and training samples for the probe)
NODE_TYPES = {name: NodeType(type=name, label=label, inputs=list(TARGET_HANDLES), outputs=list(SOURCE_HANDLES))
              for name, label in (("tensor", "Tensor"), ("leg", "Leg"), ("hub", "Hyperedge"))}
REFRESH_MS = 5000  # the run list is read again this often while the page is open
CANVAS_SIZE = (760, 440)  # the canvas's nominal size (the initial view fits the drawing into it)
SPREAD = 1.6  # tensors drawn this much further apart than on the Design tab: room for thick bonds and their labels
def no_editor(data: Any, schema: Any, *, id: str, type: str, on_patch: Any) -> None:  # noqa: A002
    """The view is read-only: no editor per node or edge."""
    return None


def entropy_colour(t: float) -> str:
    """A Viridis colour for ``t`` in [0, 1] (0: dark purple, 1: yellow)."""
    return Viridis256[int(round(max(0.0, min(1.0, t)) * 255))]


def entropy_width(t: float) -> float:
    """Bond stroke width in px for ``t`` = entropy / ln(largest bond dimension)."""
    return 1.5 + 7.5 * max(0.0, min(1.0, t))


def initial_weights(design: Design, seed: int = 0) -> dict[str, Any]:
    """The current design's layer as the engine initialises it (``TNLinear(design, seed=0)``)."""
    from engine.nn.linear import TNLinear

    return TNLinear(design, seed=seed, bias=True).state_dict()


def _warm_up() -> None:
    """Import what the first spectra need (quimb: 1.2-1.5 s) on the view's worker while the user is elsewhere."""
    from engine.analysis.network import load_quimb

    load_quimb()


class InspectView(Viewer):
    """Spectra, truncation and bond features of a run's layer (see the module docstring).

    Parts (documented attributes): ``source_select``, ``refresh_button``, ``mode_toggle``, ``header``, ``flow`` (the
    canvas) in ``canvas_box``, ``legend``, ``stack_pane``, ``spec_title``, ``spec_fig``/``spec_source`` (in
    ``spec_pane``), ``cut`` (the slider's line on the spectrum), ``slider``, ``readout``, ``tol_input``,
    ``tol_button``, ``reset_button``, ``epochs_input``, ``finetune_button``, ``feedback``,
    ``heat_fig``/``heat_source``/``heat_mapper`` (in ``heat_pane``), ``heat_note``; ``dispatcher`` hands work to the
    session. Loaded data: ``design``, ``weights`` (the layer's state dict),
    ``spectra`` (:class:`~engine.analysis.spectra.SpectraReport`), ``preview`` (the plan's
    :class:`~engine.analysis.truncate.TruncationResult`), ``features``
    (:class:`~engine.analysis.features.FeatureReport`).
    """

    state = param.ClassSelector(class_=StudioState, doc="The studio state (its valid design is 'current design').")
    runs_dir = param.String(default="", doc="The run store's folder (default: <studio home>/runs).")
    source = param.String(default=CURRENT, doc="The run shown (its id), or '' for the current design with its "
                                               "initial weights.")
    bond = param.String(default="", doc="The selected bond: its spectrum, slider and feature heatmap.")
    plan = param.Dict(default={}, doc="Bond -> values it keeps, for the bonds to truncate (the others stay).")
    tol = param.Number(default=0.1, bounds=(0, None), doc="Relative error budget that 'Apply tolerance' turns into a "
                                                          "plan.")
    epochs = param.Integer(default=3, bounds=(1, 10_000), doc="Fine-tuning epochs of the child run.")
    mode = param.Selector(default="network", objects=["network", "stack"],
                          doc="Canvas: the network, or (chain designs) the stack of sparse layers it equals.")
    message = param.String(default="", doc="What the view did last, in words.")
    error = param.String(default="", doc="Why the last action was refused ('' when it was not).")
    loading = param.Boolean(default=False, doc="A run (or the current design) is being loaded.")
    previewing = param.Boolean(default=False, doc="The plan's error and parameters are being computed.")
    launching = param.Boolean(default=False, doc="A fine-tuning child run is being started.")
    launched = param.String(default="", doc="Id of the last child run launched from this view.")
    active = param.Boolean(default=True, doc="Whether the tab is in front: loading waits while it is not.")

    def __init__(self, state: StudioState | None = None, runs_dir: str | Path | None = None, **params: Any):
        state = state or StudioState()
        root = Path(runs_dir) if runs_dir else Path(state.home) / "runs"
        super().__init__(state=state, runs_dir=str(root), **params)
        self._store = None  # opened on first use (a damaged store must not keep the page away)
        self.dispatcher = SessionDispatcher.current()  # results and plot changes are handed to the session
        self._fast = ThreadPoolExecutor(1, thread_name_prefix="inspect")
        self._slow = ThreadPoolExecutor(1, thread_name_prefix="inspect-features")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()
        self._gen = 0  # bumps when the source changes: older results are dropped
        self._preview_seq = 0
        self.design: Design | None = None
        self.weights: dict[str, Any] | None = None
        self.spectra: Any = None
        self.preview: Any = None
        self.features: Any = None
        self.features_error = ""
        self.run: dict[str, Any] | None = None
        self._stale = True  # the source must be loaded (again) once the tab is in front
        self._started = False  # nothing loads before the app has said whether the tab is in front
        self._submit(self._fast, _warm_up)  # quimb's one-off import, before the user's first spectra need it
        self._build_widgets()
        self.refresh_runs()
        runs = [v for v in self.source_select.options.values() if v != CURRENT]
        self.source_select.value = runs[0] if runs else CURRENT
        self.state.param.watch(self._design_changed, ["valid_design"])
        if self.dispatcher.served:
            pn.state.add_periodic_callback(self._periodic, period=REFRESH_MS)  # runs started elsewhere appear
        self.dispatcher(self._start)  # next tick in a session (the app has set ``active`` by then); now without

    def _start(self) -> None:
        self._started = True
        if self.active and self._stale:
            self._load()

    def _periodic(self) -> None:
        if self.active:
            self.refresh_runs()

    @param.depends("active", watch=True)
    def _shown(self) -> None:
        if self.active and self._started:
            self.refresh_runs()
            if self._stale:
                self._load()

    def close(self) -> None:
        """Stop the background workers (queued work is dropped; work already running finishes) and hand nothing
        more to the session."""
        self.dispatcher.close()
        self._fast.shutdown(wait=False, cancel_futures=True)
        self._slow.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self) -> None:
        stylesheets = [css("inspect")]
        self.source_select = styled(pn.widgets.Select(label="Inspect", options={"Current design (initial weights)":
                                                                                CURRENT},
                                                      sizing_mode="stretch_width", css_classes=["tn-inspect-source"]))
        self.source_select.param.watch(lambda e: setattr(self, "source", e.new), "value")
        self.refresh_button = button("↻ Runs", self.refresh_runs, width=80, align="end",
                                     css_classes=["tn-inspect-refresh"], description="read the run list again")
        self.mode_toggle = styled(pn.widgets.RadioButtonGroup(options={"Network": "network", "Stack": "stack"},
                                                              value="network", css_classes=["tn-inspect-mode"],
                                                              color="default", align="end"))
        self.mode_toggle.param.watch(lambda e: setattr(self, "mode", e.new), "value")
        self.header = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=stylesheets,
                                   css_classes=["tn-inspect-header"])
        self.canvas_size = CANVAS_SIZE  # the canvas as the browser reports it (the probe), for fitting the view
        self._boxes: dict = {}
        self.flow = self._make_flow([], [], None)
        self.probe = CanvasProbe(width=0, height=0, margin=0)
        self.probe.param.watch(self._measured, "size")
        self.canvas_box = pn.Column(self.flow, self.probe, sizing_mode="stretch_both", min_height=320, margin=0,
                                    css_classes=["tn-inspect-canvas-box"])
        self.stack_pane = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=stylesheets, visible=False,
                                       css_classes=["tn-inspect-stack"])
        self.legend = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=stylesheets, min_height=40,
                                   css_classes=["tn-inspect-legend"])
        # spectrum
        self.spec_title = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=stylesheets,
                                       css_classes=["tn-inspect-spectrum-title"])
        self.spec_source = ColumnDataSource({"i": [], "s": [], "color": [], "state": []})
        self.spec_fig = figure(height=240, sizing_mode="stretch_width", y_axis_type="log", x_range=Range1d(0.5, 1.5),
                               y_range=Range1d(1e-3, 1.0), tools="save", toolbar_location=None,
                               x_axis_label="index i", y_axis_label="singular value s_i",
                               tooltips=[("i", "@i"), ("s", "@s{0.0000e}"), ("", "@state")])
        self.spec_fig.line("i", "s", source=self.spec_source, color="#94a3b8", line_width=1.2)
        self.spec_fig.scatter("i", "s", source=self.spec_source, color="color", size=9, line_color="#0f172a",
                              line_width=0.5)
        self.cut = Span(location=1.5, dimension="height", line_color="#dc2626", line_dash="dashed", line_width=1.5)
        self.spec_fig.add_layout(self.cut)
        self.spec_fig.yaxis.ticker = LogTicker(mantissas=[1, 2, 5])
        self.spec_fig.xaxis.ticker = BasicTicker(min_interval=1)
        self.spec_fig.outline_line_color = None
        self.spec_fig.xaxis.axis_label_text_font_size = self.spec_fig.yaxis.axis_label_text_font_size = "11px"
        self.spec_pane = pn.Column(pn.pane.Bokeh(self.spec_fig, sizing_mode="stretch_width"),
                                   sizing_mode="stretch_width", margin=0, css_classes=["tn-inspect-spectrum"])
        self.slider = pn.widgets.IntSlider(label="values kept", start=1, end=2, value=2, disabled=True,
                                           sizing_mode="stretch_width", css_classes=["tn-inspect-slider"])
        self.slider.param.watch(self._slid, "value")
        self.readout = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=stylesheets,
                                    css_classes=["tn-inspect-readout"])
        self.tol_input = styled(pn.widgets.FloatInput(label="tolerance ||W−W'||/||W||", value=self.tol, start=0.0,
                                                      step=0.05, width=170, css_classes=["tn-inspect-tol"]))
        self.tol_input.param.watch(lambda e: setattr(self, "tol", max(0.0, float(e.new or 0.0))), "value")
        self.tol_button = button("Apply tolerance", self.apply_tolerance, width=130, align="end",
                                 css_classes=["tn-inspect-apply-tol"], key=lambda: (self.tol, self._gen))
        self.reset_button = button("Reset", lambda: self.param.update(plan={}, error=""), width=70, align="end",
                                   css_classes=["tn-inspect-reset"], dedupe=False)
        self.epochs_input = IntField.for_param(self, "epochs", label="fine-tune epochs", width=130,
                                               css_class="tn-inspect-epochs")
        self.finetune_button = button("Truncate and fine-tune", self.truncate_and_finetune, color="primary", width=190,
                                      align="end", css_classes=["tn-inspect-finetune"],
                                      key=lambda: (dict(self.plan), self.epochs, self.source))
        self.feedback = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=stylesheets,
                                     css_classes=["tn-inspect-feedback"])
        # features
        self.heat_source = ColumnDataSource({"x": [], "y": [], "v": [], "cls": [], "comp": []})
        self.heat_mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=1.0)
        self.heat_fig = figure(height=260, sizing_mode="stretch_width", x_range=Range1d(-0.5, 0.5),
                               y_range=Range1d(-0.5, 0.5), tools="save", toolbar_location=None,
                               x_axis_label="bond component", y_axis_label="class",
                               tooltips=[("class", "@cls"), ("component", "@comp"), ("mean activation", "@v{0.000}")])
        self.heat_fig.rect("x", "y", width=1, height=1, source=self.heat_source,
                           fill_color={"field": "v", "transform": self.heat_mapper}, line_color=None)
        self.heat_fig.add_layout(ColorBar(color_mapper=self.heat_mapper, width=8, title="RMS"), "right")
        self.heat_fig.outline_line_color = None
        self.heat_fig.xaxis.axis_label_text_font_size = self.heat_fig.yaxis.axis_label_text_font_size = "11px"
        self.heat_pane = pn.Column(pn.pane.Bokeh(self.heat_fig, sizing_mode="stretch_width"),
                                   sizing_mode="stretch_width", margin=0, visible=False,
                                   css_classes=["tn-inspect-heatmap"])
        self.heat_note = pn.pane.HTML("", sizing_mode="stretch_width", stylesheets=stylesheets,
                                      css_classes=["tn-inspect-heat-note"])
        self._render_finetune_controls()

    def _fit(self, boxes: dict | None) -> dict[str, float]:
        """The view showing the whole drawing in the canvas, clear of the zoom buttons."""
        return fit_viewport(bounds(boxes.values()) if boxes else None, *self.canvas_size, min_zoom=0.15,
                            max_zoom=1.25)

    def _measured(self, event: Any) -> None:
        """The browser reported the canvas's size: fit the drawing to it (React Flow's own fit on mount keeps no
        room for the zoom buttons, and comes before the panes around the canvas have their final sizes)."""
        if isinstance(event.new, list) and len(event.new) == 2 and min(event.new) > 0:
            self.canvas_size = (int(event.new[0]), int(event.new[1]))
            self.flow.viewport = self._fit(self._boxes)

    def _make_flow(self, nodes: list[dict], edges: list[dict], boxes: dict | None) -> ReactFlow:
        viewport = self._fit(boxes)
        flow = ReactFlow(nodes=nodes, edges=edges, node_types=NODE_TYPES, editor_mode="side",
                         default_node_editor=no_editor, default_edge_editor=no_editor, enable_connect=False,
                         enable_delete=False, enable_multiselect=False, sizing_mode="stretch_both",
                         min_height=300, show_minimap=False, min_zoom=0.15, max_zoom=2.0,
                         stylesheets=[css("canvas")], css_classes=["tn-inspect-canvas"],
                         default_edge_options={"type": "straight"}, viewport=viewport)
        flow.on("edge_clicked", self._edge_clicked)
        flow.on("selection_changed", self._selection_changed)
        return flow

    def __panel__(self) -> pn.viewable.Viewable:
        top = pn.Row(self.source_select, self.refresh_button, self.mode_toggle, sizing_mode="stretch_width",
                     margin=(0, 0, 4, 0))
        centre = pn.Column(top, self.header, self.canvas_box, self.stack_pane, self.legend,
                           sizing_mode="stretch_both", min_width=480, margin=(10, 6, 10, 10),
                           stylesheets=[css("section")], css_classes=["tn-inspect-main"])
        spectrum = section("Bond spectrum", self.spec_title, self.spec_pane, self.slider, self.readout,
                           pn.Row(self.tol_input, self.tol_button, self.reset_button, margin=0),
                           pn.Row(self.epochs_input, self.finetune_button, margin=(6, 0, 0, 0)), self.feedback,
                           css_classes=["tn-inspect-spectrum-card"])
        features = section("Bond features per class", self.heat_note, self.heat_pane, margin=0,
                           css_classes=["tn-inspect-features-card"])
        right = pn.Column(spectrum, features, width=440, margin=(10, 10, 10, 4), scroll=True,
                          sizing_mode="stretch_height", min_height=200)
        return pn.Row(centre, right, sizing_mode="stretch_both", min_height=520, css_classes=["tn-inspect"])

    # ------------------------------------------------------------------ background work
    def _submit(self, pool: ThreadPoolExecutor, fn: Callable[[], Any]) -> Future:
        def run() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a bug here must not kill the worker; the log has the traceback
                log.exception("inspect view: background work failed")
        try:
            fut = pool.submit(run)
        except RuntimeError:  # closed with its session
            return Future()
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(lambda f: self._done(f))
        return fut

    def _done(self, fut: Future) -> None:
        with self._lock:
            self._pending.discard(fut)

    def _deliver(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` where the page (Bokeh models included) may be changed: under the session's document lock, or
        at once without a session."""
        self.dispatcher(fn)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no background work is pending (tests); returns whether it finished in time."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return True
            for f in pending:
                try:
                    f.result(timeout=max(0.0, deadline - time.monotonic()))
                except Exception as e:  # noqa: BLE001 - timeouts and failures: loop and check again
                    log.debug("waiting for background work: %r", e)
        return False

    @property
    def store(self) -> Any:
        """The run store (:class:`engine.train.store.RunStore`), opened on first use; its errors reach the caller."""
        if self._store is None:
            from engine.train.store import RunStore

            self._store = RunStore(self.runs_dir)
        return self._store

    # ------------------------------------------------------------------ sources
    def refresh_runs(self) -> None:
        """List the runs of a TN layer (newest first) after 'Current design': those with a checkpoint, and active
        ones (which show their latest checkpoint once they have one)."""
        options = {"Current design (initial weights)": CURRENT}
        try:
            runs = self.store.list_runs()
        except Exception as e:  # noqa: BLE001 - a broken store must not break the page
            log.warning("cannot read the runs in %s", self.runs_dir, exc_info=True)
            self.error = f"cannot read the runs in {self.runs_dir}: {e}"
            runs = []
        for r in runs:
            config = r.get("config") or {}
            layers = tn_layer_names(config.get("network")) if not r.get("design_name") else [None]
            if not layers or config.get("baseline"):
                continue
            if not r.get("checkpoint") and r["status"] not in ("queued", "running"):
                continue  # ended before its first checkpoint: no weights to inspect
            acc = (r.get("results") or {}).get("test_accuracy")
            for layer in layers:  # a network run: each of its TN layers is a source of its own
                label = (f"{r['id']} · {r.get('name') or r['design_name']}" + (f" · {layer}" if layer else "")
                         + f" · {r['status']}")
                if acc is not None:
                    label += f" · {100 * acc:.1f}%"
                if r.get("parent"):
                    label += f" · child of {r['parent']}"
                options[label] = f"{r['id']}{LAYER_SEP}{layer}" if layer else r["id"]
        if options == self.source_select.options:
            return
        keep = self.source_select.value
        self.source_select.options = options
        if keep in options.values():
            self.source_select.value = keep

    def _design_changed(self, *_: Any) -> None:
        if self.source == CURRENT:
            self._load()

    @param.depends("source", watch=True)
    def _load(self) -> None:
        """Load the source's design and weights, then its spectra, in the background (once the tab is in front)."""
        if not (self.active and self._started):
            self._stale = True
            return
        self._stale = False
        with self._lock:
            self._gen += 1
            gen = self._gen
        source = self.source
        self.param.update(loading=True, error="", message="", plan={}, launched="")
        self.features, self.features_error, self.preview = None, "", None

        def work() -> None:
            from engine.analysis.runs import RunError, get_run, load_run_layer
            from engine.analysis.spectra import bond_spectra

            try:
                if source == CURRENT:
                    design = self.state.valid_design
                    if design is None:
                        raise ValueError("the current design has problems: fix them on the Design tab first")
                    design = design.copy()
                    weights, run = initial_weights(design), None
                else:
                    run_id, module = split_source(source)
                    layer = load_run_layer(run_id, self.runs_dir, prefix=module)
                    design, weights, run = layer.design, layer.state, get_run(layer.run_id, self.runs_dir)
                spectra = bond_spectra(design, weights)
            except (RunError, ValueError, KeyError, OSError) as e:
                msg = str(e)
                self._deliver(lambda: self._loaded(gen, None, None, None, None, msg))
                return
            self._deliver(lambda: self._loaded(gen, design, weights, spectra, run, ""))

        self._submit(self._fast, work)

    def _loaded(self, gen: int, design: Design | None, weights: Any, spectra: Any, run: Any, error: str) -> None:
        if gen != self._gen:
            return
        self.design, self.weights, self.spectra, self.run = design, weights, spectra, run
        self.loading = False
        if design is None:
            self.param.update(error=error, bond="")
            self.header.object = f"<div class='tn-i-error'>{html.escape(error)}</div>"
            self._redraw_canvas(fresh=True)
            self._render_spectrum()
            self._render_features()
            self._render_stack()
            return
        self.error = ""
        self._render_header()
        self._redraw_canvas(fresh=True)
        self._render_stack()
        bonds = [s.bond for s in spectra]
        pick = self.bond if self.bond in bonds else (max(spectra, key=lambda s: s.entropy).bond if bonds else "")
        if pick == self.bond:
            self._on_bond()
        else:
            self.bond = pick
        self._render_readout()
        self._render_features()
        if run is not None:
            self._start_features(gen)

    def _render_header(self) -> None:
        d, rep = self.design, self.spectra
        what = ("nonlinear: the spectrum of the fragment each tensor absorbs" if not rep.linear
                else "exact (canonical form)" if rep.exact else "approximate: " + "; ".join(rep.notes))
        if self.run is not None:
            r = self.run
            acc = (r.get("results") or {}).get("test_accuracy")
            who = (f"run <b>{html.escape(r['id'])}</b> · {html.escape(r.get('name') or '')} · "
                   f"{html.escape(r['status'])}"
                   + (f" · test accuracy {100 * acc:.2f}%" if acc is not None else ""))
        else:
            who = "the current design with its <b>initial</b> weights (TNLinear, seed 0)"
        self.header.object = (f"<div class='tn-i-card'><span class='tn-i-big'>{html.escape(d.name)}</span> "
                              f"<span class='tn-i-muted'>· {d.params:,} core params · {len(self.spectra)} bonds"
                              f"</span>"
                              f"<br>{who}<br><span class='tn-i-muted'>spectra: {html.escape(what)} "
                              f"({self.spectra.seconds * 1e3:.0f} ms)</span></div>")

    # ------------------------------------------------------------------ canvas
    def _max_entropy(self) -> float:
        dims = [s.dim for s in self.spectra] if self.spectra is not None else []
        return math.log(max(dims)) if dims and max(dims) > 1 else 1.0

    def _graph(self) -> tuple[list[dict], list[dict], dict]:
        if self.design is None:
            return [], [], {}
        design = self.design
        if not all(t.position is not None for t in design.tensors):
            design = design.copy().layout()
        nodes, edges, boxes = spread(*canvas_layout(design))
        by_bond = {s.bond: s for s in self.spectra} if self.spectra is not None else {}
        top = self._max_entropy()
        for e in edges:
            kind, name, _ = parse_edge(e["id"])
            s = by_bond.get(name)
            if kind not in ("B", "HE") or s is None:
                continue
            t = s.entropy / top
            keep = self.plan.get(name)
            e["className"] = "tn-inspect-bond" + (" tn-inspect-planned" if keep else "")
            e["style"] = {"stroke": entropy_colour(t), "strokeWidth": round(entropy_width(t), 2)}
            if kind == "B":
                e["label"] = f"{name} · {s.dim}" + (f"→{keep}" if keep else "")
            e["selected"] = name == self.bond
        for n in nodes:
            n["draggable"] = False
            n["selected"] = False
        return nodes, edges, boxes

    def _redraw_canvas(self, fresh: bool = False) -> None:
        nodes, edges, boxes = self._graph()
        if fresh:  # a new design: a new canvas made with its drawing, the view fitted to it (nodes set on a canvas
            # whose page is still being made, as a dynamic tab shown for the first time, can miss the page)
            self._boxes = boxes
            self.flow = self._make_flow(nodes, edges, boxes)
            self.canvas_box[0] = self.flow
        else:
            self.flow.param.update(nodes=nodes, edges=edges)
        self._render_legend()

    def _render_legend(self) -> None:
        if self.spectra is None or not len(self.spectra):
            self.legend.object = ("<div class='tn-i-legend'>no bonds to show</div>" if self.design is not None
                                  else "")
            return
        top = self._max_entropy()
        stops = ",".join(entropy_colour(k / 8) for k in range(9))
        lines = "".join(f"<svg width='34' height='12'><line x1='2' y1='6' x2='32' y2='6' stroke='{entropy_colour(t)}' "
                        f"stroke-width='{entropy_width(t):.1f}'/></svg>" for t in (0.0, 0.5, 1.0))
        kind = ("fragment spectra (what each parent receives; not a property of W)" if not self.spectra.linear
                else "exact Schmidt spectra of W" if self.spectra.exact else "approximate (gauge) spectra")
        self.legend.object = (
            "<div class='tn-i-legend'><b>bond colour and width: entropy S</b>"
            f"<span>0</span><div class='tn-i-grad' style='background:linear-gradient(90deg,{stops})'></div>"
            f"<span>{top:.2f} = ln {round(math.exp(top))} nats</span>{lines}"
            f"<span class='tn-i-muted'>S = −Σ p ln p, p = s²/Σs²; {html.escape(kind)}; click a bond</span></div>")

    def _edge_clicked(self, payload: dict[str, Any]) -> None:
        self._pick_edge(payload.get("edge_id") or "")

    def _selection_changed(self, payload: dict[str, Any]) -> None:
        edges = payload.get("edges") or []
        if edges:
            self._pick_edge(edges[0])

    def _pick_edge(self, eid: str) -> None:
        kind, name, _ = parse_edge(eid)
        if self.spectra is None or kind not in ("B", "HE"):
            return
        if any(s.bond == name for s in self.spectra) and name != self.bond:
            self.bond = name

    # ------------------------------------------------------------------ stack view
    @param.depends("mode", watch=True)
    def _render_stack(self) -> None:
        stack = self.mode == "stack"
        self.canvas_box.visible = self.legend.visible = not stack
        self.stack_pane.visible = stack
        if not stack:
            return
        if self.design is None:
            self.stack_pane.object = ""
            return
        from engine.analysis.stack import stack_layers

        try:
            layers = stack_layers(self.design)
        except ValueError as e:
            self.stack_pane.object = f"<div class='tn-i-error'>{html.escape(str(e))}</div>"
            return
        self.stack_pane.object = stack_html(self.design, layers)

    # ------------------------------------------------------------------ spectrum and slider
    @param.depends("bond", watch=True)
    def _on_bond(self) -> None:
        self._render_spectrum()
        self._render_features()
        if self.design is not None:
            self._redraw_canvas()

    def _spectrum(self):
        if self.spectra is None or not self.bond:
            return None
        return next((s for s in self.spectra if s.bond == self.bond), None)

    def _render_spectrum(self) -> None:
        s = self._spectrum()
        if s is None:
            self.spec_title.object = "<div class='tn-i-muted'>click a bond on the canvas to see its spectrum</div>"
            self.dispatcher(lambda: self.spec_source.update(data={"i": [], "s": [], "color": [], "state": []}))
            self.slider.disabled = True
            self.spec_pane.visible = False  # no empty axes: the line above says what to do
            return
        self.spec_pane.visible = True
        keep = self.plan.get(s.bond, s.dim)
        self._set_slider(s.dim, keep)
        self._draw_spectrum(s, keep)

    def _set_slider(self, dim: int, keep: int) -> None:
        self._slider_guard = True
        try:
            self.slider.param.update(start=1, end=max(dim, 2), value=keep, disabled=dim < 2)
        finally:
            self._slider_guard = False

    def _draw_spectrum(self, s: Any, keep: int) -> None:
        vals = np.asarray(s.values, dtype=float)
        pos = vals[vals > 0]
        zeros = int((vals <= 0).sum())
        data = {"i": list(range(1, s.dim + 1)), "s": [float(v) if v > 0 else float("nan") for v in vals],
                "color": ["#2563eb" if k < keep else "#cbd5e1" for k in range(s.dim)],
                "state": ["kept" if k < keep else "dropped" for k in range(s.dim)]}
        y = (float(pos.min()) / 2.0, float(pos.max()) * 2.0) if pos.size else (1e-3, 1.0)

        def plot() -> None:  # Bokeh models: under the session's lock (this may be a click's callback)
            self.spec_source.data = data
            self.spec_fig.x_range.update(start=0.5, end=s.dim + 0.5)
            self.spec_fig.y_range.update(start=y[0], end=y[1])
            self.cut.location = keep + 0.5

        self.dispatcher(plot)
        method = {"canonical": "exact Schmidt values of W across the bond's cut",
                  "simple-gauge": "simple-update gauge (approximate)", "cp-weights": "CP component weights",
                  "fragment": "singular values of the fragment the parent absorbs"}.get(s.method, s.method)
        tail = s.tail(keep)
        self.spec_title.object = (
            f"<div class='tn-i-card'><span class='tn-i-big'>{html.escape(s.bond)}</span> "
            f"<span class='tn-i-muted'>between {html.escape(' and '.join(s.tensors))} · dim {s.dim} · "
            f"entropy {s.entropy:.3f} of {math.log(s.dim) if s.dim > 1 else 0:.3f} nats · effective rank "
            f"{s.effective_rank()}</span><br><span class='tn-i-muted'>{html.escape(method)}"
            + (f"; {zeros} zero value{'s' if zeros != 1 else ''} not drawn (log scale)" if zeros else "")
            + f"</span><br>keeping <b>{keep}</b> of {s.dim}: discarded tail of this spectrum "
              f"<b>{tail:.4g}</b>"
            + (" <span class='tn-i-muted'>(kept rows leave at least this)</span>" if s.method == "fragment" else "")
            + "</div>")

    def _slid(self, event: Any) -> None:
        if getattr(self, "_slider_guard", False):
            return
        s = self._spectrum()
        if s is None:
            return
        keep = int(event.new)
        plan = dict(self.plan)
        if keep >= s.dim:
            plan.pop(s.bond, None)
        else:
            plan[s.bond] = keep
        self._draw_spectrum(s, keep)
        if plan != self.plan:
            self.plan = plan

    @param.depends("plan", watch=True)
    def _on_plan(self) -> None:
        if self.design is not None:
            self._redraw_canvas()
            s = self._spectrum()
            if s is not None and self.slider.value != self.plan.get(s.bond, s.dim):
                self._set_slider(s.dim, self.plan.get(s.bond, s.dim))
                self._draw_spectrum(s, self.plan.get(s.bond, s.dim))
        self._preview()

    def _preview(self) -> None:
        """Compute the plan's truncation (error and params) in the background; only the newest plan is shown."""
        with self._lock:
            self._preview_seq += 1
            seq, gen = self._preview_seq, self._gen
        plan, design, weights = dict(self.plan), self.design, self.weights
        if not plan or design is None:
            self.preview, self.previewing = None, False
            self._render_readout()
            return
        self.previewing = True
        self._render_readout()

        def work() -> None:
            from engine.analysis.truncate import truncate

            if seq != self._preview_seq:
                return  # a newer plan is waiting
            try:
                res, err = truncate(design, weights, max_bond=plan), ""
            except ValueError as e:
                res, err = None, str(e)
            self._deliver(lambda: self._previewed(seq, gen, res, err))

        self._submit(self._fast, work)

    def _previewed(self, seq: int, gen: int, res: Any, err: str) -> None:
        if seq != self._preview_seq or gen != self._gen:
            return
        self.preview, self.previewing = res, False
        if err:
            self.error = err
        self._render_readout()

    def _render_readout(self) -> None:
        d = self.design
        if d is None:
            self.readout.object = ""
            return
        if not self.plan:
            self.readout.object = (f"<div class='tn-i-readout'>no truncation planned: move a bond's slider or apply a "
                                   f"tolerance · params <b>{d.params:,}</b></div>")
        elif self.previewing or self.preview is None:
            self.readout.object = "<div class='tn-i-readout tn-i-muted'>computing the truncation …</div>"
        else:
            r = self.preview
            how = {"exact": "exact", "measured": "measured: W and W' formed",
                   "estimated": "estimated from Gaussian probes"}.get(r.error, r.error)
            changed = ", ".join(f"{b.bond} {b.before}→{b.after}" for b in r.bonds if b.before != b.after)
            self.readout.object = (
                f"<div class='tn-i-readout' data-error='{r.relative_error:.6g}' data-params='{r.params_after}'>"
                f"relative error ||W−W'||/||W|| <b class='tn-i-relerr'>{r.relative_error:.4g}</b> "
                f"<span class='tn-i-muted'>({how})</span><br>params <b>{r.params_before:,} → "
                f"<span class='tn-i-params'>{r.params_after:,}</span></b> "
                f"({r.params_before / max(r.params_after, 1):.2f}× fewer)<br>"
                f"<span class='tn-i-muted'>{html.escape(changed or 'no bond changes')}</span></div>")
        self._render_finetune_controls()

    def apply_tolerance(self) -> None:
        """Turn ``tol`` into a plan: the ranks :func:`truncate` keeps under that relative error budget."""
        design, weights, gen = self.design, self.weights, self._gen
        if design is None:
            self.error = "nothing loaded to truncate"
            return
        tol = float(self.tol)
        self.previewing = True
        self._render_readout()

        def work() -> None:
            from engine.analysis.truncate import truncate

            try:
                res, err = truncate(design, weights, tol=tol), ""
            except ValueError as e:
                res, err = None, str(e)

            def show() -> None:
                if gen != self._gen:
                    return
                if res is None:
                    self.param.update(error=err, previewing=False)
                    self._render_readout()
                    return
                self.param.update(error="", message=f"tolerance {tol:g}: {res.params_before:,} → "
                                                    f"{res.params_after:,} params")
                self.plan = {b.bond: b.after for b in res.bonds if b.after < b.before}
                if not self.plan:
                    self.previewing = False
                    self._render_readout()

            self._deliver(show)

        self._submit(self._fast, work)

    # ------------------------------------------------------------------ truncate and fine-tune
    @param.depends("launching", "loading", "source", "error", "message", "launched", watch=True)
    def _render_finetune_controls(self) -> None:
        why = ""
        if self.source == CURRENT:
            why = "fine-tuning continues a training run: pick a run above"
        elif self.design is None:
            why = "nothing loaded"
        elif not self.plan:
            why = "plan a truncation first (a bond's slider or a tolerance)"
        self.finetune_button.disabled = bool(self.launching or why or self.loading)
        self.finetune_button.label = "Starting …" if self.launching else "Truncate and fine-tune"
        if self.error:
            self.feedback.object = f"<div class='tn-i-error'>{html.escape(self.error)}</div>"
        elif self.launching:
            self.feedback.object = "<div class='tn-i-busy'>truncating and starting the child run …</div>"
        elif self.message:
            self.feedback.object = f"<div class='tn-i-ok'>{html.escape(self.message)}</div>"
        elif why:
            self.feedback.object = f"<div class='tn-i-muted'>{html.escape(why)}</div>"
        else:
            self.feedback.object = ""

    def truncate_and_finetune(self) -> None:
        """Truncate the run's layer as planned and launch its fine-tuning as a child run (in the background)."""
        if self.launching:
            return
        if self.source == CURRENT or self.run is None:
            self.error = "fine-tuning continues a training run: pick a run above"
            return
        if not self.plan:
            self.error = "nothing to truncate: move a bond's slider or apply a tolerance"
            return
        plan, design, weights, epochs = dict(self.plan), self.design, self.weights, int(self.epochs)
        run_id, module = self.run["id"], split_source(self.source)[1]  # a network run's TN layer, or None
        self.param.update(launching=True, error="", message="")

        def work() -> None:
            from engine.analysis.finetune import finetune
            from engine.analysis.truncate import truncate

            try:
                res = truncate(design, weights, max_bond=plan)
                child = finetune(run_id, res, epochs, self.runs_dir, layer=module)
                what = f"{module} of run {run_id}" if module else f"run {run_id}"
                msg, err = (f"Launched child run {child}: {epochs} epoch{'s' if epochs != 1 else ''} of fine-tuning "
                            f"from {what}, {res.params_before:,} → {res.params_after:,} params, relative "
                            f"error {res.relative_error:.3g} ({res.error})"), ""
            except (ValueError, OSError) as e:  # RunError, ConfigError, DataError, ModelError are ValueErrors
                child, msg, err = "", "", str(e)

            def show() -> None:
                self.param.update(launching=False, error=err, message=msg, launched=child)
                if child:
                    self.refresh_runs()

            self._deliver(show)

        self._submit(self._fast, work)

    # ------------------------------------------------------------------ bond features
    def _start_features(self, gen: int) -> None:
        source, design, weights = self.source, self.design, self.weights
        self.heat_note.object = "<div class='tn-i-muted'>computing bond features on the run's test data …</div>"

        def work() -> None:
            from engine.analysis.features import bond_features
            from engine.analysis.runs import RunError, run_layer_inputs

            if gen != self._gen:
                return
            try:
                run_id, module = split_source(source)
                inputs = run_layer_inputs(run_id, self.runs_dir, splits=("test", "train"), limit=FEATURE_SAMPLES,
                                          layer_name=module)
                ev, fit = inputs["test"], inputs["train"]
                if not ev.classification:
                    raise ValueError(f"{ev.dataset} is not a classification data set: no classes to compare")
                rep, err = bond_features(design, weights, ev.x, ev.labels, fit=(fit.x, fit.labels)), ""
            except (RunError, ValueError, OSError) as e:
                rep, err = None, str(e)

            def show() -> None:
                if gen != self._gen:
                    return
                self.features, self.features_error = rep, err
                self._render_features()

            self._deliver(show)

        self._submit(self._slow, work)

    def _render_features(self) -> None:
        if self.design is None:
            self.heat_note.object = ""
            self.heat_pane.visible = False
            return
        if self.source == CURRENT:
            self.heat_note.object = ("<div class='tn-i-muted'>bond features stream a run's data through its trained "
                                     "layer: pick a run above</div>")
            self.heat_pane.visible = False
            return
        if self.features_error:
            self.heat_note.object = f"<div class='tn-i-error'>{html.escape(self.features_error)}</div>"
            self.heat_pane.visible = False
            return
        rep = self.features
        if rep is None:
            self.heat_note.object = "<div class='tn-i-muted'>computing bond features on the run's test data …</div>"
            self.heat_pane.visible = False
            return
        if self.bond in rep.not_carried:
            self.heat_note.object = (f"<div class='tn-i-muted'><b>{html.escape(self.bond)}</b> carries no data: "
                                     f"{html.escape(rep.not_carried[self.bond])}</div>")
            self.heat_pane.visible = False
            return
        try:
            b = rep[self.bond]
        except KeyError:
            self.heat_note.object = "<div class='tn-i-muted'>click a bond to see its features</div>"
            self.heat_pane.visible = False
            return
        classes = list(rep.classes or ())
        cm = np.asarray(b.class_means, dtype=float) if b.class_means is not None else np.zeros((0, b.dim))
        xs, ys, vs, cl, co = [], [], [], [], []
        for r, c in enumerate(classes):
            for k in range(b.dim):
                xs.append(k)
                ys.append(r)
                vs.append(float(cm[r, k]))
                cl.append(str(c))
                co.append(k)
        finite = [v for v in vs if v == v]
        low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)

        def plot() -> None:  # Bokeh models: under the session's lock (this may be a click's callback)
            self.heat_source.data = {"x": xs, "y": ys, "v": vs, "cls": cl, "comp": co}
            self.heat_mapper.update(low=low, high=high)
            self.heat_fig.x_range.update(start=-0.5, end=b.dim - 0.5)
            self.heat_fig.y_range.update(start=-0.5, end=len(classes) - 0.5)
            self.heat_fig.yaxis.ticker = list(range(len(classes)))
            self.heat_fig.yaxis.major_label_overrides = {r: str(c) for r, c in enumerate(classes)}
            self.heat_fig.xaxis.ticker = list(range(b.dim))

        self.dispatcher(plot)
        probe = ("" if b.probe_accuracy is None else
                 f" · linear probe <b class='tn-i-probe'>{100 * b.probe_accuracy:.1f}%</b> (chance "
                 f"{100 * (rep.chance_accuracy or 0):.1f}%)")
        self.heat_note.object = (f"<div class='tn-i-card'><b>{html.escape(b.bond)}</b> · {rep.samples} test samples"
                                 f" · "
                                 f"RMS activation of each component per class{probe}</div>")
        self.heat_pane.visible = True


def spread(nodes: list[dict], edges: list[dict], boxes: dict, factor: float = SPREAD
           ) -> tuple[list[dict], list[dict], dict]:
    """The Design tab's drawing with tensors (and hubs) ``factor`` times further apart; each open leg moves with its
    tensor. Returns new nodes and boxes (edges unchanged)."""
    shift: dict[str, tuple[float, float]] = {}
    for n in nodes:
        if n["id"].startswith(("T:", "H:")):
            x, y = n["position"]["x"], n["position"]["y"]
            shift[n["id"]] = (x * (factor - 1), y * (factor - 1))
    owner = {e["target"] if e["source"].startswith("T:") else e["source"]:
             e["source"] if e["source"].startswith("T:") else e["target"] for e in edges if e["id"].startswith("LE:")}
    out_nodes, out_boxes = [], {}
    for n in nodes:
        dx, dy = shift.get(n["id"]) or shift.get(owner.get(n["id"], ""), (0.0, 0.0))
        m = dict(n, position={"x": round(n["position"]["x"] + dx, 1), "y": round(n["position"]["y"] + dy, 1)})
        out_nodes.append(m)
        if n["id"] in boxes:
            x, y, w, h = boxes[n["id"]]
            out_boxes[n["id"]] = (x + dx, y + dy, w, h)
    return out_nodes, edges, out_boxes


# ---------------------------------------------------------------------- the stack view as HTML/SVG
def stack_html(design: Design, layers: list[Any]) -> str:
    """The chain as the sparse fully-connected layers it equals: a drawing (unit columns, scaled by log2 of their
    size, and the layers between them, shaded by density) and a table of each layer's shape."""
    if not layers:
        return ""
    widths = [layers[0].in_units] + [la.out_units for la in layers]
    top = max(math.log2(max(w, 2)) for w in widths)
    col_w, gap, height = 30, 110, 220
    w_total = len(widths) * col_w + (len(widths) - 1) * gap + 20
    parts = [f"<svg width='{w_total}' height='{height + 40}' style='font:11px Inter,system-ui,sans-serif'>"]

    def col(k: int) -> tuple[float, float, float]:
        h = 20 + (height - 20) * math.log2(max(widths[k], 2)) / top
        x = 10 + k * (col_w + gap)
        return x, (height - h) / 2 + 10, h

    for k, la in enumerate(layers):
        x0, y0, h0 = col(k)
        x1, y1, h1 = col(k + 1)
        shade = entropy_colour(0.15 + 0.8 * min(1.0, la.density * 10))
        parts.append(f"<polygon points='{x0 + col_w},{y0} {x1},{y1} {x1},{y1 + h1} {x0 + col_w},{y0 + h0}' "
                     f"fill='{shade}' fill-opacity='0.35' stroke='#64748b' stroke-width='0.6'/>")
        cx = (x0 + col_w + x1) / 2
        parts.append(f"<text x='{cx}' y='{height / 2 + 6}' text-anchor='middle' fill='#0f172a'>"
                     f"L{la.index} · {html.escape(la.tensor)}</text>")
        parts.append(f"<text x='{cx}' y='{height / 2 + 20}' text-anchor='middle' fill='#475569'>"
                     f"{la.density:.1%} dense</text>")
    for k, w in enumerate(widths):
        x, y, h = col(k)
        parts.append(f"<rect x='{x}' y='{y}' width='{col_w}' height='{h}' rx='5' fill='#eef4ff' stroke='#2f6fdb'/>")
        parts.append(f"<text x='{x + col_w / 2}' y='{height + 32}' text-anchor='middle' fill='#0f172a'>"
                     f"{si(w)}</text>")
    parts.append("</svg>")
    rows = "".join(
        f"<tr><td>L{la.index} ({html.escape(la.tensor)})</td><td>{la.in_units:,} × {la.out_units:,}</td>"
        f"<td>{la.nonzeros:,}</td><td>{la.density:.2%}</td>"
        f"<td style='text-align:left'>{html.escape(' '.join(la.in_legs))} → "
        f"{html.escape(' '.join(la.out_legs))}</td></tr>"
        for la in layers)
    total = sum(la.nonzeros for la in layers)
    return (f"<div class='tn-i-stack'><div class='tn-i-title'>Stack view: {html.escape(design.name)} as "
            f"{len(layers)} sparse fully-connected layers (x @ W = x @ L0 @ … @ L{len(layers) - 1})</div>"
            + "".join(parts)
            + "<table><tr><th>layer</th><th>shape (in × out units)</th><th>nonzeros</th><th>density</th>"
              "<th style='text-align:left'>units: legs (row-major)</th></tr>" + rows
            + f"</table><div class='tn-i-muted'>nonzeros: each core entry once per combination of the legs the "
              f"layer passes through unchanged; {total:,} in all for {design.params:,} core parameters and a dense W "
              f"of {design.in_features * design.out_features:,}.</div></div>")


def view(state: StudioState, runs_dir: str | Path | None = None) -> pn.viewable.Viewable:
    """The Inspect tab's content (the app adds it as a tab)."""
    return InspectView(state, runs_dir).__panel__()
