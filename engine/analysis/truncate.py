"""Truncation after training: a smaller design with weights, and the exact error it costs.

:func:`truncate` keeps at most ``max_bond`` values per bond (an int for every bond, or bond -> k for some) and/or
as few as a relative error ``tol`` of the whole W allows: each of the m truncated bonds may discard a tail of at most
``tol * ||W|| / sqrt(m)``, so ``||W - W'|| <= tol ||W||`` on trees (as in TT-SVD).

- Trees (MPO, TTN, Tucker), method ``canonical``: the network is canonicalised towards its most central tensor
  (quimb, QR sweeps), then the orthogonality centre walks the tree depth first and every bond is truncated when its
  child subtree is finished (``compress_between``: an SVD at the centre, the subtree left behind as a fixed
  isometry). Truncating a bond is then the best rank-k approximation across its cut given the bonds done before
  (Eckart-Young), later steps never touch the isometries left behind, so the errors are orthogonal and
  ``||W - W'||^2`` is exactly the sum of the squared discarded singular values: ``relative_error`` equals the
  discarded tail. Truncating a single bond gives the best rank-k approximation of W across its cut.
- Designs with loops (tensor ring, aTTN, MERA), method ``simple-gauge``: bonds are truncated in quimb's
  simple-update gauge (smallest gauge values dropped, gauges then absorbed); hyperedges (CP), method
  ``cp-weights``, keep their heaviest components. No optimality; ``relative_error`` is computed exactly by contracting ``<W,W>``, ``<W,W'>`` and
  ``<W',W'>`` (no W formed; differences below about 1e-7 of ``||W||`` are rounding).
- Nonlinear trees (a TTN with gelu), method ``fragment``: each bond keeps rows of the activated fragment its parent
  absorbs (an interpolative decomposition: the subtree's core keeps slices of the bond, the parent absorbs the
  least-squares coefficients; a raw leaf is truncated by its SVD), bottom-up (:mod:`engine.analysis.nonlinear`).
  The activations lie between the bonds and W, so no closed form gives the error: ``relative_error`` is measured
  by forming W and W' in float64 (``error="measured"``; estimated from Gaussian probes for layers too large to
  form, ``error="estimated"``). With ``tol``, the per-bond budget is searched so that this measured error stays
  within ``tol``. Nonlinear designs with loops (aTTN, MERA, laterals) are refused.

The QR sweeps also trim, without loss, any bond larger than what its cut allows (e.g. a bond of 5 into an end site
whose open legs are 2 x 2). Copy (``delta``) tensors whose values change become ordinary cores in the new design.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from engine.analysis.network import (Topology, as_cores, bonds_of, copy_tensor, from_quimb, frobenius_norm,
                                     relative_difference, small_linalg, to_quimb, topology)
from engine.design.model import Design

ZERO = 1e-14  # singular values below ZERO * the largest are dropped on every truncated bond (no loss)


@dataclass(frozen=True)
class BondTruncation:
    """One bond: its dimension before and after, and the singular values (or gauge values) it dropped."""

    bond: str
    before: int
    after: int
    discarded: tuple[float, ...] = ()
    residual: float | None = None  # nonlinear: ||F - F'|| / ||F|| of the fragment across the bond


    @property
    def discarded_norm(self) -> float:
        return float(math.sqrt(sum(v * v for v in self.discarded)))

    def to_dict(self) -> dict[str, Any]:
        return {"bond": self.bond, "before": self.before, "after": self.after,
                "discarded_norm": self.discarded_norm, "discarded": list(self.discarded), "residual": self.residual}


@dataclass(frozen=True)
class TruncationResult:
    """A truncated design with its weights (tensor id -> float64 tensor, in the design's index order).

    ``relative_error``: ``||W - W'|| / ||W||``; ``error`` says how it was obtained: ``"exact"`` (linear designs),
    ``"measured"`` (nonlinear: W and W' formed in float64) or ``"estimated"`` (nonlinear layers too large to form:
    Gaussian probes). ``discarded_tail``: ``sqrt(sum of squared discarded values) / ||W||`` (equal to
    ``relative_error`` for linear trees; a gauge estimate with loops; for nonlinear trees the root-sum-square of the
    bonds' relative fragment residuals). ``norm``: ``||W||``.
    """

    design: Design
    weights: dict[str, Any]
    relative_error: float
    discarded_tail: float
    norm: float
    params_before: int
    params_after: int
    bonds: tuple[BondTruncation, ...]
    method: str
    max_bond: int | dict[str, int] | None = None
    tol: float | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    error: str = "exact"

    @property
    def ranks(self) -> dict[str, tuple[int, int]]:
        """Bond -> (dimension before, after)."""
        return {b.bond: (b.before, b.after) for b in self.bonds}

    @property
    def param_ratio(self) -> float:
        """Parameters after / before."""
        return self.params_after / max(self.params_before, 1)

    def state_dict(self, bias: Any = None, dtype: Any = None) -> dict[str, Any]:
        """The weights as :class:`~engine.nn.TNLinear`'s state dict (``cores.<key>``, copy-tensor buffers, and
        ``bias`` when given), in ``dtype`` (default float32), ready for ``TNLinear(result.design).load_state_dict``."""
        import torch

        from engine.nn.export import delta_buffer_name
        from engine.nn.linear import id_to_key

        dtype = dtype or torch.float32
        out: dict[str, Any] = {}
        for t in self.design.tensors:
            v = torch.as_tensor(self.weights[t.id]).to(dtype)
            out[delta_buffer_name(t.id) if t.kind == "delta" else f"cores.{id_to_key(t.id)}"] = v
        if bias is not None:
            out["bias"] = torch.as_tensor(bias).detach().to(dtype)
        return out

    def to_layer(self, bias: Any = None, dtype: Any = None):
        """A :class:`~engine.nn.TNLinear` of the truncated design holding these weights (and ``bias`` if given)."""
        from engine.nn.linear import TNLinear

        layer = TNLinear(self.design, bias=bias is not None, init=False, dtype=dtype)
        layer.load_state_dict(self.state_dict(bias, dtype=dtype))
        return layer

    def to_dict(self) -> dict[str, Any]:
        return {"design": self.design.name, "method": self.method, "relative_error": self.relative_error,
                "error": self.error, "discarded_tail": self.discarded_tail, "norm": self.norm,
                "params_before": self.params_before,
                "params_after": self.params_after, "param_ratio": self.param_ratio, "max_bond": self.max_bond,
                "tol": self.tol, "seconds": self.seconds, "notes": list(self.notes),
                "bonds": [b.to_dict() for b in self.bonds]}


def truncate(design: Design, weights: Any, max_bond: int | Mapping[str, int] | None = None,
             tol: float | None = None) -> TruncationResult:
    """Truncate the bonds of a design with weights (see the module docstring).

    ``max_bond``: the most values any bond keeps (int), or bond name -> k for the bonds to truncate (the others stay
    as they are). ``tol``: a relative error budget for the whole W, spread evenly over the bonds (nonlinear trees:
    the largest per-bond budget whose measured error of W stays within ``tol``). At least one of the two; every
    bond keeps at least one value.
    """
    t0 = time.perf_counter()
    if max_bond is None and tol is None:
        raise ValueError("truncate needs max_bond or tol (or both)")
    if tol is not None and not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    bonds = bonds_of(design)
    if isinstance(max_bond, Mapping):
        unknown = [b for b in max_bond if b not in bonds]
        if unknown:
            raise ValueError(f"no bond {', '.join(map(repr, unknown))} in design {design.name!r} (bonds: "
                             f"{', '.join(bonds)})")
        caps = {b: int(k) for b, k in max_bond.items()}
    elif max_bond is not None:
        caps = {b: int(max_bond) for b in bonds}
    else:
        caps = {}
    if any(k < 1 for k in caps.values()):
        raise ValueError(f"max_bond must be at least 1, got {max_bond!r}")
    targets = set(bonds) if tol is not None else set(caps)
    cores = as_cores(design, weights)
    topo = topology(design)
    error = "exact"
    if not design.is_linear and not topo.tree:
        raise ValueError(f"design {design.name!r} has activations and loops (or hyperedges): only nonlinear trees "
                         f"can be truncated (each bond's fragment must reach its parent through that bond alone)")
    with small_linalg():
        if not design.is_linear:
            new, new_cores, steps, norm, err, error, notes = _truncate_nonlinear(design, cores, caps, tol, targets)
            tail = math.sqrt(sum((b.residual or 0.0) ** 2 for b in steps.values()))
            method = "fragment"
        elif topo.tree:
            new, new_cores, steps, norm = _truncate_tree(design, cores, topo, caps, tol, targets)
            sq = sum(b.discarded_norm ** 2 for b in steps.values())
            err = tail = math.sqrt(sq) / norm if norm > 0 else 0.0
            method, notes = "canonical", ()
        else:
            new, new_cores, steps, norm, note = _truncate_loops(design, cores, topo, caps, tol, targets)
            sq = sum(b.discarded_norm ** 2 for b in steps.values())
            tail = math.sqrt(sq) / norm if norm > 0 else 0.0
            err, _ = relative_difference(design, cores, new, new_cores)
            method = "+".join((["simple-gauge"] if len(topo.hyperedges) < len(bonds) else [])
                              + (["cp-weights"] if topo.hyperedges else []))
            notes = (note,)
    new = _fix_deltas(new, new_cores)
    new.name = design.name if design.name.endswith(" truncated") else f"{design.name} truncated"
    new.meta = {k: v for k, v in design.meta.items() if k != "bond"}
    new.meta["truncated"] = {"from": design.fingerprint(), "max_bond": dict(caps) if isinstance(max_bond, Mapping)
                             else max_bond, "tol": tol, "relative_error": err}
    import torch

    out_w = {tid: torch.from_numpy(np.ascontiguousarray(a)) for tid, a in new_cores.items()}
    ordered = tuple(steps.get(b, BondTruncation(b, design.dim(b), new.dim(b))) for b in bonds)
    return TruncationResult(new, out_w, float(err), float(tail), float(norm), design.params, new.params, ordered,
                            method, dict(caps) if isinstance(max_bond, Mapping) else max_bond, tol,
                            time.perf_counter() - t0, tuple(notes), error)


def _keep(s: np.ndarray, cap: int | None, budget: float | None) -> int:
    """How many of the descending values ``s`` to keep under a cap and an absolute tail budget (at least 1)."""
    k = int(np.count_nonzero(s > ZERO * s[0])) if s.size and s[0] > 0 else 1
    if cap is not None:
        k = min(k, cap)
    if budget is not None and s.size:
        tails = np.sqrt(np.maximum(np.cumsum((s * s)[::-1])[::-1], 0.0))  # tails[k]: dropped when keeping k
        ok = np.nonzero(tails <= budget)[0]
        k = min(k, int(ok[0]) if ok.size else s.size)
    return max(k, 1)


def _truncate_tree(design: Design, cores: Mapping[str, np.ndarray], topo: Topology, caps: dict[str, int],
                   tol: float | None, targets: set[str]):
    tn = to_quimb(design, cores)
    root = topo.root
    if len(design.tensors) > 1:
        tn.canonize_around_(root)
    norm = float(np.linalg.norm(tn[root].data))
    budget = None if tol is None else tol * norm / math.sqrt(max(len(targets), 1))
    steps: dict[str, BondTruncation] = {}
    # post-order walk; the orthogonality centre is the top node; a finished subtree is truncated into its parent
    stack: list[tuple[str, str | None, str | None, list[tuple[str, str]]]] = [
        (root, None, None, list(topo.children[root]))]
    while stack:
        u, parent, bond, todo = stack[-1]
        if todo:
            v, b = todo.pop(0)
            tn.canonize_between(u, v, absorb="right")
            stack.append((v, u, b, list(topo.children[v])))
            continue
        stack.pop()
        if parent is None:
            continue
        if bond not in targets:
            tn.canonize_between(u, parent, absorb="right")
            continue
        t = tn[u]
        s = np.asarray(t.singular_values([i for i in t.inds if i != bond]), dtype=np.float64)
        k = _keep(s, caps.get(bond), budget)
        tn.compress_between(u, parent, max_bond=k, cutoff=0.0, absorb="right")
        steps[bond] = BondTruncation(bond, design.dim(bond), int(tn[u].ind_size(bond)),
                                     tuple(float(x) for x in s[k:]))
    new, new_cores = from_quimb(design, tn)
    for b in bonds_of(design):
        if b in steps:
            steps[b] = BondTruncation(b, design.dim(b), new.dim(b), steps[b].discarded)
    return new, new_cores, steps, norm


def _take(tn, bond: str, keep: np.ndarray) -> None:
    """Keep the entries ``keep`` of ``bond`` in every tensor of the quimb network that carries it."""
    for tid in tn.ind_map[bond]:
        t = tn.tensor_map[tid]
        ax = t.inds.index(bond)
        t.modify(data=np.take(t.data, keep, axis=ax))


def _truncate_loops(design: Design, cores: Mapping[str, np.ndarray], topo: Topology, caps: dict[str, int],
                    tol: float | None, targets: set[str]):
    from engine.analysis.spectra import GAUGE_ITERATIONS, cp_weights, gauge_note, simple_gauges

    norm = frobenius_norm(design, cores)
    budget = None if tol is None else tol * norm / math.sqrt(max(len(targets), 1))
    steps: dict[str, BondTruncation] = {}
    regular = [b for b in topo.bonds if b not in topo.hyperedges]
    notes = []
    if regular:
        tn, gauges, info = simple_gauges(design, cores, norm=norm)
        notes.append(gauge_note(info, GAUGE_ITERATIONS))
    else:
        tn, gauges = to_quimb(design, cores), {}
    for b in regular:
        g = np.asarray(gauges[b], dtype=np.float64)
        order = np.argsort(-g, kind="stable")
        total = float(np.sqrt((g * g).sum()))
        s = g[order] * (norm / total) if total > 0 else g[order]
        k = _keep(s, caps.get(b), budget) if b in targets else g.size
        keep = np.sort(order[:k]) if k < g.size else np.arange(g.size)
        if k < g.size:
            _take(tn, b, keep)
        gauges[b] = g[keep]
        steps[b] = BondTruncation(b, design.dim(b), int(keep.size), tuple(float(x) for x in s[k:]))
    for b, g in gauges.items():  # absorb the gauges: sqrt on each side of its bond
        root = np.sqrt(g)
        for tid in tn.ind_map[b]:
            tn.tensor_map[tid].multiply_index_diagonal_(b, root)
    for b in topo.hyperedges:
        if b not in targets:
            continue
        cur = {t.id: tn[t.id].transpose(*t.indices).data for t in design.tensors}
        w = cp_weights(design, cur, b)
        order = np.argsort(-w, kind="stable")
        k = _keep(w[order], caps.get(b), budget)
        _take(tn, b, np.sort(order[:k]))
        steps[b] = BondTruncation(b, design.dim(b), k, tuple(float(x) for x in w[order][k:]))
    new, new_cores = from_quimb(design, tn)
    if topo.hyperedges:
        notes.append("hyperedges: the heaviest CP components kept (weight: product of slice norms)")
    return new, new_cores, steps, norm, "; ".join(notes)


def _truncate_nonlinear(design: Design, cores: Mapping[str, np.ndarray], caps: dict[str, int], tol: float | None,
                        targets: set[str]):
    """Nonlinear trees (module docstring): with ``tol``, bisect the per-bond relative fragment budget ``t`` (as for
    linear designs, spread as ``t / sqrt(m)`` over the m bonds) for the largest that keeps the measured error of W
    within ``tol``; the passes are cheap next to training (one bottom-up pass and one W each)."""
    from engine.analysis.nonlinear import fragment_truncation, relative_w_error

    m = math.sqrt(max(len(targets), 1))

    def attempt(t: float | None):
        new, new_cores, steps = fragment_truncation(design, cores, caps, None if t is None else t / m, targets)
        err, norm, how = relative_w_error(design, cores, new, new_cores)
        return new, new_cores, steps, norm, err, how

    if tol is None:
        new, new_cores, steps, norm, err, how = attempt(None)
        return new, new_cores, steps, norm, err, how, [f"relative error of W {how} (W and W' formed in float64)"
                                                        if how == "measured" else _ESTIMATED]
    best = attempt(0.0)  # only lossless trims (and the caps): the fallback when nothing else fits
    tries = 1
    if best[4] <= tol:
        lo, hi = 0.0, 1.0  # the budget t: relative residual per fragment (t = 1 drops almost everything)
        top = attempt(hi)
        tries += 1
        if top[4] <= tol:
            best = top
        else:
            for _ in range(12):
                mid = math.sqrt(lo * hi) if lo > 0 else hi / 64
                cand = attempt(mid)
                tries += 1
                if cand[4] <= tol:
                    lo = mid
                    if cand[0].params <= best[0].params:
                        best = cand
                else:
                    hi = mid
                if hi / max(lo, 1e-12) < 1.15:
                    break
    new, new_cores, steps, norm, err, how = best
    note = (f"nonlinear tree: rows of each activated fragment kept (interpolative decomposition); the per-bond "
            f"budget searched over {tries} passes for the smallest layer whose {how} relative error of W is within "
            f"tol" + ("" if err <= tol else " (none fits: only lossless trims and caps applied)"))
    return new, new_cores, steps, norm, err, how, [note] + ([_ESTIMATED] if how == "estimated" else [])


_ESTIMATED = "relative error of W estimated from Gaussian probes streamed through both layers (W too large to form)"


def _fix_deltas(design: Design, cores: Mapping[str, np.ndarray]) -> Design:
    """Copy tensors whose values are no longer a copy tensor become trainable cores."""
    for t in design.tensors:
        if t.kind == "delta":
            arr = cores[t.id]
            if not np.allclose(arr, copy_tensor(arr.shape), atol=1e-12):
                t.kind = "core"
    return design
