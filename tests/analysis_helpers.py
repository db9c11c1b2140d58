"""What the analysis tests share: layers with random cores and a run made by ``tnstudio train`` (imported as
``tests.analysis_helpers`` or, with tests/ on sys.path as pytest puts it, ``analysis_helpers``)."""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import torch

from engine.cli import main
from engine.design import make_template
from engine.nn import TNLinear


def random_layer(kind, in_f, out_f, bond, activation=None, seed=0, bias=False, scale=1.0):
    """(design, float64 TNLinear) of a template on legs ``in_f`` -> ``out_f`` with standard normal cores x scale."""
    d = make_template(kind, math.prod(in_f), math.prod(out_f), bond, activation, in_factors=in_f, out_factors=out_f)
    layer = TNLinear(d, seed=seed, bias=bias, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.cores.values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return d, layer


def cli(*argv: str) -> tuple[int, str]:
    """``tnstudio ARGV`` in this process: (exit status, what it printed); its stderr is dropped."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(list(argv))
    return rc, out.getvalue()


def train_mpo_run(tmp: Path) -> tuple[Path, str, Path]:
    """A 64x64 MPO (chi 4, legs 4x4x4) trained for one epoch on digits by ``tnstudio train`` (call with
    TNSTUDIO_HOME set): (runs dir, run id, design file)."""
    from engine.train.store import RunStore

    design = tmp / "mpo.json"
    assert cli("template", "mpo", "--in", "64", "--out", "64", "--bond", "4", "--in-factors", "4,4,4",
               "--out-factors", "4,4,4", "-o", str(design))[0] == 0
    runs = tmp / "runs"
    assert cli("train", str(design), "--dataset", "digits", "--epochs", "1", "--runs-dir", str(runs))[0] == 0
    (run,) = RunStore(runs).list_runs()
    assert run["status"] == "completed"
    return runs, run["id"], design
