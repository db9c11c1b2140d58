"""Truncating the bonds of a nonlinear tree (e.g. a TTN with gelu): keep rows of each activated fragment.

Under the nonlinear semantics (:mod:`engine.analysis.fragments`) the parent ``P`` of bond ``b`` absorbs a fragment
``F`` (the activated subtree below ``b``), matricised as ``F[b, rest]``. Its spectrum (``method="fragment"`` of
:func:`~engine.analysis.spectra.bond_spectra`) says how many directions of ``b`` the fragment really uses, but the
SVD's truncation ``U_k U_k^T F`` mixes the rows of ``F``, and no change of the subtree's cores reproduces mixed rows
of an activated fragment (the activation acts entry by entry). What the cores *can* reproduce exactly is a subset
of the rows: ``b`` is a free index of every contraction and activation between the tensor that owns it and the top of
the fragment, so row ``F[j, :]`` depends only on the slice ``j`` of that tensor's core along ``b``.

So each bond keeps ``k`` rows ``J`` of ``F`` (an interpolative decomposition, ``F ~ X F[J, :]``):

- ``J``: the first ``k`` pivots of a column-pivoted QR of ``F^T`` (scipy), ``X``: least squares given ``J``; the
  residual ``||F - X F[J, :]||`` is then ``||R[k:, k:]||`` for every ``k`` at once, and is at least the SVD tail
  (``discarded`` records that tail, ``residual`` the relative residual reached);
- the owner's core keeps the slices ``J`` along ``b`` (so the fragment's rows ``J`` are reproduced exactly) and
  the parent absorbs ``X`` (``P'[.., j] = sum_b P[.., b] X[b, j]``);
- a fragment that is a single tensor without an activation (a TTN's raw leaf) is linear in its core: there the SVD
  is used (the leaf becomes ``S_k V_k^T``, the parent absorbs ``U_k``), the best rank-k approximation.

Bonds are truncated bottom-up in the evaluation order, each on the fragment as it is after the truncations below
it, so every choice sees the errors already made. How much W changes is not a closed form of the discarded values
(the activations lie in between): :func:`relative_w_error` measures it by forming W' and W in float64 (exact to
rounding) or, for layers too large to form, estimates it from Gaussian probes streamed through both layers.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from engine.design.model import Design

FORM_LIMIT = 1 << 24  # W is formed (float64) to measure the error when it has at most this many entries
PROBES = 256  # Gaussian probe rows of the estimate for larger layers
ZERO = 1e-14


def fragment_truncation(design: Design, cores: Mapping[str, np.ndarray], caps: Mapping[str, int],
                        rel_budget: float | None, targets: set[str]):
    """One bottom-up pass: ``(new design, new cores, bond -> BondTruncation)``.

    ``caps``: bond -> the most rows kept; ``rel_budget``: the largest relative residual ``||F - F'|| / ||F||`` each
    targeted bond may leave in its fragment (None: caps only).
    """
    import scipy.linalg
    import torch

    from engine.analysis.fragments import Fragment, absorb
    from engine.analysis.truncate import BondTruncation

    work = {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in cores.items()}
    users = design.users()
    steps: dict[str, BondTruncation] = {}

    def absorb_into_parent(tid: str, bond: str, x: torch.Tensor) -> None:
        pax = design.tensor(tid).indices.index(bond)
        work[tid] = torch.tensordot(work[tid], x, dims=([pax], [0])).movedim(-1, pax).contiguous()

    def observe(tid: str, touching: list[Fragment]) -> None:
        own = set(design.tensor(tid).indices)
        for n, f in enumerate(touching):
            shared = [i for i in f.indices if i in own and design.indices[i].role == "bond"]
            if len(shared) != 1 or shared[0] not in targets:
                continue
            bond = shared[0]
            owner = next(u for u in users[bond] if u != tid)
            ax = f.indices.index(bond)
            d = f.value.shape[ax]
            mat = f.value.movedim(ax, 0).reshape(d, -1)
            fnorm = float(torch.linalg.norm(mat))
            svals = torch.linalg.svdvals(mat).numpy()
            budget = None if rel_budget is None else rel_budget * fnorm
            cap = caps.get(bond)
            if f.members == (owner,) and design.tensor(owner).activation is None:
                u, s, vh = torch.linalg.svd(mat, full_matrices=False)
                tails = np.sqrt(np.maximum(np.cumsum((s.numpy() ** 2)[::-1])[::-1], 0.0))
                k = _choose(s.numpy(), np.append(tails, 0.0), cap, budget)
                rows = (s[:k, None] * vh[:k]).reshape((k,) + tuple(f.value.movedim(ax, 0).shape[1:]))
                new_val = rows.movedim(0, ax)
                work[owner] = _reorder(new_val, f.indices, design.tensor(owner).indices)
                absorb_into_parent(tid, bond, u[:, :k])
                residual = float(tails[k]) if k < len(tails) else 0.0
            else:
                a = mat.T.numpy()  # rest x d: the fragment's rows are its columns
                _, r, piv = scipy.linalg.qr(a, mode="economic", pivoting=True)
                res = np.array([math.sqrt(float(np.square(r[k:, k:]).sum())) for k in range(d)] + [0.0])
                diag = np.abs(np.diag(r))
                k = _choose(np.concatenate([diag, np.zeros(d - diag.size)]), res, cap, budget)
                keep = np.sort(piv[:k])
                y = np.linalg.lstsq(a[:, keep], a, rcond=None)[0]  # k x d: a ~ a[:, keep] @ y
                x = torch.from_numpy(np.ascontiguousarray(y.T))  # d x k: F ~ x @ F[keep]
                idx = torch.from_numpy(keep.astype(np.int64))
                oax = design.tensor(owner).indices.index(bond)
                work[owner] = work[owner].index_select(oax, idx).contiguous()
                new_val = f.value.index_select(ax, idx)
                absorb_into_parent(tid, bond, x)
                residual = float(np.linalg.norm(a - a[:, keep] @ y))
            touching[n] = Fragment(new_val, f.indices, f.members)
            steps[bond] = BondTruncation(bond, d, k, tuple(float(v) for v in svals[k:]),
                                         residual=residual / fnorm if fnorm > 0 else 0.0)

    absorb(design, work, observe=observe, merge_last=False)
    new = design.copy()
    for bond, step in steps.items():
        new.indices[bond].dim = step.after
    out = {}
    for t in new.tensors:
        arr = work[t.id].numpy()
        if tuple(arr.shape) != new.shape(t.id):  # pragma: no cover - a bug, not a user error
            raise AssertionError(f"{t.id}: {arr.shape} != {new.shape(t.id)}")
        out[t.id] = np.ascontiguousarray(arr)
    return new, out, steps


def _choose(scale: np.ndarray, residual: np.ndarray, cap: int | None, budget: float | None) -> int:
    """How many to keep: ``residual[k]`` is the error when keeping ``k``; ``scale`` the values (rank: > ZERO x max)."""
    top = float(scale[0]) if scale.size else 0.0
    k = int(np.count_nonzero(scale > ZERO * top)) if top > 0 else 1
    if cap is not None:
        k = min(k, cap)
    if budget is not None:
        ok = np.nonzero(residual <= budget)[0]
        k = min(k, int(ok[0]) if ok.size else len(residual) - 1)
    return max(k, 1)


def _reorder(value, have: tuple[str, ...], want: list[str]):
    return value.permute([have.index(i) for i in want]).contiguous()


# --------------------------------------------------------------------- measuring W
def dense_w(design: Design, cores: Mapping[str, np.ndarray]):
    """W (``in x out``, float64 torch) by the nonlinear semantics, fragment by fragment."""
    import torch

    from engine.analysis.fragments import absorb, contract

    frags = absorb(design, {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in cores.items()})
    legs = design.open_legs
    w = contract([(f.value, f.indices) for f in frags], legs)
    return w.reshape(design.in_features, design.out_features)


def _stream(design: Design, cores: Mapping[str, np.ndarray], x):
    import torch

    from engine.analysis.features import run_stream, stream_operands, stream_order

    ops = stream_operands(design, {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in cores.items()})
    return run_stream(design, ops, stream_order(design, ops), x)


def relative_w_error(design_a: Design, cores_a: Mapping[str, np.ndarray], design_b: Design,
                     cores_b: Mapping[str, np.ndarray], seed: int = 0) -> tuple[float, float, str]:
    """``(||W_a - W_b|| / ||W_a||, ||W_a||, how)`` for designs with the same open legs.

    ``how``: ``"measured"`` (both W formed in float64, when W has at most :data:`FORM_LIMIT` entries) or
    ``"estimated"`` (:data:`PROBES` standard Gaussian rows x streamed through both layers: ``E ||x dW||^2 =
    ||dW||^2``, so the ratio of the summed squares estimates the relative error and ``||W||``).
    """
    import torch

    with torch.no_grad():
        if design_a.in_features * design_a.out_features <= FORM_LIMIT:
            wa, wb = dense_w(design_a, cores_a), dense_w(design_b, cores_b)
            na = float(torch.linalg.norm(wa))
            return (float(torch.linalg.norm(wa - wb)) / na if na > 0 else 0.0), na, "measured"
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(PROBES, design_a.in_features, generator=g, dtype=torch.float64)
        try:
            ya, yb = _stream(design_a, cores_a, x), _stream(design_b, cores_b, x)
        except ValueError:  # the last tensor is activated: no stream, form W after all
            wa, wb = dense_w(design_a, cores_a), dense_w(design_b, cores_b)
            na = float(torch.linalg.norm(wa))
            return (float(torch.linalg.norm(wa - wb)) / na if na > 0 else 0.0), na, "measured"
        na = float(torch.linalg.norm(ya)) / math.sqrt(PROBES)
        err = float(torch.linalg.norm(ya - yb)) / math.sqrt(PROBES)
        return (err / na if na > 0 else 0.0), na, "estimated"

