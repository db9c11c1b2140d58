"""Analyses of designs with weights: bonds as latent spaces (beside :mod:`engine.train` in the layering).

- :mod:`~engine.analysis.spectra`: :func:`bond_spectra`, every bond's singular values, entropy and effective rank;
- :mod:`~engine.analysis.truncate`: :func:`truncate`, a smaller design with weights and its exact error (nonlinear
  trees: :mod:`~engine.analysis.nonlinear`, rows of the activated fragments, the error of W measured);
- :mod:`~engine.analysis.features`: :func:`bond_features`, what a data batch carries through each bond;
- :mod:`~engine.analysis.stack`: :func:`stack_layers`, a chain design as the sparse layers it equals;
- :mod:`~engine.analysis.runs`: a run's trained layer and its inputs (reads runs; never writes them);
- :mod:`~engine.analysis.finetune`: :func:`finetune`, a truncated layer fine-tuned as a child run of its run.

It imports :mod:`engine.design`, :mod:`engine.contract`, :mod:`engine.nn` and :mod:`engine.train` (to read runs,
and to launch fine-tuning child runs); never the studio. Public names load on first use (PEP 562).
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "BondSpectrum": "engine.analysis.spectra", "SpectraReport": "engine.analysis.spectra",
    "bond_spectra": "engine.analysis.spectra",
    "TruncationResult": "engine.analysis.truncate", "truncate": "engine.analysis.truncate",
    "BondFeatures": "engine.analysis.features", "FeatureReport": "engine.analysis.features",
    "bond_features": "engine.analysis.features",
    "StackLayer": "engine.analysis.stack", "stack_layers": "engine.analysis.stack",
    "stack_matrices": "engine.analysis.stack", "apply_stack": "engine.analysis.stack",
    "as_cores": "engine.analysis.network",
    "finetune": "engine.analysis.finetune", "child_state": "engine.analysis.finetune",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'engine.analysis' has no attribute {name!r}")
