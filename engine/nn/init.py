"""Initialising the cores of a design so the generated W looks like ``nn.Linear``'s default weight.

``nn.Linear`` draws ``W ~ U(-1/sqrt(in), 1/sqrt(in))``, so ``Var(W_ij) = 1 / (3 in)``; :func:`target_std` is its
square root, and the bias gets the same uniform law.

Linear designs (closed form, then exact). With independent zero-mean cores, ``W_ij`` is a sum of
``prod(bond dims)`` products that are pairwise uncorrelated (two bond assignments differ in at least one core
entry), each with variance ``prod_t s_t^2``. We split every bond's sum between the tensors it joins: core ``t`` gets
``s_t^2 = c * prod_{b in t} dim_b^(-1/n_b)`` (``n_b`` = tensors on bond ``b``, 2 except for hyperedges) and
``c = target_var^(1/K)`` over the ``K`` trainable cores, so ``Var(W_ij) = target_var`` exactly in expectation and no
core is much larger than another. Copy (``delta``) tensors merge the bonds they join into one summed index. The
closed form holds in expectation; for small cores one draw can be off by 30%, so :func:`normalise_linear` then
rescales all cores equally to the exact ``||W||_F`` (computed from the doubled network, W is never formed).

Nonlinear designs (calibrated, deterministic under a seed). Leaves start with the balanced Gaussian above,
isometries orthogonal (QR of a Gaussian), disentanglers near the identity and lateral tensors near the identity on
each bond (``X[a, b, a', b'] ~ delta(a, a') delta(b, b')``: no mixing yet, also when a lateral narrows wide leaf bonds,
see :func:`_pairwise_identity`). Then, in the evaluation order, each
activated tensor is rescaled so that its pre-activation has unit RMS (W is linear in the tensor being absorbed
before its activation); finally the last tensor (when it has no activation, as in every template) is projected so
that ``mean(W) = 0`` (unless W is all offset, see :data:`MEAN_REMOVAL_FLOOR`) and rescaled so that ``std(W)`` hits
the target.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from engine.design.model import Design
from engine.nn.execute import run_program

if TYPE_CHECKING:
    from engine.contract.program import Program

PRE_ACTIVATION_RMS = 1.0  # where the calibration puts every activation's input
DISENTANGLER_NOISE = 0.05
# Removing the mean is undone when it leaves less of W than this (its std over its RMS before): W was then all offset
# (a relu that zeroes a bond's other values leaves W = c * M with mean(M) != 0) and what remains is rounding, which
# rescaling to the target std would blow up (1e15-sized cores). Rounding leaves 1e-16..1e-7 (float64, float32);
# 1,500 drawn designs that keep a zero-mean W kept at least 5e-4 of it.
MEAN_REMOVAL_FLOOR = 1e-5
# A draw whose W is all zero (a relu whose every input is negative: a dead layer, no gradient reaches its cores) is
# replaced by the generator's next draw, up to this many draws (1 in 8-9 seeds of a relu on a 2-vector bond did so).
DEAD_INIT_DRAWS = 16
log = logging.getLogger(__name__)


def target_std(in_features: int) -> float:
    """The std of ``nn.Linear``'s default weight: ``1 / sqrt(3 in_features)``."""
    return 1.0 / math.sqrt(3.0 * in_features)


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(int(torch.randint(0, 1 << 62, (1,)).item() if seed is None else seed) % (1 << 63))
    return g


def delta_tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A copy tensor: 1 where every index takes the same value, 0 elsewhere."""
    t = torch.zeros(shape, dtype=dtype)
    idx = torch.arange(min(shape))
    t[tuple(idx for _ in shape)] = 1.0
    return t


def _bond_classes(design: Design) -> tuple[dict[str, str], dict[str, int]]:
    """Union the bonds that meet in a delta tensor; returns bond -> class, class -> summed dim."""
    parent = {k: k for k, v in design.indices.items() if v.role == "bond"}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for t in design.tensors:
        if t.kind == "delta":
            bonds = [i for i in t.indices if i in parent]
            for b in bonds[1:]:
                parent[find(b)] = find(bonds[0])
    cls = {b: find(b) for b in parent}
    dim: dict[str, int] = {}
    for b, c in cls.items():
        dim[c] = min(dim.get(c, design.indices[b].dim), design.indices[b].dim)
    return cls, dim


def linear_core_stds(design: Design, std: float) -> dict[str, float]:
    """Per-core std of i.i.d. Gaussian cores giving ``Var(W_ij) = std**2`` for a linear design (closed form)."""
    cls, cdim = _bond_classes(design)
    users: dict[str, int] = {c: 0 for c in cdim}
    trainable = [t for t in design.tensors if t.kind != "delta"]
    for t in trainable:
        for c in {cls[i] for i in t.indices if i in cls}:
            users[c] += 1
    log_c = math.log(std ** 2) / max(len(trainable), 1)
    out = {}
    for t in trainable:
        log_var = log_c - sum(math.log(cdim[c]) / max(users[c], 1) for c in {cls[i] for i in t.indices if i in cls})
        out[t.id] = math.exp(0.5 * log_var)
    return out


def _orthogonal(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A tensor whose matricisation (all legs but the last) x (last leg) has orthonormal columns (or rows)."""
    rows, cols = math.prod(shape[:-1]), shape[-1]
    a = torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # a uniformly random orthogonal matrix (Haar)
    m = q if rows >= cols else q.T
    return m.reshape(shape).float()


def _near_identity(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Half the legs -> the other half as a (rectangular) identity, plus a little noise."""
    h = len(shape) // 2
    rows, cols = math.prod(shape[:h]), math.prod(shape[h:])
    m = torch.eye(rows, cols) + DISENTANGLER_NOISE * torch.randn(rows, cols, generator=g) / math.sqrt(max(rows, 1))
    return m.reshape(shape)


def _pairwise_identity(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Leg ``n`` of the first half -> leg ``n`` of the second half, each by a (rectangular) identity, plus a little
    noise: a lateral tensor that starts by passing each bond through unmixed. For square shapes this is
    :func:`_near_identity`; for ``(6, 6, 2, 2)`` it keeps the first two values of *both* inputs rather than all
    pairs of the first input's first value, as one flattened rectangular identity would."""
    h = len(shape) // 2
    if 2 * h != len(shape):
        return _near_identity(shape, g)
    m = torch.ones(1, 1)
    for n in range(h):
        m = torch.kron(m, torch.eye(shape[n], shape[h + n]))
    rows, cols = m.shape
    m = m + DISENTANGLER_NOISE * torch.randn(rows, cols, generator=g) / math.sqrt(max(rows, 1))
    return m.reshape(shape)


def raw_cores(design: Design, std: float, seed: int | torch.Generator | None = None,
              structured: bool | None = None) -> dict[str, torch.Tensor]:
    """Uncalibrated float32 CPU cores: balanced Gaussians (closed form for linear designs), and with
    ``structured`` (default: nonlinear designs) orthogonal isometries, near-identity disentanglers and laterals."""
    g = _generator(seed)
    structured = (not design.is_linear) if structured is None else structured
    stds = linear_core_stds(design, std)
    out: dict[str, torch.Tensor] = {}
    for t in design.tensors:
        shape = design.shape(t.id)
        if t.kind == "delta":
            out[t.id] = delta_tensor(shape)
        elif structured and t.kind == "disentangler" and len(shape) >= 2:
            out[t.id] = _near_identity(shape, g)
        elif structured and t.kind == "lateral" and len(shape) >= 2:
            out[t.id] = _pairwise_identity(shape, g)
        elif structured and t.kind == "isometry" and len(shape) >= 2:
            out[t.id] = _orthogonal(shape, g)
        else:
            out[t.id] = torch.randn(shape, generator=g) * stds[t.id]
    return out


def frobenius_norm_sq(design: Design, cores: dict[str, torch.Tensor]) -> float:
    """``||W||_F^2`` of a linear design without forming W: the network contracted with its copy (bonds renamed,
    open legs shared), by opt_einsum in float64. An initialisation helper, not an execution path."""
    import opt_einsum as oe

    sym: dict[str, str] = {}

    def letter(name: str) -> str:
        return sym.setdefault(name, oe.get_symbol(len(sym)))

    terms, ops = [], []
    for copy in ("", "'"):
        for t in design.tensors:
            terms.append("".join(letter(i if design.indices[i].role != "bond" else i + copy) for i in t.indices))
            ops.append(cores[t.id].detach().double().cpu().numpy())
    return float(oe.contract(",".join(terms) + "->", *ops, optimize="auto"))


def normalise_linear(design: Design, cores: dict[str, torch.Tensor], std: float) -> float:
    """Rescale the trainable cores of a linear design (equally) so that ``sqrt(mean(W^2)) = std`` exactly."""
    trainable = [t.id for t in design.tensors if t.kind != "delta"]
    norm2 = frobenius_norm_sq(design, cores)
    if not (norm2 > 0 and math.isfinite(norm2)) or not trainable:
        return 1.0
    factor = (std ** 2 * design.in_features * design.out_features / norm2) ** (0.5 / len(trainable))
    for tid in trainable:
        cores[tid].mul_(factor)
    return factor


class _Stop(Exception):
    pass


def _rms(v: torch.Tensor) -> float:
    """Root mean square of a tensor's entries (in float32 at least)."""
    return float(v.detach().float().pow(2).mean().sqrt())


def _before_each_activation(hook: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Callable]:
    """Every activation function by name (for :func:`run_program`'s ``activations``), applied to ``hook(input)``."""
    from engine.nn.activations import ACTIVATION_FNS

    return {k: (lambda v, fn=fn: fn(hook(v))) for k, fn in ACTIVATION_FNS.items()}


def _recording(record: list[float], stop_after: int | None) -> dict[str, Callable]:
    """Activations that append their input's RMS to ``record`` (and stop the run after ``stop_after`` + 1)."""
    def rec(v: torch.Tensor) -> torch.Tensor:
        record.append(_rms(v))
        if stop_after is not None and len(record) > stop_after:
            raise _Stop
        return v

    return _before_each_activation(rec)


def _activation_calls(prog: Program) -> list[int]:
    """Step numbers of the activation calls :func:`run_program` makes, in call order: the program's activation steps
    in order; for a sliced program (:mod:`engine.nn.sliced`) the shared ones, then the region's once per slice."""
    acts = [n for n, s in enumerate(prog.steps) if s.activation is not None]
    sl = prog.slicing
    if sl is None:
        return acts
    region = set(sl.region)
    return [n for n in acts if n not in region] + [n for n in acts if n in region] * sl.count


def _pre_activation_rms(prog: Program, cores: dict[str, torch.Tensor], k: int) -> float:
    """RMS of the input of ``prog``'s k-th activation step (over every slice of a sliced program); stops once it is
    known: a step inside a sliced region is measured with each slice run only as far as that step
    (:func:`engine.nn.sliced.region_mean_square`; before, every slice but the last ran to its end: VGG-16 fc6's
    MERA under 2 GiB spent 28 s of one thread on its first region activation, a 38 kFLOP step)."""
    calls = _activation_calls(prog)
    step = sorted(set(calls))[k]
    if prog.slicing is not None and step in prog.slicing.region:
        from engine.nn.activations import ACTIVATION_FNS
        from engine.nn.sliced import region_mean_square, run_shared

        env = {f"core:{t}": v for t, v in cores.items()}
        run_shared(prog, env, ACTIVATION_FNS)
        return math.sqrt(region_mean_square(prog, env, ACTIVATION_FNS, step))
    last = max(c for c, n in enumerate(calls) if n == step)
    rec: list[float] = []
    try:
        run_program(prog, cores, activations=_recording(rec, last), until_weight=True)
    except _Stop:
        pass
    got = [r for c, r in enumerate(rec) if calls[c] == step]
    return math.sqrt(sum(r * r for r in got) / len(got)) if got else float("nan")


def scale_tensor(design: Design) -> tuple[str, bool]:
    """The tensor whose scale sets W's in the calibration, and whether W is linear in it.

    The last trainable tensor in the evaluation order that no activation reaches (its own, or one of a later
    absorption whose fragment holds it): W is linear in it, so projecting it zeroes mean(W) and scaling it sets
    std(W) exactly. For every template that is the last tensor (the top). When a copy tensor is absorbed last, the
    tensor before it (a copy tensor has no parameters: scaling it changed nothing the layer keeps). When every
    trainable tensor is under an activation: the last trainable one, rescaled iteratively."""
    order = design.evaluation_order()
    kinds = {t.id: t for t in design.tensors}
    fragments: list[tuple[set[str], set[str]]] = []  # (tensors, indices) of each fragment contracted so far
    activated: set[str] = set()
    for tid in order:
        t = kinds[tid]
        members, idx = {tid}, set(t.indices)
        rest = []
        for f_members, f_idx in fragments:
            if f_idx & set(t.indices):
                members |= f_members
                idx |= f_idx
            else:
                rest.append((f_members, f_idx))
        fragments = rest + [(members, idx)]
        if t.activation is not None:
            activated |= members
    trainable = [tid for tid in order if kinds[tid].kind != "delta"]
    linear = [tid for tid in trainable if tid not in activated]
    if linear:
        return linear[-1], True
    return (trainable[-1] if trainable else order[-1]), False


@torch.no_grad()
def calibrate(design: Design, cores: dict[str, torch.Tensor], std: float, iterations: int = 8,
              memory_budget: int | None = None) -> dict[str, float]:
    """Rescale ``cores`` in place: unit-RMS pre-activations in evaluation order, then ``std(W) = std``.

    ``memory_budget`` (bytes): W is generated by the program :func:`engine.contract.slicing.budget_program` picks
    for a batch of 1 under it (sliced when the whole generation does not fit), so initialising takes no more memory
    than a training step under that budget. An unsliced program is calibrated in two passes over the generation
    (:func:`_rescale_in_one_pass`, then std(W)); a sliced one measures each activation's input in a run of its own.
    Returns ``{"std": achieved std of W, "target": std}`` (for a linear last tensor the target itself: W is linear
    in it, so scaling it scales std(W) exactly). Deterministic: no random numbers are drawn.
    """
    from engine.contract.program import compile_program

    prog = compile_program(design, 1, "materialise")
    if memory_budget is not None:
        from engine.contract.slicing import budget_program

        try:
            prog = budget_program(design, 1, "materialise", memory_budget=memory_budget)
        except ValueError:  # nothing fits: the unsliced program is the leanest there is
            pass
    order = design.evaluation_order()
    activated = [tid for tid in order if design.tensor(tid).activation is not None]
    if sum(s.activation is not None for s in prog.steps) != len(activated):
        activated = []  # the k-th activation step is no longer the k-th activated tensor: only rescale W
    last, linear_last = scale_tensor(design)
    removed: _MeanRemoval | None = None
    if activated and prog.slicing is None:
        removed = _rescale_in_one_pass(prog, cores, activated, last if linear_last else None)
    else:
        for k, tid in enumerate(activated):
            rms = _pre_activation_rms(prog, cores, k)
            if rms > 0 and math.isfinite(rms):
                cores[tid].mul_(PRE_ACTIVATION_RMS / rms)
        if linear_last:
            removed = _remove_mean(prog, cores, last)
    achieved = float("nan")
    runs = iterations if not linear_last else 1
    while runs > 0:
        w = run_program(prog, cores, until_weight=True)
        achieved = float(w.detach().float().std())
        if removed is not None and not achieved >= MEAN_REMOVAL_FLOOR * removed.rms_before:
            cores[last].add_(removed.step)  # W was all offset: keep it (one more run measures it)
            removed = None
            continue
        runs -= 1
        if not (achieved > 0 and math.isfinite(achieved)):
            return {"std": achieved, "target": std}
        cores[last].mul_(std / achieved)
        if abs(achieved / std - 1) < 1e-3:
            break
    if linear_last:  # W is linear in the last core: its std is now the target (no pass to measure it)
        return {"std": std, "target": std}
    w = run_program(prog, cores, until_weight=True)
    return {"std": float(w.detach().float().std()), "target": std}


def _rescale_in_one_pass(prog: Program, cores: dict[str, torch.Tensor], activated: list[str],
                         last: str | None) -> _MeanRemoval | None:
    """Give every activation of an unsliced program a unit-RMS input, and (``last``: a linear last tensor) project
    that tensor so that ``mean(W) = 0``, in one pass over the generation.

    The k-th activation's input depends only on tensors earlier in the evaluation order (rescaled already in this
    pass) and is linear in the k-th activated tensor, so scaling that input by ``1 / rms`` as it arrives and the
    tensor by the same factor afterwards is what measuring each prefix again after rescaling the tensors before it
    gives (up to rounding); the pass's W is then the rescaled cores' W, whose mean :func:`_remove_mean` removes.
    Intermediates are scaled in place unless they share a core's storage or autograd needs them. Before, one run
    per activated tensor and one more for the mean (an AlexNet fc6 MERA's calibration on one thread: 36 s, now
    16-18 s).
    """
    factors: list[float] = []
    core_storage = {v.untyped_storage().data_ptr() for v in cores.values()}

    def rescale(v: torch.Tensor) -> torch.Tensor:
        rms = _rms(v)
        f = PRE_ACTIVATION_RMS / rms if rms > 0 and math.isfinite(rms) else 1.0
        factors.append(f)
        if f == 1.0:
            return v
        shared = v.requires_grad or v.untyped_storage().data_ptr() in core_storage
        return v * f if shared else v.mul_(f)

    acts = _before_each_activation(rescale)
    removed = None
    if last is None:
        run_program(prog, cores, activations=acts, until_weight=True)
    else:
        removed = _remove_mean(prog, cores, last, acts)
    for tid, f in zip(activated, factors):
        cores[tid].mul_(f)
    return removed


@dataclass(frozen=True)
class _MeanRemoval:
    """What :func:`_remove_mean` subtracted from the last core, and W's RMS before (to undo it, see
    :data:`MEAN_REMOVAL_FLOOR`)."""

    step: torch.Tensor
    rms_before: float


def _remove_mean(prog: Program, cores: dict[str, torch.Tensor], last: str,
                 activations: dict[str, Callable] | None = None) -> _MeanRemoval | None:
    """Project the last core so that ``mean(W) = 0``: W is linear in it, so ``mean(W) = <g, core>`` with ``g`` the
    gradient of ``mean(W)``, and removing the component along ``g`` zeroes it (positive activations such as relu
    and gelu otherwise leave a common offset in every entry, unlike ``nn.Linear``). ``activations`` are
    :func:`run_program`'s (the one-pass rescale's, which change the other cores' scale during this run). Returns
    what was subtracted (None: nothing)."""
    with torch.enable_grad():
        leaf = cores[last].detach().clone().requires_grad_(True)
        w = run_program(prog, {**cores, last: leaf}, activations=activations, until_weight=True)
        rms_before = float(torch.linalg.vector_norm(w.detach())) / math.sqrt(w.numel())  # no copy of W
        mean = w.mean()
        del w  # the backward of the mean does not need W: held, it would add W's size to the peak
        (g,) = torch.autograd.grad(mean, leaf)
    gg = float(g.double().pow(2).sum())
    if not gg > 0:
        return None
    step = g * (float(mean.detach()) / gg)
    cores[last].sub_(step)
    return _MeanRemoval(step, rms_before)


def check_init_memory(design: Design, what: str = "initialising this design") -> None:
    """Refuse (:class:`engine.resources.ResourceError`, a ``ValueError``) a design whose initialisation would not
    fit in this machine's memory, with the cost model's number, before anything is allocated."""
    from engine.contract.cost import init_memory_bytes
    from engine.resources import check_fits

    check_fits(init_memory_bytes(design), what, hint="lower the bond dimensions (`tnstudio cost --schedule "
               "materialise --batch 1` shows W's cost)")


def init_cores(design: Design, seed: int | torch.Generator | None = None, std: float | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
               memory_budget: int | None = None) -> dict[str, torch.Tensor]:
    """Cores for ``design`` whose W has ``nn.Linear``'s default variance (or std ``std``).

    Linear designs use the closed form plus exact normalisation (no W is built); nonlinear ones are calibrated on
    CPU in float32 (W is built a few times; under ``memory_budget`` bytes, sliced as :func:`calibrate` says), and a
    draw whose W is all zero is drawn again (:data:`DEAD_INIT_DRAWS`).
    """
    std = target_std(design.in_features) if std is None else float(std)
    gen = _generator(seed)
    cores = raw_cores(design, std, gen)
    if design.is_linear:
        normalise_linear(design, cores, std)
    else:
        for draw in range(DEAD_INIT_DRAWS):
            if draw:  # W was all zero: the next draw of the same generator
                cores = raw_cores(design, std, gen)
            if calibrate(design, cores, std, memory_budget=memory_budget)["std"] != 0:
                break
        else:
            log.warning("design %r: its activations zeroed every entry of W in %d draws of its cores",
                        design.name, DEAD_INIT_DRAWS)
    return {k: v.to(device=device, dtype=dtype) for k, v in cores.items()}


def init_bias(out_features: int, in_features: int, seed: int | torch.Generator | None = None) -> torch.Tensor:
    """``nn.Linear``'s default bias: ``U(-1/sqrt(in), 1/sqrt(in))``."""
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(out_features, generator=_generator(seed)) * 2 - 1) * bound
