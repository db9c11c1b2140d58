"""One program, whatever ran before: for a design, batch and schedule the compiled program is a pure function of
them (fresh processes, batches compiled in random orders, other hash seeds: identical programs), the cost report,
TNLinear and the exported module share one tie-break (program_rank), and the cost report's FLOPs equal
FlopCounterMode's around TNLinear's forward after arbitrary earlier batches."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.contract.cache import clear_cache
from engine.contract.cost import cost_report
from engine.contract.program import compile_program, pick_program, program_rank
from engine.design.model import Design
from engine.design.templates import TEMPLATE_KINDS, make_template
from engine.nn.export import to_torch_source
from engine.nn.linear import TNLinear

ROOT = Path(__file__).resolve().parents[1]
BATCHES = [1, 5, 64, 300]


def mixed_tree() -> Design:
    """A hand-drawn 3-level tree with mixed bonds and leg sizes (the issue's case: a TNLinear that had run batch 1
    or 5 used to run a worse path at 64 than the cost report priced)."""
    legs = {"i0": 4, "i1": 3, "i2": 4, "i3": 2, "o0": 2, "o1": 3, "o2": 2, "o3": 4}
    idx = {k: {"dim": v, "role": k[0] == "i" and "in" or "out", "axis": int(k[1])} for k, v in legs.items()}
    idx |= {k: {"dim": v, "role": "bond"} for k, v in {"a0": 2, "a1": 5, "a2": 3, "a3": 4, "b0": 6, "b1": 2}.items()}
    t = [{"id": f"L{n}", "indices": [f"i{n}", f"o{n}", f"a{n}"]} for n in range(4)]
    t += [{"id": "N0", "indices": ["a0", "a1", "b0"], "activation": "gelu"},
          {"id": "N1", "indices": ["a2", "a3", "b1"]}, {"id": "top", "indices": ["b0", "b1"]}]
    return Design.from_dict({"format": "tnstudio-design", "version": 1, "name": "mixed tree",
                             "target": {"kind": "linear", "in_features": 96, "out_features": 48}, "indices": idx,
                             "tensors": t, "root": "top"})


def single_tensor() -> Design:
    """One tensor holding every leg: materialise and stream cost the same FLOPs (the issue's tie)."""
    idx = {"i0": {"dim": 8, "role": "in", "axis": 0}, "o0": {"dim": 6, "role": "out", "axis": 0}}
    return Design.from_dict({"format": "tnstudio-design", "version": 1, "name": "single",
                             "target": {"kind": "linear", "in_features": 8, "out_features": 6}, "indices": idx,
                             "tensors": [{"id": "A", "indices": ["i0", "o0"]}]})


def mixed_ring() -> Design:
    d = make_template("tensor_ring", 96, 48, [2, 5, 3], in_factors=[4, 6, 4], out_factors=[2, 6, 4])
    return d


def hand_drawn() -> dict[str, Design]:
    return {"mixed tree": mixed_tree(), "mixed tree linear": _linear(mixed_tree()), "single": single_tensor(),
            "mixed ring": mixed_ring()}


def _linear(d: Design) -> Design:
    d = d.copy()
    for t in d.tensors:
        t.activation = None
    return d


def designs() -> dict[str, Design]:
    out = hand_drawn()
    for kind in TEMPLATE_KINDS:
        for act in (None, "gelu"):
            try:
                out[f"{kind}-{act}"] = make_template(kind, 256, 64, 3, act, in_factors=[4, 4, 4, 4],
                                                     out_factors=[2, 2, 4, 4])
            except ValueError:
                continue  # tucker and cp take no activation
    return out


SIGNATURES = textwrap.dedent("""\
    import json, random, sys
    sys.path.insert(0, sys.argv[1])
    from tests.test_one_program import BATCHES, designs
    from engine.contract.program import compile_program
    from engine.contract.schedule import can_stream
    rng = random.Random(int(sys.argv[2]))
    ds = designs()
    jobs = [(name, b, s) for name in ds for b in BATCHES for s in ("auto", "materialise", "stream")
            if s != "stream" or can_stream(ds[name])]
    rng.shuffle(jobs)
    out = {}
    for name, b, s in jobs:
        p = compile_program(ds[name], b, s)
        out[f"{name}|{b}|{s}"] = [p.schedule, p.flops] + [[st.op, list(st.inputs), [list(i) for i in st.in_indices],
                                                          list(st.out_indices)] for st in p.steps]
    # exported source is byte-for-byte the same in every process too (no set or hash order leaks into it)
    import hashlib
    from engine.design.conv import make_conv_template
    from engine.nn.conv_export import to_conv_torch_source
    from engine.nn.export import to_torch_source
    for name in ("mixed tree linear", "mera-gelu", "tucker-None"):
        out[f"export|{name}"] = hashlib.sha256(to_torch_source(ds[name]).encode()).hexdigest()
    for kind in ("cp", "tucker", "mpo", "ttn"):
        d = make_conv_template(kind, 12, 8, 3, 3, "gelu" if kind == "ttn" else None, padding=1)
        out[f"conv export|{kind}"] = hashlib.sha256(to_conv_torch_source(d).encode()).hexdigest()
    json.dump(out, open(sys.argv[3], "w"))
""")


def test_programs_are_identical_in_fresh_processes_whatever_ran_before(tmp_path):
    script = tmp_path / "sig.py"
    script.write_text(SIGNATURES)
    procs = []
    for seed in (1, 2, 3):
        env = dict(os.environ, PYTHONHASHSEED=str(seed * 17), PYTHONPATH=str(ROOT))
        args = [sys.executable, str(script), str(ROOT), str(seed), str(tmp_path / f"{seed}.json")]
        procs.append(subprocess.Popen(args, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    got = [json.loads((tmp_path / f"{seed}.json").read_text()) for seed in (1, 2, 3)]
    assert got[0].keys() == got[1].keys() == got[2].keys()
    differ = [k for k in got[0] if not got[0][k] == got[1][k] == got[2][k]]
    assert not differ, differ[:5]


@pytest.mark.parametrize("name", list(hand_drawn()) + ["mpo-None", "ttn-gelu", "mera-None", "attn-gelu", "cp-None"])
def test_cost_report_flops_equal_the_module_forward_after_other_batches(name, one_thread):
    d = designs()[name]
    rng = random.Random(name)
    clear_cache(paths=True)
    m = TNLinear(d, seed=0)
    for b in rng.sample([1, 2, 3, 5, 7, 17, 33, 100], 4):  # earlier batches, in a random order
        with torch.no_grad():
            m(torch.randn(b, d.in_features))
    compile_program(d, 3, "stream" if name != "single" else "materialise", "fast")  # and other compiles
    for batch in (64, 1, 5):
        rep = cost_report(d, batch=batch)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(torch.randn(batch, d.in_features))
        assert fc.get_total_flops() == rep.forward_flops == m.program(batch).flops, (name, batch)
        assert m.program(batch).schedule == rep.schedule


@pytest.mark.parametrize("name", ["single", "mixed tree linear", "mpo-None", "tucker-None"])
def test_one_tie_break_for_cost_report_engine_and_export(name):
    d = designs()[name]
    ns: dict = {}
    exec(compile(to_torch_source(d), "<export>", "exec"), ns)
    layer = ns["Layer"]
    for batch in (1, 4, 16, 64):
        rep = cost_report(d, batch=batch)
        progs = [compile_program(d, batch, "materialise")] + (
            [compile_program(d, batch, "stream")] if "stream" in rep.schedules else [])
        best = pick_program(progs)
        assert compile_program(d, batch, "auto") is best and rep.schedule == best.schedule
        assert layer.schedule(batch) == rep.schedule, (name, batch)
        assert layer.flops(layer.plan(batch), batch) == rep.forward_flops
    if name == "single":  # equal FLOPs at batch 1: the smaller largest intermediate wins everywhere (not W)
        m, s = (compile_program(d, 1, k) for k in ("materialise", "stream"))
        assert m.flops == s.flops and program_rank(s) < program_rank(m)
        assert cost_report(d, batch=1).schedule == "stream" == layer.schedule(1)


def test_a_module_follows_a_later_thorough_refinement():
    """The documented exception: once a thorough program exists in this process (the studio's background
    refinement), the cost report and a module that had cached the fast one both use it, never worse."""
    clear_cache(paths=True)
    d = make_template("ttn", 2 ** 8, 2 ** 8, 3, in_factors=[2] * 8, out_factors=[2] * 8)
    m = TNLinear(d, seed=0)
    fast = m.program(16)
    for sched in ("materialise", "stream"):
        compile_program(d, 16, sched, "thorough", time_budget=0.2)
    now = m.program(16)
    assert now is compile_program(d, 16, "auto") and program_rank(now) <= program_rank(fast)
    assert cost_report(d, batch=16).forward_flops == now.flops
    clear_cache(paths=True)  # leave no time-dependent program behind for later tests
