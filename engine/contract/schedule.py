"""Schedules: how x meets the cores, and which designs may stream (the one place these rules are written).

- ``materialise``: generate W from the cores, reshape it to ``(in, out)``, then ``y = x @ W``.
- ``stream``: reshape x to ``(B, in_1, ..., in_k)`` and contract it through the cores (for nonlinear designs,
  through the activated fragments and the cores absorbed after the last activation).
"""
from __future__ import annotations

from engine.design.model import Design
from engine.types import Schedule, ScheduleChoice

SCHEDULES: tuple[Schedule, ...] = ("materialise", "stream")
SCHEDULE_CHOICES: tuple[ScheduleChoice, ...] = ("auto",) + SCHEDULES  # "auto": the cheaper one per batch size


def last_activation(design: Design) -> int:
    """Position in the evaluation order of the last tensor with an activation (-1 for a linear design)."""
    order = design.evaluation_order()
    return max((k for k, tid in enumerate(order) if design.tensor(tid).activation), default=-1)


def can_stream(design: Design) -> bool:
    """Whether x can be streamed: W must be linear in what is left after the last activation.

    True for linear designs, and for nonlinear ones whose last activated tensor is not the last one absorbed
    (e.g. a tree whose top tensor has no activation): the activated fragments are generated first, then x is
    contracted through them and the remaining cores, which is often far cheaper than building W.
    """
    return last_activation(design) < len(design.tensors) - 1


def check_schedule(design: Design | None, schedule: str) -> ScheduleChoice:
    """``schedule`` if it is one of :data:`SCHEDULE_CHOICES` and ``design`` can run it, else ``ValueError``.

    With ``design=None`` only the name is checked (e.g. before the design itself is validated).
    """
    if schedule not in SCHEDULE_CHOICES:
        raise ValueError(f"schedule must be {', '.join(SCHEDULE_CHOICES[:-1])} or {SCHEDULE_CHOICES[-1]}, "
                         f"got {schedule!r}")
    if schedule == "stream" and design is not None and not can_stream(design):
        raise ValueError(f"design {design.name!r} cannot stream: the stream schedule needs W to be linear in what "
                         f"follows the last activation, and here the last tensor absorbed has an activation, so W "
                         f"must be materialised (use schedule 'auto' or 'materialise')")
    return schedule  # type: ignore[return-value]
