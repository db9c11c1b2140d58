"""Assignable layers: which modules of a model a network file can give a design, from one small registry.

A *layer kind* (:class:`LayerKind`, registered with :func:`register_layer_kind`) says which torch modules it claims,
how to describe one (:class:`LayerInfo`: the weight as a matrix ``in x out``, its parameters and dense FLOPs), and
which design target can replace it (``tn_target``; None: the kind is counted in reports and may be assigned
``"dense"``, but takes no design yet). Built in:

- ``linear``: ``nn.Linear`` (W is ``in_features x out_features``; the layer runs on every row of its input, e.g.
  every token of a Transformer);
- ``conv2d``: ``nn.Conv2d``, described as its im2col matrix ``(in_channels / groups * kernel) x out_channels``
  applied at every output position; it takes conv2d designs (:mod:`engine.design.conv`: the design's target must be
  the layer, groups 1), which become :class:`~engine.nn.conv.TNConv2d` layers;
- ``conv1d``: ``nn.Conv1d``, described the same way; no TN support yet: a design for one, or a rule with a template
  for one, is refused with the reason;
- ``attention``: ``nn.MultiheadAttention``, which packs the Q, K and V projections into one ``in_proj_weight``
  Parameter (not ``nn.Linear`` modules): it is described as four assignable projections ``<name>.q_proj``,
  ``<name>.k_proj``, ``<name>.v_proj`` and ``<name>.out_proj`` (each ``in x embed_dim``, linear designs), plus the
  attention core (the ``QK^T`` and ``AV`` products, no parameters) that reports count.

A kind takes designs when it has a ``tn_target`` (``linear`` or ``conv2d``, the design target that replaces it).
:func:`discover` lists a model's layers from its modules alone (names, kinds, shapes); :mod:`engine.network.analysis`
adds what a forward pass tells (rows per example, FLOPs, activation sizes).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from torch import nn

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class LayerInfo:
    """One assignable layer (or attention projection) of a model.

    ``in_features x out_features`` is the weight as the matrix a design replaces (a conv layer's im2col matrix);
    ``rows`` is how many rows of that matrix product one example makes (1 for a classifier layer, the tokens of a
    Transformer, the output positions of a conv layer), ``calls`` how often the module runs per forward pass; both
    are 0 until a forward pass has been analysed.
    """

    name: str
    kind: str  # a registered layer kind
    module_type: str  # e.g. "Linear", "Conv2d", "MultiheadAttention"
    in_features: int
    out_features: int
    bias: bool
    kernel: tuple[int, ...] = ()  # conv kernel size
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    groups: int = 1
    group: str = ""  # the attention module a projection belongs to
    rows: int = 0  # rows per example (see above)
    calls: int = 0
    dilation: tuple[int, ...] = ()  # conv dilation
    in_shape: tuple[int, ...] = ()  # per-example input shape of the first call (conv: (C, H, W)), once analysed
    padding_mode: str = "zeros"  # a conv's: TN conv layers pad with zeros only

    @property
    def in_channels(self) -> int:
        """A conv layer's input channels (``in_features`` is the im2col matrix's rows)."""
        return self.in_features // max(math.prod(self.kernel), 1) * self.groups if self.kernel else self.in_features

    def conv_refusal(self) -> str | None:
        """Why this layer takes no conv2d design (None when it takes one): not a Conv2d, groups > 1, string
        padding, or a padding mode other than zeros (TN conv layers pad with zeros)."""
        if self.kind != "conv2d":
            return f"layer {self.name} is a {self.kind} layer, not a Conv2d"
        if self.groups != 1:
            return f"layer {self.name} is a grouped conv (groups {self.groups}): conv2d designs have groups 1"
        if isinstance(self.padding, str):
            return f"layer {self.name} has padding={self.padding!r}: conv2d designs take integer padding"
        if self.padding_mode != "zeros" and any(p > 0 for p in self.padding):  # no padding: the mode is moot
            return (f"layer {self.name} pads with padding_mode={self.padding_mode!r}: TN conv layers pad with zeros "
                    f"only")
        return None

    def conv_target(self) -> Any:
        """The :class:`~engine.design.model.ConvTarget` a conv2d design for this layer must have; ``ValueError``
        naming the reason when the layer cannot take one (:meth:`conv_refusal`)."""
        from engine.design.conv import conv_target

        refusal = self.conv_refusal()
        if refusal is not None:
            raise ValueError(refusal)
        assert not isinstance(self.padding, str)
        return conv_target(self.in_channels, self.out_features, self.kernel, self.stride, self.padding,
                           self.dilation or (1, 1))

    def fits(self, design: Any) -> str | None:
        """Why ``design`` cannot replace this layer (None when it can)."""
        if self.kind == "conv2d":
            if design.conv is None:
                return (f"layer {self.name!r} is a Conv2d ({self.shape}) but design {design.name!r} has a linear "
                        f"target: give it a conv2d design")
            try:
                want = self.conv_target()
            except ValueError as e:
                return str(e)
            if design.conv != want:
                return (f"layer {self.name!r} is {want.label} but its design {design.name!r} is {design.conv.label}")
            return None
        if design.conv is not None:
            return (f"layer {self.name!r} is {self.shape} (in x out) but design {design.name!r} has a conv2d target")
        if (design.in_features, design.out_features) != (self.in_features, self.out_features):
            return (f"layer {self.name!r} is {self.in_features} x {self.out_features} (in x out) but its design "
                    f"{design.name!r} is {design.in_features} x {design.out_features}")
        return None

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def dense_params(self) -> int:
        return self.weight_params + (self.out_features if self.bias else 0)

    @property
    def shape(self) -> str:
        """In words: ``25088 x 4096``, ``conv 3x3 64 -> 128``."""
        if self.kernel:
            k = "x".join(map(str, self.kernel))
            cin = self.in_features // math.prod(self.kernel) * self.groups
            return f"conv {k} {cin} -> {self.out_features}" + (f" (groups {self.groups})" if self.groups > 1 else "")
        return f"{self.in_features} x {self.out_features}"

    def dense_flops(self, batch: int) -> int:
        """Forward FLOPs of the dense layer (2 x multiply-adds, as FlopCounterMode counts mm/addmm/convolution)."""
        return 2 * batch * self.rows * self.calls * self.weight_params

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = self.shape
        d["dense_params"] = self.dense_params
        return d


@dataclass(frozen=True)
class LayerKind:
    """A kind of assignable layer (see the module docstring)."""

    name: str
    title: str
    module_types: tuple[str, ...]  # "torch.nn.Linear" etc., resolved when first used
    describe: Callable[[str, "nn.Module"], list[LayerInfo]]
    tn_target: str | None  # the design target kind that can replace it; None: no TN support yet
    unsupported: str = ""  # why it takes no design (shown when refusing one)
    selectors: tuple[str, ...] = field(default=())  # rule selectors naming exactly this kind

    def classes(self) -> tuple[type, ...]:
        import importlib

        out = []
        for qual in self.module_types:
            mod, _, cls = qual.rpartition(".")
            out.append(getattr(importlib.import_module(mod), cls))
        return tuple(out)

    def refusal(self, what: str) -> str:
        return (f"{what}: {self.title} layers take no TN designs yet ({self.unsupported}); they are counted in the "
                f"report and can only be 'dense'")


_KINDS: dict[str, LayerKind] = {}


def register_layer_kind(kind: LayerKind) -> LayerKind:
    if kind.name in _KINDS:
        raise ValueError(f"layer kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def layer_kinds() -> tuple[LayerKind, ...]:
    return tuple(_KINDS.values())


def layer_kind(name: str) -> LayerKind:
    if name not in _KINDS:
        raise KeyError(f"unknown layer kind {name!r} (known: {', '.join(_KINDS)})")
    return _KINDS[name]


# ----------------------------------------------------------------------------- the built-in kinds
def _tuple(v: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),)


def _describe_linear(name: str, m: "nn.Module") -> list[LayerInfo]:
    return [LayerInfo(name, "linear", type(m).__name__, m.in_features, m.out_features, m.bias is not None)]


def _describe_conv(kind: str) -> Callable[[str, "nn.Module"], list[LayerInfo]]:
    def describe(name: str, m: "nn.Module") -> list[LayerInfo]:
        k = _tuple(m.kernel_size)
        pad = m.padding if isinstance(m.padding, str) else _tuple(m.padding)
        return [LayerInfo(name, kind, type(m).__name__, m.in_channels // m.groups * math.prod(k), m.out_channels,
                          m.bias is not None, kernel=k, stride=_tuple(m.stride), padding=pad, groups=m.groups,
                          dilation=_tuple(m.dilation), padding_mode=str(getattr(m, "padding_mode", "zeros")))]
    return describe


def _describe_attention(name: str, m: "nn.Module") -> list[LayerInfo]:
    e = m.embed_dim
    bias = m.in_proj_bias is not None
    ins = {"q_proj": e, "k_proj": m.kdim, "v_proj": m.vdim, "out_proj": e}
    out = []
    for p in ATTENTION_PROJECTIONS:
        b = (m.out_proj.bias is not None) if p == "out_proj" else bias
        out.append(LayerInfo(f"{name}.{p}", "attention", type(m).__name__, ins[p], e, b, group=name))
    return out


register_layer_kind(LayerKind("linear", "linear", ("torch.nn.Linear",), _describe_linear, tn_target="linear",
                              selectors=("linear",)))
_CONV1D_NOTE = "designs have linear or conv2d targets; 1-d convolutions have neither"
register_layer_kind(LayerKind("conv1d", "Conv1d", ("torch.nn.Conv1d",), _describe_conv("conv1d"), tn_target=None,
                              unsupported=_CONV1D_NOTE, selectors=("conv1d",)))
register_layer_kind(LayerKind("conv2d", "Conv2d", ("torch.nn.Conv2d",), _describe_conv("conv2d"), tn_target="conv2d",
                              selectors=("conv2d",)))
register_layer_kind(LayerKind("attention", "attention projection", ("torch.nn.MultiheadAttention",),
                              _describe_attention, tn_target="linear", selectors=("attention",)))


# ----------------------------------------------------------------------------- discovery
def _claim(module: "nn.Module") -> LayerKind | None:
    for kind in _KINDS.values():
        if isinstance(module, kind.classes()):
            return kind
    return None


def discover(model: "nn.Module") -> list[LayerInfo]:
    """Every assignable layer of ``model`` in module order (no forward pass: ``rows`` and ``calls`` are 0).

    Modules inside a claimed module are not listed again (an ``nn.MultiheadAttention``'s ``out_proj`` is its
    projection, not a separate linear layer). TN modules already in the model are skipped.
    """
    out: list[LayerInfo] = []
    skip: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(s + ".") for s in skip):
            continue
        kind = _claim(m)
        if kind is None:
            continue
        out.extend(kind.describe(name, m))
        skip.append(name)
    return out


def claimed_modules(model: "nn.Module") -> dict[str, LayerKind]:
    """Module name -> kind, for the modules :func:`discover` describes."""
    out: dict[str, LayerKind] = {}
    for info in discover(model):
        out[info.group or info.name] = layer_kind(info.kind)
    return out
