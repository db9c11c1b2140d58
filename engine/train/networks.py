"""Training whole networks: the glue between network files (:mod:`engine.network`) and the training engine.

A run trains a network when its :class:`~engine.train.config.RunConfig` has ``network`` (the network file's JSON,
every design inline, so the run store records exactly what was trained) and ``model == "network"``. The model kind
``network`` (:mod:`engine.train.models`) builds it with :func:`build_for_run`; ``baseline`` trains the same
architecture all dense. Everything else is the ordinary training path: the run store, checkpoints, resume, DDP
with ``--nproc`` and torchrun (:func:`engine.train.loop.torchrun_main`), CUDA and AMP.

- :func:`network_config` -> a RunConfig for a network spec (designs resolved inline, input shape checked against
  the data set);
- :func:`check_network_fit`: the data set's input shape and classes must be the network's (no torch);
- :func:`memory_estimate`: bytes of one training process by the whole-network report (no allocation);
- :func:`launch_network`: check, record and start a run in its own process (as :func:`engine.train.launcher.launch`);
- :func:`tn_layer_totals`: how many TN layers a run's network has, their core params and the dense weights they
  replace (no torch: what the studio's run table shows for a network run);
- :func:`tn_layers` / :func:`tn_layer_names`: a run's recorded TN layers, parsed (designs) or only named (cheap).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from engine.network.format import NetworkSpec

if TYPE_CHECKING:
    from torch import nn

    from engine.design.model import Design
    from engine.train.config import RunConfig
    from engine.train.data import DatasetSpec


def network_config(spec: NetworkSpec, **fields: Any) -> "RunConfig":
    """A run config that trains ``spec`` (rules and by-path designs resolved into inline designs, checked against
    the architecture); ``fields`` are the other RunConfig fields (dataset, epochs, ...)."""
    from engine.network.analysis import analyse
    from engine.train.config import RunConfig

    resolved = spec.resolved_copy(analyse(spec).layers)
    return RunConfig(**{**fields, "model": "network", "network": resolved.to_dict(inline=True)})


@dataclass(frozen=True)
class TNLayerTotals:
    """A network's TN layers counted together."""

    layers: int  # how many layers a design replaces
    core_params: int  # their cores' parameters
    dense_weights: int  # the dense weights those layers had

    @property
    def compression(self) -> float | None:
        return self.dense_weights / self.core_params if self.core_params else None

    @property
    def label(self) -> str:
        """``"2 TN layers"``."""
        return f"{self.layers} TN layer{'s' if self.layers != 1 else ''}"


def tn_layers(network: Mapping[str, Any]) -> dict[str, "Design"]:
    """Module name -> design of the TN layers of a network file whose designs are inline (a network run's
    ``config.network``, recorded resolved); :class:`~engine.network.format.NetworkError` for one that is not a
    network file."""
    return {name: a.design for name, a in NetworkSpec.from_dict(dict(network)).layers.items() if a.design is not None}


def tn_layer_names(network: Any) -> list[str]:
    """The names :func:`tn_layers` would give, read off the JSON without validating it (for listings polled often:
    a VGG-16 network parses in about 9 ms); [] for anything that is not a network's JSON."""
    layers = network.get("layers") if isinstance(network, Mapping) else None
    if not isinstance(layers, Mapping):
        return []
    return [name for name, a in layers.items() if isinstance(a, Mapping) and a.get("design")]


def tn_layer_totals(network: Mapping[str, Any]) -> TNLayerTotals:
    """:class:`TNLayerTotals` of a network file whose designs are inline (a network run's ``config.network``);
    :class:`~engine.network.format.NetworkError` for one that is not a network file."""
    designs = list(tn_layers(network).values())
    return TNLayerTotals(len(designs), sum(d.params for d in designs),
                         sum(d.in_features * d.out_features for d in designs))


def check_network_fit(config: "RunConfig", data: "DatasetSpec", design: "Design | None") -> None:
    """:class:`~engine.train.models.ModelError` when the network does not take the data set's examples."""
    from engine.train.models import ModelError

    if design is not None:
        raise ModelError("a network run takes its designs from the network file: give no separate design")
    spec = NetworkSpec.from_dict(config.network)
    shape = tuple(spec.resolved_input_shape)
    if shape != tuple(data.input_shape):
        raise ModelError(f"network {spec.name!r} takes examples of shape {list(shape)} but {data.name} gives "
                         f"{list(data.input_shape)}: make the network for it (tnstudio network new "
                         f"{spec.architecture.label} --dataset {data.name})")
    classes = spec.resolved_num_classes
    if data.task == "classification" and classes is not None and classes != data.num_outputs:
        raise ModelError(f"network {spec.name!r} has {classes} outputs but {data.name} has {data.num_outputs} "
                         f"classes: make the network with --classes {data.num_outputs}")


def build_for_run(config: "RunConfig") -> tuple["nn.Module", str]:
    """The model of a network run (dense everywhere with ``config.baseline``) and its description in words."""
    from engine.network.build import build_network

    spec = NetworkSpec.from_dict(config.network)
    model = build_network(spec, baseline=config.baseline)
    s = model.network_summary
    from engine.network.report import network_report

    rep = network_report(spec, batch=1)  # forward FLOPs per example (the trainer picks CPU threads by them)
    s["forward_flops"] = rep.totals.dense_forward_flops if config.baseline else rep.totals.forward_flops
    if config.baseline:  # the layers the TN run compresses, here dense: the comparison's "layer params"
        from engine.network.analysis import analyse
        from engine.network.format import resolve

        infos = {i.name: i for i in analyse(spec).layers}
        dense = sum(infos[n].dense_params for n, r in resolve(spec, list(infos.values())).items()
                    if r.design is not None)
        s.update(layer_params=dense, layer_dense_params=dense, layer_compression=1.0 if dense else None)
    arch = (f"{spec.architecture.label} {list(spec.resolved_input_shape)} -> {spec.resolved_num_classes}, "
            f"{s['tn_layers']} TN layers" + (" (dense baseline)" if config.baseline else ""))
    model.tn_layer = None
    return model, arch


def memory_estimate(config: "RunConfig", eval_batch: int = 1024) -> dict[str, int]:
    """Bytes one training process needs by the whole-network report: ``layer`` (the TN layers' share: training
    memory minus the dense parts), ``rest``, ``init`` (calibrating nonlinear designs on W) and ``total``."""
    from engine.contract.cost import init_memory_bytes
    from engine.network.report import network_report

    spec = NetworkSpec.from_dict(config.network)
    per_rank = max(1, -(-config.batch_size // config.nproc))
    train = network_report(spec, batch=per_rank)
    evaluation = network_report(spec, batch=eval_batch)  # Trainer.evaluate's batch (forward only)
    t = train.totals
    if config.baseline:
        total, init = max(t.dense_train_bytes, evaluation.totals.dense_inference_bytes), 0
    else:
        total = max(t.train_bytes, evaluation.totals.inference_bytes)
        init = max((init_memory_bytes(a.design) for a in spec.layers.values() if a.design is not None), default=0)
    return {"layer": 0, "rest": total, "init": init, "total": total}


def launch_network(spec: NetworkSpec, runs_dir: str | os.PathLike | None = None, name: str | None = None,
                   parent: str | None = None, **fields: Any) -> str:
    """Check, record and start a run training ``spec`` (``fields``: RunConfig fields); returns the run id."""
    from engine.train.launcher import launch

    config = network_config(spec, **fields)
    label = name or f"{spec.name} on {config.dataset}" + (" (dense baseline)" if config.baseline else "")
    return launch(config, None, runs_dir, name=label, parent=parent)
