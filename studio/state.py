"""StudioState: the one place the studio keeps its design, history, selection and cost.

Every view reads this object and changes the design only through its methods; views never do maths.

Design and draft
    ``design`` is the *draft* shown on the canvas. Structural edits made while drawing (a new tensor that is not
    connected yet, an added open leg whose dim no longer multiplies to ``in_features``, a deleted tensor) are
    always accepted into the draft, so nothing is lost; ``problems`` lists, in words, what the draft still breaks.
    ``valid_design`` is the last draft without problems: ``report`` and ``sweep`` always describe it, so the numbers
    stay at the last valid design while the draft is being fixed.

    Field edits (a dimension, a tensor's kind or activation, the leg factorisation) are *strict*: when the
    candidate would add a problem the draft does not already have, the edit is refused, the draft is unchanged and
    ``field_errors[field]`` holds the message to show next to that field (field keys: ``"dim:<index>"``,
    ``"kind:<tensor>"``, ``"activation:<tensor>"``, ``"factors:in"``, ``"factors:out"``, ``"name"``,
    ``"schedule"``, ``"connect"``, ``"open"``, ``"template"``, ``"library"``).

Public parameters (watch them with ``state.param.watch(fn, [...])``)
    design           engine ``Design``: the current draft (treat as read-only; edit through methods)
    valid_design     last ``Design`` without problems, or None
    problems         list[str]: the draft's problems (empty when valid)
    report           ``CostReport`` (engine.contract.cost) of ``valid_design`` at ``batch``/``dtype``/``schedule``
    cost_error       str: why the cost model refused the current valid design ('' when fine)
    sweep            {"chi": [...], "params": [...], "forward_flops": [...], "generate_flops": [...], "current": chi}
    batch, dtype, schedule   cost settings (schedule: auto, materialise or stream)
    selection        {"tensors": [ids], "indices": [names]}
    field_errors     {field key: message} for refused edits
    message          last status line (what happened, in words)
    new_bond_dim     dimension given to bonds drawn on the canvas
    home             the studio home folder (``<home>/designs`` is the library)
    version          bumps on every change of ``design`` (edits, undo/redo, open)
    refine_s         seconds of background path search (cotengra's hyper-optimiser) after each change; 0: off.
                     The live report is instant; when the search ends and the design is unchanged, ``report`` is
                     recomputed from its (never worse) paths, which later bond changes reuse. ``refining`` tells
                     whether a search is running; ``wait_refined(timeout)`` waits for it (tests, scripts).
    layout_version   bumps when the whole design is replaced (template, open): canvases re-fit the view

Methods (all return quickly; cost is cached by fingerprint in the engine)
    generate(kind, in_features, out_features, bond, activation=None, in_factors=None, out_factors=None,
             mode="replace"|"add"), replace(design, label), load_json(text)
    add_tensor(kind="core", position=None) -> id, connect(a, b, dim=None) -> bond name, attach(tensor, index),
    add_open_leg(tensor, role, dim) -> leg name, delete(tensors=(), indices=(), detach=()), move(key, x, y)
    set_dim(index, dim), set_tensor(tensor, kind=..., activation=...), set_factors(role, dims), set_name(name),
    fit_features(), select(tensors, indices), undo(), redo(), can_undo, can_redo, to_json()
"""
from __future__ import annotations

import operator
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import param
from param.parameterized import Comparator

from engine.contract.cost import CostReport, cost_report
from engine.contract.program import compile_program
from engine.contract.schedule import SCHEDULE_CHOICES, can_stream
from engine.design import edit
from engine.design.edit import EditError, typical_bond, with_bond
from engine.design.model import ACTIVATIONS, KINDS, Design, DesignError
from engine.design.templates import make_template

from engine.home import tnstudio_home

SWEEP_CHI = (2, 3, 4, 6, 8, 12, 16)
HISTORY_MAX = 200
MERGE_WINDOW_S = 0.8
REFINE_QUIET_S = 0.3  # the background path search starts once the design has not changed for this long
DTYPES = ("float32", "bfloat16", "float16", "float64")
# param compares reports by value (as it compared the report dicts): watchers fire only when a number changes
Comparator.equalities.setdefault(CostReport, operator.eq)


class StudioState(param.Parameterized):
    """Current design, undo/redo history, selection and live cost of one studio session (see module doc)."""

    design = param.ClassSelector(class_=Design, doc="The draft shown on the canvas.")
    valid_design = param.ClassSelector(class_=Design, allow_None=True, doc="Last draft without problems.")
    problems = param.List(default=[], doc="The draft's problems, in words.")
    report = param.ClassSelector(class_=CostReport, allow_None=True, doc="cost_report of valid_design.")
    cost_error = param.String(default="", doc="Why the cost model refused valid_design.")
    sweep = param.Dict(default={}, doc="params and FLOPs against bond dimension for valid_design.")
    batch = param.Integer(default=64, bounds=(1, None))
    dtype = param.Selector(default="float32", objects=list(DTYPES))
    schedule = param.Selector(default="auto", objects=list(SCHEDULE_CHOICES))
    selection = param.Dict(default={"tensors": [], "indices": []})
    field_errors = param.Dict(default={})
    message = param.String(default="")
    new_bond_dim = param.Integer(default=4, bounds=(1, 4096))
    home = param.String(default="")
    version = param.Integer(default=0)
    layout_version = param.Integer(default=0)
    refine_s = param.Number(default=2.0, bounds=(0, None), doc="Background path-search seconds (0: off).")

    def __init__(self, design: Design | None = None, home: str | Path | None = None, **params: Any):
        params.setdefault("home", str(Path(home).expanduser() if home else tnstudio_home()))
        super().__init__(**params)
        first = design or make_template("mera", 256, 256, 4)
        self._history: list[Design] = [first.copy().layout()]
        self._labels: list[str] = ["start"]
        self._pos = 0
        self._last_merge: tuple[str, float] | None = None
        self._refine_lock = threading.RLock()  # guards the refinement queue and report updates across threads
        self._refine_job: tuple | None = None  # the newest design waiting for a background search
        self._refine_thread: threading.Thread | None = None
        self._refine_stamp = 0.0  # when the newest job was queued
        self._set_draft(self._history[0].copy())
        self.param.watch(lambda *_: self._update_cost(force=True), ["batch", "dtype", "schedule"])

    # ------------------------------------------------------------------ history
    @property
    def can_undo(self) -> bool:
        return self._pos > 0

    @property
    def can_redo(self) -> bool:
        return self._pos < len(self._history) - 1

    @property
    def history_labels(self) -> list[str]:
        return list(self._labels[: self._pos + 1])

    def undo(self) -> bool:
        if not self.can_undo:
            return False
        self._pos -= 1
        self._set_draft(self._history[self._pos].copy(), f"undid {self._labels[self._pos + 1]}")
        return True

    def redo(self) -> bool:
        if not self.can_redo:
            return False
        self._pos += 1
        self._set_draft(self._history[self._pos].copy(), f"redid {self._labels[self._pos]}")
        return True

    def _push(self, design: Design, label: str, merge: str | None) -> None:
        now = time.monotonic()
        if merge and self._last_merge and self._last_merge[0] == merge and now - self._last_merge[1] < MERGE_WINDOW_S \
                and self._pos > 0:
            self._history[self._pos] = design.copy()  # one undo step for a burst (multi-delete)
        else:
            del self._history[self._pos + 1:]
            del self._labels[self._pos + 1:]
            self._history.append(design.copy())
            self._labels.append(label)
            if len(self._history) > HISTORY_MAX:
                self._history.pop(0)
                self._labels.pop(0)
            self._pos = len(self._history) - 1
        self._last_merge = (merge, now) if merge else None

    # ------------------------------------------------------------------ committing
    def _set_draft(self, design: Design, message: str | None = None, layout: bool = False) -> None:
        probs = design.problems()
        sel = {"tensors": [t for t in self.selection.get("tensors", []) if any(x.id == t for x in design.tensors)],
               "indices": [i for i in self.selection.get("indices", []) if i in design.indices]}
        updates: dict[str, Any] = {"design": design, "problems": probs, "selection": sel}
        if message is not None:
            updates["message"] = message
        if layout:
            updates["layout_version"] = self.layout_version + 1
        with param.parameterized.batch_call_watchers(self):
            self.param.update(**updates)
            if not probs:
                self._update_cost()
            self.version += 1

    def _commit(self, candidate: Design, label: str, strict: bool = False, field: str | None = None,
                merge: str | None = None, layout: bool = False) -> bool:
        """Make ``candidate`` the draft; with ``strict``, refuse it when it adds a problem (message at ``field``)."""
        if strict:
            before = set(self.problems)
            new = [p for p in candidate.problems() if p not in before]
            if new:
                self._refuse(field or "edit", "; ".join(new))
                return False
        if field:
            self._clear_error(field)
        self._push(candidate, label, merge)
        self._set_draft(candidate.copy(), label, layout=layout)
        return True

    def _refuse(self, field: str, message: str) -> None:
        self.field_errors = {**self.field_errors, field: message}
        self.message = f"refused: {message}"

    def _clear_error(self, field: str) -> None:
        if field in self.field_errors:
            self.field_errors = {k: v for k, v in self.field_errors.items() if k != field}

    def _update_cost(self, force: bool = False) -> None:
        """Cost report and bond sweep of the draft when it is valid; otherwise keep the last ones."""
        if self.problems:
            return
        d = self.design
        try:
            rep = cost_report(d, batch=self.batch, dtype=self.dtype, schedule=self.schedule)
        except (DesignError, ValueError) as e:
            self.param.update(valid_design=d, cost_error=str(e))
            if self.schedule != "auto":
                self.field_errors = {**self.field_errors, "schedule": str(e)}
            return
        self._clear_error("schedule")
        sweep = self._sweep(d)
        with self._refine_lock:
            self.param.update(valid_design=d, report=rep, cost_error="", sweep=sweep)
        self._request_refinement(d)

    # ------------------------------------------------------------------ background refinement
    @property
    def refining(self) -> bool:
        """Whether a background path search is running or queued."""
        t = self._refine_thread
        return t is not None and t.is_alive()

    def wait_refined(self, timeout: float | None = None) -> bool:
        """Wait until no background search runs (``timeout`` seconds at most); True when idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            t = self._refine_thread
            if t is None or not t.is_alive():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            t.join(left if left is None else min(left, 0.5))

    def _request_refinement(self, design: Design) -> None:
        """Queue a thorough search for ``design`` (newest wins; one worker thread at a time)."""
        if self.refine_s <= 0 or len(design.tensors) < 4:
            return  # tiny networks were searched exactly
        with self._refine_lock:
            self._refine_job = (design, self.batch, self.dtype, self.schedule, float(self.refine_s))
            self._refine_stamp = time.monotonic()
            if self._refine_thread is None or not self._refine_thread.is_alive():
                self._refine_thread = threading.Thread(target=self._refine_worker, daemon=True, name="tn-refine")
                self._refine_thread.start()

    def _refine_worker(self) -> None:
        while True:
            with self._refine_lock:  # wait until the design has been still for REFINE_QUIET_S: the search shares
                wait = self._refine_stamp + REFINE_QUIET_S - time.monotonic()  # the interpreter (GIL) with edits
                if wait <= 0:
                    job, self._refine_job = self._refine_job, None
                    if job is None:
                        self._refine_thread = None
                        return
            if wait > 0:
                time.sleep(wait)
                continue
            design, batch, dtype, schedule, budget = job
            scheds = [schedule] if schedule != "auto" else ["materialise", "stream"][:1 + can_stream(design)]
            try:
                for s in scheds:
                    compile_program(design, batch, s, "thorough", budget / len(scheds))
                rep = cost_report(design, batch=batch, dtype=dtype, schedule=schedule)
            except Exception:  # noqa: BLE001  (a refinement is optional: the live report stands)
                continue
            self._apply_refinement(design, (batch, dtype, schedule), rep)

    def _apply_refinement(self, design: Design, settings: tuple, rep: CostReport) -> None:
        """Show ``rep`` if ``design`` and the cost settings are still current and it is not worse."""
        with self._refine_lock:
            if self.valid_design is not design or self.problems or settings != (self.batch, self.dtype,
                                                                                  self.schedule):
                return  # the design changed meanwhile: its own refinement is queued
            old = self.report
            if old is not None:
                new, was = (rep.forward_flops, rep.generate_flops), (old.forward_flops, old.generate_flops)
                if any(n > w for n, w in zip(new, was)) or new == was:
                    return  # nothing better found: leave the report (and the views) alone
            self.param.update(report=rep, sweep=self._sweep(design))

    def _sweep(self, design: Design) -> dict[str, Any]:
        chis, params, fwd, gen = [], [], [], []
        if typical_bond(design) is None:
            return {"chi": [], "params": [], "forward_flops": [], "generate_flops": [], "current": None}
        for chi in SWEEP_CHI:
            try:
                r = cost_report(with_bond(design, chi), batch=self.batch, dtype=self.dtype, schedule=self.schedule)
            except (DesignError, ValueError):
                continue
            chis.append(chi)
            params.append(r.params)
            fwd.append(r.forward_flops)
            gen.append(r.generate_flops)
        return {"chi": chis, "params": params, "forward_flops": fwd, "generate_flops": gen,
                "current": typical_bond(design)}

    # ------------------------------------------------------------------ whole designs
    def replace(self, design: Design, label: str = "open") -> None:
        """Make ``design`` the draft (laid out when it has no positions) and re-fit the canvas."""
        d = design.copy().layout()
        self.field_errors = {}
        self.selection = {"tensors": [], "indices": []}
        self._commit(d, f"{label} {d.name}", layout=True)

    def generate(self, kind: str, in_features: int, out_features: int, bond: int | Sequence[int] = 4,
                 activation: str | None = None, in_factors: Sequence[int] | None = None,
                 out_factors: Sequence[int] | None = None, mode: str = "replace") -> bool:
        """Generate a template; ``mode="add"`` adds it next to the current draft instead of replacing it."""
        try:
            d = make_template(kind, in_features, out_features, bond, activation, in_factors, out_factors)
        except (ValueError, DesignError) as e:
            self._refuse("template", str(e))
            return False
        self._clear_error("template")
        if mode == "add":
            merged = edit.merge_designs(self.design, d)
            return self._commit(merged, f"add {d.name}", layout=True)
        self.replace(d, "template")
        return True

    def load_json(self, text: str | bytes, source: str = "file") -> bool:
        """Open a design from JSON text; an invalid file is refused with a readable message at ``open``."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                self._refuse("open", f"{source} is not a text file")
                return False
        try:
            d = Design.from_json(text)
        except DesignError as e:
            self._refuse("open", f"{source}: " + "; ".join(e.problems))
            return False
        self._clear_error("open")
        self.replace(d, "opened")
        return True

    def to_json(self) -> str:
        return self.design.to_json()

    # ------------------------------------------------------------------ structural edits (draft)
    def _edit(self, field: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a pure edit of :mod:`engine.design.edit` on the draft; a refused edit is shown at ``field``."""
        try:
            result = fn(self.design, *args, **kwargs)
        except EditError as e:
            self._refuse(field, str(e))
            return None
        self._clear_error(field)
        return result

    def add_tensor(self, kind: str = "core", position: tuple[float, float] | None = None) -> str:
        d, tid = edit.add_tensor(self.design, kind, position)
        self._commit(d, f"add tensor {tid}")
        self.selection = {"tensors": [tid], "indices": []}
        return tid

    def connect(self, a: str, b: str, dim: int | None = None) -> str | None:
        """Join tensors ``a`` and ``b`` with a new bond (dimension ``dim`` or ``new_bond_dim``)."""
        out = self._edit("connect", edit.connect, a, b, int(dim or self.new_bond_dim))
        if out is None:
            return None
        d, name = out
        self._commit(d, f"connect {a}-{b}")
        return name

    def attach(self, tensor: str, index: str) -> bool:
        """Add an existing hyperedge (or an unattached leg) to ``tensor``."""
        d = self._edit("connect", edit.attach, tensor, index)
        return d is not None and self._commit(d, f"attach {index} to {tensor}")

    def add_open_leg(self, tensor: str, role: str, dim: int) -> str | None:
        """Give ``tensor`` a new open leg (role ``in``/``out``, next axis); the layer shape is not changed."""
        out = self._edit("open_leg", edit.add_open_leg, tensor, role, dim)
        if out is None:
            return None
        d, name = out
        self._commit(d, f"add {role} leg {name} to {tensor}")
        return name

    def delete(self, tensors: Iterable[str] = (), indices: Iterable[str] = (),
               detach: Iterable[tuple[str, str]] = (), merge: str | None = None) -> bool:
        """Delete tensors (with their open legs and bonds), indices (from every tensor) and single attachments."""
        tensors, indices, detach = set(tensors), set(indices), list(detach)
        if not any(t.id in tensors for t in self.design.tensors) and not indices and not detach:
            return False
        d = edit.delete(self.design, tensors, indices, detach)
        what = ", ".join(sorted(tensors | indices)) or ", ".join(f"{i} from {t}" for t, i in detach)
        self._commit(d, f"delete {what}", merge=merge)
        return True

    def move(self, key: str, x: float, y: float) -> None:
        """Record a canvas position: a tensor id, or ``"L:<leg>"`` / ``"H:<hyperedge>"`` (kept in meta)."""
        pos = (round(float(x), 1), round(float(y), 1))
        for d in (self.design, self._history[self._pos]):
            if any(t.id == key for t in d.tensors):
                d.tensor(key).position = pos
            else:
                d.meta.setdefault("canvas", {})[key] = list(pos)

    # ------------------------------------------------------------------ field edits (strict)
    def set_dim(self, index: str, dim: Any) -> bool:
        field = f"dim:{index}"
        d = self._edit(field, edit.set_dim, index, dim)
        return d is not None and self._commit(d, f"{index} = {d.indices[index].dim}", strict=True, field=field)

    def set_tensor(self, tensor: str, **changes: Any) -> bool:
        """Change a tensor's ``kind`` and/or ``activation`` (``None`` or ``"none"`` removes it)."""
        field = f"{list(changes)[-1]}:{tensor}" if changes else "edit"
        d = edit.set_tensor(self.design, tensor, **changes)
        return self._commit(d, f"{tensor}: " + ", ".join(f"{k}={v}" for k, v in changes.items()), strict=True,
                            field=field)

    def set_factors(self, role: str, dims: Sequence[int]) -> bool:
        """Set the dims of the ``role`` legs (in axis order) and the layer size to their product."""
        field = f"factors:{role}"
        d = self._edit(field, edit.set_factors, role, dims)
        return d is not None and self._commit(d, f"{role} legs {' x '.join(map(str, dims))}", strict=True,
                                              field=field)

    def fit_features(self) -> bool:
        """Set in/out features to the products of the current leg dims (after adding or deleting open legs)."""
        d = edit.fit_features(self.design)
        return self._commit(d, f"layer {d.in_features} -> {d.out_features}")

    def set_name(self, name: str) -> bool:
        d = self._edit("name", edit.rename, name)
        return d is not None and self._commit(d, f"rename to {d.name}", field="name")

    def select(self, tensors: Iterable[str] = (), indices: Iterable[str] = ()) -> None:
        self.selection = {"tensors": list(dict.fromkeys(tensors)), "indices": list(dict.fromkeys(indices))}


__all__ = ["StudioState", "ACTIVATIONS", "KINDS", "DTYPES",
           "SCHEDULE_CHOICES", "SWEEP_CHI"]
