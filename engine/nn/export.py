"""Export a design to code: a standalone PyTorch module, the design JSON, or a snippet using ``engine``.

The standalone module is printed from :func:`engine.contract.program.compile_program` steps, the same steps the engine
runs and the cost model counts: each contraction becomes one straight-line ``torch.einsum`` line. Its parameters are
``self.cores[<key>]`` (an ``nn.ParameterDict``) and ``self.bias``, so its ``state_dict`` keys equal those of
:class:`engine.nn.TNLinear` and weights load either way. The generated file imports only ``torch`` (and ``math``).

Safe by construction. The source is assembled by :class:`_Source` from fixed text and three kinds of pieces only:
:func:`_lit` (``repr`` of plain data: every string that comes from a design or a run, such as its name, tensor ids,
index names, the source of the weights, is a Python literal, never comment or docstring text), :func:`_ident`
(identifiers used as code: operand names of the program, buffer names from :func:`engine.nn.linear.id_to_key`,
the class name, all checked against ``[A-Za-z_][A-Za-z0-9_]*``) and integers. Einsum equations use the letters a-z,
A-Z only (checked) and activations come from the registry (checked). The result is parsed before it is returned.

Schedules. For every batch size the engine runs the program that wins :func:`engine.contract.program.program_rank`
(fewer FLOPs, then a smaller largest intermediate, then materialise). When the design can stream (linear designs,
and nonlinear ones whose W is linear in what follows the last activation, :func:`engine.contract.schedule.can_stream`),
the exported module carries the ``materialise`` program and the ``stream`` path the engine plans for each batch
bucket (it searches a batch's stream path at the batch's power-of-two bucket, 1 to 4096:
:func:`engine.contract.program.path_batch`), with the FLOPs of each as ``a + b * batch`` and the largest
intermediate as ``max(c, d * batch)`` (exact: a step either involves the batch index or not), and runs the better of
materialise and the batch's stream path by the same rank: the engine's program at any batch. Otherwise it
materialises W.
"""
from __future__ import annotations

import ast
import keyword
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from engine.contract.program import BATCH, PATH_BATCHES, Program, Step, compile_program
from engine.contract.schedule import can_stream
from engine.design.activations import activation
from engine.design.model import Design
from engine.files import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from engine.nn.sliced_export import BudgetTables

FORMATS = ("torch", "json", "snippet")
_CONV_BUDGET = ("design {name!r} has a conv2d target: memory budgets (sliced generation) apply to linear designs")
DEFAULT_SUFFIX = {"torch": ".py", "json": ".json", "snippet": ".py"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EQUATION = re.compile(r"[A-Za-z,]*->[A-Za-z]*")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_HEX = re.compile(r"[0-9a-f]+")


# --------------------------------------------------------------------- safe pieces of code
def _ident(name: str) -> str:
    """``name`` if it is a Python identifier (and not a keyword), for use as code; else ``ValueError``."""
    if not (isinstance(name, str) and _IDENTIFIER.fullmatch(name) and not keyword.iskeyword(name)):
        raise ValueError(f"cannot export: {name!r} is not a Python identifier")
    return name


def _lit(value: Any) -> str:
    """A Python literal for plain data (str, int, float, bool, None and tuples, lists, dicts of them): ``repr``,
    which escapes quotes, backslashes, newlines and every other character, so it can never end the literal."""
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({repr(value)!r})"
    if isinstance(value, tuple):
        return "(" + ", ".join(_lit(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_lit(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_lit(k)}: {_lit(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot export a {type(value).__name__} as a literal")


def _int(n: int) -> str:
    if not (isinstance(n, int) and not isinstance(n, bool)):
        raise TypeError(f"expected an integer, got {n!r}")
    return str(n)


class _Source:
    """Lines of generated code. ``add`` takes fixed text whose only interpolations are :func:`_lit`,
    :func:`_ident` and :func:`_int` results."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, text: str = "", indent: int = 0) -> None:
        for line in text.split("\n"):
            self.lines.append((" " * indent + line) if line else "")

    def add_dict(self, label: str, mapping: dict[Any, Any], indent: int = 0) -> None:
        """``LABEL = {`` and one ``key: value,`` line per entry (both :func:`_lit`), then ``}``."""
        self.add(f"{label} = {{", indent)
        for key, value in mapping.items():
            self.add(f"{_lit(key)}: {_lit(value)},", indent + 4)
        self.add("}", indent)

    def text(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"

    def checked_text(self) -> str:
        """The text, parsed first: a guard, what is returned always parses."""
        text = self.text()
        ast.parse(text)
        return text


# --------------------------------------------------------------------- names
def class_name(design: Design) -> str:
    """A CamelCase Python class name from the design name (``"mpo 64x10 chi=3"`` -> ``"Mpo64x10Chi3"``)."""
    words = re.findall(r"[A-Za-z0-9]+", design.name or "")
    name = "".join(w[:1].upper() + w[1:] for w in words)[:64] or "TNLayer"
    if name[0].isdigit():
        name = "TN" + name
    return name if not keyword.iskeyword(name) else name + "Layer"


def delta_buffer_name(tid: str) -> str:
    """The buffer name TNLinear gives copy tensor ``tid`` (``delta_<key>``; buffers have no reserved names)."""
    from engine.nn.linear import id_to_key

    return "delta_" + id_to_key(tid, reserved=frozenset())


def operand_names(design: Design) -> dict[str, str]:
    """Program operand ``core:<id>`` -> its Python expression in the generated module, named as in TNLinear:
    trainable cores are ``self.cores[<key>]``, copy (``delta``) tensors the fixed buffers ``delta_<key>``, reached
    as ``getattr(self, <name>)``: a name made from a tensor id stays inside a string literal, like every design
    string."""
    from engine.nn.linear import id_to_key

    return {f"core:{t.id}": (f"getattr(self, {_lit(_ident(delta_buffer_name(t.id)))})" if t.kind == "delta"
                             else f"self.cores[{_lit(id_to_key(t.id))}]") for t in design.tensors}


# --------------------------------------------------------------------- cost as a function of batch
def flops_by_batch(prog: Program) -> tuple[int, int]:
    """``(a, b)`` with the program's FLOPs at batch ``B`` equal to ``a + b * B``.

    A step touching the batch index costs ``batch`` times its per-row FLOPs; every other step is batch independent.
    """
    fixed = per_row = 0
    for s in prog.steps:
        if any(BATCH in ix for ix in s.in_indices):
            per_row += s.flops // prog.batch
        else:
            fixed += s.flops
    return fixed, per_row


def sizes_by_batch(prog: Program) -> tuple[int, int]:
    """``(c, d)`` with the program's largest intermediate at batch ``B`` equal to ``max(c, d * B)`` elements."""
    fixed = per_row = 0
    for s in prog.steps:
        if BATCH in s.out_indices:
            per_row = max(per_row, s.size // prog.batch)
        else:
            fixed = max(fixed, s.size)
    return fixed, per_row


def stream_variants(design: Design) -> tuple[dict[str, Program], dict[int, str]]:
    """The distinct stream programs the engine plans for the batch buckets (``PATH_BATCHES``: it searches a batch's
    stream path at its power-of-two bucket), named ``stream`` when there is one, else ``stream_b<first bucket that
    has it>``; and bucket -> variant name."""
    found: dict[tuple, Program] = {}
    bucket_sig: dict[int, tuple] = {}
    for b in PATH_BATCHES:
        prog = compile_program(design, b, "stream")
        sig = tuple((s.op, s.inputs, s.in_indices, s.out_indices) for s in prog.steps)
        found.setdefault(sig, prog)
        bucket_sig[b] = sig
    name = {sig: "stream" if len(found) == 1 else f"stream_b{p.batch}" for sig, p in found.items()}
    return {name[sig]: p for sig, p in found.items()}, {b: name[sig] for b, sig in bucket_sig.items()}


# --------------------------------------------------------------------- code lines
def _equation(eq: str) -> str:
    if not _EQUATION.fullmatch(eq):
        raise ValueError(f"cannot export: {eq!r} is not an einsum equation in letters")
    return '"' + eq + '"'


def _activation_source(name: str) -> str:
    src = activation(name).source
    if not _DOTTED.fullmatch(src):
        raise ValueError(f"cannot export: activation source {src!r} is not a dotted name")
    return src


def _step_lines(prog: Program, steps: list[Step], names: dict[str, str]) -> list[str]:
    """One line per step: ``out = torch.einsum("eq", a, b)`` (plus activation) or ``out = a.reshape(...)``."""
    lines = []
    for s in steps:
        args = [names[i] if i in names else _ident(i) for i in s.inputs]  # x, xs, t<n>, Wt, W, ys, y or cores
        out = _ident(s.output)
        if s.op == "reshape":
            shape = ", ".join("-1" if i == BATCH else _int(prog.dims[i]) for i in s.out_indices)
            expr = f"{args[0]}.reshape({shape})"
        elif s.is_identity:
            expr = args[0]
        else:
            expr = f"torch.einsum({_equation(s.equation)}, {', '.join(args)})"
        note = f"  # {s.flops:,} FLOPs at batch {prog.batch}" if s.flops and s.phase == "apply" else (
            f"  # {s.flops:,} FLOPs" if s.flops else "")
        act = _activation_source(s.activation) if s.activation is not None else None
        if act is not None and s.activation == "gelu" and len(s.out_indices) > 12:
            # torch's gelu kernel rejects tensors of 13+ dimensions: apply it to the flat view (elementwise)
            lines.append(f"{out} = {expr}{note}")
            lines.append(f"{out} = {act}({out}.reshape(-1)).reshape({out}.shape)")
            continue
        if act is not None:
            expr = f"{act}({expr})"
        lines.append(f"{out} = {expr}{note}")
    return lines


_STD_CACHE: dict[tuple[str, int | None], dict[str, float]] = {}


def _init_stds(design: Design, memory_budget: int | None = None) -> dict[str, float]:
    """Per-core init std (cached by design fingerprint and budget: nonlinear designs are calibrated, which builds W)."""
    key = (design.fingerprint(), memory_budget)
    if key not in _STD_CACHE:
        if len(_STD_CACHE) > 256:
            _STD_CACHE.clear()
        _STD_CACHE[key] = _compute_init_stds(design, memory_budget)
    return dict(_STD_CACHE[key])


def _compute_init_stds(design: Design, memory_budget: int | None = None) -> dict[str, float]:
    """Per-core std of the exported module's Gaussian initialisation, from :mod:`engine.nn.init`.

    Linear designs: the closed form of :func:`engine.nn.init.linear_core_stds`, which gives W ``nn.Linear``'s
    variance in expectation. Nonlinear designs: the root mean square of each core after the engine's calibrated
    initialisation (seed 0), so activations see inputs of about the calibrated scale (the module then gives W the
    exact scale, as the engine does); that builds W, so a design whose
    calibration would not fit in this machine's memory is refused first, with the cost model's number. Under a
    memory budget the calibration generates W as the budget's plan does (sliced), like ``TNLinear``'s.
    """
    from engine.nn.init import check_init_memory, init_cores, linear_core_stds, target_std

    if design.is_linear:
        return linear_core_stds(design, target_std(design.in_features))
    if memory_budget is None:
        check_init_memory(design, "exporting this nonlinear design (its initialisation is calibrated on W)")
    cores = init_cores(design, seed=0, memory_budget=memory_budget)
    return {t.id: float(cores[t.id].double().pow(2).mean().sqrt()) for t in design.tensors if t.kind != "delta"}


# --------------------------------------------------------------------- the torch module
# Fixed text of the generated module: no design data is ever formatted into these blocks.
_IMPORTS = """\
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
"""

_INIT_AND_RESET = '''\
def __init__(self, bias: bool = True, device=None, dtype=None) -> None:
    super().__init__()
    kw = {"device": device, "dtype": dtype}
    self.cores = nn.ParameterDict({k: nn.Parameter(torch.empty(s, **kw)) for k, s in self.CORE_SHAPES.items()})
    for k, s in self.DELTA_SHAPES.items():
        delta = torch.zeros(s, **kw)
        i = torch.arange(min(s), device=device)
        delta[(i,) * len(s)] = 1.0
        self.register_buffer(k, delta)
    if bias:
        self.bias = nn.Parameter(torch.empty(self.out_features, **kw))
    else:
        self.register_parameter("bias", None)
    self.reset_parameters()

def reset_parameters(self) -> None:
    with torch.no_grad():
        for _ in range(self.INIT_DRAWS):  # a draw whose W is all zero (a dead layer) is drawn again
            for k, core in self.cores.items():
                self.draw_core(k, core)
            if self.INIT_LAST is not None:
                live = self.calibrate()
            else:
                live = self.INIT_DRAWS == 1 or self.weight_is_live()
            if live:
                break
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            self.bias.uniform_(-bound, bound)

def draw_core(self, key: str, core: torch.Tensor) -> None:
    """One core's first values, as TN Studio's engine draws them (engine.nn.init.raw_cores): a Gaussian, or in a
    nonlinear design an orthogonal isometry or a near-identity disentangler or lateral tensor; scaled to the root
    mean square INIT_STD[key]."""
    kind, rms = self.INIT_KIND[key], self.INIT_STD[key]
    if kind == "normal" or core.is_meta:
        core.normal_(0.0, rms)
        return
    shape, f64 = tuple(core.shape), torch.float64
    h = len(shape) // 2
    if kind == "orthogonal":  # (all legs but the last) x (last leg) with orthonormal columns or rows (Haar)
        rows, cols = math.prod(shape[:-1]), shape[-1]
        q, r = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), dtype=f64))
        q = q * torch.sign(torch.diagonal(r))
        m = q if rows >= cols else q.T
    elif kind == "pairwise_identity" and 2 * h == len(shape):  # leg n of the first half -> leg n of the second
        m = torch.ones(1, 1, dtype=f64)
        for n in range(h):
            m = torch.kron(m, torch.eye(shape[n], shape[h + n], dtype=f64))
        m = m + self.INIT_NOISE * torch.randn(m.shape, dtype=f64) / math.sqrt(m.shape[0])
    else:  # near identity: half the legs -> the other half
        rows, cols = math.prod(shape[:h]), math.prod(shape[h:])
        noise = torch.randn(rows, cols, dtype=f64) / math.sqrt(rows)
        m = torch.eye(rows, cols, dtype=f64) + self.INIT_NOISE * noise
    core.copy_(m.reshape(shape) * (rms / float(m.pow(2).mean().sqrt())))

def calibrate(self) -> bool:
    """Give W nn.Linear's scale exactly, as the engine does (engine.nn.init.calibrate): W is linear in the tensor
    INIT_LAST (the last one no activation reaches), which is projected so that mean(W) = 0 (unless W is all
    offset) and scaled so that std(W) = 1 / sqrt(3 in_features). False when W is all zero. A module on the meta
    device, or budgeted and unable to build W at this entry size, is left as drawn."""
    last = self.cores[self.INIT_LAST]
    if last.is_meta:
        return True
    try:
        with torch.enable_grad():
            needs_grad = last.requires_grad
            last.requires_grad_(True)
            try:
                W = self.weight()
                rms = float(torch.linalg.vector_norm(W.detach().float())) / math.sqrt(W.numel())  # no copy of W
                mean = W.mean()
                del W  # the mean's backward does not need W
                (g,) = torch.autograd.grad(mean, last)
            finally:
                last.requires_grad_(needs_grad)
    except ValueError:
        return True
    gg = float(g.double().pow(2).sum())
    step = g * (float(mean.detach()) / gg) if gg > 0 else None
    if step is not None:
        last.sub_(step)
    std = self.weight_std()
    if step is not None and not std >= 1e-5 * rms:  # W was all offset (its rest is rounding): keep the offset
        last.add_(step)
        std = self.weight_std()
    if not (std > 0 and math.isfinite(std)):
        return False
    last.mul_((1.0 / math.sqrt(3.0 * self.in_features)) / std)
    return True

def weight_std(self) -> float:
    W = self.weight().detach().float()  # no copy of a float32 W (a budgeted module's W may be most of its budget)
    return float(W.std()) if W.numel() > 1 else float(W.abs().sum())

def weight_is_live(self) -> bool:
    """False when W is all zero: every path through an activation is dead and no gradient reaches the cores."""
    if any(core.is_meta for core in self.cores.values()):
        return True  # no values to check
    try:
        W = self.weight()
    except ValueError:  # a budgeted module that cannot generate W at this entry size: left unchecked
        return True
    return bool(W.any())'''

_SCHEDULE_NOTE = """\
# Each contraction program's FLOPs at batch B as (a, b), i.e. a + b * B, and its largest intermediate as (c, d),
# i.e. max(c, d * B) elements, counted from its steps. The TN Studio engine searches a stream path at the batch's
# power-of-two bucket (1, 2, 4, ..., 4096; larger batches take 4096's): STREAM_BY_BUCKET names the path of each
# bucket. forward() runs the better of materialise and the batch's stream path: fewer FLOPs, then a smaller
# largest intermediate, then materialise (engine.contract.program.program_rank): the engine's program, at any batch."""

_STREAM_DISPATCH = '''\
def forward_stream(self, x: torch.Tensor) -> torch.Tensor:
    """y = x @ W with the stream path of this batch size."""
    return getattr(self, "forward_" + self.stream_for(x.shape[0]))(x)'''

_PLANNING = '''\
@classmethod
def stream_for(cls, batch: int) -> str:
    """The stream path the engine runs at this batch size: its power-of-two bucket's (at most 4096)."""
    return cls.STREAM_BY_BUCKET[1 << min(max(batch - 1, 0).bit_length(), 12)]

@classmethod
def flops(cls, program: str, batch: int) -> int:
    """Forward FLOPs (2 x multiply-adds) of one program at this batch size."""
    a, b = cls.SCHEDULE_FLOPS[program]
    return a + b * batch

@classmethod
def largest(cls, program: str, batch: int) -> int:
    """Elements of the largest tensor one program builds at this batch size."""
    c, d = cls.SCHEDULE_SIZES[program]
    return max(c, d * batch)

@classmethod
def rank(cls, program: str, batch: int) -> tuple[int, int, int]:
    """The engine's order: FLOPs, then the largest intermediate, then materialise first."""
    return cls.flops(program, batch), cls.largest(program, batch), list(cls.SCHEDULE_FLOPS).index(program)

@classmethod
def plan(cls, batch: int) -> str:
    """The program forward() runs at this batch size."""
    return min(("materialise", cls.stream_for(batch)), key=lambda k: cls.rank(k, batch))

@classmethod
def schedule(cls, batch: int) -> str:
    SCHEDULE_DOC
    return "materialise" if cls.plan(batch) == "materialise" else "stream"'''

_FORWARD = '''\
def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: (..., in_features) -> (..., out_features)."""
    if x.dim() == 0 or x.shape[-1] != self.in_features:  # as TNLinear (a reshape would mix examples or fail)
        raise ValueError(f"{type(self).__name__} expects inputs with last dimension {self.in_features}, got shape "
                         f"{tuple(x.shape)}")
    lead = x.shape[:-1]
    x = x.reshape(-1, self.in_features)
    PICK
    y = y.reshape(*lead, self.out_features)
    return y if self.bias is None else y + self.bias.to(y.dtype)  # as TNLinear: autocast keeps y's dtype

def extra_repr(self) -> str:
    bias = self.bias is not None
    return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"'''

_PICK_PLAN = 'y = getattr(self, "forward_" + self.plan(x.shape[0]))(x)'
_SCHEDULE_DOC = '"""The schedule forward() uses at this batch size: "materialise" or "stream"."""'
_SCHEDULE_DOC_BUDGET = '"""plan(batch)\'s schedule, "materialise" or "stream" (forward() runs budget_plan())."""'
_PICK_BUDGET = 'y = getattr(self, "forward_" + self.budget_plan(x.shape[0], self.itemsize()))(x)'
_BUDGET_NOTE = """\
# Under a memory budget (bytes of a training step: parameters, gradients, Adam's state, x and the replayed peak, as
# TN Studio's cost model counts them) the engine plans per power-of-two bucket of batch sizes at its largest batch,
# per bytes per entry: BUDGET_PLANS[itemsize][bucket's largest batch] = (materialise fits, the bucket's stream path
# fits, the program to run when the unbudgeted choice does not fit, or None: nothing fits; the least bytes found).
# Buckets missing from a table: x and the parameters' training state alone exceed the budget. WEIGHT_PLANS: the
# program weight() generates W with (the plan at batch 1 that materialises)."""
_PICK_MATERIALISE = "y = self.forward_materialise(x)  # the last tensor absorbed is activated: W must be generated"

_TABLE_NOTES = {
    "TENSORS": "# tensor id -> (parameter key or buffer name, kind, activation, indices)",
    "CORE_SHAPES": "# parameter key -> shape (cores.<key>)",
    "DELTA_SHAPES": "# copy tensors (1 where all indices are equal): fixed buffers, named as in TNLinear",
    "INIT_STD": "# per-core init scale, a root mean square (engine.nn.init): W gets nn.Linear's, 1 / sqrt(3 in)",
}


# --------------------------------------------------------------------- parts shared with the conv exporter
@dataclass(frozen=True)
class _LayerTables:
    """The design data a generated module carries as class constants (keys and names as in TNLinear)."""

    tensors: dict[str, tuple]  # tensor id -> (parameter key or buffer name, kind, activation, indices)
    core_shapes: dict[str, tuple[int, ...]]  # parameter key -> shape
    delta_shapes: dict[str, tuple[int, ...]]  # buffer name -> shape
    init_std: dict[str, float]  # parameter key -> init std, in the order of core_shapes
    fingerprint: str  # the design's, checked hexadecimal
    init_draws: int  # 1, or DEAD_INIT_DRAWS where an activation can zero every entry of W (checked at reset)
    init_kind: dict[str, str]  # parameter key -> how its first values are drawn (normal, orthogonal, ...)
    init_last: str | None  # nonlinear designs: the key of the tensor calibrated (engine.nn.init.scale_tensor)


def _layer_tables(design: Design, init_view: Design, memory_budget: int | None = None) -> _LayerTables:
    """The class constants of ``design``'s module; init stds from ``init_view`` (the design, or its im2col view),
    calibrated within ``memory_budget`` bytes when one is given."""
    from engine.nn.linear import id_to_key

    keys = {t.id: id_to_key(t.id) for t in design.tensors}
    shapes = {keys[t.id]: tuple(design.shape(t.id)) for t in design.tensors if t.kind != "delta"}
    deltas = {_ident(delta_buffer_name(t.id)): tuple(design.shape(t.id)) for t in design.tensors
              if t.kind == "delta"}
    stds = {keys[k]: float(v) for k, v in _init_stds(init_view, memory_budget).items()}
    tensors = {t.id: (keys[t.id] if t.kind != "delta" else delta_buffer_name(t.id), t.kind, t.activation,
                      tuple(t.indices)) for t in design.tensors}
    fingerprint = design.fingerprint()
    if not _HEX.fullmatch(fingerprint):
        raise ValueError(f"cannot export: fingerprint {fingerprint!r} is not hexadecimal")
    kinds = {keys[k]: v for k, v in init_kinds(init_view).items()}
    init_last = None
    if not init_view.is_linear:
        from engine.nn.init import scale_tensor

        last, linear = scale_tensor(init_view)
        init_last = keys[last] if linear and keys.get(last) in shapes else None
    return _LayerTables(tensors, shapes, deltas, {key: stds[key] for key in shapes}, fingerprint, init_draws(design),
                        {key: kinds[key] for key in shapes}, init_last)


def init_kinds(design: Design) -> dict[str, str]:
    """How the exported module draws each trainable tensor, as :func:`engine.nn.init.raw_cores` does: Gaussian, and
    in a nonlinear design isometries orthogonal, disentanglers near the identity, lateral tensors near the identity
    on each bond."""
    structured = {"isometry": "orthogonal", "disentangler": "near_identity", "lateral": "pairwise_identity"}
    return {t.id: structured[t.kind] if not design.is_linear and t.kind in structured and len(t.indices) >= 2
            else "normal" for t in design.tensors if t.kind != "delta"}


def init_draws(design: Design) -> int:
    """How many draws of its cores the exported module may take: :data:`engine.nn.init.DEAD_INIT_DRAWS` when one of
    its activations is 0 for every negative input (a draw can then give a W of zeros, a dead layer), else 1."""
    from engine.design.activations import activation
    from engine.nn.init import DEAD_INIT_DRAWS

    dead_prone = any(t.activation and activation(t.activation).zero_below for t in design.tensors)
    return DEAD_INIT_DRAWS if dead_prone else 1


def _network_kind(design: Design) -> str:
    """How the design's docstring names its network: linear, or nonlinear."""
    return "linear" if design.is_linear else "nonlinear (activations inside the network)"


def _add_design_constants(src: _Source, design: Design, fingerprint: str, source: str) -> None:
    """The module constants DESIGN_NAME, DESIGN_FINGERPRINT and EXPORTED_FROM (``source``: where weights come from)."""
    src.add(f"DESIGN_NAME = {_lit(design.name)}")
    src.add(f"DESIGN_FINGERPRINT = {_lit(fingerprint)}  # of everything that changes the maths")
    src.add(f"EXPORTED_FROM = {_lit(source or None)}  # where the weights beside this file come from, if any")
    src.add()
    src.add()


def _add_layer_tables(src: _Source, tables: _LayerTables, notes: dict[str, str]) -> None:
    """The class constants TENSORS, CORE_SHAPES, DELTA_SHAPES and INIT_STD, each after its comment in ``notes``."""
    for label, value in (("TENSORS", tables.tensors), ("CORE_SHAPES", tables.core_shapes),
                         ("DELTA_SHAPES", tables.delta_shapes), ("INIT_STD", tables.init_std)):
        if label in notes:
            src.add(notes[label], 4)
        if label == "DELTA_SHAPES":  # usually empty: on one line
            src.add(f"{label} = {_lit(value)}", 4)
        else:
            src.add_dict(label, value, 4)
    src.add(f"INIT_DRAWS = {_int(tables.init_draws)}  # > 1: reset_parameters() draws again while W is all zero", 4)
    src.add("# how each core's first values are drawn (engine.nn.init.raw_cores), scaled to INIT_STD", 4)
    src.add_dict("INIT_KIND", tables.init_kind, 4)
    from engine.nn.init import DISENTANGLER_NOISE

    src.add(f"INIT_NOISE = {_lit(DISENTANGLER_NOISE)}  # near-identity draws: identity + this x N(0, 1) / sqrt(rows)",
            4)
    src.add("# the last tensor no activation reaches, W linear in it (nonlinear designs): reset_parameters() "
            "calibrates it so that", 4)
    src.add("# mean(W) = 0 and std(W) = 1 / sqrt(3 in_features) exactly, as the engine does", 4)
    src.add(f"INIT_LAST = {_lit(tables.init_last)}", 4)


def _finish_module(src: _Source, cls: str) -> str:
    """The generated module's text: ``Layer`` names class ``cls`` for loaders; parsed before it is returned."""
    if cls != "Layer":
        src.add()
        src.add()
        src.add(f"Layer = {cls}  # a fixed name for loaders")
    return src.checked_text()


def _add_snippet_layer(src: _Source, design: Design, layer_class: str, design_path: str,
                       weights_path: str | None, memory_budget: int | None = None) -> None:
    """A snippet's imports and ``layer = <class>(load_design(...))`` (``layer_class``: the class's dotted path),
    with the weights loaded when ``weights_path`` is given."""
    *module, name = (_ident(part) for part in layer_class.split("."))
    src.add("from pathlib import Path")
    src.add()
    src.add("import torch")
    src.add()
    src.add("from engine.design import load_design")
    src.add(f"from {'.'.join(module)} import {name}")
    src.add()
    src.add("# relative paths are the snippet's neighbours (run from anywhere); pasted without a file: the working")
    src.add("# folder")
    src.add('HERE = Path(globals().get("__file__", "x")).resolve().parent')
    src.add(f"DESIGN_NAME = {_lit(design.name)}")
    budget = "" if memory_budget is None else f", memory_budget={_int(memory_budget)}"  # bytes per training step
    src.add(f"layer = {name}(load_design(HERE / {_lit(str(design_path))}){budget})")
    if weights_path:
        src.add(f"layer.load_state_dict(torch.load(HERE / {_lit(str(weights_path))}, weights_only=True))")
    else:
        src.add('# layer.load_state_dict(torch.load("weights.pt", weights_only=True))  # trained weights, if any')


def with_free_class_name(build: Callable[[str], str], cls: str, explicit: bool) -> str:
    """``build(cls)``, the generated module's text, with a class name nothing else in it uses: a design named "f"
    became class ``F`` and replaced ``torch.nn.functional as F`` (forward() then failed), "SlicedGeneration" the
    sliced-generation helper. A derived name gets "Layer" appended until it is free; a name the caller chose is
    refused (``ValueError``)."""
    cls = _ident(cls)
    while True:
        text = build(cls)
        if cls not in _other_names(text, cls):
            return text
        if explicit:
            raise ValueError(f"cannot export as class {cls!r}: the generated module uses that name for something "
                             f"else; choose another class name")
        cls += "Layer"


def _other_names(text: str, cls: str) -> set[str]:
    """Every name the module ``text`` binds or reads (imports, helpers, constants, builtins its methods call, locals),
    apart from class ``cls``'s own definition and the ``Layer = cls`` alias."""
    tree = ast.parse(text)
    alias = {id(node.value) for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name)
             and [getattr(t, "id", None) for t in node.targets] == ["Layer"]}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in alias:
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.FunctionDef) or (isinstance(node, ast.ClassDef) and node.name != cls):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    if sum(isinstance(node, ast.ClassDef) and node.name == cls for node in ast.walk(tree)) > 1:
        names.add(cls)  # a helper class of the same name
    return names


def to_torch_source(design: Design, batch: int = 64, class_name_: str | None = None, source: str = "",
                    memory_budget: int | str | None = None) -> str:
    """Source text of a standalone ``nn.Module`` computing ``design`` (depends on torch only; see the module
    docstring for why no design string can become code). Conv2d designs: :func:`engine.nn.conv_export.
    to_conv_torch_source`."""
    if design.conv is not None:
        from engine.nn.conv_export import to_conv_torch_source

        if memory_budget is not None:
            raise ValueError(_CONV_BUDGET.format(name=design.name))
        return to_conv_torch_source(design, batch=batch, class_name_=class_name_, source=source)
    design.check()
    return with_free_class_name(lambda cls: _torch_module(design, batch, cls, source, memory_budget),
                                class_name_ or class_name(design), explicit=class_name_ is not None)


def _torch_module(design: Design, batch: int, cls: str, source: str, memory_budget: int | str | None) -> str:
    mat = compile_program(design, batch, "materialise")
    streams, buckets = stream_variants(design) if can_stream(design) else ({}, {})
    plans = None
    if memory_budget is not None:  # the engine's plan for every batch bucket and entry size (sliced: W only)
        from engine.contract.slicing import budget_program, parse_bytes
        from engine.nn.sliced_export import budget_tables

        budget = parse_bytes(memory_budget)
        budget_program(design, batch, "auto", memory_budget=budget)  # nothing fits at --batch: refused, as before
        plans = budget_tables(design, mat, buckets, budget)
    sliced = plans.sliced if plans else {}
    for prog in [mat, *streams.values()]:
        if not prog.executable:
            raise ValueError(f"cannot export design {design.name!r}: a step of its contraction program joins more "
                             f"than 52 indices, more than torch.einsum can name (`tnstudio cost` shows the path)")
    gen_steps = [s for s in mat.steps if s.phase == "generate"]
    app_steps = [s for s in mat.steps if s.phase == "apply"]
    names = operand_names(design)
    tables = _layer_tables(design, design, plans.budget if plans else None)

    src = _Source()
    src.add('"""A tensor-network linear layer, y = x @ W + b, exported by TN Studio (`tnstudio export --to torch`).')
    src.add()
    src.add(f"Design: {_int(design.in_features)} -> {_int(design.out_features)}, {_int(len(design.tensors))} tensors, "
            f"{design.params:,} core params (the weight alone, no bias; dense {design.dense_params:,}, "
            f"{design.compression:,.1f}x compression), {_network_kind(design)};\nits name, tensors and fingerprint "
            "are the constants below. Every einsum is one step of the contraction program of\n"
            "engine.contract.program.compile_program, the same steps TN Studio runs and costs. Parameter names "
            "(cores.<key>,\nbias) equal those of engine.nn.TNLinear, so state dicts load either way. Depends on torch "
            'only.\n"""')
    src.add(_IMPORTS)
    if sliced:
        from engine.nn.sliced_export import HELPERS, activations_used, slicing_spec

        src.add("# Under the memory budget some batches generate W slice by slice (TN Studio's")
        src.add("# engine.contract.slicing), each slice recomputed in backward: SLICINGS holds each such plan")
        src.add("# (the class's SLICED_PLANS describes them)")
        src.add_dict("SLICINGS", {key: slicing_spec(prog) for key, prog in sliced.items()})
        acts = sorted({a for prog in sliced.values() for a in activations_used(prog)})
        src.add(f"SLICE_ACTIVATIONS = {{{', '.join(f'{_lit(a)}: {_activation_source(a)}' for a in acts)}}}")
        src.add()
        src.add()
        src.add(HELPERS)
        src.add()
        src.add()
    _add_design_constants(src, design, tables.fingerprint, source)
    src.add(f"class {cls}(nn.Module):")
    src.add(f'"""A TN Studio design as a layer: {_int(design.in_features)} -> {_int(design.out_features)}, '
            f'{design.params:,} core params (its name: DESIGN_NAME)."""', 4)
    src.add()
    src.add(f"in_features = {_int(design.in_features)}", 4)
    src.add(f"out_features = {_int(design.out_features)}", 4)
    src.add("design_name = DESIGN_NAME", 4)
    _add_layer_tables(src, tables, _TABLE_NOTES)
    if streams:
        programs = {"materialise": mat, **streams}
        src.add(_SCHEDULE_NOTE, 4)
        src.add_dict("SCHEDULE_FLOPS", {key: flops_by_batch(prog) for key, prog in programs.items()}, 4)
        src.add_dict("SCHEDULE_SIZES", {key: sizes_by_batch(prog) for key, prog in programs.items()}, 4)
        src.add_dict("STREAM_BY_BUCKET", buckets, 4)
    if plans:
        _add_budget_tables(src, plans)
    src.add()
    src.add(_INIT_AND_RESET, 4)
    src.add()
    generate = "generate_materialise" if plans else "weight"
    src.add(f"def {generate}(self) -> torch.Tensor:", 4)
    src.add(f'"""The dense weight W ({_int(design.in_features)} x {_int(design.out_features)}) generated from the '
            f'cores."""', 8)
    for line in _step_lines(mat, gen_steps, names):
        src.add(line, 8)
    src.add("return W", 8)
    for key, prog in sliced.items():  # the shared steps once, the sliced ones through SlicedGeneration
        src.add()
        src.add(f"def generate_{_ident(key)}(self) -> torch.Tensor:", 4)
        src.add(f'"""W generated slice by slice (SLICED_PLANS[{_lit(key)}]), each slice recomputed in backward."""',
                8)
        region = set(prog.slicing.region)
        shared = [s for n, s in enumerate(prog.steps) if s.phase == "generate" and n not in region and s.op == "einsum"]
        for line in _step_lines(prog, shared, names):
            src.add(line, 8)
        args = ", ".join(names[i] if i in names else _ident(i) for i in prog.slicing.inputs)
        src.add(f"{_ident(prog.slicing.output)} = SlicedGeneration.apply(SLICINGS[{_lit(key)}], {args})", 8)
        for line in _step_lines(prog, [s for s in prog.steps if s.phase == "generate" and s.op == "reshape"], names):
            src.add(line, 8)
        src.add("return W", 8)
    for key in ["materialise", *sliced]:
        src.add()
        src.add(f"def forward_{_ident(key)}(self, x: torch.Tensor) -> torch.Tensor:", 4)
        src.add('"""y = x @ W for x of shape (B, in_features): generate W, then one matmul."""', 8)
        src.add(f"W = self.{generate if key == 'materialise' else 'generate_' + _ident(key)}()", 8)
        for line in _step_lines(mat, app_steps, names):
            src.add(line, 8)
        src.add("return y", 8)
    for key, prog in streams.items():
        src.add()
        src.add(f"def forward_{_ident(key)}(self, x: torch.Tensor) -> torch.Tensor:", 4)
        src.add('"""y = x @ W for x of shape (B, in_features), contracting x through the cores.', 8)
        src.add()
        src.add(f'W is never formed; the path is the one planned at batch {_int(prog.batch)}.\n"""', 8)
        for line in _step_lines(prog, prog.steps, names):
            src.add(line, 8)
        src.add("return y", 8)
    if streams and "stream" not in streams:
        src.add()
        src.add(_STREAM_DISPATCH, 4)
    if streams:
        src.add()
        src.add(_PLANNING.replace("SCHEDULE_DOC", _SCHEDULE_DOC_BUDGET if plans else _SCHEDULE_DOC), 4)
    if plans:
        from engine.nn.sliced_export import BUDGET_PLANNING, plan_materialise_source

        if not streams:
            src.add()
            src.add(plan_materialise_source(), 4)
        src.add()
        src.add(BUDGET_PLANNING, 4)
    pick = _PICK_BUDGET if plans else _PICK_PLAN if streams else _PICK_MATERIALISE
    src.add()
    src.add(_FORWARD.replace("PICK", pick), 4)
    return _finish_module(src, cls)


def _add_budget_tables(src: _Source, plans: BudgetTables) -> None:
    """The class constants MEMORY_BUDGET, BUDGET_PLANS, WEIGHT_PLANS and SLICED_PLANS of a budgeted module."""
    src.add(_BUDGET_NOTE, 4)
    src.add(f"MEMORY_BUDGET = {_int(plans.budget)}", 4)
    src.add("BUDGET_PLANS = {", 4)
    for itemsize, by_top in plans.plans.items():
        src.add(f"{_int(itemsize)}: {{", 8)
        for top, entry in by_top.items():
            src.add(f"{_int(top)}: {_lit(entry)},", 12)
        src.add("},", 8)
    src.add("}", 4)
    src.add_dict("WEIGHT_PLANS", plans.weight_plans, 4)
    src.add_dict("SLICED_PLANS", {key: prog.slicing.describe() for key, prog in plans.sliced.items()}, 4)


# --------------------------------------------------------------------- json and snippet
def to_json_source(design: Design) -> str:
    return design.to_json() + "\n"


def to_snippet(design: Design, design_path: str = "design.json", weights_path: str | None = None,
               memory_budget: int | str | None = None) -> str:
    """A short script using the TN Studio engine: ``TNLinear(load_design(...))`` (strings as literals only), with
    ``memory_budget=<bytes>`` when one is given; ``TNConv2d`` for conv2d designs
    (:func:`engine.nn.conv_export.to_conv_snippet`)."""
    if design.conv is not None:
        if memory_budget is not None:
            raise ValueError(_CONV_BUDGET.format(name=design.name))
        from engine.nn.conv_export import to_conv_snippet

        return to_conv_snippet(design, design_path, weights_path)
    src = _Source()
    src.add(f'"""A TN Studio layer through the engine: {_int(design.in_features)} -> {_int(design.out_features)}, '
            f'{design.params:,} parameters ({design.compression:,.1f}x compression). Exported by TN Studio."""')
    budget = None
    if memory_budget is not None:
        from engine.contract.slicing import parse_bytes

        budget = parse_bytes(memory_budget)
    _add_snippet_layer(src, design, "engine.nn.TNLinear", design_path, weights_path, budget)
    src.add(f"y = layer(torch.randn(32, {_int(design.in_features)}))  # (32, {_int(design.out_features)})")
    return src.checked_text()


def export_source(design: Design, fmt: str, **kw: Any) -> str:
    """The exported text of ``design`` in ``fmt`` (torch, json or snippet)."""
    if fmt == "torch":
        keys = ("batch", "source", "memory_budget")
        return to_torch_source(design, **{k: v for k, v in kw.items() if k in keys})
    if fmt == "json":
        if kw.get("memory_budget") is not None:
            raise ValueError("--memory-budget applies to --to torch and --to snippet, not to the design JSON")
        return to_json_source(design)
    if fmt == "snippet":
        keys = ("design_path", "weights_path", "memory_budget")
        return to_snippet(design, **{k: v for k, v in kw.items() if k in keys})
    raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------- weights
def layer_state_dict(state: dict[str, Any], design: Design, prefix: str | None = None) -> dict[str, Any]:
    """The TN layer's own entries (``cores.<id>``, ``bias``) out of a model's state dict.

    ``prefix`` names the layer (e.g. ``"fc1."``); without it, the one prefix under which every core of ``design``
    appears with the right shape is found, and an unclear or missing match is an error naming what was found.
    """
    from engine.nn.init import delta_tensor
    from engine.nn.linear import id_to_key

    want = {f"cores.{id_to_key(t.id)}": tuple(design.shape(t.id)) for t in design.tensors if t.kind != "delta"}
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
    if prefix is None:
        prefixes = set()
        for key in state:
            for w in want:
                if key.endswith(w) and (key == w or key[: -len(w)].endswith(".")):
                    prefixes.add(key[: -len(w)])
        fits = [p for p in sorted(prefixes)
                if all(p + k in state and tuple(state[p + k].shape) == s for k, s in want.items())]
        if len(fits) > 1 and all(_same(state, fits[0], p, list(want)) for p in fits[1:]):
            fits = fits[:1]  # one layer registered under two names (e.g. model.tn_layer and model.net.0)
        if len(fits) != 1:
            what = "no layer" if not fits else f"{len(fits)} layers ({', '.join(repr(p) for p in fits)})"
            raise ValueError(f"the weights hold {what} with the cores of design {design.name!r} "
                             f"({', '.join(f'{k} {s}' for k, s in want.items())})")
        prefix = fits[0]
    out = {k: state[prefix + k] for k in want if prefix + k in state}
    missing = [k for k in want if k not in out]
    if missing:
        raise ValueError(f"the weights lack {', '.join(prefix + k for k in missing)}")
    for t in design.tensors:  # fixed copy tensors: taken along, or rebuilt when a state dict left them out
        if t.kind == "delta":
            k = delta_buffer_name(t.id)
            out[k] = state.get(prefix + k, delta_tensor(design.shape(t.id)))
    if prefix + "bias" in state:
        out["bias"] = state[prefix + "bias"]
    return out


def _same(state: dict[str, Any], a: str, b: str, keys: list[str]) -> bool:
    """Whether prefixes ``a`` and ``b`` hold equal tensors under every key (and the same optional ones)."""
    import torch

    for k in keys + ["bias"]:
        if (a + k in state) != (b + k in state):
            return False
        if a + k in state and not torch.equal(state[a + k], state[b + k]):
            return False
    return True


def save_weights(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` a layer state dict (tensors only, so ``torch.load(..., weights_only=True)`` reads it)."""
    import torch

    state = {k: v.detach().cpu().clone() for k, v in state.items()}
    return atomic_write(path, lambda f: torch.save(state, f))


def write_export(design: Design, fmt: str, output: str | Path, weights: dict[str, Any] | None = None,
                 batch: int = 64, source: str = "", memory_budget: int | str | None = None) -> list[Path]:
    """Write ``design`` as ``fmt`` to ``output`` (plus ``<stem>.pt`` beside it when ``weights`` is given)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    wpath = out.with_name(out.stem + ".pt") if weights is not None else None
    if fmt == "snippet":  # the snippet's text first: nothing is written when it is refused
        dpath = out.with_name(out.stem + ".design.json")
        text = to_snippet(design, dpath.name, wpath.name if wpath else None, memory_budget)
        atomic_write_text(dpath, to_json_source(design))
        written.append(dpath)
    else:
        text = export_source(design, fmt, batch=batch, source=source, memory_budget=memory_budget)
    atomic_write_text(out, text)
    written.insert(0, out)
    if weights is not None and wpath is not None:
        written.append(save_weights(weights, wpath))
    return written

