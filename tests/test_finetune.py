"""Fine-tuning a truncated layer as a child run: RunConfig.init_from, the trainer loading it strictly, the child
run's initial weights (the parent's checkpoint with the truncated layer) and the store's parent link; and
``tnstudio truncate --finetune`` on a run made by ``tnstudio train``."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
import torch

from engine.analysis.finetune import INIT_FILE, LR_SCALE, child_state, finetune, truncation_record
from engine.analysis.runs import RunError, load_run_layer
from engine.analysis.truncate import truncate
from engine.cli import main
from engine.design import load_design, make_template
from engine.train.config import ConfigError, RunConfig
from engine.train.launcher import wait
from engine.train.loop import Trainer, run_training
from engine.train.store import RunStore

try:
    from tests.analysis_helpers import cli as _cli, train_mpo_run
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from analysis_helpers import cli as _cli, train_mpo_run


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A finished run made by ``tnstudio train``: (runs dir, run id, design file)."""
    tmp = tmp_path_factory.mktemp("parent")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TNSTUDIO_HOME", str(tmp / "home"))
        yield train_mpo_run(tmp)


def test_init_from_is_validated():
    assert RunConfig().init_from is None
    assert RunConfig(init_from="init.pt").init_from == "init.pt"
    assert RunConfig.from_dict(RunConfig(init_from="/x/y.pt").to_dict()).init_from == "/x/y.pt"
    for bad in (3, "weights.json", ""):
        with pytest.raises(ConfigError, match="init_from") as e:
            RunConfig(init_from=bad)
        assert e.value.key == "init_from"


def _model_state(tmp_path, design, seed):
    """A model state dict for ``design`` on digits made by another trainer (seed differs from the run's)."""
    store = RunStore(tmp_path / "other")
    rid = store.create_run(RunConfig(dataset="digits", epochs=1, seed=seed), design)
    t = Trainer(store, rid)
    t.setup()
    return t.model.state_dict()


def test_the_trainer_starts_from_init_from_strictly(tmp_path):
    design = make_template("mpo", 64, 64, 3, in_factors=[4, 4, 4], out_factors=[4, 4, 4])
    state = _model_state(tmp_path, design, seed=7)
    path = tmp_path / "start.pt"
    torch.save(state, path)
    store = RunStore(tmp_path / "runs")
    rid = store.create_run(RunConfig(dataset="digits", epochs=1, seed=0, init_from=str(path)), design)
    t = Trainer(store, rid)
    t.setup()
    got = t.model.state_dict()
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    fresh = store.create_run(RunConfig(dataset="digits", epochs=1, seed=0), design)
    t0 = Trainer(store, fresh)
    t0.setup()
    assert not torch.equal(t0.model.state_dict()["net.2.weight"], state["net.2.weight"])  # seeds differ
    # a relative path is read from the run's folder
    rel = store.create_run(RunConfig(dataset="digits", epochs=1, init_from="mine.pt"), design)
    torch.save({"model": state}, store.run_dir(rel) / "mine.pt")  # a checkpoint-style file works too
    t1 = Trainer(store, rel)
    t1.setup()
    assert torch.equal(t1.model.state_dict()["net.2.weight"], state["net.2.weight"])


def test_init_from_that_does_not_fit_fails_the_run_with_the_reason(tmp_path):
    design = make_template("mpo", 64, 64, 3, in_factors=[4, 4, 4], out_factors=[4, 4, 4])
    other = make_template("mpo", 64, 64, 2, in_factors=[4, 4, 4], out_factors=[4, 4, 4])
    path = tmp_path / "other.pt"
    torch.save(_model_state(tmp_path, other, seed=1), path)
    store = RunStore(tmp_path / "runs")
    rid = store.create_run(RunConfig(dataset="digits", epochs=1, init_from=str(path)), design)
    run = run_training(rid, str(store.root))
    assert run["status"] == "failed"
    assert "does not fit the model" in run["reason"]
    assert "cores.G1 has shape (2, 4, 4, 2) in the file but (3, 4, 4, 3)" in run["reason"]
    missing = store.create_run(RunConfig(dataset="digits", epochs=1, init_from="nope.pt"), design)
    run = run_training(missing, str(store.root))
    assert run["status"] == "failed" and "no such file" in run["reason"]


def test_child_state_is_the_parent_checkpoint_with_the_truncated_layer(parent):
    runs, run_id, _ = parent
    layer = load_run_layer(run_id, runs)
    res = truncate(layer.design, layer.state, max_bond=2)
    state, config = child_state(run_id, res, runs)
    ckpt = torch.load(RunStore(runs).get_run(run_id)["checkpoint"], weights_only=True)["model"]
    own = res.state_dict(bias=layer.state["bias"])
    tn_keys = [k for k in state if ".cores." in k or k.endswith(".bias") and k[:-5] + ".cores.G0" in state]
    assert tn_keys
    for key, value in state.items():
        if key in tn_keys:
            assert torch.equal(value, own[key[key.index("cores."):]] if "cores." in key else own["bias"])
        else:
            assert torch.equal(value, ckpt[key]), key  # every other layer: the parent's trained weights
    assert config.to_dict() == RunConfig.from_dict(layer.config).to_dict()


def test_finetune_launches_a_child_run_linked_to_its_parent(parent):
    runs, run_id, _ = parent
    layer = load_run_layer(run_id, runs)
    res = truncate(layer.design, layer.state, max_bond=2)
    child_id = finetune(run_id, res, epochs=1, runs_dir=runs)
    child = wait(child_id, runs, timeout=300)
    assert child["status"] == "completed", child.get("reason")
    full = RunStore(runs).get_run(child_id)
    assert full["parent"] == run_id and full["design"] == res.design.to_dict()
    parent_cfg = RunStore(runs).get_run(run_id)["config"]
    assert full["config"]["init_from"] == INIT_FILE and full["config"]["epochs"] == 1
    assert full["config"]["lr"] == pytest.approx(parent_cfg["lr"] * LR_SCALE)
    assert full["results"]["layer_params"] == res.params_after + 64  # the truncated layer's cores and its bias
    init = torch.load(RunStore(runs).run_dir(child_id) / INIT_FILE, weights_only=True)
    expected, _ = child_state(run_id, res, runs)
    assert set(init) == set(expected) and all(torch.equal(init[k], expected[k]) for k in init)
    rec = truncation_record(child_id, runs)
    assert rec["parent"] == run_id and rec["params_after"] == res.params_after
    assert truncation_record(run_id, runs) is None


def test_cli_truncate_finetune(parent, tmp_path):
    runs, run_id, _ = parent
    small = tmp_path / "small.json"
    rc, out = _cli("truncate", "--run", run_id, "--runs-dir", str(runs), "--max-bond", "2", "-o", str(small),
                   "--finetune", "1", "--lr", "0.001", "--json")
    assert rc == 0
    rep = json.loads(out)
    ft = rep["finetune"]
    assert ft["status"] == "completed" and ft["parent"] == run_id and 0 <= ft["test_accuracy"] <= 1
    child = RunStore(runs).get_run(ft["run"])
    assert child["parent"] == run_id and child["config"]["lr"] == 0.001
    assert load_design(small).to_dict() == child["design"]
    rc, out = _cli("truncate", "--run", run_id, "--runs-dir", str(runs), "--tol", "0.5", "-o",
                   str(tmp_path / "s2.json"), "--finetune", "1", "--detach")
    assert rc == 0 and "fine-tuning as run" in out
    child_id = out.split("fine-tuning as run ")[1].split()[0]
    assert wait(child_id, runs, timeout=300)["status"] == "completed"


def test_cli_finetune_errors_are_one_line(parent, tmp_path, capsys):
    runs, run_id, design = parent
    assert main(["truncate", str(design), "--weights", str(tmp_path / "w.pt"), "--max-bond", "2", "-o",
                 str(tmp_path / "x.json"), "--finetune", "1"]) == 2
    assert "--finetune continues a training run" in capsys.readouterr().err
    assert main(["truncate", "--run", run_id, "--runs-dir", str(runs), "--max-bond", "2", "-o",
                 str(tmp_path / "x.json"), "--finetune", "0"]) == 2
    err = capsys.readouterr().err
    assert "epochs >= 1" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------- one TN layer of a whole network
@pytest.fixture(scope="module")
def network_parent(tmp_path_factory):
    """A finished network run (MLP on digits, fc1 and fc2 as MPOs, one epoch): (runs dir, run id)."""
    from engine.network.format import new_network
    from engine.train.networks import launch_network

    tmp = tmp_path_factory.mktemp("netparent")
    spec = new_network("mlp", [1, 8, 8], 10, name="net").with_rules(["linear:mpo:4:min=10000"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TNSTUDIO_HOME", str(tmp / "home"))
        runs = tmp / "runs"
        rid = launch_network(spec, runs, dataset="digits", epochs=1)
        assert wait(rid, runs, timeout=300)["status"] == "completed"
        yield runs, rid


def _network_model(config: dict, state: dict) -> torch.nn.Module:
    """The model a network run's config builds, with ``state`` loaded strictly (eval mode)."""
    from engine.network.build import build_network
    from engine.network.format import NetworkSpec

    model = build_network(NetworkSpec.from_dict(config["network"]))
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_a_network_layer_is_fine_tuned_as_a_child_network_run(network_parent):
    """Fine-tuning one truncated layer of a network run was refused. The child trains the parent's network with
    that layer's design replaced by the truncation, from the parent's checkpoint: at its start it computes what
    the parent computes with that layer's W replaced by the truncated W (an nn.Linear holding it)."""
    runs, rid = network_parent
    with pytest.raises(RunError, match=r"2 TN layers \(fc1, fc2\): name one with --layer NAME"):
        load_run_layer(rid, runs)
    layer = load_run_layer(rid, runs, None, "fc2")
    res = truncate(layer.design, layer.state, max_bond=2)
    assert res.params_after < res.params_before
    with pytest.raises(RunError, match="no TN layer 'fc9'"):
        finetune(rid, res, 1, runs, layer="fc9")
    with pytest.raises(RunError, match="the truncated design is 256x256 but layer fc1 is 64x256"):
        finetune(rid, res, 1, runs, layer="fc1")  # fc2's truncation does not fit fc1
    parent = RunStore(runs).get_run(rid)
    child_id = finetune(rid, res, epochs=1, runs_dir=runs, layer="fc2")
    child = RunStore(runs).get_run(child_id)
    assert child["parent"] == rid and child["design"] is None and "fc2 truncated" in child["name"]
    layers, before = child["config"]["network"]["layers"], parent["config"]["network"]["layers"]
    assert layers["fc2"]["design"] == res.design.to_dict() and layers["fc1"] == before["fc1"]
    assert child["config"]["init_from"] == INIT_FILE and child["config"]["epochs"] == 1
    assert child["config"]["lr"] == pytest.approx(parent["config"]["lr"] * LR_SCALE)
    assert truncation_record(child_id, runs)["layer"] == "fc2"

    init = torch.load(RunStore(runs).run_dir(child_id) / INIT_FILE, weights_only=True)
    ckpt = torch.load(parent["checkpoint"], weights_only=True)["model"]
    assert {k for k in init if not k.startswith("fc2.")} == {k for k in ckpt if not k.startswith("fc2.")}
    assert all(torch.equal(init[k], ckpt[k]) for k in init if not k.startswith("fc2."))
    x = torch.randn(16, 1, 8, 8)
    dense = res.to_layer(bias=layer.state["bias"])  # the truncated W, put into the parent's model as nn.Linear
    linear = torch.nn.Linear(res.design.in_features, res.design.out_features)
    with torch.no_grad():
        linear.weight.copy_(dense.weight().T)
        linear.bias.copy_(layer.state["bias"])
    reference = _network_model(parent["config"], ckpt)
    reference.fc2 = linear
    with torch.no_grad():
        torch.testing.assert_close(_network_model(child["config"], init)(x), reference(x), rtol=1e-4, atol=1e-5)
    done = wait(child_id, runs, timeout=300)
    assert done["status"] == "completed", done.get("reason")
    assert 0 <= done["results"]["test_accuracy"] <= 1


def test_cli_truncate_finetune_of_a_network_layer(network_parent, tmp_path):
    runs, rid = network_parent
    small = tmp_path / "small.json"
    rc, out = _cli("truncate", "--run", rid, "--runs-dir", str(runs), "--layer", "fc1", "--max-bond", "2", "-o",
                   str(small), "--finetune", "1", "--json")
    assert rc == 0, out
    ft = json.loads(out)["finetune"]
    assert ft["status"] == "completed" and ft["parent"] == rid
    child = RunStore(runs).get_run(ft["run"])
    assert child["config"]["network"]["layers"]["fc1"]["design"] == load_design(small).to_dict()
    rc, out = _cli("runs", "show", ft["run"], "--runs-dir", str(runs))  # says what the child started from
    assert rc == 0
    assert f"  parent   {rid} (fine-tunes a truncation of its layer fc1: " in out
    line = next(ln for ln in out.splitlines() if ln.startswith("  parent"))
    rec = truncation_record(ft["run"], runs)
    assert f"{rec['params_before']:,} -> {rec['params_after']:,} core params" in line
    assert f"relative error {rec['relative_error']:.3g} (exact)" in line
    rc, out = _cli("runs", "show", ft["run"], "--runs-dir", str(runs), "--json")
    assert json.loads(out)["truncation"] == rec
    record = RunStore(runs).run_dir(ft["run"]) / "truncation.json"  # hand-edited: still one line, or none
    record.write_text(json.dumps({"layer": "fc1\nerror: fake", "params_before": "many", "error": "\x1b[31m"}))
    rc, out = _cli("runs", "show", ft["run"], "--runs-dir", str(runs))
    line = next(ln for ln in out.splitlines() if ln.startswith("  parent"))
    assert rc == 0 and "fc1\\nerror: fake" in line and "? -> ? core params" in line and "\x1b" not in out
    for text in ("[1, 2]", "{", "[" * 100000):
        record.write_text(text)
        rc, out = _cli("runs", "show", ft["run"], "--runs-dir", str(runs))
        assert rc == 0 and f"  parent   {rid}\n" in out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=16).filter(lambda s: s.rstrip(".") not in ("fc1", "fc2")))
def test_truncate_finetune_with_a_layer_name_that_names_no_tn_layer_writes_nothing(network_parent, tmp_path, name):
    """Fuzz: ``--layer`` from any text, against a network run with two TN layers: exit code 2 and one line, no
    file written and no run recorded (the layer is looked up before anything else happens)."""
    import contextlib
    import io

    runs, rid = network_parent
    before = len(RunStore(runs).list_runs())
    out = tmp_path / "never.json"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["truncate", "--run", rid, "--runs-dir", str(runs), f"--layer={name}", "--max-bond", "2", "-o",
                   str(out), "--finetune", "1"])
    assert rc == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    assert not out.exists() and len(RunStore(runs).list_runs()) == before


def test_a_network_with_one_tn_layer_needs_no_layer_name(tmp_path, monkeypatch):
    """The only TN layer of a network run is the one fine-tuned when none is named (API and CLI)."""
    from engine.network.build import build_network
    from engine.network.format import new_network
    from engine.train.networks import network_config

    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path / "home"))
    spec = new_network("mlp", [1, 8, 8], 10, name="one").with_rules(["linear:mpo:4:min=60000"])
    runs = tmp_path / "runs"
    store = RunStore(runs)
    rid = store.create_run(network_config(spec, dataset="digits", epochs=1).to_dict(), None, name="one")
    torch.manual_seed(0)
    ckpt = store.run_dir(rid) / "checkpoint.pt"
    torch.save({"model": build_network(spec).state_dict()}, ckpt)
    store.set_status(rid, "completed", checkpoint=str(ckpt), results={"test_accuracy": 0.1})
    layer = load_run_layer(rid, runs)
    assert layer.module == "fc2"
    res = truncate(layer.design, layer.state, max_bond=2)
    rc, out = _cli("truncate", "--run", rid, "--runs-dir", str(runs), "--max-bond", "2", "-o",
                   str(tmp_path / "s.json"), "--finetune", "1", "--json")
    assert rc == 0, out
    child = RunStore(runs).get_run(json.loads(out)["finetune"]["run"])
    assert child["status"] == "completed" and truncation_record(child["id"], runs)["layer"] == "fc2"
    assert child["config"]["network"]["layers"]["fc2"]["design"] == res.design.to_dict()
