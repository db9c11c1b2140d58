"""Export a design to code: a standalone PyTorch module, the design JSON, or a snippet using ``engine``.

The standalone module is printed from :func:`engine.program.compile_program` steps, the same steps the engine runs
and the cost model counts: each contraction becomes one straight-line ``torch.einsum`` line. Its parameters are
``self.cores[<id>]`` (an ``nn.ParameterDict``) and ``self.bias``, so its ``state_dict`` keys equal those of
:class:`engine.modules.TNLinear` and weights load either way. The generated file imports only ``torch``
(and ``math``).

Schedules. The engine picks, for every batch size, the schedule with fewer FLOPs (``compile_program(...,
schedule="auto")``). A linear design's exported module carries both programs, ``materialise`` and ``stream``, and
the FLOPs of each as ``a + b * batch`` (exact: a step's FLOPs are either independent of the batch or proportional
to it), so it applies the same rule without the cost model. The stream program's contraction path is the one found
for the export's reference batch (``batch``, default 64); the engine may re-plan the path at other batch sizes,
which changes speed, never results.
"""
from __future__ import annotations

import keyword
import math
import re
import textwrap
from pathlib import Path
from typing import Any

from .activations import ACTIVATION_SOURCE
from .design import Design
from .program import BATCH, Program, Step, compile_program

FORMATS = ("torch", "json", "snippet")
DEFAULT_SUFFIX = {"torch": ".py", "json": ".json", "snippet": ".py"}


# --------------------------------------------------------------------- names
def class_name(design: Design) -> str:
    """A CamelCase Python class name from the design name (``"mpo 64x10 chi=3"`` -> ``"Mpo64x10Chi3"``)."""
    words = re.findall(r"[A-Za-z0-9]+", design.name or "")
    name = "".join(w[:1].upper() + w[1:] for w in words) or "TNLayer"
    if name[0].isdigit():
        name = "TN" + name
    return name if not keyword.iskeyword(name) else name + "Layer"


def _var(operand: str) -> str:
    """Python expression for a program operand inside the generated module."""
    if operand.startswith("core:"):
        return f"self.cores[{operand[5:]!r}]"
    return operand  # x, xs, t<n>, Wt, W, ys, y are valid identifiers


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


# --------------------------------------------------------------------- code lines
def _step_lines(prog: Program, steps: list[Step]) -> list[str]:
    """One line per step: ``out = torch.einsum("eq", a, b)`` (plus activation) or ``out = a.reshape(...)``."""
    lines = []
    for s in steps:
        args = [_var(i) for i in s.inputs]
        if s.op == "reshape":
            shape = ", ".join("-1" if i == BATCH else str(prog.dims[i]) for i in s.out_indices)
            expr = f"{args[0]}.reshape({shape})"
        elif s.is_identity:
            expr = args[0]
        else:
            expr = f'torch.einsum("{s.equation}", {", ".join(args)})'
        if s.activation is not None:
            expr = f"{ACTIVATION_SOURCE[s.activation]}({expr})"
        note = f"  # {s.flops:,} FLOPs at batch {prog.batch}" if s.flops and s.phase == "apply" else (
            f"  # {s.flops:,} FLOPs" if s.flops else "")
        lines.append(f"{s.output} = {expr}{note}")
    return lines


def _indent(lines: list[str], n: int = 8) -> str:
    return "\n".join(" " * n + ln for ln in lines)


def _init_stds(design: Design) -> dict[str, float]:
    """Per-core init std so that a linear design's W has variance ``1 / in_features`` (as ``nn.Linear``'s scale).

    An entry of W sums ``prod(bond dims)`` products of one entry per core; with independent zero-mean cores of
    equal std ``s`` its variance is ``prod(bond dims) * s ** (2 * n_cores)``.
    """
    try:  # the torch engine's rule, when it exposes one, keeps both initialisations identical
        from .modules import init_stds  # type: ignore[attr-defined]

        return dict(init_stds(design))
    except (ImportError, AttributeError):
        pass
    bonds = math.prod(ix.dim for ix in design.indices.values() if ix.role == "bond")
    n = max(len(design.tensors), 1)
    s = (1.0 / (design.in_features * bonds)) ** (1.0 / (2 * n))
    return {t.id: s for t in design.tensors}


# --------------------------------------------------------------------- the torch module
def to_torch_source(design: Design, batch: int = 64, class_name_: str | None = None, source: str = "") -> str:
    """Source text of a standalone ``nn.Module`` computing ``design`` (depends on torch only)."""
    design.check()
    cls = class_name_ or class_name(design)
    mat = compile_program(design, batch, "materialise")
    stream = compile_program(design, batch, "stream") if design.is_linear else None
    gen_steps = [s for s in mat.steps if s.phase == "generate"]
    app_steps = [s for s in mat.steps if s.phase == "apply"]
    shapes = {t.id: design.shape(t.id) for t in design.tensors}
    stds = _init_stds(design)
    kinds = ", ".join(f"{t.id} ({t.kind}{', ' + t.activation if t.activation else ''})" for t in design.tensors)
    mat_a, mat_b = flops_by_batch(mat)

    kind = "linear" if design.is_linear else "nonlinear (activations inside the network)"
    header = (f'"""{design.name}: a tensor-network linear layer, y = x @ W + b, exported by TN Studio.\n\n'
              f"Design: {design.in_features} -> {design.out_features}, {len(design.tensors)} tensors, "
              f"{design.params:,} parameters (dense {design.dense_params:,}, {design.compression:,.1f}x compression), "
              f"{kind}.\nTensors: {kinds}.\n"
              "Generated by `tnstudio export --to torch` from the contraction program of "
              "engine.program.compile_program\n"
              f"(design fingerprint {design.fingerprint()}{', from ' + source if source else ''}): every einsum below "
              "is one step of that program,\nthe same steps TN Studio runs and costs. Parameter names (cores.<id>, "
              "bias) equal those of\nengine.modules.TNLinear, so state dicts load either way. Depends on torch "
              'only.\n"""\n')
    core_lines = [f"{tid!r}: {tuple(shape)!r},  # {', '.join(design.tensor(tid).indices)}"
                  for tid, shape in shapes.items()]
    std_lines = [f"{tid!r}: {stds[tid]!r}," for tid in shapes]

    parts = [header, "from __future__ import annotations\n\nimport math\n\nimport torch\nimport torch.nn as nn\n"
             "import torch.nn.functional as F\n\n\n"]
    parts.append(f"class {cls}(nn.Module):\n")
    parts.append(f'    """{design.name}: {design.in_features} -> {design.out_features}, {design.params:,} '
                 f'parameters."""\n\n')
    parts.append(f"    in_features = {design.in_features}\n    out_features = {design.out_features}\n")
    parts.append("    # core id -> shape (the core's indices in the comment)\n    CORE_SHAPES = {\n"
                 + _indent(core_lines) + "\n    }\n")
    parts.append("    # per-core init std: a linear design's W then has variance 1 / in_features\n    INIT_STD = {\n"
                 + _indent(std_lines) + "\n    }\n")
    if stream is not None:
        st_a, st_b = flops_by_batch(stream)
        parts.append(textwrap.indent(textwrap.dedent(f"""\
            # FLOPs of each schedule at batch B as (a, b): a + b * B, counted from the contraction programs.
            # forward() picks the cheaper one, the rule the TN Studio engine applies (compile_program, "auto").
            SCHEDULE_FLOPS = {{"materialise": ({mat_a}, {mat_b}), "stream": ({st_a}, {st_b})}}
            """), "    "))
    parts.append("\n" + textwrap.indent(textwrap.dedent("""\
        def __init__(self, bias: bool = True, device=None, dtype=None) -> None:
            super().__init__()
            kw = {"device": device, "dtype": dtype}
            self.cores = nn.ParameterDict({k: nn.Parameter(torch.empty(s, **kw)) for k, s in self.CORE_SHAPES.items()})
            if bias:
                self.bias = nn.Parameter(torch.empty(self.out_features, **kw))
            else:
                self.register_parameter("bias", None)
            self.reset_parameters()

        def reset_parameters(self) -> None:
            with torch.no_grad():
                for k, core in self.cores.items():
                    core.normal_(0.0, self.INIT_STD[k])
                if self.bias is not None:
                    bound = 1.0 / math.sqrt(self.in_features)
                    self.bias.uniform_(-bound, bound)
        """), "    "))
    parts.append("\n    def weight(self) -> torch.Tensor:\n"
                 f'        """The dense weight W ({design.in_features} x {design.out_features}) generated from the '
                 f'cores."""\n' + _indent(_step_lines(mat, gen_steps)) + "\n        return W\n")
    parts.append("\n    def forward_materialise(self, x: torch.Tensor) -> torch.Tensor:\n"
                 '        """y = x @ W for x of shape (B, in_features): generate W, then one matmul."""\n'
                 "        W = self.weight()\n" + _indent(_step_lines(mat, app_steps)) + "\n        return y\n")
    if stream is not None:
        parts.append("\n    def forward_stream(self, x: torch.Tensor) -> torch.Tensor:\n"
                     '        """y = x @ W for x of shape (B, in_features), contracting x through the cores '
                     '(W is never formed)."""\n' + _indent(_step_lines(stream, stream.steps)) + "\n        return y\n")
        parts.append("\n" + textwrap.indent(textwrap.dedent('''\
            @classmethod
            def schedule(cls, batch: int) -> str:
                """The schedule with fewer FLOPs at this batch size (materialise on a tie)."""
                cost = {k: a + b * batch for k, (a, b) in cls.SCHEDULE_FLOPS.items()}
                return "stream" if cost["stream"] < cost["materialise"] else "materialise"
            '''), "    "))
        pick = ('y = self.forward_stream(x) if self.schedule(x.shape[0]) == "stream" '
                'else self.forward_materialise(x)')
    else:
        pick = "y = self.forward_materialise(x)  # nonlinear design: W must be generated"
    parts.append("\n" + textwrap.indent(textwrap.dedent(f'''\
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """x: (..., {design.in_features}) -> (..., {design.out_features})."""
            lead = x.shape[:-1]
            x = x.reshape(-1, self.in_features)
            {pick}
            y = y.reshape(*lead, self.out_features)
            return y if self.bias is None else y + self.bias

        def extra_repr(self) -> str:
            return f"in_features={{self.in_features}}, out_features={{self.out_features}}, bias={{self.bias is not None}}"
        '''), "    "))
    parts.append(f"\n\nLayer = {cls}  # a fixed name for loaders\n" if cls != "Layer" else "")
    return "".join(parts)


# --------------------------------------------------------------------- json and snippet
def to_json_source(design: Design) -> str:
    return design.to_json() + "\n"


def to_snippet(design: Design, design_path: str = "design.json", weights_path: str | None = None) -> str:
    """A short script using the TN Studio engine: ``TNLinear(load_design(...))``."""
    load = (f'layer.load_state_dict(torch.load({weights_path!r}, weights_only=True))\n' if weights_path else
            "# layer.load_state_dict(torch.load(\"weights.pt\", weights_only=True))  # trained weights, if any\n")
    return (f"# {design.name}: {design.in_features} -> {design.out_features}, {design.params:,} parameters "
            f"({design.compression:,.1f}x compression), exported by TN Studio\n"
            "import torch\n\nfrom engine.design import load_design\nfrom engine.modules import TNLinear\n\n"
            f"layer = TNLinear(load_design({design_path!r}))\n{load}"
            f"y = layer(torch.randn(32, {design.in_features}))  # (32, {design.out_features})\n")


def export_source(design: Design, fmt: str, **kw: Any) -> str:
    """The exported text of ``design`` in ``fmt`` (torch, json or snippet)."""
    if fmt == "torch":
        return to_torch_source(design, **{k: v for k, v in kw.items() if k in ("batch", "source")})
    if fmt == "json":
        return to_json_source(design)
    if fmt == "snippet":
        return to_snippet(design, **{k: v for k, v in kw.items() if k in ("design_path", "weights_path")})
    raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------- weights
def layer_state_dict(state: dict[str, Any], design: Design, prefix: str | None = None) -> dict[str, Any]:
    """The TN layer's own entries (``cores.<id>``, ``bias``) out of a model's state dict.

    ``prefix`` names the layer (e.g. ``"fc1."``); without it, the one prefix under which every core of ``design``
    appears with the right shape is found, and an unclear or missing match is an error naming what was found.
    """
    want = {f"cores.{t.id}": tuple(design.shape(t.id)) for t in design.tensors}
    if prefix is None:
        prefixes = set()
        for key in state:
            for w in want:
                if key.endswith(w) and (key == w or key[: -len(w)].endswith(".")):
                    prefixes.add(key[: -len(w)])
        fits = [p for p in sorted(prefixes)
                if all(p + k in state and tuple(state[p + k].shape) == s for k, s in want.items())]
        if len(fits) != 1:
            what = "no layer" if not fits else f"{len(fits)} layers ({', '.join(repr(p) for p in fits)})"
            raise ValueError(f"the weights hold {what} with the cores of design {design.name!r} "
                             f"({', '.join(f'{k} {s}' for k, s in want.items())})")
        prefix = fits[0]
    out = {k: state[prefix + k] for k in want if prefix + k in state}
    missing = [k for k in want if k not in out]
    if missing:
        raise ValueError(f"the weights lack {', '.join(prefix + k for k in missing)}")
    if prefix + "bias" in state:
        out["bias"] = state[prefix + "bias"]
    return out


def save_weights(state: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` a layer state dict (tensors only, so ``torch.load(..., weights_only=True)`` reads it)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, path)
    return path


def write_export(design: Design, fmt: str, output: str | Path, weights: dict[str, Any] | None = None,
                 batch: int = 64, source: str = "") -> list[Path]:
    """Write ``design`` as ``fmt`` to ``output`` (plus ``<stem>.pt`` beside it when ``weights`` is given)."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    wpath = out.with_name(out.stem + ".pt") if weights is not None else None
    if fmt == "snippet":
        dpath = out.with_name(out.stem + ".design.json")
        dpath.write_text(to_json_source(design))
        written.append(dpath)
        text = to_snippet(design, dpath.name, wpath.name if wpath else None)
    else:
        text = export_source(design, fmt, batch=batch, source=source)
    out.write_text(text)
    written.insert(0, out)
    if weights is not None and wpath is not None:
        written.append(save_weights(weights, wpath))
    return written

