"""The design model: one JSON format for every tensor-network layer.

A design describes a dense weight ``W`` (``in_features x out_features``) as a network of small tensors.

File layout (``{"format": "tnstudio-design", "version": 1, ...}``)::

    name      free text
    target    {"kind": "linear", "in_features": N, "out_features": M}
    indices   name -> {"dim": int, "role": "in"|"out"|"bond", "axis": int (open legs), "hyperedge": bool}
    tensors   [{"id", "indices": [...], "kind", "activation", "position": [x, y]}, ...]
    order     optional list of tensor ids (evaluation order for nonlinear designs)
    root      optional tensor id (the order is derived from it when ``order`` is absent)

Open legs (role ``in``/``out``) appear in exactly one tensor and carry an ``axis``. The full tensor ``T`` has the
in legs (axis 0 first) followed by the out legs, and ``W = T.reshape(prod(in dims), prod(out dims))`` in row-major
order, so in axis 0 is the most significant. The layer computes ``y = x @ W + b``. A bond joins exactly two
tensors, unless it is declared ``"hyperedge": true`` (e.g. the shared rank index of CP), then two or more.

Nonlinear evaluation semantics. Tensors are absorbed one at a time in the evaluation order (``order`` if given,
else derived from ``root``: the farthest tensors from the root first, the root last; else file order). Absorbing
tensor ``v`` merges ``v`` with every already-contracted fragment it shares an index with, then applies ``v``'s
activation elementwise to the merged fragment. For a tree, each subtree is therefore activated before its parent
absorbs it. A design without activations is linear: any contraction order gives the same ``W``, so the cost model
is free to choose the cheapest one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.design.activations import ACTIVATIONS as ACTIVATION_REGISTRY

FORMAT = "tnstudio-design"
VERSION = 1
ROLES = ("in", "out", "bond")
KINDS = ("core", "isometry", "disentangler", "lateral", "delta")
ACTIVATIONS = tuple(ACTIVATION_REGISTRY)  # the names designs may use (engine.design.activations defines them)


class DesignError(ValueError):
    """An invalid design; ``problems`` lists every rule it breaks, in words."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid design: " + "; ".join(self.problems))


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

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "name": self.name,
            "target": {"kind": "linear", "in_features": self.in_features, "out_features": self.out_features},
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
    def from_json(cls, text: str, validate: bool = True) -> "Design":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DesignError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        return cls.from_dict(data, validate=validate)

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
    def open_legs(self) -> list[str]:
        return self.in_legs + self.out_legs

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
    return sorted(legs, key=lambda k: (indices[k].axis if indices[k].axis is not None else 1 << 30, k))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse(d: Any) -> Design:
    """Parse the JSON structure, rejecting what cannot be represented at all."""
    if not isinstance(d, dict):
        raise DesignError("a design must be a JSON object")
    if d.get("format") != FORMAT:
        raise DesignError(f"not a TN Studio design: 'format' must be {FORMAT!r}, got {d.get('format')!r}")
    if d.get("version") != VERSION:
        raise DesignError(f"unknown design format version {d.get('version')!r}: this TN Studio reads version "
                          f"{VERSION}")
    target = d.get("target")
    if not isinstance(target, dict):
        raise DesignError("'target' is missing: it must be {\"kind\": \"linear\", \"in_features\", \"out_features\"}")
    if target.get("kind", "linear") != "linear":
        raise DesignError(f"target kind {target.get('kind')!r} is not supported yet (only 'linear')")
    inf, outf = target.get("in_features"), target.get("out_features")
    probs = [f"target {k} must be an integer >= 1, got {v!r}" for k, v in
             (("in_features", inf), ("out_features", outf)) if not (_is_int(v) and v >= 1)]
    raw_idx = d.get("indices")
    if not isinstance(raw_idx, dict):
        probs.append("'indices' must be an object mapping index names to {dim, role, axis}")
        raw_idx = {}
    indices: dict[str, Index] = {}
    for name, spec in raw_idx.items():
        if not isinstance(spec, dict):
            probs.append(f"index {name!r} must be an object with 'dim' and 'role'")
            continue
        indices[name] = Index(dim=spec.get("dim"), role=spec.get("role", "bond"), axis=spec.get("axis"),
                              hyperedge=bool(spec.get("hyperedge", False)))
    raw_t = d.get("tensors")
    if not isinstance(raw_t, list):
        probs.append("'tensors' must be a list of tensors")
        raw_t = []
    tensors = []
    for n, t in enumerate(raw_t):
        if not isinstance(t, dict) or not isinstance(t.get("indices"), list):
            probs.append(f"tensor #{n} must be an object with 'id' and a list of 'indices'")
            continue
        pos = t.get("position")
        if pos is not None:
            if not (isinstance(pos, (list, tuple)) and len(pos) == 2
                    and all(isinstance(p, (int, float)) for p in pos)):
                probs.append(f"tensor {t.get('id')!r}: position must be [x, y]")
                pos = None
            else:
                pos = (float(pos[0]), float(pos[1]))
        tensors.append(Tensor(id=t.get("id"), indices=list(t["indices"]), kind=t.get("kind", "core"),
                              activation=t.get("activation"), position=pos))
    if probs:
        raise DesignError(probs)
    return Design(name=str(d.get("name", "untitled")), in_features=inf, out_features=outf, indices=indices,
                  tensors=tensors, order=d.get("order"), root=d.get("root"), meta=dict(d.get("meta") or {}))


def _problems(design: Design) -> list[str]:
    probs: list[str] = []
    idx = design.indices
    if not design.tensors:
        probs.append("the design has no tensors: add one, or generate a template")
    for name, ix in idx.items():
        if not isinstance(name, str) or not name:
            probs.append(f"index name {name!r} must be a non-empty string")
        if not (_is_int(ix.dim) and ix.dim >= 1):
            probs.append(f"index {name!r}: dim must be an integer >= 1, got {ix.dim!r}")
        if ix.role not in ROLES:
            probs.append(f"index {name!r}: role must be one of {', '.join(ROLES)}, got {ix.role!r}")
        elif ix.role in ("in", "out") and not (_is_int(ix.axis) and ix.axis >= 0):
            probs.append(f"open leg {name!r} (role {ix.role}) needs an integer axis >= 0")
        if ix.hyperedge and ix.role != "bond":
            probs.append(f"index {name!r}: only bonds can be hyperedges")
    for role, feats in (("in", design.in_features), ("out", design.out_features)):
        legs = [k for k, v in idx.items() if v.role == role]
        axes = sorted(idx[k].axis for k in legs if _is_int(idx[k].axis))
        if not legs:
            probs.append(f"the design has no '{role}' legs: W needs at least one")
            continue
        if axes != list(range(len(legs))):
            probs.append(f"'{role}' leg axes must be 0..{len(legs) - 1} without gaps or repeats, got {axes}")
        dims = [idx[k].dim for k in legs]
        if all(_is_int(x) and x >= 1 for x in dims) and math.prod(dims) != feats:
            shown = " x ".join(str(idx[k].dim) for k in _legs(idx, role))
            probs.append(f"'{role}' leg dims {shown} multiply to {math.prod(dims)}, but {role}_features is {feats}")
    ids: set[str] = set()
    for t in design.tensors:
        if not isinstance(t.id, str) or not t.id:
            probs.append(f"tensor id {t.id!r} must be a non-empty string")
            continue
        if t.id in ids:
            probs.append(f"tensor id {t.id!r} is used twice: ids must be unique")
        ids.add(t.id)
        if t.kind not in KINDS:
            probs.append(f"tensor {t.id!r}: kind must be one of {', '.join(KINDS)}, got {t.kind!r}")
        if t.activation is not None and t.activation not in ACTIVATIONS:
            probs.append(f"tensor {t.id!r}: unknown activation {t.activation!r} (known: {', '.join(ACTIVATIONS)})")
        if not t.indices:
            probs.append(f"tensor {t.id!r} has no indices")
        for i in t.indices:
            if i not in idx:
                probs.append(f"tensor {t.id!r} uses index {i!r}, which is not declared in 'indices'")
        if len(set(t.indices)) != len(t.indices):
            probs.append(f"tensor {t.id!r} lists an index twice: {t.indices}")
    for name, users in design.users().items():
        if name not in idx:
            continue
        ix, n = idx[name], len(users)
        if n == 0:
            probs.append(f"index {name!r} is declared but no tensor uses it")
        elif ix.role in ("in", "out") and n != 1:
            probs.append(f"open leg {name!r} must belong to exactly one tensor, found in {n}: {users}")
        elif ix.role == "bond":
            if n == 1:
                probs.append(f"bond {name!r} appears only in tensor {users[0]!r}: connect it to a second tensor or "
                             f"give it role 'in'/'out' with an axis")
            elif n > 2 and not ix.hyperedge:
                probs.append(f"bond {name!r} joins {n} tensors {users}: a bond joins exactly two unless declared "
                             f"\"hyperedge\": true")
    if design.order is not None:
        if not isinstance(design.order, list) or sorted(map(str, design.order)) != sorted(ids) \
                or len(design.order) != len(ids):
            probs.append("'order' must list every tensor id exactly once")
    if design.root is not None and design.root not in ids:
        probs.append(f"root {design.root!r} is not a tensor id")
    if not probs and design.tensors:
        import networkx as nx

        g = nx.Graph(design.graph())
        if not nx.is_connected(g):
            parts = [sorted(c) for c in nx.connected_components(g)]
            probs.append(f"the network is not connected: {len(parts)} separate parts "
                         f"({'; '.join(', '.join(p[:4]) + (' ...' if len(p) > 4 else '') for p in parts)})")
    return probs


def load_design(path: str | Path) -> Design:
    """Read and validate a design JSON file; a missing file or an invalid design raises a clear error."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"design file not found: {p}")
    return Design.from_json(p.read_text())


def save_design(design: Design, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(design.to_json() + "\n")
    return p
