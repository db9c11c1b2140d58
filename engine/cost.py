"""The cost model: exact counts read off the contraction program.

Everything here is derived from :func:`engine.program.compile_program`, the same object the torch engine runs and
the exporter prints. FLOPs are 2 x multiply-adds of every contraction (elementwise work and reshapes are free, as
in ``torch.utils.flop_counter``). Memory is counted in bytes of ``dtype`` by replaying the program: each step
allocates its output, an intermediate is freed after its last use, parameters and the input stay resident.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from .design import Design
from .program import SCHEDULES, Program, compile_program

DTYPE_BYTES = {"float32": 4, "float": 4, "fp32": 4, "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
               "float64": 8, "double": 8, "fp64": 8}
# activations whose backward needs their input (the others keep their output, which the next step saves anyway)
_SAVES_INPUT = {"gelu", "silu", "elu", "softplus", "leaky_relu", "sin"}


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[str(dtype).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use float32, float16, bfloat16 or float64") from None


def backward_flops(prog: Program, input_grad: bool = True) -> int:
    """FLOPs of the backward pass: one contraction per input that needs a gradient, each as costly as the step.

    The input ``x`` needs a gradient when the layer sits after another trainable layer (``input_grad``).
    """
    total = 0
    on_x = {"x", "xs"}
    for s in prog.steps:
        if s.op != "einsum" or s.flops == 0:
            continue
        needs = [not (i in on_x and not input_grad and i in ("x", "xs")) for i in s.inputs]
        total += s.flops * sum(needs)
    return total


def memory(prog: Program, itemsize: int, params: int, training: bool = False) -> dict[str, int]:
    """Peak bytes of a forward pass (and of a training step with ``training``), by replaying the program.

    Resident: parameters, the input ``x`` and, when training, gradients and Adam's two moment buffers. Reshapes
    are views of their input's buffer; a buffer lives from the step that writes it to the last step that reads it
    (through any view). When training, every buffer a contraction reads is kept for backward, and so is the
    pre-activation of activations whose backward needs their input.
    """
    root: dict[str, str] = {}
    size: dict[str, int] = {}
    last: dict[str, int] = {}
    for n, s in enumerate(prog.steps):
        for i in s.inputs:
            last[root.get(i, i)] = n
        if s.op == "reshape" or s.is_identity:
            root[s.output] = root.get(s.inputs[0], s.inputs[0])
        else:
            size[s.output] = s.size
    live: dict[str, int] = {}
    saved: dict[str, int] = {}
    peak = 0
    for n, s in enumerate(prog.steps):
        if s.output in size:
            live[s.output] = size[s.output]
            transient = size[s.output] if s.activation is not None else 0  # activation writes a new buffer
            if training and s.activation in _SAVES_INPUT:
                saved[s.output + ":pre"] = size[s.output]
            if training:
                saved.update({r: size[r] for r in (root.get(i, i) for i in s.inputs) if r in size})
            peak = max(peak, sum(live.values()) + transient + sum(v for k, v in saved.items() if k not in live))
        for r in [r for r in live if last.get(r, -1) <= n and r != prog.steps[-1].output]:
            del live[r]
    resident = params + prog.batch * prog.in_features
    out = {"peak_forward_bytes": (resident + peak) * itemsize}
    if training:
        out["train_bytes"] = (resident + 3 * params + peak) * itemsize
    return out


def scaling(prog: Program, design: Design) -> dict[str, Any]:
    """Leading-order FLOPs in the bond dimension: every bond scaled together as ``chi``."""
    bonds = {k for k, v in design.indices.items() if v.role == "bond"}
    terms: Counter = Counter()
    for s in prog.steps:
        if s.flops == 0:
            continue
        union = {i for ix in s.in_indices for i in ix}
        p = len(union & bonds)
        chi_part = 1
        for i in union & bonds:
            chi_part *= prog.dims[i]
        terms[p] += s.flops // max(chi_part, 1)
    if not terms:
        return {"formula": "O(1)", "exponent": 0, "terms": []}
    p = max(terms)
    coef = terms[p]
    formula = f"O(chi^{p})" if p > 1 else ("O(chi)" if p == 1 else "O(1)")
    return {"formula": formula, "exponent": p, "leading": f"{coef:.3g} * chi^{p}",
            "terms": [[int(c), int(e)] for e, c in sorted(terms.items(), reverse=True)]}


def _schedule_costs(design: Design, batch: int, sched: str, itemsize: int, search: str) -> dict[str, Any]:
    prog = compile_program(design, batch, sched, search)
    return {"program": prog, "forward_flops": prog.flops, "generate_flops": prog.generate_flops,
            "backward_flops": backward_flops(prog),
            "peak_memory_bytes": memory(prog, itemsize, design.params)["peak_forward_bytes"],
            "train_memory_bytes": memory(prog, itemsize, design.params, training=True)["train_bytes"]}


def cost_report(design: Design, batch: int = 64, dtype: str = "float32", schedule: str = "auto",
                search: str = "fast") -> dict[str, Any]:
    """Every number the studio and ``tnstudio cost`` show, as a JSON-ready dict."""
    itemsize = dtype_bytes(dtype)
    design.check()
    scheds = [s for s in SCHEDULES if design.is_linear or s == "materialise"]
    per = {s: _schedule_costs(design, batch, s, itemsize, search) for s in scheds}
    chosen = schedule if schedule != "auto" else min(per, key=lambda s: (per[s]["forward_flops"],
                                                                          per[s]["peak_memory_bytes"]))
    if chosen not in per:
        raise ValueError("the stream schedule needs a linear design (this one has activations)")
    c = per[chosen]
    prog: Program = c["program"]
    dense_fwd = 2 * batch * design.in_features * design.out_features
    return {
        "name": design.name,
        "params": design.params,
        "dense_params": design.dense_params,
        "compression": design.compression,
        "tensors": len(design.tensors),
        "linear": design.is_linear,
        "batch": batch,
        "dtype": str(dtype),
        "schedule": chosen,
        "method": prog.method,
        "generate_flops": per["materialise"]["generate_flops"],
        "forward_flops": c["forward_flops"],
        "backward_flops": c["backward_flops"],
        "dense_forward_flops": dense_fwd,
        "param_bytes": design.params * itemsize,
        "largest_intermediate_bytes": prog.largest_intermediate * itemsize,
        "peak_memory_bytes": c["peak_memory_bytes"],
        "train_memory_bytes": c["train_memory_bytes"],
        "dense_train_memory_bytes": (4 * design.dense_params + batch * (design.in_features + design.out_features))
        * itemsize,
        "schedules": {s: {k: v for k, v in per[s].items() if k != "program"} for s in per},
        "scaling": scaling(prog, design)["formula"],
        "scaling_detail": scaling(prog, design),
        "path": prog.describe(),
    }


def _fmt(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.4g}"


def _bytes(n: float) -> str:
    for unit, div in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)} B"


def format_report(rep: dict[str, Any]) -> str:
    """A short human-readable summary of :func:`cost_report`."""
    lines = [
        f"{rep['name']}: {rep['tensors']} tensors, {'linear' if rep['linear'] else 'nonlinear'}",
        f"  params          {rep['params']:,} (dense {rep['dense_params']:,}, compression {rep['compression']:,.1f}x)",
        f"  schedule        {rep['schedule']} at batch {rep['batch']} ({rep['method']})",
        f"  FLOPs           generate {_fmt(rep['generate_flops'])}, forward {_fmt(rep['forward_flops'])}, "
        f"backward {_fmt(rep['backward_flops'])} (dense forward {_fmt(rep['dense_forward_flops'])})",
        f"  memory ({rep['dtype']}) params {_bytes(rep['param_bytes'])}, largest intermediate "
        f"{_bytes(rep['largest_intermediate_bytes'])}, peak forward {_bytes(rep['peak_memory_bytes'])}, "
        f"training {_bytes(rep['train_memory_bytes'])}",
        f"  scaling         {rep['scaling']}",
        "  path:",
    ]
    for s in rep["path"]:
        if s["op"] == "einsum" and s["flops"]:
            act = f" -> {s['activation']}" if s["activation"] else ""
            lines.append(f"    {s['step']:>3} {', '.join(s['inputs']):<28} {s['einsum']:<24}{act:<8} "
                         f"{_fmt(s['flops'])} FLOPs")
    return "\n".join(lines)
