"""Fine-tuning a truncated layer as a child run of the run it was truncated from.

:func:`finetune` takes a run and a :class:`~engine.analysis.truncate.TruncationResult` of its trained layer and
launches a new run (its own process, as ``tnstudio train`` does) whose

- design is the truncated design;
- config is the parent's, with ``epochs``, ``lr`` (default: a third of the parent's peak, :data:`LR_SCALE`; the
  truncated weights are already trained, and a full-size warm-up can undo them) and ``init_from="init.pt"``;
- initial weights (``<child run dir>/init.pt``, the whole model's state dict) are the parent's checkpoint for every
  other layer and the truncated cores (with the parent's bias) for the TN layer; the trainer loads them strictly
  with ``weights_only=True`` before the first step (:meth:`engine.train.loop.Trainer.setup`);
- ``parent`` in the run store is the parent run's id; ``truncation.json`` beside it records the truncation.

Everything that can be refused is checked before the run is recorded: an unknown or unfinished parent, a device
this machine lacks, a design that does not fit the parent's model, weights that do not load.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from engine.analysis.runs import RunError, get_run, load_run_layer

INIT_FILE = "init.pt"
LR_SCALE = 1 / 3  # default fine-tuning peak learning rate: this share of the parent's
TRUNCATION_FILE = "truncation.json"


def child_state(parent_id: str, result: Any, runs_dir: str | Path | None = None, config: Any = None
                ) -> tuple[dict[str, Any], Any]:
    """The child run's initial model state dict and its config: the parent's checkpoint with the TN layer's
    entries (under every name the model registers it) replaced by ``result``'s cores and the parent's bias."""
    from engine.analysis.runs import _checkpoint
    from engine.train.config import RunConfig
    from engine.train.data import load_dataset
    from engine.train.models import build_model

    layer = load_run_layer(parent_id, runs_dir)
    config = config or RunConfig.from_dict(layer.config)
    try:
        data = load_dataset(config.dataset, config.data_dir)
        model = build_model(config, data, result.design)
    except (ValueError, FileNotFoundError) as e:
        raise RunError(f"the truncated design cannot replace run {layer.run_id}'s layer: {e}") from None
    _, parent_state = _checkpoint(get_run(layer.run_id, runs_dir))
    names = [n for n, m in model.named_modules(remove_duplicate=False) if m is model.tn_layer and n]
    own = result.state_dict(bias=layer.state.get("bias"))
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        prefix = next((n + "." for n in names if key.startswith(n + ".")), None)
        if prefix is not None:
            state[key] = own[key[len(prefix):]].to(value.dtype)
        elif key in parent_state and tuple(parent_state[key].shape) == tuple(value.shape):
            state[key] = parent_state[key].detach().clone()
        else:
            raise RunError(f"run {layer.run_id}'s checkpoint has no entry {key} of shape {tuple(value.shape)}: the "
                           f"truncated layer does not fit the parent's model")
    model.load_state_dict(state, strict=True)  # proves that the child's trainer will load it
    return state, config


def finetune(parent_id: str, result: Any, epochs: int = 3, runs_dir: str | Path | None = None,
             lr: float | None = None, name: str | None = None) -> str:
    """Launch the fine-tuning of ``result`` (a truncation of run ``parent_id``'s layer) as a child run; returns its
    id. ``lr``: the peak learning rate (default: :data:`LR_SCALE` x the parent's). The run trains in its own
    process: follow it with :func:`engine.train.launcher.wait` or the studio."""
    from engine.nn.export import save_weights
    from engine.train.config import RunConfig
    from engine.train.data import check_dataset
    from engine.train.launcher import start_process
    from engine.train.models import check_fit
    from engine.train.store import RunStore

    parent = get_run(parent_id, runs_dir)
    if parent["status"] in ("queued", "running"):
        raise RunError(f"run {parent['id']} is {parent['status']}: fine-tune once it has ended")
    if (parent.get("config") or {}).get("network"):  # the child would have to be a network run with that layer
        raise RunError(f"run {parent['id']} trained a whole network: fine-tuning one truncated layer of it is not "
                       f"supported yet; assign the truncated design to the layer (tnstudio network assign NET "
                       f"--layer NAME --design FILE) and train the network")
    base = RunConfig.from_dict(parent.get("config") or {})
    changes: dict[str, Any] = {"epochs": epochs, "init_from": INIT_FILE, "max_steps": None, "baseline": False,
                               "lr": lr if lr is not None else base.lr * LR_SCALE}
    config = dataclasses.replace(base, **changes)  # ConfigError (a ValueError) for a bad epochs or lr
    config.check_device()
    check_dataset(config.dataset, config.data_dir)
    result.design.check()
    check_fit(config, result.design)
    state, config = child_state(parent["id"], result, runs_dir, config)
    store = RunStore(runs_dir)
    name = name or (f"{parent.get('name') or parent['id']} truncated {result.params_before:,}->"
                    f"{result.params_after:,}, fine-tune")
    run_id = store.create_run(config, result.design, name=name, parent=parent["id"])
    folder = store.run_dir(run_id)
    try:
        save_weights(state, folder / INIT_FILE)
        (folder / TRUNCATION_FILE).write_text(json.dumps(dict(result.to_dict(), parent=parent["id"]), indent=2))
    except OSError as e:
        store.set_status(run_id, "failed", f"could not write the initial weights: {e}")
        raise
    start_process(run_id, store)
    return run_id


def truncation_record(run_id: str, runs_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The truncation a child run was made from (``truncation.json``), or None for other runs."""
    from engine.train.store import RunStore

    store = RunStore(runs_dir)
    path = store.run_dir(store.resolve(run_id)) / TRUNCATION_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
