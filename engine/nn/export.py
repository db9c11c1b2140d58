"""Export a design to code: a standalone PyTorch module, the design JSON, or a snippet using ``engine``.

The standalone module is printed from :func:`engine.contract.program.compile_program` steps, the same steps the engine runs
and the cost model counts: each contraction becomes one straight-line ``torch.einsum`` line. Its parameters are
``self.cores[<id>]`` (an ``nn.ParameterDict``) and ``self.bias``, so its ``state_dict`` keys equal those of
:class:`engine.nn.TNLinear` and weights load either way. The generated file imports only ``torch``
(and ``math``).

Schedules. The engine picks, for every batch size, the schedule with fewer FLOPs (``compile_program(...,
schedule="auto")``). When the design can stream (linear designs, and nonlinear ones whose W is linear in what
follows the last activation, :func:`engine.contract.schedule.can_stream`), the exported module carries the ``materialise``
program and every distinct ``stream`` program the engine plans at batch sizes 1 to 4096 (its stream path can
change with the batch), with the FLOPs of each as ``a + b * batch`` (exact: a step's FLOPs are either independent
of the batch or proportional to it), and runs the cheapest: the engine's rule, without the cost model. Otherwise
it materialises W.
"""
from __future__ import annotations

import keyword
import re
import textwrap
from pathlib import Path
from typing import Any

from engine.contract.program import BATCH, Program, Step, compile_program
from engine.contract.schedule import can_stream
from engine.design.activations import activation
from engine.design.model import Design

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


def delta_buffer_name(tid: str) -> str:
    """The buffer name TNLinear gives copy tensor ``tid`` (``delta_<key>``; buffers have no reserved names)."""
    from engine.nn.linear import id_to_key

    return "delta_" + id_to_key(tid, reserved=frozenset())


def operand_names(design: Design) -> dict[str, str]:
    """Program operand ``core:<id>`` -> its Python expression in the generated module, named as in TNLinear:
    trainable cores are ``self.cores[<key>]``, copy (``delta``) tensors the fixed buffers ``self.delta_<key>``."""
    from engine.nn.linear import id_to_key

    return {f"core:{t.id}": (f"self.{delta_buffer_name(t.id)}" if t.kind == "delta"
                             else f"self.cores[{id_to_key(t.id)!r}]") for t in design.tensors}


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


def stream_variants(design: Design, batch: int = 64,
                    batches: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)) -> dict[str, Program]:
    """The distinct stream programs the engine plans at these batch sizes (and ``batch``), named by batch.

    One variant is named ``stream``; several are ``stream_b<first batch that chose it>``.
    """
    found: dict[tuple, Program] = {}
    for b in sorted(set(batches) | {batch}):
        prog = compile_program(design, b, "stream")
        sig = tuple((s.op, s.inputs, s.in_indices, s.out_indices) for s in prog.steps)
        found.setdefault(sig, prog)
    progs = list(found.values())
    if len(progs) == 1:
        return {"stream": progs[0]}
    return {f"stream_b{p.batch}": p for p in progs}


# --------------------------------------------------------------------- code lines
def _step_lines(prog: Program, steps: list[Step], names: dict[str, str]) -> list[str]:
    """One line per step: ``out = torch.einsum("eq", a, b)`` (plus activation) or ``out = a.reshape(...)``."""
    lines = []
    for s in steps:
        args = [names.get(i, i) for i in s.inputs]  # x, xs, t<n>, Wt, W, ys, y are valid identifiers
        if s.op == "reshape":
            shape = ", ".join("-1" if i == BATCH else str(prog.dims[i]) for i in s.out_indices)
            expr = f"{args[0]}.reshape({shape})"
        elif s.is_identity:
            expr = args[0]
        else:
            expr = f'torch.einsum("{s.equation}", {", ".join(args)})'
        note = f"  # {s.flops:,} FLOPs at batch {prog.batch}" if s.flops and s.phase == "apply" else (
            f"  # {s.flops:,} FLOPs" if s.flops else "")
        act = activation(s.activation).source if s.activation is not None else None
        if act is not None and s.activation == "gelu" and len(s.out_indices) > 12:
            # torch's gelu kernel rejects tensors of 13+ dimensions: apply it to the flat view (elementwise)
            lines.append(f"{s.output} = {expr}{note}")
            lines.append(f"{s.output} = {act}({s.output}.reshape(-1)).reshape({s.output}.shape)")
            continue
        if act is not None:
            expr = f"{act}({expr})"
        lines.append(f"{s.output} = {expr}{note}")
    return lines


def _indent(lines: list[str], n: int = 8) -> str:
    return "\n".join(" " * n + ln for ln in lines)


_STD_CACHE: dict[str, dict[str, float]] = {}


def _init_stds(design: Design) -> dict[str, float]:
    """Per-core init std (cached by design fingerprint: nonlinear designs are calibrated, which builds W)."""
    key = design.fingerprint()
    if key not in _STD_CACHE:
        if len(_STD_CACHE) > 256:
            _STD_CACHE.clear()
        _STD_CACHE[key] = _compute_init_stds(design)
    return dict(_STD_CACHE[key])


def _compute_init_stds(design: Design) -> dict[str, float]:
    """Per-core std of the exported module's Gaussian initialisation, from :mod:`engine.nn.init`.

    Linear designs: the closed form of :func:`engine.nn.init.linear_core_stds`, which gives W ``nn.Linear``'s
    variance in expectation. Nonlinear designs: the std of each core after the engine's calibrated
    initialisation (seed 0), so activations see inputs of the calibrated scale.
    """
    from engine.nn.init import init_cores, linear_core_stds, target_std

    if design.is_linear:
        return linear_core_stds(design, target_std(design.in_features))
    cores = init_cores(design, seed=0)
    return {t.id: float(cores[t.id].std()) if cores[t.id].numel() > 1 else float(cores[t.id].abs().mean())
            for t in design.tensors if t.kind != "delta"}


# --------------------------------------------------------------------- the torch module
def to_torch_source(design: Design, batch: int = 64, class_name_: str | None = None, source: str = "") -> str:
    """Source text of a standalone ``nn.Module`` computing ``design`` (depends on torch only)."""
    design.check()
    cls = class_name_ or class_name(design)
    mat = compile_program(design, batch, "materialise")
    streams = stream_variants(design, batch) if can_stream(design) else {}
    gen_steps = [s for s in mat.steps if s.phase == "generate"]
    app_steps = [s for s in mat.steps if s.phase == "apply"]
    from engine.nn.linear import id_to_key

    names = operand_names(design)
    shapes = {id_to_key(t.id): design.shape(t.id) for t in design.tensors if t.kind != "delta"}
    deltas = {delta_buffer_name(t.id): design.shape(t.id) for t in design.tensors if t.kind == "delta"}
    stds = {id_to_key(k): v for k, v in _init_stds(design).items()}
    kinds = ", ".join(f"{t.id} ({t.kind}{', ' + t.activation if t.activation else ''})" for t in design.tensors)
    mat_a, mat_b = flops_by_batch(mat)

    kind = "linear" if design.is_linear else "nonlinear (activations inside the network)"
    header = (f'"""{design.name}: a tensor-network linear layer, y = x @ W + b, exported by TN Studio.\n\n'
              f"Design: {design.in_features} -> {design.out_features}, {len(design.tensors)} tensors, "
              f"{design.params:,} parameters (dense {design.dense_params:,}, {design.compression:,.1f}x compression), "
              f"{kind}.\nTensors: {kinds}.\n"
              "Generated by `tnstudio export --to torch` from the contraction program of "
              "engine.contract.program.compile_program\n"
              f"(design fingerprint {design.fingerprint()}{', from ' + source if source else ''}): every einsum below "
              "is one step of that program,\nthe same steps TN Studio runs and costs. Parameter names (cores.<id>, "
              "bias) equal those of\nengine.nn.TNLinear, so state dicts load either way. Depends on torch "
              'only.\n"""\n')
    indices = {id_to_key(t.id): t.indices for t in design.tensors}
    core_lines = [f"{key!r}: {tuple(shape)!r},  # {', '.join(indices[key])}" for key, shape in shapes.items()]
    std_lines = [f"{tid!r}: {stds[tid]!r}," for tid in shapes]

    parts = [header, "from __future__ import annotations\n\nimport math\n\nimport torch\nimport torch.nn as nn\n"
             "import torch.nn.functional as F\n\n\n"]
    parts.append(f"class {cls}(nn.Module):\n")
    parts.append(f'    """{design.name}: {design.in_features} -> {design.out_features}, {design.params:,} '
                 f'parameters."""\n\n')
    parts.append(f"    in_features = {design.in_features}\n    out_features = {design.out_features}\n")
    parts.append("    # core id -> shape (the core's indices in the comment)\n    CORE_SHAPES = {\n"
                 + _indent(core_lines) + "\n    }\n")
    if deltas:
        parts.append("    # copy tensors (1 where all indices are equal): fixed buffers, named as in TNLinear\n"
                     f"    DELTA_SHAPES = {{{', '.join(f'{k!r}: {tuple(v)!r}' for k, v in deltas.items())}}}\n")
    parts.append("    # per-core init std (engine.init): W gets nn.Linear's scale, 1 / sqrt(3 in_features)\n"
                 "    INIT_STD = {\n"
                 + _indent(std_lines) + "\n    }\n")
    if streams:
        flops = {"materialise": (mat_a, mat_b)} | {k: flops_by_batch(p) for k, p in streams.items()}
        rows = _indent([f"{k!r}: {v!r}," for k, v in flops.items()])
        parts.append(textwrap.indent(textwrap.dedent("""\
            # FLOPs of each contraction program at batch B as (a, b), i.e. a + b * B, counted from its steps.
            # forward() runs the cheapest one: the rule of the TN Studio engine (compile_program, schedule "auto"),
            # which re-plans the stream path per batch size; the stream variants below are the distinct paths it
            # found at batch sizes 1 to 4096, so the choice matches the engine's without the cost model.
            SCHEDULE_FLOPS = {
            """), "    ") + rows + "\n    }\n")
    parts.append("\n" + textwrap.indent(textwrap.dedent("""\
        def __init__(self, bias: bool = True, device=None, dtype=None) -> None:
            super().__init__()
            kw = {"device": device, "dtype": dtype}
            self.cores = nn.ParameterDict({k: nn.Parameter(torch.empty(s, **kw)) for k, s in self.CORE_SHAPES.items()})
            for k, s in getattr(self, "DELTA_SHAPES", {}).items():
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
                for k, core in self.cores.items():
                    core.normal_(0.0, self.INIT_STD[k])
                if self.bias is not None:
                    bound = 1.0 / math.sqrt(self.in_features)
                    self.bias.uniform_(-bound, bound)
        """), "    "))
    parts.append("\n    def weight(self) -> torch.Tensor:\n"
                 f'        """The dense weight W ({design.in_features} x {design.out_features}) generated from the '
                 f'cores."""\n' + _indent(_step_lines(mat, gen_steps, names)) + "\n        return W\n")
    parts.append("\n    def forward_materialise(self, x: torch.Tensor) -> torch.Tensor:\n"
                 '        """y = x @ W for x of shape (B, in_features): generate W, then one matmul."""\n'
                 "        W = self.weight()\n" + _indent(_step_lines(mat, app_steps, names)) + "\n        return y\n")
    if streams:
        for key, prog in streams.items():
            parts.append(f"\n    def forward_{key}(self, x: torch.Tensor) -> torch.Tensor:\n"
                         '        """y = x @ W for x of shape (B, in_features), contracting x through the cores.\n\n'
                         f'        W is never formed; the path is the one planned at batch {prog.batch}.\n        """\n'
                         + _indent(_step_lines(prog, prog.steps, names)) + "\n        return y\n")
        if "stream" not in streams:
            parts.append("\n" + textwrap.indent(textwrap.dedent('''\
                def forward_stream(self, x: torch.Tensor) -> torch.Tensor:
                    """y = x @ W with the cheapest stream path for this batch size."""
                    streams = [k for k in self.SCHEDULE_FLOPS if k != "materialise"]
                    plan = min(streams, key=lambda k: self.flops(k, x.shape[0]))
                    return getattr(self, "forward_" + plan)(x)
                '''), "    "))
        parts.append("\n" + textwrap.indent(textwrap.dedent('''\
            @classmethod
            def flops(cls, program: str, batch: int) -> int:
                """Forward FLOPs (2 x multiply-adds) of one program at this batch size."""
                a, b = cls.SCHEDULE_FLOPS[program]
                return a + b * batch

            @classmethod
            def plan(cls, batch: int) -> str:
                """The program with the fewest FLOPs at this batch size (materialise on a tie)."""
                return min(cls.SCHEDULE_FLOPS, key=lambda k: cls.flops(k, batch))

            @classmethod
            def schedule(cls, batch: int) -> str:
                """The schedule forward() uses at this batch size: "materialise" or "stream"."""
                return "materialise" if cls.plan(batch) == "materialise" else "stream"
            '''), "    "))
        pick = 'y = getattr(self, "forward_" + self.plan(x.shape[0]))(x)'
    else:
        pick = "y = self.forward_materialise(x)  # the last tensor absorbed is activated: W must be generated"
    parts.append("\n" + textwrap.indent(textwrap.dedent(f'''\
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """x: (..., {design.in_features}) -> (..., {design.out_features})."""
            lead = x.shape[:-1]
            x = x.reshape(-1, self.in_features)
            {pick}
            y = y.reshape(*lead, self.out_features)
            return y if self.bias is None else y + self.bias

        def extra_repr(self) -> str:
            bias = self.bias is not None
            return f"in_features={{self.in_features}}, out_features={{self.out_features}}, bias={{bias}}"
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
            "import torch\n\nfrom engine.design import load_design\nfrom engine.nn import TNLinear\n\n"
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

