"""Layer 4, training: run configs, data sets, models, the training loop, the run store and the launcher that
runs each training in its own process (``python -m engine.train --run ID``)."""
