"""Pure edit operations on designs: each takes a design and returns a new one (the input is never changed).

These are the edits the studio offers (and scripts may use): add a tensor, connect two tensors, attach a hyperedge,
add an open leg, delete with its cascade, change a dimension, kind or activation, set the leg factorisation,
fit the layer size to the legs, rename, merge two designs side by side, set every bond at once. An edit that cannot
be made at all raises :class:`EditError` with the reason; an edit that leaves the design with problems (e.g. a
tensor not connected yet) is returned, and ``Design.problems()`` says what it still breaks.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Sequence

from engine.design.model import KINDS, Design, Index, Tensor

Position = tuple[float, float]


class EditError(ValueError):
    """An edit that cannot be applied; the message says why, in words."""


def fresh_name(prefix: str, taken: Iterable[str]) -> str:
    """``prefix`` followed by the smallest number not in ``taken``."""
    used = set(taken)
    n = 0
    while f"{prefix}{n}" in used:
        n += 1
    return f"{prefix}{n}"


def free_spot(taken: Sequence[Position], gap: float = 120.0, near: Position | None = None) -> Position:
    """A free place near ``near`` (default: the middle of ``taken``) at least ``gap`` from every taken spot."""
    if not taken:
        return near or (0.0, 0.0)
    cx, cy = near or ((min(p[0] for p in taken) + max(p[0] for p in taken)) / 2,
                      (min(p[1] for p in taken) + max(p[1] for p in taken)) / 2)
    for ring in range(0, 12):
        for k in range(max(1, 8 * ring)):
            ang = 2 * math.pi * k / max(1, 8 * ring)
            x, y = cx + ring * 70.0 * math.cos(ang), cy + ring * 55.0 * math.sin(ang)
            if all(abs(x - px) > gap or abs(y - py) > gap * 0.6 for px, py in taken):
                return (round(x, 1), round(y, 1))
    return (max(p[0] for p in taken) + gap * 1.4, cy)


def _legs_of(design: Design, role: str) -> list[str]:
    return design.in_legs if role == "in" else design.out_legs if role == "out" else design.kernel_legs


def renumber_axes(design: Design, role: str) -> None:
    """Give the ``role`` legs of ``design`` the axes 0..n-1 in their current order (in place)."""
    for axis, name in enumerate(_legs_of(design, role)):
        design.indices[name].axis = axis


def _set_size(design: Design, role: str, size: int) -> None:
    """Set the layer size of ``role`` (in place): features of a linear design, channels of a conv2d design (its
    in/out_features follow: the im2col matrix)."""
    import dataclasses

    conv = design.conv
    if conv is None:
        setattr(design, f"{role}_features", size)
        return
    conv = dataclasses.replace(conv, **{f"{role}_channels": size})
    design.conv = conv
    design.in_features, design.out_features = conv.in_features, conv.out_channels


def with_bond(design: Design, chi: int) -> Design:
    """The same topology with every bond set to ``chi`` (open legs unchanged)."""
    d = design.copy()
    for ix in d.indices.values():
        if ix.role == "bond":
            ix.dim = chi
    return d


def typical_bond(design: Design) -> int | None:
    """The most common bond dimension, or None without bonds."""
    dims = Counter(ix.dim for ix in design.indices.values() if ix.role == "bond")
    return dims.most_common(1)[0][0] if dims else None


def _need_tensor(design: Design, tid: str) -> Tensor:
    for t in design.tensors:
        if t.id == tid:
            return t
    raise EditError(f"no tensor {tid!r} in the design")


def add_tensor(design: Design, kind: str = "core", position: Position | None = None) -> tuple[Design, str]:
    """A new unconnected tensor (appended to the evaluation order when there is one); returns (design, id)."""
    d = design.copy()
    tid = fresh_name("T", (t.id for t in d.tensors))
    if position is None:
        position = free_spot([t.position for t in d.tensors if t.position])
    d.tensors.append(Tensor(id=tid, indices=[], kind=kind if kind in KINDS else "core", position=position))
    if d.order is not None:
        d.order.append(tid)
    return d, tid


def connect(design: Design, a: str, b: str, dim: int) -> tuple[Design, str]:
    """Join tensors ``a`` and ``b`` with a new bond of dimension ``dim``; returns (design, bond name)."""
    ids = {t.id for t in design.tensors}
    if a not in ids or b not in ids or a == b:
        raise EditError(f"cannot connect {a!r} to {b!r}: pick two different tensors")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise EditError(f"a bond dimension must be a whole number >= 1, got {dim!r}")
    d = design.copy()
    name = fresh_name("b", d.indices)
    d.indices[name] = Index(dim=dim, role="bond")
    d.tensor(a).indices.append(name)
    d.tensor(b).indices.append(name)
    return d, name


def attach(design: Design, tensor: str, index: str) -> Design:
    """Add an existing hyperedge (or an unattached leg) to ``tensor``."""
    if index not in design.indices or not any(t.id == tensor for t in design.tensors):
        raise EditError(f"no index {index!r} or tensor {tensor!r}")
    ix, users = design.indices[index], design.users().get(index, [])
    if tensor in users:
        raise EditError(f"{tensor} already carries {index}")
    if ix.role in ("in", "out", "kernel") and users:
        raise EditError(f"open leg {index} already belongs to {users[0]}: an open leg has one tensor")
    if ix.role == "bond" and len(users) >= 2 and not ix.hyperedge:
        raise EditError(f"bond {index} already joins {users[0]} and {users[1]}")
    d = design.copy()
    d.tensor(tensor).indices.append(index)
    return d


def add_open_leg(design: Design, tensor: str, role: str, dim: int) -> tuple[Design, str]:
    """Give ``tensor`` a new open leg (role ``in``/``out``, or ``kernel`` in a conv2d design; next axis); the layer
    size is not changed."""
    if role not in ("in", "out", "kernel"):
        raise EditError(f"role must be in or out (or kernel), got {role!r}")
    if role == "kernel" and design.conv is None:
        raise EditError("kernel legs belong to conv2d designs")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise EditError(f"dim must be an integer >= 1, got {dim!r}")
    _need_tensor(design, tensor)
    d = design.copy()
    name = fresh_name({"in": "i", "out": "o", "kernel": "k"}[role], d.indices)
    axis = len(_legs_of(d, role))
    d.indices[name] = Index(dim=dim, role=role, axis=axis)
    d.tensor(tensor).indices.append(name)
    return d, name


def delete(design: Design, tensors: Iterable[str] = (), indices: Iterable[str] = (),
           detach: Iterable[tuple[str, str]] = ()) -> Design:
    """Delete tensors (with their open legs and plain bonds; hyperedges stay while used), indices (from every
    tensor) and single attachments ``(tensor, index)``; open-leg axes are renumbered, order and root follow."""
    d = design.copy()
    tensors, indices, detach = set(tensors), set(indices), list(detach)
    for t in d.tensors:
        if t.id in tensors:
            for i in t.indices:
                ix = d.indices.get(i)
                if ix is not None and (ix.role != "bond" or not ix.hyperedge):
                    indices.add(i)
    d.tensors = [t for t in d.tensors if t.id not in tensors]
    for tid, i in detach:
        if any(t.id == tid for t in d.tensors) and i in d.tensor(tid).indices:
            d.tensor(tid).indices.remove(i)
    for t in d.tensors:
        t.indices = [i for i in t.indices if i not in indices]
    roles = {d.indices[i].role for i in indices if i in d.indices}
    for i in indices:
        d.indices.pop(i, None)
    users = d.users()
    for name in [k for k, v in d.indices.items() if v.hyperedge and not users.get(k)]:
        d.indices.pop(name)  # a hub nobody uses any more
    for role in roles & {"in", "out", "kernel"}:
        renumber_axes(d, role)
    if d.order is not None:
        d.order = [t for t in d.order if t not in tensors]
    if d.root in tensors:
        d.root = None
    return d


def parse_dim(value: Any, what: str) -> int:
    """A dimension from user input: an int, or text of one; anything else raises :class:`EditError`."""
    try:
        dim = int(value)
        if dim != value and not (isinstance(value, str) and str(dim) == value.strip()):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise EditError(f"dimension of {what} must be a whole number, got {value!r}") from None
    if isinstance(value, bool):
        raise EditError(f"dimension of {what} must be a whole number, got {value!r}")
    return dim


def set_dim(design: Design, index: str, dim: Any) -> Design:
    """``index`` with dimension ``dim`` (an int or its text)."""
    if index not in design.indices:
        raise EditError(f"no index {index!r}")
    value = parse_dim(dim, index)
    d = design.copy()
    d.indices[index].dim = value
    return d


def set_tensor(design: Design, tensor: str, **changes: Any) -> Design:
    """``tensor`` with a new ``kind`` and/or ``activation`` (``None`` or ``"none"`` removes the activation)."""
    _need_tensor(design, tensor)
    d = design.copy()
    t = d.tensor(tensor)
    for key, value in changes.items():
        if key == "kind":
            t.kind = value
        elif key == "activation":
            t.activation = None if value in (None, "", "none", "None") else value
        else:
            raise EditError(f"a tensor edit cannot change {key!r}: only kind and activation")
    return d


def set_factors(design: Design, role: str, dims: Sequence[int]) -> Design:
    """The ``role`` legs (in axis order) set to ``dims`` and the layer size to their product (a conv2d design's
    channels; its kernel legs must multiply to the kernel, which this edit does not change)."""
    legs = _legs_of(design, role)
    dims = list(dims)
    if len(dims) != len(legs):
        raise EditError(f"the design has {len(legs)} {role} legs ({', '.join(legs) or 'none'}): give "
                        f"{len(legs)} factors, or add/delete legs on the canvas")
    d = design.copy()
    for leg, dim in zip(legs, dims):
        d.indices[leg].dim = dim
    if role != "kernel":
        _set_size(d, role, math.prod(dims))
    return d


def fit_features(design: Design) -> Design:
    """In/out features (a conv2d design's channels) set to the products of the current leg dims (after adding or
    deleting open legs)."""
    d = design.copy()
    for role, legs in (("in", d.in_legs), ("out", d.out_legs)):
        if legs:
            _set_size(d, role, math.prod(d.indices[k].dim for k in legs))
    return d


def rename(design: Design, name: str) -> Design:
    """The design with a new (stripped, non-empty) name."""
    if not isinstance(name, str) or not name.strip():
        raise EditError("the name cannot be empty")
    d = design.copy()
    d.name = name.strip()
    return d


def merge_designs(base: Design, extra: Design, gap: float = 260.0) -> Design:
    """``base`` plus ``extra`` side by side (clashing names get a suffix, open-leg axes continue)."""
    out = base.copy()
    extra = extra.copy()
    suffix = 1
    taken = set(out.indices) | {t.id for t in out.tensors}
    while any(f"{n}_{suffix}" in taken for n in list(extra.indices) + [t.id for t in extra.tensors]):
        suffix += 1
    rename_map = {n: (f"{n}_{suffix}" if n in taken else n)
                  for n in list(extra.indices) + [t.id for t in extra.tensors]}
    base_x = max((t.position[0] for t in out.tensors if t.position), default=0.0)
    min_x = min((t.position[0] for t in extra.tensors if t.position), default=0.0)
    axes = {"in": len(out.in_legs), "out": len(out.out_legs), "kernel": len(out.kernel_legs)}
    for name in [*extra.in_legs, *extra.out_legs, *extra.kernel_legs]:
        ix = extra.indices[name]
        ix.axis = axes[ix.role]
        axes[ix.role] += 1
    for name, ix in extra.indices.items():
        out.indices[rename_map[name]] = ix
    for t in extra.tensors:
        pos = (t.position[0] - min_x + base_x + gap, t.position[1]) if t.position else None
        out.tensors.append(Tensor(id=rename_map[t.id], indices=[rename_map[i] for i in t.indices], kind=t.kind,
                                  activation=t.activation, position=pos))
    if out.order is not None or extra.order is not None:
        out.order = out.evaluation_order() + [rename_map[t] for t in extra.evaluation_order()]
    return out
