"""What a search found: every trial as a :class:`TrialRecord`, the Pareto front, the best design of each kind and
how many candidates were pruned and why, as one :class:`StudyReport` (``tnstudio search show NAME [--json]``).

The front is Optuna's (``study.best_trials``: the completed, feasible trials no other trial beats on both
validation accuracy and size), with repeats of an earlier design left out. ``test_accuracy`` is measured at the
end of each trained trial and never optimised.
"""
from __future__ import annotations

import logging
import re

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.format import si

log = logging.getLogger(__name__)

STATUSES = ("complete", "pruned", "failed", "running", "waiting")


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a search, as the report shows it."""

    number: int
    status: str  # complete, pruned, failed, running, waiting
    pruned_by: str | None = None  # budget, accuracy, invalid (template refused), or None
    reason: str | None = None  # why it was pruned / failed, in words
    kind: str | None = None
    label: str | None = None
    candidate: dict[str, Any] | None = None  # engine.search.space.Candidate.to_dict()
    params: int | None = None
    forward_flops: int | None = None
    train_memory_bytes: int | None = None
    val_accuracy: float | None = None  # the objective (last value for a pruned trial)
    test_accuracy: float | None = None  # reported, never optimised
    size: float | None = None  # the second objective (params or forward FLOPs) of a complete trial
    run_id: str | None = None
    host: str | None = None
    runs_dir: str | None = None
    duplicate_of: int | None = None
    retry_of: int | None = None
    epochs_trained: float | None = None
    train_seconds: float | None = None
    started: float | None = None  # Unix seconds
    finished: float | None = None
    on_front: bool = False
    refit_test_accuracy: float | None = None  # the design trained again on all training examples (refit_front)
    refit_run_id: str | None = None
    val_curve: list[list[float]] = field(default_factory=list)  # [epoch, validation accuracy]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StudyReport:
    """A search's state and results (see the module docstring)."""

    name: str
    storage: str  # passwords redacted
    spec: dict[str, Any]
    objective: str  # the second objective: params or flops
    target: int  # trained trials asked for
    stopped: bool
    counts: dict[str, int]
    trials: list[TrialRecord]
    front: list[TrialRecord]  # by size, smallest first
    best_per_kind: dict[str, TrialRecord]
    budget_reasons: dict[str, int]  # "params > max" -> how many candidates
    out_of_candidates: bool = False  # the spec's candidate limit was reached (the workers end there): trials that
    # finished or run, as engine.search.worker.counts() calls them proposed

    @property
    def done(self) -> bool:
        """Stopped, trained as many as asked, or out of candidates (as the workers decide:
        :func:`engine.search.worker.finished_reason`)."""
        return self.stopped or self.counts.get("trained", 0) >= self.target or self.out_of_candidates

    def trial(self, number: int) -> TrialRecord | None:
        return next((t for t in self.trials if t.number == number), None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "storage": self.storage, "objective": self.objective, "target": self.target,
                "stopped": self.stopped, "done": self.done, "counts": dict(self.counts),
                "front": [t.to_dict() for t in self.front],
                "best_per_kind": {k: t.to_dict() for k, t in self.best_per_kind.items()},
                "budget_reasons": dict(self.budget_reasons), "spec": self.spec,
                "trials": [t.to_dict() for t in self.trials]}

    def format(self, all_trials: bool = False) -> str:
        c = self.counts
        size = "params" if self.objective == "params" else "fwd FLOPs"
        lines = [f"search {self.name} ({self.storage}): {c['trained']} of {self.target} trained"
                 + (" - stopped" if self.stopped else " - done" if self.done else ""),
                 f"  {c['total']} candidates: {c['complete']} complete ({c['duplicates']} repeats of earlier designs), "
                 f"{c['pruned_accuracy']} pruned on accuracy, {c['pruned_budget']} pruned by the budgets, "
                 f"{c['pruned_invalid']} refused by a template, {c['failed']} failed, {c['running']} running, "
                 f"{c['waiting']} queued"]
        if self.budget_reasons:
            lines.append("  budget: " + ", ".join(f"{k} ({n})" for k, n in self.budget_reasons.items()))
        refits = any(t.refit_test_accuracy is not None for t in self.trials)
        head = (f"  {'#':>4}  {'design':<44} {size:>10}  {'val acc':>7}  {'test acc':>8}  "
                + (f"{'refit test':>10}  " if refits else "") + f"{'run':<8}")

        def row(t: TrialRecord) -> str:
            s = t.params if self.objective == "params" else t.forward_flops
            return (f"  {t.number:>4}  {(t.label or '')[:44]:<44} {si(s) if s is not None else '-':>10}  "
                    f"{_pct(t.val_accuracy):>7}  {_pct(t.test_accuracy):>8}  "
                    + (f"{_pct(t.refit_test_accuracy):>10}  " if refits else "") + f"{t.run_id or '-':<8}")

        lines += ["", "Pareto front (validation accuracy vs " + size + "):", head] + [row(t) for t in self.front]
        if not self.front:
            lines.append("  (no complete trial yet)")
        lines += ["", "Best of each kind:", head] + [row(t) for t in self.best_per_kind.values()]
        if all_trials:
            lines += ["", "All trials:"]
            for t in self.trials:
                extra = f" [{t.pruned_by}] {t.reason}" if t.status == "pruned" else (
                    f" {t.reason}" if t.reason and t.status == "failed" else "")
                lines.append(f"{row(t)}  {t.status}{extra}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _pct(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "-"


def _ts(dt) -> float | None:
    return dt.timestamp() if dt is not None else None


# a budget reason's part: the limit's name, the candidate's value (an amount and its unit), maybe " at batch N"
_REASON = re.compile(r"(?P<name>[a-z][a-z ]*?) [0-9][^ ]*(?: [A-Za-z]+)??(?: at batch [0-9]+)? > (?P<limit>.+)")


def _budget_key(reason: str) -> list[str]:
    """``"params 2,464 > max 2,000; train memory 1.2 MiB at batch 32 > max 300 KiB"`` -> ``["params > max 2,000",
    "train memory > max 300 KiB"]``: one key per limit, whatever the candidate's value and its unit (a word test had
    kept the units, splitting one limit into ``train memory MiB`` and ``train memory KiB``)."""
    out = []
    for part in (reason or "").split("; "):
        m = _REASON.fullmatch(part)
        out.append(f"{m['name']} > {m['limit']}" if m else part)
    return out


def records(study) -> list[TrialRecord]:
    """Every trial of a search study as a :class:`TrialRecord` (front membership not set)."""
    import optuna

    S = optuna.trial.TrialState
    names = {S.COMPLETE: "complete", S.PRUNED: "pruned", S.FAIL: "failed", S.RUNNING: "running",
             S.WAITING: "waiting"}
    out = []
    for t in study.get_trials(deepcopy=False):
        u = t.user_attrs
        values = t.values if t.state == S.COMPLETE else None
        retry = u.get("retry_of", t.system_attrs.get("failed_trial"))
        out.append(TrialRecord(
            number=t.number, status=names.get(t.state, str(t.state).lower()), pruned_by=u.get("pruned_by"),
            reason=u.get("reason"), kind=u.get("kind") or t.params.get("kind"), label=u.get("label"),
            candidate=u.get("candidate"), params=u.get("params"), forward_flops=u.get("forward_flops"),
            train_memory_bytes=u.get("train_memory_bytes"),
            val_accuracy=values[0] if values else u.get("val_accuracy"), test_accuracy=u.get("test_accuracy"),
            size=values[1] if values else None, run_id=u.get("run_id"), host=u.get("host"),
            runs_dir=u.get("runs_dir"), duplicate_of=u.get("duplicate_of"), retry_of=retry,
            epochs_trained=u.get("epochs_trained"), train_seconds=u.get("train_seconds"),
            started=_ts(t.datetime_start), finished=_ts(t.datetime_complete), val_curve=list(u.get("val_curve") or [])))
    return out


def build_report(study, storage: str) -> StudyReport:
    """The report of an open search study."""
    from engine.search.spec import REFIT_ATTR, STOP_ATTR
    from engine.search.worker import load_spec

    spec = load_spec(study)
    refits = {int(k): v for k, v in (study.user_attrs.get(REFIT_ATTR) or {}).items()}
    recs = [replace(r, refit_test_accuracy=refits[r.number].get("test_accuracy"),
                    refit_run_id=refits[r.number].get("run_id")) if r.number in refits else r
            for r in records(study)]
    try:
        front_numbers = {t.number for t in study.best_trials}
    except Exception as e:  # noqa: BLE001 - no complete trial yet (optuna raises its own types): no front
        log.debug("no Pareto front for study %s yet: %r", study.study_name, e)
        front_numbers = set()
    recs = [replace(r, on_front=r.number in front_numbers and r.duplicate_of is None) for r in recs]
    front = sorted((r for r in recs if r.on_front), key=lambda r: (r.size, -(r.val_accuracy or 0)))
    best: dict[str, TrialRecord] = {}
    for r in recs:
        if r.status != "complete" or r.duplicate_of is not None or r.kind is None:
            continue
        cur = best.get(r.kind)
        if cur is None or (r.val_accuracy, -r.size) > (cur.val_accuracy, -cur.size):
            best[r.kind] = r
    kinds = [k for k in spec.space.kinds if k in best]
    st = Counter(r.status for r in recs)
    pruned = Counter(r.pruned_by for r in recs if r.status == "pruned")
    reasons: Counter = Counter()
    for r in recs:
        if r.status == "pruned" and r.pruned_by == "budget":
            reasons.update(_budget_key(r.reason or ""))
    counts = {"total": len(recs), "complete": st["complete"], "pruned_budget": pruned["budget"],
              "pruned_accuracy": pruned["accuracy"], "pruned_invalid": pruned["invalid"],
              "duplicates": sum(1 for r in recs if r.status == "complete" and r.duplicate_of is not None),
              "failed": st["failed"], "running": st["running"], "waiting": st["waiting"],
              "trained": sum(1 for r in recs if r.status in ("complete", "pruned") and r.run_id
                             and r.duplicate_of is None and r.pruned_by in (None, "accuracy"))}
    return StudyReport(name=study.study_name, storage=storage, spec=spec.to_dict(), objective=spec.objective,
                       target=spec.trials, stopped=bool(study.user_attrs.get(STOP_ATTR)), counts=counts,
                       trials=recs, front=front, best_per_kind={k: best[k] for k in kinds},
                       budget_reasons=dict(reasons.most_common()),
                       out_of_candidates=counts["total"] - counts["failed"] - counts["waiting"] >= spec.candidate_limit)


def study_report(name: str, url: str | None = None) -> StudyReport:
    """The report of search ``name`` (storage as in :func:`engine.search.study.open_search`)."""
    from engine.search.storage import redact, storage_url
    from engine.search.study import open_search

    study, _ = open_search(name, url)
    return build_report(study, redact(storage_url(name, url)))


__all__ = ["STATUSES", "StudyReport", "TrialRecord", "build_report", "records", "study_report"]
