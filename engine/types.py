"""Type aliases and literals shared across the engine's layers (no imports beyond the standard library)."""
from __future__ import annotations

import os
from typing import Literal

Role = Literal["in", "out", "bond"]
TensorKind = Literal["core", "isometry", "disentangler", "lateral", "delta"]
Schedule = Literal["materialise", "stream"]
ScheduleChoice = Literal["auto", "materialise", "stream"]  # a schedule, or "auto": the cost model picks
Search = Literal["fast", "thorough"]
Phase = Literal["generate", "apply"]  # a step builds W (batch independent) or touches x
Saves = Literal["input", "output"]  # what an activation's backward reads
IndexName = str
TensorId = str
Indices = tuple[str, ...]
Operand = tuple[str, Indices]  # an operand of a contraction: its name and its indices
ContractionPath = list[tuple[int, ...]]  # pairs of operand positions, opt_einsum's linear format
PathLike = str | os.PathLike
