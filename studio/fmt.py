"""Readable numbers for the UI (``1.2k``, ``3.4 GFLOP``, ``12 MiB``, ``71.9x``): :mod:`engine.format`."""
from engine.format import nbytes, ratio, si

__all__ = ["nbytes", "ratio", "si"]
