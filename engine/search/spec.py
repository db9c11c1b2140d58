"""What a search is: its space, budgets, objectives, training settings and size, as one :class:`SearchSpec`.

The spec is stored in the Optuna study itself (user attribute ``tnstudio.spec``), so a worker on any machine that
opens the study knows what to do, and ``tnstudio search show`` can say what was searched.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from engine.format import refuse_unknown_keys
from engine.search.budget import Budget
from engine.search.space import LayerSpace
from engine.search.storage import check_name

OBJECTIVES = ("params", "flops")  # the second objective, minimised (the first is validation accuracy)
PRUNERS = ("median", "halving", "none")
SPEC_ATTR = "tnstudio.spec"
STOP_ATTR = "tnstudio.stop"
REFIT_ATTR = "tnstudio.refit"
# what may change when a study is continued (``tnstudio search`` again with the same name): its size
RESIZABLE = ("trials", "max_candidates")


class SpecError(ValueError):
    """A search that cannot run as asked, said in words."""


@dataclass(frozen=True)
class SearchSpec:
    """A design search.

    ``trials``: how many candidates to *train* (complete or pruned on accuracy); candidates pruned by the budgets,
    refused by a template or repeating an earlier design cost no training and do not count, but at most
    ``max_candidates`` (default 10 x trials) are proposed in all. Training: the MLP built around the layer
    (``tnstudio train``'s default model) on ``dataset`` with these settings; ``val_fraction`` of the training
    examples (stratified, the same for every trial) are held out for the validation accuracy the search
    optimises; the test split is evaluated too and reported, never optimised (``val_fraction=0``: optimise the
    test accuracy itself, as a hand sweep does). ``pruner``: Optuna's pruner on the validation accuracy per
    epoch (median, halving = successive halving, none), comparing each trial with earlier trials of about its size
    (see :mod:`engine.search.objective`); ``startup_trials``: random candidates before the TPE sampler models.
    """

    name: str
    space: LayerSpace
    budget: Budget = field(default_factory=Budget)
    dataset: str = "digits"
    objective: str = "params"
    trials: int = 40
    max_candidates: int | None = None
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    device: str = "cpu"
    val_fraction: float = 0.2
    pruner: str = "median"
    startup_trials: int = 10

    def __post_init__(self) -> None:
        try:
            check_name(self.name)
        except ValueError as e:
            raise SpecError(str(e)) from None
        if self.objective not in OBJECTIVES:
            raise SpecError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.pruner not in PRUNERS:
            raise SpecError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        for key in ("trials", "epochs", "batch_size"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"{key} must be an integer >= 1, got {v!r}")
        if self.max_candidates is not None and (not isinstance(self.max_candidates, int)
                                                or self.max_candidates < self.trials):
            raise SpecError(f"max_candidates must be an integer >= trials ({self.trials}), got "
                            f"{self.max_candidates!r}")
        if not isinstance(self.startup_trials, int) or self.startup_trials < 0:
            raise SpecError(f"startup_trials must be an integer >= 0, got {self.startup_trials!r}")
        if not (0.0 <= float(self.val_fraction) < 0.9):
            raise SpecError(f"val_fraction must be in [0, 0.9), got {self.val_fraction!r}")
        from engine.train.data import DataError, dataset_name, dataset_spec

        try:
            ds = dataset_spec(dataset_name(self.dataset))
        except DataError as e:
            raise SpecError(str(e)) from None
        if ds.task != "classification":
            raise SpecError(f"the search maximises accuracy: {ds.name} is a {ds.task} data set; choose a "
                            f"classification data set")
        object.__setattr__(self, "dataset", ds.name)
        try:
            self.run_config()
        except ValueError as e:
            raise SpecError(str(e)) from None

    @property
    def candidate_limit(self) -> int:
        return self.max_candidates or 10 * self.trials

    def run_config(self):
        """The :class:`~engine.train.config.RunConfig` every trial trains with."""
        from engine.train.config import RunConfig

        return RunConfig(dataset=self.dataset, model="mlp", epochs=self.epochs, batch_size=self.batch_size,
                         lr=self.lr, seed=self.seed, device=self.device, eval_every=0)

    def same_search(self, other: SearchSpec) -> bool:
        """Whether ``other`` asks for the same search (sizes aside)."""
        a, b = self.to_dict(), other.to_dict()
        for k in RESIZABLE:
            a.pop(k), b.pop(k)
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    def resized(self, trials: int, max_candidates: int | None = None) -> SearchSpec:
        return replace(self, trials=trials, max_candidates=max_candidates)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["space"] = self.space.to_dict()
        out["budget"] = self.budget.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchSpec:
        d = dict(d)
        refuse_unknown_keys(d, [f.name for f in fields(cls)], "the search's spec", SpecError)
        try:
            d["space"] = LayerSpace.from_dict(d["space"])
            d["budget"] = Budget.from_dict(d.get("budget") or {})
        except ValueError as e:  # an unknown or out-of-range field: named, not dropped (it had been dropped and
            raise SpecError(str(e)) from None  # then erased from the storage when the search ran again)
        return cls(**d)


__all__ = ["OBJECTIVES", "PRUNERS", "SearchSpec", "SpecError"]
