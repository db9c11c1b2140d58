"""Turning dense layers into tensor-network layers.

- :func:`tt_svd`: cores of a chain design (MPO / tensor train) from a matrix by sequential truncated SVDs.
- :func:`fit_cores`: any design (ring, Tucker, CP, trees, nonlinear generators) fitted to a matrix with Adam.
- :func:`approximate`: picks one of the two for a :class:`~engine.nn.TNLinear` and reports the error.
- :func:`tensorize`: swaps ``nn.Linear`` sub-modules of a model for ``TNLinear`` layers, and ``nn.Conv2d`` ones for
  ``TNConv2d`` layers (conv2d designs).
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.design.model import Design
from engine.nn.execute import run_program

FULL_W_LIMIT = 1 << 22  # above this many entries, fitting compares layer outputs on random probes instead of W
PROBE_BATCH = 256


def chain_order(design: Design) -> list[str] | None:
    """The tensor ids along the chain if ``design`` is a linear open chain (MPO / TT), else ``None``."""
    import networkx as nx

    if not design.is_linear or any(t.kind == "delta" for t in design.tensors):
        return None
    if any(ix.hyperedge for ix in design.indices.values()):
        return None
    multi = design.graph()
    g = nx.Graph(multi)
    if len(design.tensors) == 1:
        return [design.tensors[0].id]
    if multi.number_of_edges() != g.number_of_edges() or not nx.is_connected(g):
        return None  # two tensors sharing several bonds: not a plain chain
    if g.number_of_edges() != len(design.tensors) - 1 or max(d for _, d in g.degree()) > 2:
        return None
    ends = sorted(n for n, d in g.degree() if d == 1)
    order = [t.id for t in design.tensors]
    start = min(ends, key=order.index)
    return list(nx.dfs_preorder_nodes(g, start))


def cp_rank_bond(design: Design) -> str | None:
    """The rank of a CP design whose tensors each hold one open leg and that rank (a hyperedge on every tensor, no
    other bond), else None: such a design is W's (or a kernel's) CP decomposition, factor by factor."""
    if not design.is_linear:
        return None
    for r, ix in design.indices.items():
        if ix.role != "bond" or not ix.hyperedge:
            continue
        if all(len(t.indices) == 2 and r in t.indices and design.indices[next(i for i in t.indices if i != r)].role
               != "bond" for t in design.tensors):
            return r
    return None


def _balance(factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rescale CP factor columns (leg, R) to equal norms per component (their product unchanged)."""
    norms = torch.stack([f.norm(dim=0) for f in factors])  # (n_factors, R)
    if bool((norms > 0).all()):
        geo = norms.log().mean(0).exp()
        return [f * (geo / norms[j]) for j, f in enumerate(factors)]
    return factors


def cp_cores(design: Design, t: torch.Tensor, legs: list[str], seed: int = 0,
             n_iter_max: int = 200) -> dict[str, torch.Tensor]:
    """Cores of a CP design (:func:`cp_rank_bond`) from tensorly's ``parafac`` (ALS from an SVD start) of ``t``,
    the target as a tensor over the design's open ``legs`` in that order; components balanced across factors."""
    import warnings

    import tensorly as tl
    from tensorly.decomposition import parafac

    rank_bond = cp_rank_bond(design)
    if rank_bond is None:
        raise ValueError(f"{design.name!r} is not a CP design with one open leg per factor: use method='fit'")
    with tl.backend_context("numpy"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD")  # a mode smaller than the rank: padded
        cp = parafac(t.detach().double().cpu().numpy(), design.dim(rank_bond), n_iter_max=n_iter_max, init="svd",
                     tol=1e-10, random_state=seed)
    factors = [torch.from_numpy(f.copy()) for f in cp.factors]
    factors[0] = factors[0] * torch.from_numpy(cp.weights.copy())
    factors = _balance(factors)
    out = {}
    for tensor in design.tensors:
        leg = next(i for i in tensor.indices if i != rank_bond)
        f = factors[legs.index(leg)]  # (leg, R)
        out[tensor.id] = f if tensor.indices == [leg, rank_bond] else f.T.contiguous()
    return out


def relative_error(approx: torch.Tensor, target: torch.Tensor) -> float:
    """``||approx - target||_F / ||target||_F`` in float64."""
    t = target.detach().double()
    return float((approx.detach().double() - t).norm() / t.norm().clamp_min(1e-300))


def _truncated_svd(m: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U_k, S_k V_k^T)`` of the best rank-``k`` approximation, ``k = min(rank, *m.shape)``, ``U_k`` orthonormal.

    Through the eigendecomposition of the smaller Gram matrix (a matmul and a small ``eigh``), which is far faster
    than a full LAPACK SVD of a wide unfolding; in float64 the truncation is the SVD's to ~1e-8 relative.
    """
    rows, cols = m.shape
    k = min(rank, rows, cols)
    if rows <= cols:
        _, vecs = torch.linalg.eigh(m @ m.T)
        u = vecs[:, -k:].flip(1)  # eigenvalues ascend: take the top k, largest first
        return u, u.T @ m
    _, vecs = torch.linalg.eigh(m.T @ m)
    v = vecs[:, -k:].flip(1)
    q, r = torch.linalg.qr(m @ v)  # orthonormal left factor of the projection onto the top right vectors
    return q, r @ v.T


@torch.no_grad()
def tt_svd(design: Design, w: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Cores of a chain design approximating ``w`` (``in x out``) by TT-SVD truncated to the design's bonds.

    Exact when every bond is at least the rank of its unfolding. Bonds larger than that rank get small random
    left columns and zero right rows (W is unchanged and those directions still receive gradients). The cores are
    rescaled to equal norms (their product, hence W, is unchanged).
    """
    chain = chain_order(design)
    if chain is None:
        raise ValueError(f"TT-SVD needs a linear chain design (MPO / tensor train); {design.name!r} is not one: "
                         f"use method='fit'")
    g = torch.Generator().manual_seed(seed)
    legs = design.in_legs + design.out_legs
    t = w.detach().double().cpu().reshape([design.dim(i) for i in legs])
    site_legs = [[i for i in design.tensor(tid).indices if design.indices[i].role != "bond"] for tid in chain]
    t = t.permute([legs.index(i) for s in site_legs for i in s])
    users = design.users()
    cores: dict[str, torch.Tensor] = {}
    rest = t.reshape(1, -1)
    left_bond: str | None = None
    for n, tid in enumerate(chain):
        site_dims = [design.dim(i) for i in site_legs[n]]
        r_prev = rest.shape[0]
        if n == len(chain) - 1:
            core = rest.reshape([r_prev] + site_dims)
            right_bond = None
        else:
            right_bond = next(i for i in design.tensor(tid).indices
                              if design.indices[i].role == "bond" and chain[n + 1] in users[i])
            r = design.dim(right_bond)
            m = rest.reshape(r_prev * math.prod(site_dims), -1)
            u, sv = _truncated_svd(m, r)
            k = u.shape[1]
            left = torch.randn(m.shape[0], r, generator=g, dtype=torch.float64) * (1e-3 / math.sqrt(m.shape[0]))
            left[:, :k] = u
            rest = torch.zeros(r, m.shape[1], dtype=torch.float64)
            rest[:k] = sv
            core = left.reshape([r_prev] + site_dims + [r])
        # axes now: (left bond, site legs..., right bond); the first core's left bond has size 1
        names = ([left_bond] if left_bond else ["_one"]) + site_legs[n] + ([right_bond] if right_bond else [])
        if not left_bond:
            core = core.squeeze(0)
            names = names[1:]
        order = design.tensor(tid).indices
        cores[tid] = core.permute([names.index(i) for i in order]).contiguous()
        left_bond = right_bond
    norms = {k: float(v.norm()) for k, v in cores.items()}
    if all(v > 0 for v in norms.values()):
        geo = math.exp(sum(math.log(v) for v in norms.values()) / len(norms))
        cores = {k: v * (geo / norms[k]) for k, v in cores.items()}
    return cores


def fit_cores(module: Any, w: torch.Tensor, steps: int = 300, lr: float = 0.02, seed: int = 0,
              probes: bool | None = None) -> dict[str, Any]:
    """Fit ``module``'s cores to ``w`` (``in x out``) with Adam on the relative squared error.

    Small layers compare W itself; large ones that stream (``probes``; default above ``FULL_W_LIMIT`` entries)
    compare the layer's outputs on fresh Gaussian inputs each step, an unbiased sketch of the same error. Keeps the
    best cores seen (full-W mode).
    """
    w = w.detach().to(next(iter(module.cores.values())).device)
    units = _fit_units(module, w)
    if units is not None:  # fit w / c (RMS 1); the scale tensor takes c back at the end
        w = w / units[1]
    params = list(module.cores.values())
    if probes is None:  # probing pays only when the layer can stream (never forms W)
        probes = w.numel() > FULL_W_LIMIT and module.program(PROBE_BATCH).schedule == "stream"
    g = torch.Generator(device=w.device).manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=lr * 0.05)
    wnorm2 = w.double().pow(2).sum().float()
    best = (relative_error(module.weight(), w) if not probes else float("inf"), None)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        cores = module.core_tensors()
        if probes:
            x = torch.randn(PROBE_BATCH, module.in_features, generator=g, device=w.device, dtype=w.dtype)
            y = run_program(module.program(PROBE_BATCH), cores, x)
            loss = (y - x @ w).pow(2).sum() / (PROBE_BATCH * wnorm2)
        else:
            loss = (run_program(module.program(1, "materialise"), cores, until_weight=True) - w).pow(2).sum() / wnorm2
        if not probes:  # the loss belongs to the cores before this step
            err = float(loss.detach()) ** 0.5
            if err < best[0]:
                best = (err, {k: v.detach().clone() for k, v in module.cores.items()})
        loss.backward()
        opt.step()
        sched.step()
    if not probes and relative_error(module.weight(), w) < best[0]:
        best = (0.0, None)
    if best[1] is not None:
        with torch.no_grad():
            for k, v in module.cores.items():
                v.copy_(best[1][k])
    if units is not None:
        with torch.no_grad():
            module.cores[units[0]].mul_(units[1])
    return {"steps": steps, "probes": probes}


def _scale_core(module: Any) -> str | None:
    """The parameter key of the design's scale tensor (:func:`engine.nn.init.scale_tensor`), which W is linear in;
    None when W is linear in no core."""
    from engine.nn.init import scale_tensor
    from engine.nn.linear import id_to_key

    tid, linear = scale_tensor(module.design)
    return id_to_key(tid) if linear and id_to_key(tid) in module.cores else None


def _zero_scale_tensor(module: Any) -> bool:
    """Make W exactly zero by zeroing the design's scale tensor; False when W is linear in no core (the fit then
    runs as for any W)."""
    key = _scale_core(module)
    if key is None:
        return False
    with torch.no_grad():
        module.cores[key].zero_()
    return True


def _fit_units(module: Any, w: torch.Tensor) -> tuple[str, float] | None:
    """Make the fit independent of W's scale: ``(core key, c)`` with c = RMS(w); the caller fits w / c (RMS 1)
    and multiplies that core by c at the end. The core is the design's scale tensor (:func:`_scale_core`); None
    (fit w as given) when W is linear in no core or c is 0. Adam's steps are of a fixed size in the cores' units:
    fitting w as given had left a Tucker fit of an exactly rank-2 W at relative error 1.19 (worse than zero) at a
    hundredth of nn.Linear's scale, 0.055 at its scale and 0.011 at ten times it; at RMS 1, from the cores' own
    initialisation, 4e-6 (scaling the core so that the initial W had RMS 1 instead left it at 1.0)."""
    key = _scale_core(module)
    if key is None:
        return None
    c = float(w.double().pow(2).mean().sqrt())
    return (key, c) if c > 0 and math.isfinite(c) else None


def approximate(module: Any, w: torch.Tensor, method: str = "auto", steps: int = 300, lr: float = 0.02,
                seed: int = 0) -> dict[str, Any]:
    """Set ``module``'s cores to approximate ``w`` (``in x out``); returns method, relative_error, seconds."""
    if method not in ("auto", "tt-svd", "cp", "fit"):
        raise ValueError(f"method must be auto, tt-svd, cp or fit, got {method!r}")
    t0 = time.perf_counter()
    design = module.design
    if method == "auto":
        method = "tt-svd" if chain_order(design) is not None else "cp" if cp_rank_bond(design) else "fit"
    report: dict[str, Any] = {"method": method}
    if not bool(w.detach().ne(0).any()) and _zero_scale_tensor(module):
        report["note"] = "W is zero: the scale tensor's core set to zero"  # the fits divide by ||W|| (NaN cores)
    elif method in ("tt-svd", "cp"):
        from engine.nn.linear import id_to_key

        legs = design.in_legs + design.out_legs
        cores = tt_svd(design, w, seed) if method == "tt-svd" else \
            cp_cores(design, w.reshape([design.dim(i) for i in legs]), legs, seed)
        with torch.no_grad():
            for tid, v in cores.items():
                module.cores[id_to_key(tid)].copy_(v)
    elif next(iter(module.cores.values())).dtype in (torch.float16, torch.bfloat16):
        # Adam on half-precision cores does not fit (its eps of 1e-8 is 0 in float16; a Tucker layer stayed at
        # relative error 1.0 where float32 reaches 0.016): fit a float32 twin and take its cores, rounded
        twin = copy.deepcopy(module).float()
        report.update(fit_cores(twin, w.float(), steps, lr, seed))
        with torch.no_grad():
            for k, v in module.cores.items():
                v.copy_(twin.cores[k])
    else:
        report.update(fit_cores(module, w, steps, lr, seed))
    with torch.no_grad():
        report["relative_error"] = relative_error(module.weight(), w)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def tensorize(model: nn.Module, designs: dict[str, Design | dict | str | Path], pretrained: bool = True,
              **fit: Any) -> dict[str, dict[str, Any]]:
    """Replace the ``nn.Linear`` sub-modules named in ``designs`` by :class:`TNLinear` layers, and the
    ``nn.Conv2d`` ones (with conv2d designs) by :class:`~engine.nn.conv.TNConv2d` layers, in place.

    With ``pretrained`` each new layer approximates the old weight (:meth:`TNLinear.from_linear`, options in
    ``fit``: method, steps, lr, seed); otherwise it gets a fresh ``nn.Linear``-like initialisation. Returns, per
    module name, the parameter counts before/after and the fit report (relative error) when fitted.
    """
    from engine.nn.linear import TNLinear, as_design

    missing = [n for n in designs if n not in dict(model.named_modules())]
    if missing:
        known = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        raise KeyError(f"no module named {', '.join(map(repr, missing))} in the model; its nn.Linear and nn.Conv2d "
                       f"layers are: {', '.join(known) or 'none'}")
    report: dict[str, dict[str, Any]] = {}
    for name, spec in designs.items():
        old = model.get_submodule(name)
        design = as_design(spec)
        if isinstance(old, nn.Conv2d) or design.conv is not None:  # conv2d designs replace nn.Conv2d layers
            report[name] = _swap_conv(model, name, old, design, pretrained, fit)
            continue
        if not isinstance(old, nn.Linear):
            raise TypeError(f"module {name!r} is a {type(old).__name__}, not an nn.Linear")
        if (design.in_features, design.out_features) != (old.in_features, old.out_features):
            raise ValueError(f"design {design.name!r} is {design.in_features}x{design.out_features} but module "
                             f"{name!r} is {old.in_features}x{old.out_features}")
        new = TNLinear.from_linear(old, design, **fit) if pretrained else \
            TNLinear(design, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype,
                     seed=fit.get("seed"))
        report[name] = _put(model, name, old, new, pretrained)
    return report


def _put(model: nn.Module, name: str, old: nn.Module, new: nn.Module, fitted: bool) -> dict[str, Any]:
    """Put ``new`` where ``old`` was; its report row (parameters before and after, the fit's numbers)."""
    parent, child = _parent(model, name)
    setattr(parent, child, new)
    row = {"params_before": sum(p.numel() for p in old.parameters()),
           "params_after": sum(p.numel() for p in new.parameters())}
    if fitted:
        row.update(new.fit_report)
    return row


def _swap_conv(model: nn.Module, name: str, old: nn.Module, design: Design, pretrained: bool,
               fit: dict[str, Any]) -> dict[str, Any]:
    """Replace the ``nn.Conv2d`` ``name`` by a :class:`~engine.nn.conv.TNConv2d` of ``design`` (fitted to its
    kernel with ``pretrained``: CP / Tucker-2 through tensorly, chains by TT-SVD, else a fit)."""
    from engine.nn.conv import TNConv2d, check_fits

    if not isinstance(old, nn.Conv2d) or design.conv is None:
        raise TypeError(f"module {name!r} is a {type(old).__name__} and design {design.name!r} has a "
                        f"{design.target_kind} target: conv2d designs replace nn.Conv2d layers, linear designs "
                        f"nn.Linear layers")
    try:
        check_fits(old, design)
    except ValueError as e:
        raise ValueError(f"module {name!r}: {e}") from None
    new = TNConv2d.from_conv(old, design, **fit) if pretrained else \
        TNConv2d(design, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype,
                 seed=fit.get("seed"))
    return _put(model, name, old, new, pretrained)
