"""Layer 3.5, networks: whole architectures whose layers are assigned TN designs (between :mod:`engine.nn` and
:mod:`engine.train`; imports :mod:`engine.design`, :mod:`engine.contract` and :mod:`engine.nn`, never the layers
above).

- :mod:`~engine.network.format`: the network file (``"format": "tnstudio-network"``), :class:`NetworkSpec`,
  load/save, validation, resolution of rules and per-layer assignments, the JSON Schema;
- :mod:`~engine.network.catalogue`: the architecture registry (MLP, 1-D CNN, LeNet-5, CIFAR VGG, ResNet-18,
  AlexNet, VGG-16, Transformer encoder, ViT-B/16, or ``package.module:factory``);
- :mod:`~engine.network.layers`: the layer-kind registry (linear, conv1d, conv2d, attention) and discovery;
- :mod:`~engine.network.rules`: bulk assignment rules (``linear:ttn:4:gelu:min=1000000``);
- :mod:`~engine.network.analysis`: one forward pass on the meta device: rows, FLOPs and activation sizes;
- :mod:`~engine.network.report`: :func:`network_report` -> :class:`NetworkReport` (per layer and totals);
- :mod:`~engine.network.attention`: :class:`TNMultiheadAttention` (torch only);
- :mod:`~engine.network.build`: :func:`build_network` and :func:`tensorize` (a model instance follows a file);
- :mod:`~engine.network.export`: a torch-only module file of a whole network.

Public names load on first use (PEP 562): reading and validating network files does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "NetworkSpec": "engine.network.format", "NetworkError": "engine.network.format", "Assignment":
    "engine.network.format", "load_network": "engine.network.format", "save_network": "engine.network.format",
    "new_network": "engine.network.format", "resolve": "engine.network.format",
    "is_network_file": "engine.network.format",
    "architectures": "engine.network.catalogue", "architecture": "engine.network.catalogue",
    "parse_rule": "engine.network.rules", "RuleError": "engine.network.rules",
    "discover": "engine.network.layers", "LayerInfo": "engine.network.layers",
    "analyse": "engine.network.analysis",
    "network_report": "engine.network.report", "NetworkReport": "engine.network.report",
    "TNMultiheadAttention": "engine.network.attention",
    "build_network": "engine.network.build", "tensorize": "engine.network.build",
    "export_network": "engine.network.export", "network_source": "engine.network.export",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'engine.network' has no attribute {name!r}")
