"""Template designs: mpo (tensor train), tensor_ring, tucker, cp, ttn, attn, mera.

Every template factorises ``in_features`` and ``out_features`` into legs (balanced unless given) and returns a
validated :class:`~engine.design.Design` with positions for drawing. Chain and tree templates pair the legs into
*sites*: site ``n`` carries in leg ``i{n}`` and out leg ``o{n}`` (a leg of dim 1 is left out).

Nonlinear templates (``activation`` given) put the activation on every tensor that absorbs others, except the last
one (the root / top), so W itself is not squashed; leaves stay raw parameters. Their evaluation order is written
into the design explicitly (bottom-up, layer by layer).

Lateral mixing tensors (option ``lateral`` of ttn, attn and mera). A *level* of a layered template is the row of
bonds one layer of tensors absorbs, left to right: level 0 holds the leaves' up-bonds; in a tree (ttn, attn) level
``l`` holds the up-bonds of the maximal subtrees of height ``<= l`` (a subtree of smaller height is carried up, so
its bond sits on several levels); in a MERA, level ``l`` holds the bonds that layer ``l`` (its disentanglers, then
its isometries) absorbs. The last level is the two bonds of the top tensor. On a chosen level, a lateral tensor
``X<l>_<n>`` (kind ``lateral``, indices ``(left in, right in, left out, right out)``, ``chi^4`` parameters) sits on
each pair of neighbouring bonds that go to *different* tensors next (different parents in a tree; in aTTN level 0
and in a MERA, the next tensor of a bond is its disentangler if it has one), taken left to right without overlap:
it joins exactly the neighbours the layer above does not join directly. Its two output bonds ``x<l>_<j>`` replace
the inputs, so the layer above (disentanglers first, then nodes / isometries) absorbs them. So a TTN gets laterals
across parent boundaries (at level 0 exactly aTTN's disentanglers), and a MERA or an aTTN's level 0 gets them on
the pairs between its disentanglers, completing a brick wall. The top level never has a place (both bonds go to
the top). ``lateral`` is ``"none"``, ``"all"`` (every level that has places), ``"top"`` (the highest such level) or
a list of levels. Lateral tensors carry the template's activation. Evaluation order: level by level, the laterals
of level ``l`` (left to right) are absorbed after every tensor below that level and before that level's
disentanglers and the nodes above it; each merges the two fragments holding its input bonds. Cost: where those
fragments would otherwise stay apart up to a higher common ancestor, every later fragment holds all their sites
times the bonds left open (e.g. a 5-site TTN: W x chi^2 with ``top``, W x chi^3 with ``all``, against W), which the
cost model reads off the program before anything runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from engine.design.model import ACTIVATIONS, Design, DesignError, Index, Tensor
from engine.design.factorize import balanced_factors, check_factors, default_legs
from engine.format import int_list

DX, DY = 150.0, 130.0

TemplateBuilder = Callable[..., Design]  # (in_features, out_features, bond, activation, in_factors, out_factors)


@dataclass(frozen=True)
class TemplateSpec:
    """A registered template kind: what the CLI, the studio's gallery and the JSON Schema offer."""

    kind: str
    build: TemplateBuilder
    label: str  # as the studio's gallery shows it
    nonlinear: bool  # has internal tensors an activation can go on
    per_bond: bool = False  # accepts one bond dimension per bond
    aliases: tuple[str, ...] = field(default=())
    options: tuple["TemplateOption", ...] = field(default=())  # extra keyword options the builder accepts


@dataclass(frozen=True)
class TemplateOption:
    """An extra option of some template kinds (a keyword of ``make_template`` and of their builders, the CLI flag
    ``--<name>``, a control in the studio's gallery and a ``meta`` property in the JSON Schema)."""

    name: str
    label: str  # as the studio's gallery shows it
    choices: tuple[str, ...]  # named values; the first is the default (the option is off)
    levels: bool  # whether a list of level numbers (e.g. ``[0, 2]`` or ``"0,2"``) is accepted too
    help: str

    @property
    def default(self) -> str:
        return self.choices[0]

    def parse(self, value: Any) -> str | tuple[int, ...]:
        """Normalise a value: one of ``choices`` (``None``/``False`` are the default, ``True`` the second choice)
        or, with ``levels``, a sorted tuple of level numbers (from ``[0, 2]``, ``2`` or ``"0,2"``)."""
        if value is None or value is False:
            return self.default
        if value is True:
            return self.choices[1]
        names = list(self.choices) + (["levels such as 0,1"] if self.levels else [])
        bad = ValueError(f"{self.name} must be {', '.join(names[:-1])} or {names[-1]}, got {value!r}")
        if isinstance(value, str):
            text = value.strip().lower()
            if text in self.choices or text == "":
                return text or self.default
            try:
                items: list[Any] = int_list(text, ",", spaces=True)
            except ValueError:
                raise bad from None
        elif isinstance(value, int):
            items = [value]
        else:
            try:
                items = list(value)
            except TypeError:
                raise bad from None
        if not self.levels or not items or any(not isinstance(v, int) or isinstance(v, bool) or v < 0
                                               for v in items):
            raise bad
        return tuple(sorted(set(items)))

    def text(self, value: str | tuple[int, ...]) -> str:
        """A parsed value as the CLI takes it (``"top"``, ``"0,2"``)."""
        return value if isinstance(value, str) else ",".join(map(str, value))


LATERAL = TemplateOption(
    "lateral", "Lateral mixing", ("none", "all", "top"), levels=True,
    help="lateral mixing tensors on neighbouring bonds that go to different tensors next: none, all (every level "
         "that has places), top (the highest such level) or levels such as 0,1")


TEMPLATES: dict[str, TemplateSpec] = {}


def register_template(kind: str, label: str, nonlinear: bool, per_bond: bool = False,
                      aliases: Sequence[str] = (),
                      options: Sequence[TemplateOption] = ()) -> Callable[[TemplateBuilder], TemplateBuilder]:
    """Decorator: register a template builder under ``kind`` (the one place a new template kind is added)."""
    def deco(fn: TemplateBuilder) -> TemplateBuilder:
        if kind in TEMPLATES:
            raise ValueError(f"template kind {kind!r} is registered twice")
        TEMPLATES[kind] = TemplateSpec(kind, fn, label, nonlinear, per_bond, tuple(aliases), tuple(options))
        return fn
    return deco


def option_kinds(option: TemplateOption) -> tuple[str, ...]:
    """The registered kinds that accept ``option``."""
    return tuple(k for k, s in TEMPLATES.items() if option in s.options)


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


@register_template("mpo", "MPO (tensor train)", nonlinear=True, per_bond=True, aliases=("tt", "tensor_train"))
def mpo(in_features: int, out_features: int, bond: int | Sequence[int] = 4, activation: str | None = None,
        in_factors=None, out_factors=None) -> Design:
    """Matrix product operator (tensor train): cores ``(r_{n-1}, i_n, o_n, r_n)``, open boundaries."""
    return _chain("mpo", in_features, out_features, bond, activation, in_factors, out_factors, ring=False)


@register_template("tensor_ring", "Tensor ring", nonlinear=True, per_bond=True, aliases=("tr", "ring"))
def tensor_ring(in_features: int, out_features: int, bond: int | Sequence[int] = 4, activation: str | None = None,
                in_factors=None, out_factors=None) -> Design:
    """Tensor ring: an MPO whose last core connects back to the first."""
    return _chain("tensor_ring", in_features, out_features, bond, activation, in_factors, out_factors, ring=True)


@register_template("tucker", "Tucker", nonlinear=False)
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


@register_template("cp", "CP", nonlinear=False)
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


# ----------------------------------------------------------------------------- lateral mixing tensors
def different_next_pairs(nxt: Sequence[Any]) -> list[int]:
    """Left ends ``j`` of the neighbouring pairs ``(j, j+1)`` whose bonds go to different tensors next
    (``nxt[j] != nxt[j+1]``), taken left to right without overlap: where lateral tensors go on a level."""
    out: list[int] = []
    for j in range(len(nxt) - 1):
        if nxt[j] != nxt[j + 1] and (not out or out[-1] < j - 1):
            out.append(j)
    return out


def _tree_fronts(tree: int | tuple) -> tuple[list[list[int | tuple]], dict]:
    """The levels of a tree: level ``l`` lists the maximal subtrees of height ``<= l``, left to right (their up-bonds
    are the level's bonds), for ``l = 0 .. height - 1``; and each subtree's parent."""
    parent: dict = {}

    def walk(t: int | tuple) -> None:
        if not isinstance(t, int):
            for c in t:
                parent[c] = t
                walk(c)

    def front(t: int | tuple, level: int) -> list[int | tuple]:
        return [t] if _height(t) <= level else front(t[0], level) + front(t[1], level)

    walk(tree)
    return [front(tree, level) for level in range(_height(tree))], parent


def _tree_places(n_sites: int, dis_pairs: Sequence[int] = ()) -> list[list[int]]:
    """Lateral places per level of a balanced tree over ``n_sites`` (aTTN: ``dis_pairs`` are its disentanglers on
    level 0, which a level-0 lateral precedes, so their bonds' next tensor is the disentangler)."""
    fronts, parent = _tree_fronts(balanced_tree(n_sites))
    places = []
    for level, front in enumerate(fronts):
        nxt: list[Any] = [parent[t] for t in front]
        if level == 0:
            for j in dis_pairs:
                nxt[j] = nxt[j + 1] = ("disentangler", j)
        places.append(different_next_pairs(nxt))
    return places


def _mera_places(n_sites: int) -> list[list[int]]:
    """Lateral places per level of the binary MERA template: on a level of ``m`` bonds the disentanglers take
    ``(1,2), (3,4), ...``, the isometries ``(0,1), (2,3), ...`` (an odd last bond is carried up); the last level
    (the top tensor's two bonds) has none."""
    places, m = [], n_sites
    while m > 2:
        nxt: dict[int, tuple] = {}
        for j in range(1, m - 1, 2):
            nxt[j] = nxt[j + 1] = ("disentangler", j)
        for j in range(0, m - 1, 2):
            nxt.setdefault(j, ("isometry", j))
            nxt.setdefault(j + 1, ("isometry", j))
        places.append(different_next_pairs([nxt.get(j, ("carried", j)) for j in range(m)]))
        m = (m + 1) // 2
    return places + [[]]


def _attn_pairs(n_sites: int) -> list[int]:
    """aTTN's disentanglers: neighbouring sites with different parents, left to right, not overlapping."""
    siblings, pairs = sibling_pairs(balanced_tree(n_sites)), []
    for j in range(n_sites - 1):
        if (j, j + 1) not in siblings and (not pairs or pairs[-1] < j - 1):
            pairs.append(j)
    return pairs


_LATERAL_PLACES: dict[str, Callable[[int], list[list[int]]]] = {
    "ttn": lambda k: _tree_places(k) if k > 1 else [],
    "attn": lambda k: _tree_places(k, _attn_pairs(k)),
    "mera": _mera_places,
}


def _resolve_lateral(kind: str, lateral: str | Sequence[int] | None, places: list[list[int]],
                     n_sites: int) -> list[int]:
    """The levels that get lateral tensors: ``none`` -> [], ``all`` -> every level with places, ``top`` -> the highest
    one, a list -> those levels (each must have places)."""
    lateral = LATERAL.parse(lateral)
    if lateral == "none":
        return []
    have = [level for level, p in enumerate(places) if p]
    if not have:
        raise ValueError(f"{kind} over {n_sites} site{'s' if n_sites != 1 else ''} has no neighbouring bonds "
                         f"that go to different tensors: no place for a lateral tensor (use more legs)")
    if lateral == "all":
        return have
    if lateral == "top":
        return have[-1:]
    bad = [level for level in lateral if level not in have]
    if bad:
        raise ValueError(f"{kind}: level{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} "
                         f"{'have' if len(bad) > 1 else 'has'} no place for a lateral tensor (levels "
                         f"0..{len(places) - 1}; with places: {', '.join(map(str, have))})")
    return list(lateral)


def _lateral_meta(kind: str, lateral: str | Sequence[int] | None, levels: list[int]) -> dict[str, Any]:
    meta: dict[str, Any] = {"template": kind}
    if levels:
        value = LATERAL.parse(lateral)
        meta.update({"lateral": value if isinstance(value, str) else list(value), "lateral_levels": list(levels)})
    return meta


def _lateral_layer(b: _Builder, ups: list[str], xs: list[float], bond: int, activation: str | None,
                   order: list[str], level: int, y: float, pairs: Sequence[int]) -> list[str]:
    """Lateral tensors ``X<level>_<n>`` ``(chi, chi, chi, chi)`` on the bonds ``(j, j+1)`` for ``j`` in ``pairs``;
    returns the level's bonds with the laterals' outputs ``x<level>_<j>`` in place of their inputs."""
    ups = list(ups)
    for n, j in enumerate(pairs):
        a, c = b.bond(f"x{level}_{j}", bond), b.bond(f"x{level}_{j + 1}", bond)
        order.append(b.tensor(f"X{level}_{n}", [ups[j], ups[j + 1], a, c], kind="lateral", activation=activation,
                              pos=((xs[j] + xs[j + 1]) / 2, y)))
        ups[j], ups[j + 1] = a, c
    return ups


def _at_height(t: int | tuple, h: int) -> list[tuple]:
    """The subtrees of height ``h`` (>= 1) of ``t``, left to right."""
    if isinstance(t, int):
        return []
    return [t] if _height(t) == h else _at_height(t[0], h) + _at_height(t[1], h)


def _tree_with_laterals(b: _Builder, ups: list[str], xs: list[float], bond: int, activation: str | None,
                        order: list[str], levels: Sequence[int], dis_pairs: Sequence[int] = ()) -> str:
    """The balanced tree of :func:`_tree_up` (same node names), built level by level so that lateral tensors can sit
    on the chosen levels: per level, its laterals, then (aTTN, level 0) the disentanglers, then the nodes of the
    next height, left to right; the root ``top`` last."""
    tree = balanced_tree(len(ups))
    fronts, _ = _tree_fronts(tree)
    places = _tree_places(len(ups), dis_pairs)
    cur: dict = {n: (ups[n], xs[n]) for n in range(len(ups))}  # subtree -> (its current up-bond, x)
    y = 0.0
    for level, front in enumerate(fronts):
        if level in levels:
            y -= DY * 0.6
            new = _lateral_layer(b, [cur[t][0] for t in front], [cur[t][1] for t in front], bond, activation, order,
                                 level, y, places[level])
            cur.update({t: (new[j], cur[t][1]) for j, t in enumerate(front)})
        if level == 0 and dis_pairs:
            y -= DY * 0.6
            new = _disentangle(b, [cur[n][0] for n in range(len(ups))], xs, bond, activation, order, 0, y,
                               list(dis_pairs))
            cur.update({n: (new[n], xs[n]) for n in range(len(ups))})
        y -= DY
        h = level + 1
        for j, t in enumerate(_at_height(tree, h)):
            (left, xl), (right, xr) = cur[t[0]], cur[t[1]]
            x = (xl + xr) / 2
            if t == tree:
                order.append(b.tensor("top", [left, right], kind="core", pos=(x, y)))
            else:
                up = b.bond(f"u{h}_{j}", bond)
                order.append(b.tensor(f"N{h}_{j}", [left, right, up], kind="isometry", activation=activation,
                                      pos=(x, y)))
                cur[t] = (up, x)
    return "top"


@register_template("ttn", "TTN (tree)", nonlinear=True, options=(LATERAL,))
def ttn(in_features: int, out_features: int, bond: int = 4, activation: str | None = None,
        in_factors=None, out_factors=None, lateral: str | Sequence[int] | None = "none") -> Design:
    """Binary tree tensor network over the sites: leaves ``(i_n, o_n, s_n)``, internal nodes ``(chi, chi, chi)``;
    ``lateral``: lateral mixing tensors across parent boundaries (see the module docstring)."""
    in_f, out_f = leg_factors(in_features, out_features, in_factors, out_factors)
    b = _Builder(in_features, out_features)
    sites = b.site_legs(in_f, out_f)
    levels = _resolve_lateral("ttn", lateral, _LATERAL_PLACES["ttn"](len(sites)), len(sites))
    if len(sites) == 1:
        b.tensor("top", sites[0])
        return b.design("ttn", meta={"template": "ttn"})
    order, (leaf_ids, ups, xs) = [], _leaves(b, sites, bond)
    order += leaf_ids
    if levels:
        root = _tree_with_laterals(b, ups, xs, bond, activation, order, levels)
    else:
        root = _tree_up(b, ups, xs, bond, activation, order, -DY)
    return b.design("ttn", order=order, root=root, meta=_lateral_meta("ttn", lateral, levels))


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


@register_template("attn", "aTTN (augmented tree)", nonlinear=True, options=(LATERAL,))
def attn(in_features: int, out_features: int, bond: int = 4, activation: str | None = None,
         in_factors=None, out_factors=None, lateral: str | Sequence[int] | None = "none") -> Design:
    """Augmented TTN: a TTN with disentanglers on neighbouring leaves that belong to different parents;
    ``lateral``: lateral mixing tensors (see the module docstring)."""
    b, order, ups, xs = _leaf_layer("attn", in_features, out_features, bond, in_factors, out_factors)
    pairs = _attn_pairs(len(ups))  # neighbours with different parents, left to right, not overlapping
    levels = _resolve_lateral("attn", lateral, _LATERAL_PLACES["attn"](len(ups)), len(ups))
    if levels:
        root = _tree_with_laterals(b, ups, xs, bond, activation, order, levels, pairs)
    else:
        ups = _disentangle(b, ups, xs, bond, activation, order, 0, -DY * 0.6, pairs)
        root = _tree_up(b, ups, xs, bond, activation, order, -DY * 1.6)
    return b.design("attn", order=order, root=root, meta=_lateral_meta("attn", lateral, levels))


@register_template("mera", "MERA", nonlinear=True, options=(LATERAL,))
def mera(in_features: int, out_features: int, bond: int = 4, activation: str | None = None,
         in_factors=None, out_factors=None, lateral: str | Sequence[int] | None = "none") -> Design:
    """Binary MERA: leaves, then alternating disentangler and isometry layers down to two sites and a top tensor;
    ``lateral``: lateral mixing tensors between the disentanglers (see the module docstring)."""
    b, order, ups, xs = _leaf_layer("mera", in_features, out_features, bond, in_factors, out_factors)
    places = _mera_places(len(ups))
    levels = _resolve_lateral("mera", lateral, places, len(ups))
    layer, y = 0, -DY * 0.6
    while len(ups) > 2:
        if layer in levels:  # on the layer's bonds, before its disentanglers
            ups = _lateral_layer(b, ups, xs, bond, activation, order, layer, y, places[layer])
            y -= DY * 0.6
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
    return b.design("mera", order=order, root="top", meta=_lateral_meta("mera", lateral, levels))


TEMPLATE_KINDS: tuple[str, ...] = tuple(TEMPLATES)
NONLINEAR_CAPABLE: tuple[str, ...] = tuple(k for k, s in TEMPLATES.items() if s.nonlinear)
TEMPLATE_OPTIONS: tuple[TemplateOption, ...] = tuple(dict.fromkeys(o for s in TEMPLATES.values() for o in s.options))
_ALIASES = {a: k for k, s in TEMPLATES.items() for a in s.aliases}


def template_kind(kind: str) -> str:
    """The registered kind for ``kind`` or one of its aliases (case and ``-``/``_`` insensitive)."""
    key = kind.replace("-", "_").lower()
    key = _ALIASES.get(key, key)
    if key not in TEMPLATES:
        raise ValueError(f"unknown template {kind!r}: choose one of {', '.join(TEMPLATE_KINDS)}")
    return key


def make_template(kind: str, in_features: int, out_features: int, bond: int | Sequence[int] = 4,
                  activation: str | None = None, in_factors: Sequence[int] | None = None,
                  out_factors: Sequence[int] | None = None, name: str | None = None,
                  lateral: str | Sequence[int] | None = None) -> Design:
    """Build a template design by kind name; bad arguments raise ``ValueError`` with a clear message.

    ``lateral`` (ttn, attn, mera): ``"none"`` (default), ``"all"``, ``"top"`` or a list of levels (also ``"0,1"``)
    that get lateral mixing tensors (see the module docstring).
    """
    kind = template_kind(kind)
    spec = TEMPLATES[kind]
    options: dict[str, str | tuple[int, ...]] = {}
    for opt, value in ((LATERAL, lateral),):
        parsed = opt.parse(value)
        if parsed == opt.default:
            continue
        if opt not in spec.options:
            raise ValueError(f"{kind} has no {opt.name} option: it applies to {', '.join(option_kinds(opt))}")
        options[opt.name] = parsed
    if activation in ("", "none", "None"):
        activation = None
    if activation is not None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})")
        if not spec.nonlinear:
            raise ValueError(f"{kind} has no internal tensors to activate: activations apply to "
                             f"{', '.join(NONLINEAR_CAPABLE)}")
    for what, v in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    if not spec.per_bond and not isinstance(bond, int):
        raise ValueError(f"{kind} takes a single bond dimension")
    try:
        d = spec.build(in_features, out_features, bond, activation, in_factors, out_factors, **options)
    except DesignError as e:
        raise ValueError(str(e)) from None
    d.name = name or (f"{kind} {in_features}x{out_features} chi={bond}" + (f" {activation}" if activation else "")
                      + "".join(f" {k}={LATERAL.text(v)}" for k, v in options.items()))
    d.meta.update({"bond": bond if isinstance(bond, int) else list(bond), "activation": activation})
    return d


def lateral_levels(kind: str, in_features: int, out_features: int, in_factors: Sequence[int] | None = None,
                   out_factors: Sequence[int] | None = None) -> list[int]:
    """The levels of a template that have places for lateral tensors (what ``lateral`` may list; ``"top"`` is the
    last of them); empty for kinds without the option or without places."""
    kind = template_kind(kind)
    if LATERAL not in TEMPLATES[kind].options:
        return []
    in_f, out_f = leg_factors(in_features, out_features, in_factors, out_factors)
    places = _LATERAL_PLACES[kind](max(len(in_f), len(out_f)))
    return [level for level, p in enumerate(places) if p]
