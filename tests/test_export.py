"""Export: the standalone torch module matches TNLinear, runs with torch only, and the CLI writes every format."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from engine.cli import main as cli_main
from engine.design.model import Design, save_design
from engine.nn.export import (flops_by_batch, layer_state_dict, stream_variants, to_snippet, to_torch_source,
                           write_export)
from engine.nn.linear import TNLinear
from engine.contract.program import compile_program
from engine.contract.schedule import can_stream
from engine.design.templates import make_template

try:
    from tests.drawn import all_offset_design, nonlinear_drawn
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from drawn import all_offset_design, nonlinear_drawn

IN, OUT = 64, 12
FACTORS = {"in_factors": [4, 4, 4], "out_factors": [2, 2, 3]}
CASES = [(k, None) for k in ("mpo", "tensor_ring", "tucker", "cp", "ttn", "attn", "mera", "delta_cp")] + [
    ("mpo", "tanh"), ("tensor_ring", "relu"), ("ttn", "gelu"), ("attn", "sigmoid"), ("mera", "silu"),
    ("delta_cp", "tanh"), ("mpo_13_legs", "gelu"), ("mpo_last_act", "tanh")]
BATCHES = (1, 5, 300)

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site, cwd a temp folder) with the project's packages
# blocked, so the exported files can only use torch.
FRESH_SCRIPT = textwrap.dedent("""\
    import importlib.util, json, sys
    for name in ("engine", "studio", "numpy", "opt_einsum", "cotengra"):
        sys.modules[name] = None  # importing any of these now raises ImportError
    import torch
    jobs = json.load(open(sys.argv[1]))
    for job in jobs:
        spec = importlib.util.spec_from_file_location(job["name"], job["module"])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        layer = mod.Layer()
        layer.load_state_dict(torch.load(job["state"], weights_only=True))
        xs = torch.load(job["inputs"], weights_only=True)
        out = {"keys": sorted(layer.state_dict())}
        with torch.no_grad():
            for k, x in xs.items():
                out["forward", k] = layer(x)
                if x.dim() == 2:
                    out["materialise", k] = layer.forward_materialise(x) + layer.bias
                    if hasattr(layer, "forward_stream"):
                        out["stream", k] = layer.forward_stream(x) + layer.bias
                        out["schedule", k] = layer.schedule(x.shape[0])
        torch.save(out, job["outputs"])
    print("ok", len(jobs))
""")


def _delta_cp(act):
    """CP written with a copy tensor joining four rank bonds (a ``delta`` tensor: a fixed buffer in TNLinear)."""
    legs = {"i0": ("in", 0, 4), "i1": ("in", 1, 16), "o0": ("out", 0, 3), "o1": ("out", 1, 4)}
    indices = {k: {"dim": d, "role": r, "axis": a} for k, (r, a, d) in legs.items()}
    indices |= {f"r{k}": {"dim": 3, "role": "bond"} for k in range(4)}
    tensors = [{"id": f"A.{leg}", "indices": [leg, f"r{k}"], "activation": act if k == 0 else None}
               for k, leg in enumerate(legs)]
    tensors.append({"id": "copy", "indices": ["r0", "r1", "r2", "r3"], "kind": "delta"})
    return Design.from_dict({"format": "tnstudio-design", "version": 1, "name": "delta cp",
                             "target": {"kind": "linear", "in_features": IN, "out_features": OUT},
                             "indices": indices, "tensors": tensors})


def _design(kind, act):
    if kind == "delta_cp":
        return _delta_cp(act)
    if kind == "mpo_last_act":  # the last tensor absorbed is activated: W must be materialised
        d = make_template("mpo", IN, OUT, 3, activation=act, **FACTORS)
        d.tensor(d.evaluation_order()[-1]).activation = act
        return d
    if kind == "mpo_13_legs":  # W's tensor has 13 legs: torch's gelu kernel needs the exported flat-view workaround
        return make_template("mpo", 128, 64, 2, activation=act, in_factors=[2] * 7, out_factors=[2] * 6)
    return make_template(kind, IN, OUT, 3, activation=act, **FACTORS)


def _random_layer(design, seed):
    torch.manual_seed(seed)
    layer = TNLinear(design)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return layer


def _numpy_dense_weight(design, cores):
    """W contracted in one numpy einsum over the whole network (linear designs): independent of the program."""
    letters = {name: chr(ord("a") + n) for n, name in enumerate(design.indices)}
    ins = ",".join("".join(letters[i] for i in t.indices) for t in design.tensors)
    out = "".join(letters[i] for i in design.in_legs + design.out_legs)
    arrays = [cores[t.id].detach().double().numpy() for t in design.tensors]
    return np.einsum(f"{ins}->{out}", *arrays, optimize=True).reshape(design.in_features, design.out_features)


@pytest.fixture(scope="module")
def fresh_results(tmp_path_factory):
    """Export every case, run them all in one fresh torch-only interpreter, return (cases, results)."""
    tmp = tmp_path_factory.mktemp("export")
    jobs, cases = [], []
    for n, (kind, act) in enumerate(CASES):
        d = _design(kind, act)
        layer = _random_layer(d, n)
        mod, state, inp, outp = (tmp / f"m{n}.py", tmp / f"m{n}.pt", tmp / f"x{n}.pt", tmp / f"y{n}.pt")
        mod.write_text(to_torch_source(d))
        torch.save(layer.state_dict(), state)
        g = torch.Generator().manual_seed(100 + n)
        xs = {b: torch.randn(b, d.in_features, generator=g) for b in BATCHES}
        xs["lead"] = torch.randn(2, 3, d.in_features, generator=g)
        torch.save(xs, inp)
        jobs.append({"name": f"m{n}", "module": str(mod), "state": str(state), "inputs": str(inp),
                     "outputs": str(outp)})
        cases.append((kind, act, d, layer, xs, outp))
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    (tmp / "run.py").write_text(FRESH_SCRIPT)
    proc = subprocess.run([sys.executable, "-I", str(tmp / "run.py"), str(tmp / "jobs.json")], cwd=tmp,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [(c, torch.load(c[-1], weights_only=False)) for c in cases]


@pytest.mark.parametrize("n", range(len(CASES)), ids=[f"{k}-{a or 'linear'}" for k, a in CASES])
def test_exported_module_matches_tnlinear_in_fresh_interpreter(fresh_results, n):
    (kind, act, d, layer, xs, _), res = fresh_results[n]
    assert res["keys"] == sorted(layer.state_dict())  # same parameter names as TNLinear
    with torch.no_grad():
        for k, x in xs.items():
            want = layer(x)
            torch.testing.assert_close(res["forward", k], want, rtol=1e-4, atol=1e-5)
            if x.dim() == 2:
                torch.testing.assert_close(res["materialise", k], want, rtol=1e-4, atol=1e-5)
                if can_stream(d):
                    torch.testing.assert_close(res["stream", k], want, rtol=1e-4, atol=1e-5)
                else:
                    assert ("stream", k) not in res
    if d.is_linear:  # and both agree with a plain numpy contraction of the whole network
        w = _numpy_dense_weight(d, layer.core_tensors())
        x = xs[5].double().numpy()
        np.testing.assert_allclose(res["forward", 5].double().numpy(), x @ w + layer.bias.detach().double().numpy(),
                                   rtol=1e-4, atol=1e-5)


def test_every_schedule_is_exercised(fresh_results):
    picked = {res["schedule", b] for (c, res) in fresh_results if can_stream(c[2]) for b in BATCHES}
    assert picked == {"stream", "materialise"}


def test_exported_file_imports_only_torch():
    for kind, act in CASES:
        tree = ast.parse(to_torch_source(_design(kind, act)))
        mods = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        mods |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert mods <= {"torch", "math", "typing", "__future__"}, (kind, mods)


@pytest.mark.parametrize("kind, act, streams", [("mpo_last_act", "tanh", False), ("mera", "relu", True),
                                                   ("tucker", None, True)])
def test_export_has_one_einsum_per_program_step_and_a_header(kind, act, streams):
    d = _design(kind, act)
    assert can_stream(d) == streams  # mera relu: W is linear in what follows the last activation, so x streams
    src = to_torch_source(d)
    progs = [compile_program(d, 64, "materialise")] + (list(stream_variants(d)[0].values()) if streams else [])
    steps = [s for prog in progs for s in prog.steps if s.op == "einsum" and not s.is_identity]
    assert src.count("torch.einsum(") == len(steps)
    for s in steps:
        assert f'torch.einsum("{s.equation}"' in src
    assert d.name in src and f"{d.params:,} core params" in src and "compression" in src
    assert ("forward_stream" in src) == streams


@pytest.mark.parametrize("kind", ["mpo", "tensor_ring", "tucker", "cp", "mera"])
@pytest.mark.parametrize("size", [(IN, OUT, 3), (1024, 1024, 8)])
def test_exported_schedule_follows_the_engine(kind, size):
    d = make_template(kind, *size)
    ns: dict = {}
    exec(compile(to_torch_source(d), "<export>", "exec"), ns)
    layer = ns["Layer"]
    for batch in (1, 3, 16, 100, 1024):
        engine_prog = compile_program(d, batch, "auto")
        ours = layer.flops(layer.plan(batch), batch)
        # never more FLOPs than the engine; a path the engine planned at another batch size can be cheaper here
        # than the one its heuristic search finds at this one, else the choice is the engine's
        assert ours <= engine_prog.flops
        if ours == engine_prog.flops:
            assert layer.schedule(batch) == engine_prog.schedule
    a, b = flops_by_batch(compile_program(d, 64, "materialise"))
    assert layer.SCHEDULE_FLOPS["materialise"] == (a, b)
    assert all(a + b * n == compile_program(d, n, "materialise").flops for n in (1, 7, 300))


def test_layer_state_dict_finds_the_layer_in_a_model():
    d = _design("mpo", None)
    model = torch.nn.Sequential(torch.nn.Linear(10, IN), TNLinear(d), torch.nn.ReLU())
    got = layer_state_dict(model.state_dict(), d)
    assert sorted(got) == sorted(model[1].state_dict())
    assert all(torch.equal(got[k], v) for k, v in model[1].state_dict().items())
    with pytest.raises(ValueError, match="no layer with the cores"):
        layer_state_dict(torch.nn.Linear(3, 4).state_dict(), d)
    model.tn_layer = model[1]  # the same layer under a second name (as engine.models registers it): one layer
    assert sorted(layer_state_dict(model.state_dict(), d)) == sorted(model[1].state_dict())
    two = torch.nn.Sequential(_random_layer(d, 1), _random_layer(d, 2))
    with pytest.raises(ValueError, match="2 layers"):
        layer_state_dict(two.state_dict(), d)
    assert torch.equal(layer_state_dict(two.state_dict(), d, prefix="1")["bias"], two[1].bias)


def test_snippet_runs_with_the_engine(tmp_path):
    d = _design("tucker", None)
    layer = _random_layer(d, 7)
    paths = write_export(d, "snippet", tmp_path / "use.py", weights=layer.state_dict())
    assert [p.name for p in paths] == ["use.py", "use.design.json", "use.pt"]
    ns: dict = {}
    code = (tmp_path / "use.py").read_text()
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "use.py", "exec"), ns)
    finally:
        os.chdir(cwd)
    x = torch.randn(4, IN)
    with torch.no_grad():
        torch.testing.assert_close(ns["layer"](x), layer(x))
    assert "TNLinear(load_design(" in to_snippet(d)


def test_cli_export_all_formats_with_weights(tmp_path, capsys):
    d = _design("mpo", "tanh")
    save_design(d, tmp_path / "d.json")
    layer = _random_layer(d, 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), layer)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    rc = cli_main(["export", str(tmp_path / "d.json"), "--to", "torch", "-o", str(tmp_path / "out" / "layer.py"),
                   "--weights", str(tmp_path / "model.pt")])
    assert rc == 0
    ns: dict = {}
    exec(compile((tmp_path / "out" / "layer.py").read_text(), "layer.py", "exec"), ns)
    m = ns["Layer"]()
    m.load_state_dict(torch.load(tmp_path / "out" / "layer.pt", weights_only=True))
    x = torch.randn(3, IN)
    with torch.no_grad():
        torch.testing.assert_close(m(x), layer(x), rtol=1e-4, atol=1e-5)
    assert cli_main(["export", str(tmp_path / "d.json"), "--to", "json", "-o", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text()) == d.to_dict()
    capsys.readouterr()
    assert cli_main(["export", str(tmp_path / "d.json"), "--to", "snippet"]) == 0
    assert "TNLinear(load_design(HERE / 'design.json'))" in capsys.readouterr().out


def test_cli_export_errors_are_clear(tmp_path, capsys):
    d = _design("cp", None)
    save_design(d, tmp_path / "d.json")
    assert cli_main(["export", str(tmp_path / "missing.json")]) == 2
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    assert cli_main(["export", str(tmp_path / "d.json"), "-o", str(tmp_path / "o.py"), "--weights",
                     str(tmp_path / "w.pt")]) == 2
    assert "no layer with the cores" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "d.json"), "--weights", str(tmp_path / "w.pt")]) == 2
    assert "needs -o" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "d.json"), "-o", str(tmp_path / "o.py"), "--run", "99"]) == 2
    assert "no run" in capsys.readouterr().err


def test_cli_export_run_weights_from_the_run_store(tmp_path, capsys):
    from engine.train.store import RunStore

    d = _design("ttn", "gelu")
    layer = _random_layer(d, 11)
    model = torch.nn.Sequential(torch.nn.Linear(8, IN), torch.nn.ReLU(), layer)
    store = RunStore()  # the test's own TNSTUDIO_HOME
    run_id = store.create_run({"dataset": "digits", "model": "mlp"}, d)
    ckpt = store.run_dir(run_id) / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "step": 5}, ckpt)
    assert cli_main(["export", "-o", str(tmp_path / "trained.py"), "--run", run_id[:4]]) == 2  # no checkpoint yet
    assert "no checkpoint" in capsys.readouterr().err
    store.update(run_id, checkpoint=str(ckpt))
    assert cli_main(["export", "-o", str(tmp_path / "trained.py"), "--run", run_id[:4]]) == 0  # run's own design
    src = (tmp_path / "trained.py").read_text()
    assert f"run {run_id}" in src
    ns: dict = {}
    exec(compile(src, "trained.py", "exec"), ns)
    m = ns["Layer"]()
    m.load_state_dict(torch.load(tmp_path / "trained.pt", weights_only=True))
    x = torch.randn(6, IN)
    with torch.no_grad():
        torch.testing.assert_close(m(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind, n_in, n_out, bond", [("tucker", 100, 60, 8), ("cp", 120, 90, 7), ("mpo", 256, 256, 4),
                                                     ("tensor_ring", 96, 80, 3)])
def test_the_exported_module_runs_the_engines_program_at_every_batch(kind, n_in, n_out, bond, tmp_path):
    """The export carried the stream paths planned at 1, 4, 16, ..., 4096 and ran the cheapest of them, while the
    engine searched each batch afresh: at batch 6 a Tucker export ran 14.6% more FLOPs than TNLinear and the cost
    report. The engine now searches a batch's stream path at its power-of-two bucket, and the export carries every
    bucket's path: the same steps and FLOPs at every batch."""
    import importlib.util

    from engine.contract.program import path_batch

    d = make_template(kind, n_in, n_out, bond)
    path = tmp_path / "m.py"
    path.write_text(to_torch_source(d))
    spec = importlib.util.spec_from_file_location("exported_m", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cls = next(v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
               and v is not torch.nn.Module)
    variants = dict(stream_variants(d)[0])
    for batch in list(range(1, 130)) + [255, 256, 257, 1000, 4095, 4096, 4097, 10 ** 5]:
        engine = compile_program(d, batch, "auto")
        picked = cls.plan(batch)
        assert cls.flops(picked, batch) == engine.flops, (batch, picked)
        assert ("materialise" if picked == "materialise" else "stream") == engine.schedule, batch
        if picked != "materialise":
            steps = [(s.op, s.inputs, s.in_indices, s.out_indices) for s in variants[picked].steps]
            assert steps == [(s.op, s.inputs, s.in_indices, s.out_indices) for s in engine.steps], batch
            assert cls.STREAM_BY_BUCKET[path_batch(batch)] == picked


def test_a_snippet_runs_from_any_working_folder(tmp_path):
    """A snippet loaded its design and weights relative to the working folder: `python sub/use.py` failed."""
    sub = tmp_path / "sub"
    d = make_template("mpo", 12, 6, 2)
    layer = TNLinear(d, seed=0)
    write_export(d, "snippet", sub / "use.py", weights=layer.state_dict())
    code = "import runpy, sys; ns = runpy.run_path(sys.argv[1]); print(float(ns['layer'].bias.sum()))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", code, str(Path("sub") / "use.py")], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert abs(float(r.stdout.split()[-1]) - float(layer.bias.sum())) < 1e-6  # the saved weights, not fresh ones


@settings(max_examples=10, deadline=None)
@given(data=nonlinear_drawn())
def test_exported_random_nonlinear_designs_run_the_engines_program(data, tmp_path_factory):
    """Beyond the templates: a random hand-drawn nonlinear design's exported module, loaded from its file with
    TNLinear's state dict, gives TNLinear's outputs (float64) and runs its FLOPs (FlopCounterMode) at batches 1-64."""
    import importlib.util

    from torch.utils.flop_counter import FlopCounterMode

    d = Design.from_dict(data)
    path = tmp_path_factory.mktemp("drawn") / "m.py"
    path.write_text(to_torch_source(d))
    spec = importlib.util.spec_from_file_location("exported_drawn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ref = TNLinear(d, seed=0).double()
    layer = mod.Layer().double()
    layer.load_state_dict(ref.state_dict())
    for batch in (1, 3, 8, 17, 64):
        x = torch.randn(batch, d.in_features, dtype=torch.float64)
        with FlopCounterMode(display=False) as theirs:
            y = layer(x)
        with FlopCounterMode(display=False) as ours:
            y_ref = ref(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        assert theirs.get_total_flops() == ours.get_total_flops(), batch


# Draws each seed's cores in the exported module (fresh interpreter, torch only) and, beside it, the first draw a
# module without the dead-W check makes; prints JSON {seed: [W all zero, the cores but INIT_LAST equal the first
# draw, std(W) / nn.Linear's]}.
DEAD_DRAW_SCRIPT = textwrap.dedent("""\
    import importlib.util, json, math, sys
    for name in ("engine", "studio", "numpy", "opt_einsum", "cotengra"):
        sys.modules[name] = None
    import torch
    spec = importlib.util.spec_from_file_location("m", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    meta = mod.Layer(device="meta")
    out = {}
    for seed in range(int(sys.argv[2])):
        torch.manual_seed(seed)
        first = {k: torch.empty(s) for k, s in mod.Layer.CORE_SHAPES.items()}
        for k, t in first.items():
            meta.draw_core(k, t)
        torch.manual_seed(seed)
        layer = mod.Layer()
        with torch.no_grad():
            W = layer.weight()
        same = all(torch.equal(layer.cores[k].detach(), first[k]) for k in first if k != mod.Layer.INIT_LAST)
        out[seed] = [not bool(W.any()), same, float(W.std()) * math.sqrt(3 * mod.Layer.in_features)]
    print(json.dumps({"seeds": out, "meta": str(next(iter(meta.cores.values())).device)}))
""")


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_an_exported_module_draws_a_dead_w_again(activation, tmp_path):
    """A design whose relu can zero every entry of W (1 in 15 draws did, in the export as in the engine before):
    its exported module, run in a fresh torch-only interpreter, never starts with a W of zeros over 200 seeds; a
    seed whose first draw is live keeps that draw (only its last core calibrated, so only dead draws change), and a
    module on the meta device (no values) is built without a check. A design without such an activation draws
    once. Every W has nn.Linear's std, as the engine's: this design's W is all offset (the mean is kept)."""
    d = Design.from_dict(all_offset_design(0, activation))
    path = tmp_path / "m.py"
    path.write_text(to_torch_source(d))
    (tmp_path / "run.py").write_text(DEAD_DRAW_SCRIPT)
    proc = subprocess.run([sys.executable, "-I", str(tmp_path / "run.py"), str(path), "200"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    seeds = res["seeds"]
    assert not [s for s, (dead, _, _) in seeds.items() if dead]
    redrawn = [s for s, (_, same, _) in seeds.items() if not same]
    assert 2 <= len(redrawn) <= 40  # the first draw was dead there (13 and 20 of 200 seeds when measured)
    assert all(abs(ratio - 1) < 1e-4 for _, _, ratio in seeds.values())
    assert res["meta"] == "meta"
    assert "INIT_DRAWS = 16" in path.read_text()
    gelu_only = Design.from_dict({**all_offset_design(1, activation),
                                  "tensors": [{**t, "activation": "gelu" if t["activation"] else None}
                                              for t in all_offset_design(1, activation)["tensors"]]})
    assert "INIT_DRAWS = 1 " in to_torch_source(gelu_only)


def _relu_everywhere(data: dict) -> dict:
    """The drawn design with every activation a relu (the activation that can zero W)."""
    return {**data, "tensors": [{**t, "activation": "relu" if t.get("activation") else None}
                                for t in data["tensors"]]}


@settings(max_examples=10, deadline=None)
@given(data=nonlinear_drawn().map(_relu_everywhere))
def test_exported_relu_designs_start_with_a_live_w(data, tmp_path_factory):
    """Random hand-drawn designs whose activations are all relus: where the engine's initialisation gives a live W
    (not all zero) at each of 8 seeds, the exported module does at each of 24 seeds (its own Gaussian draws, drawn
    again while W is all zero); a design whose relus cannot zero W draws once."""
    import importlib.util

    from hypothesis import assume

    d = Design.from_dict(data)
    assume(not d.is_linear)
    path = tmp_path_factory.mktemp("relu") / "m.py"
    path.write_text(to_torch_source(d))
    spec = importlib.util.spec_from_file_location("exported_relu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.Layer.INIT_DRAWS == 16
    with torch.no_grad():
        engine_live = all(bool(TNLinear(d, seed=s).weight().any()) for s in range(8))
        dead = []
        for seed in range(24):
            torch.manual_seed(seed)
            if not bool(mod.Layer().weight().any()):
                dead.append(seed)
    if engine_live:
        assert not dead


def _exported_class(source: str, path: Path) -> type:
    import importlib.util

    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Layer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_exported_layers_keep_autocasts_dtype_like_the_engine(dtype, tmp_path):
    """Under autocast the exported modules added a float32 bias to the low-precision y, so they returned float32
    (and values off by the rounding of that add) where TNLinear, TNConv2d, nn.Linear and nn.Conv2d return the
    autocast dtype."""
    from engine.design.conv import make_conv_template
    from engine.nn.conv import TNConv2d
    from engine.nn.conv_export import to_conv_torch_source

    d = make_template("mpo", 16, 12, 2, in_factors=[4, 4], out_factors=[3, 4])
    layer = TNLinear(d, seed=1)
    ex = _exported_class(to_torch_source(d), tmp_path / "lin.py")()
    ex.load_state_dict(layer.state_dict())
    dc = make_conv_template("cp", 8, 6, 3, 4, padding=1)
    conv = TNConv2d(dc, seed=1)
    exc = _exported_class(to_conv_torch_source(dc), tmp_path / "conv.py")()
    exc.load_state_dict(conv.state_dict())
    x, xc = torch.randn(4, 16), torch.randn(2, 8, 5, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        pairs = [(ex(x), layer(x), torch.nn.Linear(16, 12)(x)), (exc(xc), conv(xc), torch.nn.Conv2d(8, 6, 3)(xc))]
    for got, engine, dense in pairs:
        assert engine.dtype == dense.dtype == dtype
        assert got.dtype == dtype
        torch.testing.assert_close(got, engine, rtol=0, atol=0)


class _ActivationInputs(torch.overrides.TorchFunctionMode):
    """Records the RMS of every activation's input (the exported modules call F.* and torch.* activations)."""

    FUNCS = {torch.nn.functional.gelu, torch.nn.functional.relu, torch.tanh, torch.sigmoid}

    def __init__(self) -> None:
        super().__init__()
        self.rms: list[float] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.FUNCS:
            self.rms.append(float(args[0].detach().double().pow(2).mean().sqrt()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("make", [
    lambda: (make_template("mpo", 251, 7, 2, "gelu"), {}),
    lambda: (make_template("ttn", 256, 256, 2, "relu"), {}),
    lambda: (make_template("mera", 256, 256, 2, "gelu"), {}),
    lambda: (make_template("attn", 256, 256, 2, "tanh"), {}),
    lambda: (make_template("mera", 1024, 1024, 2, "gelu"), {"memory_budget": 12 << 20}),
    lambda: (__import__("engine.design.conv", fromlist=["x"]).make_conv_template("ttn", 16, 16, 3, 2, "gelu"), {}),
], ids=["mpo-gelu-251x7", "ttn-relu", "mera-gelu", "attn-tanh", "mera-gelu-budget", "conv-ttn-gelu"])
def test_a_fresh_exported_nonlinear_module_gets_nn_linears_scale_like_the_engine(make, tmp_path):
    """The exported module drew every core as a Gaussian at the engine's seed-0 stds, without the engine's
    calibration: W's std was 3.5-16x nn.Linear's for a gelu MPO (251x7) and 0.7-2.9x for a relu TTN, with a large
    mean (positive activations). It now draws as the engine does (orthogonal isometries, near-identity
    disentanglers) and calibrates the last tensor: mean(W) = 0 and std(W) = 1 / sqrt(3 fan-in) at every seed, as
    TNLinear / TNConv2d give; each activation's input keeps about the unit RMS the engine gives it exactly."""
    from engine.nn.conv_export import to_conv_torch_source

    d, kw = make()
    conv = d.conv is not None
    cls = _exported_class(to_conv_torch_source(d) if conv else to_torch_source(d, **kw), tmp_path / "m.py")
    from engine.nn.init import DISENTANGLER_NOISE

    assert cls.INIT_LAST is not None and cls.INIT_NOISE == DISENTANGLER_NOISE
    kinds = {t.kind for t in d.tensors}
    assert ("orthogonal" in cls.INIT_KIND.values()) == ("isometry" in kinds)
    assert ("near_identity" in cls.INIT_KIND.values()) == ("disentangler" in kinds)
    target = 1 / np.sqrt(3 * cls.in_features)
    pre: list[float] = []
    for seed in range(6):
        torch.manual_seed(seed)
        layer = cls()
        with torch.no_grad(), _ActivationInputs() as rec:
            W = layer.weight().double()
        pre += rec.rms
        assert abs(float(W.std()) / target - 1) < 1e-4, seed
        assert abs(float(W.mean())) < 1e-4 * float(W.std()), seed
        for key, kind in cls.INIT_KIND.items():
            if kind == "orthogonal":  # orthonormal columns (or rows) up to one scale
                m = layer.cores[key].detach().double().reshape(-1, layer.cores[key].shape[-1])
                g = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
                scale = g.diagonal().mean()
                torch.testing.assert_close(g / scale, torch.eye(len(g), dtype=g.dtype), rtol=0, atol=1e-5)
    if not kw:  # (a sliced generation's activations see one slice at a time)
        assert pre and 0.4 < min(pre) and max(pre) < 2.5, (min(pre), max(pre))
    else:  # construction stays within the budget (float64 copies of W for its RMS and std had taken 20 MiB of 12)
        from engine.nn.measure import peak_bytes

        assert peak_bytes(lambda: cls()) <= 1.1 * kw["memory_budget"]


def test_exported_layers_refuse_inputs_of_another_width_like_the_engine(tmp_path):
    """The exported conv module read x.reshape(-1, C_in, H, W): a 12-channel input to a 6-channel layer came back
    as twice the batch, silently (nn.Conv2d and TNConv2d refuse it), and a 2-D input raised an IndexError. Both
    exported modules (and each conv program) now refuse another width with TNLinear's / TNConv2d's message."""
    from engine.design.conv import make_conv_template
    from engine.nn.conv import TNConv2d
    from engine.nn.conv_export import to_conv_torch_source

    dc = make_conv_template("cp", 6, 4, 3, 4, padding=1)
    exc = _exported_class(to_conv_torch_source(dc), tmp_path / "conv.py")()
    exc.load_state_dict(TNConv2d(dc, seed=0).state_dict())
    for bad in (torch.randn(2, 12, 9, 9), torch.randn(12, 9, 9), torch.randn(9, 9), torch.randn(2, 3, 9, 9)):
        with pytest.raises(ValueError, match=r"expects inputs \(B, 6, H, W\) or \(6, H, W\), got shape"):
            exc(bad)
        for key in exc.PROGRAM_FLOPS:
            with pytest.raises(ValueError, match="expects inputs"):
                getattr(exc, "forward_" + key)(bad if bad.dim() == 4 else bad.reshape(1, -1, 9, 9)[:, :3])
    assert exc(torch.randn(2, 6, 9, 9)).shape == (2, 4, 9, 9) and exc(torch.randn(6, 9, 9)).shape == (4, 9, 9)
    d = make_template("mpo", 16, 12, 2, in_factors=[4, 4], out_factors=[3, 4])
    ex = _exported_class(to_torch_source(d), tmp_path / "lin.py")()
    for bad in (torch.randn(4, 8), torch.randn(4, 32), torch.tensor(1.0)):
        with pytest.raises(ValueError, match=r"expects inputs with last dimension 16, got shape"):
            ex(bad)
    assert ex(torch.randn(3, 5, 16)).shape == (3, 5, 12)
