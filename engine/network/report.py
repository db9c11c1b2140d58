"""The whole-network report: every layer's parameters, FLOPs and memory, dense and TN, and the model's totals.

:func:`network_report` reads the architecture's analysis (:mod:`engine.network.analysis`, cached) and, for every
TN layer, the cost model's :func:`~engine.contract.cost.cost_report` of its design at the rows it runs on (batch x
rows per example: 1 for a classifier layer, the tokens of a Transformer), or for a conv2d design
:func:`~engine.contract.conv.conv_cost_report` at the batch and the layer's input image size, so TN numbers are the
same ones the design's own report gives. Nothing is allocated.

FLOPs (2 x multiply-adds) are what ``torch.utils.flop_counter.FlopCounterMode`` counts on a forward pass: the
matrix products of dense linear layers (``2 rows in out``), convolutions (``2 positions kernel (in / groups) out``),
the attention cores (``2 L S (E + E_v)``) and, for TN layers, the contraction program's einsums; elementwise work
(activations, norms, pooling, biases) is not counted, as FlopCounterMode does not count it. Modules outside the
layer registry (a transposed conv, an LSTM) and torch operations a forward runs outside every module get
FlopCounterMode's own count from the analysis's forward pass (one example, scaled by the batch), on ``other`` rows.

Memory (estimates from the same numbers, documented in the README):

- inference = all parameters + the largest (input + output) of any module call + that layer's TN intermediates;
- training = parameters x (1 + gradients + Adam's 2 moments) + the input + every module output kept for backward
  (in-place modules excepted) + each TN layer's saved intermediates beyond its input and output (from the cost
  model's training replay).

Rows (:class:`LayerRow`) come in module order: assignable layers (``linear``, ``conv1d``, ``conv2d``, the
``attention`` projections), the attention cores (``attention core``, no parameters) and the parameters of every
other module (``other``: norms, embeddings, class tokens), so the rows' dense parameters add up to the dense
model's parameter count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

from engine.contract.cost import cost_report
from engine.contract.memory import ADAM_STATE, dtype_bytes
from engine.format import nbytes, printable, ratio, si
from engine.network.analysis import Analysis, analyse
from engine.network.format import NetworkSpec, resolve


LOOSE_ROW = "(outside modules)"  # the row of FLOPs a forward's own code runs outside every module


@dataclass(frozen=True)
class LayerRow:
    """One row of the report (see the module docstring); bytes at the report's batch and dtype."""

    name: str
    kind: str  # linear, conv1d, conv2d, attention (a projection), attention core, other
    type: str  # the torch module class
    shape: str  # "25088 x 4096", "conv 3x3 64 -> 128", "-"
    assignment: str  # "dense", or the design's name
    source: str  # default, "rule N: ...", layer, "-"
    template: str | None  # the design's template kind
    assignable: bool  # whether a design can be assigned to it now
    rows: int  # rows of the matrix product per example
    dense_params: int
    params: int  # weight (cores for TN) + bias
    compression: float
    dense_flops: int
    flops: int
    param_bytes: int
    activation_bytes: int  # its output
    peak_bytes: int  # the layer alone, inference: params + input + output + intermediates
    train_bytes: int  # the layer alone, training (params, grads, Adam, input, saved tensors)
    schedule: str | None = None  # TN layers: the schedule the cost model picks at these rows

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Totals:
    params: int
    dense_params: int
    compression: float
    tn_layers: int
    compressed_params: int  # params of the TN layers (cores + biases)
    compressed_dense_params: int  # the same layers dense
    compressed_compression: float | None
    forward_flops: int
    dense_forward_flops: int
    flops_ratio: float  # dense / TN
    param_bytes: int
    inference_bytes: int
    dense_inference_bytes: int
    train_bytes: int
    dense_train_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class NetworkReport:
    """Every number of :func:`network_report`; :meth:`to_dict` is ``tnstudio network cost --json``."""

    name: str
    architecture: str
    input_shape: tuple[int, ...]
    num_classes: int | None
    batch: int
    dtype: str
    rows: tuple[LayerRow, ...]
    totals: Totals
    seconds: float  # how long the report took

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "architecture": self.architecture, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "batch": self.batch, "dtype": self.dtype,
                "layers": [r.to_dict() for r in self.rows], "totals": self.totals.to_dict(),
                "seconds": round(self.seconds, 4)}

    def row(self, name: str) -> LayerRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r} in the report")

    def format(self, all_rows: bool = False) -> str:
        """A text table: assignable layers and attention cores (other parameters summed in one line unless
        ``all_rows``), then the totals."""
        t = self.totals
        head = ["layer", "kind", "shape", "assignment", "dense params", "params", "compr.", "dense FLOPs", "FLOPs",
                "memory"]
        body = []
        others = [r for r in self.rows if r.kind == "other"]
        for r in self.rows:
            if r.kind == "other" and not all_rows:
                continue
            body.append([printable(r.name), r.kind, r.shape, printable(r.assignment), f"{r.dense_params:,}",
                         f"{r.params:,}",
                         ratio(r.compression) if r.params else "-", si(r.dense_flops), si(r.flops),
                         nbytes(r.peak_bytes)])
        if others and not all_rows:
            n, f = sum(r.params for r in others), sum(r.flops for r in others)
            body.append([f"({len(others)} other modules)", "other", "-", "dense", f"{n:,}", f"{n:,}", "1x", si(f),
                         si(f), "-"])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        right = {4, 5, 6, 7, 8, 9}
        fmt = lambda row: "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)  # noqa: E731
                                    for i, (c, w) in enumerate(zip(row, widths)))
        lines = [f"{self.name}: {self.architecture}, input {'x'.join(map(str, self.input_shape))}, batch {self.batch}, "
                 f"{self.dtype}", fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]
        comp = (f", compressed layers {t.compressed_dense_params:,} -> {t.compressed_params:,} "
                f"({ratio(t.compressed_compression)})" if t.compressed_compression else "")
        lines += ["", f"params       {t.params:,} (dense {t.dense_params:,}; whole model {ratio(t.compression)}"
                  f"{comp})",
                  f"forward      {si(t.forward_flops, 'FLOP')} (dense {si(t.dense_forward_flops, 'FLOP')}; "
                  + (f"{ratio(t.flops_ratio)} fewer)" if t.flops_ratio >= 1 else f"{ratio(1 / t.flops_ratio)} more)"),
                  f"inference    {nbytes(t.inference_bytes)} (dense {nbytes(t.dense_inference_bytes)})",
                  f"training     {nbytes(t.train_bytes)} (dense {nbytes(t.dense_train_bytes)}, AdamW)",
                  f"TN layers    {t.tn_layers}"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _assignable(info, kind) -> bool:
    """Whether a design can be assigned to the layer now (a grouped conv, string padding or a padding mode other
    than zeros cannot: :meth:`~engine.network.layers.LayerInfo.conv_refusal`)."""
    if kind.tn_target is None:
        return False
    return info.kind != "conv2d" or info.conv_refusal() is None


def network_report(spec: NetworkSpec, batch: int = 1, dtype: str = "float32", analysis: Analysis | None = None
                   ) -> NetworkReport:
    """The whole-network report of ``spec`` at ``batch`` examples (see the module docstring)."""
    from engine.network.layers import layer_kind

    t0 = time.perf_counter()
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    isz = dtype_bytes(dtype)
    an = analysis or analyse(spec)
    assigned = resolve(spec, an.layers)
    leaf = {c.name: c for c in reversed(an.leaves)}  # first call of each module
    order = {n: k for k, n in enumerate(an.module_order)}
    rows: list[tuple[tuple, LayerRow]] = []
    extra_inf: dict[str, int] = {}  # module name -> TN intermediates beyond in/out (inference)
    extra_train = 0
    tn_count = comp_params = comp_dense = 0
    for sub, info in enumerate(an.layers):
        res = assigned[info.name]
        design = res.design
        bias = info.out_features if info.bias else 0
        n_rows = batch * info.rows
        call = leaf.get(info.name)
        if call is not None and not info.group:
            x_el, y_el = batch * call.in_elems, batch * call.out_elems
        else:
            x_el, y_el = n_rows * info.in_features, n_rows * info.out_features
        dense_flops = info.dense_flops(batch)
        dense_peak = (info.dense_params + x_el + y_el) * isz
        dense_train = ((2 + ADAM_STATE) * info.dense_params + 2 * x_el + y_el) * isz
        kind = layer_kind(info.kind)
        if design is None:
            params, flops, peak, train, sched = info.dense_params, dense_flops, dense_peak, dense_train, None
        else:
            if design.conv is not None:  # a conv2d design: its conv programs at the layer's input size
                from engine.contract.conv import conv_cost_report

                rep = conv_cost_report(design, batch=batch, image=info.in_shape[-2:] or None, dtype=dtype)
            else:
                rep = cost_report(design, batch=max(n_rows, 1), dtype=dtype)
            params = design.params + bias
            flops = rep.forward_flops * info.calls if info.rows else 0
            peak = rep.peak_memory_bytes + bias * isz
            train = rep.train_memory_bytes + (2 + ADAM_STATE) * bias * isz
            sched = rep.schedule
            extra = max(0, rep.peak_memory_bytes - (design.params + x_el + y_el) * isz)
            extra_inf[info.group or info.name] = max(extra_inf.get(info.group or info.name, 0), extra)
            extra_train += max(0, rep.train_memory_bytes - ((2 + ADAM_STATE) * design.params + x_el + y_el) * isz)
            tn_count += 1
            comp_params += params
            comp_dense += info.dense_params
        key = (order.get(info.group or info.name, 1 << 30), 0, sub)
        rows.append((key, LayerRow(
            name=info.name, kind=info.kind, type=info.module_type, shape=info.shape,
            assignment="dense" if design is None else design.name, source=res.source,
            template=None if design is None else design.meta.get("template"), assignable=_assignable(info, kind),
            rows=info.rows, dense_params=info.dense_params, params=params,
            compression=info.dense_params / max(params, 1), dense_flops=dense_flops, flops=flops,
            param_bytes=params * isz, activation_bytes=y_el * isz, peak_bytes=peak, train_bytes=train,
            schedule=sched)))
    for core in an.attention:
        f = core.flops(batch)
        y = batch * core.q_rows * core.v_dim * core.calls * isz
        rows.append(((order.get(core.name, 1 << 30), 1, 0), LayerRow(
            name=core.name, kind="attention core", type="softmax(QK^T)V", shape=f"{core.num_heads} heads, L={core.q_rows}"
            f", S={core.kv_rows}", assignment="-", source="-", template=None, assignable=False, rows=core.q_rows,
            dense_params=0, params=0, compression=1.0, dense_flops=f, flops=f, param_bytes=0, activation_bytes=y,
            peak_bytes=y, train_bytes=y)))
    for o in an.others:
        rows.append(((order.get(o.name, -1), -1, 0), LayerRow(
            name=o.name, kind="other", type=o.module_type, shape="-", assignment="dense", source="-", template=None,
            assignable=False, rows=0, dense_params=o.params, params=o.params, compression=1.0,
            dense_flops=o.flops * batch, flops=o.flops * batch, param_bytes=o.params * isz, activation_bytes=0,
            peak_bytes=o.params * isz, train_bytes=(2 + ADAM_STATE) * o.params * isz)))
    if an.loose_flops:  # matmuls and the like in a forward's own code, outside every module above
        f = an.loose_flops * batch
        rows.append(((1 << 30, 2, 0), LayerRow(
            name=LOOSE_ROW, kind="other", type="torch operations", shape="-", assignment="dense", source="-",
            template=None, assignable=False, rows=0, dense_params=0, params=0, compression=1.0, dense_flops=f,
            flops=f, param_bytes=0, activation_bytes=0, peak_bytes=0, train_bytes=0)))
    ordered = tuple(r for _, r in sorted(rows, key=lambda kr: kr[0]))
    params = sum(r.params for r in ordered)
    dense_params = sum(r.dense_params for r in ordered)
    fwd = sum(r.flops for r in ordered)
    dense_fwd = sum(r.dense_flops for r in ordered)
    acts = [(batch * (c.in_elems + c.out_elems) * isz, c.name) for c in an.leaves]
    live = max((a + extra_inf.get(n, 0) for a, n in acts), default=0)
    dense_live = max((a for a, _ in acts), default=0)
    saved = batch * isz * (an.input_elems + sum(c.out_elems for c in an.leaves if not c.inplace))
    totals = Totals(
        params=params, dense_params=dense_params, compression=dense_params / max(params, 1), tn_layers=tn_count,
        compressed_params=comp_params, compressed_dense_params=comp_dense,
        compressed_compression=(comp_dense / comp_params) if comp_params else None,
        forward_flops=fwd, dense_forward_flops=dense_fwd, flops_ratio=dense_fwd / max(fwd, 1),
        param_bytes=params * isz, inference_bytes=params * isz + live, dense_inference_bytes=dense_params * isz
        + dense_live, train_bytes=(2 + ADAM_STATE) * params * isz + saved + extra_train,
        dense_train_bytes=(2 + ADAM_STATE) * dense_params * isz + saved)
    return NetworkReport(name=spec.name, architecture=spec.architecture.label, input_shape=spec.resolved_input_shape,
                         num_classes=spec.resolved_num_classes, batch=batch, dtype=str(dtype), rows=ordered,
                         totals=totals, seconds=time.perf_counter() - t0)
