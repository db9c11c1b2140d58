"""The cost report: closed-form counts, memory against measured allocator peaks, the CLI."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli import main
from engine.contract.cost import cost_report
from engine.contract.flops import backward_flops
from engine.contract.memory import dtype_bytes, einsum_layout, memory, replay
from engine.contract.program import compile_program
from engine.design.model import save_design
from engine.nn.execute import run_program
from engine.nn.measure import peak_bytes
from engine.design.templates import TEMPLATE_KINDS, make_template
from engine.train.optim import adamw

try:
    from tests.drawn import linear_drawn, one_torch_thread
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from drawn import linear_drawn, one_torch_thread

TRAIN_TOLERANCE = (0.70, 1.25)  # model / measured peak of a training step; see the README's cost section


def _setup(d, batch, sched, grad):
    prog = compile_program(d, batch, sched)
    g = torch.Generator().manual_seed(0)
    cores = {cid: torch.nn.Parameter(torch.randn(*[prog.dims[i] for i in idx], generator=g) * 0.3,
                                     requires_grad=grad) for cid, idx in prog.cores.items()}
    x = torch.randn(batch, d.in_features, generator=g)
    return prog, cores, x


CASES = [(k, None, s) for k in TEMPLATE_KINDS for s in ("materialise", "stream")] + [
    ("mpo", "gelu", "materialise"), ("ttn", "relu", "materialise"), ("mera", "tanh", "materialise")]


@pytest.mark.parametrize("kind,act,sched", CASES)
def test_forward_memory_equals_measured_peak(kind, act, sched, one_thread):
    """The replay (operand copies inside einsum, view-or-copy reshapes, activation buffers) is exact, for inference
    and for a forward pass under autograd (which keeps the saved tensors)."""
    d = make_template(kind, 128, 192, 4, activation=act)
    for batch in (1, 24):
        prog, cores, x = _setup(d, batch, sched, grad=False)
        with torch.no_grad():
            measured = peak_bytes(lambda: run_program(prog, cores, x))
        assert replay(prog).peak * 4 == measured
        peak_fwd = memory(prog, 4, d.params).peak_forward_bytes
        assert peak_fwd == measured + (d.params + batch * d.in_features) * 4
        prog, cores, x = _setup(d, batch, sched, grad=True)
        keep = []
        assert replay(prog, training=True).peak * 4 == peak_bytes(lambda: keep.append(run_program(prog, cores, x)))


@pytest.mark.parametrize("kind,act,sched", CASES)
def test_training_memory_within_documented_tolerance(kind, act, sched, one_thread):
    """Params + grads + AdamW + x + the replayed forward/backward peak, against a measured steady-state step
    (dL/dy passed in as one B x out tensor, so no loss function's temporaries are counted)."""
    d = make_template(kind, 128, 192, 4, activation=act)
    for batch in ((1, 32) if kind in ("mpo", "cp") else (16,)):
        prog, cores, x = _setup(d, batch, sched, grad=True)
        opt = adamw(list(cores.values()), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            y = run_program(prog, cores, x)
            y.backward(torch.ones_like(y))
            opt.step()

        step()  # Adam's state exists from the first step on
        resident = sum(p.numel() * 4 for p in cores.values()) + x.numel() * 4 + sum(
            t.numel() * t.element_size() for st in opt.state.values() for t in st.values())
        measured = resident + peak_bytes(step)
        model = memory(prog, 4, d.params, training=True).train_bytes
        lo, hi = TRAIN_TOLERANCE
        assert lo <= model / measured <= hi, (model, measured)


def test_params_and_compression_closed_form():
    d = make_template("mpo", 512, 256, 5, in_factors=[8, 8, 8], out_factors=[4, 8, 8])
    rep = cost_report(d, batch=8)
    expect = 8 * 4 * 5 + 5 * 8 * 8 * 5 + 5 * 8 * 8
    assert rep.params == expect
    assert rep.dense_params == 512 * 256
    assert rep.compression == pytest.approx(512 * 256 / expect)
    assert rep.param_bytes == 4 * expect


def test_report_picks_the_cheaper_schedule_and_sums_steps():
    d = make_template("tensor_ring", 1024, 1024, 6)
    for batch in (1, 4096):
        rep = cost_report(d, batch=batch)
        scheds = rep.schedules
        assert rep.schedule == min(scheds, key=lambda s: (scheds[s].forward_flops, scheds[s].peak_memory_bytes))
        prog = compile_program(d, batch, rep.schedule)
        assert rep.forward_flops == sum(s.flops for s in rep.path) == prog.flops
        assert rep.backward_flops == backward_flops(prog)
        assert rep.generate_flops == compile_program(d, batch, "materialise").generate_flops
    # at batch 1 streaming x avoids building W; at a huge batch building W once is cheaper
    assert cost_report(d, batch=1).schedule == "stream"
    assert cost_report(d, batch=4096).schedule == "materialise"


def test_materialise_flops_closed_form():
    """x @ W costs 2 B in out; generating W of an MPO with 2 cores costs 2 x (i0 o0 chi i1 o1)."""
    d = make_template("mpo", 64, 32, 7, in_factors=[8, 8], out_factors=[4, 8])
    prog = compile_program(d, 10, "materialise")
    assert prog.generate_flops == 2 * 8 * 4 * 7 * 8 * 8
    assert prog.apply_flops == 2 * 10 * 64 * 32


def test_scaling_terms_reproduce_the_flops():
    for kind in TEMPLATE_KINDS:
        chi = 5
        d = make_template(kind, 4096, 4096, chi, in_factors=[8] * 4, out_factors=[8] * 4)
        rep = cost_report(d, batch=16)
        terms = rep.scaling_detail.terms
        assert sum(c * chi ** e for c, e in terms) == rep.forward_flops
        assert rep.scaling == (f"O(chi^{terms[0][1]})" if terms[0][1] > 1 else "O(chi)")
    assert cost_report(make_template("mpo", 4096, 4096, 4), batch=1).scaling == "O(chi^2)"


def test_dtype_scales_bytes():
    d = make_template("ttn", 256, 256, 4)
    a, b = cost_report(d, dtype="float32"), cost_report(d, dtype="float64")
    for k in ("peak_memory_bytes", "train_memory_bytes", "param_bytes", "largest_intermediate_bytes"):
        assert getattr(b, k) == 2 * getattr(a, k)
    assert dtype_bytes("bf16") == 2
    with pytest.raises(ValueError, match="dtype"):
        dtype_bytes("int3")


def test_format_report_mentions_the_numbers():
    rep = cost_report(make_template("mera", 256, 256, 3, activation="relu"), batch=32)
    text = rep.format()
    assert "materialise" in text and rep.scaling in text and "relu" in text and str(rep) == text


def test_cli_cost_json(tmp_path, capsys):
    path = tmp_path / "d.json"
    save_design(make_template("mpo", 256, 256, 4), path)
    assert main(["cost", str(path), "--batch", "32", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("params", "dense_params", "compression", "generate_flops", "forward_flops", "backward_flops",
                "schedule", "peak_memory_bytes", "train_memory_bytes", "path", "scaling"):
        assert key in rep
    assert rep["batch"] == 32 and isinstance(rep["path"], list) and rep["path"][0]["op"] in ("einsum", "reshape")
    assert main(["cost", str(path), "--batch", "32"]) == 0
    assert "FLOPs" in capsys.readouterr().out


def test_cli_cost_errors(tmp_path, capsys):
    path = tmp_path / "d.json"
    d = make_template("ttn", 256, 256, 4, activation="relu")
    d.tensor(d.evaluation_order()[-1]).activation = "relu"  # W itself activated: it can only be materialised
    save_design(d, path)
    assert main(["cost", str(path), "--schedule", "stream"]) == 2
    assert "must be materialised" in capsys.readouterr().err
    assert main(["cost", str(path), "--dtype", "int3"]) == 2
    assert "dtype" in capsys.readouterr().err
    assert main(["cost", str(path), "--batch", "0"]) == 2
    assert "batch" in capsys.readouterr().err
    assert main(["cost", str(tmp_path / "missing.json")]) == 2


def test_huge_design_report_is_consistent():
    d = make_template("mpo", 2 ** 20, 2 ** 20, 8)
    rep = cost_report(d, batch=64)
    mat = rep.schedules["materialise"]
    assert mat.forward_flops > rep.forward_flops  # 2^40 weights: streaming is far cheaper
    assert mat.peak_memory_bytes >= 2 ** 40 * 4
    assert math.isfinite(rep.compression) and rep.compression > 1e5


def test_report_is_typed_and_its_dict_is_the_cli_json(tmp_path, capsys):
    import dataclasses

    from engine.contract.cost import ScheduleCost
    from engine.contract.program import StepRow

    d = make_template("mera", 256, 256, 3, activation="relu")
    rep = cost_report(d, batch=32)
    assert isinstance(rep.path[0], StepRow) and isinstance(rep.schedules["materialise"], ScheduleCost)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rep.params = 1  # type: ignore[misc]
    path = tmp_path / "d.json"
    save_design(d, path)
    assert main(["cost", str(path), "--batch", "32", "--json"]) == 0
    out = capsys.readouterr().out
    assert out == json.dumps(rep.to_dict(), indent=2) + "\n" and json.loads(out) == rep.to_dict()


def test_number_formats():
    from engine.format import nbytes, ratio, si

    assert si(2.5e6) == "2.5M" and si(1.5e15) == "1.5P" and si(3.4e9, "FLOP") == "3.4 GFLOP" and si(912) == "912"
    assert nbytes(3 * 2 ** 40) == "3 TiB" and nbytes(1536) == "1.5 KiB" and nbytes(10) == "10 B"
    assert ratio(71.9) == "71.9x" and ratio(12345) == "12,345x"


def test_long_quoted_literals_in_a_reason_are_cut_in_their_middle():
    from engine.format import clip_quotes

    long = "ab'c" * 40
    out = clip_quotes(f"factors must be integers, got {long!r}; the layer's name is {'n' * 9!r}")
    head, _, tail = out.partition("…")
    assert repr(long).startswith(head.split("got ")[1]) and repr(long).endswith(tail.split(";")[0])
    assert len(out) < 120 and out.endswith("the layer's name is 'nnnnnnnnn'")  # short quotes and prose stay
    prose = "the design's " + "long " * 30 + "name isn't quoted"
    assert clip_quotes(prose) == prose  # apostrophes inside words open nothing


@pytest.mark.parametrize("in_f,out_f,batch", [(512, 768, 64), (1024, 1024, 16)])
def test_dense_training_memory_against_the_allocator(in_f, out_f, batch, one_thread):
    """The dense baseline's training memory (params, grads, AdamW's moments, x, y and dL/dx) against a measured
    steady-state step of nn.Linear with the trainer's optimiser (fused AdamW: torch's default AdamW would add two
    weight-sized temporaries, 6.1 instead of 4.1 weights, and fail this), like the TN rows."""
    from engine.contract.cost import dense_train_bytes

    torch.manual_seed(0)
    lin = torch.nn.Linear(in_f, out_f)
    x = torch.randn(batch, in_f, requires_grad=True)
    opt = adamw(lin.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        x.grad = None
        y = lin(x)
        y.backward(torch.ones_like(y))
        opt.step()

    step()
    resident = sum(p.numel() * 4 for p in lin.parameters()) + x.numel() * 4 + sum(
        t.numel() * t.element_size() for st in opt.state.values() for t in st.values())
    measured = resident + peak_bytes(step)
    model = dense_train_bytes(in_f, out_f, batch, 4)
    assert 0.9 <= model / measured <= 1.1, (model, measured)
    d = make_template("mpo", in_f, out_f, 4)
    assert cost_report(d, batch=batch).dense_train_memory_bytes == model


_LABELS = "abcdefg"


@st.composite
def _product(draw):
    """A two-operand einsum with nothing to sum (an elementwise product with broadcasting), operands in random
    memory orders, every dimension > 1."""
    n = draw(st.integers(2, 6))
    labels = list(_LABELS[:n])
    dims = {i: draw(st.integers(2, 4)) for i in labels}
    a = draw(st.lists(st.sampled_from(labels), min_size=1, max_size=n, unique=True))
    b = draw(st.lists(st.sampled_from(labels), min_size=1, max_size=n, unique=True))
    out = draw(st.permutations(list(dict.fromkeys(a + b))))
    return a, draw(st.permutations(a)), b, draw(st.permutations(b)), list(out), dims


@settings(max_examples=150, deadline=None)
@given(_product())
def test_a_products_layout_is_torchs(case):
    """An einsum step with nothing to sum is torch's elementwise product, whose result TensorIterator lays out in
    the operands' memory order, not in the output's index order (the model assumed that order: 'ab,c->abc' with a
    transposed lays b outside a, and a reshape that looks like a view then copies)."""
    a, amem, b, bmem, out, dims = case
    made, order, kind, *_ = einsum_layout(a, amem, b, bmem, out, dims)
    assert kind == "mul" and made == [[], []]
    ta = torch.zeros(*[dims[i] for i in amem]).permute(*[amem.index(i) for i in a])
    tb = torch.zeros(*[dims[i] for i in bmem]).permute(*[bmem.index(i) for i in b])
    r = torch.einsum(f"{''.join(a)},{''.join(b)}->{''.join(out)}", ta, tb)
    assert order == tuple(i for _, i in sorted(zip(r.stride(), out), reverse=True))


def test_memory_of_a_design_with_an_outer_product_step(one_thread):
    """A hand-drawn design whose bond has dimension 1: generating W is an outer product laid out by the operands
    (measured 768 bytes; the model said 448 while it took the output's index order)."""
    from engine.design.model import Design

    d = Design.from_dict({
        "format": "tnstudio-design", "version": 1, "name": "dim1",
        "target": {"kind": "linear", "in_features": 6, "out_features": 16},
        "indices": {"b0": {"dim": 1, "role": "bond"}, "i0": {"dim": 2, "role": "in", "axis": 0},
                    "i1": {"dim": 1, "role": "in", "axis": 1}, "i2": {"dim": 3, "role": "in", "axis": 2},
                    "o0": {"dim": 4, "role": "out", "axis": 0}, "o1": {"dim": 4, "role": "out", "axis": 1}},
        "tensors": [{"id": "T0", "indices": ["i0", "b0", "o0", "i1"]}, {"id": "T1", "indices": ["b0", "o1", "i2"]}]})
    for sched, batch in (("materialise", 1), ("stream", 17)):
        prog, cores, x = _setup(d, batch, sched, grad=False)
        with torch.no_grad():
            assert replay(prog).peak * 4 == peak_bytes(lambda: run_program(prog, cores, x))


@settings(max_examples=5, deadline=None)
@given(linear_drawn())
def test_memory_of_hand_drawn_designs_equals_the_allocators_peak(data):
    """The replay is exact beyond the templates: random hand-drawn designs (loops, legs anywhere, any index order),
    both schedules, inference and a forward pass under autograd, against the CPU allocator."""
    _check_hand_drawn_memory(data)


@pytest.mark.long
@settings(max_examples=40, deadline=None)
@given(linear_drawn())
def test_memory_of_many_hand_drawn_designs_equals_the_allocators_peak(data):
    """The same at length (``make test-all``)."""
    _check_hand_drawn_memory(data)


def _check_hand_drawn_memory(data: dict) -> None:
    from engine.contract.schedule import can_stream
    from engine.design.model import Design

    d = Design.from_dict(data)
    with one_torch_thread():
        for sched in ("materialise", "stream") if can_stream(d) else ("materialise",):
            for batch in (1, 5):
                prog, cores, x = _setup(d, batch, sched, grad=False)
                with torch.no_grad():
                    assert replay(prog).peak * 4 == peak_bytes(lambda: run_program(prog, cores, x)), (sched, batch)
                prog, cores, x = _setup(d, batch, sched, grad=True)
                keep = []
                measured = peak_bytes(lambda: keep.append(run_program(prog, cores, x)))
                assert replay(prog, training=True).peak * 4 == measured, (sched, batch)


def test_measuring_memory_writes_nothing_to_stderr():
    """torch 2.14's profiler printed 'USDT ... profiler_start' lines (and 'gpuGetDeviceCount failed' without a
    GPU) on every CPU measurement, inside the benchmarks' tables; a fresh interpreter's measurement prints none."""
    import subprocess
    import sys

    code = ("import torch\nfrom engine.nn.measure import peak_bytes\n"
            "print(peak_bytes(lambda: torch.randn(1000)))\n"
            "print(peak_bytes(lambda: torch.randn(10, 10) @ torch.randn(10, 3)))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINETO")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "4000"  # 1,000 float32 entries
    assert proc.stderr == ""


@pytest.mark.parametrize("kind, act", [("mpo", None), ("ttn", "gelu"), ("tucker", None), ("mera", "tanh")])
@pytest.mark.parametrize("schedule", ["materialise", "stream"])
def test_backward_flops_with_and_without_xs_gradient_equal_flop_counter_mode(kind, act, schedule):
    """The report's backward FLOPs count x's gradient (a hidden layer); a first layer fed raw data skips it:
    ``backward_flops(prog, input_grad=False)``. Both equal FlopCounterMode on a real backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from engine.contract.schedule import can_stream
    from engine.nn.linear import TNLinear

    d = make_template(kind, 256, 256, 3, act)
    if schedule == "stream" and not can_stream(d):
        pytest.skip("a design whose last tensor is activated only materialises")
    layer = TNLinear(d, seed=0, schedule=schedule)
    prog = compile_program(d, 24, schedule)
    for input_grad in (True, False):
        x = torch.randn(24, 256, requires_grad=input_grad)
        y = layer(x)
        with FlopCounterMode(display=False) as counter:
            y.sum().backward()
        assert backward_flops(prog, input_grad) == counter.get_total_flops(), input_grad
    assert backward_flops(prog, False) < backward_flops(prog, True)
