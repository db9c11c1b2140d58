"""Model kinds for training runs, from one registry: a model in which one layer is the design's.

``build_model(config, dataset, design) -> nn.Module``. With ``config.baseline`` the TN layer is replaced by an
``nn.Linear`` of the same shape (the dense baseline); without a design every layer is dense.

Each kind is registered once with :func:`register_model` on its builder, as a :class:`ModelKind` (name,
description, whether it needs images, a fit check that needs neither data nor torch). The CLI's ``--model``
choices, the run config's check and :func:`check_fit` read the registry. This module does not import torch: the
builders import the modules of :mod:`engine.train.nets` when they run.

- ``mlp``: ``in -> hidden[0] -> ... -> outputs`` with ``config.hidden_activation`` between layers. Layer ``k``
  maps ``sizes[k] -> sizes[k+1]`` where ``sizes = [in] + hidden + [outputs]``; the design replaces layer
  ``config.layer`` and must match its shape. With ``hidden`` unset the sizes are built around the design (e.g. a
  256x256 design on digits gives ``64 -> 256 -> [TN 256x256] -> 10``); with ``layer`` unset the first layer of
  the design's shape is used.
- ``cnn``: two 3x3 conv layers (32 and 64 channels, ReLU, max-pool) and an adaptive average pool to 4x4, so the
  classifier always sees :data:`CNN_FEATURES` = 1024 features whatever the image size. A linear design is the
  classifier's first layer (``1024 -> design.out``), followed by the activation and
  ``nn.Linear(design.out, classes)`` unless the design already outputs the classes. A conv2d design is the second
  conv layer (``32 -> 64`` channels, any kernel, stride, padding and dilation that leave an output; it sees the
  image at half size after the first block's max-pool): a :class:`~engine.nn.conv.TNConv2d`, or its ``nn.Conv2d``
  as the dense baseline.

Every model has ``model.tn_layer`` (the design's layer, TN or its dense baseline; None without a design) and
``model.summary`` (a JSON-able description).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from engine.design.model import Design
from engine.train.data import Dataset, DatasetSpec, dataset_spec, dataset_specs

if TYPE_CHECKING:
    from torch import nn

    from engine.train.config import RunConfig

CNN_CHANNELS = (32, 64)
CNN_POOL = 4
CNN_FEATURES = CNN_CHANNELS[-1] * CNN_POOL * CNN_POOL
HIDDEN_ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "tanh": "Tanh", "silu": "SiLU"}  # name -> torch.nn class


class ModelError(ValueError):
    """A model that cannot be built as asked (design does not fit, unknown model, ...)."""


@dataclass(frozen=True)
class Built:
    """What a model kind's builder returns."""

    module: nn.Module
    layer: int | None  # index of the design's layer (MLP), None otherwise
    architecture: str  # in words, for the summary


Builder = Callable[["RunConfig", Dataset, "Design | None"], Built]
FitCheck = Callable[["RunConfig", DatasetSpec, "Design | None"], None]


@dataclass(frozen=True)
class ModelKind:
    """A registered model kind (see the module docstring)."""

    name: str
    description: str
    images_only: bool
    check: FitCheck  # raises ModelError when the design does not fit; needs neither data nor torch
    build: Builder


_KINDS: dict[str, ModelKind] = {}


def register_model(name: str, *, description: str, check: FitCheck, images_only: bool = False
                   ) -> Callable[[Builder], Builder]:
    """Decorator registering ``build(config, dataset, design) -> Built`` as model kind ``name``."""
    if name in _KINDS:
        raise ValueError(f"model kind {name!r} is already registered")

    def decorate(build: Builder) -> Builder:
        _KINDS[name] = ModelKind(name, description, images_only, check, build)
        return build

    return decorate


def model_kinds() -> tuple[ModelKind, ...]:
    return tuple(_KINDS.values())


def model_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def model_kind(name: str) -> ModelKind:
    """The registered kind ``name``, or :class:`ModelError` listing the known ones."""
    if name not in _KINDS:
        raise ModelError(f"unknown model {name!r}: choose one of {', '.join(_KINDS)}")
    return _KINDS[name]


# ----------------------------------------------------------------------------- the MLP
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


def _hidden(config: RunConfig) -> list[int] | None:
    return list(config.hidden) if config.hidden is not None else None


def _check_mlp(config: RunConfig, spec: DatasetSpec, design: Design | None) -> None:
    if design is not None and design.conv is not None:
        raise ModelError(f"'{design.name}' is a conv2d design: the MLP has no conv layer (use --model cnn, whose "
                         f"second conv layer it replaces, or a network file with conv rules)")
    mlp_plan(spec.in_features, spec.num_outputs, design, _hidden(config), config.layer)


@register_model("mlp", check=_check_mlp,
                description="an MLP built around the design (or --hidden sizes; --layer picks the design's layer)")
def build_mlp(config: RunConfig, dataset: Dataset, design: Design | None) -> Built:
    from engine.train.nets import MLP

    if design is not None and design.conv is not None:
        raise ModelError(f"'{design.name}' is a conv2d design: the MLP has no conv layer (use --model cnn)")
    hidden, layer = mlp_plan(dataset.in_features, dataset.num_outputs, design, _hidden(config), config.layer)
    model = MLP(dataset.in_features, hidden, dataset.num_outputs, layer, design, config.baseline,
                config.hidden_activation)
    arch = " -> ".join(map(str, model.sizes)) + (f" (layer {layer} is the design's)" if layer is not None else "")
    return Built(model, layer, arch)


# ----------------------------------------------------------------------------- the CNN
def cnn_conv_image(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """The image size the CNN's second conv layer (a conv2d design's place) sees: half the input's (max-pool)."""
    return max(input_shape[-2] // 2, 1), max(input_shape[-1] // 2, 1)


def _check_cnn_design(design: Design, input_shape: tuple[int, ...] | None = None) -> None:
    if design.conv is not None:
        c = design.conv
        if (c.in_channels, c.out_channels) != CNN_CHANNELS:
            raise ModelError(f"a conv2d design replaces the CNN's second conv layer, {CNN_CHANNELS[0]} -> "
                             f"{CNN_CHANNELS[1]} channels, but '{design.name}' is {c.in_channels} -> "
                             f"{c.out_channels}: make one with --in {CNN_CHANNELS[0]} --out {CNN_CHANNELS[1]} "
                             f"(e.g. --kernel 3 --padding 1)")
        if input_shape is not None and len(input_shape) == 3:
            h, w = cnn_conv_image(input_shape)
            ho, wo = c.out_size(h, w)
            if ho < 1 or wo < 1:
                raise ModelError(f"the CNN's second conv layer sees {h}x{w} images, smaller than the design "
                                 f"'{design.name}''s {c.label} needs (its output would be {ho}x{wo})")
        return
    if design.in_features != CNN_FEATURES:
        raise ModelError(f"the CNN's classifier takes {CNN_FEATURES} features ({CNN_CHANNELS[-1]} channels x "
                         f"{CNN_POOL} x {CNN_POOL}) but the design '{design.name}' has in_features="
                         f"{design.in_features}: make a design with in_features={CNN_FEATURES}")


def _check_cnn(config: RunConfig, spec: DatasetSpec, design: Design | None) -> None:
    if design is not None:
        _check_cnn_design(design, spec.input_shape)


@register_model("cnn", check=_check_cnn, images_only=True,
                description=f"two conv blocks, then the design as the classifier's first layer "
                            f"({CNN_FEATURES} -> design out), or a conv2d design as the second conv layer "
                            f"({CNN_CHANNELS[0]} -> {CNN_CHANNELS[1]} channels); images only")
def build_cnn(config: RunConfig, dataset: Dataset, design: Design | None) -> Built:
    from engine.train.nets import SmallCNN

    if design is not None:
        _check_cnn_design(design, dataset.input_shape)
    model = SmallCNN(dataset.input_shape[0], dataset.num_outputs, design, config.baseline,
                     activation_name=config.hidden_activation)
    if design is not None and design.conv is not None:
        arch = (f"conv({CNN_CHANNELS[0]}), TN {design.conv.label} -> {CNN_FEATURES} -> 256 -> "
                f"{dataset.num_outputs}")
    else:
        arch = f"conv{CNN_CHANNELS} -> {CNN_FEATURES} -> " + (
            f"{design.out_features}" if design is not None else "256") + f" -> {dataset.num_outputs}"
    return Built(model, None, arch)


# ----------------------------------------------------------------------------- a whole network
def _check_network(config: RunConfig, spec: DatasetSpec, design: Design | None) -> None:
    from engine.train.networks import check_network_fit

    check_network_fit(config, spec, design)


@register_model("network", check=_check_network,
                description="a whole network from a network file (tnstudio train NETWORK.json): every layer as the "
                            "file assigns it")
def build_network_model(config: RunConfig, dataset: Dataset, design: Design | None) -> Built:
    from engine.train.networks import build_for_run

    module, arch = build_for_run(config)
    return Built(module, None, arch)


# ----------------------------------------------------------------------------- building and checking
def _check_input(kind: ModelKind, name: str, is_image: bool) -> None:
    if kind.images_only and not is_image:
        images = ", ".join(s.name for s in dataset_specs() if s.is_image)
        raise ModelError(f"the {kind.name.upper()} needs an image data set ({images}), not {name}")


def build_model(config: RunConfig, dataset: Dataset, design: Design | None = None) -> nn.Module:
    """The model a run config asks for (see the module docstring); ``ModelError`` when it cannot be built."""
    from engine.train.nets import count_params

    kind = model_kind(config.model)
    _check_input(kind, dataset.name, dataset.is_image)
    built = kind.build(config, dataset, design)
    model = built.module
    layer_params = count_params(getattr(model, "tn_layer", None))
    dense_layer = (design.in_features * design.out_features + design.out_features) if design is not None else 0
    summary: dict[str, Any] = {
        "model": kind.name, "architecture": built.architecture, "layer": built.layer, "baseline": config.baseline,
        "params": count_params(model), "layer_params": layer_params, "layer_dense_params": dense_layer,
        # "core params": the layer's weight alone (no bias), the one definition every view labels as such
        "core_params": (design.dense_params if config.baseline else design.params) if design is not None else None,
        "dense_core_params": design.dense_params if design is not None else None,
        "layer_type": type(getattr(model, "tn_layer", None)).__name__ if design is not None else None,
        "layer_compression": (dense_layer / layer_params) if layer_params else None,
        "design_compression": design.compression if design is not None else None,
    }
    summary.update(getattr(model, "network_summary", {}))  # a whole network: its TN layers and totals
    model.summary = summary
    return model


def check_fit(config: RunConfig, design: Design | None) -> None:
    """Raise :class:`ModelError` when the design does not fit the model and data set a config asks for,
    without loading any data (or torch)."""
    spec = dataset_spec(config.dataset)
    kind = model_kind(config.model)
    _check_input(kind, config.dataset, spec.is_image)
    kind.check(config, spec, design)
