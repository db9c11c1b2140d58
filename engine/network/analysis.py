"""What one forward pass of the dense architecture tells: the rows each layer runs on, FLOPs, activation sizes.

:func:`analyse` builds the dense model on torch's ``meta`` device (shapes only: VGG-16 builds in about 10 ms and
allocates nothing), runs one example through it with forward hooks, and records per assignable layer its rows per
example and calls (:class:`~engine.network.layers.LayerInfo`), per ``nn.MultiheadAttention`` its attention core
(``QK^T`` and ``AV``: ``2 L S (E + E_v)`` FLOPs per example, no parameters), per leaf module its output size (what
autograd keeps for backward) and its input size, and the parameters no assignable layer owns (norms, class tokens,
position embeddings). Results are cached per architecture, input shape and classes, so a report after a rule change
pays nothing here. Everything scales linearly with the batch.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.network.layers import LayerInfo, claimed_modules, discover

if TYPE_CHECKING:
    from torch import nn

    from engine.network.format import NetworkSpec


@dataclass(frozen=True)
class AttentionCore:
    """The parameter-free products of one attention module: ``softmax(Q K^T) V``."""

    name: str
    embed_dim: int
    num_heads: int
    q_rows: int  # L: query tokens per example
    kv_rows: int  # S: key/value tokens per example
    v_dim: int  # width of V after its projection (embed_dim)
    calls: int

    def flops(self, batch: int) -> int:
        """``Q K^T`` (2 L S E) plus ``A V`` (2 L S E_v) per example and call, as FlopCounterMode counts them."""
        return 2 * batch * self.calls * self.q_rows * self.kv_rows * (self.embed_dim + self.v_dim)


@dataclass(frozen=True)
class LeafCall:
    """One call of a leaf module: input and output elements per example (activations, not parameters)."""

    name: str
    module_type: str
    in_elems: int
    out_elems: int
    inplace: bool


@dataclass(frozen=True)
class OtherParams:
    """A module outside the layer registry: parameters (and buffers) owned by no assignable layer (norms,
    embeddings, class tokens), or FLOPs of a leaf module the registry does not know (a transposed conv, an LSTM),
    per example as ``FlopCounterMode`` counts them."""

    name: str
    module_type: str
    params: int
    flops: int = 0


@dataclass(frozen=True)
class Analysis:
    """The dense architecture, analysed once (see the module docstring)."""

    layers: tuple[LayerInfo, ...]
    attention: tuple[AttentionCore, ...]
    leaves: tuple[LeafCall, ...]  # in call order
    others: tuple[OtherParams, ...]
    input_elems: int
    output_elems: int
    dense_params: int  # every parameter of the dense model
    output_shape: tuple[int, ...] = field(default=())
    module_order: tuple[str, ...] = field(default=())  # named_modules() order, for ordering report rows
    loose_flops: int = 0  # per example: FLOPs of torch operations run outside every module counted above

    def layer(self, name: str) -> LayerInfo | None:
        """The assignable layer called ``name`` (None when there is none)."""
        return next((i for i in self.layers if i.name == name), None)


_CACHE: dict[str, Analysis] = {}
_LOCK = threading.Lock()


def build_meta(spec: "NetworkSpec") -> "nn.Module":
    """The dense model on the meta device (falls back to the CPU when a user factory cannot build on meta)."""
    import torch

    from engine.network.catalogue import build_architecture

    try:
        with torch.device("meta"):
            return build_architecture(spec.architecture, spec.resolved_input_shape, spec.resolved_num_classes or 1)
    except (RuntimeError, NotImplementedError, TypeError):
        if not spec.architecture.import_path:
            raise
        return build_architecture(spec.architecture, spec.resolved_input_shape, spec.resolved_num_classes or 1)


def analyse(spec: "NetworkSpec") -> Analysis:
    """The analysis of ``spec``'s dense architecture (cached by :meth:`NetworkSpec.arch_key`)."""
    key = spec.arch_key()
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    try:
        result = analyse_model(build_meta(spec), spec.resolved_input_shape)
    except (RuntimeError, NotImplementedError):  # data-dependent Python control flow needs values: on the CPU
        if not spec.architecture.import_path:
            raise
        from engine.network.catalogue import build_architecture

        model = build_architecture(spec.architecture, spec.resolved_input_shape, spec.resolved_num_classes or 1)
        try:
            result = analyse_model(model, spec.resolved_input_shape)
        except Exception as e:  # noqa: BLE001 - the user's own forward, on the CPU this time
            raise _forward_error(spec, e) from None
    except Exception as e:  # noqa: BLE001 - a user model's own forward may raise anything: one line, not a traceback
        if not spec.architecture.import_path or isinstance(e, ValueError):
            raise
        raise _forward_error(spec, e) from None
    with _LOCK:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = result
    return result


def _forward_error(spec: "NetworkSpec", e: BaseException) -> ValueError:
    """What a user model's forward raised (its analysis by import path), as a one-line refusal."""
    from engine.format import first_line
    from engine.network.catalogue import CatalogueError

    if isinstance(e, ValueError):
        return e
    return CatalogueError(f"{spec.architecture.label}: its forward on one example of shape "
                          f"{list(spec.resolved_input_shape)} raised {type(e).__name__}: {first_line(e)}")


def _numel(x: Any, seen: set[int] | None = None) -> int:
    """Elements of the tensors in ``x`` (nested tuples, lists, dicts), each distinct tensor once (self-attention
    passes one tensor as query, key and value)."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(x, torch.Tensor):
        if id(x) in seen:
            return 0
        seen.add(id(x))
        return x.numel()
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        return sum(_numel(v, seen) for v in x)
    return 0


def analyse_model(model: "nn.Module", input_shape: tuple[int, ...]) -> Analysis:
    """Analyse ``model`` (any device; meta is fastest) with one example of ``input_shape`` in eval mode."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    infos = discover(model)
    claimed = claimed_modules(model)
    rows: dict[str, list[int]] = {}  # module name -> rows of each call (per projection for attention)
    in_shapes: dict[str, tuple[int, ...]] = {}  # conv module name -> per-example input shape of its first call
    att: dict[str, list[tuple[int, int]]] = {}
    leaves: list[LeafCall] = []
    handles = []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def layer_hook(name: str, kind: str):
        def hook(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if kind == "attention":
                q = args[0] if len(args) > 0 else kwargs["query"]
                k = args[1] if len(args) > 1 else kwargs["key"]
                lq, lk = q.numel() // m.embed_dim, k.numel() // m.kdim
                att.setdefault(name, []).append((lq, lk))
            elif kind == "linear":
                x = args[0] if args else kwargs["input"]
                rows.setdefault(name, []).append(x.numel() // m.in_features)
            else:  # conv: one row of the im2col product per output position
                y = out
                rows.setdefault(name, []).append(y.numel() // y.shape[1] if y.dim() > 2 else y.shape[-1])
                x = args[0] if args else kwargs["input"]
                in_shapes.setdefault(name, tuple(x.shape[1:]) if x.dim() > 2 else tuple(x.shape))
        return hook

    def leaf_hook(name: str):
        def hook(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            leaves.append(LeafCall(name, type(m).__name__, _numel([args, kwargs]), _numel(out),
                                   bool(getattr(m, "inplace", False))))
        return hook

    attention_names = {n for n, k in claimed.items() if k.name == "attention"}
    for name, m in model.named_modules():
        if name in claimed:
            handles.append(m.register_forward_hook(layer_hook(name, claimed[name].name), with_kwargs=True))
        inside_attention = any(name.startswith(a + ".") for a in attention_names)
        if (name in attention_names or not any(True for _ in m.children())) and not inside_attention and name:
            handles.append(m.register_forward_hook(leaf_hook(name), with_kwargs=True))
    was_training = model.training
    model.eval()
    x = torch.empty((1, *input_shape), device=device) if device.type == "meta" else torch.zeros((1, *input_shape),
                                                                                                device=device)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            y = model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out_infos = []
    cores = []
    mods = dict(model.named_modules())
    for info in infos:
        if info.group:
            calls = att.get(info.group, [])
            if not calls:
                out_infos.append(info)
                continue
            lq, lk = calls[0]
            r = lq if info.name.endswith(("q_proj", "out_proj")) else lk
            out_infos.append(_with(info, rows=r, calls=len(calls)))
        else:
            calls_rows = rows.get(info.name, [])
            out_infos.append(_with(info, rows=calls_rows[0] if calls_rows else 0, calls=len(calls_rows),
                                   in_shape=in_shapes.get(info.name, ())))
    for name in sorted(attention_names, key=list(mods).index):
        m = mods[name]
        calls = att.get(name, [])
        lq, lk = calls[0] if calls else (0, 0)
        cores.append(AttentionCore(name, m.embed_dim, m.num_heads, lq, lk, m.embed_dim, len(calls)))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    flops = {name: sum(counts.get(f"{root}.{name}", {}).values()) for name in mods if name}
    others = _others(model, claimed, flops)
    counted = {n for n in claimed if n} | attention_names | {o.name for o in others if o.flops}
    top = [n for n in counted if not any(n.startswith(c + ".") for c in counted)]
    loose = max(0, counter.get_total_flops() - sum(flops.get(n, 0) for n in top))
    dense = sum(p.numel() for p in model.parameters())
    return Analysis(tuple(out_infos), tuple(cores), tuple(leaves), tuple(others), math.prod(input_shape),
                    _numel(y), dense, tuple(y.shape[1:]) if hasattr(y, "shape") else (), tuple(mods), loose)


def _with(info: LayerInfo, **kw: Any) -> LayerInfo:
    from dataclasses import replace

    return replace(info, **kw)


def _others(model: "nn.Module", claimed: dict[str, Any], flops: dict[str, int]) -> list[OtherParams]:
    """Modules outside claimed ones that own parameters directly, or that are leaves with FLOPs (``flops``: per
    module name, as FlopCounterMode counted them), in module order."""
    out: list[OtherParams] = []
    for name, m in model.named_modules():
        if name in claimed or any(name.startswith(c + ".") for c in claimed if c):
            continue
        n = sum(p.numel() for p in m.parameters(recurse=False))
        f = flops.get(name, 0) if name and not any(True for _ in m.children()) else 0
        if n or f:
            out.append(OtherParams(name or "(model)", type(m).__name__, n, f))
    return out
