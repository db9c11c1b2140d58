"""Template designs: mpo (tensor train), tensor_ring, tucker, cp, ttn, attn, mera.

Every template factorises ``in_features`` and ``out_features`` into legs (balanced unless given) and returns a
validated :class:`~engine.design.Design` with positions for drawing. Chain and tree templates pair the legs into
*sites*: site ``n`` carries in leg ``i{n}`` and out leg ``o{n}`` (a leg of dim 1 is left out).

Nonlinear templates (``activation`` given) put the activation on every tensor that absorbs others, except the last
one (the root / top), so W itself is not squashed; leaves stay raw parameters. Their evaluation order is written
into the design explicitly (bottom-up, layer by layer).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from engine.design.model import ACTIVATIONS, Design, DesignError, Index, Tensor
from engine.design.factorize import balanced_factors, check_factors, default_legs

TEMPLATE_KINDS = ("mpo", "tensor_ring", "tucker", "cp", "ttn", "attn", "mera")
NONLINEAR_CAPABLE = ("mpo", "tensor_ring", "ttn", "attn", "mera")
DX, DY = 150.0, 130.0


def leg_factors(in_features: int, out_features: int, in_factors: Sequence[int] | None = None,
                out_factors: Sequence[int] | None = None, legs: int | None = None) -> tuple[list[int], list[int]]:
    """Resolve in/out leg factorisations: given ones are checked, missing ones are balanced with as many legs."""
    if in_factors is not None:
        in_f = check_factors(in_features, list(in_factors), "in")
    if out_factors is not None:
        out_f = check_factors(out_features, list(out_factors), "out")
    k = legs or (len(in_factors) if in_factors is not None else len(out_factors) if out_factors is not None
                 else default_legs(in_features, out_features))
    if in_factors is None:
        in_f = balanced_factors(in_features, k)
    if out_factors is None:
        out_f = balanced_factors(out_features, k)
    return in_f, out_f


class _Builder:
    """Accumulates indices and tensors with readable names."""

    def __init__(self, in_features: int, out_features: int):
        self.in_features, self.out_features = in_features, out_features
        self.indices: dict[str, Index] = {}
        self.tensors: list[Tensor] = []
        self._axes = {"in": 0, "out": 0}

    def open_leg(self, name: str, role: str, dim: int) -> str:
        self.indices[name] = Index(dim=dim, role=role, axis=self._axes[role])
        self._axes[role] += 1
        return name

    def bond(self, name: str, dim: int, hyperedge: bool = False) -> str:
        self.indices[name] = Index(dim=int(dim), role="bond", hyperedge=hyperedge)
        return name

    def tensor(self, tid: str, indices: list[str], kind: str = "core", activation: str | None = None,
               pos: tuple[float, float] = (0.0, 0.0)) -> str:
        self.tensors.append(Tensor(id=tid, indices=indices, kind=kind, activation=activation,
                                   position=(float(pos[0]), float(pos[1]))))
        return tid

    def site_legs(self, in_f: list[int], out_f: list[int]) -> list[list[str]]:
        """Open legs per site (in leg then out leg), skipping legs of dim 1 unless a role would have none."""
        k = max(len(in_f), len(out_f))
        sites: list[list[str]] = [[] for _ in range(k)]
        for role, fac, prefix in (("in", in_f, "i"), ("out", out_f, "o")):
            keep = [n for n, f in enumerate(fac) if f > 1] or [0]
            for n in keep:
                sites[n].append(self.open_leg(f"{prefix}{n}", role, fac[n]))
        return sites

    def design(self, name: str, order: list[str] | None = None, root: str | None = None,
               meta: dict | None = None) -> Design:
        return Design(name=name, in_features=self.in_features, out_features=self.out_features,
                      indices=self.indices, tensors=self.tensors, order=order, root=root, meta=meta or {}).check()


def _bond_list(bond: int | Sequence[int], n: int, what: str) -> list[int]:
    if isinstance(bond, int):
        vals = [bond] * n
    else:
        vals = list(bond)
        if len(vals) != n:
            raise ValueError(f"{what} needs {n} bond dimensions, got {len(vals)}")
    if any(not isinstance(v, int) or v < 1 for v in vals):
        raise ValueError(f"bond dimensions must be integers >= 1, got {vals}")
    return vals


def _chain(kind: str, in_features: int, out_features: int, bond: int | Sequence[int], activation: str | None,
           in_factors, out_factors, ring: bool) -> Design:
    in_f, out_f = leg_factors(in_features, out_features, in_factors, out_factors)
    b = _Builder(in_features, out_features)
    sites = b.site_legs(in_f, out_f)
    k = len(sites)
    if ring and k < 2:
        raise ValueError("a tensor ring needs at least 2 sites")
    nb = k if ring else k - 1
    dims = _bond_list(bond, nb, kind)
    bonds = [b.bond(f"r{n}", dims[n]) for n in range(nb)]
    ids = []
    for n in range(k):
        left = [bonds[n - 1]] if n > 0 else ([bonds[k - 1]] if ring else [])
        right = [bonds[n]] if n < nb else []
        act = activation if 0 < n < k - 1 else None
        if ring:
            ang = 2 * math.pi * n / k
            pos = (math.cos(ang) * DX * k / 4, math.sin(ang) * DX * k / 4)
        else:
            pos = (n * DX, 0.0)
        ids.append(b.tensor(f"G{n}", left + sites[n] + right, activation=act, pos=pos))
    return b.design(kind, order=ids if activation else None, meta={"template": kind})


def mpo(in_features: int, out_features: int, bond: int | Sequence[int] = 4, activation: str | None = None,
        in_factors=None, out_factors=None) -> Design:
    """Matrix product operator (tensor train): cores ``(r_{n-1}, i_n, o_n, r_n)``, open boundaries."""
    return _chain("mpo", in_features, out_features, bond, activation, in_factors, out_factors, ring=False)


def tensor_ring(in_features: int, out_features: int, bond: int | Sequence[int] = 4, activation: str | None = None,
                in_factors=None, out_factors=None) -> Design:
    """Tensor ring: an MPO whose last core connects back to the first."""
    return _chain("tensor_ring", in_features, out_features, bond, activation, in_factors, out_factors, ring=True)


def tucker(in_features: int, out_features: int, bond: int = 4, activation: str | None = None,
           in_factors=None, out_factors=None) -> Design:
    """Tucker: one factor matrix per leg ``(leg, r)`` and a core with one rank index per leg."""
    in_f, out_f = leg_factors(in_features, out_features, in_factors, out_factors)
    b = _Builder(in_features, out_features)
    ranks, n_all = [], len(in_f) + len(out_f)
    for j, (role, fac, prefix) in enumerate((("in", in_f, "i"), ("out", out_f, "o"))):
        for n, f in enumerate(fac):
            leg = b.open_leg(f"{prefix}{n}", role, f)
            r = b.bond(f"t{prefix}{n}", bond)
            ranks.append(r)
            m = len(ranks) - 1
            ang = 2 * math.pi * m / n_all
            b.tensor(f"U{prefix}{n}", [leg, r], pos=(math.cos(ang) * DX * 1.6, math.sin(ang) * DX * 1.6))
    b.tensor("C", ranks, pos=(0.0, 0.0))
    return b.design("tucker", meta={"template": "tucker"})


def cp(in_features: int, out_features: int, bond: int = 8, activation: str | None = None,
       in_factors=None, out_factors=None) -> Design:
    """CP (canonical polyadic): one factor ``(leg, R)`` per leg, all sharing the rank hyperedge ``R``."""
    in_f, out_f = leg_factors(in_features, out_features, in_factors, out_factors)
    b = _Builder(in_features, out_features)
    r = b.bond("R", bond, hyperedge=True)
    x = 0
    for role, fac, prefix in (("in", in_f, "i"), ("out", out_f, "o")):
        for n, f in enumerate(fac):
            leg = b.open_leg(f"{prefix}{n}", role, f)
            b.tensor(f"A{prefix}{n}", [leg, r], pos=(x * DX, 0.0 if role == "in" else DY))
            x += 1
    return b.design("cp", meta={"template": "cp"})


def _leaves(b: _Builder, sites: list[list[str]], bond: int) -> tuple[list[str], list[str], list[float]]:
    """One leaf core per site mapping its open legs to a bond; returns leaf ids, their up-bonds, x positions."""
    ids, ups, xs = [], [], []
    for n, legs in enumerate(sites):
        up = b.bond(f"s{n}", bond)
        ids.append(b.tensor(f"L{n}", legs + [up], pos=(n * DX, 0.0)))
        ups.append(up)
        xs.append(n * DX)
    return ids, ups, xs


def balanced_tree(n: int) -> int | tuple:
    """A binary tree over sites ``0..n-1`` as nested pairs: the first ceil(n/2) sites left, the rest right.

    Balanced splits keep every subtree's fragment small, which is what makes a nonlinear tree cheap to stream
    (pairing level by level and carrying odd sites up would join a fragment of nearly all of W to one leaf).
    """
    def split(lo: int, hi: int) -> int | tuple:
        if hi - lo == 1:
            return lo
        mid = lo + (hi - lo + 1) // 2
        return (split(lo, mid), split(mid, hi))

    return split(0, n)


def _height(t: int | tuple) -> int:
    return 0 if isinstance(t, int) else 1 + max(_height(t[0]), _height(t[1]))


def sibling_pairs(tree: int | tuple) -> set[tuple[int, int]]:
    """Pairs of sites that share a parent in ``tree``."""
    if isinstance(tree, int):
        return set()
    a, c = tree
    own = {(a, c)} if isinstance(a, int) and isinstance(c, int) else set()
    return own | sibling_pairs(a) | sibling_pairs(c)


def _leaf_layer(kind: str, in_features: int, out_features: int, bond: int, in_factors,
                out_factors) -> tuple[_Builder, list[str], list[str], list[float]]:
    """Sites and their leaf cores for a layered template (at least 2 sites): builder, order, up-bonds, x positions."""
    in_f, out_f = leg_factors(in_features, out_features, in_factors, out_factors)
    b = _Builder(in_features, out_features)
    sites = b.site_legs(in_f, out_f)
    if len(sites) < 2:
        raise ValueError(f"{kind} needs at least 2 sites")
    leaf_ids, ups, xs = _leaves(b, sites, bond)
    return b, list(leaf_ids), ups, xs


def _tree_up(b: _Builder, ups: list[str], xs: list[float], bond: int, activation: str | None, order: list[str],
             y: float, prefix: str = "N") -> str:
    """Join the bonds ``ups`` by a balanced binary tree of ``(chi, chi, chi)`` nodes; returns the root id.

    Nodes are named ``N<height>_<j>`` and appended to ``order`` children first; the root ``top`` is ``(chi, chi)``.
    """
    tree = balanced_tree(len(ups))
    count: dict[int, int] = {}

    def build(t: int | tuple) -> tuple[str, float]:
        if isinstance(t, int):
            return ups[t], xs[t]
        (left, xl), (right, xr) = build(t[0]), build(t[1])
        h, x = _height(t), (xl + xr) / 2
        if t is tree:
            order.append(b.tensor("top", [left, right], kind="core", pos=(x, y - (h - 1) * DY)))
            return "", x
        j = count[h] = count.get(h, -1) + 1
        up = b.bond(f"u{h}_{j}", bond)
        order.append(b.tensor(f"{prefix}{h}_{j}", [left, right, up], kind="isometry", activation=activation,
                              pos=(x, y - (h - 1) * DY)))
        return up, x

    build(tree)
    return "top"


def ttn(in_features: int, out_features: int, bond: int = 4, activation: str | None = None,
        in_factors=None, out_factors=None) -> Design:
    """Binary tree tensor network over the sites: leaves ``(i_n, o_n, s_n)``, internal nodes ``(chi, chi, chi)``."""
    in_f, out_f = leg_factors(in_features, out_features, in_factors, out_factors)
    b = _Builder(in_features, out_features)
    sites = b.site_legs(in_f, out_f)
    if len(sites) == 1:
        b.tensor("top", sites[0])
        return b.design("ttn", meta={"template": "ttn"})
    order, (leaf_ids, ups, xs) = [], _leaves(b, sites, bond)
    order += leaf_ids
    root = _tree_up(b, ups, xs, bond, activation, order, -DY)
    return b.design("ttn", order=order, root=root, meta={"template": "ttn"})


def _disentangle(b: _Builder, ups: list[str], xs: list[float], bond: int, activation: str | None,
                 order: list[str], layer: int, y: float, pairs: list[int] | None = None) -> list[str]:
    """Disentanglers ``(chi, chi, chi, chi)`` on the neighbouring sites ``(j, j+1)`` for ``j`` in ``pairs``.

    By default the pairs across pair boundaries, (1,2), (3,4), ..., as in a binary MERA layer.
    """
    ups = list(ups)
    for n, j in enumerate(range(1, len(ups) - 1, 2) if pairs is None else pairs):
        a, c = b.bond(f"d{layer}_{j}", bond), b.bond(f"d{layer}_{j + 1}", bond)
        order.append(b.tensor(f"D{layer}_{n}", [ups[j], ups[j + 1], a, c], kind="disentangler",
                              activation=activation, pos=((xs[j] + xs[j + 1]) / 2, y)))
        ups[j], ups[j + 1] = a, c
    return ups


def attn(in_features: int, out_features: int, bond: int = 4, activation: str | None = None,
         in_factors=None, out_factors=None) -> Design:
    """Augmented TTN: a TTN with disentanglers on neighbouring leaves that belong to different parents."""
    b, order, ups, xs = _leaf_layer("attn", in_features, out_features, bond, in_factors, out_factors)
    siblings, pairs = sibling_pairs(balanced_tree(len(ups))), []
    for j in range(len(ups) - 1):  # neighbours with different parents, left to right, not overlapping
        if (j, j + 1) not in siblings and (not pairs or pairs[-1] < j - 1):
            pairs.append(j)
    ups = _disentangle(b, ups, xs, bond, activation, order, 0, -DY * 0.6, pairs)
    root = _tree_up(b, ups, xs, bond, activation, order, -DY * 1.6)
    return b.design("attn", order=order, root=root, meta={"template": "attn"})


def mera(in_features: int, out_features: int, bond: int = 4, activation: str | None = None,
         in_factors=None, out_factors=None) -> Design:
    """Binary MERA: leaves, then alternating disentangler and isometry layers down to two sites and a top tensor."""
    b, order, ups, xs = _leaf_layer("mera", in_features, out_features, bond, in_factors, out_factors)
    layer, y = 0, -DY * 0.6
    while len(ups) > 2:
        ups = _disentangle(b, ups, xs, bond, activation, order, layer, y)
        new_ups, new_xs = [], []
        for j in range(0, len(ups) - 1, 2):
            up = b.bond(f"u{layer}_{j // 2}", bond)
            x = (xs[j] + xs[j + 1]) / 2
            order.append(b.tensor(f"W{layer}_{j // 2}", [ups[j], ups[j + 1], up], kind="isometry",
                                  activation=activation, pos=(x, y - DY * 0.7)))
            new_ups.append(up)
            new_xs.append(x)
        if len(ups) % 2:
            new_ups.append(ups[-1])
            new_xs.append(xs[-1])
        ups, xs, layer, y = new_ups, new_xs, layer + 1, y - DY * 1.5
    order.append(b.tensor("top", list(ups), pos=(sum(xs) / len(xs), y)))
    return b.design("mera", order=order, root="top", meta={"template": "mera"})


TEMPLATES: dict[str, Callable[..., Design]] = {
    "mpo": mpo, "tensor_ring": tensor_ring, "tucker": tucker, "cp": cp, "ttn": ttn, "attn": attn, "mera": mera,
}


def make_template(kind: str, in_features: int, out_features: int, bond: int | Sequence[int] = 4,
                  activation: str | None = None, in_factors: Sequence[int] | None = None,
                  out_factors: Sequence[int] | None = None, name: str | None = None) -> Design:
    """Build a template design by kind name; bad arguments raise ``ValueError`` with a clear message."""
    kind = kind.replace("-", "_").lower()
    if kind in ("tt", "tensor_train"):
        kind = "mpo"
    if kind in ("tr", "ring"):
        kind = "tensor_ring"
    if kind not in TEMPLATES:
        raise ValueError(f"unknown template {kind!r}: choose one of {', '.join(TEMPLATE_KINDS)}")
    if activation in ("", "none", "None"):
        activation = None
    if activation is not None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})")
        if kind not in NONLINEAR_CAPABLE:
            raise ValueError(f"{kind} has no internal tensors to activate: activations apply to "
                             f"{', '.join(NONLINEAR_CAPABLE)}")
    for what, v in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    if kind not in ("mpo", "tensor_ring") and not isinstance(bond, int):
        raise ValueError(f"{kind} takes a single bond dimension")
    try:
        d = TEMPLATES[kind](in_features, out_features, bond, activation, in_factors, out_factors)
    except DesignError as e:
        raise ValueError(str(e)) from None
    d.name = name or f"{kind} {in_features}x{out_features} chi={bond}" + (f" {activation}" if activation else "")
    d.meta.update({"bond": bond if isinstance(bond, int) else list(bond), "activation": activation})
    return d
