"""Bulk assignment rules: "every Linear with in*out >= N as TTN chi=4 gelu", "every 3x3 conv as CP rank r".

Syntax (one string per rule)::

    SELECTOR:TEMPLATE[:BOND[:ACTIVATION]][:KEY=VALUE ...]

- ``SELECTOR``: ``linear``, ``attention`` (the Q/K/V/out projections of ``nn.MultiheadAttention``), ``conv`` (any
  conv layer), ``conv1d``, ``conv2d``, ``conv3x3`` (any ``convKxL``: 2-D kernels of that size) or ``conv5`` (any
  ``convK``: 1-D kernels of that size).
- ``TEMPLATE``: a template kind (``ttn``, ``mpo``, ``cp``, ...; aliases accepted) or ``dense`` (leave or make the
  matched layers dense).
- ``BOND``: the bond dimension (default 4); ``ACTIVATION``: an activation name or ``none`` (default none).
- options: ``min=N`` / ``max=N`` (only layers whose weight has at least / at most N entries, in*out),
  ``name=GLOB`` (layer names matching a shell pattern, e.g. ``classifier.*``), ``legs=K`` (legs per side;
  default: balanced factors of about 8) and template options such as ``lateral=top``.

Examples: ``linear:ttn:4:gelu``, ``linear:ttn:4:gelu:min=1000000``, ``attention:mpo:8``, ``conv3x3:cp:16``,
``linear:dense:name=classifier.6``.

Rules apply in order (a later rule overrides an earlier one on the layers both match); a network file's per-layer
assignments override every rule. Leg factorisations are chosen automatically (balanced factors, as
:func:`~engine.design.templates.make_template` does). A ``Conv2d`` layer gets a conv2d design
(:func:`~engine.design.conv.make_conv_template`: channel legs plus the kernel's legs, the layer's stride, padding
and dilation; ``legs=K`` splits the channels); template rules skip grouped convs (and string padding), which
take no conv2d design. A rule with a template for a layer kind
that takes no designs (``conv1d``) is refused with the reason. This module does not import torch.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from engine.design.model import ACTIVATIONS, Design
from engine.design.conv import make_conv_template
from engine.design.templates import TEMPLATE_OPTIONS, leg_factors, make_template, template_kind
from engine.format import int_list
from engine.network.layers import LayerInfo, layer_kind, layer_kinds

DENSE = "dense"
DEFAULT_BOND = 4
_CONV_2D = re.compile(r"^conv(\d+)x(\d+)$")
_CONV_1D = re.compile(r"^conv(\d+)$")
_KNOWN_OPTIONS = ("min", "max", "name", "legs") + tuple(o.name for o in TEMPLATE_OPTIONS)


class RuleError(ValueError):
    """A rule that cannot be parsed or applied; the message names the rule and the reason."""


@dataclass(frozen=True)
class Rule:
    """One parsed rule (see the module docstring); ``text`` is how it was written."""

    text: str
    selector: str
    template: str  # a template kind, or "dense"
    bond: int | tuple[int, ...] = DEFAULT_BOND
    activation: str | None = None
    min_weight: int | None = None
    max_weight: int | None = None
    name_glob: str | None = None
    legs: int | None = None
    template_options: dict[str, Any] = field(default_factory=dict)

    @property
    def dense(self) -> bool:
        return self.template == DENSE

    def kinds(self) -> tuple[str, ...]:
        """The layer kinds the rule can match: the selector's, and for a template rule only those that take designs
        (``conv`` gives conv2d layers designs and leaves conv1d layers alone)."""
        kinds = selector_kinds(self.selector)
        return kinds if self.dense else tuple(k for k in kinds if layer_kind(k).tn_target is not None)

    def matches(self, info: LayerInfo) -> bool:
        if info.kind not in self.kinds():
            return False
        if not self.dense and info.kind == "conv2d" and info.conv_refusal() is not None:
            return False  # a grouped conv (string padding, non-zero padding mode) takes no conv2d design: skipped
        m2, m1 = _CONV_2D.match(self.selector), _CONV_1D.match(self.selector)
        if m2 and info.kernel != (int(m2.group(1)), int(m2.group(2))):
            return False
        if m1 and info.kernel != (int(m1.group(1)),):
            return False
        w = info.weight_params
        if self.min_weight is not None and w < self.min_weight:
            return False
        if self.max_weight is not None and w > self.max_weight:
            return False
        return self.name_glob is None or fnmatch.fnmatchcase(info.name, self.name_glob)

    def design(self, info: LayerInfo) -> Design | None:
        """The design this rule gives ``info`` (None for ``dense``); :class:`RuleError` names the layer."""
        if self.dense:
            return None
        try:
            in_f = out_f = None
            name = (f"{info.name} {self.template} chi={_bond_text(self.bond)}"
                    + (f" {self.activation}" if self.activation else ""))
            if info.kind == "conv2d":  # a conv2d design: channel legs, plus the kernel legs
                t = info.conv_target()
                if self.legs:
                    in_f, out_f = leg_factors(t.in_channels, t.out_channels, legs=self.legs)
                d = make_conv_template(self.template, t.in_channels, t.out_channels, t.kernel_size, self.bond,
                                       self.activation, in_f, out_f, stride=t.stride, padding=t.padding,
                                       dilation=t.dilation, name=name, **self.template_options)
            else:
                if self.legs:
                    in_f, out_f = leg_factors(info.in_features, info.out_features, legs=self.legs)
                d = make_template(self.template, info.in_features, info.out_features, self.bond, self.activation,
                                  in_f, out_f, name=name, **self.template_options)
        except ValueError as e:
            raise RuleError(f"rule {self.text!r} on layer {info.name} ({info.shape}): {e}") from None
        d.meta = {**d.meta, "rule": self.text, "layer": info.name}
        return d


def _bond_text(bond: int | tuple[int, ...]) -> str:
    return str(bond) if isinstance(bond, int) else ",".join(map(str, bond))


def selector_kinds(selector: str) -> tuple[str, ...]:
    """The layer kinds a selector names; :class:`RuleError` listing the selectors otherwise."""
    if selector == "conv":
        return tuple(k.name for k in layer_kinds() if k.name.startswith("conv"))
    if _CONV_2D.match(selector):
        return ("conv2d",)
    if _CONV_1D.match(selector):
        return ("conv1d",)
    kinds = tuple(k.name for k in layer_kinds() if selector in k.selectors)
    if not kinds:
        known = sorted({s for k in layer_kinds() for s in k.selectors} | {"conv", "conv3x3", "conv5"})
        raise RuleError(f"unknown selector {selector!r}: use one of {', '.join(known)} (convKxL and convK name "
                        f"kernel sizes)")
    return kinds


def _int(text: str, what: str, rule: str, minimum: int = 1) -> int:
    try:
        v = int(text)
    except ValueError:
        raise RuleError(f"rule {rule!r}: {what} must be an integer, got {text!r}") from None
    if v < minimum:
        raise RuleError(f"rule {rule!r}: {what} must be >= {minimum}, got {v}")
    return v


def parse_rule(text: str) -> Rule:
    """Parse one rule string; :class:`RuleError` says what is wrong and what is allowed."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("a rule must be a non-empty string such as 'linear:ttn:4:gelu'")
    rule = text.strip()
    parts = [p.strip() for p in rule.split(":")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise RuleError(f"rule {rule!r}: write SELECTOR:TEMPLATE[:BOND[:ACTIVATION]][:key=value], e.g. "
                        f"'linear:ttn:4:gelu'")
    selector = parts[0].lower()
    kinds = selector_kinds(selector)
    template = parts[1].lower()
    if template != DENSE:
        try:
            template = template_kind(template)
        except ValueError as e:
            raise RuleError(f"rule {rule!r}: {e} (or 'dense')") from None
        blocked = [layer_kind(k) for k in kinds if layer_kind(k).tn_target is None]
        if blocked and len(blocked) == len(kinds):  # every kind the selector names takes no designs
            raise RuleError(blocked[0].refusal(f"rule {rule!r} refused"))
    positional = [p for p in parts[2:] if "=" not in p]
    options = [p for p in parts[2:] if "=" in p]
    if len(positional) > 2:
        raise RuleError(f"rule {rule!r}: after the template come at most BOND and ACTIVATION, then key=value "
                        f"options; got {positional}")
    bond: int | tuple[int, ...] = DEFAULT_BOND
    activation = None
    if positional and template == DENSE:
        raise RuleError(f"rule {rule!r}: a dense rule takes no bond or activation")
    if positional:
        try:
            texts = [str(v) for v in int_list(positional[0])]  # "4x" was 4
        except ValueError:
            raise RuleError(f"rule {rule!r}: bond must be an integer, got {positional[0]!r}") from None
        vals = [_int(v, "bond", rule) for v in texts]
        bond = vals[0] if len(vals) == 1 else tuple(vals)
    if len(positional) > 1:
        act = positional[1].lower()
        if act not in ("none", "") and act not in ACTIVATIONS:
            raise RuleError(f"rule {rule!r}: unknown activation {positional[1]!r} (known: {', '.join(ACTIVATIONS)}, "
                            f"none)")
        activation = None if act in ("none", "") else act
    kw: dict[str, Any] = {}
    tpl: dict[str, Any] = {}
    seen: set[str] = set()
    for opt in options:
        key, _, value = (s.strip() for s in opt.partition("="))
        key = key.lower()
        if key in seen:  # min=1:min=2 would keep the last silently
            raise RuleError(f"rule {rule!r}: option {key!r} is given twice: keep one")
        seen.add(key)
        if key not in _KNOWN_OPTIONS:
            raise RuleError(f"rule {rule!r}: unknown option {key!r} (known: {', '.join(_KNOWN_OPTIONS)})")
        if key in ("min", "max"):
            kw[f"{key}_weight"] = _int(value.replace("_", ""), key, rule, 0)
        elif key == "legs":
            kw["legs"] = _int(value, key, rule)
        elif key == "name":
            if not value:
                raise RuleError(f"rule {rule!r}: name= needs a pattern, e.g. name=classifier.*")
            kw["name_glob"] = value
        else:
            if template == DENSE:
                raise RuleError(f"rule {rule!r}: a dense rule takes no template option {key!r}")
            tpl[key] = value
    return Rule(text=rule, selector=selector, template=template, bond=bond, activation=activation,
                template_options=tpl, **kw)


def parse_rules(texts: Iterable[str]) -> list[Rule]:
    return [parse_rule(t) for t in texts]


@dataclass(frozen=True)
class Resolved:
    """What one layer ends up with: a design (None: dense) and where it came from."""

    design: Design | None
    source: str  # "default", "rule N: <text>", "layer"


def apply_rules(rules: Sequence[Rule], layers: Sequence[LayerInfo]) -> dict[str, Resolved]:
    """Layer name -> the design of the last rule that matches it (layers no rule matches are left out)."""
    out: dict[str, Resolved] = {}
    for n, rule in enumerate(rules, 1):
        for info in layers:
            if rule.matches(info):
                out[info.name] = Resolved(rule.design(info), f"rule {n}: {rule.text}")
    return out


def unmatched_warning(rules: Sequence[str], layers: Sequence[LayerInfo]) -> str | None:
    """A warning naming the rules (as written) that match none of ``layers``, with the layer kinds the network
    has, or None. Such a rule changes nothing; it is kept (the user may mean it for a later architecture)."""
    idle = [text for text in rules if not any(parse_rule(text).matches(i) for i in layers)]
    if not idle:
        return None
    counts: dict[str, int] = {}
    for i in layers:
        counts[i.kind] = counts.get(i.kind, 0) + 1
    kinds = ", ".join(f"{n} {k}" for k, n in counts.items()) or "none"
    shown = ", ".join(repr(t) for t in idle)
    return (f"rule{'s' if len(idle) > 1 else ''} {shown} match{'' if len(idle) > 1 else 'es'} no layer, so "
            f"{'they change' if len(idle) > 1 else 'it changes'} nothing (assignable layers: {kinds})")


def growth_warning(resolved: Mapping[str, Resolved]) -> str | None:
    """A warning naming the layers whose design has more parameters than the dense weight it replaces (a rule with
    a large bond on small layers: allowed, since a user may want it, but never silently), or None."""
    grown = [(name, r.design) for name, r in resolved.items()
             if r.design is not None and r.design.params > r.design.dense_params]
    if not grown:
        return None
    name, worst = max(grown, key=lambda nd: nd[1].params / max(nd[1].dense_params, 1))
    names = ", ".join(n for n, _ in grown[:6]) + (f" and {len(grown) - 6} more" if len(grown) > 6 else "")
    return (f"{names} get{'s' if len(grown) == 1 else ''} more parameters than the dense weight"
            f"{'' if len(grown) == 1 else 's'} (largest growth: {name}, {worst.params:,} instead of "
            f"{worst.dense_params:,}): lower the bond dimension")
