"""Conv2d designs beyond the layer: torch-only export (fresh interpreter), tensorize, whole networks (rules, the
report against FlopCounterMode, export), training runs from the CLI (the CNN and a network file)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from engine.cli import main
from engine.contract.conv import conv_schedules
from engine.design.conv import make_conv_template
from engine.nn.conv import TNConv2d
from engine.nn.export import to_snippet, to_torch_source

FRESH = textwrap.dedent("""\
    import importlib.util, json, sys
    for name in ("engine", "studio", "numpy", "opt_einsum", "cotengra", "tensorly"):
        sys.modules[name] = None  # importing any of these now raises ImportError
    import torch
    out = {}
    for job in json.load(open(sys.argv[1])):
        spec = importlib.util.spec_from_file_location(job["name"], job["module"])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        layer = mod.Layer()
        layer.load_state_dict(torch.load(job["state"], weights_only=True))
        res = {"keys": sorted(layer.state_dict()), "programs": list(layer.PROGRAM_FLOPS)}
        with torch.no_grad():
            for k, x in torch.load(job["inputs"], weights_only=True).items():
                res["forward", k] = layer(x)
                if x.dim() == 4:
                    res["plan", k] = layer.plan(x.shape[0], x.shape[2], x.shape[3])
                    for p in layer.PROGRAM_FLOPS:
                        res[p, k] = getattr(layer, "forward_" + p)(x) + layer.bias.view(1, -1, 1, 1)
        torch.save(res, job["outputs"])
    print("ok")
""")
SIZES = {"ref": (4, 10, 9), "small": (1, 6, 5), "big": (3, 16, 12)}
CASES = [("cp", None, 1, 1), ("tucker", None, 2, 0), ("mpo", None, (2, 1), 1), ("tensor_ring", None, 1, 2),
         ("ttn", "gelu", 1, 1), ("mera", "tanh", 2, 1)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv_export")
    jobs, cases = [], []
    for n, (kind, act, stride, padding) in enumerate(CASES):
        d = make_conv_template(kind, 12, 8, 3, 3, act, stride=stride, padding=padding,
                               name=f"conv {kind} \"quoted\" \\ name\n# not code: import os" if n == 0 else None)
        torch.manual_seed(n)
        layer = TNConv2d(d, seed=n)
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        b, h, w = SIZES["ref"]
        src = to_torch_source(d, batch=b)
        mod, state, inp, outp = tmp / f"c{n}.py", tmp / f"c{n}.pt", tmp / f"x{n}.pt", tmp / f"y{n}.pt"
        mod.write_text(src)
        torch.save(layer.state_dict(), state)
        xs = {k: torch.randn(bb, 12, hh, ww) for k, (bb, hh, ww) in SIZES.items()}
        xs["unbatched"] = torch.randn(12, 7, 7)
        torch.save(xs, inp)
        jobs.append({"name": f"c{n}", "module": str(mod), "state": str(state), "inputs": str(inp),
                     "outputs": str(outp)})
        cases.append((d, layer, xs, outp, src))
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    (tmp / "run.py").write_text(FRESH)
    proc = subprocess.run([sys.executable, "-I", str(tmp / "run.py"), str(tmp / "jobs.json")], cwd=tmp,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [(c, torch.load(c[3], weights_only=False)) for c in cases]


@pytest.mark.parametrize("n", range(len(CASES)), ids=[c[0] for c in CASES])
def test_exported_conv_module_matches_tnconv2d_in_a_fresh_interpreter(exported, n):
    (d, layer, xs, _, src), res = exported[n]
    assert res["keys"] == sorted(layer.state_dict())  # TNConv2d's parameter names
    assert res["programs"] == list(conv_schedules(d))
    with torch.no_grad():
        for k, x in xs.items():
            want = layer(x)
            torch.testing.assert_close(res["forward", k], want, rtol=1e-4, atol=1e-5)
            if x.dim() == 4:
                for p in res["programs"]:  # every program, at every size
                    torch.testing.assert_close(res[p, k], want, rtol=1e-4, atol=1e-5)
    b, h, w = SIZES["ref"]
    assert res["plan", "ref"] == layer.program(b, (h, w)).schedule  # the engine's choice at the reference size
    tree = ast.parse(src)
    mods = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    mods |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert mods <= {"torch", "math", "__future__"}
    if n == 0:  # the hostile name is one string literal, never code or comment text
        assert "import os" not in "".join(line for line in src.splitlines() if not line.lstrip().startswith(
            ("DESIGN_NAME", "'", '"', "A TN")))


def test_snippet_and_cli_export_of_a_conv_design(tmp_path, capsys):
    d = make_conv_template("cp", 8, 8, 3, 2, padding=1)
    text = to_snippet(d, "d.json")
    assert "TNConv2d(load_design(HERE / 'd.json'))" in text and "torch.randn(2, 8, 32, 32)" in text
    path = tmp_path / "d.json"
    path.write_text(d.to_json())
    assert main(["export", str(path), "--to", "torch", "-o", str(tmp_path / "layer.py")]) == 0
    ns: dict = {}
    exec(compile((tmp_path / "layer.py").read_text(), "layer", "exec"), ns)
    layer = ns["Layer"]()
    assert layer(torch.randn(2, 8, 6, 6)).shape == (2, 8, 6, 6)


# ----------------------------------------------------------------------------- tensorize
def test_tensorize_swaps_conv2d_layers_and_fits_them():
    from engine.nn.tensorize import tensorize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(12, 8, 3, padding=1, bias=False), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 5 * 5, 10))
    exact = TNConv2d(make_conv_template("tucker", 12, 8, 3, 3, padding=1), seed=1)
    with torch.no_grad():
        model[2].weight.copy_(exact.weight())
    x = torch.randn(2, 3, 5, 5)
    want = model(x)
    design = make_conv_template("tucker", 12, 8, 3, 3, padding=1)
    report = tensorize(model, {"2": design})
    assert isinstance(model[2], TNConv2d) and model[2].bias is None
    assert report["2"]["method"] == "tucker" and report["2"]["relative_error"] < 1e-4
    assert report["2"]["params_after"] == design.params
    torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="module '0'.*does not fit"):
        tensorize(model, {"0": make_conv_template("cp", 3, 12, 5, 2)})
    with pytest.raises(TypeError, match="conv2d designs replace nn.Conv2d"):
        tensorize(model, {"4": make_conv_template("cp", 3, 12, 3, 2)})


# ----------------------------------------------------------------------------- whole networks
@pytest.mark.parametrize("arch,rules,batch", [
    ("lenet5", ["conv5x5:cp:4"], 2),
    ("vgg_cifar", ["conv3x3:tucker:8", "linear:ttn:4:gelu"], 2),
    ("resnet18", ["conv3x3:mpo:4:min=100000", "conv3x3:ttn:2:gelu:name=layer4.1.conv2"], 1),
])
def test_network_report_counts_tn_convs_as_flop_counter_mode_does(arch, rules, batch):
    from engine.network.build import build_network
    from engine.network.format import new_network
    from engine.network.report import network_report

    spec = new_network(arch, [3, 32, 32] if arch == "resnet18" else None, 10 if arch == "resnet18" else None)
    spec = spec.with_rules(rules)
    rep = network_report(spec, batch=batch)
    torch.manual_seed(0)
    model = build_network(spec).eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(batch, *spec.resolved_input_shape))
    assert rep.totals.forward_flops == fc.get_total_flops()
    assert rep.totals.params == sum(p.numel() for p in model.parameters())
    convs = [r for r in rep.rows if r.kind == "conv2d" and r.assignment != "dense"]
    assert convs and all(r.schedule is not None and r.template is not None for r in convs)
    assert sum(isinstance(m, TNConv2d) for m in model.modules()) == len(convs)
    assert model.network_summary["tn_layers"] == rep.totals.tn_layers


def test_network_rules_and_assignments_for_conv_layers():
    from engine.network.analysis import analyse
    from engine.network.format import NetworkError, new_network, resolve
    from engine.network.rules import RuleError, parse_rule

    spec = new_network("lenet5")
    infos = {i.name: i for i in analyse(spec).layers}
    d = parse_rule("conv5x5:cp:4:legs=1").design(infos["conv2"])
    assert d.conv is not None and (d.conv.in_channels, d.conv.out_channels, d.conv.kernel_size) == (6, 16, (5, 5))
    assert d.params == 4 * (6 + 16 + 5 + 5)
    good = make_conv_template("mpo", 6, 16, 5, 3)
    assert resolve(spec.with_layer("conv2", good), list(infos.values()))["conv2"].design.fingerprint() == \
        good.fingerprint()
    with pytest.raises(NetworkError, match="conv 5x5 6->16 but its design .* is conv 5x5 6->16 padding 1"):
        resolve(spec.with_layer("conv2", make_conv_template("mpo", 6, 16, 5, 3, padding=1)), list(infos.values()))
    with pytest.raises(RuleError, match="Conv1d layers take no TN designs"):
        parse_rule("conv1d:cp:4")
    cnn1d = new_network("cnn1d")
    res = resolve(cnn1d.with_rules(["conv:cp:4"]), analyse(cnn1d).layers)  # conv1d layers are left alone
    assert all(r.design is None for r in res.values())
    from dataclasses import replace

    from engine.network.layers import layer_kind
    from engine.network.report import _assignable

    grouped = replace(infos["conv2"], groups=2, in_features=infos["conv2"].in_features // 2)
    assert not parse_rule("conv5x5:cp:4").matches(grouped) and parse_rule("conv5x5:dense").matches(grouped)
    assert not _assignable(grouped, layer_kind("conv2d")) and _assignable(infos["conv2"], layer_kind("conv2d"))
    with pytest.raises(ValueError, match="grouped conv"):
        grouped.conv_target()


def test_network_export_inlines_tnconv2d_layers(tmp_path):
    from engine.network.build import build_network
    from engine.network.export import export_network
    from engine.network.format import new_network

    spec = new_network("lenet5").with_rules(["conv5x5:cp:4", "linear:mpo:3:min=10000"])
    torch.manual_seed(0)
    model = build_network(spec).eval()
    written = export_network(spec, tmp_path / "net.py", state_dict=model.state_dict())
    assert [p.name for p in written] == ["net.py", "net.pt"]
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""\
        import importlib.util, sys
        for name in ("engine", "numpy", "opt_einsum", "torchvision"):
            sys.modules[name] = None
        import torch
        spec = importlib.util.spec_from_file_location("net", sys.argv[1])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        net = mod.Network().eval()
        net.load_state_dict(torch.load(sys.argv[2], weights_only=True))
        with torch.no_grad():
            torch.save(net(torch.load(sys.argv[3], weights_only=True)), sys.argv[4])
    """))
    x = torch.randn(3, *spec.resolved_input_shape)
    torch.save(x, tmp_path / "x.pt")
    proc = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "net.py"), str(tmp_path / "net.pt"),
                           str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "net.py").read_text().count("forward_materialise") >= 2  # two conv layers, one MPO


# ----------------------------------------------------------------------------- training runs from the CLI
@pytest.mark.slow
def test_cnn_with_a_tn_conv_layer_trains_from_the_cli(tmp_path, capsys):
    from engine.train.store import RunStore

    design = tmp_path / "conv.json"
    assert main(["template", "cp", "--in", "32", "--out", "64", "--kernel", "3", "--padding", "1", "--bond", "8",
                 "-o", str(design)]) == 0
    runs = tmp_path / "runs"
    assert main(["train", str(design), "--model", "cnn", "--dataset", "digits", "--epochs", "2", "--baseline",
                 "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "nn.Conv2d" in out
    by_base = {r["summary"]["baseline"]: r for r in RunStore(runs).list_runs()}
    tn, base = by_base[False], by_base[True]
    assert tn["status"] == base["status"] == "completed"
    assert tn["summary"]["layer_type"] == "TNConv2d" and base["summary"]["layer_type"] == "Conv2d"
    from engine.design.templates import leg_factors

    ins, outs = leg_factors(32, 64)  # the default channel legs
    assert tn["summary"]["layer_params"] == 8 * (sum(ins) + sum(outs) + 3 + 3) + 64  # CP cores + bias
    assert tn["results"]["test_accuracy"] > 0.5  # digits: far above chance after 2 epochs


@pytest.mark.slow
def test_network_file_with_a_conv_rule_trains_from_the_cli(tmp_path, capsys):
    from engine.train.store import RunStore

    net = str(tmp_path / "l.json")
    runs = tmp_path / "runs"
    assert main(["network", "new", "lenet5", "--dataset", "synthetic_images", "-o", net]) == 0
    assert main(["network", "assign", net, "--rule", "conv5x5:cp:6"]) == 0
    assert main(["train", net, "--dataset", "synthetic_images", "--epochs", "1", "--runs-dir", str(runs)]) == 0
    (run,) = RunStore(runs).list_runs()
    assert run["status"] == "completed" and run["summary"]["tn_layers"] == 2
