"""Bond features: what a batch of data carries through each bond of a trained layer.

A batch ``x`` (``N x in``) is streamed through the network as the stream schedule does: reshaped to its in legs,
then contracted with one operand at a time. For a linear design the operands are the cores; for a nonlinear one
they are the activated fragments the evaluation order generates up to its last activation, then the remaining cores
(what the engine's stream schedule streams x through; bonds inside a fragment never meet the data and are listed in
``not_carried``). The operands are visited depth first (post-order) from the root, the next one always touching the
stream when one does; a chain is rooted at its last site, so the stream's states are the hidden layers of the chain's
stack view (:mod:`engine.analysis.stack`). This order, rather than the cost model's cheapest stream path, makes
every bond meet the data: the cheapest path often merges two cores before x reaches them.

When bond ``e`` first appears in the stream, the stream holds, per sample, a tensor over ``e`` and the other legs
still open (in legs not yet absorbed, out legs produced, other open bonds): ``H[n]``, a ``group x dim`` matrix
(``group`` = the product of the other legs' dims). Per bond:

- ``activation``: per sample and component, the RMS of ``H[n][:, c]`` over the group; ``class_means`` averages it
  per class (the heatmap: classes x components) and ``mean_activation`` over all samples;
- ``variance``: per component, the variance across samples of each entry of ``H[:, :, c]``, summed over the group:
  how much of the data's variation flows through that component;
- ``probe_accuracy``: a linear probe (scikit-learn ``LogisticRegression`` on standardised features) predicting the
  label from the bond's features, fitted on the fit samples, scored on the evaluation samples. Its features are
  ``H[n]`` flattened when ``group x dim <= probe_features``, else a sketch: ``H[n]`` read through
  ``probe_features // dim`` fixed random (seeded Gaussian) combinations of the group, keeping every component.
  The state also holds the in legs not yet absorbed, so early bonds of a stream still see part of x itself: the
  probe measures what the stream holds at that bond, and is best compared along the stream.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from engine.analysis.fragments import Fragment, absorb, contract, last_activation
from engine.analysis.network import as_cores, bonds_of, small_linalg, topology
from engine.contract.program import BATCH as _ENGINE_BATCH
from engine.design.model import Design

BATCH = _ENGINE_BATCH  # the batch index's name: reserved by the engine, so no design index clashes with it
PROBE_FEATURES = 256
CHUNK = 256


@dataclass(frozen=True)
class BondFeatures:
    """What the data carries through one bond (see the module docstring)."""

    bond: str
    dim: int
    tensors: tuple[str, ...]
    other_legs: tuple[str, ...]
    group: int
    mean_activation: tuple[float, ...]
    variance: tuple[float, ...]
    class_means: tuple[tuple[float, ...], ...] | None = None
    probe_accuracy: float | None = None
    probe_inputs: str = ""

    @property
    def variance_share(self) -> tuple[float, ...]:
        """Each component's share of the bond's total variance."""
        total = sum(self.variance)
        return tuple(v / total if total > 0 else 0.0 for v in self.variance)

    def to_dict(self) -> dict[str, Any]:
        return {"bond": self.bond, "dim": self.dim, "tensors": list(self.tensors), "other_legs": list(self.other_legs),
                "group": self.group, "mean_activation": list(self.mean_activation), "variance": list(self.variance),
                "variance_share": list(self.variance_share),
                "class_means": None if self.class_means is None else [list(r) for r in self.class_means],
                "probe_accuracy": self.probe_accuracy, "probe_inputs": self.probe_inputs}


@dataclass(frozen=True)
class FeatureReport:
    """Bond features of one design with weights on a data batch.

    ``classes``: the label values (rows of every ``class_means``); ``chance_accuracy``: the most frequent class's
    share of the evaluation samples (what a probe must beat); ``order``: the stream's operands, each named by the
    tensors merged into it; ``not_carried``: bond -> why the data never flows through it.
    """

    design_name: str
    samples: int
    fit_samples: int
    classes: tuple[int, ...] | None
    chance_accuracy: float | None
    bonds: tuple[BondFeatures, ...]
    not_carried: dict[str, str]
    order: tuple[tuple[str, ...], ...]
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def __getitem__(self, bond: str) -> BondFeatures:
        for b in self.bonds:
            if b.bond == bond:
                return b
        raise KeyError(f"bond {bond!r} carries no features in {self.design_name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"design": self.design_name, "samples": self.samples, "fit_samples": self.fit_samples,
                "classes": None if self.classes is None else list(self.classes),
                "chance_accuracy": self.chance_accuracy, "bonds": [b.to_dict() for b in self.bonds],
                "not_carried": dict(self.not_carried), "order": [list(o) for o in self.order],
                "seconds": self.seconds, "notes": list(self.notes)}


# --------------------------------------------------------------------- the stream
def stream_root(design: Design) -> str:
    """The tensor the stream ends at: the design's root (or last in its order); a chain's last site (the end away
    from the site holding in leg 0); else the most central tensor."""
    if design.root is not None:
        return design.root
    if design.order is not None:
        return design.order[-1]
    topo = topology(design)
    g = design.graph()
    if topo.tree and all(d <= 2 for _, d in g.degree()) and len(design.tensors) > 1:
        first = next(t.id for t in design.tensors if design.in_legs[0] in t.indices)
        ends = [n for n, d in g.degree() if d <= 1]
        return max(ends, key=lambda n: (n != first, n))
    return topo.root


def stream_operands(design: Design, cores: Mapping[str, torch.Tensor]) -> list[Fragment]:
    """What x is streamed through: the cores (linear) or the fragments up to the last activation and the rest."""
    if design.is_linear:
        return [Fragment(cores[t.id], tuple(t.indices), (t.id,)) for t in design.tensors]
    last = last_activation(design)
    if last >= len(design.tensors) - 1:
        raise ValueError(f"design {design.name!r} cannot stream: the last tensor absorbed has an activation, so the "
                         f"data never flows through a bond (only W does)")
    return absorb(design, cores, stop=last + 1)


def stream_order(design: Design, operands: Sequence[Fragment]) -> list[int]:
    """Operand positions in streaming order (module docstring)."""
    import networkx as nx

    root_tid = stream_root(design)
    g = nx.Graph()
    g.add_nodes_from(range(len(operands)))
    holders: dict[str, list[int]] = {}
    for k, f in enumerate(operands):
        for i in f.indices:
            holders.setdefault(i, []).append(k)
    for ks in holders.values():
        g.add_edges_from((a, b) for a in ks for b in ks if a < b)
    root = next(k for k, f in enumerate(operands) if root_tid in f.members)
    post = list(nx.dfs_postorder_nodes(g, source=root))
    post += [k for k in range(len(operands)) if k not in post]
    seen: dict[str, int] = {}
    open_idx, order, left = set(design.in_legs), [], list(post)
    while left:
        nxt = next((k for k in left if open_idx & set(operands[k].indices)), left[0])
        left.remove(nxt)
        order.append(nxt)
        for i in operands[nxt].indices:
            seen[i] = seen.get(i, 0) + 1
        open_idx = {i for i in open_idx | set(operands[nxt].indices)
                    if design.indices[i].role != "out" and seen.get(i, 0) < len(holders[i])}
    return order


@dataclass
class _Acc:
    """Running statistics of one bond's states ``h`` (``N x group x dim``), merged chunk by chunk (Chan et al.)."""

    other: tuple[str, ...]
    group: int
    dim: int
    sketch: torch.Tensor | None = None
    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    act_sum: np.ndarray | None = None
    class_sum: dict[int, np.ndarray] = field(default_factory=dict)
    class_n: dict[int, int] = field(default_factory=dict)
    probe_eval: list[np.ndarray] = field(default_factory=list)
    probe_fit: list[np.ndarray] = field(default_factory=list)

    def probe_rows(self, h: torch.Tensor) -> np.ndarray:
        feats = h if self.sketch is None else torch.einsum("ngc,gq->nqc", h, self.sketch)
        return feats.reshape(len(h), -1).numpy()

    def add(self, h: np.ndarray, labels: np.ndarray | None) -> None:
        nb = len(h)
        mean_b = h.mean(0)
        m2_b = np.square(h - mean_b).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mean_b, m2_b
        else:
            n = self.n + nb
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (nb / n)
            self.m2 = self.m2 + m2_b + np.square(delta) * (self.n * nb / n)
            self.n = n
        act = np.sqrt(np.square(h).mean(1))  # (N, dim): RMS over the group
        self.act_sum = act.sum(0) if self.act_sum is None else self.act_sum + act.sum(0)
        if labels is not None:
            for c in np.unique(labels):
                m = labels == c
                self.class_sum[int(c)] = self.class_sum.get(int(c), 0) + act[m].sum(0)
                self.class_n[int(c)] = self.class_n.get(int(c), 0) + int(m.sum())

    @property
    def variance(self) -> np.ndarray:
        """Per component: the variance of each entry across samples, summed over the group."""
        return (self.m2 / max(self.n, 1)).sum(0)


Recorder = Callable[[str, tuple[str, ...], torch.Tensor], None]


def run_stream(design: Design, operands: Sequence[Fragment], order: Sequence[int], x: torch.Tensor,
               record: Recorder | None = None) -> torch.Tensor:
    """Stream ``x`` (``N x in``) through ``operands`` in ``order``; returns ``y = x @ W`` (``N x out``).

    ``record(bond, indices, state)`` is called when a bond first appears in the stream, with the stream's state
    (``indices`` name its axes, the batch axis ``BATCH`` first).
    """
    holders: dict[str, int] = {}
    for f in operands:
        for i in f.indices:
            holders[i] = holders.get(i, 0) + 1
    seen: dict[str, int] = {}
    s = x.reshape((x.shape[0],) + tuple(design.dim(i) for i in design.in_legs))
    idx = (BATCH,) + tuple(design.in_legs)
    for k in order:
        f = operands[k]
        for i in f.indices:
            seen[i] = seen.get(i, 0) + 1
        names = list(dict.fromkeys(idx + f.indices))
        # a leg stays open while an operand not yet streamed holds it (x's in legs close when a core takes them)
        keep = tuple(i for i in names if i == BATCH or design.indices[i].role == "out" or seen.get(i, 0) < holders[i])
        new = [i for i in keep if i not in idx and design.indices[i].role == "bond"]
        s, idx = contract([(s, idx), (f.value, f.indices)], keep), keep
        if record is not None:
            for b in new:
                record(b, idx, s)
    out = (BATCH,) + tuple(design.out_legs)
    return contract([(s, idx)], out).reshape(x.shape[0], design.out_features)


def stream(design: Design, weights: Any, x: Any) -> torch.Tensor:
    """``x @ W`` computed by the feature stream (float32), for checking it against the layer."""
    cores = {k: torch.from_numpy(v).float() for k, v in as_cores(design, weights).items()}
    with torch.no_grad():
        operands = stream_operands(design, cores)
        return run_stream(design, operands, stream_order(design, operands), torch.as_tensor(x).float())


def _samples(x: Any, design: Design, what: str) -> torch.Tensor:
    """``x`` as ``N x in_features`` (leading dimensions flattened, as TNLinear takes them); ``ValueError`` when its
    last dimension is not the layer's (a reshape had read 6 samples of 8 features as 3 of 16, silently)."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if x.dim() == 0 or x.shape[-1] != design.in_features:
        raise ValueError(f"{what} has shape {tuple(x.shape)}: its last dimension must be the layer's "
                         f"{design.in_features} in_features")
    return x.float().reshape(-1, design.in_features)


def bond_features(design: Design, weights: Any, x: Any, labels: Any = None, *,
                  fit: tuple[Any, Any] | None = None, probe: bool = True, probe_features: int = PROBE_FEATURES,
                  chunk: int = CHUNK, seed: int = 0) -> FeatureReport:
    """Bond features of ``design`` with ``weights`` on the inputs ``x`` (``N x in_features``) of the layer.

    ``labels`` (integer classes, optional) give the class means and the probe; the probe is fitted on ``fit``
    (``(x_fit, labels_fit)``), or, without it, on a stratified half of ``x`` and scored on the other half (statistics
    then use that half too). See the module docstring for every quantity.
    """
    t0 = time.perf_counter()
    cores = {k: torch.from_numpy(v).float() for k, v in as_cores(design, weights).items()}
    with torch.no_grad():
        operands = stream_operands(design, cores)
    order = stream_order(design, operands)
    x = _samples(x, design, "x")
    y = None if labels is None else np.asarray(labels).astype(np.int64).ravel()
    notes: list[str] = []
    if y is not None and len(y) != len(x):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    x_fit = y_fit = None
    if fit is not None:
        x_fit = _samples(fit[0], design, "the probe's x")
        y_fit = np.asarray(fit[1]).astype(np.int64).ravel()
    elif probe and y is not None:
        x, y, x_fit, y_fit = _split(x, y, seed)
        notes.append("probe fitted on a stratified half of the samples and scored on the other half")
    do_probe = probe and y is not None and y_fit is not None and len(np.unique(y_fit)) > 1
    classes = tuple(int(c) for c in np.unique(y)) if y is not None else None
    accs: dict[str, _Acc] = {}
    gen = torch.Generator().manual_seed(seed)

    def take(bond: str, idx: tuple[str, ...], state: torch.Tensor, labels: np.ndarray | None, fitting: bool) -> None:
        dim = design.dim(bond)
        h = state.movedim(idx.index(bond), -1).reshape(state.shape[0], -1, dim).double()
        acc = accs.get(bond)
        if acc is None:
            acc = accs[bond] = _Acc(tuple(i for i in idx if i not in (BATCH, bond)), h.shape[1], dim)
            if do_probe and acc.group * dim > probe_features:
                q = max(1, probe_features // dim)
                acc.sketch = torch.randn(acc.group, q, generator=gen, dtype=torch.float64) / math.sqrt(acc.group)
        if do_probe:
            (acc.probe_fit if fitting else acc.probe_eval).append(acc.probe_rows(h))
        if not fitting:
            acc.add(h.numpy(), labels)

    def consume(xb: torch.Tensor, labels: np.ndarray | None, fitting: bool) -> None:
        run_stream(design, operands, order, xb, lambda bond, idx, state: take(bond, idx, state, labels, fitting))

    with torch.no_grad():
        for start in range(0, len(x), chunk):
            consume(x[start:start + chunk], None if y is None else y[start:start + chunk], False)
        if do_probe:
            for start in range(0, len(x_fit), chunk):
                consume(x_fit[start:start + chunk], None, True)
    out = []
    ends = {k: tuple(v) for k, v in design.users().items()}
    for bond in bonds_of(design):
        acc = accs.get(bond)
        if acc is None or acc.n == 0:
            continue
        var = acc.variance
        cm = None
        if classes is not None:
            cm = tuple(tuple(float(v) for v in acc.class_sum[c] / acc.class_n[c]) if c in acc.class_n
                       else (math.nan,) * acc.dim for c in classes)
        acc_score, inputs = None, ""
        if do_probe:
            acc_score = _probe(np.concatenate(acc.probe_fit), y_fit, np.concatenate(acc.probe_eval), y, seed)
            inputs = (f"flat ({acc.group * acc.dim})" if acc.sketch is None
                      else f"sketch ({acc.sketch.shape[1]} x {acc.dim} of {acc.group * acc.dim})")
        out.append(BondFeatures(bond, acc.dim, ends[bond], acc.other, acc.group,
                                tuple(float(v) for v in acc.act_sum / acc.n), tuple(float(v) for v in var), cm,
                                acc_score, inputs))
    carried = {b.bond for b in out}
    users = design.users()
    inside = {b for b in bonds_of(design)
              if any(set(users[b]) <= set(f.members) for f in operands if len(f.members) > 1)}
    not_carried = {b: ("inside an activated fragment: generated from the cores before the data arrives"
                       if b in inside else "never open in the stream") for b in bonds_of(design) if b not in carried}
    chance = None
    if y is not None and len(y):
        chance = float(np.bincount(y - y.min()).max() / len(y))
    return FeatureReport(design.name, len(x), 0 if x_fit is None else len(x_fit), classes, chance, tuple(out),
                         not_carried, tuple(operands[k].members for k in order), time.perf_counter() - t0,
                         tuple(notes))


def _split(x: torch.Tensor, y: np.ndarray, seed: int):
    """A stratified half split: (x_eval, y_eval, x_fit, y_fit)."""
    rng = np.random.default_rng(seed)
    fit_idx, eval_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.nonzero(y == c)[0])
        half = len(idx) // 2
        fit_idx.extend(idx[:half])
        eval_idx.extend(idx[half:])
    fit_idx, eval_idx = np.sort(np.array(fit_idx, dtype=np.int64)), np.sort(np.array(eval_idx, dtype=np.int64))
    return x[torch.from_numpy(eval_idx)], y[eval_idx], x[torch.from_numpy(fit_idx)], y[fit_idx]


def _probe(f_fit: np.ndarray, y_fit: np.ndarray, f_eval: np.ndarray, y_eval: np.ndarray, seed: int) -> float:
    """Accuracy of a standardised logistic regression fitted on ``f_fit`` and scored on ``f_eval``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))
    with warnings.catch_warnings(), small_linalg():  # one BLAS thread: 16x faster here (1000 x 256 features)
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(f_fit, y_fit)
        return float((model.predict(f_eval) == y_eval).mean())
