"""Conv programs: how a ``conv2d`` design is evaluated, costed and exported (no torch).

A :class:`ConvProgram` is the conv counterpart of :class:`~engine.contract.program.Program`: an ordered list of
steps, each an ``einsum`` or ``reshape`` :class:`~engine.contract.program.Step` (the same FLOP rule, path search and
memory layouts as linear programs) or a :class:`ConvStep` (``F.conv2d`` or ``F.unfold``). The input ``x`` is
``(B, C_in, H, W)`` with indices ``(_b, _c, _h, _w)``; the output ``y`` is ``(B, C_out, H', W')``. The torch engine
runs the steps (:func:`engine.nn.conv.run_conv_program`), the cost model counts them and the exporter prints them.

Programs (``schedule`` names one; ``auto`` picks the best by :func:`conv_rank`, the same rule as linear programs:
fewer FLOPs, then the smaller largest intermediate, then the order of :data:`CONV_SCHEDULES`):

- ``materialise``: generate the kernel ``K`` (out, in, kh, kw) from the cores (the generate steps of the design's
  :func:`~engine.design.conv.kernel_view`), then one ``F.conv2d``. Every design.
- ``cp``: CP structure (a linear design whose tensors each hold the rank hyperedge ``R`` and legs of one group):
  x through the input factors at every position (a 1x1 conv, as an einsum), a depthwise ``kh x 1`` conv, a depthwise
  ``1 x kw`` conv (groups ``R``; one depthwise ``kh x kw`` conv when the kernel legs share a tensor; the two in the
  cheaper order), then the output factors (a 1x1 conv).
- ``tucker2``: the tensors without channel legs (the core and whatever holds the kernel legs) form the kernel of a
  conv between the bonds they share with the input side and with the output side, which are separate: x through the
  input side (1x1), the ``kh x kw`` conv on the reduced channels, then the output side (1x1). Tucker-2.
- ``kernel``: the tensors holding the kernel legs (no channel legs) form a small bank of filters: one conv of every
  input channel with them (x viewed as ``(B C_in, 1, H, W)``), then the rest of the network as a linear stream over
  the channel legs and the filters' bonds at every output position. TT-conv (the MPO's kernel site).
- ``im2col``: any design that can stream (:func:`~engine.contract.schedule.can_stream` of the im2col view): the
  patches ``F.unfold(x)`` streamed through the network as the linear program's batch (``B x H' x W'`` rows),
  nonlinear generators too (x goes through the activated fragments).

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts: einsum steps by
:mod:`engine.contract.flops`; a conv ``2 N H' W' C_out (C_in / groups) kh kw``; ``F.unfold`` nothing. Backward:
einsums as for linear programs; a conv's input gradient costs its forward FLOPs and its weight gradient
``2 N H' W' C_in C_out kh kw`` (FlopCounterMode charges a grouped conv's weight gradient as if ungrouped, so a
depthwise conv's is ``groups`` times its forward count). Memory: the same replay over buffers as linear programs
(:mod:`engine.contract.memory`), a conv writing its output and keeping its input and weight for backward.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import threading
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from engine.contract.flops import flop_indices, grad_operands
from engine.contract.memory import ADAM_STATE, BufferReplay, Replay, dtype_bytes
from engine.contract.program import (LETTERS, Step, StepCounts, StepRow, _absorb, _core_operands, _generate,
                                     _StepBuilder, last_use)
from engine.contract.paths import SEARCHES, path_cost, search_path, structure_hints
from engine.contract.schedule import can_stream
from engine.contract.cost import CostReport, Scaling, ScheduleCost
from engine.design.conv import default_image, im2col_view, image_size, kernel_view
from engine.design.model import MAX_DIM, Design
from engine.format import nbytes, si
from engine.types import ContractionPath, Indices, Operand, Search

ConvOp = Literal["conv2d", "unfold"]
CONV_SCHEDULES: tuple[str, ...] = ("materialise", "cp", "tucker2", "kernel", "im2col")  # also the tie-break order
STREAM_PROGRAMS: tuple[str, ...] = CONV_SCHEDULES[1:]
CONV_SCHEDULE_CHOICES: tuple[str, ...] = ("auto", "materialise", "stream") + STREAM_PROGRAMS
PROGRAM_TITLES = {
    "materialise": "materialise K, then F.conv2d",
    "cp": "CP: 1x1 -> depthwise kh x 1 -> depthwise 1 x kw -> 1x1",
    "tucker2": "Tucker-2: 1x1 -> kh x kw on the reduced channels -> 1x1",
    "kernel": "kernel first: each input channel through the kernel's filters, then the channel network",
    "im2col": "im2col: the patches streamed through the network",
}


@dataclass(frozen=True)
class ConvStep:
    """``F.conv2d(input, weight, stride, padding, dilation, groups)`` or ``F.unfold(input, kernel, dilation,
    padding, stride)``. The input is viewed as ``shape_in`` (N, C, H, W) and the weight as ``weight_shape`` (C_out,
    C_in / groups, kh, kw); the result is viewed with ``out_indices``. ``counted``: the indices whose dims multiply
    to half the FLOPs (for the scaling in chi)."""

    op: ConvOp
    inputs: tuple[str, ...]
    output: str
    in_indices: tuple[Indices, ...]
    out_indices: Indices
    shape_in: tuple[int, int, int, int]
    weight_shape: tuple[int, int, int, int] | None
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int = 1
    flops: int = 0
    size: int = 0
    counted: Indices = ()
    activation: None = None
    phase: str = "apply"

    @property
    def n_indices(self) -> int:
        return 0

    @property
    def is_identity(self) -> bool:
        return False

    def out_shape4(self) -> tuple[int, int, int, int]:
        """The 4-d result torch returns: conv (N, C_out, H', W'); unfold (N, C kh kw, H' W') as (N, F, L, 1)."""
        n, c, h, w = self.shape_in
        kh, kw = self.kernel
        ho, wo = conv_out_size((h, w), self.kernel, self.stride, self.padding, self.dilation)
        if self.op == "unfold":
            return (n, c * kh * kw, ho * wo, 1)
        assert self.weight_shape is not None
        return (n, self.weight_shape[0], ho, wo)

    def describe(self) -> str:
        """In words, e.g. ``conv2d 16->16 3x1 groups 16 stride 1x1 padding 1x0``."""
        pair = lambda p: f"{p[0]}x{p[1]}"  # noqa: E731
        extra = "".join(f" {n} {pair(v)}" for n, v, d in (("stride", self.stride, (1, 1)),
                                                           ("padding", self.padding, (0, 0)),
                                                           ("dilation", self.dilation, (1, 1))) if v != d)
        if self.op == "unfold":
            return f"unfold {pair(self.kernel)}{extra}"
        assert self.weight_shape is not None
        c_in = self.shape_in[1]
        return (f"conv2d {c_in}->{self.weight_shape[0]} {pair(self.kernel)}"
                + (f" groups {self.groups}" if self.groups > 1 else "") + extra)


AnyStep = Step | ConvStep


def conv_out_size(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int]) -> tuple[int, int]:
    """Output spatial size of a conv, as torch computes it."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1  # type: ignore[return-value]
                 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))


@dataclass
class ConvProgram(StepCounts):
    """A compiled conv design at one batch size and input size: steps plus what executing, costing and printing
    them needs (see the module docstring)."""

    design_name: str
    fingerprint: str
    schedule: str  # one of CONV_SCHEDULES
    batch: int
    image: tuple[int, int]
    out_image: tuple[int, int]
    dims: dict[str, int]
    steps: list[AnyStep]
    cores: dict[str, Indices]
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    linear: bool
    x_indices: Indices
    y_indices: Indices
    weight: str | None = None  # materialise: the operand holding K (out, in, kh, kw)
    method: str = ""
    fixed_cores: frozenset[str] = frozenset()

    # ----------------------------------------------------------------- counts (generate/apply/flops: StepCounts)
    @property
    def kind(self) -> str:
        return "materialise" if self.schedule == "materialise" else "stream"

    @property
    def in_elements(self) -> int:
        return self.batch * self.in_channels * self.image[0] * self.image[1]

    @property
    def out_elements(self) -> int:
        return self.batch * self.out_channels * self.out_image[0] * self.out_image[1]

    @property
    def executable(self) -> bool:
        return all(not isinstance(s, Step) or s.op != "einsum" or s.n_indices <= len(LETTERS) for s in self.steps)

    def last_use(self) -> dict[str, int]:
        return last_use(self.steps)

    def describe(self) -> tuple[StepRow, ...]:
        """The steps as rows (a conv step's ``einsum`` column says what it does in words)."""
        rows = []
        for n, s in enumerate(self.steps):
            if isinstance(s, ConvStep):
                text: str | None = s.describe()
            else:
                text = s.equation if s.op == "einsum" and s.n_indices <= len(LETTERS) else None
            rows.append(StepRow(step=n, op=s.op, inputs=s.inputs, output=s.output, einsum=text,  # type: ignore
                                indices=s.in_indices + (s.out_indices,), activation=s.activation,
                                phase=s.phase, flops=s.flops,  # type: ignore[arg-type]
                                shape=tuple(self.dims[i] for i in s.out_indices), size=s.size))
        return tuple(rows)

    @functools.cached_property
    def plan(self) -> tuple[tuple, ...]:
        return self.derive_plan()

    def shape_of(self, idx: Sequence[str]) -> tuple[int, ...]:
        """A reshape target: dims of ``idx``, the batch as -1."""
        return tuple(-1 if i == "_b" else self.dims[i] for i in idx)

    def derive_plan(self) -> tuple[tuple, ...]:
        """The steps as :func:`engine.nn.conv.run_conv_program` runs them: ``(op, inputs, output, arg, activation,
        phase, frees)``; ``arg`` is the einsum equation, the reshape's shape (-1 for the batch), None (identity), or
        for convs ``(shape_in, weight_shape, stride, padding, dilation, groups, out_shape)`` and for unfold
        ``(shape_in, kernel, dilation, padding, stride, out_shape)``; ``frees`` are the intermediates no later step
        reads."""
        last, plan = self.last_use(), []
        for n, s in enumerate(self.steps):
            frees = tuple(i for i in s.inputs if last.get(i) == n and not i.startswith("core:") and i != "x")
            if isinstance(s, ConvStep):
                shape_in = (-1,) + tuple(s.shape_in[1:])
                out_shape = self.shape_of(s.out_indices)
                if s.op == "conv2d":
                    arg: Any = (shape_in, s.weight_shape, s.stride, s.padding, s.dilation, s.groups, out_shape)
                else:
                    arg = (shape_in, s.kernel, s.dilation, s.padding, s.stride, out_shape)
            elif s.op == "reshape":
                arg = self.shape_of(s.out_indices)
            else:
                arg = None if s.is_identity else s.equation
            plan.append((s.op, s.inputs, s.output, arg, s.activation, s.phase, frees))
        return tuple(plan)


# ----------------------------------------------------------------------------- structure
def _fresh(design: Design) -> dict[str, str]:
    """Program index names that no design index uses: ``c`` -> ``_c`` (or ``_c_`` ... when taken)."""
    taken = set(design.indices)
    out = {}
    for base in ("c", "h", "w", "ho", "wo", "co", "ci", "kh", "kw", "l", "hm", "wm"):
        name = "_" + base
        while name in taken:
            name += "_"
        taken.add(name)
        out[base] = name
    return out


def _holders(design: Design) -> dict[str, set[str]]:
    """Tensor id -> the roles of the open legs it holds."""
    return {t.id: {design.indices[i].role for i in t.indices if design.indices[i].role != "bond"}
            for t in design.tensors}


def _outer_bonds(design: Design, group: set[str]) -> list[str]:
    """Bonds shared between the tensors of ``group`` and the others, in first-appearance order."""
    users = design.users()
    out = []
    for t in design.tensors:
        if t.id not in group:
            continue
        for i in t.indices:
            if design.indices[i].role == "bond" and any(u not in group for u in users[i]) and i not in out:
                out.append(i)
    return out


def _components(design: Design, ids: set[str]) -> list[set[str]]:
    """Connected components of the tensors ``ids`` (bonds among them only; hyperedges join all their holders)."""
    import networkx as nx

    g = nx.Graph(design.graph()).subgraph(ids)
    return [set(c) for c in nx.connected_components(g)]


@dataclass(frozen=True)
class _Tucker2Parts:
    kernel: frozenset[str]  # tensors without channel legs
    inputs: frozenset[str]
    outputs: frozenset[str]
    b_in: Indices
    b_out: Indices


def tucker2_parts(design: Design) -> _Tucker2Parts | None:
    """The split of a linear conv design into input side, kernel and output side (module docstring), or None."""
    if not design.is_linear or design.conv is None:
        return None
    roles = _holders(design)
    if any("kernel" in r and r & {"in", "out"} for r in roles.values()):
        return None
    kernel = {tid for tid, r in roles.items() if not r & {"in", "out"}}
    rest = set(roles) - kernel
    ins: set[str] = set()
    outs: set[str] = set()
    for comp in _components(design, rest):
        r = set().union(*(roles[t] for t in comp))
        if r == {"in"}:
            ins |= comp
        elif r == {"out"}:
            outs |= comp
        else:
            return None
    if not ins or not outs or not kernel:
        return None
    users = design.users()
    b_in = tuple(i for i in _outer_bonds(design, ins) if all(u in ins | kernel for u in users[i]))
    b_out = tuple(i for i in _outer_bonds(design, outs) if all(u in outs | kernel for u in users[i]))
    if set(_outer_bonds(design, kernel)) != set(b_in) | set(b_out):
        return None
    return _Tucker2Parts(frozenset(kernel), frozenset(ins), frozenset(outs), b_in, b_out)


@dataclass(frozen=True)
class _CPParts:
    rank: str
    kernel: tuple[str, ...]  # tensors holding kernel legs
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    separable: tuple[str, str] | None  # (tensor with kh, tensor with kw) when the kernel legs are split that way


def cp_parts(design: Design) -> _CPParts | None:
    """The CP structure (module docstring), or None."""
    if not design.is_linear or design.conv is None:
        return None
    hyper = [k for k, v in design.indices.items() if v.role == "bond" and v.hyperedge]
    for r in hyper:
        if not all(r in t.indices for t in design.tensors):
            continue
        if any(design.indices[i].role == "bond" and i != r for t in design.tensors for i in t.indices):
            continue
        roles = _holders(design)
        if any(len(x) != 1 for x in roles.values()):
            continue
        kernel = tuple(t for t, x in roles.items() if x == {"kernel"})
        ins = tuple(t for t, x in roles.items() if x == {"in"})
        outs = tuple(t for t, x in roles.items() if x == {"out"})
        sep = None
        legs = design.kernel_legs
        kh, kw = design.conv.kernel_size
        if len(kernel) == 2 and len(legs) == 2 and (design.dim(legs[0]), design.dim(legs[1])) == (kh, kw):
            a = [t for t in kernel if legs[0] in design.tensor(t).indices]
            b = [t for t in kernel if legs[1] in design.tensor(t).indices]
            if len(a) == 1 and len(b) == 1 and a != b:
                sep = (a[0], b[0])
        return _CPParts(r, kernel, ins, outs, sep)
    return None


def kernel_first_parts(design: Design) -> tuple[frozenset[str], Indices] | None:
    """(the tensors holding kernel legs, their bonds to the rest) when they hold no channel legs (linear designs)."""
    if not design.is_linear or design.conv is None:
        return None
    roles = _holders(design)
    group = {t for t, r in roles.items() if "kernel" in r}
    if any(roles[t] & {"in", "out"} for t in group) or len(group) == len(roles):
        return None
    return frozenset(group), tuple(_outer_bonds(design, group))


def conv_schedules(design: Design) -> tuple[str, ...]:
    """The programs ``design`` can run, in :data:`CONV_SCHEDULES` order."""
    out = ["materialise"]
    if cp_parts(design) is not None:
        out.append("cp")
    if tucker2_parts(design) is not None:
        out.append("tucker2")
    if kernel_first_parts(design) is not None:
        out.append("kernel")
    if can_stream(im2col_view(design)):
        out.append("im2col")
    return tuple(out)


# ----------------------------------------------------------------------------- building programs
def conv_step_flops(shape_in: Sequence[int], weight_shape: Sequence[int], out_hw: Sequence[int]) -> int:
    """FlopCounterMode's count of a conv: ``2 N H' W' C_out (C_in / groups) kh kw``."""
    return 2 * shape_in[0] * out_hw[0] * out_hw[1] * math.prod(weight_shape)


class _ConvBuilder(_StepBuilder):
    """A step builder that also makes conv and unfold steps."""

    def conv(self, inp: Operand, weight: Operand, shape_in: tuple[int, int, int, int],
             weight_shape: tuple[int, int, int, int], out_idx: Sequence[str], stride, padding, dilation,
             groups: int = 1, counted: Sequence[str] = (), name: str | None = None) -> Operand:
        kernel = (weight_shape[2], weight_shape[3])
        ho, wo = conv_out_size(shape_in[2:], kernel, stride, padding, dilation)
        out_name = name or self.fresh()
        flops = conv_step_flops(shape_in, weight_shape, (ho, wo))
        step = ConvStep("conv2d", (inp[0], weight[0]), out_name, (inp[1], weight[1]), tuple(out_idx),
                        tuple(shape_in), tuple(weight_shape), kernel, tuple(stride), tuple(padding),
                        tuple(dilation), groups, flops, self.size(out_idx), tuple(counted))
        assert step.size == math.prod(step.out_shape4()), (step, self.size(out_idx))
        self.steps.append(step)  # type: ignore[arg-type]
        return out_name, tuple(out_idx)

    def unfold(self, inp: Operand, shape_in: tuple[int, int, int, int], kernel, stride, padding, dilation,
               out_idx: Sequence[str]) -> Operand:
        name = self.fresh()
        step = ConvStep("unfold", (inp[0],), name, (inp[1],), tuple(out_idx), tuple(shape_in), None, tuple(kernel),
                        tuple(stride), tuple(padding), tuple(dilation), 1, 0, self.size(out_idx), ())
        assert step.size == math.prod(step.out_shape4())
        self.steps.append(step)  # type: ignore[arg-type]
        return name, tuple(out_idx)


def _contract_all(b: _ConvBuilder, ops: list[Operand], out: Sequence[str], search: Search, time_budget: float,
                  phase: str, name: str | None = None, hints: dict | None = None) -> tuple[Operand, str]:
    """Contract ``ops`` into ``out`` (one operand: a permutation, a view) along the searched path."""
    if len(ops) == 1:
        return b.contract(ops, [], set(out), out, phase=phase, final_name=name), "single operand"  # type: ignore
    path, method = search_path(ops, tuple(out), b.dims, search, time_budget, hints)
    return b.contract(ops, path, set(out), out, phase=phase, final_name=name), method  # type: ignore[arg-type]


def _cost_of(ops: Sequence[Operand], out: Sequence[str], dims: dict[str, int], search: Search,
             time_budget: float) -> tuple[int, ContractionPath]:
    """FLOPs (and the path) of contracting ``ops`` into ``out`` as the program would."""
    if len(ops) < 2:
        return 0, []
    path, _ = search_path(ops, tuple(out), dims, search, time_budget)
    return path_cost([ix for _, ix in ops], path, frozenset(out), dims)[0], path


def _mix_in(b: _ConvBuilder, x: Operand, xs_idx: Indices, cores: list[Operand], bonds: Indices, spatial: Indices,
            shape: tuple[int, int, int, int], search: Search, time_budget: float) -> tuple[Operand, str]:
    """x (N, C, H, W) through the input side ``cores`` at every position into ``(_b, *bonds, *spatial)``: a 1x1
    conv with the side contracted into one weight ``(bonds, C)`` when that costs no more FLOPs than streaming x's
    channel legs through the cores by einsums (it is what CP and Tucker-2 with one factor per side do)."""
    dims = b.dims
    out = ("_b",) + bonds + spatial
    ins = xs_idx[1:-len(spatial)]
    e_cost, e_path = _cost_of([("xs", xs_idx)] + cores, out, dims, search, time_budget)
    g_cost, g_path = _cost_of(cores, bonds + ins, dims, search, time_budget)
    n, c, h, w = shape
    nb = math.prod(dims[i] for i in bonds)
    if g_cost + 2 * n * h * w * c * nb <= e_cost:
        u, m = _contract_all(b, cores, bonds + ins, search, time_budget, "generate")
        z = b.conv(x, u, shape, (nb, c, 1, 1), out, (1, 1), (0, 0), (1, 1),
                   counted=("_b",) + spatial + bonds + ins)
        return z, f"1x1 conv ({m})"
    xs = b.reshape(x, xs_idx, b.fresh(), "apply")
    z = b.contract([xs] + cores, e_path, set(out), out, phase="apply")
    return z, "einsum"


def _mix_out(b: _ConvBuilder, z: Operand, cores: list[Operand], outs: Indices, spatial: Indices,
             shape: tuple[int, int, int, int], search: Search, time_budget: float) -> tuple[Operand, str]:
    """The output side: ``z`` (``(_b, *bonds, *spatial)``) through ``cores`` into ``(_b, *outs, *spatial)``, by a 1x1
    conv with the side's weight ``(outs, bonds)`` when that costs no more FLOPs than einsums (as :func:`_mix_in`)."""
    dims = b.dims
    bonds = z[1][1:-len(spatial)]
    out = ("_b",) + outs + spatial
    e_cost, e_path = _cost_of([z] + cores, out, dims, search, time_budget)
    g_cost, _ = _cost_of(cores, outs + bonds, dims, search, time_budget)
    n, c, h, w = shape
    no = math.prod(dims[i] for i in outs)
    if g_cost + 2 * n * h * w * c * no <= e_cost:
        u, m = _contract_all(b, cores, outs + bonds, search, time_budget, "generate")
        ys = b.conv(z, u, shape, (no, c, 1, 1), out, (1, 1), (0, 0), (1, 1), counted=("_b",) + spatial + outs + bonds,
                    name="ys")
        return ys, f"1x1 conv ({m})"
    return b.contract([z] + cores, e_path, set(out), out, phase="apply", final_name="ys"), "einsum"


def _program(design: Design, batch: int, image: tuple[int, int], schedule: str, search: Search,
             time_budget: float) -> ConvProgram:
    conv = design.conv
    assert conv is not None
    n = _fresh(design)
    cin, cout = conv.in_channels, conv.out_channels
    (kh, kw), st, pad, dil = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    h, w = image
    ho, wo = conv.out_size(h, w)
    problem = conv.fit_problem(h, w, of=repr(design.name))
    if problem:
        raise ValueError(problem)
    dims = {k: v.dim for k, v in design.indices.items()}
    dims.update({"_b": batch, n["c"]: cin, n["h"]: h, n["w"]: w, n["ho"]: ho, n["wo"]: wo, n["co"]: cout,
                 n["ci"]: cin, n["kh"]: kh, n["kw"]: kw, n["l"]: ho * wo})
    b = _ConvBuilder(dims)
    x: Operand = ("x", ("_b", n["c"], n["h"], n["w"]))
    y_idx = ("_b", n["co"], n["ho"], n["wo"])
    ins, outs, kern = tuple(design.in_legs), tuple(design.out_legs), tuple(design.kernel_legs)
    weight = None
    method = ""

    def finish(ys: Operand) -> None:
        b.reshape(ys, y_idx, "y", "apply")

    if schedule == "materialise":
        kv = kernel_view(design)
        final, method = _generate(b, kv, search, time_budget)
        kk = b.reshape(("Wt", final), (n["co"], n["ci"], n["kh"], n["kw"]), "K", "generate")
        weight = "K"
        b.conv(x, kk, (batch, cin, h, w), (cout, cin, kh, kw), y_idx, st, pad, dil,
               counted=("_b", n["ho"], n["wo"], n["co"], n["ci"], n["kh"], n["kw"]), name="y")
    elif schedule == "im2col":
        view = im2col_view(design)
        xu = b.unfold(x, (batch, cin, h, w), (kh, kw), st, pad, dil, ("_b",) + ins + kern + (n["l"],))
        out = ("_b",) + outs + (n["l"],)
        if view.is_linear:
            ops = [xu] + _core_operands(view)
            ys, method = _contract_all(b, ops, out, search, time_budget, "apply", "ys", structure_hints(view, True))
        else:
            ops = [xu] + _absorb(b, view, tuple(view.in_legs + view.out_legs))
            ys, method = _contract_all(b, ops, out, search, time_budget, "apply", "ys")
            method = f"evaluation order, then {method}"
        finish(ys)
    elif schedule == "tucker2":
        parts = tucker2_parts(design)
        assert parts is not None
        by_id = {t.id: t for t in design.tensors}
        pre = [(f"core:{t}", tuple(by_id[t].indices)) for t in _ordered(design, parts.inputs)]
        z1, m1 = _mix_in(b, x, ("_b",) + ins + (n["h"], n["w"]), pre, parts.b_in, (n["h"], n["w"]),
                         (batch, cin, h, w), search, time_budget)
        kops = [(f"core:{t}", tuple(by_id[t].indices)) for t in _ordered(design, parts.kernel)]
        kk, m2 = _contract_all(b, kops, parts.b_out + parts.b_in + kern, search, time_budget, "generate")
        ci, co = math.prod(dims[i] for i in parts.b_in), math.prod(dims[i] for i in parts.b_out)
        z2 = b.conv(z1, kk, (batch, ci, h, w), (co, ci, kh, kw), ("_b",) + parts.b_out + (n["ho"], n["wo"]), st, pad,
                    dil, counted=("_b", n["ho"], n["wo"]) + parts.b_out + parts.b_in + kern)
        post = [(f"core:{t}", tuple(by_id[t].indices)) for t in _ordered(design, parts.outputs)]
        ys, m3 = _mix_out(b, z2, post, outs, (n["ho"], n["wo"]), (batch, co, ho, wo), search, time_budget)
        finish(ys)
        method = f"input side: {m1}; kernel: {m2}; output side: {m3}"
    elif schedule == "cp":
        parts = cp_parts(design)
        assert parts is not None
        r = parts.rank
        rdim = dims[r]
        by_id = {t.id: t for t in design.tensors}
        pre = [(f"core:{t}", tuple(by_id[t].indices)) for t in parts.inputs]
        z, m1 = _mix_in(b, x, ("_b",) + ins + (n["h"], n["w"]), pre, (r,), (n["h"], n["w"]), (batch, cin, h, w),
                        search, time_budget)
        if parts.separable is not None:
            th, tw = parts.separable
            leg_h = next(i for i in by_id[th].indices if i != r)
            leg_w = next(i for i in by_id[tw].indices if i != r)
            fh = b.einsum([(f"core:{th}", tuple(by_id[th].indices))], (r, leg_h), phase="generate")
            fw = b.einsum([(f"core:{tw}", tuple(by_id[tw].indices))], (r, leg_w), phase="generate")
            h_first = kh * ho * w + kw * ho * wo <= kw * h * wo + kh * ho * wo
            mid = (n["ho"], n["w"]) if h_first else (n["h"], n["wo"])
            midsize = (ho, w) if h_first else (h, wo)
            first = [(fh, (kh, 1), 0), (fw, (1, kw), 1)]
            if not h_first:
                first.reverse()
            (f1, k1, a1), (f2, k2, a2) = first
            def along(a: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
                """stride, padding and dilation of a one-axis conv along axis ``a`` (the other axis untouched)."""
                one = lambda v, rest: (v[0], rest) if a == 0 else (rest, v[1])  # noqa: E731
                return one(st, 1), one(pad, 0), one(dil, 1)

            s1, p1, d1 = along(a1)
            s2, p2, d2 = along(a2)
            z = b.conv(z, f1, (batch, rdim, h, w), (rdim, 1) + k1, ("_b", r) + mid, s1, p1, d1, groups=rdim,
                       counted=("_b", r) + mid + (f1[1][1],))
            z = b.conv(z, f2, (batch, rdim) + midsize, (rdim, 1) + k2, ("_b", r, n["ho"], n["wo"]), s2, p2, d2,
                       groups=rdim, counted=("_b", r, n["ho"], n["wo"], f2[1][1]))
        else:
            kops = [(f"core:{t}", tuple(by_id[t].indices)) for t in parts.kernel]
            kk, _ = _contract_all(b, kops, (r,) + kern, search, time_budget, "generate")
            z = b.conv(z, kk, (batch, rdim, h, w), (rdim, 1, kh, kw), ("_b", r, n["ho"], n["wo"]), st, pad, dil,
                       groups=rdim, counted=("_b", r, n["ho"], n["wo"]) + kern)
        post = [(f"core:{t}", tuple(by_id[t].indices)) for t in parts.outputs]
        ys, m3 = _mix_out(b, z, post, outs, (n["ho"], n["wo"]), (batch, rdim, ho, wo), search, time_budget)
        finish(ys)
        method = f"input factors: {m1}; output factors: {m3}"
    elif schedule == "kernel":
        found = kernel_first_parts(design)
        assert found is not None
        group, bonds = found
        by_id = {t.id: t for t in design.tensors}
        kops = [(f"core:{t}", tuple(by_id[t].indices)) for t in _ordered(design, group)]
        kk, m1 = _contract_all(b, kops, bonds + kern, search, time_budget, "generate")
        nf = math.prod(dims[i] for i in bonds)
        z = b.conv(x, kk, (batch * cin, 1, h, w), (nf, 1, kh, kw), ("_b",) + ins + bonds + (n["ho"], n["wo"]), st,
                   pad, dil, counted=("_b", n["c"], n["ho"], n["wo"]) + bonds + kern)
        rest = [(f"core:{t.id}", tuple(t.indices)) for t in design.tensors if t.id not in group]
        ys, m2 = _contract_all(b, [z] + rest, ("_b",) + outs + (n["ho"], n["wo"]), search, time_budget, "apply",
                               "ys")
        finish(ys)
        method = f"kernel: {m1}; channels: {m2}"
    else:
        raise ValueError(f"unknown conv program {schedule!r}")
    # a step is "apply" when it depends on x; core-only steps are batch independent
    on_x = {"x"}
    for k, s in enumerate(b.steps):
        if any(i in on_x for i in s.inputs):
            on_x.add(s.output)
            if s.phase != "apply":
                b.steps[k] = dataclasses.replace(s, phase="apply")
        elif s.phase != "generate":
            b.steps[k] = dataclasses.replace(s, phase="generate")
    return ConvProgram(design_name=design.name, fingerprint=design.fingerprint(), schedule=schedule, batch=batch,
                       image=(h, w), out_image=(ho, wo), dims=dims, steps=b.steps,  # type: ignore[arg-type]
                       cores={t.id: tuple(t.indices) for t in design.tensors}, in_channels=cin, out_channels=cout,
                       kernel_size=(kh, kw), stride=st, padding=pad, dilation=dil, linear=design.is_linear,
                       x_indices=x[1], y_indices=y_idx, weight=weight, method=method,
                       fixed_cores=frozenset(t.id for t in design.tensors if t.kind == "delta"))


def _ordered(design: Design, ids: frozenset[str] | set[str]) -> list[str]:
    return [t.id for t in design.tensors if t.id in ids]


# ----------------------------------------------------------------------------- compiling, with a cache
_CACHE: dict[tuple, ConvProgram] = {}
_VALID: set[str] = set()
_LOCK = threading.Lock()
MAX_CACHED = 512


def conv_rank(prog: ConvProgram) -> tuple[int, int, int]:
    """The order in which conv programs compete (engine, cost report and export alike): fewer FLOPs, then a
    smaller largest intermediate, then :data:`CONV_SCHEDULES` order."""
    return prog.flops, prog.largest_intermediate, CONV_SCHEDULES.index(prog.schedule)


def check_conv_schedule(design: Design | None, schedule: str) -> str:
    """``schedule`` if it is a conv schedule choice ``design`` can run, else ``ValueError`` naming the ones it can."""
    if schedule not in CONV_SCHEDULE_CHOICES:
        raise ValueError(f"a conv design's schedule must be one of {', '.join(CONV_SCHEDULE_CHOICES)}, got "
                         f"{schedule!r}")
    if design is None or schedule in ("auto", "materialise"):
        return schedule
    can = conv_schedules(design)
    if schedule == "stream" and len(can) == 1:
        raise ValueError(f"design {design.name!r} cannot stream: its last tensor absorbed has an activation and no "
                         f"conv sequence applies, so the kernel must be materialised (use 'auto' or 'materialise')")
    if schedule != "stream" and schedule not in can:
        raise ValueError(f"design {design.name!r} has no {schedule!r} program ({PROGRAM_TITLES[schedule]}); it can "
                         f"run {', '.join(can)}")
    return schedule


def compile_conv_program(design: Design, batch: int = 1, image: Any = None, schedule: str = "auto",
                         search: Search = "fast", time_budget: float = 2.0) -> ConvProgram:
    """Compile the conv ``design`` for ``batch`` images of ``image`` (``(H, W)``; default
    :func:`~engine.design.conv.default_image`) under ``schedule``: a program name, ``stream`` (the best stream
    program) or ``auto`` (the best by :func:`conv_rank`). A pure function of its arguments, cached."""
    if design.conv is None:
        raise ValueError(f"design {design.name!r} is a linear design: use engine.contract.program.compile_program")
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_DIM:
        raise ValueError(f"batch must be an integer from 1 to {MAX_DIM}, got {batch!r}")
    if search not in SEARCHES:
        raise ValueError(f"search must be fast or thorough, got {search!r}")
    img = default_image(design) if image is None else image_size(image)
    check_conv_schedule(None, schedule)
    fp = design.fingerprint()
    if fp not in _VALID:
        design.check()
        with _LOCK:
            _VALID.add(fp)
    check_conv_schedule(design, schedule)
    if schedule in ("auto", "stream"):
        names = [s for s in conv_schedules(design) if schedule == "auto" or s != "materialise"]
        return min((_cached(design, fp, batch, img, s, search, time_budget) for s in names), key=conv_rank)
    return _cached(design, fp, batch, img, schedule, search, time_budget)


def _cached(design: Design, fp: str, batch: int, image: tuple[int, int], schedule: str, search: Search,
            time_budget: float) -> ConvProgram:
    key = (fp, batch, image, schedule, search)
    prog = _CACHE.get(key)
    if prog is None:
        prog = _program(design, batch, image, schedule, search, time_budget)
        with _LOCK:
            if len(_CACHE) >= MAX_CACHED:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = prog
    return prog


def clear_conv_cache() -> None:
    with _LOCK:
        _CACHE.clear()
        _VALID.clear()


# ----------------------------------------------------------------------------- FLOPs backward
def conv_backward_flops(prog: ConvProgram, input_grad: bool = True) -> int:
    """FLOPs of the backward pass as FlopCounterMode counts it (module docstring)."""
    grad = grad_operands(prog, input_grad)  # type: ignore[arg-type]
    total = 0
    for s in prog.steps:
        if isinstance(s, ConvStep):
            if s.op != "conv2d":
                continue
            inp, wt = s.inputs
            if inp in grad:
                total += s.flops
            if wt in grad:
                assert s.weight_shape is not None
                ho, wo = s.out_shape4()[2:]
                total += 2 * s.shape_in[0] * s.shape_in[1] * s.weight_shape[0] * s.kernel[0] * s.kernel[1] * ho * wo
        elif s.op == "einsum":
            total += s.flops * sum(i in grad for i in s.inputs)
    return total


# ----------------------------------------------------------------------------- memory
class _ConvReplay(BufferReplay):
    """The shared replay, with conv and unfold steps: each writes a new output; an operand whose memory order is
    not its listed order is copied first (reshaping it to 4-d); a conv keeps its input and weight for backward,
    unfold nothing."""

    def other_step(self, n: int, s, ins: list) -> list[int]:
        transient, feeds = [], []
        for (buf, idx, mem) in ins:
            if mem != tuple(i for i in idx if self.dims[i] > 1):  # not laid out as listed: the 4-d view copies
                buf = self.new(math.prod(self.dims[i] for i in idx))
                transient.append(buf)
                self.rep.copies += self.bufs[buf].size
            feeds.append(buf)
        self.bind(s.output, self.new(s.size), s.out_indices, s.out_indices)
        if s.op == "conv2d" and any(i in self.grad for i in s.inputs):
            for buf in feeds:
                self.save(buf, n)
        return transient


def conv_replay(prog: ConvProgram, training: bool = False, input_grad: bool = False) -> Replay:
    """Replay the forward pass over buffers as :func:`engine.contract.memory.replay` does, conv and unfold steps
    included (:class:`_ConvReplay`); with ``training``, also the backward peak."""
    grad = grad_operands(prog, input_grad) if training else set()  # type: ignore[arg-type]
    r = _ConvReplay(prog, grad, prog.in_elements, prog.x_indices)
    rep = r.run()
    if training:
        rep.backward_peak = _conv_backward_peak(prog, grad, r.bufs, r.first_saver)
    return rep


def _conv_backward_peak(prog: ConvProgram, grad: set[str], bufs: dict, saved_at: dict[int, int]) -> int:
    """Peak of non-resident elements during backward: the saved tensors (each freed once the earliest step that
    saved it has run backward), the gradient entering each step, and the gradients it writes for its inputs (not
    for cores: the training total counts parameter gradients in full)."""
    dims = prog.dims
    steps = prog.steps
    if not steps:
        return 0
    live = {k: bb.size for k, bb in bufs.items() if not bb.resident and (bb.saved or bb.views)}
    released: dict[int, list[int]] = {}
    for k, first in saved_at.items():
        released.setdefault(first, []).append(k)
    held = sum(live.values())
    grads = {steps[-1].output: steps[-1].size}
    in_flight = steps[-1].size
    peak = held + in_flight
    for n in range(len(steps) - 1, -1, -1):
        s = steps[n]
        g = grads.pop(s.output, None)
        if g is not None:
            in_flight -= g
            base = held + in_flight + g
            if s.activation is not None:
                peak = max(peak, base + s.size)
            written = 0
            for i, ix in zip(s.inputs, s.in_indices):
                if i in grad and not i.startswith("core:"):
                    size = math.prod(dims[k] for k in ix)
                    if s.op == "reshape" or (len(s.inputs) == 1 and not isinstance(s, ConvStep)):
                        size = g  # a view's gradient is the incoming one, reshaped
                    grads[i] = grads.get(i, 0) + size
                    in_flight += size
                    written += size
            peak = max(peak, base + written)
        for k in released.get(n, ()):
            held -= live.pop(k, 0)
    return peak


def conv_memory(prog: ConvProgram, itemsize: int, params: int, training: bool = False) -> tuple[int, int | None]:
    """(inference peak bytes, training bytes or None): parameters, x and the replayed peak; training adds
    gradients and Adam's two moments for every parameter and the forward/backward replay under autograd."""
    resident = params + prog.in_elements
    peak = (resident + conv_replay(prog).peak) * itemsize
    if not training:
        return peak, None
    rep = conv_replay(prog, training=True)
    train = ((2 + ADAM_STATE) * params + prog.in_elements + max(rep.peak, rep.backward_peak)) * itemsize
    return peak, train


# ----------------------------------------------------------------------------- the cost report
def conv_scaling(prog: ConvProgram, design: Design) -> Scaling:
    """Leading-order FLOPs as a polynomial in the bond dimension (every bond scaled together as chi)."""
    from collections import Counter

    bonds = {k for k, v in design.indices.items() if v.role == "bond"}
    terms: Counter = Counter()
    for s in prog.steps:
        if isinstance(s, ConvStep):
            counted: Any = s.counted if s.flops else None
        elif len(s.in_indices) == 2:
            a, bb = (set(ix) for ix in s.in_indices)
            counted = flop_indices(a, bb, set(s.out_indices), prog.dims)
        else:
            counted = None
        if not counted:
            continue
        p = sum(1 for i in counted if i in bonds)
        terms[p] += s.flops // max(math.prod(prog.dims[i] for i in counted if i in bonds), 1)
    if not terms:
        return Scaling("O(1)", 0, "0", ())
    p = max(terms)
    chi = "chi" if p == 1 else f"chi^{p}"
    coef = si(terms[p]) if terms[p] >= 1e15 else f"{terms[p]:.3g}"
    return Scaling(formula=f"O({chi})" if p else "O(1)", exponent=p, leading=f"{coef} * {chi}" if p else coef,
                   terms=tuple((int(c), int(e)) for e, c in sorted(terms.items(), reverse=True)))


@dataclass(frozen=True)
class ConvCostReport(CostReport):
    """:class:`~engine.contract.cost.CostReport` of a conv design at ``batch`` images of ``image``: ``schedule`` is
    ``materialise`` or ``stream``, ``program`` the program (``materialise``, ``cp``, ``tucker2``, ``kernel`` or
    ``im2col``); ``schedules`` is keyed by program."""

    program: str
    image: tuple[int, int]
    out_image: tuple[int, int]
    target: dict

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["image"] = list(self.image)
        out["out_image"] = list(self.out_image)
        return out

    def format(self) -> str:
        t = self.target
        others = ", ".join(f"{k} {si(v.forward_flops)}" for k, v in self.schedules.items() if k != self.program)
        lines = [
            f"{self.name}: {self.tensors} tensors, {'linear' if self.linear else 'nonlinear'}, conv "
            f"{t['kernel_size'][0]}x{t['kernel_size'][1]} {t['in_channels']}->{t['out_channels']}",
            f"  input           {self.batch} x {t['in_channels']} x {self.image[0]} x {self.image[1]} -> output "
            f"{self.batch} x {t['out_channels']} x {self.out_image[0]} x {self.out_image[1]}",
            f"  params          {self.params:,} (dense {self.dense_params:,}, compression {self.compression:,.1f}x)",
            f"  program         {self.program}: {PROGRAM_TITLES[self.program]} ({self.method})"
            + (f"; other: {others}" if others else ""),
            f"  FLOPs           generate K {si(self.generate_flops)}, forward {si(self.forward_flops)}, "
            f"backward {si(self.backward_flops)} (dense forward {si(self.dense_forward_flops)})",
            f"  memory ({self.dtype}) params {nbytes(self.param_bytes)}, largest intermediate "
            f"{nbytes(self.largest_intermediate_bytes)}, peak forward {nbytes(self.peak_memory_bytes)}, "
            f"training {nbytes(self.train_memory_bytes)}",
            f"  scaling         {self.scaling}  (leading term {self.scaling_detail.leading})",
            "  steps:",
        ]
        for s in self.path:
            if s.flops:
                act = f" -> {s.activation}" if s.activation else ""
                lines.append(f"    {s.step:>3} {', '.join(s.inputs):<28} {s.einsum or '(more than 52 indices)':<24}"
                             f"{act:<8} {si(s.flops)} FLOPs")
        return "\n".join(lines)


def conv_cost_report(design: Design, batch: int = 8, image: Any = None, dtype: str = "float32",
                     schedule: str = "auto", search: Search = "fast", time_budget: float = 2.0) -> ConvCostReport:
    """Every number of a conv design at ``batch`` images of ``image`` (default
    :func:`~engine.design.conv.default_image`), read off its programs (module docstring); nothing is allocated."""
    itemsize = dtype_bytes(dtype)
    check_conv_schedule(None, schedule)
    chosen_prog = compile_conv_program(design, batch, image, schedule, search, time_budget)
    img = chosen_prog.image
    params = design.params
    costs: dict[str, ScheduleCost] = {}
    for name in conv_schedules(design):
        prog = compile_conv_program(design, batch, img, name, search, time_budget)
        peak, train = conv_memory(prog, itemsize, params, training=True)
        costs[name] = ScheduleCost(forward_flops=prog.flops, generate_flops=prog.generate_flops,
                                   apply_flops=prog.apply_flops, backward_flops=conv_backward_flops(prog),
                                   peak_memory_bytes=peak, train_memory_bytes=int(train or 0),
                                   largest_intermediate_bytes=prog.largest_intermediate * itemsize,
                                   method=prog.method, executable=prog.executable)
    conv = design.conv
    assert conv is not None
    c = costs[chosen_prog.schedule]
    sc = conv_scaling(chosen_prog, design)
    x_el, y_el = chosen_prog.in_elements, chosen_prog.out_elements
    ho, wo = chosen_prog.out_image
    dense_flops = 2 * batch * ho * wo * design.dense_params
    return ConvCostReport(
        name=design.name, params=params, dense_params=design.dense_params,
        compression=design.dense_params / max(params, 1), tensors=len(design.tensors), linear=design.is_linear,
        batch=batch, dtype=str(dtype), schedule=chosen_prog.kind, method=chosen_prog.method,  # type: ignore
        generate_flops=costs["materialise"].generate_flops, forward_flops=c.forward_flops,
        backward_flops=c.backward_flops, train_step_flops=c.forward_flops + c.backward_flops,
        dense_forward_flops=dense_flops, param_bytes=params * itemsize,
        largest_intermediate_bytes=c.largest_intermediate_bytes, peak_memory_bytes=c.peak_memory_bytes,
        train_memory_bytes=c.train_memory_bytes,
        dense_train_memory_bytes=((2 + ADAM_STATE) * design.dense_params + 2 * x_el + y_el) * itemsize,
        schedules=costs, executable=chosen_prog.executable, scaling=sc.formula, scaling_detail=sc,
        path=chosen_prog.describe(), program=chosen_prog.schedule, image=img, out_image=(ho, wo),
        target=conv.to_dict())

