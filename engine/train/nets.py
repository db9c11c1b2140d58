"""The torch modules of the model kinds in :mod:`engine.train.models`: an MLP and a small CNN in which one layer
is the design's (a :class:`~engine.nn.linear.TNLinear`, or an ``nn.Linear`` of the same shape as the baseline; for
a conv2d design a :class:`~engine.nn.conv.TNConv2d`, or its ``nn.Conv2d``)."""
from __future__ import annotations

import torch
from torch import nn

from engine.design.model import Design
from engine.train.models import CNN_CHANNELS, CNN_FEATURES, CNN_POOL, HIDDEN_ACTIVATIONS, ModelError


def design_layer(design: Design, baseline: bool) -> nn.Module:
    """The design's layer: a TNLinear, or with ``baseline`` an nn.Linear of the same shape."""
    if baseline:
        return nn.Linear(design.in_features, design.out_features)
    from engine.nn.linear import TNLinear

    return TNLinear(design, bias=True)


def activation(name: str) -> nn.Module:
    """A hidden activation by name: one of :data:`~engine.train.models.HIDDEN_ACTIVATIONS`."""
    if name not in HIDDEN_ACTIVATIONS:
        raise ModelError(f"unknown hidden activation {name!r}: choose one of {', '.join(HIDDEN_ACTIVATIONS)}")
    return getattr(nn, HIDDEN_ACTIVATIONS[name])()


class MLP(nn.Module):
    """A multilayer perceptron; layer ``layer`` (if any) is the design's layer."""

    def __init__(self, in_features: int, hidden: list[int], out_features: int, layer: int | None = None,
                 design: Design | None = None, baseline: bool = False, activation_name: str = "relu"):
        super().__init__()
        sizes = [in_features] + list(hidden) + [out_features]
        layers: list[nn.Module] = []
        self.tn_layer: nn.Module | None = None
        for k in range(len(sizes) - 1):
            if k == layer and design is not None:
                lin = design_layer(design, baseline)
                self.tn_layer = lin
            else:
                lin = nn.Linear(sizes[k], sizes[k + 1])
            layers.append(lin)
            if k < len(sizes) - 2:
                layers.append(activation(activation_name))
        self.net = nn.Sequential(*layers)
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def conv_layer(design: Design, baseline: bool) -> nn.Module:
    """A conv2d design's layer: a TNConv2d, or with ``baseline`` the ``nn.Conv2d`` of its target."""
    c = design.conv
    assert c is not None
    if baseline:
        return nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation)
    from engine.nn.conv import TNConv2d

    return TNConv2d(design, bias=True)


class SmallCNN(nn.Module):
    """Two conv blocks and a classifier whose first layer is the design's (``CNN_FEATURES -> design.out``), or, for
    a conv2d design, whose second conv layer is the design's (``32 -> 64`` channels)."""

    def __init__(self, in_channels: int, num_outputs: int, design: Design | None = None, baseline: bool = False,
                 hidden: int = 256, activation_name: str = "relu"):
        super().__init__()
        c1, c2 = CNN_CHANNELS
        conv_design = design is not None and design.conv is not None
        conv2 = conv_layer(design, baseline) if conv_design else nn.Conv2d(c1, c2, 3, padding=1)  # type: ignore
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            conv2, nn.ReLU(), nn.AdaptiveAvgPool2d(CNN_POOL))
        self.tn_layer: nn.Module | None = conv2 if conv_design else None
        if design is not None and not conv_design:
            self.tn_layer = design_layer(design, baseline)
            head: list[nn.Module] = [self.tn_layer]
            if design.out_features != num_outputs:
                head += [activation(activation_name), nn.Linear(design.out_features, num_outputs)]
        else:
            head = [nn.Linear(CNN_FEATURES, hidden), activation(activation_name), nn.Linear(hidden, num_outputs)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
