"""Conv2d designs: templates for ``conv2d`` targets and the two linear views of a conv design.

A conv design generates ``K = T.reshape(out_channels, in_channels, kh, kw)`` (``torch.nn.Conv2d.weight``) from the
full tensor ``T`` ordered (out legs, in legs, kernel legs); see :mod:`engine.design.model`.

Templates (:func:`make_conv_template`, also ``tnstudio template KIND --in C_IN --out C_OUT --kernel K``). The
channels are factorised into legs as for linear templates (balanced, or ``in_factors`` / ``out_factors``); the
kernel's spatial legs ``kh`` and ``kw`` (role ``kernel``) form one more site:

- ``cp`` (CP-conv, Lebedev et al. 2015): one factor ``(leg, R)`` per channel leg and per kernel leg (``Akh``, ``Akw``),
  all on the rank hyperedge ``R``: ``R (sum in_n + sum out_n + kh + kw)`` parameters.
- ``tucker`` (Tucker-2, Kim et al. 2016): one factor ``(leg, r)`` per channel leg and a core ``C`` over the channel
  ranks and the kernel legs: ``r (sum in_n + sum out_n) + r^(#channel legs) kh kw``.
- ``mpo`` / ``tensor_ring`` (TT-conv, Garipov et al. 2016): the kernel site first, a core ``(kh, kw, r_0)``, then the
  channel sites ``(r_{n-1}, in_n, out_n, r_n)``.
- ``ttn``, ``attn``, ``mera`` (with an activation: nonlinear generators of the kernel): the kernel site is site 0
  (its leaf holds ``kh`` and ``kw``), the channel sites follow; ``lateral`` works as for linear templates.

A 1x1 kernel has no kernel site: its kernel leg (dim 1) sits on the tensor holding input leg 0.

Linear views. :func:`im2col_view` is the linear design whose ``W`` is the im2col matrix
``K.reshape(out, -1).T`` (in legs then kernel legs -> out legs, the order ``F.unfold`` gives patches);
:func:`kernel_view` is the one whose ``W`` is ``K.reshape(out, -1)`` itself (out legs -> in legs then kernel legs),
whose generated tensor is laid out as ``K``. Both keep every tensor, index name, activation and evaluation order, so
cores, initialisation, fits and contraction programs of the linear engine apply to conv designs unchanged.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

from engine.design.model import ConvTarget, Design, DesignError, Index, Tensor
from engine.design.templates import DX, LATERAL, leg_factors, make_template, template_kind
from engine.format import int_list

KERNEL_LEGS = ("kh", "kw")


def conv_target(in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                dilation: Any = 1) -> ConvTarget:
    """A validated :class:`ConvTarget` (ints or pairs); ``ValueError`` names what is wrong."""
    try:
        return ConvTarget.make(in_channels, out_channels, kernel_size, stride, padding, dilation)
    except DesignError as e:
        raise ValueError("; ".join(e.problems)) from None


def _rename(design: Design, index_map: dict[str, str], id_map: dict[str, str]) -> None:
    """Rename indices and tensor ids in place (every reference: tensors, order, root)."""
    design.indices = {index_map.get(k, k): v for k, v in design.indices.items()}
    for t in design.tensors:
        t.indices = [index_map.get(i, i) for i in t.indices]
        t.id = id_map.get(t.id, t.id)
    if design.order is not None:
        design.order = [id_map.get(t, t) for t in design.order]
    if design.root is not None:
        design.root = id_map.get(design.root, design.root)


def _as_conv(design: Design, target: ConvTarget) -> Design:
    design.conv = target
    design.in_features, design.out_features = target.in_features, target.out_channels
    return design


def _kernel_site(linear: Design, target: ConvTarget) -> Design:
    """A template built over sites (kernel, channel sites...) with ``i0 = kh``, ``o0 = kw``: site 0's legs become
    the kernel legs, the channel legs are renumbered from 0."""
    d = linear.copy()
    index_map: dict[str, str] = {}
    id_map: dict[str, str] = {}
    kernel = [n for n in ("i0", "o0") if n in d.indices]
    for axis, old in enumerate(kernel):
        new = KERNEL_LEGS[0] if old == "i0" else KERNEL_LEGS[1]
        d.indices[old] = Index(dim=d.indices[old].dim, role="kernel", axis=axis)
        index_map[old] = new
        id_map["A" + old] = "A" + new  # CP's factor of that leg
    for role, prefix in (("in", "i"), ("out", "o")):
        legs = [k for k in d.in_legs if k != "i0"] if role == "in" else [k for k in d.out_legs if k != "o0"]
        for axis, old in enumerate(legs):
            new = f"{prefix}{axis}"
            d.indices[old] = Index(dim=d.indices[old].dim, role=role, axis=axis)
            index_map[old] = new
            id_map["A" + old] = "A" + new
    # names must stay unique while renaming: collect the renamed ones only
    clash = set(index_map.values()) & (set(d.indices) - set(index_map))
    if clash:  # a template bond named like a leg (never for the built-in templates)
        raise ValueError(f"cannot name kernel and channel legs: {sorted(clash)} already used")
    _rename(d, index_map, id_map)
    for role, kernel_leg in (("in", KERNEL_LEGS[0]), ("out", KERNEL_LEGS[1])):
        legs = d.in_legs if role == "in" else d.out_legs
        if not legs and kernel_leg in d.indices:  # one channel: the template merged its leg of 1 away, and the
            # kernel took the site: give the kernel's tensor the channel leg back, of dim 1 (as cp and tucker have)
            first = "i0" if role == "in" else "o0"
            name = first if first not in d.indices else f"{role}_channel"
            d.indices[name] = Index(dim=1, role=role, axis=0)
            next(t for t in d.tensors if kernel_leg in t.indices).indices.append(name)
    return _as_conv(d, target)


def _one_by_one(linear: Design, target: ConvTarget) -> Design:
    """A 1x1 kernel: the channel template plus one kernel leg of dim 1 on the tensor holding in leg 0."""
    d = linear.copy()
    name = "k" if "k" not in d.indices else "k_"
    d.indices[name] = Index(dim=1, role="kernel", axis=0)
    first = d.in_legs[0]
    holder = next(t for t in d.tensors if first in t.indices)
    holder.indices.append(name)
    return _as_conv(d, target)


def _tucker2(target: ConvTarget, bond: int, in_f: list[int], out_f: list[int]) -> Design:
    """Tucker-2: factors ``U<leg> (leg, r)`` per channel leg and the core ``C`` (channel ranks..., kh, kw)."""
    if not isinstance(bond, int) or bond < 1:
        raise ValueError("tucker takes a single bond dimension >= 1")
    indices: dict[str, Index] = {}
    tensors: list[Tensor] = []
    ranks = []
    n_all = len(in_f) + len(out_f)
    m = 0
    for role, fac, prefix in (("in", in_f, "i"), ("out", out_f, "o")):
        for n, f in enumerate(fac):
            leg, r = f"{prefix}{n}", f"t{prefix}{n}"
            indices[leg] = Index(dim=f, role=role, axis=n)
            indices[r] = Index(dim=bond)
            ranks.append(r)
            ang = 2 * math.pi * m / n_all
            tensors.append(Tensor(f"U{prefix}{n}", [leg, r], position=(math.cos(ang) * DX * 1.6,
                                                                     math.sin(ang) * DX * 1.6)))
            m += 1
    for axis, (leg, dim) in enumerate(zip(KERNEL_LEGS, target.kernel_size)):
        indices[leg] = Index(dim=dim, role="kernel", axis=axis)
    tensors.append(Tensor("C", ranks + list(KERNEL_LEGS), position=(0.0, 0.0)))
    d = Design(name="tucker", in_features=target.in_features, out_features=target.out_channels, indices=indices,
               tensors=tensors, meta={"template": "tucker", "tucker": "tucker-2"}, conv=target)
    return d


def make_conv_template(kind: str, in_channels: int, out_channels: int, kernel_size: Any, bond: int | Sequence[int] = 4,
                       activation: str | None = None, in_factors: Sequence[int] | None = None,
                       out_factors: Sequence[int] | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                       name: str | None = None, lateral: str | Sequence[int] | None = None,
                       image: Any = None) -> Design:
    """A template design for the conv layer ``nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
    dilation)`` (see the module docstring); bad arguments raise ``ValueError`` with a clear message.

    ``in_factors`` / ``out_factors`` factorise the channels (default: balanced, as for linear templates). Chain
    templates with one bond per bond (``mpo``, ``tensor_ring``) count the kernel site: ``len(channel legs)`` bonds
    for an MPO, one more for a ring. ``image`` (``H`` or ``(H, W)``): the input size the cost report uses by
    default, recorded in ``meta["image"]``.
    """
    target = conv_target(in_channels, out_channels, kernel_size, stride, padding, dilation)
    kind = template_kind(kind)
    kh, kw = target.kernel_size
    in_f, out_f = leg_factors(in_channels, out_channels, in_factors, out_factors)
    if kind == "tucker":
        if activation not in (None, "", "none", "None"):
            raise ValueError("tucker has no internal tensors to activate")
        if LATERAL.parse(lateral) != LATERAL.default:
            raise ValueError("tucker has no lateral option")
        d = _tucker2(target, bond, in_f, out_f)  # type: ignore[arg-type]
        d.meta.update({"bond": bond, "activation": None})
    elif kh * kw == 1:
        d = _one_by_one(make_template(kind, in_channels, out_channels, bond, activation, in_f, out_f,
                                      lateral=lateral), target)
    else:
        d = _kernel_site(make_template(kind, kh * in_channels, kw * out_channels, bond, activation, [kh] + in_f,
                                       [kw] + out_f, lateral=lateral), target)
    opts = LATERAL.parse(lateral)
    act = None if activation in (None, "", "none", "None") else activation
    d.name = name or (f"{kind} {target.label} chi={bond if isinstance(bond, int) else ','.join(map(str, bond))}"
                      + (f" {act}" if act else "") + (f" lateral={LATERAL.text(opts)}" if opts != "none" else ""))
    if image is not None:
        h, w = image_size(image)
        problem = target.fit_problem(h, w)
        if problem:
            raise ValueError(f"image size: {problem}")
        d.meta["image"] = [h, w]
    try:
        return d.check()
    except DesignError as e:
        raise ValueError(str(e)) from None


def conv_lateral_levels(kind: str, in_channels: int, out_channels: int, kernel_size: Any,
                        in_factors: Sequence[int] | None = None, out_factors: Sequence[int] | None = None) -> list[int]:
    """The levels of a conv template that have places for lateral tensors (the kernel site counted), as
    :func:`~engine.design.templates.lateral_levels` for linear templates."""
    from engine.design.templates import lateral_levels

    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    in_f, out_f = leg_factors(in_channels, out_channels, in_factors, out_factors)
    if kh * kw == 1:
        return lateral_levels(kind, in_channels, out_channels, in_f, out_f)
    return lateral_levels(kind, kh * in_channels, kw * out_channels, [kh] + in_f, [kw] + out_f)


def image_size(image: Any) -> tuple[int, int]:
    """``32`` / ``"32"`` / ``"32,24"`` / ``(32, 24)`` -> ``(H, W)``; ``ValueError`` otherwise."""
    vals: Any = image
    if isinstance(image, str):
        try:
            vals = int_list(image)  # "32,x" too (it was read as 32)
        except ValueError:
            raise ValueError(f"the image size must be H or H,W (integers), got {image!r}") from None
    if isinstance(vals, int) and not isinstance(vals, bool):
        vals = [vals, vals]
    vals = list(vals) if isinstance(vals, (list, tuple)) else None
    if vals is not None and len(vals) == 1:
        vals = vals * 2
    if not vals or len(vals) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2 ** 31 - 1
                                             for v in vals):
        raise ValueError(f"the image size must be H or H,W (integers from 1 to 2^31 - 1), got {image!r}")
    return vals[0], vals[1]


def default_image(design: Design) -> tuple[int, int]:
    """The input size a conv design is costed at by default: ``meta["image"]`` when the design records one, else
    32x32, or the smallest size the dilated kernel fits when that is larger."""
    img = design.meta.get("image")
    if img is not None:
        try:
            return image_size(img)
        except ValueError:
            pass
    conv = design.conv
    need = [max(32, d * (k - 1) + 1 - 2 * p) for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation)] \
        if conv is not None else [32, 32]
    return need[0], need[1]


# ----------------------------------------------------------------------------- linear views
def _view(design: Design, ins: list[str], outs: list[str], in_features: int, out_features: int) -> Design:
    if design.conv is None:
        raise ValueError(f"design {design.name!r} is not a conv2d design")
    indices = {}
    for k, ix in design.indices.items():
        if k in ins:
            indices[k] = Index(dim=ix.dim, role="in", axis=ins.index(k))
        elif k in outs:
            indices[k] = Index(dim=ix.dim, role="out", axis=outs.index(k))
        else:
            indices[k] = copy.copy(ix)
    return Design(name=design.name, in_features=in_features, out_features=out_features, indices=indices,
                  tensors=copy.deepcopy(design.tensors), order=list(design.order) if design.order else None,
                  root=design.root, meta=copy.deepcopy(design.meta))


def im2col_view(design: Design) -> Design:
    """The linear design whose W is the im2col matrix ``K.reshape(out, -1).T``: in legs then kernel legs -> out legs
    (``in_features = in_channels * kh * kw``, ``out_features = out_channels``)."""
    conv = design.conv
    if conv is None:
        raise ValueError(f"design {design.name!r} is not a conv2d design")
    return _view(design, design.in_legs + design.kernel_legs, design.out_legs, conv.in_features, conv.out_channels)


def kernel_view(design: Design) -> Design:
    """The linear design whose W is ``K.reshape(out, -1)``: out legs -> in legs then kernel legs, so its generated
    tensor is laid out as ``K`` (``torch.nn.Conv2d.weight``)."""
    conv = design.conv
    if conv is None:
        raise ValueError(f"design {design.name!r} is not a conv2d design")
    return _view(design, design.out_legs, design.in_legs + design.kernel_legs, conv.out_channels, conv.in_features)
