"""The stack view of a chain design (MPO): the sequence of sparse fully-connected layers it equals.

Streaming x through a chain's cores one site at a time is a product of matrices, ``x @ W = x @ L_0 @ ... @ L_{k-1}``.
Layer ``n`` absorbs site ``n``: its input units are indexed by (the out legs made so far, the bond from site n-1,
the in legs not yet absorbed), its output units by (the out legs made so far including site n's, the bond to site
n+1, the in legs after site n), and it acts as site n's core on the legs the core touches and as the identity on
all the others. So ``L_n`` has ``group_n x core_n`` nonzeros, with ``group_n`` the product of the untouched legs'
dims and ``core_n`` the core's entries: each core entry appears once per untouched combination.

Unit orders: layer 0's input is x's own (in legs by axis, row-major) and the last layer's output is y's (out legs by
axis); in between, units are ordered (out legs made so far, by axis), (bond), (in legs left, by axis), row-major,
and each layer's output order is the next layer's input order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.analysis.network import as_cores, topology
from engine.design.model import Design


@dataclass(frozen=True)
class StackLayer:
    """One layer of the stack: the core it applies, its unit legs in order, and its size."""

    index: int
    tensor: str
    in_legs: tuple[str, ...]
    out_legs: tuple[str, ...]
    in_units: int
    out_units: int
    nonzeros: int  # structural: core entries x untouched combinations

    @property
    def dense_entries(self) -> int:
        return self.in_units * self.out_units

    @property
    def density(self) -> float:
        return self.nonzeros / self.dense_entries if self.dense_entries else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "tensor": self.tensor, "in_legs": list(self.in_legs),
                "out_legs": list(self.out_legs), "shape": [self.in_units, self.out_units],
                "nonzeros": self.nonzeros, "dense_entries": self.dense_entries, "density": self.density}


def chain_order(design: Design) -> list[str]:
    """The tensors of a chain from the end holding in leg 0 (or the first tensor) to the other end.

    ``ValueError`` unless the design is an open chain (a path of tensors, no hyperedges).
    """
    topo = topology(design)
    g = design.graph()
    if not topo.tree or any(d > 2 for _, d in g.degree()):
        raise ValueError(f"design {design.name!r} is not a chain: the stack view needs an open chain of tensors "
                         f"(an MPO), not a ring, tree or network with hyperedges")
    if len(design.tensors) == 1:
        return [design.tensors[0].id]
    ends = [n for n, d in g.degree() if d == 1]
    first_in = next(t.id for t in design.tensors if design.in_legs[0] in t.indices)
    start = first_in if first_in in ends else ends[0]
    order, prev = [start], None
    while len(order) < len(design.tensors):
        nxt = next(n for n in g.neighbors(order[-1]) if n != prev)
        prev = order[-1]
        order.append(nxt)
    return order


def _by_axis(design: Design, legs: set[str], role: str) -> list[str]:
    return [i for i in (design.in_legs if role == "in" else design.out_legs) if i in legs]


def stack_layers(design: Design) -> list[StackLayer]:
    """The layers of the chain's stack view: shapes and nonzeros (no weights needed)."""
    order = chain_order(design)
    dims = {k: v.dim for k, v in design.indices.items()}
    state = list(design.in_legs)
    made: set[str] = set()
    left = set(design.in_legs)
    layers = []
    for n, tid in enumerate(order):
        t = design.tensor(tid)
        left -= set(t.indices)
        made |= {i for i in t.indices if design.indices[i].role == "out"}
        bond = [i for i in t.indices if design.indices[i].role == "bond" and
                (n + 1 < len(order) and i in design.tensor(order[n + 1]).indices)]
        out_state = _by_axis(design, made, "out") + bond + _by_axis(design, left, "in")
        untouched = [i for i in state if i not in t.indices]
        nnz = math.prod(dims[i] for i in untouched) * math.prod(dims[i] for i in t.indices)
        layers.append(StackLayer(n, tid, tuple(state), tuple(out_state), math.prod(dims[i] for i in state),
                                 math.prod(dims[i] for i in out_state), nnz))
        state = out_state
    return layers


def stack_matrices(design: Design, weights: Any, dtype: Any = None) -> list[Any]:
    """The stack's layers as sparse torch matrices (COO, ``in_units x out_units``) for a linear chain.

    ``x @ L_0 @ ... @ L_{k-1}`` equals ``x @ W``. Every matrix holds its structural nonzeros (``StackLayer.nonzeros``).
    """
    import torch

    if not design.is_linear:
        raise ValueError(f"design {design.name!r} has activations: its W is not the product of the stack's layers")
    dtype = dtype or torch.get_default_dtype()
    cores = as_cores(design, weights)
    dims = {k: v.dim for k, v in design.indices.items()}
    mats = []
    for layer in stack_layers(design):
        t = design.tensor(layer.tensor)
        untouched = [i for i in layer.in_legs if i not in t.indices]
        legs = untouched + list(t.indices)  # the grid of nonzeros: untouched combinations x core entries
        shape = [dims[i] for i in legs]
        grid = torch.meshgrid(*[torch.arange(d) for d in shape], indexing="ij")
        pos = {i: g.reshape(-1) for i, g in zip(legs, grid)}

        def flat(order: tuple[str, ...]) -> torch.Tensor:
            idx = torch.zeros_like(next(iter(pos.values())))
            for i in order:
                idx = idx * dims[i] + pos[i]
            return idx

        core = torch.from_numpy(cores[t.id]).to(dtype)
        vals = core.reshape(1, -1).expand(math.prod(dims[i] for i in untouched), -1).reshape(-1)
        mats.append(torch.sparse_coo_tensor(torch.stack([flat(layer.in_legs), flat(layer.out_legs)]), vals,
                                            (layer.in_units, layer.out_units), check_invariants=True).coalesce())
    return mats


def apply_stack(matrices: list[Any], x: Any) -> Any:
    """``x @ L_0 @ ... @ L_{k-1}`` with the stack's sparse matrices (``x``: ``N x in_features``)."""
    import torch

    h = torch.as_tensor(x)
    for m in matrices:
        h = torch.sparse.mm(m.t(), h.t()).t()
    return h
