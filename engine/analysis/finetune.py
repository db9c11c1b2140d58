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

A whole network's run (``config.network``) works the same way for one of its TN layers (``layer``, its module
name; the only one by default): the child trains the parent's network with that layer's design replaced by the
truncated one (an inline override in the recorded network), from the parent's checkpoint with that layer's cores
truncated; every launch check of a network run applies (memory included).

Everything that can be refused is checked before the run is recorded: an unknown or unfinished parent, a device
this machine lacks, a design that does not fit the parent's model, weights that do not load.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from engine.analysis.runs import RunError, get_run, load_run_model, network_layer

INIT_FILE = "init.pt"
LR_SCALE = 1 / 3  # default fine-tuning peak learning rate: this share of the parent's
TRUNCATION_FILE = "truncation.json"


def child_state(parent_id: str, result: Any, runs_dir: str | Path | None = None, config: Any = None,
                layer: str | None = None) -> tuple[dict[str, Any], Any]:
    """The child run's initial model state dict and its config: the parent's checkpoint with the TN layer's
    entries (under every name the model registers it) replaced by ``result``'s cores and the parent's bias.
    ``layer``: a network run's TN layer (module name; the only one by default); ``config``: the child's (for a
    network, one whose network has the truncated design at that layer: :func:`network_child_config`)."""
    from engine.train.config import RunConfig
    from engine.train.data import load_dataset
    from engine.train.models import build_model

    parent, parent_state = load_run_model(parent_id, runs_dir, None, layer)
    if parent.module:
        config = config or network_child_config(RunConfig.from_dict(parent.config), parent.module, result)
    config = config or RunConfig.from_dict(parent.config)
    where = parent.module or "layer"
    try:
        data = load_dataset(config.dataset, config.data_dir)
        model = build_model(config, data, None if parent.module else result.design)
    except (ValueError, FileNotFoundError) as e:
        raise RunError(f"the truncated design cannot replace run {parent.run_id}'s {where}: {e}") from None
    tn = model.get_submodule(parent.module) if parent.module else model.tn_layer
    names = [n for n, m in model.named_modules(remove_duplicate=False) if m is tn and n]
    own = result.state_dict(bias=parent.state.get("bias"))
    state: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        prefix = next((n + "." for n in names if key.startswith(n + ".")), None)
        if prefix is not None:
            state[key] = own[key[len(prefix):]].to(value.dtype)
        elif key in parent_state and tuple(parent_state[key].shape) == tuple(value.shape):
            state[key] = parent_state[key].detach().clone()
        else:
            raise RunError(f"run {parent.run_id}'s checkpoint has no entry {key} of shape {tuple(value.shape)}: the "
                           f"truncated layer does not fit the parent's model")
    model.load_state_dict(state, strict=True)  # proves that the child's trainer will load it
    return state, config


def network_child_config(base: Any, module: str, result: Any) -> Any:
    """``base`` (a network run's config) training the same network with layer ``module``'s design replaced by
    ``result``'s truncated design (an inline override; the recorded rules stay, the override wins)."""
    from engine.network.format import NetworkError, NetworkSpec
    from engine.train.networks import tn_layers

    designs = tn_layers(base.network)
    old, new = designs[module], result.design
    if (old.in_features, old.out_features) != (new.in_features, new.out_features):
        raise RunError(f"the truncated design is {new.in_features}x{new.out_features} but layer {module} is "
                       f"{old.in_features}x{old.out_features}")
    try:
        spec = NetworkSpec.from_dict(base.network).with_layer(module, new)
    except NetworkError as e:
        raise RunError(f"the truncated design cannot replace layer {module}: {e}") from None
    return dataclasses.replace(base, network=spec.to_dict(inline=True))


def finetune(parent_id: str, result: Any, epochs: int = 3, runs_dir: str | Path | None = None,
             lr: float | None = None, name: str | None = None, layer: str | None = None) -> str:
    """Launch the fine-tuning of ``result`` (a truncation of run ``parent_id``'s layer) as a child run; returns its
    id. ``lr``: the peak learning rate (default: :data:`LR_SCALE` x the parent's). ``layer``: which TN layer of a
    network run was truncated (its module name; the only one by default). The run trains in its own process:
    follow it with :func:`engine.train.launcher.wait` or the studio."""
    from engine.nn.export import save_weights
    from engine.train.config import RunConfig
    from engine.train.data import check_dataset
    from engine.train.launcher import check_launch, start_process
    from engine.train.models import check_fit
    from engine.train.store import RunStore

    parent = get_run(parent_id, runs_dir)
    if parent["status"] in ("queued", "running"):
        raise RunError(f"run {parent['id']} is {parent['status']}: fine-tune once it has ended")
    base = RunConfig.from_dict(parent.get("config") or {})
    changes: dict[str, Any] = {"epochs": epochs, "init_from": INIT_FILE, "max_steps": None, "baseline": False,
                               "lr": lr if lr is not None else base.lr * LR_SCALE}
    result.design.check()
    module = None
    if base.network:  # one TN layer of a whole network: the child trains the network with that layer truncated
        if base.baseline:
            raise RunError(f"run {parent['id']} is a dense baseline: its layers are dense, none was truncated")
        _, module = network_layer(parent["id"], base.network, layer)  # the recorded network names it
        config = network_child_config(dataclasses.replace(base, **changes), module, result)
        # device, data, fit and the memory of a network run (init_from aside: the launcher would make it absolute
        # from this process's folder, and it names a file of the child's run folder, written below)
        checked, _, _ = check_launch(dataclasses.replace(config, init_from=None), None)
        config = dataclasses.replace(checked, init_from=INIT_FILE)
    else:
        if layer:
            raise RunError(f"run {parent['id']} trained one layer, not a network: it has no layer {layer!r} to name")
        config = dataclasses.replace(base, **changes)  # ConfigError (a ValueError) for a bad epochs or lr
        config.check_device()
        check_dataset(config.dataset, config.data_dir)
        check_fit(config, result.design)
    state, config = child_state(parent["id"], result, runs_dir, config, module)
    store = RunStore(runs_dir)
    where = f" {module}" if module else ""
    name = name or (f"{parent.get('name') or parent['id']}{where} truncated {result.params_before:,}->"
                    f"{result.params_after:,}, fine-tune")
    run_id = store.create_run(config, None if module else result.design, name=name, parent=parent["id"])
    folder = store.run_dir(run_id)
    record = dict(result.to_dict(), parent=parent["id"], **({"layer": module} if module else {}))
    try:
        save_weights(state, folder / INIT_FILE)
        (folder / TRUNCATION_FILE).write_text(json.dumps(record, indent=2))
    except OSError as e:
        store.set_status(run_id, "failed", f"could not write the initial weights: {e}")
        raise
    start_process(run_id, store)
    return run_id


def truncation_record(run_id: str, runs_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The truncation a child run was made from (``truncation.json``), or None for other runs (and for a file that
    is unreadable or not a JSON object: the record is informational, the run itself stands)."""
    from engine.train.store import RunStore

    store = RunStore(runs_dir)
    path = store.run_dir(store.resolve(run_id)) / TRUNCATION_FILE
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None
