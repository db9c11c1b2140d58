"""A torch model from a network file: the architecture, with every assigned layer a TN layer.

- :func:`build_network` builds the dense architecture (seeded by torch's global generator), optionally loads a
  dense state dict, then :func:`tensorize` swaps the assigned layers.
- :func:`tensorize` works on any model instance (e.g. a trained one): each ``nn.Linear`` with a design becomes an
  :class:`~engine.nn.TNLinear`, each ``nn.Conv2d`` with a conv2d design a :class:`~engine.nn.conv.TNConv2d`; each ``nn.MultiheadAttention`` with a design on any of its projections becomes a
  :class:`~engine.network.attention.TNMultiheadAttention` whose assigned projections are TN layers and whose other
  projections are the unpacked dense ones. With ``state_dict`` (dense weights, loaded first) or ``pretrained=True``
  each TN layer is fitted to the dense weight it replaces (:meth:`TNLinear.from_linear`: TT-SVD for chains, else
  a fit); otherwise TN layers start fresh (``nn.Linear``-like initialisation).

The built model carries ``model.network_summary`` (parameters of the whole model and of its TN layers, dense and
TN), which the training run records.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from engine.network.format import NetworkSpec, resolve
from engine.network.layers import ATTENTION_PROJECTIONS, discover

if TYPE_CHECKING:
    import torch
    from torch import nn


def _parent(model: "nn.Module", name: str) -> tuple["nn.Module", str]:
    parent, _, child = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


def tensorize(model: "nn.Module", network: NetworkSpec, state_dict: Mapping[str, "torch.Tensor"] | None = None,
              pretrained: bool | None = None, init: bool = True, **fit: Any) -> dict[str, dict[str, Any]]:
    """Swap ``model``'s layers for TN layers as ``network`` assigns them, in place (see the module docstring).

    ``fit``: options of :meth:`TNLinear.from_linear` (method, steps, lr, seed). ``init=False`` leaves fresh TN
    layers' cores zero (for shape-only models on the meta device). Returns, per swapped layer, the parameters before
    and after and, when fitted, the fit report (relative error).
    """
    from torch import nn

    from engine.network.attention import TNMultiheadAttention
    from engine.nn.conv import TNConv2d
    from engine.nn.linear import TNLinear

    if state_dict is not None:
        model.load_state_dict(state_dict)
    if pretrained is None:
        pretrained = state_dict is not None
    infos = discover(model)
    assigned = {n: r.design for n, r in resolve(network, infos).items() if r.design is not None}
    by_name = {i.name: i for i in infos}
    report: dict[str, dict[str, Any]] = {}

    def make(dense: nn.Module, name: str) -> nn.Module:
        design = assigned[name]
        cls = TNConv2d if design.conv is not None else TNLinear  # conv2d designs replace nn.Conv2d layers
        if pretrained:
            new = (TNConv2d.from_conv if design.conv is not None else TNLinear.from_linear)(dense, design, **fit)
            report[name] = {"fit": dict(new.fit_report)}
        else:
            new = cls(design, bias=dense.bias is not None, device=dense.weight.device, dtype=dense.weight.dtype,
                      seed=fit.get("seed") if init else 0, init=init)
            report[name] = {}
        report[name].update(params_before=sum(p.numel() for p in dense.parameters()),
                            params_after=sum(p.numel() for p in new.parameters()))
        return new

    groups: dict[str, list[str]] = {}
    for name in assigned:
        info = by_name[name]
        if info.group:
            groups.setdefault(info.group, []).append(name)
            continue
        parent, child = _parent(model, name)
        setattr(parent, child, make(model.get_submodule(name), name))
    for group in groups:
        mha = model.get_submodule(group)
        att = TNMultiheadAttention.from_mha(mha)
        for proj in ATTENTION_PROJECTIONS:
            name = f"{group}.{proj}"
            if name in assigned:
                setattr(att, proj, make(getattr(att, proj), name))
        att.train(mha.training)
        parent, child = _parent(model, group)
        setattr(parent, child, att)
    return report


def network_summary(model: "nn.Module", network: NetworkSpec, dense_params: int | None = None) -> dict[str, Any]:
    """Parameters of the whole model and of its TN layers (cores + biases), against their dense sizes."""
    from engine.nn.conv import TNConv2d
    from engine.nn.linear import TNLinear

    params = sum(p.numel() for p in model.parameters())
    tn = [m for m in model.modules() if isinstance(m, (TNLinear, TNConv2d))]
    tn_params = sum(sum(p.numel() for p in m.parameters()) for m in tn)
    tn_dense = sum(m.in_features * m.out_features + (m.out_features if m.bias is not None else 0) for m in tn)
    cores = sum(m.design.params for m in tn)
    weights = sum(m.in_features * m.out_features for m in tn)
    dense = dense_params if dense_params is not None else params - tn_params + tn_dense
    return {"network": network.name, "architecture": network.architecture.label, "tn_layers": len(tn),
            "params": params, "dense_params": dense, "compression": dense / max(params, 1),
            "layer_params": tn_params, "layer_dense_params": tn_dense,
            "layer_compression": (tn_dense / tn_params) if tn_params else None,
            "design_compression": (weights / cores) if cores else None}


def build_network(network: NetworkSpec, baseline: bool = False,
                  state_dict: Mapping[str, "torch.Tensor"] | None = None, device: "torch.device | str | None" = None,
                  init: bool = True, **fit: Any) -> "nn.Module":
    """The model of ``network`` (dense everywhere with ``baseline``); ``state_dict``: dense weights to start from
    (TN layers are then fitted to them). Seeded by torch's global generator (call ``torch.manual_seed`` first).
    Under ``with torch.device("meta")`` and ``init=False`` it builds a shape-only model (e.g. to count FLOPs)."""
    from engine.network.catalogue import build_architecture

    model = build_architecture(network.architecture, network.resolved_input_shape,
                               network.resolved_num_classes or 1)
    dense = sum(p.numel() for p in model.parameters())
    if baseline:
        if state_dict is not None:
            model.load_state_dict(state_dict)
        report: dict[str, Any] = {}
    else:
        report = tensorize(model, network, state_dict, init=init, **fit)
    if device is not None:
        model.to(device)
    model.network_summary = network_summary(model, network, dense)
    model.tensorize_report = report
    return model
