"""The search space of one TN layer: which template kind, which leg factorisation, which bond dimensions (one for
every bond, or one per bond where the template takes that), which activation and template options.

:class:`LayerSpace` is what a study searches; :meth:`LayerSpace.suggest` asks an Optuna trial for one
:class:`Candidate` (Optuna's sampler decides, nothing here samples), and :meth:`Candidate.build` turns it into a
design with :func:`engine.design.templates.make_template`. Parameters are named so that a network's space can
give every layer its own prefix (``prefix="layer1."``) and compose layer spaces in one study.

Parameter names (conditional on the kind, so the sampler models each kind's bonds on their own)::

    kind                      categorical over the kinds
    legs                      categorical over the leg factorisations ("4x4x4x2x2/4x4x4x2x2": in / out)
    <kind>.bond_mode          "uniform" or "per_bond" (kinds whose template takes one dimension per bond)
    <kind>.bond               int in the kind's range (uniform)
    <kind>.bond<j>            int in the kind's range, one per bond (per_bond)
    <kind>.activation         categorical over the activations ("none" included) for kinds with inner tensors
    <kind>.<option>           categorical over a template option's values (e.g. ttn.lateral), when given
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from engine.format import refuse_unknown_keys
from engine.design.factorize import balanced_factors, check_factors, prime_factors
from engine.design.model import ACTIVATIONS, Design
from engine.design.templates import TEMPLATES, make_template, template_kind

if TYPE_CHECKING:
    import optuna

# Bond ranges by kind (inclusive): generator cost grows fast with chi for attn/mera (chi^4 tensors) and tucker (a
# core of r^legs); cp's rank is a sum of rank-one terms, so it needs many. Others: DEFAULT_BOND_RANGE.
DEFAULT_BOND_RANGES: dict[str, tuple[int, int]] = {"attn": (2, 4), "mera": (2, 4), "tucker": (1, 3), "cp": (2, 64)}
DEFAULT_BOND_RANGE = (2, 8)
DEFAULT_ACTIVATIONS = ("none", "gelu")
DEFAULT_LEGS = (2, 3, 4, 5, 6)
BOND_MODES = ("uniform", "per_bond")


class SpaceError(ValueError):
    """A search space that cannot be searched (an unknown kind, an empty range, ...), said in words."""


def _factors_text(factors: Sequence[int]) -> str:
    return "x".join(map(str, factors))


def parse_legs_choice(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``"4x4x4x2x2/4x4x4x2x2"`` -> ``((4, 4, 4, 2, 2), (4, 4, 4, 2, 2))``."""
    a, _, b = text.partition("/")
    return tuple(int(v) for v in a.split("x")), tuple(int(v) for v in (b or a).split("x"))


@dataclass(frozen=True)
class Candidate:
    """One point of a layer space: enough to build the design (see :meth:`build`)."""

    kind: str
    in_features: int
    out_features: int
    in_factors: tuple[int, ...]
    out_factors: tuple[int, ...]
    bond: int | tuple[int, ...]  # one dimension for every bond, or one per bond
    activation: str | None = None
    options: tuple[tuple[str, str], ...] = ()  # template options, e.g. (("lateral", "all"),)

    @property
    def label(self) -> str:
        """Short words for tables and plots, e.g. ``ttn chi=3 gelu 4x4x4x2x2``."""
        chi = str(self.bond) if isinstance(self.bond, int) else ",".join(map(str, self.bond))
        legs = _factors_text(self.in_factors) + ("" if self.in_factors == self.out_factors
                                                 else "/" + _factors_text(self.out_factors))
        extra = "".join(f" {k}={v}" for k, v in self.options)
        return f"{self.kind} chi={chi}{' ' + self.activation if self.activation else ''}{extra} {legs}"

    @property
    def key(self) -> str:
        """A canonical string: equal keys build equal designs (used to spot repeated candidates)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def build(self) -> Design:
        """The design (``ValueError`` when the template refuses this combination)."""
        opts = dict(self.options)
        bond = self.bond if isinstance(self.bond, int) else list(self.bond)
        design = make_template(self.kind, self.in_features, self.out_features, bond, self.activation,
                               list(self.in_factors), list(self.out_factors), lateral=opts.get("lateral"))
        design.name = self.label
        return design

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "in_features": self.in_features, "out_features": self.out_features,
                "in_factors": list(self.in_factors), "out_factors": list(self.out_factors),
                "bond": self.bond if isinstance(self.bond, int) else list(self.bond),
                "activation": self.activation, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        bond = d["bond"]
        return cls(kind=d["kind"], in_features=int(d["in_features"]), out_features=int(d["out_features"]),
                   in_factors=tuple(d["in_factors"]), out_factors=tuple(d["out_factors"]),
                   bond=bond if isinstance(bond, int) else tuple(bond), activation=d.get("activation"),
                   options=tuple(sorted((d.get("options") or {}).items())))


def _option_values(name: str, values: Any) -> tuple[str, ...]:
    """A template option's values to try, each checked by the option itself (as the templates parse it) and
    written as the CLI takes it: a value no template accepts is refused here, not by every candidate later."""
    known = {o.name: o for spec in TEMPLATES.values() for o in spec.options}
    if name not in known:
        raise SpaceError(f"unknown template option {name!r}: choose from {', '.join(sorted(known)) or '(none)'}")
    option = known[name]
    if isinstance(values, str):
        values = (values,)
    out = []
    for v in values:
        try:
            out.append(option.text(option.parse(v)))
        except ValueError as e:
            raise SpaceError(str(e)) from None
    return tuple(dict.fromkeys(out))


@functools.lru_cache(maxsize=256)
def _places_activation(kind: str, in_features: int, out_features: int, in_factors: tuple[int, ...],
                       out_factors: tuple[int, ...]) -> bool:
    """Whether the nonlinear template ``kind`` on these legs puts an activation on any tensor."""
    try:
        d = make_template(kind, in_features, out_features, 2, "gelu", list(in_factors), list(out_factors))
    except ValueError:  # the template refuses these legs: the candidates say why when they are built
        return True
    return any(t.activation is not None for t in d.tensors)


def n_bonds(kind: str, in_factors: Sequence[int], out_factors: Sequence[int]) -> int:
    """How many bonds a per-bond template has (a chain of k sites: k - 1; a ring: k)."""
    k = max(len(in_factors), len(out_factors))
    return k if kind == "tensor_ring" else k - 1


@dataclass(frozen=True)
class LayerSpace:
    """The choices for one layer ``in_features x out_features`` (defaults: every registered kind, 2..6 legs).

    ``legs`` are numbers of legs (balanced factorisations of both sides, like the templates' default);
    ``factorisations`` replaces them with explicit ``(in_factors, out_factors)`` pairs. ``bond_ranges`` maps a kind
    to its inclusive ``(low, high)``; kinds not in it use :data:`DEFAULT_BOND_RANGES` / :data:`DEFAULT_BOND_RANGE`.
    ``per_bond``: also try one dimension per bond on kinds whose template takes that. ``options``: values of
    template options to try (e.g. ``{"lateral": ("none", "all")}``) on the kinds that have them.
    """

    in_features: int
    out_features: int
    kinds: tuple[str, ...] = field(default_factory=lambda: tuple(TEMPLATES))
    legs: tuple[int, ...] = DEFAULT_LEGS
    factorisations: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()
    bond_ranges: tuple[tuple[str, tuple[int, int]], ...] = ()
    activations: tuple[str, ...] = DEFAULT_ACTIVATIONS
    per_bond: bool = True
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - normalising a frozen instance
        for what, v in (("in_features", self.in_features), ("out_features", self.out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpaceError(f"{what} must be an integer >= 1, got {v!r}")
        try:
            kinds = tuple(dict.fromkeys(template_kind(k) for k in self.kinds))
        except ValueError as e:
            raise SpaceError(str(e)) from None
        if not kinds:
            raise SpaceError("the space needs at least one template kind")
        set_("kinds", kinds)
        acts = tuple(dict.fromkeys("none" if a in (None, "", "None") else str(a) for a in self.activations))
        bad = [a for a in acts if a != "none" and a not in ACTIVATIONS]
        if bad or not acts:
            raise SpaceError(f"unknown activation(s) {', '.join(bad) or '(none given)'}: choose from none, "
                             f"{', '.join(ACTIVATIONS)}")
        set_("activations", acts)
        ranges = dict(self.bond_ranges) if not isinstance(self.bond_ranges, Mapping) else dict(self.bond_ranges)
        for k, (lo, hi) in ranges.items():
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
                raise SpaceError(f"bond range of {k} must be integers 1 <= low <= high, got {lo}..{hi}")
        set_("bond_ranges", tuple(sorted((template_kind(k), (int(lo), int(hi))) for k, (lo, hi) in ranges.items())))
        opts = dict(self.options) if not isinstance(self.options, Mapping) else dict(self.options)
        set_("options", tuple(sorted((k, _option_values(k, v)) for k, v in opts.items())))
        if self.factorisations:
            pairs = []
            for a, b in self.factorisations:
                try:
                    pairs.append((tuple(check_factors(self.in_features, list(a), "in")),
                                  tuple(check_factors(self.out_features, list(b), "out"))))
                except ValueError as e:
                    raise SpaceError(str(e)) from None
            set_("factorisations", tuple(dict.fromkeys(pairs)))
        else:
            if not self.legs or any(not isinstance(k, int) or k < 1 for k in self.legs):
                raise SpaceError(f"legs must be integers >= 1, got {self.legs!r}")
            set_("legs", tuple(sorted(set(self.legs))))

    # ------------------------------------------------------------------ choices
    def leg_choices(self) -> tuple[str, ...]:
        """The factorisation choices as strings ``"in/out"``. More legs than either side has prime factors (and
        than 2) would pair legs of size 1 on both sides: a site that adds cores and no leg, so such a count is
        taken as that largest useful one (and the choice appears once)."""
        useful = max(2, len(prime_factors(self.in_features)), len(prime_factors(self.out_features)))
        pairs = self.factorisations or tuple(
            (tuple(balanced_factors(self.in_features, min(k, useful))),
             tuple(balanced_factors(self.out_features, min(k, useful))))
            for k in self.legs)
        return tuple(dict.fromkeys(f"{_factors_text(a)}/{_factors_text(b)}" for a, b in pairs))

    def bond_range(self, kind: str) -> tuple[int, int]:
        return dict(self.bond_ranges).get(kind, DEFAULT_BOND_RANGES.get(kind, DEFAULT_BOND_RANGE))

    def activation_choices(self, kind: str, in_factors: Sequence[int], out_factors: Sequence[int]
                           ) -> tuple[str, ...]:
        """The activations to try for ``kind`` on these legs (a nonlinear template with nowhere to put one, e.g. a
        two-leg TTN, is offered ``none`` only; it had been offered gelu and shown as ``ttn chi=2 gelu 8x8``, the
        same network as without)."""
        if not TEMPLATES[kind].nonlinear or not _places_activation(
                kind, self.in_features, self.out_features, tuple(in_factors), tuple(out_factors)):
            return ("none",)
        return self.activations

    def option_choices(self, kind: str) -> dict[str, tuple[str, ...]]:
        names = {o.name for o in TEMPLATES[kind].options}
        return {k: v for k, v in self.options if k in names and v}

    def size(self) -> int:
        """How many distinct candidates the space holds (per-bond choices included)."""
        total = 0
        for kind in self.kinds:
            lo, hi = self.bond_range(kind)
            n_vals = hi - lo + 1
            per_opt = math.prod(len(v) for v in self.option_choices(kind).values())
            for legs in self.leg_choices():
                a, b = parse_legs_choice(legs)
                bonds = n_vals
                if self.per_bond and TEMPLATES[kind].per_bond and n_bonds(kind, a, b) > 1:  # as suggest() offers
                    bonds += n_vals ** n_bonds(kind, a, b)
                total += bonds * len(self.activation_choices(kind, a, b)) * per_opt
        return total

    # ------------------------------------------------------------------ sampling (through Optuna)
    def suggest(self, trial: optuna.trial.Trial, prefix: str = "") -> Candidate:
        """Ask ``trial`` for a candidate (the sampler picks; conditional parameters are named per kind)."""
        p = prefix
        kind = trial.suggest_categorical(f"{p}kind", list(self.kinds))
        legs = trial.suggest_categorical(f"{p}legs", list(self.leg_choices()))
        in_f, out_f = parse_legs_choice(legs)
        lo, hi = self.bond_range(kind)
        log = hi / lo >= 8
        mode = "uniform"
        if self.per_bond and TEMPLATES[kind].per_bond and n_bonds(kind, in_f, out_f) > 1:
            mode = trial.suggest_categorical(f"{p}{kind}.bond_mode", list(BOND_MODES))
        if mode == "uniform":
            bond: int | tuple[int, ...] = trial.suggest_int(f"{p}{kind}.bond", lo, hi, log=log)
        else:
            bond = tuple(trial.suggest_int(f"{p}{kind}.bond{j}", lo, hi, log=log)
                         for j in range(n_bonds(kind, in_f, out_f)))
        acts = self.activation_choices(kind, in_f, out_f)
        act = trial.suggest_categorical(f"{p}{kind}.activation", list(acts)) if len(acts) > 1 else acts[0]
        options = tuple((name, trial.suggest_categorical(f"{p}{kind}.{name}", list(values)) if len(values) > 1
                         else values[0]) for name, values in sorted(self.option_choices(kind).items()))
        return Candidate(kind=kind, in_features=self.in_features, out_features=self.out_features,
                         in_factors=in_f, out_factors=out_f, bond=bond, activation=None if act == "none" else act,
                         options=tuple((k, v) for k, v in options if v != "none"))

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "kinds": list(self.kinds),
                "legs": list(self.legs),
                "factorisations": [[list(a), list(b)] for a, b in self.factorisations],
                "bond_ranges": {k: list(v) for k, v in self.bond_ranges}, "activations": list(self.activations),
                "per_bond": self.per_bond, "options": {k: list(v) for k, v in self.options}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerSpace:
        refuse_unknown_keys(d, ("in_features", "out_features", "kinds", "legs", "factorisations", "bond_ranges",
                                "activations", "per_bond", "options"), "the search's space", SpaceError)
        return cls(in_features=int(d["in_features"]), out_features=int(d["out_features"]),
                   kinds=tuple(d.get("kinds") or TEMPLATES), legs=tuple(d.get("legs") or DEFAULT_LEGS),
                   factorisations=tuple((tuple(a), tuple(b)) for a, b in d.get("factorisations") or ()),
                   bond_ranges=tuple((k, (int(v[0]), int(v[1]))) for k, v in (d.get("bond_ranges") or {}).items()),
                   activations=tuple(d.get("activations") or DEFAULT_ACTIVATIONS),
                   per_bond=bool(d.get("per_bond", True)),
                   options=tuple((k, tuple(v)) for k, v in (d.get("options") or {}).items()))
