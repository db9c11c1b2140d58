"""Smoke tests of examples/: each script runs as a user would run it (quick options, output to a tmp folder)."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.contract.cost import cost_report
from engine.design.model import load_design
from engine.train.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PRESETS = ROOT / "engine" / "assets" / "designs"


def run_example(name: str, *args: str, home: Path, timeout: float = 120) -> str:
    """Run ``examples/<name>`` in a subprocess; assert it exits 0 and return its stdout."""
    env = dict(os.environ, TNSTUDIO_HOME=str(home), OMP_NUM_THREADS="1")  # 1 thread: tiny layers, shared cores
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def import_example(name: str):
    """Import ``examples/<name>.py`` as a module (registered first: its dataclasses need it)."""
    key = f"example_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


# ----------------------------------------------------------------------------- paper table
def test_paper_table_writes_every_preset(tmp_path):
    out = tmp_path / "designs"
    text = run_example("paper_table.py", "--out", str(out), home=tmp_path)
    assert "compression" in text.splitlines()[0] and "train mem @64" in text.splitlines()[0]
    pt = import_example("paper_table")
    files = sorted(out.glob("*.json"))
    # 4 kinds per FC layer, plus the lateral variants inside the range: TTN + lateral on the five layers whose TTN has
    # room (not VGG-16 fc8, already near 2,000x), MERA + lateral on all six; 4 conv kinds per conv layer
    fc = sum(len(pt.kinds_for(key)) for key in pt.LAYERS)
    assert fc == 6 * 4 + 5 + 6
    assert fc + len(pt.CONV_LAYERS) * len(pt.CONV_KINDS) == len(files) == fc + 12 * 4
    for f in files:
        d = load_design(f)  # validates
        key, kind = f.stem.rsplit("_", 1)
        if key in pt.CONV_LAYERS:  # real conv designs: the layer's target, its input size recorded
            net, layer, cin, cout, k, stride, pad, side = pt.CONV_LAYERS[key]
            assert (d.conv.in_channels, d.conv.out_channels, d.conv.kernel_size, d.conv.stride, d.conv.padding) == (
                cin, cout, (k, k), (stride, stride), (pad, pad))
            assert d.meta["image"] == [side, side] and d.compression > 5 and d.is_linear == (kind != "ttn")
            assert d.to_dict()["version"] == 2
            continue
        n_in, n_out = pt.LAYERS[key][2:]
        assert (d.in_features, d.out_features) == (n_in, n_out) and d.conv is None
        assert d.is_linear == (kind == "mpo")  # the ADNTN kinds carry gelu
        assert kind.endswith("-lateral") == any(t.kind == "lateral" for t in d.tensors)
        # the brief: compression roughly 2,000x .. 77,000x for every design
        assert 1_900 <= d.compression <= 77_000, (f.name, d.compression)


def test_committed_presets_match_the_script(tmp_path):
    """engine/assets/designs must be what paper_table.py produces now (re-run it after changing a spec)."""
    pt = import_example("paper_table")
    expected = set()
    builds = [(key, kind, pt.build) for key in pt.LAYERS for kind in pt.kinds_for(key)]
    builds += [(key, kind, pt.build_conv) for key in pt.CONV_LAYERS for kind in pt.CONV_KINDS]
    for key, kind, build in builds:
        path = PRESETS / f"{key}_{kind}.json"
        expected.add(path.name)
        assert path.exists(), f"missing preset {path.name}: run examples/paper_table.py"
        preset, fresh = load_design(path), build(key, kind)
        assert preset.fingerprint() == fresh.fingerprint() and preset.name == fresh.name, path.name
    assert {p.name for p in PRESETS.glob("*.json")} == expected, "stale presets: run examples/paper_table.py"


def test_paper_table_conv_rows_are_conv_cost_report_numbers():
    from engine.contract.conv import conv_cost_report

    pt = import_example("paper_table")
    table = pt.conv_rows(["vgg16_conv5_1"], batch=64)
    assert len(table) == 1 + len(pt.CONV_KINDS) and table[0][2] == "dense"
    assert table[0][5] == f"{512 * 512 * 9:,}"  # VGG-16 conv5: a 3x3 kernel from 512 to 512 channels
    d = load_design(PRESETS / "vgg16_conv5_1_cp.json")
    rep = conv_cost_report(d, batch=64, image=14)
    row = next(r for r in table if r[2] == "CP")
    assert row[5] == f"{rep.params:,}" and row[7] == rep.program and row[8] == pt.human(rep.forward_flops)
    assert rep.params == 64 * (512 + 512 + 3 + 3)  # CP rank 64 on one factor per channel side, closed form
    assert rep.dense_forward_flops == 2 * 64 * 14 * 14 * 512 * 512 * 9  # the layer at its real input (224x224 model)


def test_paper_table_numbers_are_cost_report_numbers():
    pt = import_example("paper_table")
    table = pt.rows(["vgg16_fc6", "vgg16_fc7"], batch=64)
    assert len(table) == 2 * (1 + len(pt.KINDS) + 2)  # a dense row, then one per kind and lateral variant, per layer
    # VGG-16 fc6's TTN (5 sites, chi 5) with a lateral on level 0: one more chi^4 tensor, on leaves (1, 2)
    ttn, ttn_lat = (next(r for r in table[:7] if r[2] == label) for label in ("TTN", "TTN + lateral 0"))
    assert int(ttn_lat[5].replace(",", "")) == int(ttn[5].replace(",", "")) + 5 ** 4
    mpo_row = next(r for r in table if r[2] == "MPO" and r[3] == "4x4x8x8x4 -> 4x4x8x8x4")
    rep = cost_report(load_design(PRESETS / "vgg16_fc7_mpo.json"), batch=64)
    assert mpo_row[5] == f"{rep.params:,}" and mpo_row[8] == pt.human(rep.forward_flops)
    # MPO-Net (Gao et al. 2020): VGG-16 fc7 as [4,4,8,8,4] x [4,4,8,8,4] with ranks 4 has 2,432 parameters
    assert rep.params == 2_432
    # and the same count in closed form: sum over cores of r_left * i_n * o_n * r_right
    ranks = [1, 4, 4, 4, 4, 1]
    assert rep.params == sum(ranks[n] * f * f * ranks[n + 1] for n, f in enumerate([4, 4, 8, 8, 4]))
    dense = table[0]
    assert dense[2] == "dense" and dense[5] == f"{25088 * 4096:,}"


def test_leaf_bond_widens_only_leaf_bonds():
    pt = import_example("paper_table")
    from engine.design.templates import make_template

    base = make_template("mera", 4096, 4096, 2, "gelu", [8, 8, 4, 4, 4], [8, 8, 4, 4, 4])
    wide = pt.with_leaf_bond(base, 6)
    leaves = [t for t in base.tensors if any(base.indices[i].role != "bond" for i in t.indices)]
    leaf_bonds = {i for t in leaves for i in t.indices if base.indices[i].role == "bond"}
    assert len(leaves) == 5 and len(leaf_bonds) == 5
    for name, ix in wide.indices.items():
        assert ix.dim == (6 if name in leaf_bonds else base.indices[name].dim)
    # the largest generation intermediate does not grow: it holds W times the *upper* bonds only
    assert cost_report(wide).largest_intermediate_bytes == cost_report(base).largest_intermediate_bytes
    assert wide.params > base.params


def test_paper_table_markdown_and_no_output(tmp_path):
    text = run_example("paper_table.py", "--markdown", "--quick", "--out", "", home=tmp_path)
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| layer |") and set(lines[1]) <= set("|-: ")
    pt = import_example("paper_table")
    fc = [next(iter(pt.LAYERS)), list(pt.LAYERS)[-1]]
    conv = [next(iter(pt.CONV_LAYERS)), list(pt.CONV_LAYERS)[-1]]
    # two tables: header and separator, then per layer a dense row and one per design kind
    assert len(lines) == 2 * 2 + sum(1 + len(pt.kinds_for(k)) for k in fc) + len(conv) * (1 + len(pt.CONV_KINDS))
    assert "wrote" not in text


# ----------------------------------------------------------------------------- design, tensorize, export
def test_design_and_cost_example(tmp_path):
    text = run_example("design_and_cost.py", "--out", str(tmp_path / "out"), home=tmp_path)
    assert "same design = True" in text and "invalid design rejected" in text
    saved = load_design(tmp_path / "out" / "mpo_1024.json")
    assert saved.params == 4 * 4 * 8 + 8 * 4 * 4 * 8 + 8 * 8 * 8 * 8 + 8 * 8 * 8  # closed form, chi = 8
    assert f"{saved.params:,} parameters" in text


def test_tensorize_model_example(tmp_path):
    text = run_example("tensorize_model.py", "--quick", home=tmp_path)
    assert "tt-svd" in text and " fit " in text  # the MPO by TT-SVD, the TTN by fitting
    dense = (64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    ttn = 4 * 4 * 8 + 2 * (4 * 8 * 8) + 8 * 8 * 8 + 8 * 8  # leaves (i, o, chi), one inner node, the top
    mpo = 2 * (4 * 4 * 8) + 2 * (8 * 4 * 4 * 8)  # chain cores (r, i, o, r) with chi = 8
    assert f"dense model: {dense:,} parameters" in text
    assert f"tensorized model: {(ttn + 256) + (mpo + 256) + (256 * 10 + 10):,} parameters" in text


def test_export_design_example(tmp_path):
    out = tmp_path / "export"
    text = run_example("export_design.py", "--quick", "--out", str(out), home=tmp_path)
    assert {p.name for p in out.iterdir()} >= {"tn_layer.py", "tn_layer.pt", "use_layer.py",
                                               "use_layer.design.json"}
    diff = float(text.split("max relative difference to the engine")[1].split()[0])
    assert diff <= 1e-4


# ----------------------------------------------------------------------------- training
def test_train_digits_example(tmp_path):
    text = run_example("train_digits.py", "--quick", home=tmp_path)
    runs = RunStore(tmp_path / "runs").list_runs()
    assert len(runs) == 2 and {r["status"] for r in runs} == {"completed"}
    accs = [r["results"]["test_accuracy"] for r in runs]
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert "TN ttn" in text and "dense" in text and f"{accs[0]:.3f}" in text


@pytest.mark.long
def test_truncate_finetune_example(tmp_path):
    out = tmp_path / "out"
    runs = tmp_path / "tf_runs"
    text = run_example("truncate_finetune.py", "--quick", "--runs-dir", str(runs), "--out", str(out),
                       home=tmp_path, timeout=300)
    rows = json.loads((out / "truncate_finetune.json").read_text())
    assert [r["kind"] for r in rows] == ["ttn", "mpo"]
    store = RunStore(runs)
    for r in rows:
        parent, child = store.get_run(r["parent"]), store.get_run(r["child"])
        assert parent["status"] == child["status"] == "completed" and child["parent"] == parent["id"]
        assert child["design"]["name"].endswith("truncated") and r["params_after"] < r["params_before"]
        assert child["results"]["test_accuracy"] == r["finetuned_accuracy"]
        assert r["error"] == ("measured" if r["kind"] == "ttn" else "exact") and 0 < r["relative_error"] <= r["tol"]
    assert "TTN (gelu)" in text and "MPO" in text and "fine-tuned" in text


@pytest.mark.long
def test_digits_sweep_example(tmp_path):
    out = tmp_path / "sweep"
    text = run_example("digits_sweep.py", "--quick", "--out", str(out), home=tmp_path)
    rows = json.loads((out / "digits_sweep.json").read_text())
    assert [r["kind"] for r in rows] == ["ttn", "ttn-lateral", "attn", "attn-lateral", "mera", "mera-lateral",
                                         "mpo", "dense"]
    plain, lateral = rows[0], rows[1]  # TTN at chi 2, with the two laterals of its five sites: 2 x 2^4 more
    assert lateral["params"] == plain["params"] + 2 * 2 ** 4
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert math.isclose(r["compression"], 256 * 256 / r["params"])
    html = (out / "digits_sweep.html").read_text()
    assert "Bokeh" in html and "<script src=" not in html  # JavaScript inlined: opens offline
    assert "test accuracy" in text and "wrote" in text
    assert len(RunStore(tmp_path / "runs").list_runs()) == len(rows)


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_docstring_and_main(script):
    src = (EXAMPLES / script).read_text()
    assert src.startswith('"""') and 'if __name__ == "__main__":' in src


# ----------------------------------------------------------------------------- whole networks on MNIST-1D
@pytest.mark.slow
@pytest.mark.long
def test_mnist1d_networks_quick(tmp_path):
    out = run_example("mnist1d_networks.py", "--quick", "--runs-dir", str(tmp_path / "runs"), home=tmp_path,
                      timeout=600)
    table = out[out.index("| network |"):]
    assert table.count("\n| ") == 5 and "65,792 -> 912 (72x)" in table and "82,176 -> 928 (89x)" in table
    assert len(RunStore(tmp_path / "runs").list_runs()) == 4
