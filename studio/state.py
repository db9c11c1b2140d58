"""StudioState: the one place the studio keeps its design, history, selection and cost.

Every view reads this object and changes the design only through its methods; views never do maths. The state is
changed on the browser session's thread only (widget callbacks, and hand-overs through ``dispatch``): background
work (the path refinement, :mod:`studio.refine`) gives its results to ``dispatch``, which the app makes run on the
session's event loop (:class:`studio.session.SessionDispatcher`); outside a server it runs them at once.

Design and draft
    ``design`` is the *draft* shown on the canvas. Structural edits made while drawing (a new tensor that is not
    connected yet, an added open leg whose dim no longer multiplies to ``in_features``, a deleted tensor) are
    always accepted into the draft, so nothing is lost; ``problems`` lists, in words, what the draft still breaks.
    ``valid_design`` is the last draft without problems: ``report`` and ``sweep`` always describe it, so the numbers
    stay at the last valid design while the draft is being fixed (a new design or an opened one starts afresh).

    Field edits (a dimension, a tensor's kind or activation, the leg factorisation, the name) are *strict*: when
    the candidate would add a problem the draft does not already have, the edit is refused, the draft is
    unchanged and ``field_errors[field]`` holds the message to show under that field (field keys: ``"dim:<index>"``,
    ``"kind:<tensor>"``, ``"activation:<tensor>"``, ``"factors:in"``, ``"factors:out"``, ``"name"``,
    ``"schedule"``, ``"connect"``, ``"open_leg"``, ``"open"``, ``"template"``, ``"library"``, ``"tensor"``).
    Every successful edit clears the messages of earlier refusals.

    An edit that would make the layer much larger (more core parameters than the dense layer, more than
    ``CONFIRM_PARAMS`` core parameters, or a W of more than ``CONFIRM_W_ENTRIES`` entries, when the design was
    below that line before) is not applied at once: ``pending`` describes it (``{"field", "message"}``) until
    ``confirm()`` applies it or ``cancel()`` (or any other edit) drops it.

Public parameters (watch them with ``state.param.watch(fn, [...])`` or ``param.depends("state.<name>")``)
    design, valid_design, problems, report (``CostReport`` of valid_design at batch/dtype/schedule), cost_error,
    sweep (params and FLOPs against the bond dimension), batch, dtype, schedule, selection
    (``{"tensors": [...], "indices": [...]}``), field_errors, pending, message (last status line), new_bond_dim,
    home (``<home>/designs`` is the library, ``<home>/draft.json`` the autosaved draft), version (bumps on every
    change of ``design``), layout_version (bumps when the whole design is replaced: canvases re-fit the view),
    refine_s (background search seconds; 0: off), autosave.

Methods (all return quickly; cost is cached by fingerprint in the engine)
    generate(kind, in_features, out_features, bond, activation=None, in_factors=None, out_factors=None,
    mode="replace"|"add", options=None), replace(design, label), new_design(), load_json(text, source),
    add_tensor(kind, position) -> id, connect(a, b, dim=None) -> bond name, attach(tensor, index),
    add_open_leg(tensor, role, dim) -> leg name, delete(tensors=(), indices=(), detach=()), move(key, x, y),
    set_dim(index, dim), set_tensor(tensor, kind=..., activation=...), set_factors(role, dims), set_name(name),
    fit_features(), select(tensors, indices), confirm(), cancel(), undo(), redo(), can_undo, can_redo, to_json(),
    refuse(field, message), note(message), wait_refined(timeout), close()
"""
from __future__ import annotations

import json
import logging
import operator
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import param
from param.parameterized import Comparator

from engine.contract.cost import CostReport, cost_report
from engine.contract.schedule import SCHEDULE_CHOICES
from engine.design import edit
from engine.design.edit import EditError, typical_bond, with_bond
from engine.design.model import ACTIVATIONS, KINDS, Design, DesignError, is_position, parse_json
from engine.design.templates import make_template
from engine.format import clip_quotes, nbytes, si
from engine.home import tnstudio_home

from .drafts import TAB_DRAFT_ID, draft_paths, read_draft, with_unsaved_note, write_draft
from .layout import arrange, overlapping
from .refine import PathRefiner, RefineJob

log = logging.getLogger(__name__)

SWEEP_CHI = (2, 3, 4, 6, 8, 12, 16)
HISTORY_MAX = 200
MERGE_WINDOW_S = 0.8
DTYPES = ("float32", "bfloat16", "float16", "float64")
MAX_UPLOAD_BYTES = 2 * 2 ** 20  # design files opened in the browser (the engine reads files up to 16 MiB)
CONFIRM_PARAMS = 5_000_000  # crossing this many core parameters asks first
CONFIRM_W_ENTRIES = 2 ** 28  # crossing this many entries of W (1 GiB in float32) asks first
SMALL_LAYER = 4096  # layers with fewer core params than this are not asked about being larger than dense
# param compares reports by value: watchers fire only when a number changes
Comparator.equalities.setdefault(CostReport, operator.eq)


def safe_params(design: Design) -> int:
    """Core parameters of a draft (tensors naming an index that does not exist count 0)."""
    return sum(design.tensor_params(t.id) for t in design.tensors if all(i in design.indices for i in t.indices))


def oversize(before: Design | None, after: Design) -> str | None:
    """Why ``after`` should be confirmed before it replaces ``before`` (None: no need)."""
    p, dense = safe_params(after), after.dense_params
    p0 = safe_params(before) if before is not None else 0
    dense0 = before.dense_params if before is not None else 0
    if p > dense and p >= SMALL_LAYER and (before is None or p0 <= dense0):
        return (f"this makes the layer larger than dense: {p:,} core params, {p / max(dense, 1):,.3g}x the "
                f"{dense:,} of a dense {after.in_features:,} × {after.out_features:,} layer")
    if p > CONFIRM_PARAMS >= p0:
        return f"this gives {p:,} core params ({si(p)}), more than {si(CONFIRM_PARAMS)}"
    if dense > CONFIRM_W_ENTRIES >= dense0:
        return (f"W becomes {after.in_features:,} × {after.out_features:,} = {si(dense)} entries "
                f"({nbytes(4 * dense)} in float32)")
    return None


class StudioState(param.Parameterized):
    """Current design, undo/redo history, selection and live cost of one studio session (see module doc)."""

    design = param.ClassSelector(class_=Design, doc="The draft shown on the canvas (read-only: edit through methods).")
    valid_design = param.ClassSelector(class_=Design, allow_None=True, doc="Last draft without problems.")
    problems = param.List(default=[], doc="The draft's problems, in words (empty when valid).")
    report = param.ClassSelector(class_=CostReport, allow_None=True, doc="cost_report of valid_design.")
    cost_error = param.String(default="", doc="Why the cost model refused valid_design ('' when fine).")
    sweep = param.Dict(default={}, doc="params and FLOPs against the bond dimension for valid_design.")
    batch = param.Integer(default=64, bounds=(1, None), doc="Batch size of the cost report.")
    dtype = param.Selector(default="float32", objects=list(DTYPES), doc="Data type of the cost report.")
    schedule = param.Selector(default="auto", objects=list(SCHEDULE_CHOICES), doc="Schedule of the cost report.")
    image = param.Integer(default=32, bounds=(1, 4096), doc="Input image side (H = W) of conv2d designs' cost.")
    memory_budget = param.Integer(default=None, allow_None=True, bounds=(1, 1 << 60),
                                  doc="Bytes a training step may take (linear designs: sliced generation); None: none.")
    selection = param.Dict(default={"tensors": [], "indices": []}, doc="Selected tensor ids and index names.")
    field_errors = param.Dict(default={}, doc="Field key -> why the last edit of that field was refused.")
    pending = param.Dict(default={}, doc="An edit waiting for confirmation: {'field', 'message'} (empty: none).")
    message = param.String(default="", doc="The last status line: what happened, in words.")
    new_bond_dim = param.Integer(default=4, bounds=(1, 4096), doc="Dimension of bonds drawn on the canvas.")
    home = param.String(default="", doc="The studio home folder.")
    version = param.Integer(default=0, doc="Bumps on every change of design.")
    layout_version = param.Integer(default=0, doc="Bumps when the whole design is replaced.")
    refine_s = param.Number(default=2.0, bounds=(0, None), doc="Background path-search seconds (0: off).")
    autosave = param.Boolean(default=True, doc="Keep the draft in <home>/draft.json and restore it on start.")
    draft_id = param.String(default="", regex=f"^({TAB_DRAFT_ID.pattern})?$", doc="A browser tab's draft id (its URL's "
                            "?draft=): the tab's own draft is kept too and restored first, so a tab reloaded "
                            "after another tab edited comes back to its own design.")

    def __init__(self, design: Design | None = None, home: str | Path | None = None,
                 dispatch: Callable[[Callable[[], Any]], None] | None = None, **params: Any):
        params.setdefault("home", str(Path(home).expanduser() if home else tnstudio_home()))
        super().__init__(**params)
        #: runs a callable on the thread that owns this state (the browser session's); default: at once
        self.dispatch: Callable[[Callable[[], Any]], None] = dispatch or (lambda fn: fn())
        self.refiner = PathRefiner(self._refined)
        restored, note = (None, None) if design is not None or not self.autosave else self._read_draft()
        first = restored or design or arrange(make_template("mera", 256, 256, 4))
        self._history: list[_Step] = [_Step(first.copy().layout(), "start", replaced=True)]
        self._pos = 0
        self._last_merge: tuple[str, float] | None = None
        self._pending: tuple | Callable[[], bool] | None = None  # an edit, or an action (ask())
        self._set_draft(self._history[0].design.copy(), "restored your unsaved draft" if restored else note, save=False)
        self.param.watch(lambda *_: self._update_cost(), ["batch", "dtype", "schedule", "image", "memory_budget"])

    # ------------------------------------------------------------------ history
    @property
    def can_undo(self) -> bool:
        return self._pos > 0

    @property
    def can_redo(self) -> bool:
        return self._pos < len(self._history) - 1

    @property
    def history_labels(self) -> list[str]:
        return [step.label for step in self._history[: self._pos + 1]]

    def undo(self) -> bool:
        if not self.can_undo:
            return False
        self._pos -= 1
        self._clear_notes()
        undone = self._history[self._pos + 1]
        # undoing a whole-design replacement (Generate, open, new) brings back another drawing: fit the view to it
        self._set_draft(self._history[self._pos].design.copy(), f"undid {undone.label}", layout=undone.replaced)
        return True

    def redo(self) -> bool:
        if not self.can_redo:
            return False
        self._pos += 1
        self._clear_notes()
        redone = self._history[self._pos]
        self._set_draft(redone.design.copy(), f"redid {redone.label}", layout=redone.replaced)
        return True

    def _push(self, design: Design, label: str, merge: str | None, replaced: bool = False) -> None:
        now = time.monotonic()
        if merge and self._last_merge and self._last_merge[0] == merge and now - self._last_merge[1] < MERGE_WINDOW_S \
                and self._pos > 0:
            # one undo step for a burst (multi-delete)
            self._history[self._pos] = self._history[self._pos]._replace(design=design.copy())
        else:
            del self._history[self._pos + 1:]
            self._history.append(_Step(design.copy(), label, replaced))
            if len(self._history) > HISTORY_MAX:
                self._history.pop(0)
            self._pos = len(self._history) - 1
        self._last_merge = (merge, now) if merge else None

    # ------------------------------------------------------------------ committing
    def _set_draft(self, design: Design, message: str | None = None, layout: bool = False, fresh: bool = False,
                   save: bool = True) -> None:
        """Make ``design`` the draft and update everything that follows from it, as one batch of changes."""
        probs = design.problems()
        sel = _selection_in(design, self.selection.get("tensors", []), self.selection.get("indices", []))
        updates: dict[str, Any] = {"design": design, "problems": probs, "selection": sel}
        if message is not None:
            updates["message"] = message
        if layout:
            updates["layout_version"] = self.layout_version + 1
        if fresh and probs:  # a new design that is not valid yet: no numbers of another design
            updates.update(valid_design=None, report=None, sweep={}, cost_error="")
        with param.parameterized.batch_call_watchers(self):
            self.param.update(**updates)
            if not probs:
                self._update_cost()
            self.version += 1
        if save:
            self._save_draft()

    def _commit(self, candidate: Design, label: str, strict: bool = False, field: str | None = None,
                merge: str | None = None, layout: bool = False, fresh: bool = False, confirm: bool = True) -> bool:
        """Make ``candidate`` the draft; with ``strict``, refuse it when it adds a problem (message at ``field``);
        with ``confirm``, hold an edit that makes the layer much larger until :meth:`confirm`."""
        if strict:
            before = set(self.problems)
            new = [p for p in candidate.problems() if p not in before]
            if new:
                self.refuse(field or "edit", "; ".join(new))
                return False
        if confirm:
            why = oversize(self.design, candidate)
            if why:
                self._pending = (candidate, label, strict, field, merge, layout, fresh)
                self.param.update(pending={"field": field or "edit", "message": why},
                                  field_errors={}, message=f"confirm: {why}")
                return False
        self._clear_notes()
        self._push(candidate, label, merge, replaced=layout)
        self._set_draft(candidate.copy(), label, layout=layout, fresh=fresh)
        return True

    def ask(self, field: str, question: str, action: Callable[[], bool]) -> bool:
        """Hold ``action`` (not an edit: e.g. a save that would replace a file) until :meth:`confirm` runs it or
        :meth:`cancel` (or an edit) drops it; the question shows under ``field``. Returns False (nothing done yet)."""
        self._pending = action
        self.param.update(pending={"field": field, "message": question}, field_errors={},
                          message=f"confirm: {question}")
        return False

    def confirm(self) -> bool:
        """Apply the edit (or run the action) waiting for confirmation."""
        if self._pending is None:
            return False
        if callable(self._pending):
            action, self._pending = self._pending, None
            self.param.update(pending={}, message="")
            return bool(action())
        candidate, label, _strict, _field, merge, layout, fresh = self._pending
        return self._commit(candidate, label, merge=merge, layout=layout, fresh=fresh, confirm=False)

    def cancel(self) -> None:
        """Drop the edit waiting for confirmation."""
        if self._pending is not None:
            self._pending = None
            self.param.update(pending={}, message="cancelled")

    def refuse(self, field: str, message: str) -> None:
        """Show why an edit of ``field`` was refused (under the field, and in the status line)."""
        self._pending = None
        message = clip_quotes(message)  # what was typed can be kilobytes: the reason stays readable
        self.param.update(field_errors={**self.field_errors, field: message}, pending={},
                          message=f"refused: {message}")

    def note(self, message: str) -> None:
        """A status line about something that is not an edit (a save, a download)."""
        self.message = message

    def _clear_notes(self) -> None:
        self._pending = None
        if self.field_errors or self.pending:
            self.param.update(field_errors={}, pending={})

    def _clear_error(self, field: str) -> None:
        if field in self.field_errors:
            self.field_errors = {k: v for k, v in self.field_errors.items() if k != field}

    def _update_cost(self) -> None:
        """Cost report and bond sweep of the draft when it is valid; otherwise keep the last ones."""
        if self.problems:
            return
        d = self.design
        try:
            rep = self._cost(d)
        except (DesignError, ValueError) as e:
            self.param.update(valid_design=d, cost_error=str(e))
            if self.schedule != "auto":
                self.field_errors = {**self.field_errors, "schedule": str(e)}
            if self._budgeted(d) and "within" in str(e):
                self.field_errors = {**self.field_errors, "memory_budget": str(e)}
            return
        self._clear_error("schedule")
        self._clear_error("memory_budget")
        self.param.update(valid_design=d, report=rep, cost_error="", sweep=self._sweep(d))
        if not self._budgeted(d):  # a budget's plan is chosen by memory; the background search does not know it
            self.refiner.request(RefineJob(d, self.batch, self.dtype, self.schedule, float(self.refine_s)))

    def _budgeted(self, design: Design) -> bool:
        """Whether the report of ``design`` is asked under a memory budget (linear designs only)."""
        return self.memory_budget is not None and design.conv is None

    def _cost(self, design: Design) -> CostReport:
        """The cost report at the state's settings (a conv2d design: at ``image`` x ``image`` inputs)."""
        if design.conv is not None:
            from engine.contract.conv import conv_cost_report

            return conv_cost_report(design, batch=self.batch, image=self.image, dtype=self.dtype,
                                    schedule=self.schedule)
        return cost_report(design, batch=self.batch, dtype=self.dtype, schedule=self.schedule,
                           memory_budget=self.memory_budget)

    # ------------------------------------------------------------------ background refinement
    @property
    def refining(self) -> bool:
        """Whether a background path search is running or queued."""
        return self.refiner.busy

    def wait_refined(self, timeout: float | None = None) -> bool:
        """Wait until no background search runs (``timeout`` seconds at most); True when idle."""
        return self.refiner.wait(timeout)

    def _refined(self, job: RefineJob, rep: CostReport) -> None:
        """Called on the refiner's thread: hand the result over to the state's own thread."""
        self.dispatch(lambda: self._apply_refinement(job.design, job.settings, rep))

    def _apply_refinement(self, design: Design, settings: tuple, rep: CostReport) -> None:
        """Show ``rep`` if ``design`` and the cost settings are still current and it is not worse."""
        if self.valid_design is not design or self.problems or settings != (self.batch, self.dtype, self.schedule):
            return  # the design changed meanwhile: its own refinement is queued
        if self._budgeted(design):
            return  # a memory budget was set meanwhile: its plan stands
        old = self.report
        if old is not None:
            new, was = (rep.forward_flops, rep.generate_flops), (old.forward_flops, old.generate_flops)
            if any(n > w for n, w in zip(new, was)) or new == was:
                return  # nothing better found: leave the report (and the views) alone
        self.param.update(report=rep, sweep=self._sweep(design))

    def close(self) -> None:
        """The session ended: stop background work."""
        self.refiner.close()

    def _sweep(self, design: Design) -> dict[str, Any]:
        chis, params, fwd, gen = [], [], [], []
        if typical_bond(design) is None:
            return {"chi": [], "params": [], "forward_flops": [], "generate_flops": [], "current": None}
        for chi in SWEEP_CHI:
            try:
                r = self._cost(with_bond(design, chi))
            except (DesignError, ValueError):
                continue
            chis.append(chi)
            params.append(r.params)
            fwd.append(r.forward_flops)
            gen.append(r.generate_flops)
        return {"chi": chis, "params": params, "forward_flops": fwd, "generate_flops": gen,
                "current": typical_bond(design)}

    # ------------------------------------------------------------------ the autosaved draft
    def _save_draft(self) -> None:
        if not self.autosave:
            return
        text = json.dumps({"saved": time.time(), "design": self.design.to_dict()})
        try:
            # every session of a served studio autosaves to the same home: a temporary file of its own each time
            write_draft(text, *draft_paths(self.home, "design", self.draft_id))
        except OSError as e:  # a read-only home or a full disk: keep working (the last draft stays whole), say so
            log.warning("could not autosave the draft to %s: %s", draft_paths(self.home, "design")[0], e)
            self.message = with_unsaved_note(self.message, e, "download or save the design to keep it")

    def _read_draft(self) -> tuple[Design | None, str | None]:
        """The autosaved draft (restored with whatever problems it has) and a note: the tab's own draft when it has
        one, else the newest of any tab; a draft that cannot be read or drawn is set aside as
        ``<name>.damaged.json`` (never overwritten by the next autosave) and the note says so."""
        def parse(raw: bytes) -> Design:
            data = parse_json(raw)  # bounded size and nesting, no NaN, UTF-8
            draft = Design.from_dict(data["design"], validate=False)
            draft.copy().layout()  # what starting with it does first
            return draft

        return read_draft(parse, *draft_paths(self.home, "design", self.draft_id))

    # ------------------------------------------------------------------ whole designs
    def replace(self, design: Design, label: str = "open") -> bool:
        """Make ``design`` the draft (laid out when it has no positions or its boxes overlap) and re-fit the canvas."""
        d = design.copy().layout()
        if overlapping(d):
            d = arrange(d)
        self.selection = {"tensors": [], "indices": []}
        return self._commit(d, f"{label} {d.name}", layout=True, fresh=True)

    def new_design(self) -> bool:
        """An empty canvas with the current layer size: draw tensors, then connect them and give them legs."""
        d = Design(name="untitled", in_features=self.design.in_features, out_features=self.design.out_features,
                   indices={}, tensors=[], conv=self.design.conv)
        return self.replace(d, "new design")

    def generate(self, kind: str, in_features: int, out_features: int, bond: int | Sequence[int] = 4,
                 activation: str | None = None, in_factors: Sequence[int] | None = None,
                 out_factors: Sequence[int] | None = None, mode: str = "replace",
                 options: dict[str, Any] | None = None, conv: dict[str, Any] | None = None) -> bool:
        """Generate a template (``options``: its extra options, e.g. ``{"lateral": "all"}``); ``mode="add"`` adds it
        next to the current draft instead of replacing it. ``conv`` (``{"kernel_size", "stride", "padding",
        "dilation"}``) makes a conv2d target: ``in_features`` / ``out_features`` are then the channels."""
        try:
            if conv is not None:
                from engine.design.conv import make_conv_template

                d = make_conv_template(kind, in_features, out_features, conv.get("kernel_size", 3), bond, activation,
                                       in_factors, out_factors, stride=conv.get("stride", 1),
                                       padding=conv.get("padding", 0), dilation=conv.get("dilation", 1),
                                       **(options or {}))
            else:
                d = make_template(kind, in_features, out_features, bond, activation, in_factors, out_factors,
                                  **(options or {}))
        except (ValueError, DesignError) as e:
            self.refuse("template", str(e))
            return False
        d = arrange(d)
        if mode == "add":
            merged = edit.merge_designs(self.design, d)
            return self._commit(merged, f"add {d.name}", field="template", layout=True)
        self.selection = {"tensors": [], "indices": []}
        return self._commit(d, f"template {d.name}", field="template", layout=True, fresh=True)

    def load_json(self, text: str | bytes, source: str = "file") -> bool:
        """Open a design from JSON text (at most ``MAX_UPLOAD_BYTES``); an invalid file is refused with a readable
        message at ``open``."""
        if len(text) > MAX_UPLOAD_BYTES:
            self.refuse("open", f"{source} is {len(text):,} bytes: designs opened here may have at most "
                                f"{MAX_UPLOAD_BYTES // 2 ** 20} MiB")
            return False
        try:
            d = Design.from_json(text)
        except DesignError as e:
            self.refuse("open", f"{source}: " + "; ".join(e.problems))
            return False
        return self.replace(d, "opened")

    def to_json(self) -> str:
        return self.design.to_json()

    # ------------------------------------------------------------------ structural edits (draft)
    def _edit(self, field: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a pure edit of :mod:`engine.design.edit` on the draft; a refused edit is shown at ``field``."""
        try:
            return fn(self.design, *args, **kwargs)
        except EditError as e:
            self.refuse(field, str(e))
            return None

    def add_tensor(self, kind: str = "core", position: tuple[float, float] | None = None) -> str | None:
        """A new unconnected tensor at ``position`` (default: a free spot inside the drawing); returns its id."""
        out = self._edit("tensor", edit.add_tensor, kind, position)
        if out is None:
            return None
        d, tid = out
        self._commit(d, f"add tensor {tid}")
        self.selection = {"tensors": [tid], "indices": []}
        return tid

    def connect(self, a: str, b: str, dim: int | None = None) -> str | None:
        """Join tensors ``a`` and ``b`` with a new bond (dimension ``dim`` or ``new_bond_dim``)."""
        out = self._edit("connect", edit.connect, a, b, int(dim or self.new_bond_dim))
        if out is None:
            return None
        d, name = out
        return name if self._commit(d, f"connect {a}-{b}", field="connect") else None

    def attach(self, tensor: str, index: str) -> bool:
        """Add an existing hyperedge (or an unattached leg) to ``tensor``."""
        d = self._edit("connect", edit.attach, tensor, index)
        return d is not None and self._commit(d, f"attach {index} to {tensor}", field="connect")

    def add_open_leg(self, tensor: str, role: str, dim: Any) -> str | None:
        """Give ``tensor`` a new open leg (role ``in``/``out``, next axis); the layer shape is not changed."""
        try:
            dim = edit.parse_dim(dim, f"the new {role} leg")
        except EditError as e:
            self.refuse("open_leg", str(e))
            return None
        out = self._edit("open_leg", edit.add_open_leg, tensor, role, dim)
        if out is None:
            return None
        d, name = out
        return name if self._commit(d, f"add {role} leg {name} to {tensor}", field="open_leg") else None

    def delete(self, tensors: Iterable[str] = (), indices: Iterable[str] = (),
               detach: Iterable[tuple[str, str]] = (), merge: str | None = None) -> bool:
        """Delete tensors (with their open legs and bonds), indices (from every tensor) and single attachments."""
        tensors, indices, detach = set(tensors), set(indices), list(detach)
        if not any(t.id in tensors for t in self.design.tensors) and not indices and not detach:
            return False
        d = edit.delete(self.design, tensors, indices, detach)
        what = ", ".join(sorted(tensors | indices)) or ", ".join(f"{i} from {t}" for t, i in detach)
        return self._commit(d, f"delete {what}", merge=merge)

    def move(self, key: str, x: float, y: float) -> None:
        """Record a canvas position: a tensor id, or ``"L:<leg>"`` / ``"H:<hyperedge>"`` (kept in meta)."""
        pos = (round(float(x), 1), round(float(y), 1))
        kind, _, name = key.partition(":")
        known = name in self.design.indices if kind in ("L", "H") else any(t.id == key for t in self.design.tensors)
        if not known or not is_position(pos):
            return  # a late event from a canvas that showed another design, or a position the format cannot keep
        for d in (self.design, self._history[self._pos].design):
            if any(t.id == key for t in d.tensors):
                d.tensor(key).position = pos
            else:
                d.meta.setdefault("canvas", {})[key] = list(pos)
        self._save_draft()

    # ------------------------------------------------------------------ field edits (strict)
    def set_dim(self, index: str, dim: Any) -> bool:
        field = f"dim:{index}"
        d = self._edit(field, edit.set_dim, index, dim)
        return d is not None and self._commit(d, f"{index} = {d.indices[index].dim}", strict=True, field=field)

    def set_tensor(self, tensor: str, **changes: Any) -> bool:
        """Change a tensor's ``kind`` and/or ``activation`` (``None`` or ``"none"`` removes it)."""
        field = f"{list(changes)[-1]}:{tensor}" if changes else "edit"
        d = self._edit(field, edit.set_tensor, tensor, **changes)
        return d is not None and self._commit(
            d, f"{tensor}: " + ", ".join(f"{k}={v}" for k, v in changes.items()), strict=True, field=field)

    def set_factors(self, role: str, dims: Sequence[int]) -> bool:
        """Set the dims of the ``role`` legs (in axis order) and the layer size to their product."""
        field = f"factors:{role}"
        d = self._edit(field, edit.set_factors, role, dims)
        return d is not None and self._commit(d, f"{role} legs {' x '.join(map(str, dims))}", strict=True,
                                              field=field)

    def fit_features(self) -> bool:
        """Set in/out features to the products of the current leg dims (after adding or deleting open legs)."""
        d = edit.fit_features(self.design)
        return self._commit(d, f"layer {d.in_features} -> {d.out_features}", field="fit")

    def set_name(self, name: str) -> bool:
        d = self._edit("name", edit.rename, name)
        if d is None:
            return False
        if d.name == self.design.name:
            self._clear_error("name")
            return True
        return self._commit(d, f"rename to {d.name}", strict=True, field="name")

    def select(self, tensors: Iterable[str] = (), indices: Iterable[str] = ()) -> None:
        """Select tensors and indices of the current design; ids it does not have are dropped (a canvas event
        can still name the nodes of the design it showed before a new one replaced it)."""
        sel = _selection_in(self.design, tensors, indices)
        if sel == self.selection:
            return
        updates: dict[str, Any] = {"selection": sel}
        # old refusals go; a question goes only when the inspector stops showing its field: one asked elsewhere
        # (the gallery, the palette, files) stays, so a selection (or a late selection event from the page) never
        # cancels, say, a Generate waiting to be confirmed
        keep = bool(self.pending) and not _inspector_field(self.pending.get("field", ""))
        if self.message.startswith("refused:") or (self.message.startswith("confirm:") and not keep):
            updates["message"] = ""
        if self.field_errors:
            updates["field_errors"] = {}
        if self.pending and not keep:
            self._pending = None
            updates["pending"] = {}
        self.param.update(**updates)


class _Step(NamedTuple):
    """One entry of the undo history: the design after it, what it did, and whether it replaced the whole design
    (Generate, open, new: undoing or redoing it fits the view to the drawing it brings)."""

    design: Design
    label: str
    replaced: bool = False


INSPECTOR_FIELDS = ("dim:", "kind:", "activation:", "factors:", "name", "open_leg", "fit")


def _inspector_field(field: str) -> bool:
    """Whether ``field`` is shown by the inspector (which shows other fields when the selection changes)."""
    return field.startswith(INSPECTOR_FIELDS)


def _selection_in(design: Design, tensors: Iterable[str], indices: Iterable[str]) -> dict[str, list[str]]:
    """The selection ``{"tensors": [...], "indices": [...]}`` of those of ``tensors`` and ``indices`` that
    ``design`` has, each once, in the given order."""
    known = {t.id for t in design.tensors}
    return {"tensors": [t for t in dict.fromkeys(tensors) if t in known],
            "indices": [i for i in dict.fromkeys(indices) if i in design.indices]}


__all__ = ["StudioState", "ACTIVATIONS", "KINDS", "DTYPES", "SCHEDULE_CHOICES", "SWEEP_CHI", "MAX_UPLOAD_BYTES",
           "CONFIRM_PARAMS", "CONFIRM_W_ENTRIES", "oversize", "safe_params"]
