"""Export a conv2d design as a standalone torch module (the conv part of :mod:`engine.nn.export`).

The module is printed from the design's :class:`~engine.contract.conv.ConvProgram` s, the same steps
:class:`~engine.nn.conv.TNConv2d` runs and the cost model counts: ``weight()`` generates the kernel ``K``
(``(out, in, kh, kw)``, as ``nn.Conv2d.weight``), ``forward_materialise`` runs ``F.conv2d`` with it, and one
``forward_<program>`` per stream program the design can run (``cp``, ``tucker2``, ``kernel``, ``im2col``) runs its
straight-line ``torch.einsum`` / ``F.conv2d`` / ``F.unfold`` lines. Reshapes that involve the batch or the image
are written in terms of the input's size, so every program runs at any batch and image size. Each program's FLOPs
and largest intermediate are carried as sums / maxima of ``c * B^a * (image sizes)`` terms, exact at every size for
that program's steps, and ``forward`` runs the best by the engine's rule (:func:`~engine.contract.conv.conv_rank`).
The contraction paths are the ones the engine plans at the reference batch and image given to the exporter (by
default 64 images of the design's default size); at other sizes the engine may plan other paths for the same
programs (the same results, maybe other FLOPs).

Parameters are ``cores.<key>`` and ``bias`` (copy tensors the buffers ``delta_<key>``), as in ``TNConv2d``, so state
dicts load either way. The safety rules are the layer exporter's: every design string is a literal (``repr``),
identifiers are checked, equations are letters only, activations come from the registry; the text is parsed before
it is returned.
"""
from __future__ import annotations

import math
from typing import Any

from engine.contract.conv import (CONV_SCHEDULES, PROGRAM_TITLES, ConvProgram, ConvStep, compile_conv_program,
                                  conv_schedules)
from engine.contract.flops import flop_indices
from engine.design.conv import default_image, im2col_view, image_size
from engine.design.model import Design
from engine.nn.export import (_IMPORTS, _INIT_AND_RESET, _Source, _activation_source, _add_design_constants,
                              _add_layer_tables, _add_snippet_layer, _equation, _finish_module, _ident, _int,
                              _layer_tables, _network_kind, _TABLE_NOTES, class_name, operand_names,
                              with_free_class_name)

_SYMBOLS = ("B", "H", "W", "Ho", "Wo")


def _symbols(prog: ConvProgram) -> dict[str, str]:
    """Program index name -> the expression of its size in the generated code (batch and image sizes)."""
    names = {"_b": "B"}
    x_idx, y_idx = prog.x_indices, prog.y_indices
    names[x_idx[2]], names[x_idx[3]] = "H", "W"
    names[y_idx[2]], names[y_idx[3]] = "Ho", "Wo"
    for s in prog.steps:  # unfold's positions index: Ho * Wo
        if isinstance(s, ConvStep) and s.op == "unfold":
            names[s.out_indices[-1]] = "Ho * Wo"
    return names


def _size_expr(prog: ConvProgram, idx: tuple[str, ...], syms: dict[str, str]) -> str:
    return "(" + ", ".join("-1" if i == "_b" else (syms[i] if i in syms else _int(prog.dims[i])) for i in idx) + \
        ("," if len(idx) == 1 else "") + ")"


def _term(prog: ConvProgram, count: int, idx: tuple[str, ...], syms: dict[str, str]) -> tuple[int, tuple[str, ...]]:
    """``count`` (a product over ``idx`` times a constant) as (constant, runtime symbols)."""
    runtime = [i for i in idx if i in syms]
    div = math.prod(prog.dims[i] for i in runtime)
    parts: list[str] = []
    for i in runtime:
        parts += ["Ho", "Wo"] if syms[i] == "Ho * Wo" else [syms[i]]
    return count // max(div, 1), tuple(parts)


def program_terms(prog: ConvProgram) -> tuple[tuple[tuple[int, tuple[str, ...]], ...],
                                             tuple[tuple[int, tuple[str, ...]], ...]]:
    """(FLOPs terms, size terms) of a program: its FLOPs at any (B, H, W) are the sum of ``c * prod(symbols)`` and
    its largest intermediate the max of them (exact: every step's count is a product of index sizes)."""
    syms = _symbols(prog)
    flops, sizes = [], []
    for s in prog.steps:
        sizes.append(_term(prog, s.size, s.out_indices, syms))
        if not s.flops:
            continue
        if isinstance(s, ConvStep):
            counted: Any = s.counted
        else:
            a, b = (set(ix) for ix in s.in_indices)
            chosen = flop_indices(a, b, set(s.out_indices), prog.dims) or ()
            # in the order the step names them: a set's order changes with the process's hash seed, and the
            # exported source must not
            counted = tuple(i for i in dict.fromkeys(s.in_indices[0] + s.in_indices[1]) if i in chosen)
        flops.append(_term(prog, s.flops, tuple(counted), syms))
    return tuple(flops), tuple(sizes)


def _step_lines(prog: ConvProgram, names: dict[str, str], phase: str | None) -> list[str]:
    syms = _symbols(prog)
    lines = []
    for s in prog.steps:
        if phase is not None and s.phase != phase:
            continue
        args = [names[i] if i in names else _ident(i) for i in s.inputs]
        out = _ident(s.output)
        if isinstance(s, ConvStep):
            spatial = [syms.get(i) for i in s.in_indices[0][-2:]]
            if None in spatial:
                raise ValueError("cannot export: a conv step's input is not laid out with the image last")
            shape_in = f"(-1, {_int(s.shape_in[1])}, {spatial[0]}, {spatial[1]})"
            pair = lambda v: f"({_int(v[0])}, {_int(v[1])})"  # noqa: E731
            if s.op == "conv2d":
                assert s.weight_shape is not None
                wshape = "(" + ", ".join(_int(v) for v in s.weight_shape) + ")"
                expr = (f"F.conv2d({args[0]}.reshape{shape_in}, {args[1]}.reshape{wshape}, None, {pair(s.stride)}, "
                        f"{pair(s.padding)}, {pair(s.dilation)}, {_int(s.groups)})")
            else:
                expr = (f"F.unfold({args[0]}.reshape{shape_in}, {pair(s.kernel)}, {pair(s.dilation)}, "
                        f"{pair(s.padding)}, {pair(s.stride)})")
            expr += f".reshape{_size_expr(prog, s.out_indices, syms)}"
        elif s.op == "reshape":
            expr = f"{args[0]}.reshape{_size_expr(prog, s.out_indices, syms)}"
        elif s.is_identity:
            expr = args[0]
        else:
            expr = f"torch.einsum({_equation(s.equation)}, {', '.join(args)})"
        if s.activation is not None:
            act = _activation_source(s.activation)
            lines.append(f"{out} = {expr}")
            lines.append(f"{out} = {act}({out}.reshape(-1)).reshape({out}.shape)")  # elementwise, any rank
            continue
        lines.append(f"{out} = {expr}")
    return lines


_CONV_PLANNING = '''\
@classmethod
def out_size(cls, height: int, width: int) -> tuple[int, int]:
    """The output's spatial size for an input of height x width (as torch computes it)."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                 zip((height, width), cls.kernel_size, cls.stride, cls.padding, cls.dilation))

@classmethod
def _sizes(cls, batch: int, height: int, width: int) -> dict:
    ho, wo = cls.out_size(height, width)
    return {"B": batch, "H": height, "W": width, "Ho": ho, "Wo": wo}

@classmethod
def flops(cls, program: str, batch: int, height: int, width: int) -> int:
    """Forward FLOPs (2 x multiply-adds) of one program for batch x in_channels x height x width inputs."""
    env = cls._sizes(batch, height, width)
    return sum(c * math.prod(env[s] for s in syms) for c, syms in cls.PROGRAM_FLOPS[program])

@classmethod
def largest(cls, program: str, batch: int, height: int, width: int) -> int:
    """Elements of the largest tensor one program builds."""
    env = cls._sizes(batch, height, width)
    return max((c * math.prod(env[s] for s in syms) for c, syms in cls.PROGRAM_SIZES[program]), default=0)

@classmethod
def plan(cls, batch: int, height: int, width: int) -> str:
    """The program forward() runs: fewer FLOPs, then a smaller largest intermediate, then the order listed (the
    TN Studio engine's rule, engine.contract.conv.conv_rank)."""
    order = list(cls.PROGRAM_FLOPS)
    return min(order, key=lambda k: (cls.flops(k, batch, height, width), cls.largest(k, batch, height, width),
                                     order.index(k)))'''

_CONV_TABLE_NOTES = {
    "TENSORS": _TABLE_NOTES["TENSORS"],
    "INIT_STD": "# per-core init scale, a root mean square (engine.nn.init): K gets nn.Conv2d's, 1 / sqrt(3 fan-in)",
}

_CONV_FORWARD = '''\
def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x: (B, in_channels, H, W) or (in_channels, H, W) -> (B, out_channels, H', W')."""
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    self.check_input(x)
    y = getattr(self, "forward_" + self.plan(x.shape[0], x.shape[2], x.shape[3]))(x)
    if self.bias is not None:
        y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)  # as TNConv2d: autocast keeps y's dtype
    return y.squeeze(0) if unbatched else y

def check_input(self, x: torch.Tensor) -> None:
    """As TNConv2d: x must be (B, in_channels, H, W); the programs' reshapes would read other channel counts as
    more examples."""
    if x.dim() != 4 or x.shape[1] != self.in_channels:
        raise ValueError(f"{type(self).__name__} expects inputs (B, {self.in_channels}, H, W) or "
                         f"({self.in_channels}, H, W), got shape {tuple(x.shape)}")

def extra_repr(self) -> str:
    return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}")'''


def to_conv_torch_source(design: Design, batch: int = 64, image: Any = None, class_name_: str | None = None,
                         source: str = "") -> str:
    """Source text of a standalone ``nn.Module`` computing the conv ``design`` (torch only; see the module
    docstring)."""
    design.check()
    if design.conv is None:
        raise ValueError(f"design {design.name!r} is not a conv2d design")
    return with_free_class_name(lambda cls: _conv_module(design, batch, image, cls, source),
                                class_name_ or class_name(design), explicit=class_name_ is not None)


def _conv_module(design: Design, batch: int, image: Any, cls: str, source: str) -> str:
    conv = design.conv
    img = default_image(design) if image is None else image_size(image)
    programs = {s: compile_conv_program(design, batch, img, s) for s in conv_schedules(design)}
    for name, prog in programs.items():
        if not prog.executable:
            raise ValueError(f"cannot export design {design.name!r}: a step of its {name} program joins more than 52 "
                             f"indices, more than torch.einsum can name (`tnstudio cost` shows the path)")
    mat = programs["materialise"]
    names = operand_names(design)
    tables = _layer_tables(design, im2col_view(design))
    kh, kw = conv.kernel_size
    terms = {k: program_terms(p) for k, p in programs.items()}

    src = _Source()
    src.add('"""A tensor-network convolution, y = F.conv2d(x, K, b, stride, padding, dilation), exported by TN Studio '
            '(`tnstudio export --to torch`).')
    src.add()
    src.add(f"Design: conv {_int(kh)}x{_int(kw)}, {_int(conv.in_channels)} -> {_int(conv.out_channels)} channels, "
            f"{_int(len(design.tensors))} tensors, {design.params:,} parameters (dense {design.dense_params:,}, "
            f"{design.compression:,.1f}x compression), {_network_kind(design)};\nits name, tensors and "
            "fingerprint are the constants below. K = weight() is nn.Conv2d.weight's (out, in, kh, kw); every step\n"
            "is one step of TN Studio's conv programs (engine.contract.conv). Parameter names (cores.<key>, bias) "
            'equal those of\nengine.nn.conv.TNConv2d, so state dicts load either way. Depends on torch only.\n"""')
    src.add(_IMPORTS)
    _add_design_constants(src, design, tables.fingerprint, source)
    src.add(f"class {cls}(nn.Module):")
    src.add(f'"""A TN Studio conv design as a layer: {_int(conv.in_channels)} -> {_int(conv.out_channels)} channels, '
            f'{design.params:,} parameters (its name: DESIGN_NAME)."""', 4)
    src.add()
    src.add(f"in_channels = {_int(conv.in_channels)}", 4)
    src.add(f"out_channels = {_int(conv.out_channels)}", 4)
    for attr in ("kernel_size", "stride", "padding", "dilation"):
        v = getattr(conv, attr)
        src.add(f"{attr} = ({_int(v[0])}, {_int(v[1])})", 4)
    src.add("groups = 1", 4)
    src.add(f"in_features = {_int(conv.in_features)}  # the fan-in, in_channels * kh * kw (bias init, as nn.Conv2d)", 4)
    src.add(f"out_features = {_int(conv.out_channels)}", 4)
    src.add("design_name = DESIGN_NAME", 4)
    _add_layer_tables(src, tables, _CONV_TABLE_NOTES)
    src.add("# each program's FLOPs as a sum, and its largest intermediate as a max, of c * prod(sizes) terms; sizes: "
            "B (batch),", 4)
    src.add("# H, W (input image), Ho, Wo (output image). Programs: " + "; ".join(
        f"{k} = {PROGRAM_TITLES[k]}" for k in programs) .replace("\n", " "), 4)
    for label, idx in (("PROGRAM_FLOPS", 0), ("PROGRAM_SIZES", 1)):
        src.add_dict(label, {k: terms[k][idx] for k in CONV_SCHEDULES if k in programs}, 4)
    src.add()
    src.add(_INIT_AND_RESET, 4)
    src.add()
    src.add("def weight(self) -> torch.Tensor:", 4)
    src.add(f'"""The kernel K ({_int(conv.out_channels)}, {_int(conv.in_channels)}, {_int(kh)}, {_int(kw)}) '
            f'generated from the cores."""', 8)
    for line in _step_lines(mat, names, "generate"):
        src.add(line, 8)
    src.add(f"return {_ident(mat.weight or 'K')}", 8)
    for key, prog in programs.items():
        src.add()
        src.add(f"def forward_{_ident(key)}(self, x: torch.Tensor) -> torch.Tensor:", 4)
        src.add(f'"""{PROGRAM_TITLES[key]} (no bias); x: (B, in_channels, H, W)."""', 8)
        src.add("self.check_input(x)", 8)
        src.add("B, H, W = x.shape[0], x.shape[2], x.shape[3]", 8)
        src.add("Ho, Wo = self.out_size(H, W)", 8)
        if key == "materialise":
            src.add(f"{_ident(mat.weight or 'K')} = self.weight()", 8)
            lines = _step_lines(prog, names, "apply")
        else:
            lines = _step_lines(prog, names, None)
        for line in lines:
            src.add(line, 8)
        src.add("return y", 8)
    src.add()
    src.add(_CONV_PLANNING, 4)
    src.add()
    src.add(_CONV_FORWARD, 4)
    return _finish_module(src, cls)


def to_conv_snippet(design: Design, design_path: str = "design.json", weights_path: str | None = None) -> str:
    """A short script using the TN Studio engine: ``TNConv2d(load_design(...))`` (strings as literals only)."""
    conv = design.conv
    assert conv is not None
    h, w = default_image(design)
    src = _Source()
    src.add(f'"""A TN Studio conv layer through the engine: {_int(conv.in_channels)} -> {_int(conv.out_channels)} '
            f'channels, {design.params:,} parameters ({design.compression:,.1f}x compression). Exported by TN '
            f'Studio."""')
    _add_snippet_layer(src, design, "engine.nn.conv.TNConv2d", design_path, weights_path)
    src.add(f"y = layer(torch.randn(2, {_int(conv.in_channels)}, {_int(h)}, {_int(w)}))  # (2, "
            f"{_int(conv.out_channels)}, H', W')")
    return src.checked_text()
