"""The torch modules of the catalogue's own architectures (:mod:`engine.network.catalogue`). Layers have readable
names (``fc1``, ``conv2``, ``blocks.0.attn``), which become the layer names of network files; every model here
traces with ``torch.fx`` (no data-dependent Python control flow), so it exports as a whole network."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def act(name: str) -> nn.Module:
    return _ACTS[name]()


def mlp(in_features: int, num_classes: int, hidden: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """``flatten, fc1, act1, fc2, act2, ..., fcN``."""
    sizes = [in_features, *hidden, num_classes]
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for k in range(len(sizes) - 1):
        layers.append((f"fc{k + 1}", nn.Linear(sizes[k], sizes[k + 1])))
        if k < len(sizes) - 2:
            layers.append((f"act{k + 1}", act(activation)))
    return nn.Sequential(OrderedDict(layers))


def cnn1d(input_shape: Sequence[int], num_classes: int, channels: int = 32, hidden: int = 256,
          activation: str = "relu") -> nn.Sequential:
    """Greydanus's MNIST-1D CNN shape: conv 5 (stride 2), conv 3 (stride 2), conv 3, then ``fc1 -> fc2``."""
    c, length = input_shape
    l1 = (length + 2 * 2 - 5) // 2 + 1
    l2 = (l1 + 2 * 1 - 3) // 2 + 1
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv1d(c, channels, 5, stride=2, padding=2)), ("act1", act(activation)),
        ("conv2", nn.Conv1d(channels, channels, 3, stride=2, padding=1)), ("act2", act(activation)),
        ("conv3", nn.Conv1d(channels, channels, 3, stride=1, padding=1)), ("act3", act(activation)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(channels * l2, hidden)), ("act4", act(activation)),
        ("fc2", nn.Linear(hidden, num_classes)),
    ]))


def lenet5(input_shape: Sequence[int], num_classes: int, activation: str = "relu", pool: str = "max"
           ) -> nn.Sequential:
    """LeNet-5: ``conv1 (6@5x5) pool conv2 (16@5x5) pool fc1 (120) fc2 (84) fc3``; padding 2 on 28x28 inputs."""
    c, h, w = input_shape
    pad = 2 if (h, w) == (28, 28) else 0
    pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
    h2, w2 = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(c, 6, 5, padding=pad)), ("act1", act(activation)), ("pool1", pool_cls(2)),
        ("conv2", nn.Conv2d(6, 16, 5)), ("act2", act(activation)), ("pool2", pool_cls(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(16 * h2 * w2, 120)), ("act3", act(activation)),
        ("fc2", nn.Linear(120, 84)), ("act4", act(activation)),
        ("fc3", nn.Linear(84, num_classes)),
    ]))


VGG_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGGCifar(nn.Module):
    """VGG for small images: torchvision's layer names (``features.N``, ``classifier.N``), five max-pools."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 16, fc: Sequence[int] = (512, 512),
                 batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        c = input_shape[0]
        for v in VGG_CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
        self.features = nn.Sequential(*layers)
        feats = c * (input_shape[1] // 32) * (input_shape[2] // 32)
        head: list[nn.Module] = []
        for width in fc:
            head += [nn.Linear(feats, width), nn.ReLU(inplace=True)]
            feats = width
        head.append(nn.Linear(feats, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg_cifar(input_shape: Sequence[int], num_classes: int, depth: int = 16, fc: Sequence[int] = (512, 512),
              batch_norm: bool = True) -> VGGCifar:
    return VGGCifar(input_shape, num_classes, depth, fc, batch_norm)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(OrderedDict([("fc1", nn.Linear(dim, mlp_dim)), ("act", nn.GELU()),
                                              ("drop", nn.Dropout(dropout)), ("fc2", nn.Linear(mlp_dim, dim))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TransformerClassifier(nn.Module):
    """Patches (Conv1d or Conv2d with stride = patch) -> class token + learned positions -> encoder blocks ->
    LayerNorm -> ``head`` on the class token."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, dim: int = 64, depth: int = 2, heads: int = 4,
                 mlp_dim: int = 128, patch: int = 4, dropout: float = 0.0):
        super().__init__()
        c, *sides = input_shape
        conv = nn.Conv1d if len(sides) == 1 else nn.Conv2d
        self.embed = conv(c, dim, patch, stride=patch)
        tokens = math.prod(s // patch for s in sides)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens + 1, dim).normal_(std=0.02))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_dim, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
