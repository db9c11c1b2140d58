"""The design model: one JSON format for every tensor-network layer.

A design describes a dense weight ``W`` (``in_features x out_features``) as a network of small tensors.

File layout (``{"format": "tnstudio-design", "version": 1 or 2, ...}``)::

    name      free text (at most 256 characters)
    target    {"kind": "linear", "in_features": N, "out_features": M}, or (version 2)
              {"kind": "conv2d", "in_channels": C, "out_channels": D, "kernel_size": [kh, kw], "stride": [sh, sw],
               "padding": [ph, pw], "dilation": [dh, dw], "groups": 1}
    indices   name -> {"dim": int, "role": "in"|"out"|"kernel"|"bond", "axis": int (open legs), "hyperedge": bool}
    tensors   [{"id", "indices": [...], "kind", "activation", "position": [x, y]}, ...]
    order     optional list of tensor ids (evaluation order for nonlinear designs)
    root      optional tensor id (the order is derived from it when ``order`` is absent)

Open legs (role ``in``/``out``) appear in exactly one tensor and carry an ``axis``. The full tensor ``T`` has the
in legs (axis 0 first) followed by the out legs, and ``W = T.reshape(prod(in dims), prod(out dims))`` in row-major
order, so in axis 0 is the most significant. The layer computes ``y = x @ W + b``. A bond joins exactly two
tensors, unless it is declared ``"hyperedge": true`` (e.g. the shared rank index of CP), then two or more.

Conv2d targets (format version 2; linear designs are still written as version 1, which every TN Studio reads, and
both versions load). The network generates a convolution kernel instead of a matrix. Its open legs are the input
channel factors (role ``in``), the output channel factors (role ``out``) and the kernel's spatial legs (role
``kernel``, axis 0 first: usually ``kh`` then ``kw``; their dims multiply to ``kh * kw``). Flattening convention: the
full tensor ``T`` ordered (out legs, in legs, kernel legs), each group by axis, reshaped row-major, *is*
``torch.nn.Conv2d.weight``: ``K = T.reshape(out_channels, in_channels, kh, kw)``; the layer computes
``F.conv2d(x, K, b, stride, padding, dilation)`` (groups 1). Equivalently the im2col matrix
``K.reshape(out_channels, -1).T`` is ``W`` of a linear layer with ``in_features = in_channels * kh * kw`` (the
conv's fan-in) and ``out_features = out_channels``, which is what ``in_features``/``out_features`` of a conv design
report (so parameter counts, compression and the nn.Conv2d-like initialisation read the same as for linear designs).

Nonlinear evaluation semantics. Tensors are absorbed one at a time in the evaluation order (``order`` if given,
else derived from ``root``: the farthest tensors from the root first, the root last; else file order). Absorbing
tensor ``v`` merges ``v`` with every already-contracted fragment it shares an index with, then applies ``v``'s
activation elementwise to the merged fragment. For a tree, each subtree is therefore activated before its parent
absorbs it. A design without activations is linear: any contraction order gives the same ``W``, so the cost model
is free to choose the cheapest one.

Names and limits (the JSON Schema states the same rules). Tensor ids and index names match :data:`NAME_RULE`,
``[A-Za-z_][A-Za-z0-9_.-]{0,63}``: they become keys, buffer names and literals of generated code, so they can never
carry quotes, spaces, newlines or backslashes; the index names in :data:`RESERVED_INDEX_NAMES` belong to
contraction programs. Every dim is at most :data:`MAX_DIM` (2^31 - 1), every tensor of the network has at most
:data:`MAX_ELEMENTS` (2^63 - 1, torch's int64 element count) entries, and ``in_features`` and ``out_features`` are
at most :data:`MAX_FEATURES` (2^500) each, so W has fewer than 2^1000 entries and every count the cost model reports
(an exact integer) also has a float value: huge layers such as a 2^64 x 2^64 MPO are still costed. At most
:data:`MAX_TENSORS` tensors of at most :data:`MAX_TENSOR_INDICES` indices each (torch.einsum names at most 52), and
design files of at most :data:`MAX_FILE_BYTES`. Anything else is refused with the reason, never half-accepted.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.design.activations import ACTIVATIONS as ACTIVATION_REGISTRY
from engine.files import atomic_write_text, read_input_file
from engine.format import dims_text, int_text, is_unicode_text, unique_keys

FORMAT = "tnstudio-design"
VERSION = 2  # the newest format version; linear designs are written as version 1 (see the module docstring)
VERSIONS = (1, 2)  # the versions this TN Studio reads
LINEAR_VERSION = 1  # what linear designs are written as
CONV_VERSION = 2  # what conv2d designs are written as (version 1 files have linear targets only)
ROLES = ("in", "out", "kernel", "bond")
OPEN_ROLES = ("in", "out", "kernel")  # roles of open legs (the rest are bonds)
TARGET_KINDS = ("linear", "conv2d")
KINDS = ("core", "isometry", "disentangler", "lateral", "delta")
ACTIVATIONS = tuple(ACTIVATION_REGISTRY)  # the names designs may use (engine.design.activations defines them)

NAME_RULE = r"[A-Za-z_][A-Za-z0-9_.-]{0,63}"  # tensor ids and index names (see the module docstring)
NAME_RULE_WORDS = ("a letter or _, then letters, digits, _, . or -, at most 64 characters in all")
_NAME = re.compile(NAME_RULE)
RESERVED_INDEX_NAMES = {"_b": "the batch index", "_in": "the flat input features",
                        "_out": "the flat output features"}  # index names contraction programs use
MAX_DIM = 2 ** 31 - 1  # every dim
MAX_ELEMENTS = 2 ** 63 - 1  # entries of any tensor of the network (torch counts elements in int64)
MAX_FEATURES = 2 ** 500  # in_features, out_features: W has fewer than 2^1000 entries, a float can count them
MAX_TENSORS = 1024
MAX_TENSOR_INDICES = 52  # torch.einsum names at most 52 indices (a-z, A-Z)
MAX_NAME_LENGTH = 256  # the design's name
MAX_META_DEPTH = 32  # nesting of the free-form ``meta`` object
MAX_POSITION = 1e9  # a drawing coordinate (canvas units), either sign
MAX_FILE_BYTES = 16 * 2 ** 20  # a design file (the largest template with 1024 tensors is about 0.3 MiB)
TOP_KEYS = ("format", "version", "name", "target", "indices", "tensors", "order", "root", "meta")
TARGET_KEYS = ("kind", "in_features", "out_features")
CONV_TARGET_KEYS = ("kind", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
INDEX_KEYS = ("dim", "role", "axis", "hyperedge")
TENSOR_KEYS = ("id", "indices", "kind", "activation", "position")


def valid_name(name: Any) -> bool:
    """Whether ``name`` may be a tensor id or an index name (:data:`NAME_RULE`)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def suggest_name(name: Any) -> str:
    """A name that follows :data:`NAME_RULE`, close to ``name`` (every other character becomes ``_``)."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))[:64] or "_"
    return text if re.match(r"[A-Za-z_]", text) else ("_" + text)[:64]


def _shown(name: Any, limit: int = 40) -> str:
    """``repr`` of a user-given value, shortened: safe to print on one line (no raw newlines or escapes)."""
    if isinstance(name, int) and not isinstance(name, bool) and name.bit_length() > 64:
        return f"{'-' if name < 0 else ''}2^{abs(name).bit_length() - 1} or more"  # repr could be 4300+ digits
    try:
        text = repr(name)
    except (ValueError, RecursionError):
        return f"a {type(name).__name__}"
    if len(text) <= limit:
        return text
    return text[:limit - 4] + "..." + (text[-1] if text[-1] in "'\"" else "")


class DesignError(ValueError):
    """An invalid design; ``problems`` lists every rule it breaks, in words."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid design: " + "; ".join(self.problems))


def _pair(v: Any) -> Any:
    """``v`` as a pair: an int ``n`` -> ``(n, n)``, a list or tuple of two -> a tuple (other values unchanged, for
    validation to name)."""
    if _is_int(v):
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return tuple(v)
    return v


@dataclass(frozen=True)
class ConvTarget:
    """A ``conv2d`` target: the layer ``torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
    dilation, groups=1)`` whose weight ``(out, in, kh, kw)`` the design generates (see the module docstring)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @classmethod
    def make(cls, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
             dilation: Any = 1, groups: int = 1) -> "ConvTarget":
        """A target from ints or pairs (``kernel_size=3`` means 3x3); :class:`DesignError` names bad values."""
        t = cls(in_channels, out_channels, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), groups)
        probs = t.problems()
        if probs:
            raise DesignError(probs)
        return t

    @property
    def kernel_positions(self) -> int:
        """``kh * kw``."""
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def in_features(self) -> int:
        """Rows of the im2col matrix (the conv's fan-in): ``in_channels * kh * kw``."""
        return self.in_channels * self.kernel_positions

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """``torch.nn.Conv2d.weight``'s shape: ``(out, in, kh, kw)``."""
        return (self.out_channels, self.in_channels, *self.kernel_size)

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        """The output's spatial size for an input of ``height x width`` (as torch computes it; may be < 1 when the
        input is smaller than the dilated kernel)."""
        return tuple(  # type: ignore[return-value]
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip((height, width), self.kernel_size, self.stride, self.padding, self.dilation))

    def fit_problem(self, height: int, width: int, of: str = "") -> str | None:
        """Why an input of ``height x width`` has no output (smaller than the dilated kernel), else None; ``of``
        names the layer in the message."""
        ho, wo = self.out_size(height, width)
        if ho >= 1 and wo >= 1:
            return None
        (kh, kw), pad, dil = self.kernel_size, self.padding, self.dilation
        return (f"an input of {height}x{width} is smaller than the {kh}x{kw} kernel (dilation {dil[0]}x{dil[1]}, "
                f"padding {pad[0]}x{pad[1]}){of and f' of {of}'}: the output would be {ho}x{wo}")

    @property
    def label(self) -> str:
        """In words: ``conv 3x3 64->128`` (plus stride, padding and dilation when not the defaults)."""
        text = f"conv {self.kernel_size[0]}x{self.kernel_size[1]} {self.in_channels}->{self.out_channels}"
        for name, v, default in (("stride", self.stride, (1, 1)), ("padding", self.padding, (0, 0)),
                                 ("dilation", self.dilation, (1, 1))):
            if v != default:
                text += f" {name} {v[0] if v[0] == v[1] else f'{v[0]}x{v[1]}'}"
        return text

    def problems(self) -> list[str]:
        """Every rule the target breaks, in words."""
        probs = []
        for k in ("in_channels", "out_channels"):
            v = getattr(self, k)
            if not _in_range(v, 1, MAX_DIM):
                probs.append(f"target {k} must be an integer from 1 to {MAX_DIM}, got {_shown(v)}")
        for k, lo in (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            v = getattr(self, k)
            if not (isinstance(v, tuple) and len(v) == 2 and all(_in_range(x, lo, MAX_DIM) for x in v)):
                probs.append(f"target {k} must be an integer or a pair [height, width] of integers from {lo} to "
                             f"{MAX_DIM}, got {_shown(list(v) if isinstance(v, tuple) else v)}")
        if self.groups != 1 or not _is_int(self.groups):
            probs.append(f"target groups must be 1 (grouped and depthwise conv layers take no TN designs), got "
                         f"{_shown(self.groups)}")
        return probs

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "conv2d", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups}


@dataclass
class Index:
    """One index (leg) of the network: an open leg of W (``in``/``out``) or a bond between tensors."""

    dim: int
    role: str = "bond"
    axis: int | None = None
    hyperedge: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dim": self.dim, "role": self.role}
        if self.axis is not None:
            d["axis"] = self.axis
        if self.hyperedge:
            d["hyperedge"] = True
        return d


@dataclass
class Tensor:
    """One tensor (core) of the network."""

    id: str
    indices: list[str]
    kind: str = "core"
    activation: str | None = None
    position: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "indices": list(self.indices), "kind": self.kind,
                             "activation": self.activation}
        if self.position is not None:
            d["position"] = [round(float(self.position[0]), 2), round(float(self.position[1]), 2)]
        return d


@dataclass
class Design:
    """A tensor-network layer design (see the module docstring for the format and semantics)."""

    name: str
    in_features: int
    out_features: int
    indices: dict[str, Index]
    tensors: list[Tensor]
    order: list[str] | None = None
    root: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    conv: ConvTarget | None = None  # a conv2d target (None: linear); in/out_features are then its im2col matrix's

    # ----------------------------------------------------------------- serialisation
    @property
    def target_kind(self) -> str:
        """``"linear"`` or ``"conv2d"``."""
        return "linear" if self.conv is None else "conv2d"

    @property
    def version(self) -> int:
        """The format version the design is written as: 1 for linear designs, 2 for conv2d targets."""
        return LINEAR_VERSION if self.conv is None else CONV_VERSION

    def target_dict(self) -> dict[str, Any]:
        if self.conv is not None:
            return self.conv.to_dict()
        return {"kind": "linear", "in_features": self.in_features, "out_features": self.out_features}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT, "version": self.version, "name": self.name,
            "target": self.target_dict(),
            "indices": {k: v.to_dict() for k, v in self.indices.items()},
            "tensors": [t.to_dict() for t in self.tensors],
        }
        if self.order is not None:
            d["order"] = list(self.order)
        if self.root is not None:
            d["root"] = self.root
        if self.meta:
            d["meta"] = copy.deepcopy(self.meta)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any, validate: bool = True) -> "Design":
        """Build a design from parsed JSON; structural problems raise :class:`DesignError` naming them."""
        design = _parse(d)
        if validate:
            design.check()
        return design

    @classmethod
    def from_json(cls, text: str | bytes, validate: bool = True) -> "Design":
        """Parse design JSON (text, or UTF-8 bytes): strict JSON (no NaN or Infinity, no key given twice), at
        most :data:`MAX_FILE_BYTES`; every problem raises :class:`DesignError`."""
        return cls.from_dict(parse_json(text), validate=validate)

    def copy(self) -> "Design":
        return copy.deepcopy(self)

    def fingerprint(self) -> str:
        """A hash of everything that changes the maths (not names or positions)."""
        d = self.to_dict()
        for t in d["tensors"]:
            t.pop("position", None)
        d.pop("name", None)
        d.pop("meta", None)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    # ----------------------------------------------------------------- structure
    def tensor(self, tid: str) -> Tensor:
        for t in self.tensors:
            if t.id == tid:
                return t
        raise KeyError(f"no tensor {tid!r} in design {self.name!r}")

    @property
    def in_legs(self) -> list[str]:
        """Open input legs, ordered by axis."""
        return _legs(self.indices, "in")

    @property
    def out_legs(self) -> list[str]:
        """Open output legs, ordered by axis."""
        return _legs(self.indices, "out")

    @property
    def kernel_legs(self) -> list[str]:
        """Open kernel legs (conv2d targets), ordered by axis."""
        return _legs(self.indices, "kernel")

    @property
    def open_legs(self) -> list[str]:
        return self.in_legs + self.out_legs + self.kernel_legs

    def dim(self, name: str) -> int:
        return self.indices[name].dim

    def shape(self, tid: str) -> tuple[int, ...]:
        return tuple(self.indices[i].dim for i in self.tensor(tid).indices)

    def tensor_params(self, tid: str) -> int:
        t = self.tensor(tid)
        return 0 if t.kind == "delta" else math.prod(self.shape(tid))

    @property
    def params(self) -> int:
        """Number of trainable entries in all cores (delta tensors are fixed)."""
        return sum(self.tensor_params(t.id) for t in self.tensors)

    @property
    def dense_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def compression(self) -> float:
        return self.dense_params / max(self.params, 1)

    @property
    def is_linear(self) -> bool:
        return all(t.activation is None for t in self.tensors)

    def users(self) -> dict[str, list[str]]:
        """Index name -> ids of the tensors that carry it."""
        out: dict[str, list[str]] = {k: [] for k in self.indices}
        for t in self.tensors:
            for i in t.indices:
                out.setdefault(i, []).append(t.id)
        return out

    def graph(self):
        """A networkx MultiGraph: one node per tensor, one edge per bond (hyperedges as cliques)."""
        import networkx as nx

        g = nx.MultiGraph()
        for t in self.tensors:
            g.add_node(t.id, kind=t.kind, activation=t.activation, indices=list(t.indices),
                       params=self.tensor_params(t.id))
        for name, ids in self.users().items():
            for a in range(len(ids)):
                for b in range(a + 1, len(ids)):
                    g.add_edge(ids[a], ids[b], key=name, index=name, dim=self.indices[name].dim)
        return g

    def evaluation_order(self) -> list[str]:
        """Tensor ids in the order the nonlinear semantics absorbs them."""
        if self.order is not None:
            return list(self.order)
        ids = [t.id for t in self.tensors]
        if self.root is None:
            return ids
        import networkx as nx

        dist = nx.single_source_shortest_path_length(nx.Graph(self.graph()), self.root)
        rank = {tid: i for i, tid in enumerate(ids)}
        return sorted(ids, key=lambda t: (-dist.get(t, -1), rank[t]))

    def layout(self, force: bool = False) -> "Design":
        """Fill in missing positions (all of them with ``force``) from a networkx layout; returns self."""
        if not force and all(t.position is not None for t in self.tensors):
            return self
        import networkx as nx

        g = nx.Graph(self.graph())
        if g.number_of_nodes() == 1:
            pos = {self.tensors[0].id: (0.0, 0.0)}
        else:
            # kamada-kawai reads well for connected graphs; a draft with separate parts gets a spring layout
            pos = nx.kamada_kawai_layout(g) if nx.is_connected(g) else nx.spring_layout(g, seed=0)
        scale = 110.0 * max(2.0, math.sqrt(len(self.tensors)))
        for t in self.tensors:
            if force or t.position is None:
                x, y = pos[t.id]
                t.position = (float(x) * scale, float(y) * scale)
        return self

    # ----------------------------------------------------------------- validation
    def problems(self) -> list[str]:
        """Every rule the design breaks, in words; empty when valid."""
        return _problems(self)

    def check(self) -> "Design":
        """Raise :class:`DesignError` listing the problems, else return self."""
        probs = self.problems()
        if probs:
            raise DesignError(probs)
        return self


def _legs(indices: dict[str, Index], role: str) -> list[str]:
    legs = [k for k, v in indices.items() if v.role == role]
    return sorted(legs, key=lambda k: (indices[k].axis if _is_int(indices[k].axis) else 1 << 62, str(k)))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _unknown(keys: Any, known: tuple[str, ...], where: str) -> list[str]:
    extra = [k for k in keys if k not in known]
    if not extra:
        return []
    return [f"{where}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(_shown(k) for k in extra[:5])} "
            f"(known: {', '.join(known)})"]


def _depth(x: Any, limit: int) -> int:
    """Nesting depth of plain JSON data, counted up to ``limit + 1`` (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(x, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _parse(d: Any) -> Design:
    """Parse the JSON structure, rejecting what cannot be represented at all (wrong types, unknown keys, names
    breaking :data:`NAME_RULE`, numbers out of range): every problem is listed at once."""
    if not isinstance(d, dict):
        raise DesignError(f"a design must be a JSON object, got {type(d).__name__}")
    if d.get("format") != FORMAT:
        raise DesignError(f"not a TN Studio design: 'format' must be {FORMAT!r}, got {_shown(d.get('format'))}")
    version = d.get("version")
    if version not in VERSIONS or isinstance(version, bool):
        raise DesignError(f"unknown design format version {_shown(version)}: this TN Studio reads versions "
                          f"{' and '.join(map(str, VERSIONS))}")
    probs = _unknown(d, TOP_KEYS, "the design")
    name = d.get("name", "untitled")
    if not isinstance(name, str):
        probs.append(f"'name' must be text, got {type(name).__name__}")
        name = "untitled"
    elif len(name) > MAX_NAME_LENGTH:
        probs.append(f"'name' has {len(name)} characters, more than {MAX_NAME_LENGTH}: shorten it")
    target = d.get("target")
    if not isinstance(target, dict):
        raise DesignError("'target' is missing: it must be {\"kind\": \"linear\", \"in_features\", \"out_features\"} "
                          "or {\"kind\": \"conv2d\", \"in_channels\", \"out_channels\", \"kernel_size\", ...}")
    kind = target.get("kind", "linear")
    if kind not in TARGET_KINDS:
        raise DesignError(f"target kind {_shown(kind)} is not supported (known: {', '.join(TARGET_KINDS)})")
    conv: ConvTarget | None = None
    if kind == "conv2d":
        if version < CONV_VERSION:
            raise DesignError(f"a conv2d target needs design format version {CONV_VERSION} (the file says version "
                              f"{version}): set \"version\": {CONV_VERSION}")
        probs += _unknown(target, CONV_TARGET_KEYS, "'target'")
        missing = [k for k in ("in_channels", "out_channels", "kernel_size") if k not in target]
        if missing:
            probs.append(f"a conv2d target needs {', '.join(missing)}")
        conv = ConvTarget(target.get("in_channels"), target.get("out_channels"), _pair(target.get("kernel_size")),
                          _pair(target.get("stride", 1)), _pair(target.get("padding", 0)),
                          _pair(target.get("dilation", 1)), target.get("groups", 1))
        cprobs = conv.problems() if not missing else []
        probs += cprobs
        inf = outf = None
        if not missing and not cprobs:
            inf, outf = conv.in_features, conv.out_channels
            if inf > MAX_FEATURES:
                probs.append("the conv target's in_channels x kernel positions is above 2^500")
    else:
        probs += _unknown(target, TARGET_KEYS, "'target'")
        inf, outf = target.get("in_features"), target.get("out_features")
        probs += [f"target {k} must be an integer from 1 to 2^500, got {_shown(v)}" for k, v in
                  (("in_features", inf), ("out_features", outf)) if not _in_range(v, 1, MAX_FEATURES)]
    raw_idx = d.get("indices")
    if not isinstance(raw_idx, dict):
        probs.append("'indices' must be an object mapping index names to {dim, role, axis}")
        raw_idx = {}
    indices: dict[str, Index] = {}
    for iname, spec in raw_idx.items():
        if not isinstance(spec, dict):
            probs.append(f"index {_shown(iname)} must be an object with 'dim' and 'role'")
            continue
        probs += _unknown(spec, INDEX_KEYS, f"index {_shown(iname)}")
        hyper = spec.get("hyperedge", False)
        if not isinstance(hyper, bool):
            probs.append(f"index {_shown(iname)}: 'hyperedge' must be true or false, got {_shown(hyper)}")
            hyper = False
        role = spec.get("role", "bond")
        if not isinstance(role, str):
            probs.append(f"index {_shown(iname)}: role must be one of {', '.join(ROLES)}, got {_shown(role)}")
            role = "bond"
        indices[iname] = Index(dim=spec.get("dim"), role=role, axis=spec.get("axis"), hyperedge=hyper)
    raw_t = d.get("tensors")
    if not isinstance(raw_t, list):
        probs.append("'tensors' must be a list of tensors")
        raw_t = []
    if len(raw_t) > MAX_TENSORS:
        raise DesignError(f"the design has {len(raw_t)} tensors, more than {MAX_TENSORS}")
    tensors = []
    for n, t in enumerate(raw_t):
        if not isinstance(t, dict) or not isinstance(t.get("indices"), list):
            probs.append(f"tensor #{n} must be an object with 'id' and a list of 'indices'")
            continue
        tid = t.get("id")
        where = f"tensor {_shown(tid)}" if isinstance(tid, str) else f"tensor #{n}"
        probs += _unknown(t, TENSOR_KEYS, where)
        names = t["indices"]
        if not all(isinstance(i, str) for i in names):
            probs.append(f"{where}: index names must be strings, got {_shown(names, 60)}")
            names = [i for i in names if isinstance(i, str)]
        kind, act = t.get("kind", "core"), t.get("activation")
        if not isinstance(kind, str):
            probs.append(f"{where}: kind must be one of {', '.join(KINDS)}, got {_shown(kind)}")
            kind = "core"
        if act is not None and not isinstance(act, str):
            probs.append(f"{where}: activation must be null or one of {', '.join(ACTIVATIONS)}, got {_shown(act)}")
            act = None
        pos = t.get("position")
        if pos is not None:
            if not is_position(pos):
                probs.append(f"{where}: position must be [x, y], two finite numbers of at most {MAX_POSITION:g} "
                             f"in size")
                pos = None
            else:
                pos = (float(pos[0]), float(pos[1]))
        tensors.append(Tensor(id=tid, indices=list(names), kind=kind, activation=act, position=pos))
    order, root, meta = d.get("order"), d.get("root"), d.get("meta")
    if order is not None and not (isinstance(order, list) and all(isinstance(x, str) for x in order)):
        probs.append(f"'order' must be a list of tensor ids (strings), got {_shown(order, 60)}")
        order = None
    if root is not None and not isinstance(root, str):
        probs.append(f"'root' must be a tensor id (a string), got {_shown(root)}")
        root = None
    if meta is not None and not isinstance(meta, dict):
        probs.append(f"'meta' must be an object, got {type(meta).__name__}")
        meta = None
    elif meta is not None and _depth(meta, MAX_META_DEPTH) > MAX_META_DEPTH:
        probs.append(f"'meta' is nested more than {MAX_META_DEPTH} levels deep")
        meta = None
    if probs:
        raise DesignError(probs)
    return Design(name=name, in_features=inf, out_features=outf, indices=indices, tensors=tensors,
                  order=list(order) if order is not None else None, root=root, meta=dict(meta or {}), conv=conv)


def is_position(pos: Any) -> bool:
    """Whether ``pos`` is a drawing position the format keeps: ``[x, y]``, finite numbers within ``MAX_POSITION``."""
    # the bound first: an int too big for a float (10**400) compares exactly but overflows math.isfinite
    return (isinstance(pos, (list, tuple)) and len(pos) == 2
            and all(isinstance(p, (int, float)) and not isinstance(p, bool) and abs(p) <= MAX_POSITION
                    and math.isfinite(p) for p in pos))


def _in_range(x: Any, lo: int, hi: int) -> bool:
    return _is_int(x) and lo <= x <= hi


def _name_problems(design: Design) -> list[str]:
    """One problem naming every tensor id and index name that breaks :data:`NAME_RULE` (with a suggestion), and
    one per reserved index name."""
    probs = []
    bad_ids = [t.id for t in design.tensors if isinstance(t.id, str) and t.id and not valid_name(t.id)]
    bad_idx = [k for k in design.indices if not valid_name(k)]
    if bad_ids or bad_idx:
        parts = []
        for what, bad in (("tensor id", bad_ids), ("index name", bad_idx)):
            if bad:
                shown = ", ".join(f"{_shown(b)} (e.g. {suggest_name(b)!r})" for b in bad[:4])
                parts.append(f"{what}{'s' if len(bad) > 1 else ''} {shown}"
                             + (f" and {len(bad) - 4} more" if len(bad) > 4 else ""))
        probs.append(f"{' and '.join(parts)} break{'s' if len(bad_ids) + len(bad_idx) == 1 else ''} the naming rule "
                     f"{NAME_RULE} ({NAME_RULE_WORDS}): ids and index names become code in exports, so designs "
                     f"saved before TN Studio 0.3 that use other characters must rename them")
    for k in design.indices:
        if k in RESERVED_INDEX_NAMES:
            probs.append(f"index name {k!r} is reserved by TN Studio ({RESERVED_INDEX_NAMES[k]} of contraction "
                         f"programs): rename it")
    return probs


def _problems(design: Design) -> list[str]:
    probs: list[str] = []
    idx = design.indices
    if not design.tensors:
        probs.append("the design has no tensors: add one, or generate a template")
    if len(design.tensors) > MAX_TENSORS:
        probs.append(f"the design has {len(design.tensors)} tensors, more than {MAX_TENSORS}")
    if not isinstance(design.name, str) or len(design.name) > MAX_NAME_LENGTH:
        probs.append(f"the design's name must be text of at most {MAX_NAME_LENGTH} characters")
    elif not is_unicode_text(design.name):
        probs.append("the design's name holds a lone surrogate (\\ud800-\\udfff), which is no Unicode text: it "
                     "could not be printed or saved")
    if not is_unicode_text(design.meta):
        probs.append("'meta' holds a lone surrogate (\\ud800-\\udfff) in a string, which is no Unicode text")
    conv = design.conv
    if conv is not None:
        cprobs = conv.problems() if isinstance(conv, ConvTarget) else ["the conv target must be a ConvTarget"]
        probs += cprobs
        if not cprobs and (design.in_features, design.out_features) != (conv.in_features, conv.out_channels):
            probs.append(f"a conv2d design's in_features x out_features must be its im2col matrix "
                         f"{conv.in_features} x {conv.out_channels} (in_channels x kh x kw by out_channels), got "
                         f"{_shown(design.in_features)} x {_shown(design.out_features)}")
    for k, v in (("in_features", design.in_features), ("out_features", design.out_features)):
        if not _in_range(v, 1, MAX_FEATURES):
            probs.append(f"target {k} must be an integer from 1 to 2^500, got {_shown(v)}")
    probs += _name_problems(design)
    for name, ix in idx.items():
        if not isinstance(name, str) or not name:
            probs.append(f"index name {_shown(name)} must be a non-empty string")
        if not (_is_int(ix.dim) and ix.dim >= 1):
            probs.append(f"index {_shown(name)}: dim must be an integer >= 1, got {_shown(ix.dim)}")
        elif ix.dim > MAX_DIM:
            probs.append(f"index {_shown(name)}: dim {_shown(ix.dim)} is larger than {MAX_DIM} (2^31 - 1), the "
                         f"largest dimension TN Studio accepts")
        if ix.role not in ROLES:
            probs.append(f"index {_shown(name)}: role must be one of {', '.join(ROLES)}, got {_shown(ix.role)}")
        elif ix.role in OPEN_ROLES and not (_is_int(ix.axis) and 0 <= ix.axis <= MAX_TENSORS * MAX_TENSOR_INDICES):
            probs.append(f"open leg {_shown(name)} (role {ix.role}) needs an integer axis >= 0")
        if not isinstance(ix.hyperedge, bool):
            probs.append(f"index {_shown(name)}: 'hyperedge' must be true or false, got {_shown(ix.hyperedge)}")
        elif ix.hyperedge and ix.role != "bond":
            probs.append(f"index {_shown(name)}: only bonds can be hyperedges")
    if conv is None or not isinstance(conv, ConvTarget):
        sizes = (("in", design.in_features, "in_features"), ("out", design.out_features, "out_features"))
        kernel = [k for k, v in idx.items() if v.role == "kernel"]
        if kernel:
            probs.append(f"kernel leg{'s' if len(kernel) > 1 else ''} {', '.join(map(_shown, kernel[:4]))}: role "
                         f"'kernel' belongs to conv2d targets (a linear design has 'in' and 'out' legs only)")
    else:
        kh, kw = conv.kernel_size
        sizes = (("in", conv.in_channels, "in_channels"), ("out", conv.out_channels, "out_channels"),
                 ("kernel", kh * kw, f"the {kh}x{kw} kernel's positions (kernel legs flatten row-major as (kh, kw))"))
    for role, feats, what in sizes:
        legs = [k for k, v in idx.items() if v.role == role]
        axes = sorted(idx[k].axis for k in legs if _is_int(idx[k].axis))
        if not legs:
            probs.append(f"the design has no '{role}' legs: " + (
                "the kernel needs at least one (e.g. kh and kw)" if role == "kernel" else
                "the conv weight needs at least one" if conv is not None else "W needs at least one"))
            continue
        if axes != list(range(len(legs))):
            probs.append(f"'{role}' leg axes must be 0..{len(legs) - 1} without gaps or repeats, got {axes}")
        dims = [idx[k].dim for k in legs]
        if all(_in_range(x, 1, MAX_DIM) for x in dims) and math.prod(dims) != feats:
            shown = dims_text([idx[k].dim for k in _legs(idx, role)])
            probs.append(f"'{role}' leg dims {shown} multiply to {int_text(math.prod(dims))}, but {what} is {feats}")
    ids: set[str] = set()
    for t in design.tensors:
        if not isinstance(t.id, str) or not t.id:
            probs.append(f"tensor id {_shown(t.id)} must be a non-empty string")
            continue
        tid = _shown(t.id)
        if t.id in ids:
            probs.append(f"tensor id {tid} is used twice: ids must be unique")
        ids.add(t.id)
        if t.kind not in KINDS:
            probs.append(f"tensor {tid}: kind must be one of {', '.join(KINDS)}, got {_shown(t.kind)}")
        if t.activation is not None and t.activation not in ACTIVATIONS:
            probs.append(f"tensor {tid}: unknown activation {_shown(t.activation)} (known: {', '.join(ACTIVATIONS)})")
        if not isinstance(t.indices, list) or not all(isinstance(i, str) for i in t.indices):
            probs.append(f"tensor {tid}: indices must be a list of index names")
            continue
        if not t.indices:
            probs.append(f"tensor {tid} has no indices")
        if len(t.indices) > MAX_TENSOR_INDICES:
            probs.append(f"tensor {tid} has {len(t.indices)} indices, more than {MAX_TENSOR_INDICES} (torch.einsum "
                         f"names at most 52): split it into smaller tensors")
        for i in t.indices:
            if i not in idx:
                probs.append(f"tensor {tid} uses index {_shown(i)}, which is not declared in 'indices'")
        if len(set(t.indices)) != len(t.indices):
            probs.append(f"tensor {tid} lists an index twice: {_shown(t.indices, 80)}")
        dims = [idx[i].dim for i in t.indices if i in idx]
        if all(_in_range(x, 1, MAX_DIM) for x in dims) and math.prod(dims) > MAX_ELEMENTS:
            probs.append(f"tensor {tid} would have about 2^{math.prod(dims).bit_length() - 1} entries, more than "
                         f"2^63 - 1 (torch's largest element count): lower its dims")
    if any(not isinstance(t.indices, list) or not all(isinstance(i, str) for i in t.indices)
           for t in design.tensors):
        return probs  # the checks below read index names
    for name, users in design.users().items():
        if name not in idx:
            continue
        ix, n = idx[name], len(users)
        if n == 0:
            probs.append(f"index {_shown(name)} is declared but no tensor uses it")
        elif ix.role in OPEN_ROLES and n != 1:
            probs.append(f"open leg {_shown(name)} must belong to exactly one tensor, found in {n}: "
                         f"{_shown(users, 80)}")
        elif ix.role == "bond":
            if n == 1:
                probs.append(f"bond {_shown(name)} appears only in tensor {_shown(users[0])}: connect it to a second "
                             f"tensor or give it role 'in'/'out' with an axis")
            elif n > 2 and not ix.hyperedge:
                probs.append(f"bond {_shown(name)} joins {n} tensors {_shown(users, 80)}: a bond joins exactly two "
                             f"unless declared \"hyperedge\": true")
    if design.order is not None:
        if not isinstance(design.order, list) or not all(isinstance(x, str) for x in design.order) \
                or sorted(design.order) != sorted(ids) or len(design.order) != len(ids):
            probs.append("'order' must list every tensor id exactly once")
    if design.root is not None and (not isinstance(design.root, str) or design.root not in ids):
        probs.append(f"root {_shown(design.root)} is not a tensor id")
    if not probs and design.tensors:
        import networkx as nx

        g = nx.Graph(design.graph())
        if not nx.is_connected(g):
            parts = [sorted(c) for c in nx.connected_components(g)]
            probs.append(f"the network is not connected: {len(parts)} separate parts "
                         f"({'; '.join(', '.join(p[:4]) + (' ...' if len(p) > 4 else '') for p in parts)})")
    return probs


def _no_constant(name: str) -> Any:
    raise DesignError(f"not valid JSON: {name} is not a JSON number")


def parse_json(text: str | bytes) -> Any:
    """Strict JSON for design files: UTF-8, no NaN/Infinity, no duplicate keys, bounded size and nesting."""
    if len(text) > MAX_FILE_BYTES:
        raise DesignError(f"the design is {len(text):,} bytes, more than {MAX_FILE_BYTES // 2 ** 20} MiB")
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DesignError(f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at position {e.start} cannot be "
                              f"decoded (save the file as UTF-8)") from None
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=unique_keys(DesignError, _shown))
    except json.JSONDecodeError as e:
        raise DesignError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise DesignError("not a design: the JSON is nested too deeply") from None
    except DesignError:  # the hooks' own refusals (NaN, a key twice): already one line
        raise
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise DesignError(f"not valid JSON: {e}") from None


def load_design(path: str | Path) -> Design:
    """Read and validate a design JSON file; a missing or unreadable file raises ``FileNotFoundError`` (a missing
    one) or :class:`DesignError` (a folder, an unreadable or oversized file, bad text, an invalid design)."""
    data = read_input_file(path, MAX_FILE_BYTES, DesignError, "design file")
    return Design.from_json(data)


def save_design(design: Design, path: str | Path) -> Path:
    """Write ``design`` to ``path`` as JSON, atomically: a write that fails (a full disk, a killed process) leaves
    the file that was there whole; nothing half-written ever replaces it."""
    return atomic_write_text(path, design.to_json() + "\n")
