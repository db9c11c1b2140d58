"""The Search tab: design search under budgets (:mod:`engine.search`), launched and followed from the studio.

:class:`SearchView` is a ``pn.viewable.Viewer``: a form for the space (kinds, leg counts, activations, per-bond
bonds), the budgets (max params, forward FLOPs and training memory at a batch) and the run (trials, epochs, workers,
storage); Launch creates the study and starts worker processes (each trial is a run in the studio's run store); Stop
asks them to end. A live Bokeh scatter shows validation accuracy against size for every trained trial, coloured by
kind (crosses: pruned on accuracy), the Pareto front highlighted and joined; until a trial has been trained a
placeholder says so. Clicking a point selects its trial: *Open design* puts its design on the canvas (through
:class:`StudioState`) and bumps :attr:`SearchView.opened_design`; *Open run* sets :attr:`SearchView.open_run`. The
app (:class:`studio.app.StudioApp`) turns the first into the Design tab and the second into the Train tab showing
that run.

Threading (see :mod:`studio.session`): the study is read in a background thread (an RDB server may be slow); the
thread only computes a :class:`~engine.search.report.StudyReport`. Bokeh models (the scatter's sources, ranges,
title) are changed only on the session's thread under the document lock: the session's periodic callback applies
the latest report (:meth:`poll`), and everything a click or a choice asks for (showing another search, picking a
trial) is handed to the session with :class:`~studio.session.SessionDispatcher`, never written from the click's
callback, which Panel runs without the lock. Outside a server the dispatcher runs at once, so :meth:`refresh` reads
and applies immediately. The periodic callback reads the study only while the tab is in front (:attr:`active`).
"""
from __future__ import annotations

import html
import logging
import math
import subprocess
import threading
from pathlib import Path
from typing import Any

import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, NumeralTickFormatter, Range1d, TapTool
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from engine.design.model import ACTIVATIONS
from engine.design.templates import TEMPLATES
from engine.format import first_line, nbytes, si
from engine.search.budget import Budget
from engine.search.report import StudyReport, TrialRecord
from engine.search.space import DEFAULT_ACTIVATIONS, DEFAULT_LEGS, Candidate, LayerSpace
from engine.search.spec import OBJECTIVES, PRUNERS, SearchSpec
from engine.train.data import dataset_specs

from .drafts import draft_paths, read_form_draft, write_form_draft
from .session import SessionDispatcher
from .state import StudioState
from .style import css, styled
from .widgets import IntField, Tick, button, error_html, note_html, section

log = logging.getLogger(__name__)
POLL_MS = 1000
FORM_PARAMS = ("study_name", "dataset", "in_features", "out_features", "kinds", "legs", "activations", "per_bond",
               "max_params", "max_flops", "max_train_memory_mib", "budget_batch", "objective", "trials", "epochs",
               "pruner", "workers")  # autosaved; not the storage URL, which may hold a password
KIND_COLORS = {k: Category10_10[i % 10] for i, k in enumerate(TEMPLATES)}
SCATTER_COLUMNS = ("x", "accuracy", "test", "number", "label", "kind", "color", "marker", "status", "run",
                   "params", "flops", "front")


X_RANGE = (1.0, 1e4)  # the empty plot's size axis (log): explicit ranges, so Bokeh has nothing to guess


def log_span(values: list[float]) -> tuple[float, float]:
    """A log axis range around positive ``values`` (a factor of 1.6 of room each side; one decade for one value)."""
    pos = [v for v in values if v and v > 0]
    if not pos:
        return X_RANGE
    lo, hi = min(pos), max(pos)
    if hi <= lo * 1.01:
        return lo / 3.0, hi * 3.0
    return lo / 1.6, hi * 1.6


def accuracy_span(values: list[float]) -> tuple[float, float]:
    """A linear accuracy range around ``values`` within [0, 1] (6% of the span as room)."""
    fin = [v for v in values if v == v]
    if not fin:
        return 0.0, 1.0
    lo, hi = min(fin), max(fin)
    pad = max((hi - lo) * 0.06, 0.02)
    return max(0.0, lo - pad), min(1.0, hi + pad)


def labelled(label: str, widget: pn.viewable.Viewable) -> pn.Column:
    """A widget that has no label of its own (a checkbox group) under one, in the look of the other fields."""
    head = pn.pane.HTML(f"<div class='tn-label'>{html.escape(label)}</div>", stylesheets=[css("text")],
                        margin=(6, 10, 0, 10))
    return pn.Column(head, widget, margin=0, sizing_mode="stretch_width")


def _classification_sets() -> list[str]:
    return [s.name for s in dataset_specs() if s.task == "classification"]


class SearchView(pn.viewable.Viewer):
    """The Search tab of one studio session (see the module docstring).

    Parts (documented attributes): the form's widgets are made from the parameters below; ``studies`` (which search
    is shown), ``launch_button``, ``stop_button``, ``feedback``, ``counts``, ``figure`` with ``source`` (one row per
    trained trial: ``SCATTER_COLUMNS``) and ``front_source``, ``placeholder`` (shown instead of the figure until a
    trial is trained), ``detail``, ``open_design_button``, ``open_run_button``, ``front_table``; ``report`` is the
    :class:`~engine.search.report.StudyReport` shown.
    """

    state = param.ClassSelector(class_=StudioState, doc="The studio state whose canvas opens a trial's design.")
    active = param.Boolean(default=True, doc="Whether the tab is in front: the study is polled only then.")

    # ------------------------------------------------------------------ the form: space
    study_name = param.String(default="search-1", doc="Name of the search (its Optuna study); launching an "
                              "existing name with the same settings continues it.")
    dataset = param.Selector(default="digits", objects=_classification_sets(),
                             doc="Classification data set the candidates train on (MLP built around the layer).")
    in_features = param.Integer(default=256, bounds=(1, None), doc="In features of the layer.")
    out_features = param.Integer(default=256, bounds=(1, None), doc="Out features of the layer.")
    kinds = param.ListSelector(default=list(TEMPLATES), objects=list(TEMPLATES),
                               doc="Template kinds to try.")
    legs = param.ListSelector(default=list(DEFAULT_LEGS), objects=list(range(2, 9)),
                              doc="Numbers of legs to factorise in/out features into (balanced factors).")
    activations = param.ListSelector(default=list(DEFAULT_ACTIVATIONS), objects=["none", *ACTIVATIONS],
                                     doc="Activations to try on kinds with inner tensors.")
    per_bond = param.Boolean(default=True, doc="Also try one bond dimension per bond (chains and rings).")
    # ------------------------------------------------------------------ budgets
    max_params = param.Integer(default=2000, bounds=(1, None), allow_None=True,
                               doc="Largest layer (parameters); None: no limit.")
    max_flops = param.Number(default=None, bounds=(0, None), allow_None=True,
                             doc="Largest forward FLOPs at the budget batch; None: no limit.")
    max_train_memory_mib = param.Number(default=None, bounds=(0, None), allow_None=True,
                                        doc="Largest training memory (MiB) at the budget batch; None: no limit.")
    budget_batch = param.Integer(default=64, bounds=(1, None), doc="Batch size the FLOPs and memory budgets use.")
    # ------------------------------------------------------------------ objectives and running
    objective = param.Selector(default="params", objects=list(OBJECTIVES),
                               doc="The size to minimise next to validation accuracy.")
    trials = param.Integer(default=40, bounds=(1, None), doc="Candidates to train (budget-pruned ones are free).")
    epochs = param.Integer(default=15, bounds=(1, None), doc="Epochs of each candidate's training.")
    pruner = param.Selector(default="median", objects=list(PRUNERS), doc="Optuna pruner on validation accuracy.")
    workers = param.Integer(default=2, bounds=(1, 64), doc="Worker processes on this machine.")
    storage = param.String(default="", doc="RDB URL (postgresql://...) for workers on several machines; empty: "
                           "the embedded journal in the studio home.")
    # ------------------------------------------------------------------ what is shown, and requests to the app
    shown = param.String(default="", doc="The search the scatter and tables show.")
    selected_trial = param.Integer(default=None, allow_None=True, doc="The trial picked on the scatter.")
    open_run = param.String(default="", doc="A run id the user asked to see on the Train tab (the app watches it).")
    opened_design = param.Integer(default=0, doc="Bumps each time a trial's design was put on the canvas.")
    message = param.String(default="", doc="The last thing that happened, in words.")
    error = param.String(default="", doc="Why the last action failed ('' when it did not).")

    def __init__(self, state: StudioState | None = None, runs_root: str | Path | None = None,
                 home: str | Path | None = None, **params: Any):
        super().__init__(state=state if state is not None else StudioState(home=home), **params)
        self.home = Path(home or self.state.home)
        self.runs_root = Path(runs_root) if runs_root else self.home / "runs"
        self.dispatcher = SessionDispatcher.current()
        self.report: StudyReport | None = None
        self.procs: list[subprocess.Popen] = []
        self._pending: StudyReport | Exception | None = None
        self._reading = False
        self._lock = threading.Lock()
        self._layout: pn.viewable.Viewable | None = None
        self._selecting = False
        self._storage_problem = ""
        self._failures_shown: set[str] = set()

        self.source = ColumnDataSource({c: [] for c in SCATTER_COLUMNS})
        self.front_source = ColumnDataSource({"x": [], "accuracy": []})
        self.figure = self._make_figure()
        self.source.selected.on_change("indices", self._on_tap)

        w = {"sizing_mode": "stretch_width"}
        self.studies = styled(pn.widgets.Select(label="Show search", options=self._study_names(), **w,
                                                css_classes=["tn-search-shown"]))
        self.studies.param.watch(lambda e: self.param.update(shown=e.new or ""), "value")
        self.launch_button = button("▶  Launch search", self.launch, once=True, color="primary", height=38, **w,
                                    css_classes=["tn-search-launch"], key=lambda: (self.spec_key(), len(self.procs)))
        self.stop_button = button("■  Stop", self.stop, color="danger", variant="outline", width=110,
                                  css_classes=["tn-search-stop"])
        self.open_design_button = button("Open design on canvas", self.open_design, disabled=True, **w,
                                         css_classes=["tn-search-open-design"], key=lambda: self.selected_trial)
        self.open_run_button = button("Open run on Train tab", self.request_run, disabled=True, **w,
                                      css_classes=["tn-search-open-run"], dedupe=False)
        self.per_bond_tick = Tick(label="per-bond dimensions too", value=self.per_bond, css_class="tn-search-per-bond")
        self.per_bond_tick.param.watch(lambda e: setattr(self, "per_bond", e.new), "value")
        self.param.watch(lambda e: setattr(self.per_bond_tick, "value", e.new), "per_bond")
        text = [css("text", "notes", "search")]
        self.feedback = pn.pane.HTML(stylesheets=text, **w, margin=(2, 10), css_classes=["tn-search-feedback"])
        self.counts = pn.pane.HTML(stylesheets=text, **w, margin=(4, 10), css_classes=["tn-search-counts-pane"])
        self.front_table = pn.pane.HTML(stylesheets=text, **w, margin=(4, 10))
        self.detail = pn.pane.HTML(stylesheets=text, **w, margin=(4, 10), css_classes=["tn-search-detail-pane"])
        self.placeholder = pn.pane.HTML(
            "<div class='tn-placeholder'>No trained trials yet: each one appears here as a point (validation "
            "accuracy against size) as soon as it has been trained.</div>", stylesheets=text, height=300, **w,
            css_classes=["tn-search-empty"])
        self.plot = pn.pane.Bokeh(self.figure, visible=False, **w, css_classes=["tn-search-plot"])
        self.storage_note = pn.pane.HTML(stylesheets=text, **w, margin=(0, 10), css_classes=["tn-search-storage-note"])
        self.param.watch(lambda *_: self._show_storage_problem(), ["storage"])
        self.param.watch(lambda *_: self._show_feedback(), ["message", "error"])
        self.param.watch(lambda *_: self.request_refresh(), ["shown"])
        self.param.watch(lambda *_: self._show_detail(), ["selected_trial"])
        if self.studies.options:
            self.shown = self._newest() or self.studies.options[-1]
        else:
            self.request_refresh()
        self._show_detail()
        self._restore_form()
        self.param.watch(lambda *_: self._save_form(), list(FORM_PARAMS))

    # ------------------------------------------------------------------ the autosaved form
    def _save_form(self) -> None:
        """Keep the search being defined (not its storage URL, which may hold a password) as the Design tab keeps
        its draft: a reload or a crash before Launch loses none of it."""
        if not getattr(self.state, "autosave", False):
            return
        values = {k: getattr(self, k) for k in FORM_PARAMS}  # JSON has no inf or NaN: such a budget is not kept
        values = {k: v for k, v in values.items() if not (isinstance(v, float) and not math.isfinite(v))}
        try:
            write_form_draft(self.home, "search", getattr(self.state, "draft_id", ""), values)
        except OSError as e:  # a read-only home or a full disk: keep working, say so
            log.warning("could not autosave the search form to %s: %s", draft_paths(self.home, "search")[0], e)
            self.message = f"the search form was not autosaved ({e.strerror or e})"

    def _restore_form(self) -> None:
        """The autosaved form (this tab's own, else the newest of any tab), value by value: a value the form does
        not take (a kind this engine lacks, a negative budget) keeps the default; a file that is not a form is set
        aside and said."""
        if not getattr(self.state, "autosave", False):
            return
        values, note = read_form_draft(self.home, "search", getattr(self.state, "draft_id", ""), "search form")
        if note:
            self.error = note
        for k, v in (values or {}).items():
            if k not in FORM_PARAMS:
                continue
            try:
                self.param.update({k: v})
            except (ValueError, TypeError) as e:  # param's own check of the value: keep the default
                log.info("autosaved search form: %s=%r not taken: %s", k, v, first_line(e))

    # ------------------------------------------------------------------ the spec the form describes
    def url(self, name: str | None = None) -> str:
        """The storage of search ``name`` (default: the one shown): the RDB URL of the form, else the embedded
        journal ``<home>/search/<name>.journal``."""
        from engine.search.storage import check_name

        problem = self.storage_problem()
        if problem:
            raise ValueError(problem)
        if self.storage.strip():
            return self.storage.strip()
        return str(self.home / "search" / f"{check_name(name or self.shown)}.journal")

    def storage_problem(self) -> str:
        """Why the storage field cannot be used ('' when it can): it takes a database URL or nothing. A file path
        is refused: the server would create files wherever the page asked (and, polled each second, at every
        half-typed name)."""
        from engine.search.storage import is_rdb

        text = self.storage.strip()
        if text and not is_rdb(text):
            return (f"the storage must be a database URL such as postgresql://user@host/db (empty: a journal in "
                    f"the studio home), got {text!r}")
        return ""

    def spec_key(self) -> tuple:
        """The form's values (a second click of a double click on Launch acts on the same form: ignored)."""
        return tuple(str(getattr(self, p)) for p in ("study_name", "dataset", "in_features", "out_features", "kinds",
                                                      "legs", "activations", "per_bond", "max_params", "max_flops",
                                                      "max_train_memory_mib", "budget_batch", "objective", "trials",
                                                      "epochs", "pruner", "workers", "storage"))

    def spec(self) -> SearchSpec:
        """The search the form describes (``ValueError`` with the reason when it cannot run)."""
        space = LayerSpace(self.in_features, self.out_features, kinds=tuple(self.kinds),
                           legs=tuple(sorted(self.legs)), activations=tuple(self.activations),
                           per_bond=self.per_bond)
        mem = None if self.max_train_memory_mib is None else self.max_train_memory_mib * 2 ** 20
        budget = Budget(max_params=self.max_params, max_flops=self.max_flops, max_train_memory=mem,
                        batch=self.budget_batch)
        return SearchSpec(name=self.study_name.strip(), space=space, budget=budget, dataset=self.dataset,
                          objective=self.objective, trials=self.trials, epochs=self.epochs, pruner=self.pruner)

    # ------------------------------------------------------------------ actions
    def launch(self) -> list[subprocess.Popen]:
        """Create (or continue) the search and start its workers; returns their processes."""
        from engine.search.study import create_search, start_workers

        try:
            spec = self.spec()
            create_search(spec, self.url(spec.name))
            procs = start_workers(spec.name, self.workers, self.url(spec.name), str(self.runs_root))
        except ValueError as e:  # spec, space, budget, storage: the user's to fix, in one line
            self.param.update(error=f"Not launched: {e}", message="")
            return []
        except Exception as e:  # noqa: BLE001 - the storage or the processes failed: say so, keep the traceback
            log.exception("launching a search failed")
            self.param.update(error=f"Not launched: {e}", message="")
            return []
        for p in procs:  # reap them when they end: no zombies in the studio's process
            p.search_name = spec.name  # type: ignore[attr-defined]  # whose log tells why it failed
            threading.Thread(target=p.wait, daemon=True, name=f"reap-{p.pid}").start()
        self.procs += procs
        self._refresh_studies(select=spec.name)
        self.param.update(error="", message=f"Launched {spec.name}: {len(procs)} worker(s) training "
                                            f"{spec.trials} candidates on {spec.dataset}.")
        self.shown = spec.name
        return procs

    def stop(self) -> bool:
        from engine.search.study import stop_search

        if not self.shown:
            self.param.update(error="No search is shown.", message="")
            return False
        try:
            asked = stop_search(self.shown, self.url())
        except ValueError as e:
            self.param.update(error=str(e), message="")
            return False
        self.param.update(error="", message=f"Asked the workers of {self.shown} to stop." if asked
                          else f"{self.shown} was asked to stop already.")
        return asked

    def trial(self) -> TrialRecord | None:
        if self.report is None or self.selected_trial is None:
            return None
        return self.report.trial(self.selected_trial)

    def open_design(self) -> bool:
        """Put the selected trial's design on the canvas."""
        t = self.trial()
        if t is None or not t.candidate:
            return False
        try:
            design = Candidate.from_dict(t.candidate).build()
        except ValueError as e:
            self.param.update(error=f"Cannot build trial {t.number}'s design: {e}", message="")
            return False
        self.state.replace(design, label=f"search #{t.number}")
        self.param.update(error="", message=f"Opened trial {t.number}'s design on the canvas.",
                          opened_design=self.opened_design + 1)
        return True

    def request_run(self) -> str:
        """Ask the app to show the selected trial's run on the Train tab (sets :attr:`open_run`)."""
        t = self.trial()
        run = (t.run_id if t else None) or ""
        if run:
            self.open_run = ""  # a second click on the same run still notifies
            self.open_run = run
            self.param.update(error="", message=f"Run {run} of trial {t.number}.")
        return run

    # ------------------------------------------------------------------ reading the study
    def _study_names(self) -> list[str]:
        from engine.search.storage import list_studies

        if not self.storage.strip():
            folder = self.home / "search"
            return sorted(p.stem for p in folder.glob("*.journal")) if folder.exists() else []
        if self.storage_problem():  # shown under the field; nothing to read
            return []
        from sqlalchemy.exc import SQLAlchemyError  # optuna's RDB storage runs on SQLAlchemy

        try:
            names = list_studies(self.storage.strip())
        except (ValueError, OSError, SQLAlchemyError) as e:  # StorageError (a ValueError): a server that is down,
            # a bad URL or credentials; the page polls this every second, so each new reason is logged once
            if str(e) != self._storage_problem:
                self._storage_problem = str(e)
                log.warning("cannot list the searches in the storage of the form: %s", e)
            return []
        self._storage_problem = ""
        return names

    def _newest(self) -> str | None:
        """The embedded search whose journal changed last (None with an RDB storage)."""
        if self.storage.strip():
            return None
        files = list((self.home / "search").glob("*.journal"))
        return max(files, key=lambda p: p.stat().st_mtime).stem if files else None

    def _refresh_studies(self, select: str | None = None) -> None:
        names = self._study_names()
        if select and select not in names:
            names.append(select)
        if list(self.studies.options) != names:
            self.studies.options = names
        if select:
            self.studies.value = select

    def _read(self, name: str) -> StudyReport:
        from engine.search.report import study_report

        return study_report(name, self.url(name))

    def refresh(self) -> None:
        """Read the shown search and apply it now: only on the session's thread (a periodic or dispatched
        callback) or outside a server; from a click, use :meth:`request_refresh`."""
        if not self.shown:
            self._apply(None)
            return
        try:
            report: StudyReport | Exception = self._read(self.shown)
        except Exception as e:  # noqa: BLE001 - a search that is not there (yet), a server down, a journal being
            # written: the reason is shown in place of the counts (and logged), and the next poll tries again
            log.info("search %s not read: %s", self.shown, e)
            report = e
        self._apply(report)

    def request_refresh(self) -> None:
        """Read and show the shown search under the session's document lock (at once outside a server)."""
        self.dispatcher(self.refresh)

    def poll(self) -> None:
        """Periodic callback (the session's thread): apply the report a background read produced, start the
        next read. The background thread never touches Bokeh models."""
        with self._lock:
            pending, self._pending = self._pending, None
            start = not self._reading and bool(self.shown)
            if start:
                self._reading = True
        if pending is not None:
            self._apply(pending)
        if start:
            threading.Thread(target=self._read_in_background, args=(self.shown,), daemon=True,
                             name="search-report").start()

    def _read_in_background(self, name: str) -> None:
        try:
            result: StudyReport | Exception = self._read(name)
        except Exception as e:  # noqa: BLE001 - an exception would end this thread unseen: handed over and shown
            # like a report (see refresh), and logged
            log.info("search %s not read: %s", name, e)
            result = e
        with self._lock:
            self._pending = result
            self._reading = False

    # ------------------------------------------------------------------ showing it (session thread only)
    def _apply(self, report: StudyReport | Exception | None) -> None:
        self.applied_on = threading.get_ident()  # tests check that this is the session's thread
        if isinstance(report, Exception):
            self.counts.object = error_html(str(report))
            return
        self.report = report
        if report is None:
            self.source.data = {c: [] for c in SCATTER_COLUMNS}
            self.front_source.data = {"x": [], "accuracy": []}
            self.counts.object = "<div class='tn-search-counts'>No search yet: set the space and budgets, then " \
                                 "Launch.</div>"
            self.front_table.object = ""
            self._show_plot(False)
            return
        use_flops = report.objective == "flops"
        pts = [t for t in report.trials if t.val_accuracy is not None and t.duplicate_of is None
               and t.status in ("complete", "pruned", "running")]
        data: dict[str, list] = {c: [] for c in SCATTER_COLUMNS}
        for t in pts:
            size = t.forward_flops if use_flops else t.params
            if size is None:
                continue
            data["x"].append(size)
            data["accuracy"].append(t.val_accuracy)
            data["test"].append(t.test_accuracy if t.test_accuracy is not None else float("nan"))
            data["number"].append(t.number)
            data["label"].append(t.label or "")
            data["kind"].append(t.kind or "")
            data["color"].append(KIND_COLORS.get(t.kind, "#64748b"))
            data["marker"].append("circle" if t.status == "complete" else "x" if t.status == "pruned"
                                  else "triangle")
            data["status"].append(t.status if t.status != "pruned" else f"pruned ({t.pruned_by})")
            data["run"].append(t.run_id or "")
            data["params"].append(t.params)
            data["flops"].append(t.forward_flops)
            data["front"].append(t.on_front)
        selected = self.selected_trial
        self._selecting = True
        try:
            self.source.data = data
            self.source.selected.indices = [data["number"].index(selected)] if selected in data["number"] else []
        finally:
            self._selecting = False
        front = [(t.forward_flops if use_flops else t.params, t.val_accuracy) for t in report.front]
        self.front_source.data = {"x": [f[0] for f in front], "accuracy": [f[1] for f in front]}
        self._set_range(self.figure.x_range, *log_span(data["x"]))
        self._set_range(self.figure.y_range, *accuracy_span(data["accuracy"]))
        label = "forward FLOPs (log)" if use_flops else "layer parameters (log)"
        if self.figure.xaxis[0].axis_label != label:
            self.figure.xaxis.axis_label = label
        title = f"{report.name}: validation accuracy vs {'FLOPs' if use_flops else 'params'}"
        if self.figure.title.text != title:
            self.figure.title.text = title
        self._show_plot(bool(data["x"]))
        self.counts.object = self._counts_html(report)
        self.front_table.object = self._front_html(report)
        self._show_detail()

    def _show_plot(self, points: bool) -> None:
        """The scatter once a trial has been trained, the placeholder before."""
        self.plot.visible = points
        self.placeholder.visible = not points

    @staticmethod
    def _set_range(rng: Range1d, start: float, end: float) -> None:
        if (rng.start, rng.end) != (start, end):
            rng.update(start=start, end=end)

    @staticmethod
    def _counts_html(rep: StudyReport) -> str:
        c = rep.counts
        state = "stopped" if rep.stopped else "done" if rep.done else f"{c['running']} running"
        return (f"<div class='tn-search-counts'><b>{c['trained']}</b> of {rep.target} trained ({state}) · "
                f"{c['complete']} complete · {c['pruned_accuracy']} pruned on accuracy · "
                f"<b>{c['pruned_budget']}</b> pruned by the budgets (no training) · {c['pruned_invalid']} refused "
                f"by a template · {c['duplicates']} repeats · {c['failed']} failed · {c['waiting']} queued<br>"
                f"<span class='where'>{html.escape(rep.storage)}</span></div>")

    @staticmethod
    def _front_html(rep: StudyReport) -> str:
        if not rep.front:
            return ""
        rows = "".join(f"<tr><td>#{t.number} {html.escape(t.label or '')}</td><td>{t.params:,}</td>"
                       f"<td>{si(t.forward_flops or 0)}</td><td>{t.val_accuracy:.3f}</td>"
                       f"<td>{'' if t.test_accuracy is None else f'{t.test_accuracy:.3f}'}</td></tr>"
                       for t in rep.front)
        best = "".join(f"<tr><td>{html.escape(k)}: #{t.number} {html.escape(t.label or '')}</td><td>{t.params:,}"
                       f"</td><td>{si(t.forward_flops or 0)}</td><td>{t.val_accuracy:.3f}</td>"
                       f"<td>{'' if t.test_accuracy is None else f'{t.test_accuracy:.3f}'}</td></tr>"
                       for k, t in rep.best_per_kind.items())
        head = "<tr><th>design</th><th>params</th><th>fwd FLOPs</th><th>val acc</th><th>test acc</th></tr>"
        return (f"<table class='tn-search-front'><tr><th colspan=5 class='group'>Pareto front</th></tr>{head}{rows}"
                f"<tr><th colspan=5 class='group'>Best of each kind</th></tr>{head}{best}</table>")

    def _show_detail(self) -> None:
        t = self.trial()
        self.open_design_button.disabled = t is None or not t.candidate
        self.open_run_button.disabled = t is None or not t.run_id
        if t is None:
            self.detail.object = "<div class='tn-search-detail'>Click a point to pick its trial.</div>"
            return
        reason = f"<br>{html.escape(t.reason)}" if t.reason else ""
        mem = nbytes(t.train_memory_bytes) if t.train_memory_bytes is not None else "-"
        self.detail.object = (
            f"<div class='tn-search-detail'><b>#{t.number} {html.escape(t.label or '')}</b> · {t.status}"
            f"{' · on the front' if t.on_front else ''}<br>{t.params or 0:,} params · "
            f"{si(t.forward_flops or 0, 'FLOP')} forward · {mem} training memory<br>validation "
            f"{'-' if t.val_accuracy is None else f'{t.val_accuracy:.3f}'} · test "
            f"{'-' if t.test_accuracy is None else f'{t.test_accuracy:.3f}'} · run {t.run_id or '-'}{reason}</div>")

    def _on_tap(self, attr: str, old: list[int], new: list[int]) -> None:
        if self._selecting or not new:
            return
        numbers = self.source.data["number"]
        if new[0] < len(numbers):
            self.selected_trial = numbers[new[0]]

    def select(self, number: int) -> None:
        """Pick trial ``number`` as a click on its point does (the point is highlighted under the session's lock)."""
        def pick() -> None:
            numbers = list(self.source.data["number"])
            if number in numbers:
                self.source.selected.indices = [numbers.index(number)]
            else:
                self.selected_trial = number

        self.dispatcher(pick)

    def _show_feedback(self) -> None:
        if self.error:
            self.feedback.object = error_html(self.error)
        elif self.message:
            self.feedback.object = f"<div class='tn-search-ok'>{html.escape(self.message)}</div>"
        else:
            self.feedback.object = ""

    # ------------------------------------------------------------------ layout
    def _make_figure(self):
        fig = figure(height=400, sizing_mode="stretch_width", x_axis_type="log", y_axis_label="validation accuracy",
                     x_axis_label="layer parameters (log)", tools="pan,wheel_zoom,box_zoom,reset,save",
                     toolbar_location="above", title="validation accuracy vs size",
                     x_range=Range1d(*X_RANGE), y_range=Range1d(0.0, 1.0))
        fig.step("x", "accuracy", source=self.front_source, mode="after", line_color="#0f172a", line_width=1.5,
                 line_dash="dashed")
        fig.scatter("x", "accuracy", source=self.front_source, size=17, fill_alpha=0, line_color="#0f172a",
                    line_width=2, legend_label="Pareto front")
        pts = fig.scatter("x", "accuracy", source=self.source, marker="marker", size=10, color="color",
                          line_color="color", fill_alpha=0.75, legend_field="kind",
                          selection_line_color="#0f172a", selection_line_width=3, nonselection_alpha=0.45)
        fig.add_tools(TapTool(renderers=[pts]))
        fig.add_tools(HoverTool(renderers=[pts], tooltips=[("trial", "#@number @label"), ("status", "@status"),
                                                            ("params", "@params{0,0}"), ("FLOPs", "@flops{0.0a}"),
                                                            ("val acc", "@accuracy{0.000}"),
                                                            ("test acc", "@test{0.000}"), ("run", "@run")]))
        fig.yaxis.formatter = NumeralTickFormatter(format="0.0%")
        fig.legend.location = "bottom_right"
        fig.legend.label_text_font_size = "10.5px"
        fig.title.text_font_size = "12px"
        fig.outline_line_color = None
        fig.xaxis.axis_label_text_font_size = fig.yaxis.axis_label_text_font_size = "11px"
        fig.toolbar.logo = None
        fig.toolbar.autohide = True
        return fig

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is not None:  # one layout (and one periodic callback) per view
            return self._layout
        w = {"sizing_mode": "stretch_width"}
        box = {"inline": True, **w}
        space = section("Space", pn.Column(
            styled(pn.widgets.TextInput.from_param(self.param.study_name, label="Search name", **w,
                                                   css_classes=["tn-search-name"])),
            pn.Row(self._int_field("in_features", "In", width=140),
                   self._int_field("out_features", "Out", width=140), margin=0, **w),
            labelled("Kinds", styled(pn.widgets.CheckBoxGroup.from_param(self.param.kinds, **box,
                                                                         css_classes=["tn-search-kinds"]), "wrap")),
            labelled("Legs", styled(pn.widgets.CheckBoxGroup.from_param(self.param.legs, **box,
                                                                         css_classes=["tn-search-legs"]), "wrap")),
            labelled("Activations", styled(pn.widgets.CheckBoxGroup.from_param(self.param.activations, **box,
                                                                         css_classes=["tn-search-activations"]), "wrap")),
            self.per_bond_tick, margin=(0, 0, 6, 0), **w))
        budgets = section("Budgets (priced before training)", pn.Column(
            styled(pn.widgets.IntInput.from_param(self.param.max_params, label="Max params", **w,
                                                  placeholder="no limit")),
            styled(pn.widgets.FloatInput.from_param(self.param.max_flops, label="Max forward FLOPs", **w,
                                                    placeholder="no limit")),
            styled(pn.widgets.FloatInput.from_param(self.param.max_train_memory_mib, label="Max training memory (MiB)",
                                                    **w, placeholder="no limit")),
            self._int_field("budget_batch", "at batch"),
            margin=(0, 0, 6, 0), **w))
        run = section("Run", pn.Column(
            styled(pn.widgets.Select.from_param(self.param.dataset, label="Data set", **w)),
            pn.Row(self._int_field("trials", "Trials", width=140),
                   self._int_field("epochs", "Epochs", width=140), margin=0, **w),
            pn.Row(self._int_field("workers", "Workers", width=140),
                   styled(pn.widgets.Select.from_param(self.param.objective, label="Size", **w)), margin=0, **w),
            styled(pn.widgets.Select.from_param(self.param.pruner, label="Pruner", **w)),
            styled(pn.widgets.TextInput.from_param(self.param.storage, label="Storage (RDB URL, optional)", **w,
                                                   placeholder="empty: a journal file in the studio home")),
            self.storage_note,
            pn.Row(self.launch_button, self.stop_button, margin=0, **w), self.feedback, margin=(0, 0, 6, 0), **w))
        left = pn.Column(space, budgets, run, width=340, margin=(10, 8, 10, 10), scroll=True,
                         sizing_mode="stretch_height", css_classes=["tn-search-form"])
        chart = section("Front", pn.Column(self.studies, self.counts, self.plot, self.placeholder,
                                           margin=(0, 6, 6, 6), **w))
        pick = section("Trial", pn.Column(self.detail, pn.Row(self.open_design_button, self.open_run_button,
                                                              margin=0, **w), self.front_table,
                                          margin=(0, 0, 6, 0), **w))
        right = pn.Column(chart, pick, sizing_mode="stretch_both", margin=(10, 10, 10, 4), scroll=True)
        self._layout = pn.Row(left, right, sizing_mode="stretch_both", min_height=520, css_classes=["tn-search"])
        if self.dispatcher.served:
            pn.state.add_periodic_callback(self._periodic, period=POLL_MS)
        return self._layout

    def _int_field(self, name: str, label: str, width: int | None = None) -> IntField:
        """A whole-number field bound to parameter ``name`` both ways: a refused entry (empty, ``abc``, out of the
        parameter's bounds) shows why under the field, which returns to the value in force."""
        field = IntField.for_param(self, name, label=label, css_class=f"tn-search-{name.replace('_', '-')}",
                                   width=width)
        self.param.watch(lambda e: setattr(field, "value", e.new), name)
        return field

    def _show_storage_problem(self) -> None:
        problem = self.storage_problem()
        self.storage_note.object = note_html(problem, "storage") if problem else ""

    @param.depends("active", watch=True)
    def _shown_again(self) -> None:
        if self.active:
            self.request_refresh()

    def check_workers(self) -> str | None:
        """Why a worker launched here ended with an error (its log's last ``error:`` line, e.g. a damaged run
        store and its repair command), shown as the form's error once; None when none did. Without this, workers
        that died at once left the page saying "Launched"."""
        from engine.search.study import worker_failures

        for name in dict.fromkeys(getattr(p, "search_name", "") for p in self.procs):
            failed = worker_failures([p for p in self.procs if getattr(p, "search_name", "") == name], name)
            if failed and failed not in self._failures_shown:
                self._failures_shown.add(failed)
                self.param.update(error=failed, message="")
                return failed
        return None

    def _periodic(self) -> None:
        if not self.active:
            return
        try:
            self.check_workers()
            self.poll()
            if self.report is None or not self.report.done:
                self._refresh_studies()
        except Exception:  # noqa: BLE001 - a periodic callback that raises is logged by Bokeh without context:
            # say what failed (the traceback goes to the log) and keep polling
            log.exception("polling the search failed")

    def close(self) -> None:
        """The session ended: hand nothing more to it."""
        self.dispatcher.close()
