"""Models for training runs: an MLP and a small CNN in which one layer is a tensor-network layer from a design.

``build_model(config, dataset, design) -> nn.Module``. With ``config["baseline"]`` the TN layer is replaced by
an ``nn.Linear`` of the same shape (the dense baseline); without a design every layer is dense.

- ``mlp``: ``in -> hidden[0] -> ... -> outputs`` with ``config["hidden_activation"]`` (default relu) between
  layers. Layer ``k`` maps ``sizes[k] -> sizes[k+1]`` where ``sizes = [in] + hidden + [outputs]``; the design
  replaces layer ``config["layer"]`` and must match its shape. With ``hidden`` unset the sizes are built around
  the design (e.g. a 256x256 design on digits gives ``64 -> 256 -> [TN 256x256] -> 10``); with ``layer`` unset
  the first layer of the design's shape is used.
- ``cnn``: two 3x3 conv layers (32 and 64 channels, ReLU, max-pool) and an adaptive average pool to 4x4, so the
  classifier always sees :data:`CNN_FEATURES` = 1024 features whatever the image size. The design is the
  classifier's first layer (``1024 -> design.out``), followed by ReLU and ``nn.Linear(design.out, classes)``
  unless the design already outputs the classes.

Every model has ``model.tn_layer`` (the design's layer, TN or its dense baseline; None without a design) and
``model.summary`` (a JSON-able description).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from engine.train.config import MODELS
from engine.train.data import Dataset
from engine.design.model import Design

CNN_CHANNELS = (32, 64)
CNN_POOL = 4
CNN_FEATURES = CNN_CHANNELS[-1] * CNN_POOL * CNN_POOL
HIDDEN_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class ModelError(ValueError):
    """A model that cannot be built as asked (design does not fit, unknown model, ...)."""


def _design_layer(design: Design, baseline: bool) -> nn.Module:
    if baseline:
        return nn.Linear(design.in_features, design.out_features)
    from engine.nn.linear import TNLinear

    return TNLinear(design, bias=True)


def _activation(name: str) -> nn.Module:
    if name not in HIDDEN_ACTIVATIONS:
        raise ModelError(f"unknown hidden activation {name!r}: choose one of {', '.join(HIDDEN_ACTIVATIONS)}")
    return HIDDEN_ACTIVATIONS[name]()


def mlp_plan(in_features: int, out_features: int, design: Design | None, hidden: list[int] | None = None,
             layer: int | None = None) -> tuple[list[int], int | None]:
    """Hidden sizes and the index of the design's layer; :class:`ModelError` names the sizes when it does not fit."""
    if design is None:
        return (list(hidden) if hidden is not None else [256, 256]), None
    di, do = design.in_features, design.out_features
    if hidden is None:
        if di == in_features and do == out_features:
            hidden, auto = [], 0
        elif di == in_features:
            hidden, auto = [do], 0
        elif do == out_features:
            hidden, auto = [di], 1
        else:
            hidden, auto = [di, do], 1
        if layer is not None and layer != auto:
            plan = " -> ".join(map(str, [in_features] + hidden + [out_features]))
            raise ModelError(f"with hidden sizes built around the design ({plan}) the design {di}x{do} is "
                             f"layer {auto}, not {layer}: give hidden sizes to place it elsewhere")
        return hidden, auto
    sizes = [in_features] + list(hidden) + [out_features]
    shapes = [f"layer {k}: {sizes[k]} -> {sizes[k + 1]}" for k in range(len(sizes) - 1)]
    if layer is None:
        fits = [k for k in range(len(sizes) - 1) if (sizes[k], sizes[k + 1]) == (di, do)]
        if not fits:
            raise ModelError(f"no layer of the MLP {' -> '.join(map(str, sizes))} has the design's shape "
                             f"{di} -> {do} ({'; '.join(shapes)}): change the hidden sizes or make a design "
                             f"that fits one of these layers")
        return list(hidden), fits[0]
    if not 0 <= layer < len(sizes) - 1:
        raise ModelError(f"layer {layer} does not exist: the MLP {' -> '.join(map(str, sizes))} has layers "
                         f"0..{len(sizes) - 2}")
    if (sizes[layer], sizes[layer + 1]) != (di, do):
        raise ModelError(f"layer {layer} of the MLP expects in_features={sizes[layer]}, "
                         f"out_features={sizes[layer + 1]} but the design '{design.name}' has "
                         f"in_features={di}, out_features={do}")
    return list(hidden), layer


class MLP(nn.Module):
    """A multilayer perceptron; layer ``layer`` (if any) is the design's layer."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int, layer: int | None = None,
                 design: Design | None = None, baseline: bool = False, activation: str = "relu"):
        super().__init__()
        sizes = [in_features] + list(hidden) + [out_features]
        layers: list[nn.Module] = []
        self.tn_layer: nn.Module | None = None
        for k in range(len(sizes) - 1):
            if k == layer and design is not None:
                lin = _design_layer(design, baseline)
                self.tn_layer = lin
            else:
                lin = nn.Linear(sizes[k], sizes[k + 1])
            layers.append(lin)
            if k < len(sizes) - 2:
                layers.append(_activation(activation))
        self.net = nn.Sequential(*layers)
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _check_cnn_design(design: Design) -> None:
    if design.in_features != CNN_FEATURES:
        raise ModelError(f"the CNN's classifier takes {CNN_FEATURES} features ({CNN_CHANNELS[-1]} channels x "
                         f"{CNN_POOL} x {CNN_POOL}) but the design '{design.name}' has in_features="
                         f"{design.in_features}: make a design with in_features={CNN_FEATURES}")


class SmallCNN(nn.Module):
    """Two conv blocks and a classifier whose first layer is the design's (``CNN_FEATURES -> design.out``)."""

    def __init__(self, in_channels: int, num_outputs: int, design: Design | None = None, baseline: bool = False,
                 hidden: int = 256, activation: str = "relu"):
        super().__init__()
        c1, c2 = CNN_CHANNELS
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(CNN_POOL))
        self.tn_layer: nn.Module | None = None
        if design is not None:
            _check_cnn_design(design)
            self.tn_layer = _design_layer(design, baseline)
            head: list[nn.Module] = [self.tn_layer]
            if design.out_features != num_outputs:
                head += [_activation(activation), nn.Linear(design.out_features, num_outputs)]
        else:
            head = [nn.Linear(CNN_FEATURES, hidden), _activation(activation), nn.Linear(hidden, num_outputs)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def build_model(config: dict[str, Any], dataset: Dataset, design: Design | None = None) -> nn.Module:
    """The model a run config asks for (see the module docstring); ``ModelError`` when it cannot be built."""
    kind = config.get("model", "mlp")
    baseline = bool(config.get("baseline", False))
    act = config.get("hidden_activation", "relu")
    if kind == "mlp":
        hidden, layer = mlp_plan(dataset.in_features, dataset.num_outputs, design, config.get("hidden"),
                                 config.get("layer"))
        model: nn.Module = MLP(dataset.in_features, hidden, dataset.num_outputs, layer, design, baseline, act)
        arch = " -> ".join(map(str, model.sizes)) + (f" (layer {layer} is the design's)" if layer is not None
                                                      else "")
    elif kind == "cnn":
        if not dataset.is_image:
            raise ModelError(f"the CNN needs an image data set (digits, mnist, fashion_mnist, cifar10), "
                             f"not {dataset.name}")
        model = SmallCNN(dataset.input_shape[0], dataset.num_outputs, design, baseline, activation=act)
        layer = None
        arch = f"conv{CNN_CHANNELS} -> {CNN_FEATURES} -> " + (
            f"{design.out_features}" if design is not None else "256") + f" -> {dataset.num_outputs}"
    else:
        raise ModelError(f"unknown model {kind!r}: choose one of {', '.join(MODELS)}")
    layer_params = count_params(model.tn_layer)
    dense_layer = (design.in_features * design.out_features + design.out_features) if design is not None else 0
    model.summary = {
        "model": kind, "architecture": arch, "layer": layer, "baseline": baseline,
        "params": count_params(model), "layer_params": layer_params, "layer_dense_params": dense_layer,
        "layer_compression": (dense_layer / layer_params) if layer_params else None,
        "design_compression": design.compression if design is not None else None,
    }
    return model


def check_fit(config: dict[str, Any], design: Design | None) -> None:
    """Raise :class:`ModelError` when the design does not fit the model and data set a config asks for,
    without loading any data."""
    from engine.train.data import DATASET_SHAPES, dataset_name

    shape, outputs, _task = DATASET_SHAPES[dataset_name(config.get("dataset", "digits"))]
    kind = config.get("model", "mlp")
    if kind == "mlp":
        mlp_plan(math.prod(shape), outputs, design, config.get("hidden"), config.get("layer"))
    elif kind == "cnn":
        if len(shape) != 3:
            raise ModelError(f"the CNN needs an image data set (digits, mnist, fashion_mnist, cifar10), "
                             f"not {config.get('dataset')}")
        if design is not None:
            _check_cnn_design(design)
    else:
        raise ModelError(f"unknown model {kind!r}: choose one of {', '.join(MODELS)}")


def layer_shape_hint(config: dict[str, Any], dataset: Dataset) -> str:
    """Which design shapes fit the model a config asks for, in words (for error messages and the studio)."""
    if config.get("model", "mlp") == "cnn":
        return f"in_features={CNN_FEATURES}, any out_features"
    hidden = config.get("hidden")
    if hidden is None:
        return f"any shape (the MLP is built around it: {dataset.in_features} in, {dataset.num_outputs} out)"
    sizes = [dataset.in_features] + list(hidden) + [dataset.num_outputs]
    return "; ".join(f"layer {k}: {sizes[k]}x{sizes[k + 1]}" for k in range(len(sizes) - 1))

