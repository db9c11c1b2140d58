"""The memory model: bytes read off a program by replaying it over buffers, the way torch lays tensors out.

:func:`replay`: an einsum step copies an operand only when its memory order cannot be viewed as torch's batched
matmul operand (:func:`einsum_layout`), writes its output in torch's order, and returns a permuted view; a reshape
is a view when the memory order allows it and a copy otherwise; an activation writes a new buffer; a buffer lives
until the last step that reads it through any view. Training keeps what autograd saves for backward (matmul
operands, activation inputs or outputs, as :mod:`engine.design.activations` says) and :func:`memory` adds
gradients and Adam's two moments for every parameter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from engine.contract.flops import grad_operands
from engine.contract.program import Program
from engine.design.activations import activation

DTYPE_BYTES = {"float32": 4, "float": 4, "fp32": 4, "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
               "float64": 8, "double": 8, "fp64": 8}
ADAM_STATE = 2  # exp_avg and exp_avg_sq per parameter


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype`` (``"float32"``, ``"bf16"``, ``"torch.float64"``, ...)."""
    try:
        return DTYPE_BYTES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use float32, float16, bfloat16 or float64") from None


def _viewable(mem: Sequence[str], groups: Sequence[Sequence[str]], dims: dict[str, int]) -> bool:
    """Whether a tensor whose (size > 1) indices lie in memory as ``mem`` (outer to inner) can be viewed with each
    of ``groups`` flattened into one dimension: each group's indices must be adjacent and in order in memory."""
    pos = {i: k for k, i in enumerate(mem)}
    for g in groups:
        g = [i for i in g if dims[i] > 1]
        for a, b in zip(g, g[1:]):
            if pos[b] != pos[a] + 1:
                return False
    return True


def _reshape_blocks(src: Sequence[str], dst: Sequence[str], dims: dict[str, int]) -> list[tuple[list[str], list[str]]]:
    """Pair runs of ``src`` and ``dst`` indices (size-1 ones dropped) with equal products, as torch.reshape does."""
    s = [i for i in src if dims[i] > 1]
    d = [i for i in dst if dims[i] > 1]
    blocks, i, j = [], 0, 0
    while i < len(s) and j < len(d):
        bs, bd, ps, pd = [s[i]], [d[j]], dims[s[i]], dims[d[j]]
        i, j = i + 1, j + 1
        while ps != pd:
            if ps < pd:
                bs.append(s[i])
                ps *= dims[s[i]]
                i += 1
            else:
                bd.append(d[j])
                pd *= dims[d[j]]
                j += 1
        blocks.append((bs, bd))
    return blocks


def _torch_label_order(a: Sequence[str], b: Sequence[str], out: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Sort key torch.einsum gives each index: Step.equation assigns a-z then A-Z in order of first appearance,
    and torch orders labels A-Z before a-z."""
    key: dict[str, tuple[int, int]] = {}
    for i in list(a) + list(b) + list(out):
        if i not in key:
            k = len(key)
            key[i] = (0, k) if k >= 26 else (1, k)
    return key


def _product_order(out: Sequence[str], amem: Sequence[str], bmem: Sequence[str],
                   dims: dict[str, int]) -> tuple[str, ...]:
    """Memory order (outer to inner) of an elementwise product's result, as ATen's TensorIterator lays out a new
    output: dimensions sorted innermost first by the first operand's strides, then the second's where the first
    broadcasts (stride 0) or ties; an insertion sort that stops at the first operand ordering a pair, as
    ``TensorIteratorBase::reorder_dimensions`` does. Exact when every dimension is > 1 (tested against torch);
    size-1 dimensions are left out (their strides depend on how each tensor was made), which leaves it right for
    about 98% of random products that have them, against 65% for the output's index order."""
    big = [i for i in out if dims[i] > 1]
    strides = []
    for mem in (amem, bmem):
        st, acc = {}, 1
        for i in reversed([i for i in mem if dims[i] > 1]):
            st[i] = acc
            acc *= dims[i]
        strides.append(st)

    def order(d0: str, d1: str) -> int:  # 1: d0 belongs outside d1 (larger stride), -1: inside, 0: undecided
        for st in strides:
            s0, s1 = st.get(d0, 0), st.get(d1, 0)
            if s0 and s1 and s0 != s1:
                return -1 if s0 < s1 else 1
        return 0

    perm = big[::-1]  # innermost first
    for k in range(1, len(perm)):
        moving = k
        for j in range(k - 1, -1, -1):
            c = order(perm[j], perm[moving])
            if c > 0:
                perm[j], perm[moving] = perm[moving], perm[j]
                moving = j
            elif c < 0:
                break
    return tuple(perm[::-1])


def einsum_layout(a: Sequence[str], amem: Sequence[str], b: Sequence[str], bmem: Sequence[str],
                  out: Sequence[str], dims: dict[str, int]) -> tuple[list[list[int]], tuple[str, ...], str, list[str],
                                                                    bool]:
    """What ``torch.einsum`` allocates for one two-operand step, given the operands' memory orders.

    Returns (per operand, the sizes of the new tensors made from it before the matmul; memory order of the
    result; kind "bmm" or "mul"; the summed indices in torch's order; whether b went first into the matmul). Mirrors ATen's einsum and sumproduct_pair: indices summed in one operand only are
    summed first; with no index to sum it is an elementwise product; otherwise each operand is permuted to
    (batch, free, summed) and copied unless that is a view, and the batched matmul writes (batch, free_a, free_b),
    where torch puts the second operand first when the output starts with the second's free indices and ends with
    the first's (a rule measured on torch 2.13, right for 99% of random two-operand equations; the rest only
    changes which later reshape copies).
    """
    key = _torch_label_order(a, b, out)
    sa = {i for i in a if dims[i] > 1}
    sb = {i for i in b if dims[i] > 1}
    outs = set(out)
    made: list[list[int]] = [[], []]
    one_a = [i for i in sa - sb if i not in outs]
    one_b = [i for i in sb - sa if i not in outs]
    if one_a:  # summed out of a alone first (a new, smaller tensor)
        sa -= set(one_a)
        amem = [i for i in amem if i in sa]
        made[0].append(math.prod(dims[i] for i in sa))
    if one_b:
        sb -= set(one_b)
        bmem = [i for i in bmem if i in sb]
        made[1].append(math.prod(dims[i] for i in sb))
    summed = sorted((i for i in sa & sb if i not in outs), key=key.__getitem__)
    big_out = [i for i in out if dims[i] > 1]
    if not summed:
        return made, _product_order(big_out, amem, bmem, dims), "mul", [], False
    shared = [i for i in big_out if i in sa and i in sb]
    a_free = [i for i in big_out if i in sa and i not in sb]
    b_free = [i for i in big_out if i in sb and i not in sa]
    if not _viewable(amem, [shared, a_free, summed], dims):
        made[0].append(math.prod(dims[i] for i in sa))
    if not _viewable(bmem, [shared, summed, b_free], dims):
        made[1].append(math.prod(dims[i] for i in sb))
    # torch's "right-only" class also holds every size-1 index, output or contracted, in label order
    contracted = sorted({i for i in list(a) + list(b) if i not in outs and i not in summed}, key=key.__getitem__)
    tail = [i for i in out if i not in shared] + contracted
    first_big = [i for i in big_out if i not in shared]
    swap = bool(first_big) and first_big[0] in b_free and tail[-1] in a_free
    order = shared + (b_free + a_free if swap else a_free + b_free)
    return made, tuple(order), "bmm", summed, swap


@dataclass
class _Buf:
    size: int
    resident: bool = False
    saved: bool = False
    views: set[str] = field(default_factory=set)


@dataclass
class Replay:
    """The result of replaying a program over buffers (element counts, not bytes)."""

    peak: int = 0  # largest sum of non-resident live buffers at any moment
    saved: int = 0  # elements autograd keeps for backward at the end of the forward pass
    copies: int = 0  # elements of operand copies torch makes inside einsum and reshape steps
    timeline: list[int] = field(default_factory=list)  # live non-resident elements after each step
    backward_peak: int = 0  # with training: peak of saved tensors plus gradients in flight during backward


def replay(prog: Program, training: bool = False, input_grad: bool = False) -> Replay:
    """Replay the forward pass over buffers; with ``training``, keep what autograd saves for backward.

    Remembered on the program (a compiled program is never changed, as its cached plan assumes too): one report
    asks for the inference, training and traffic replays of the same program. Treat the result as read-only."""
    memo = prog.__dict__.setdefault("_replays", {})
    key = (training, input_grad)
    if key not in memo:
        memo[key] = _replay(prog, training, input_grad)
    return memo[key]


def _replay(prog: Program, training: bool, input_grad: bool) -> Replay:
    grad = grad_operands(prog, input_grad) if training else set()
    r = BufferReplay(prog, grad, prog.batch * prog.in_features, ("_b", "_in"))
    rep = r.run()
    if training:
        rep.backward_peak = _backward_peak(prog, grad, r.bufs, r.first_saver, r.info)
    return rep


class BufferReplay:
    """One forward replay over buffers: cores and x are resident, each step binds its output to a buffer (a view
    or a new one), a buffer is dropped once no operand views it and autograd does not keep it. Knows reshapes,
    einsums and activations; a program with other steps (:mod:`engine.contract.conv`) replays them in
    :meth:`other_step`."""

    def __init__(self, prog: Program, grad: set[str], x_size: int, x_indices: Sequence[str]):  # or a ConvProgram
        self.prog = prog
        self.dims: dict[str, int] = prog.dims
        self.grad = grad
        self.bufs: dict[int, _Buf] = {}
        self.where: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {}  # operand -> (buffer, idx, memory)
        self.nid = 0
        self.total = 0  # elements of the non-resident buffers alive now
        self.rep = Replay()
        self.first_saver: dict[int, int] = {}  # saved buffer -> earliest step saving it (the last to run backward)
        self.info: dict[int, tuple[str, tuple[str, ...], list[str], bool]] = {}  # two-operand steps: torch's layout
        self.layouts = prog.__dict__.setdefault("_einsum_layouts", {})  # step -> torch's layout, as in every replay
        for cid, idx in prog.cores.items():
            self.bind(f"core:{cid}", self.new(math.prod(self.dims[i] for i in idx), True), idx, idx)
        self.bind("x", self.new(x_size, True), x_indices, x_indices)

    def new(self, size: int, resident: bool = False) -> int:
        self.nid += 1
        self.bufs[self.nid] = _Buf(size, resident)
        if not resident:
            self.total += size
        return self.nid

    def bind(self, name: str, buf: int, idx: Sequence[str], mem: Sequence[str]) -> None:
        self.where[name] = (buf, tuple(idx), tuple(i for i in mem if self.dims[i] > 1))
        self.bufs[buf].views.add(name)

    def drop_if_dead(self, buf: int) -> None:
        b = self.bufs.get(buf)
        if b is not None and not b.views and not b.saved and not b.resident:
            self.total -= b.size
            del self.bufs[buf]

    def save(self, buf: int, step: int) -> None:
        self.bufs[buf].saved = True
        self.first_saver.setdefault(buf, step)

    def other_step(self, n: int, s, ins: list) -> list[int]:
        """Replay a step that is neither a reshape nor an einsum; returns the buffers alive only during it."""
        raise ValueError(f"cannot replay a {s.op!r} step")

    def run(self) -> Replay:
        dims, rep, steps = self.dims, self.rep, self.prog.steps
        last = self.prog.last_use()
        final = steps[-1].output if steps else None
        for n, s in enumerate(steps):
            ins = [self.where[i] for i in s.inputs]
            transient: list[int] = []  # buffers alive only during this step (unless saved)
            if s.op == "reshape":
                buf, idx, mem = ins[0]
                blocks = _reshape_blocks(idx, s.out_indices, dims)
                if _viewable(mem, [bs for bs, _ in blocks], dims):
                    pos = {i: k for k, i in enumerate(mem)}
                    order = sorted(blocks, key=lambda bl: pos[bl[0][0]])
                    self.bind(s.output, buf, s.out_indices, [i for _, bd in order for i in bd])
                else:
                    self.bind(s.output, self.new(s.size), s.out_indices, s.out_indices)
                    rep.copies += s.size
            elif s.op != "einsum":
                transient = self.other_step(n, s, ins)
            elif len(ins) == 1:
                buf, idx, mem = ins[0]
                if set(s.out_indices) == set(idx):  # identity or permutation: a view
                    self.bind(s.output, buf, s.out_indices, mem)
                else:  # a sum over some indices writes a new tensor
                    self.bind(s.output, self.new(s.size), s.out_indices, s.out_indices)
            else:
                (ba, ia, ma), (bb, ib, mb) = ins
                if n not in self.layouts:
                    self.layouts[n] = einsum_layout(ia, ma, ib, mb, s.out_indices, dims)
                made, order, kind, summed, swap = self.layouts[n]
                self.info[n] = (kind, order, summed, swap)
                feeds = [ba, bb]  # the buffer each operand finally hands to the matmul (or product)
                for k in range(2):
                    for size in made[k]:
                        feeds[k] = self.new(size)
                        transient.append(feeds[k])
                        rep.copies += size
                self.bind(s.output, self.new(s.size), s.out_indices, order)
                if self.grad:  # autograd keeps each operand whose partner needs a gradient
                    for k in range(2):
                        if s.inputs[1 - k] in self.grad:
                            self.save(feeds[k], n)
            rep.peak = max(rep.peak, self.total)
            for t in transient:  # operand copies are gone before the activation runs (unless saved)
                self.drop_if_dead(t)
            if s.activation is not None:  # the activation writes a new buffer while the pre-activation still exists
                pre, idx, mem = self.where[s.output]
                rep.peak = max(rep.peak, self.total + s.size)
                post = self.new(s.size)
                self.bufs[pre].views.discard(s.output)
                self.bind(s.output, post, idx, mem)
                if s.output in self.grad:  # what the activation's backward reads stays alive
                    self.save(pre if activation(s.activation).saves == "input" else post, n)
                self.drop_if_dead(pre)
            rep.peak = max(rep.peak, self.total)
            for name in [i for i in s.inputs if last.get(i) == n and i != final]:
                b = self.where.pop(name)[0]
                self.bufs[b].views.discard(name)
                self.drop_if_dead(b)
            rep.timeline.append(self.total)
        rep.saved = sum(b.size for b in self.bufs.values() if b.saved and not b.resident and not b.views)
        return rep


def _backward_peak(prog: Program, grad: set[str], bufs: dict[int, _Buf], first_saver: dict[int, int],
                   info: dict[int, tuple[str, tuple[str, ...], list[str], bool]]) -> int:
    """Peak of non-resident elements during backward, replaying autograd step by step in reverse.

    Live: saved tensors (each freed once the earliest step saving it has run backward), the gradient entering each
    step (dL/dy is a dense ``B x out`` tensor) and the gradients it writes for its inputs, in torch's layouts: a
    matmul's gradient is copied when its layout cannot be viewed as the matmul's output, and a reshape's when it
    cannot be viewed with the input's shape. Parameter gradients are not counted here (the training total counts
    them in full).
    """
    dims = prog.dims
    steps = prog.steps
    if not steps:
        return 0
    big = lambda idx: tuple(i for i in idx if dims[i] > 1)  # noqa: E731
    live = {k: b.size for k, b in bufs.items() if not b.resident and (b.saved or b.views)}
    released: dict[int, list[int]] = {}  # step -> saved buffers freed once its backward has run
    for k, first in first_saver.items():
        released.setdefault(first, []).append(k)
    held = sum(live.values())  # saved (and still referenced) elements
    grads: dict[str, tuple[int, tuple[str, ...]]] = {steps[-1].output: (steps[-1].size, big(steps[-1].out_indices))}
    in_flight = steps[-1].size  # elements of the gradients waiting for their producing step
    peak = held + in_flight
    for n in range(len(steps) - 1, -1, -1):
        s = steps[n]
        entry = grads.pop(s.output, None)
        if entry is not None:
            g, gmem = entry
            in_flight -= g
            base = held + in_flight + g
            if s.activation is not None:  # dL/d(pre-activation) is written, then the incoming gradient is freed
                peak = max(peak, base + s.size)
            need = [(i, ix) for i, ix in zip(s.inputs, s.in_indices) if i in grad]
            if s.op == "reshape":
                i, ix = s.inputs[0], s.in_indices[0]
                blocks = _reshape_blocks(s.out_indices, ix, dims)
                if _viewable(gmem, [bs for bs, _ in blocks], dims):
                    pos = {k: p for p, k in enumerate(gmem)}
                    mem = tuple(k for _, bd in sorted(blocks, key=lambda bl: pos[bl[0][0]]) for k in bd)
                else:
                    peak = max(peak, base + g)
                    mem = big(ix)
                if i in grad:
                    grads[i] = (g, mem)
                    in_flight += g
            elif len(s.inputs) == 1:
                if need:
                    grads[s.inputs[0]] = (g, gmem)
                    in_flight += g
            else:
                kind, order, summed, swap = info[n]
                written = 0
                if kind == "bmm":
                    a, b = (set(big(ix)) for ix in s.in_indices)
                    shared = [k for k in order if k in a and k in b]
                    first, second = (1, 0) if swap else (0, 1)
                    free = [[k for k in order if k in (a, b)[j] and k not in shared] for j in (0, 1)]
                    copy = 0 if _viewable(gmem, [shared, free[first], free[second]], dims) else g
                    for j, (i, ix) in enumerate(zip(s.inputs, s.in_indices)):
                        if i not in grad:
                            continue
                        size = math.prod(dims[k] for k in (a, b)[j])
                        mem = shared + (free[j] + summed if j == first else summed + free[j])
                        if not i.startswith("core:"):
                            grads[i] = (size, tuple(mem))
                            in_flight += size
                            written += size
                    peak = max(peak, base + copy + written)
                else:  # an elementwise product: each gradient is (grad * other) summed to the input's shape
                    for i, ix in need:
                        size = math.prod(dims[k] for k in ix)
                        peak = max(peak, base + written + g + size)
                        if not i.startswith("core:"):
                            grads[i] = (size, big(ix))
                            in_flight += size
                            written += size
        for k in released.get(n, ()):
            held -= live.pop(k, 0)
    return peak


@dataclass(frozen=True)
class MemoryBytes:
    """Bytes of one program: inference peak and, when asked for, a training step's total."""

    peak_forward_bytes: int  # parameters, x and the replayed inference peak
    train_bytes: int | None = None  # params + gradients + Adam state + x + the replayed forward/backward peak


def memory(prog: Program, itemsize: int, params: int, training: bool = False) -> MemoryBytes:
    """Bytes: ``peak_forward_bytes`` (inference: parameters, x and the replayed peak) and, with ``training``,
    ``train_bytes`` = parameters + gradients + Adam state + x + the replayed peak of a forward pass under autograd
    (which includes every tensor saved for backward)."""
    if getattr(prog, "slicing", None) is not None:  # generation slice by slice: engine.contract.slicing
        from engine.contract.slicing import sliced_memory

        return sliced_memory(prog, itemsize, params, training)
    resident = params + prog.batch * prog.in_features
    peak = (resident + replay(prog).peak) * itemsize
    if not training:
        return MemoryBytes(peak)
    rep = replay(prog, training=True)
    train = ((2 + ADAM_STATE) * params + prog.batch * prog.in_features + max(rep.peak, rep.backward_peak)) * itemsize
    return MemoryBytes(peak, train)
