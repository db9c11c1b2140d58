"""Bond spectra: how much of each bond a layer with weights really uses.

:func:`bond_spectra` returns one :class:`BondSpectrum` per bond, by the method the design allows:

- ``canonical`` (linear, tree-shaped designs: MPO, TTN, Tucker): exact. Every bond of a tree cuts W's open legs in
  two; its singular values are the Schmidt coefficients of W across that cut. The network is canonicalised towards
  the most central tensor with quimb (QR sweeps), then the orthogonality centre walks the tree depth first
  (``canonize_between``: one QR per step); at a centre every other tensor is an isometry pointing at it, so the
  singular values of the centre tensor across an incident bond are that bond's Schmidt coefficients. 2(n-1) QRs and
  n-1 small SVDs for n tensors; W is never formed.
- ``simple-gauge`` (linear designs with loops: tensor rings, aTTN, MERA): approximate. quimb's simple-update
  (belief-propagation style) gauge, ``gauge_all_simple`` iterated to convergence, puts a diagonal gauge on every bond;
  the gauge is that bond's spectrum, scaled so that its squares sum to ``||W||^2`` (from one contraction of the
  norm network). On trees this gauge is the canonical form, so it agrees with ``canonical``; with loops a bond
  does not cut W in two and no exact Schmidt spectrum exists.
- ``cp-weights`` (hyperedges, e.g. CP's shared rank): approximate. Component ``r``'s weight is the product over
  the tensors on the hyperedge of the norm of their slice ``r``, so that ``W = sum_r weight_r * (unit rank-1
  term)``; the terms are not orthogonal, so this is no Schmidt spectrum.
- ``fragment`` (nonlinear designs): what the parent actually receives. The tensors are absorbed in the evaluation
  order (:meth:`Design.evaluation_order`), each merging the fragments it touches and applying its activation; when
  a tensor absorbs a fragment, the spectrum of the bond between them is the singular values of the fragment
  matricised as (that bond) x (all its other indices). Exact for that quantity, which is not a property of W.

A spectrum always has ``dim`` values, in descending order; values beyond the rank the structure allows are 0.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from engine.analysis.network import (Topology, as_cores, bonds_of, cut_legs, frobenius_norm, load_quimb,
                                     small_linalg, subtree, to_quimb, topology)
from engine.design.model import Design

DEFAULT_TOL = 1e-2  # relative tail tolerance of effective_rank / used_fraction
GAUGE_ITERATIONS = 500
GAUGE_TOL = 1e-12
METHODS = ("canonical", "simple-gauge", "cp-weights", "fragment")


@dataclass(frozen=True)
class BondSpectrum:
    """The spectrum of one bond (see the module docstring for the methods).

    ``values``: ``dim`` singular values (or weights), descending. ``cut``: for exact (tree) spectra, W's open legs on
    each side of the bond, in W's order; ``fragment``: the tensors merged into the fragment that crosses the bond.
    """

    bond: str
    dim: int
    tensors: tuple[str, ...]
    values: tuple[float, ...]
    exact: bool
    method: str
    cut: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    fragment: tuple[str, ...] | None = None

    @property
    def norm(self) -> float:
        """sqrt(sum of squared values): ``||W||`` for exact and gauge spectra."""
        return float(math.sqrt(sum(v * v for v in self.values)))

    def probabilities(self) -> np.ndarray:
        """``s_i^2 / sum s^2`` (all zero when the spectrum is)."""
        s2 = np.square(np.asarray(self.values, dtype=np.float64))
        total = s2.sum()
        return s2 / total if total > 0 else s2

    @property
    def entropy(self) -> float:
        """Entanglement entropy ``-sum p_i ln p_i`` of ``p = s^2 / sum s^2``, in nats (at most ``ln dim``)."""
        p = self.probabilities()
        p = p[p > 0]
        return float(-(p * np.log(p)).sum()) if p.size else 0.0

    def tail(self, k: int) -> float:
        """The relative discarded tail ``sqrt(sum_{i >= k} s_i^2) / sqrt(sum s^2)`` when keeping ``k`` values."""
        p = self.probabilities()
        return float(math.sqrt(max(p[k:].sum(), 0.0))) if p.sum() > 0 else 0.0

    def effective_rank(self, tol: float = DEFAULT_TOL) -> int:
        """The fewest values to keep so that the relative discarded tail is at most ``tol`` (0 for a zero bond)."""
        p = self.probabilities()
        if p.sum() == 0:
            return 0
        tails = np.sqrt(np.maximum(np.cumsum(p[::-1])[::-1], 0.0))  # tails[k] = tail when keeping k
        keep = np.nonzero(tails <= tol)[0]
        return int(keep[0]) if keep.size else len(p)

    def used_fraction(self, tol: float = DEFAULT_TOL) -> float:
        """The share of the bond dimension in use: ``effective_rank(tol) / dim``."""
        return self.effective_rank(tol) / self.dim if self.dim else 0.0

    def to_dict(self, tol: float = DEFAULT_TOL) -> dict[str, Any]:
        d: dict[str, Any] = {
            "bond": self.bond, "dim": self.dim, "tensors": list(self.tensors), "values": list(self.values),
            "exact": self.exact, "method": self.method, "entropy": self.entropy,
            "max_entropy": math.log(self.dim) if self.dim else 0.0, "tol": tol,
            "effective_rank": self.effective_rank(tol), "used_fraction": self.used_fraction(tol),
        }
        if self.cut is not None:
            d["cut"] = [list(self.cut[0]), list(self.cut[1])]
        if self.fragment is not None:
            d["fragment"] = list(self.fragment)
        return d


@dataclass(frozen=True)
class SpectraReport:
    """Every bond's spectrum for one design with weights.

    ``norm``: ``||W||`` for linear designs (None for nonlinear ones). ``exact``: every spectrum is exact.
    ``notes``: how the approximate ones were made (e.g. gauge iterations and convergence).
    """

    design_name: str
    linear: bool
    tree: bool
    norm: float | None
    spectra: tuple[BondSpectrum, ...]
    seconds: float
    notes: tuple[str, ...] = field(default=())

    @property
    def exact(self) -> bool:
        return all(s.exact for s in self.spectra)

    def __getitem__(self, bond: str) -> BondSpectrum:
        for s in self.spectra:
            if s.bond == bond:
                return s
        raise KeyError(f"no bond {bond!r} in the spectra of {self.design_name!r}")

    def __iter__(self):
        return iter(self.spectra)

    def __len__(self) -> int:
        return len(self.spectra)

    def to_dict(self, tol: float = DEFAULT_TOL) -> dict[str, Any]:
        return {"design": self.design_name, "linear": self.linear, "tree": self.tree, "exact": self.exact,
                "norm": self.norm, "seconds": self.seconds, "notes": list(self.notes), "tol": tol,
                "bonds": [s.to_dict(tol) for s in self.spectra]}


def _padded(values: Any, dim: int) -> tuple[float, ...]:
    s = np.sort(np.abs(np.asarray(values, dtype=np.float64)).ravel())[::-1][:dim]
    return tuple(float(v) for v in np.concatenate([s, np.zeros(dim - s.size)]))


def bond_spectra(design: Design, weights: Any, *, method: str = "auto", gauge_iterations: int = GAUGE_ITERATIONS,
                 gauge_tol: float = GAUGE_TOL) -> SpectraReport:
    """The spectrum of every bond of ``design`` with ``weights`` (any form :func:`as_cores` takes).

    ``method="auto"`` follows the design (module docstring): exact canonical spectra for linear trees, the
    simple-update gauge for linear designs with loops, component weights on hyperedges, fragment spectra for
    nonlinear designs. ``"simple-gauge"`` uses the gauge on a linear tree too (to compare it with the exact form);
    ``"canonical"`` insists on a linear tree and raises ``ValueError`` otherwise.
    """
    if method not in ("auto", "canonical", "simple-gauge"):
        raise ValueError(f"method must be auto, canonical or simple-gauge, got {method!r}")
    if design.is_linear:
        load_quimb()  # its one-off import (about a second) is not the spectra's time
    t0 = time.perf_counter()
    cores = as_cores(design, weights)
    topo = topology(design)
    notes: list[str] = []
    norm: float | None = None
    if method != "auto" and not design.is_linear:
        raise ValueError(f"design {design.name!r} has activations: its bonds have fragment spectra only")
    if method == "canonical" and not topo.tree:
        raise ValueError(f"design {design.name!r} has loops or hyperedges: no canonical form (use simple-gauge)")
    if not design.is_linear:
        spectra = _fragment_spectra(design, cores)
    elif topo.tree and method != "simple-gauge":
        with small_linalg():
            spectra, norm = _tree_spectra(design, cores, topo)
    else:
        with small_linalg():
            spectra, norm, note = _loop_spectra(design, cores, topo, gauge_iterations, gauge_tol)
        notes.append(note)
    by_bond = {s.bond: s for s in spectra}
    ordered = tuple(by_bond[b] for b in bonds_of(design) if b in by_bond)
    return SpectraReport(design.name, design.is_linear, topo.tree, norm, ordered, time.perf_counter() - t0,
                         tuple(notes))


# --------------------------------------------------------------------- trees: exact
def _tree_spectra(design: Design, cores: Mapping[str, np.ndarray], topo: Topology
                  ) -> tuple[list[BondSpectrum], float]:
    tn = to_quimb(design, cores)
    root = topo.root
    if len(design.tensors) > 1:
        tn.canonize_around_(root)
    norm = float(np.linalg.norm(tn[root].data))
    out: list[BondSpectrum] = []
    # depth first: (node, its children still to visit); the orthogonality centre is always the top node
    stack: list[tuple[str, list[tuple[str, str]]]] = [(root, list(topo.children[root]))]
    while stack:
        u, todo = stack[-1]
        if not todo:
            stack.pop()
            if stack:
                tn.canonize_between(u, stack[-1][0], absorb="right")  # centre back to the parent
            continue
        v, bond = todo.pop(0)
        t = tn[u]
        s = t.singular_values([i for i in t.inds if i != bond])
        below = set(subtree(topo.children, v))
        above = [x.id for x in design.tensors if x.id not in below]
        out.append(BondSpectrum(bond, design.dim(bond), (u, v), _padded(s, design.dim(bond)), True, "canonical",
                                cut=cut_legs(design, above)))
        tn.canonize_between(u, v, absorb="right")
        stack.append((v, list(topo.children[v])))
    return out, norm


# --------------------------------------------------------------------- loops: simple-update gauge
def simple_gauges(design: Design, cores: Mapping[str, np.ndarray], iterations: int = GAUGE_ITERATIONS,
                  tol: float = GAUGE_TOL, norm: float | None = None):
    """quimb's simple-update gauge of the network: ``(gauged network, bond -> gauge vector, info)``.

    The gauges are kept outside the tensors (``W`` = the gauged network with every gauge multiplied onto its bond);
    hyperedges get none. ``norm`` (||W||, when the caller has it) of 0: every gauge is zero, ungauged (quimb's
    gauge divides by the zero norms: 'Array must not contain infs or NaNs').
    """
    tn = to_quimb(design, cores)
    gauges: dict[str, Any] = {}
    info: dict[str, Any] = {}
    if norm == 0:
        topo = topology(design)
        gauges = {b: np.zeros(design.dim(b)) for b in topo.bonds if b not in topo.hyperedges}
        info["zero"] = True
    else:
        tn.gauge_all_simple_(max_iterations=iterations, tol=tol, gauges=gauges, fuse_multibonds=False, info=info)
    return tn, gauges, info


def gauge_note(info: Mapping[str, Any], iterations: int) -> str:
    """How the simple-update gauge went, in words."""
    if info.get("zero"):
        return "W is zero: every value is 0"
    done = info.get("iterations", "?")
    sdiff = info.get("max_sdiff", -1.0)
    note = f"simple-update gauge (quimb gauge_all_simple): {done} iterations"
    if isinstance(sdiff, float) and sdiff >= 0:
        note += f", last change {sdiff:.1e}"
    if done == iterations:
        note += " (not converged: the iteration limit was reached)"
    return note


def cp_weights(design: Design, cores: Mapping[str, np.ndarray], bond: str) -> np.ndarray:
    """Component weights of a hyperedge: per component, the product of the norms of each tensor's slice."""
    w = np.ones(design.dim(bond))
    for t in design.tensors:
        if bond in t.indices:
            ax = t.indices.index(bond)
            a = np.moveaxis(cores[t.id], ax, 0).reshape(design.dim(bond), -1)
            w = w * np.linalg.norm(a, axis=1)
    return w


def _loop_spectra(design: Design, cores: Mapping[str, np.ndarray], topo: Topology, iterations: int,
                  tol: float) -> tuple[list[BondSpectrum], float, str]:
    norm = frobenius_norm(design, cores)
    out: list[BondSpectrum] = []
    regular = [b for b in topo.bonds if b not in topo.hyperedges]
    note = ""
    if regular:
        _, gauges, info = simple_gauges(design, cores, iterations, tol, norm)
        for b in regular:
            g = np.asarray(gauges.get(b, np.ones(design.dim(b))), dtype=np.float64)
            total = float(np.sqrt((g * g).sum()))
            scaled = g * (norm / total) if total > 0 else g
            out.append(BondSpectrum(b, design.dim(b), topo.ends[b], _padded(scaled, design.dim(b)), False,
                                    "simple-gauge"))
        note = gauge_note(info, iterations) + "; values scaled so that their squares sum to ||W||^2"
    for b in topo.hyperedges:
        out.append(BondSpectrum(b, design.dim(b), topo.ends[b], _padded(cp_weights(design, cores, b), design.dim(b)),
                                False, "cp-weights"))
    if topo.hyperedges:
        note = (note + "; " if note else "") + "hyperedges: CP component weights (product of slice norms)"
    return out, norm, note


# --------------------------------------------------------------------- nonlinear: fragments
def _wide_svals(mat) -> np.ndarray:
    """Singular values of a short, wide matrix (a bond's few rows x a fragment's many columns).

    From the Gram matrix (10x faster than an SVD of a 6 x 2.5M matrix, measured); when the spectrum spans more than
    1e6, where squaring loses the small values, from the R factor of a QR instead (exact to rounding).
    """
    import torch

    gram = mat @ mat.T
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)
    if s.numel() and s[-1] < 1e-6 * s[0]:
        s = torch.linalg.svdvals(torch.linalg.qr(mat.T, mode="r")[1])
    return s.numpy()


def _fragment_spectra(design: Design, cores: Mapping[str, np.ndarray]) -> list[BondSpectrum]:
    """Absorb in the evaluation order; record each absorbed fragment's spectrum across each bond to its absorber."""
    import torch

    from engine.analysis.fragments import Fragment, absorb

    ends = {k: tuple(v) for k, v in design.users().items()}
    out: list[BondSpectrum] = []

    def observe(tid: str, touching: list[Fragment]) -> None:
        own = set(design.tensor(tid).indices)
        for f in touching:
            for bond in (i for i in f.indices if i in own):
                ax = f.indices.index(bond)
                s = _wide_svals(f.value.movedim(ax, 0).reshape(f.value.shape[ax], -1))
                out.append(BondSpectrum(bond, design.dim(bond), ends[bond], _padded(s, design.dim(bond)), True,
                                        "fragment", fragment=f.members))

    absorb(design, {k: torch.from_numpy(v) for k, v in cores.items()}, observe=observe, merge_last=False)
    return out
