"""The contraction layer's process-global caches, behind one lock.

- compiled programs by (design fingerprint, batch, schedule, search effort), and the fingerprints of designs that
  passed :meth:`Design.check`;
- the best paths found per network *structure* (index names, not dimensions): a bond change re-scores them in
  microseconds, so what a slow search once found (e.g. a background "thorough" refinement) seeds every later
  thorough search. The live (``fast``) search never reads them: its programs are a pure function of the design,
  batch and schedule, whatever ran before in the process.

Reads take no lock (single dict operations under the GIL); writes and evictions do, since compiles may run in a
background thread (the studio's refinement).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Hashable, Sequence

from engine.types import ContractionPath

if TYPE_CHECKING:
    from engine.contract.program import Program


class ContractCache:
    """Compiled programs, validated fingerprints and remembered best paths (see the module docstring)."""

    def __init__(self, max_programs: int = 512, max_structures: int = 256, paths_per_structure: int = 4):
        self.max_programs = max_programs
        self.max_structures = max_structures
        self.paths_per_structure = paths_per_structure
        self._programs: dict[Hashable, Program] = {}
        self.thorough_stored = 0  # how many thorough programs were stored: holders of fast programs re-ask on change
        self._valid: set[str] = set()
        self._paths: dict[Hashable, list[ContractionPath]] = {}
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- compiled programs
    def program(self, key: Hashable) -> Program | None:
        """The program compiled under ``key``, or None."""
        return self._programs.get(key)

    def store_program(self, key: Hashable, prog: Program) -> None:
        """Keep ``prog`` under ``key`` (the oldest entry goes when full)."""
        with self._lock:
            if len(self._programs) >= self.max_programs:
                self._programs.pop(next(iter(self._programs)))
            self._programs[key] = prog
            if isinstance(key, tuple) and key and key[-1] == "thorough":
                self.thorough_stored += 1

    def is_valid(self, fingerprint: str) -> bool:
        """Whether a design with this fingerprint passed validation before."""
        return fingerprint in self._valid

    def mark_valid(self, fingerprint: str) -> None:
        with self._lock:
            self._valid.add(fingerprint)

    # ----------------------------------------------------------------- remembered paths
    def paths(self, structure: Hashable) -> Sequence[ContractionPath]:
        """The best paths remembered for this network structure, best (most recent) first."""
        return self._paths.get(structure, ())

    def remember_path(self, structure: Hashable, path: ContractionPath) -> None:
        """Put ``path`` first among the paths of ``structure`` (the oldest structure goes when full)."""
        with self._lock:
            paths = [p for p in self._paths.pop(structure, []) if p != path]  # a new list: readers may hold the old
            self._paths[structure] = ([path] + paths)[:self.paths_per_structure]
            if len(self._paths) > self.max_structures:
                self._paths.pop(next(iter(self._paths)))

    # ----------------------------------------------------------------- clearing
    def clear(self, paths: bool = False) -> None:
        """Forget compiled programs and validations (and, with ``paths``, the remembered paths)."""
        with self._lock:
            self._programs.clear()
            self._valid.clear()
            if paths:
                self._paths.clear()


CACHE = ContractCache()


def clear_cache(paths: bool = False) -> None:
    """Forget compiled programs (and, with ``paths``, the remembered best paths per network structure)."""
    CACHE.clear(paths)
