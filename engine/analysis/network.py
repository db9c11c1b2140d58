"""Shared plumbing of the analyses: a design's weights as arrays, its bond topology, and quimb networks.

Weights come in three forms, all accepted by :func:`as_cores`: a :class:`~engine.nn.TNLinear`, a mapping tensor id
-> array (numpy or torch), or a layer (or whole model) state dict with ``cores.<key>`` entries, as runs and
``tnstudio export`` write them. Every analysis works in float64 numpy (quimb's native backend).
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from engine.design.model import Design


@contextmanager
def small_linalg() -> Iterator[None]:
    """One BLAS/OpenMP thread while running many small QRs and SVDs.

    Measured on the shared 2-core CPU: the spectra of a 4096x4096 MPO (chi=16: nine QRs of 1024x16 matrices, three
    small SVDs) take a median of 5 ms on one thread and 470 ms on OpenBLAS's two, whose threads spin and contend.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a scikit-learn dependency, always present here
        yield
        return
    with threadpool_limits(1):
        yield


@dataclass(frozen=True)
class Topology:
    """How a design's bonds are connected.

    ``tree``: no hyperedges and the tensor graph is a tree (no loops, no two bonds joining the same pair), so every
    bond cuts the network in two and canonical forms are exact. ``hyperedges``: bonds shared by more than two
    tensors (CP's rank). ``children``: for trees, tensor id -> [(child id, bond)] rooted at ``root``.
    """

    bonds: tuple[str, ...]
    hyperedges: tuple[str, ...]
    tree: bool
    root: str
    children: dict[str, list[tuple[str, str]]]
    ends: dict[str, tuple[str, ...]]  # bond -> the tensors it joins


def bonds_of(design: Design) -> list[str]:
    """The bond names, in the design's index order."""
    return [k for k, v in design.indices.items() if v.role == "bond"]


def topology(design: Design) -> Topology:
    """The bond structure of ``design`` (see :class:`Topology`); the root is the most central tensor."""
    import networkx as nx

    users = design.users()
    bonds = bonds_of(design)
    hyper = tuple(b for b in bonds if design.indices[b].hyperedge or len(users[b]) > 2)
    g = design.graph()
    simple = nx.Graph(g)
    is_tree = not hyper and nx.is_tree(g) if g.number_of_nodes() else False
    if simple.number_of_nodes() == 1:
        root = next(iter(simple.nodes))
    else:
        ecc = nx.eccentricity(simple)
        root = min((t.id for t in design.tensors), key=lambda t: (ecc[t], 0))
    children: dict[str, list[tuple[str, str]]] = {t.id: [] for t in design.tensors}
    if is_tree:
        for parent, child in nx.bfs_edges(simple, root):
            bond = next(k for k, v in g.get_edge_data(parent, child).items())
            children[parent].append((child, bond))
    return Topology(bonds=tuple(bonds), hyperedges=hyper, tree=is_tree, root=root, children=children,
                    ends={b: tuple(users[b]) for b in bonds})


def subtree(children: Mapping[str, list[tuple[str, str]]], node: str) -> list[str]:
    """``node`` and every tensor below it in a rooted tree."""
    out, stack = [], [node]
    while stack:
        u = stack.pop()
        out.append(u)
        stack.extend(c for c, _ in children[u])
    return out


def cut_legs(design: Design, side: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The open legs of W on the tensors ``side`` and on the others, each in W's order (in legs, then out legs)."""
    mine = {i for tid in side for i in design.tensor(tid).indices}
    legs = design.open_legs
    return tuple(i for i in legs if i in mine), tuple(i for i in legs if i not in mine)


def _to_numpy(v: Any, tid: str) -> np.ndarray:
    """One tensor's weights as float64; ``ValueError`` for complex or non-finite values (a cast had kept a complex
    core's real part, silently; NaN reached an SVD's 'did not converge')."""
    if hasattr(v, "detach"):
        v = v.detach().to("cpu")
        v = v.double() if v.is_floating_point() else v  # (bfloat16 has no numpy dtype; complex stays complex)
        v = v.numpy()
    arr = np.asarray(v)
    if np.iscomplexobj(arr):
        raise ValueError(f"tensor {tid!r} is complex ({arr.dtype}): a layer's weights are real")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"tensor {tid!r} holds NaN or infinite values (did the run diverge?)")
    return arr


def as_cores(design: Design, weights: Any) -> dict[str, np.ndarray]:
    """The design's tensors as float64 arrays (tensor id -> array in the design's index order).

    ``weights``: a :class:`~engine.nn.TNLinear` (its ``core_tensors()``), a mapping tensor id -> array, or a state
    dict holding the layer's ``cores.<key>`` entries (any prefix; copy tensors are rebuilt when absent). A missing
    tensor or a wrong shape raises ``ValueError`` naming it.
    """
    if hasattr(weights, "core_tensors"):
        weights = weights.core_tensors()
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a TNLinear, a mapping tensor id -> array or a state dict, "
                        f"got {type(weights).__name__}")
    ids = [t.id for t in design.tensors]
    if not all(tid in weights for tid in ids if design.tensor(tid).kind != "delta"):
        weights = _from_state_dict(design, weights)
    out: dict[str, np.ndarray] = {}
    for t in design.tensors:
        shape = design.shape(t.id)
        if t.id in weights:
            arr = _to_numpy(weights[t.id], t.id)
        elif t.kind == "delta":
            arr = copy_tensor(shape)
        else:
            raise ValueError(f"the weights lack tensor {t.id!r}")
        if tuple(arr.shape) != shape:
            raise ValueError(f"tensor {t.id!r} has shape {tuple(arr.shape)} in the weights but {shape} in design "
                             f"{design.name!r}")
        out[t.id] = arr
    return out


def copy_tensor(shape: tuple[int, ...]) -> np.ndarray:
    """The copy tensor: 1 where every index is equal."""
    arr = np.zeros(shape)
    n = min(shape)
    arr[tuple(np.arange(n) for _ in shape)] = 1.0
    return arr


def _from_state_dict(design: Design, state: Mapping[str, Any]) -> dict[str, Any]:
    from engine.nn.export import delta_buffer_name, layer_state_dict
    from engine.nn.linear import key_to_id

    layer = layer_state_dict(dict(state), design)  # ValueError naming what is missing or ambiguous
    out = {key_to_id(k[len("cores."):]): v for k, v in layer.items() if k.startswith("cores.")}
    for t in design.tensors:
        if t.kind == "delta" and delta_buffer_name(t.id) in layer:
            out[t.id] = layer[delta_buffer_name(t.id)]
    return out


def load_quimb():
    """``quimb.tensor``, imported on first use: the import takes 1.2-1.5 s on this project's machine (scipy.optimize
    and numba among it), which a report's timing must not count and the studio does ahead of a user's first spectra."""
    import quimb.tensor as qtn

    return qtn


def to_quimb(design: Design, cores: Mapping[str, np.ndarray], rename: Mapping[str, str] | None = None):
    """A quimb ``TensorNetwork`` of the cores: one tensor per design tensor, tagged with its id, indices named as in
    the design (``rename`` maps some of them to other names, e.g. to keep two copies' bonds apart)."""
    qtn = load_quimb()

    rename = rename or {}
    return qtn.TensorNetwork([qtn.Tensor(np.array(cores[t.id], dtype=np.float64),
                                         inds=tuple(rename.get(i, i) for i in t.indices), tags={t.id})
                              for t in design.tensors])


def from_quimb(design: Design, tn) -> tuple[Design, dict[str, np.ndarray]]:
    """The design with the bond dimensions the quimb network now has, and its cores in the design's index order."""
    new = design.copy()
    cores: dict[str, np.ndarray] = {}
    for t in design.tensors:
        qt = tn[t.id]
        cores[t.id] = np.ascontiguousarray(qt.transpose(*t.indices).data)
        for i in t.indices:
            new.indices[i].dim = int(qt.ind_size(i))
    return new, cores


def inner(design_a: Design, cores_a: Mapping[str, np.ndarray], design_b: Design,
          cores_b: Mapping[str, np.ndarray]) -> float:
    """<W_a, W_b> (Frobenius) of two designs with the same open legs, contracted as a network (no W formed)."""
    tn_a = to_quimb(design_a, cores_a)
    tn_b = to_quimb(design_b, cores_b, rename={b: f"{b}__other" for b in bonds_of(design_b)})
    with warnings.catch_warnings():  # cotengra warns that the optional kahypar is missing; it works without it
        warnings.simplefilter("ignore", UserWarning)
        return float((tn_a & tn_b).contract(all, output_inds=(), optimize="auto-hq"))


def frobenius_norm(design: Design, cores: Mapping[str, np.ndarray]) -> float:
    """``||W||`` from the doubled network ``<W, W>`` (no W formed)."""
    return math.sqrt(max(inner(design, cores, design, cores), 0.0))


def relative_difference(design_a: Design, cores_a: Mapping[str, np.ndarray], design_b: Design,
                        cores_b: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """``(||W_a - W_b|| / ||W_a||, ||W_a||)`` from three network contractions.

    ``||W_a - W_b||^2 = <a,a> - 2<a,b> + <b,b>`` in float64: differences below about 1e-7 of ``||W_a||`` are at the
    level of rounding.
    """
    aa = inner(design_a, cores_a, design_a, cores_a)
    ab = inner(design_a, cores_a, design_b, cores_b)
    bb = inner(design_b, cores_b, design_b, cores_b)
    norm = math.sqrt(max(aa, 0.0))
    if norm == 0.0:
        return (0.0 if bb == 0.0 else math.inf), 0.0
    return math.sqrt(max(aa - 2 * ab + bb, 0.0)) / norm, norm
