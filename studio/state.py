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
    report           ``engine.cost.cost_report`` dict of ``valid_design`` at ``batch``/``dtype``/``schedule``
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

import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import param

from engine.contract.cost import cost_report
from engine.contract.program import can_stream, compile_program
from engine.design.model import ACTIVATIONS, KINDS, Design, DesignError, Index, Tensor
from engine.design.templates import make_template

from engine.home import tnstudio_home

SWEEP_CHI = (2, 3, 4, 6, 8, 12, 16)
HISTORY_MAX = 200
MERGE_WINDOW_S = 0.8
REFINE_QUIET_S = 0.3  # the background path search starts once the design has not changed for this long
DTYPES = ("float32", "bfloat16", "float16", "float64")
SCHEDULE_CHOICES = ("auto", "materialise", "stream")


def with_bond(design: Design, chi: int) -> Design:
    """The same topology with every bond set to ``chi`` (open legs unchanged)."""
    d = design.copy()
    for ix in d.indices.values():
        if ix.role == "bond":
            ix.dim = chi
    return d


def typical_bond(design: Design) -> int | None:
    """The most common bond dimension (the chart marks it), or None without bonds."""
    dims = Counter(ix.dim for ix in design.indices.values() if ix.role == "bond")
    return dims.most_common(1)[0][0] if dims else None


def _fresh(prefix: str, taken: Iterable[str]) -> str:
    used = set(taken)
    n = 0
    while f"{prefix}{n}" in used:
        n += 1
    return f"{prefix}{n}"


def free_spot(taken: Sequence[tuple[float, float]], gap: float = 120.0) -> tuple[float, float]:
    """A free place near the middle of ``taken`` (so a new tensor shows up inside the fitted view)."""
    if not taken:
        return (0.0, 0.0)
    cx = (min(p[0] for p in taken) + max(p[0] for p in taken)) / 2
    cy = (min(p[1] for p in taken) + max(p[1] for p in taken)) / 2
    for ring in range(0, 12):
        for k in range(max(1, 8 * ring)):
            ang = 2 * math.pi * k / max(1, 8 * ring)
            x, y = cx + ring * 70.0 * math.cos(ang), cy + ring * 55.0 * math.sin(ang)
            if all(abs(x - px) > gap or abs(y - py) > gap * 0.6 for px, py in taken):
                return (round(x, 1), round(y, 1))
    return (max(p[0] for p in taken) + gap * 1.4, cy)


def _renumber_axes(design: Design, role: str) -> None:
    for axis, name in enumerate(design.in_legs if role == "in" else design.out_legs):
        design.indices[name].axis = axis


class StudioState(param.Parameterized):
    """Current design, undo/redo history, selection and live cost of one studio session (see module doc)."""

    design = param.ClassSelector(class_=Design, doc="The draft shown on the canvas.")
    valid_design = param.ClassSelector(class_=Design, allow_None=True, doc="Last draft without problems.")
    problems = param.List(default=[], doc="The draft's problems, in words.")
    report = param.Dict(default=None, allow_None=True, doc="cost_report of valid_design.")
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

    def _apply_refinement(self, design: Design, settings: tuple, rep: dict[str, Any]) -> None:
        """Show ``rep`` if ``design`` and the cost settings are still current and it is not worse."""
        with self._refine_lock:
            if self.valid_design is not design or self.problems or settings != (self.batch, self.dtype,
                                                                                  self.schedule):
                return  # the design changed meanwhile: its own refinement is queued
            old = self.report or {}
            keys = ("forward_flops", "generate_flops")
            if any(rep[k] > old.get(k, math.inf) for k in keys) or all(rep[k] == old.get(k) for k in keys):
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
            params.append(r["params"])
            fwd.append(r["forward_flops"])
            gen.append(r["generate_flops"])
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
            merged = merge_designs(self.design, d)
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
    def add_tensor(self, kind: str = "core", position: tuple[float, float] | None = None) -> str:
        d = self.design.copy()
        tid = _fresh("T", (t.id for t in d.tensors))
        if position is None:
            position = free_spot([t.position for t in d.tensors if t.position])
        d.tensors.append(Tensor(id=tid, indices=[], kind=kind if kind in KINDS else "core", position=position))
        if d.order is not None:
            d.order.append(tid)
        self._commit(d, f"add tensor {tid}")
        self.selection = {"tensors": [tid], "indices": []}
        return tid

    def connect(self, a: str, b: str, dim: int | None = None) -> str | None:
        """Join tensors ``a`` and ``b`` with a new bond (dimension ``dim`` or ``new_bond_dim``)."""
        d = self.design.copy()
        ids = {t.id for t in d.tensors}
        if a not in ids or b not in ids or a == b:
            self._refuse("connect", f"cannot connect {a!r} to {b!r}: pick two different tensors")
            return None
        name = _fresh("b", d.indices)
        d.indices[name] = Index(dim=int(dim or self.new_bond_dim), role="bond")
        d.tensor(a).indices.append(name)
        d.tensor(b).indices.append(name)
        self._clear_error("connect")
        self._commit(d, f"connect {a}-{b}")
        return name

    def attach(self, tensor: str, index: str) -> bool:
        """Add an existing hyperedge (or an unattached leg) to ``tensor``."""
        d = self.design.copy()
        if index not in d.indices or not any(t.id == tensor for t in d.tensors):
            self._refuse("connect", f"no index {index!r} or tensor {tensor!r}")
            return False
        ix, users = d.indices[index], d.users().get(index, [])
        if tensor in users:
            self._refuse("connect", f"{tensor} already carries {index}")
            return False
        if ix.role in ("in", "out") and users:
            self._refuse("connect", f"open leg {index} already belongs to {users[0]}: an open leg has one tensor")
            return False
        if ix.role == "bond" and len(users) >= 2 and not ix.hyperedge:
            self._refuse("connect", f"bond {index} already joins {users[0]} and {users[1]}")
            return False
        d.tensor(tensor).indices.append(index)
        self._clear_error("connect")
        return self._commit(d, f"attach {index} to {tensor}")

    def add_open_leg(self, tensor: str, role: str, dim: int) -> str | None:
        """Give ``tensor`` a new open leg (role ``in``/``out``, next axis); the layer shape is not changed."""
        if role not in ("in", "out"):
            self._refuse("open_leg", f"role must be in or out, got {role!r}")
            return None
        if not isinstance(dim, int) or dim < 1:
            self._refuse("open_leg", f"dim must be an integer >= 1, got {dim!r}")
            return None
        d = self.design.copy()
        name = _fresh("i" if role == "in" else "o", d.indices)
        axis = len(d.in_legs if role == "in" else d.out_legs)
        d.indices[name] = Index(dim=dim, role=role, axis=axis)
        d.tensor(tensor).indices.append(name)
        self._clear_error("open_leg")
        self._commit(d, f"add {role} leg {name} to {tensor}")
        return name

    def delete(self, tensors: Iterable[str] = (), indices: Iterable[str] = (),
               detach: Iterable[tuple[str, str]] = (), merge: str | None = None) -> bool:
        """Delete tensors (with their open legs and bonds), indices (from every tensor) and single attachments."""
        d = self.design.copy()
        tensors, indices, detach = set(tensors), set(indices), list(detach)
        gone = [t for t in d.tensors if t.id in tensors]
        if not gone and not indices and not detach:
            return False
        for t in gone:
            for i in t.indices:
                ix = d.indices.get(i)
                if ix is not None and (ix.role != "bond" or not ix.hyperedge):
                    indices.add(i)  # open legs and plain bonds go with the tensor; hyperedges stay
        d.tensors = [t for t in d.tensors if t.id not in tensors]
        for tid, i in detach:
            if any(t.id == tid for t in d.tensors) and i in d.tensor(tid).indices:
                d.tensor(tid).indices.remove(i)
        for t in d.tensors:
            t.indices = [i for i in t.indices if i not in indices]
        roles = {d.indices[i].role for i in indices if i in d.indices}
        for i in indices:
            d.indices.pop(i, None)
        for name in [k for k, v in d.indices.items() if v.hyperedge and not d.users().get(k)]:
            d.indices.pop(name)  # a hub nobody uses any more
        for role in roles & {"in", "out"}:
            _renumber_axes(d, role)
        if d.order is not None:
            d.order = [t for t in d.order if t not in tensors]
        if d.root in tensors:
            d.root = None
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
        if index not in self.design.indices:
            self._refuse(field, f"no index {index!r}")
            return False
        try:
            value = int(dim)
            if value != dim and not (isinstance(dim, str) and str(value) == dim.strip()):
                raise ValueError
        except (TypeError, ValueError):
            self._refuse(field, f"dimension of {index} must be a whole number, got {dim!r}")
            return False
        d = self.design.copy()
        d.indices[index].dim = value
        return self._commit(d, f"{index} = {value}", strict=True, field=field)

    def set_tensor(self, tensor: str, **changes: Any) -> bool:
        """Change a tensor's ``kind`` and/or ``activation`` (``None`` or ``"none"`` removes it)."""
        d = self.design.copy()
        t = d.tensor(tensor)
        field = "edit"
        for key, value in changes.items():
            field = f"{key}:{tensor}"
            if key == "kind":
                t.kind = value
            elif key == "activation":
                t.activation = None if value in (None, "", "none", "None") else value
            else:
                raise TypeError(f"set_tensor cannot change {key!r}")
        return self._commit(d, f"{tensor}: " + ", ".join(f"{k}={v}" for k, v in changes.items()), strict=True,
                            field=field)

    def set_factors(self, role: str, dims: Sequence[int]) -> bool:
        """Set the dims of the ``role`` legs (in axis order) and the layer size to their product."""
        field = f"factors:{role}"
        d = self.design.copy()
        legs = d.in_legs if role == "in" else d.out_legs
        dims = list(dims)
        if len(dims) != len(legs):
            self._refuse(field, f"the design has {len(legs)} {role} legs ({', '.join(legs) or 'none'}): give "
                                f"{len(legs)} factors, or add/delete legs on the canvas")
            return False
        for leg, dim in zip(legs, dims):
            d.indices[leg].dim = dim
        setattr(d, f"{role}_features", math.prod(dims))
        return self._commit(d, f"{role} legs {' x '.join(map(str, dims))}", strict=True, field=field)

    def fit_features(self) -> bool:
        """Set in/out features to the products of the current leg dims (after adding or deleting open legs)."""
        d = self.design.copy()
        for role, legs in (("in", d.in_legs), ("out", d.out_legs)):
            if legs:
                setattr(d, f"{role}_features", math.prod(d.indices[k].dim for k in legs))
        return self._commit(d, f"layer {d.in_features} -> {d.out_features}")

    def set_name(self, name: str) -> bool:
        if not name.strip():
            self._refuse("name", "the name cannot be empty")
            return False
        d = self.design.copy()
        d.name = name.strip()
        return self._commit(d, f"rename to {d.name}", field="name")

    def select(self, tensors: Iterable[str] = (), indices: Iterable[str] = ()) -> None:
        self.selection = {"tensors": list(dict.fromkeys(tensors)), "indices": list(dict.fromkeys(indices))}


def merge_designs(base: Design, extra: Design) -> Design:
    """``base`` plus ``extra`` side by side (clashing names get a suffix, open-leg axes continue)."""
    out = base.copy()
    extra = extra.copy()
    suffix = 1
    taken = set(out.indices) | {t.id for t in out.tensors}
    while any(f"{n}_{suffix}" in taken for n in list(extra.indices) + [t.id for t in extra.tensors]):
        suffix += 1
    rename = {n: (f"{n}_{suffix}" if n in taken else n) for n in list(extra.indices) + [t.id for t in extra.tensors]}
    base_x = max((t.position[0] for t in out.tensors if t.position), default=0.0)
    min_x = min((t.position[0] for t in extra.tensors if t.position), default=0.0)
    axes = {"in": len(out.in_legs), "out": len(out.out_legs)}
    for name in [*extra.in_legs, *extra.out_legs]:
        ix = extra.indices[name]
        ix.axis = axes[ix.role]
        axes[ix.role] += 1
    for name, ix in extra.indices.items():
        out.indices[rename[name]] = ix
    for t in extra.tensors:
        pos = (t.position[0] - min_x + base_x + 260.0, t.position[1]) if t.position else None
        out.tensors.append(Tensor(id=rename[t.id], indices=[rename[i] for i in t.indices], kind=t.kind,
                                  activation=t.activation, position=pos))
    if out.order is not None or extra.order is not None:
        out.order = out.evaluation_order() + [rename[t] for t in extra.evaluation_order()]
    return out


__all__ = ["StudioState", "merge_designs", "with_bond", "typical_bond", "ACTIVATIONS", "KINDS", "DTYPES",
           "SCHEDULE_CHOICES", "SWEEP_CHI"]
