"""Layer 4, training: run configs (:mod:`.config`), the data-set registry (:mod:`.data`), the model-kind registry
(:mod:`.models`, torch modules in :mod:`.nets`), the training loop (:mod:`.loop`), the run store (:mod:`.store`) and
the launcher that runs each training in its own process (``python -m engine.train --run ID``). Only the loop and
the nets import torch at module level."""
