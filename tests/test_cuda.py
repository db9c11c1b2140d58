"""On a CUDA device (skipped without one; `pytest -m cuda`): TNLinear and TNConv2d forward and backward agree with
the CPU, a sliced program (memory budget) agrees with the unsliced one and its FLOPs with FlopCounterMode, and a
short training run on digits completes on the GPU. benchmarks/gpu_suite.sh runs these on a lent GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.contract.flops import backward_flops
from engine.design.model import save_design
from engine.design.templates import make_template
from engine.nn.linear import TNLinear

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind,act", [("mpo", None), ("ttn", "gelu"), ("attn", "gelu"), ("mera", "gelu"),
                                      ("tensor_ring", None), ("cp", None), ("tucker", None)])
def test_tnlinear_forward_backward_matches_the_cpu(kind, act):
    d = make_template(kind, 256, 192, 3, act)
    cpu = TNLinear(d, seed=0, dtype=torch.float64)
    gpu = TNLinear(d, seed=0, dtype=torch.float64, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    for batch in (1, 37):
        x = torch.randn(batch, 256, dtype=torch.float64)
        xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
        yc, yg = cpu(xc), gpu(xg)
        assert yg.is_cuda
        torch.testing.assert_close(yg.cpu(), yc, rtol=1e-9, atol=1e-9)
        yc.square().sum().backward()
        yg.square().sum().backward()
        torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-8, atol=1e-9)
        for (k, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
            assert pg.grad is not None and pg.grad.is_cuda, k
            torch.testing.assert_close(pg.grad.cpu(), pc.grad, rtol=1e-7, atol=1e-8)
            pc.grad = pg.grad = None


def test_sliced_program_on_cuda():
    d = make_template("mera", 1024, 1024, 2, "gelu")
    free = TNLinear(d, seed=0, dtype=torch.float64, device="cuda")
    lean = TNLinear(d, seed=0, dtype=torch.float64, device="cuda", memory_budget="12MiB")
    lean.load_state_dict(free.state_dict())
    prog = lean.program(16)
    assert prog.slicing is not None
    x = torch.randn(16, 1024, dtype=torch.float64, device="cuda")
    torch.testing.assert_close(lean(x), free(x), rtol=1e-12, atol=1e-12)
    with FlopCounterMode(display=False) as fc:
        y = lean(x.requires_grad_())
        y.backward(torch.ones_like(y))
    assert fc.get_total_flops() == prog.flops + backward_flops(prog)


def test_tnconv2d_forward_backward_on_cuda():
    conv = pytest.importorskip("engine.nn.conv")
    from engine.design.conv import make_conv_template

    d = make_conv_template("mpo", 12, 16, 3, 3, padding=1)
    cpu = conv.TNConv2d(d, seed=0, dtype=torch.float64)
    gpu = conv.TNConv2d(d, seed=0, dtype=torch.float64, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(4, 12, 16, 16, dtype=torch.float64)
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    yc, yg = cpu(xc), gpu(xg)
    torch.testing.assert_close(yg.cpu(), yc, rtol=1e-9, atol=1e-9)
    yc.sum().backward()
    yg.sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-8, atol=1e-9)


def test_a_short_training_run_on_cuda(tmp_path):
    d = make_template("ttn", 256, 256, 4, "gelu")
    f = tmp_path / "ttn.json"
    save_design(d, f)
    env = dict(os.environ, TNSTUDIO_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "engine.cli", "train", str(f), "--dataset", "digits", "--epochs", "2",
           "--device", "cuda"]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = subprocess.run([sys.executable, "-m", "engine.cli", "runs", "list", "--json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    runs = json.loads(out.stdout)
    assert runs and runs[0]["status"] == "completed", runs
    assert "cuda" in json.dumps(runs[0])
