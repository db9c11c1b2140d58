"""Designs whose network is a given graph: random regular graphs, the loopy networks the path search is measured on.

Templates are trees, chains and rings; a hand-drawn network can have many independent cycles, which is where the
contraction path search is hardest (``benchmarks/cost_latency.py`` and the path tests use these).
"""
from __future__ import annotations

from engine.design.model import Design


def regular_graph_design(n: int, bond: int = 2, seed: int = 0, degree: int = 3, leg: int = 2) -> Design:
    """A layer whose network is a random ``degree``-regular graph of ``n`` tensors (networkx, seeded): one bond of
    size ``bond`` per edge, tensor ``k`` holding in leg ``k`` (the first ``n // 2``) or out leg ``k - n // 2``, each
    of size ``leg``."""
    import networkx as nx

    edges = sorted(tuple(sorted(e)) for e in nx.random_regular_graph(degree, n, seed=seed).edges())
    half = n // 2
    idx: dict = {f"b{k}": {"dim": bond, "role": "bond"} for k in range(len(edges))}
    tensors = []
    for v in range(n):
        name = f"i{v}" if v < half else f"o{v - half}"
        idx[name] = {"dim": leg, "role": "in" if v < half else "out", "axis": v if v < half else v - half}
        tensors.append({"id": f"T{v}", "indices": [name] + [f"b{k}" for k, e in enumerate(edges) if v in e]})
    return Design.from_dict({"format": "tnstudio-design", "version": 1, "name": f"loopy n={n} seed={seed}",
                             "target": {"kind": "linear", "in_features": leg ** half,
                                        "out_features": leg ** (n - half)}, "indices": idx, "tensors": tensors})
