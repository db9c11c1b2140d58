"""A training run's trained TN layer and the inputs it sees (reads the run store; never writes it).

:func:`load_run_layer` gives the run's design and the layer's state dict (``cores.<key>``, ``bias``) from its
checkpoint; :func:`run_layer_inputs` rebuilds the run's model, loads the checkpoint and records what reaches the TN
layer for a data set's samples (the layer's inputs, not the raw data: an MLP or CNN may come before it).
Problems a user can cause (unknown run, no checkpoint, a dense run, a data set that does not fit) raise
:class:`RunError` with one clear sentence.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from engine.design.model import Design, DesignError
from engine.format import first_line, torch_load_reason


class RunError(ValueError):
    """A run that cannot be analysed as asked; the message says why."""


@dataclass(frozen=True)
class RunLayer:
    """A run's trained TN layer: its design and state dict (``cores.<key>``, copy buffers, ``bias``)."""

    run_id: str
    name: str
    status: str
    design: Design
    state: dict[str, Any]
    checkpoint: Path
    config: dict[str, Any]
    module: str | None = None  # a network run's TN layer: its module name in the model (None: a one-layer run)


@dataclass(frozen=True)
class LayerInputs:
    """What reaches a run's TN layer for some samples: ``x`` (``N x in_features``) and the samples' labels."""

    x: Any
    labels: Any
    dataset: str
    split: str
    classification: bool
    num_classes: int


def _store(runs_dir: str | Path | None):
    from engine.train.store import existing_store

    return existing_store(runs_dir)  # reading: a mistyped --runs-dir is refused, not made


def _checkpoint(run: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    import torch

    path = run.get("checkpoint")
    if not path or not Path(path).is_file():
        raise RunError(f"run {run['id']} ({run['status']}) has no checkpoint yet: its weights are saved at each "
                       f"evaluation and at the end")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types; the user gets the one-line reason
        raise RunError(f"run {run['id']}'s checkpoint {path} is damaged: torch cannot load it with "
                       f"weights_only=True ({torch_load_reason(e)})") from None
    model = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(model, dict):
        raise RunError(f"{path}: the checkpoint holds no model state dict")
    from engine.nn.state import state_problem

    problem = state_problem(model)
    if problem:
        raise RunError(f"run {run['id']}'s checkpoint {path}: {problem}")
    return Path(path), model


def get_run(run_id: str, runs_dir: str | Path | None = None) -> dict[str, Any]:
    """The run record (an id prefix is enough); :class:`RunError` when there is no such run."""
    from engine.train.store import RunNotFound

    try:
        return _store(runs_dir).get_run(run_id)
    except RunNotFound as e:
        raise RunError(f"{e}: `tnstudio runs list` lists the runs") from None


def load_run_layer(run_id: str, runs_dir: str | Path | None = None, design: Design | None = None,
                   prefix: str | None = None) -> RunLayer:
    """The run's design (or ``design``, which must match the trained cores) and its trained layer's state dict."""
    return load_run_model(run_id, runs_dir, design, prefix)[0]


def load_run_model(run_id: str, runs_dir: str | Path | None = None, design: Design | None = None,
                   prefix: str | None = None) -> tuple[RunLayer, dict[str, Any]]:
    """:func:`load_run_layer`'s layer and the whole model's state dict from the same read of the checkpoint (for
    callers that rebuild the model: a network run's checkpoint can be hundreds of MB)."""
    from engine.nn.export import layer_state_dict

    run = get_run(run_id, runs_dir)
    module = None
    network = (run.get("config") or {}).get("network")
    if design is None and not run.get("design") and network and not (run.get("config") or {}).get("baseline"):
        design, module = network_layer(run["id"], network, prefix)
        prefix = module + "."
    if design is None:
        if not run.get("design"):
            raise RunError(f"run {run['id']} trained a dense model (no design): it has no bonds to analyse")
        try:
            design = Design.from_dict(run["design"])
        except DesignError as e:
            raise RunError(f"run {run['id']}: its design is invalid: {e}") from None
    if (run.get("config") or {}).get("baseline"):
        raise RunError(f"run {run['id']} is a dense baseline: its layer is an nn.Linear, not the design")
    path, model = _checkpoint(run)
    try:
        state = layer_state_dict(model, design, prefix)
    except ValueError as e:
        raise RunError(f"run {run['id']}: {e}") from None
    return RunLayer(run["id"], run.get("name") or run["id"], run.get("status", "?"), design, state, path,
                    dict(run.get("config") or {}), module), model


def network_layer(run_id: str, network: dict[str, Any], layer: str | None) -> tuple[Design, str]:
    """A network run's TN layer to analyse: ``layer`` (its module name, ``fc2`` or ``fc2.``; an attention
    projection such as ``blocks.0.attn.q_proj``), or the network's only TN layer; its design and module name."""
    from engine.network.format import NetworkError
    from engine.train.networks import tn_layers

    try:
        tn = tn_layers(network)
    except NetworkError as e:
        raise RunError(f"run {run_id}: its recorded network is invalid: {e}") from None
    if not tn:
        raise RunError(f"run {run_id} trained network {network.get('name')!r} with every layer dense: it has no "
                       f"bonds to analyse")
    shown = ", ".join(list(tn)[:12]) + (f", ... ({len(tn)} in all)" if len(tn) > 12 else "")
    name = layer.rstrip(".") if layer else None
    if name is None:
        if len(tn) > 1:
            raise RunError(f"run {run_id}'s network has {len(tn)} TN layers ({shown}): name one with --layer NAME")
        name = next(iter(tn))
    if name not in tn:
        raise RunError(f"run {run_id}'s network has no TN layer {name!r} (its TN layers: {shown})")
    return tn[name], name


def _misfit(layer: RunLayer, data_name: str, saved: Mapping[str, Any], built: Mapping[str, Any],
            error: Exception) -> str:
    """Why a run's checkpoint does not load into its model built for ``data_name``: the first tensor whose shape
    differs (another data set's inputs or classes), else torch's first line."""
    trained = layer.config.get("dataset") or "its own data set"
    for key, value in saved.items():
        if key in built and tuple(value.shape) != tuple(built[key].shape):
            return (f"run {layer.run_id} was trained on {trained}, and its model does not fit {data_name}: "
                    f"{key} is {'x'.join(map(str, value.shape))} in the checkpoint, "
                    f"{'x'.join(map(str, built[key].shape))} for {data_name}'s inputs and outputs")
    return f"run {layer.run_id}'s checkpoint does not fit its model on {data_name} ({first_line(error)})"


def run_layer_inputs(run_id: str, runs_dir: str | Path | None = None, dataset: str | None = None,
                     splits: tuple[str, ...] = ("test",), limit: int | None = None,
                     batch: int = 512, layer_name: str | None = None,
                     loaded: tuple[RunLayer, dict[str, Any]] | None = None) -> dict[str, LayerInputs]:
    """What the run's TN layer receives for the samples of each of ``splits`` (``train``, ``test``) of ``dataset``
    (default: the run's own), at most ``limit`` per split, from the run's model with its checkpoint loaded
    (``loaded``: :func:`load_run_model`'s answer for this run, when the caller has read the checkpoint already)."""
    import torch

    from engine.train.config import RunConfig
    from engine.train.data import load_dataset
    from engine.train.models import build_model

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RunError(f"the number of samples must be an integer >= 1, got {limit!r}")
    bad = [s for s in splits if s not in ("train", "test")]
    if bad:
        raise RunError(f"splits must be train or test, got {', '.join(map(repr, bad))}")
    layer, state = loaded if loaded is not None else load_run_model(run_id, runs_dir, prefix=layer_name)
    if layer.design.conv is not None:
        raise RunError(f"run {layer.run_id}'s layer is a conv2d design: streaming its inputs (bond features) takes "
                       f"a linear layer's rows, not images (spectra and truncation work on conv designs)")
    try:
        config = RunConfig.from_dict(layer.config)
        if dataset is not None:
            config = dataclasses.replace(config, dataset=dataset)
        data = load_dataset(config.dataset, config.data_dir)
        model = build_model(config, data, None if layer.module else layer.design)  # a network: from its file
    except (ValueError, FileNotFoundError) as e:  # ConfigError, DataError, ModelError are ValueErrors
        raise RunError(f"run {layer.run_id}: {e}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise RunError(_misfit(layer, data.name, state, model.state_dict(), e)) from None
    tn = model.get_submodule(layer.module) if layer.module else getattr(model, "tn_layer", None)
    if tn is None:
        raise RunError(f"run {layer.run_id}'s model has no TN layer")
    classification = getattr(data, "task", "classification") == "classification"
    seen: list[torch.Tensor] = []
    hook = tn.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().reshape(-1, tn.in_features)))
    model.eval()
    out: dict[str, LayerInputs] = {}
    try:
        for split in splits:
            xs = data.x_train if split == "train" else data.x_test
            ys = data.y_train if split == "train" else data.y_test
            if limit is not None:
                xs, ys = xs[:limit], ys[:limit]
            seen.clear()
            with torch.no_grad():
                for start in range(0, len(xs), batch):
                    model(xs[start:start + batch])
            x = torch.cat(seen) if seen else torch.zeros(0, tn.in_features)
            out[split] = LayerInputs(x, ys, data.name, split, classification, int(getattr(data, "num_outputs", 0)))
    finally:
        hook.remove()
    return out
