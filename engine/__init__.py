"""TN Studio's engine, in layers that only import downwards:

- :mod:`engine.design`: the design format, validation, templates, edit operations (no torch);
- :mod:`engine.contract`: contraction programs, path search, the cost and memory model (no torch);
- :mod:`engine.nn`: torch modules that run the programs, initialisation, tensorize, export;
- :mod:`engine.network`: whole networks: network files, the architecture catalogue, assignment rules, the
  whole-network report, building and exporting;
- :mod:`engine.train`: run configs, data, models, the training loop, the run store and launcher;
- :mod:`engine.analysis`: bond spectra, truncation, bond features and the stack view of trained layers;
- :mod:`engine.search`: design search under budgets with Optuna (space, budgets, workers, the Pareto front);
- :mod:`engine.cli`: the ``tnstudio`` command line.

The engine never imports the studio (:mod:`studio`), which is a view on top of it.
"""
__version__ = "0.2.0"
