"""Budgets a candidate must meet before any training is spent on it, checked with the cost model.

:class:`Budget` holds the limits (parameters of the layer, forward FLOPs at a batch size, training memory at that
batch); :meth:`Budget.check` prices a design with :func:`engine.contract.cost.cost_report` (milliseconds, nothing
allocated) and returns a :class:`Feasibility`: the numbers, whether every limit holds, the reasons in words, and
one constraint value per limit (``value / limit - 1``: <= 0 when the limit holds) that the search hands to Optuna
(``Trial.set_constraint``), so its sampler learns where the feasible designs are.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from engine.contract.cost import cost_report
from engine.design.model import Design
from engine.format import nbytes, refuse_unknown_keys, si


@dataclass(frozen=True)
class Feasibility:
    """A priced design against a :class:`Budget`."""

    params: int
    forward_flops: int
    train_memory_bytes: int
    batch: int
    constraints: dict[str, float] = field(default_factory=dict)  # limit name -> value / limit - 1 (<= 0: holds)
    reasons: tuple[str, ...] = ()  # each broken limit, in words

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["ok"] = self.ok
        return out


@dataclass(frozen=True)
class Budget:
    """Limits on a layer, ``None`` where there is none. FLOPs and memory are at ``batch`` (the training batch
    by default) in ``dtype``, with the schedule the cost model picks, as ``tnstudio cost`` reports them."""

    max_params: int | None = None
    max_flops: float | None = None  # forward FLOPs at ``batch``
    max_train_memory: float | None = None  # bytes: params, grads, Adam state and activations of one step
    batch: int = 64
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("max_params", "max_flops", "max_train_memory"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < math.inf):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {v!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {self.batch!r}")

    def check(self, design: Design) -> Feasibility:
        """Price ``design`` and compare it with every limit (the cost model never allocates the layer)."""
        rep = cost_report(design, batch=self.batch, dtype=self.dtype)
        constraints: dict[str, float] = {}
        reasons: list[str] = []
        checks = (("params", rep.params, self.max_params, lambda v: f"{int(v):,}"),
                  ("forward_flops", rep.forward_flops, self.max_flops, lambda v: si(v, "FLOP")),
                  ("train_memory", rep.train_memory_bytes, self.max_train_memory, lambda v: nbytes(int(v))))
        for name, value, limit, fmt in checks:
            if limit is None:
                continue
            constraints[name] = value / limit - 1.0
            if value > limit:
                at = f" at batch {self.batch}" if name != "params" else ""
                reasons.append(f"{name.replace('_', ' ')} {fmt(value)}{at} > max {fmt(limit)}")
        return Feasibility(params=rep.params, forward_flops=rep.forward_flops,
                           train_memory_bytes=rep.train_memory_bytes, batch=self.batch, constraints=constraints,
                           reasons=tuple(reasons))

    def describe(self) -> str:
        parts = []
        if self.max_params is not None:
            parts.append(f"params <= {int(self.max_params):,}")
        if self.max_flops is not None:
            parts.append(f"forward FLOPs <= {si(self.max_flops, 'FLOP')} at batch {self.batch}")
        if self.max_train_memory is not None:
            parts.append(f"training memory <= {nbytes(int(self.max_train_memory))} at batch {self.batch}")
        return ", ".join(parts) or "no limits"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Budget:
        keys = ("max_params", "max_flops", "max_train_memory", "batch", "dtype")
        refuse_unknown_keys(d, keys, "the search's budget")
        return cls(**{k: d[k] for k in keys if k in d})
