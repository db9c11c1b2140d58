"""`tnstudio train` and `tnstudio runs`: the headline TTN-on-digits result with its dense baseline side by side,
clear errors before anything starts, and the runs commands reading the store."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.design.model import save_design
from engine.train.store import RunStore
from engine.design.templates import make_template


@pytest.fixture
def ttn_file(tmp_path):
    path = tmp_path / "ttn.json"
    save_design(make_template("ttn", 256, 256, 4, activation="gelu"), path)
    return path


@pytest.mark.slow
def test_ttn_with_activation_reaches_90_percent_on_digits_next_to_its_baseline(tmp_path, ttn_file, capsys):
    runs = tmp_path / "runs"
    rc = main(["train", str(ttn_file), "--dataset", "digits", "--epochs", "10", "--baseline", "--device", "cpu",
               "--runs-dir", str(runs)])
    out = capsys.readouterr().out
    assert rc == 0, out
    store = RunStore(runs)
    base, tn = store.list_runs()  # newest first
    assert tn["config"]["baseline"] is False and base["config"]["baseline"] is True and base["parent"] == tn["id"]
    acc_tn, acc_base = tn["results"]["test_accuracy"], base["results"]["test_accuracy"]
    assert acc_tn >= 0.9
    d = make_template("ttn", 256, 256, 4, activation="gelu")  # 656 parameters for 65,536: 99.9x
    table = out[out.index("TN layer"):]
    row = lambda label: re.search(rf"^{label}\s+(\S+)\s+(\S+)", table, re.M).groups()  # noqa: E731
    assert row(r"compression \(W\)") == (f"{d.compression:.1f}x", "1.0x")
    assert row("test accuracy") == (f"{100 * acc_tn:.2f}%", f"{100 * acc_base:.2f}%")
    assert row("core params") == (f"{d.params:,}", f"{256 * 256:,}")  # the weight alone, as the studio shows
    assert row(r"layer params \(with bias\)") == (f"{d.params + 256:,}", f"{256 * 256 + 256:,}")
    # `runs show` of the TN run repeats the comparison
    assert main(["runs", "--runs-dir", str(runs), "show", tn["id"][:6]]) == 0
    assert "dense baseline" in capsys.readouterr().out


def test_errors_are_clear_and_start_nothing(tmp_path, ttn_file, capsys):
    runs = str(tmp_path / "runs")
    cases = [
        (["--hidden", "128,128"], "no layer of the MLP 64 -> 128 -> 128 -> 10 has the design's shape 256 -> 256"),
        (["--hidden", "256,256", "--layer", "0"], "layer 0 of the MLP expects in_features=64, out_features=256"),
        (["--model", "cnn"], "make a design with in_features=1024"),
        (["--dataset", "mnist", "--data-dir", str(tmp_path)], "train-images-idx3-ubyte"),
        (["--epochs", "0"], "epochs must be an integer >= 1"),
    ]
    for extra, message in cases:
        assert main(["train", str(ttn_file), "--runs-dir", runs] + extra) == 2
        assert message in capsys.readouterr().err
    assert main(["train", "--baseline", "--runs-dir", runs]) == 2
    assert "give a design file" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.json"), "--runs-dir", runs]) == 2
    assert RunStore(runs).list_runs() == []


def test_json_output_is_json_alone(tmp_path, ttn_file, capsys):
    """With --json the progress lines go to stderr: stdout parses as the run record."""
    runs = str(tmp_path / "runs")
    assert main(["train", str(ttn_file), "--epochs", "1", "--device", "cpu", "--json", "--runs-dir", runs]) == 0
    out, err = capsys.readouterr()
    run = json.loads(out)
    assert run["status"] == "completed" and run["summary"]["device"] == "cpu" and "test loss" in err


def test_cuda_without_a_gpu_exits_2_with_one_line_and_records_nothing(tmp_path, ttn_file, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this machine; also where there is one
    runs = str(tmp_path / "runs")
    assert main(["train", str(ttn_file), "--device", "cuda", "--runs-dir", runs]) == 2
    assert capsys.readouterr().err == "error: device cuda asked for but torch sees no GPU: use --device cpu or auto\n"
    assert RunStore(runs).list_runs() == []


def test_dataset_and_model_options_come_from_the_registries(capsys):
    from engine.cli import build_parser
    from engine.train.data import dataset_specs
    from engine.train.models import model_kinds

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert e.value.code == 0
    for entry in list(dataset_specs()) + list(model_kinds()):
        assert re.search(rf"^  {entry.name}\s+{re.escape(entry.description)}", help_text, re.M), entry.name
    assert build_parser().parse_args(["train", "--dataset", "Fashion-MNIST"]).dataset == "fashion_mnist"
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["train", "--dataset", "imagenet"])
    assert e.value.code == 2 and "invalid choice: 'imagenet'" in capsys.readouterr().err


def _fake_finished_pair(runs):
    """A completed TN run and its baseline, written straight into the store (no training)."""
    store = RunStore(runs)
    d = make_template("ttn", 256, 256, 4, activation="gelu")
    ids = []
    for baseline, acc in ((False, 0.93), (True, 0.96)):
        cfg = {"dataset": "digits", "epochs": 1, "baseline": baseline}
        rid = store.create_run(cfg, d, parent=ids[0] if ids else None)
        store.set_status(rid, "running", total_steps=23, summary={"baseline": baseline, "params": 1000,
                                                                  "layer_params": 900, "design_compression": 99.9})
        store.log_metrics(rid, [{"step": 10, "epoch": 0.43, "split": "train", "loss": 0.9, "accuracy": 0.7,
                                 "lr": 1e-3, "throughput": 5000.0, "elapsed": 0.5},
                                {"step": 23, "epoch": 1.0, "split": "test", "loss": 0.3, "accuracy": acc}])
        store.set_status(rid, "completed", results={"test_accuracy": acc, "test_loss": 0.3, "train_seconds": 1.5})
        ids.append(rid)
    return store, ids


def test_runs_commands(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    store, (tn, base) = _fake_finished_pair(runs)
    assert main(["runs", "--runs-dir", runs, "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(store.list_runs()))
    assert main(["runs", "list", "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert tn in out and base in out and "93.00%" in out and "completed" in out
    assert main(["runs", "--runs-dir", runs, "metrics", tn, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == store.metrics(tn)
    assert main(["runs", "--runs-dir", runs, "metrics", tn, "--split", "test"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "93.00%" in lines[1]
    assert main(["runs", "--runs-dir", runs, "show", tn, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["design"]["name"] == store.get_run(tn)["design"]["name"]
    assert main(["runs", "--runs-dir", runs, "show", tn]) == 0
    out = capsys.readouterr().out
    assert "99.9x" in out and "96.00%" in out  # compression and the baseline's accuracy side by side
    assert main(["runs", "--runs-dir", runs, "stop", tn]) == 0
    assert "not running" in capsys.readouterr().out
    assert main(["runs", "--runs-dir", runs, "show", "nope"]) == 2
    assert "no run with id 'nope'" in capsys.readouterr().err
    assert main(["runs", "--runs-dir", runs, "delete", base]) == 0
    assert [r["id"] for r in store.list_runs()] == [tn]
    # one run left: an empty id is the start of it, and was taken as it (`runs delete ''` deleted it)
    for argv in (["runs", "--runs-dir", runs, "delete", ""], ["runs", "--runs-dir", runs, "show", " "],
                 ["spectra", "--run", "", "--runs-dir", runs], ["export", "--run", "", "--runs-dir", runs, "-o",
                                                                  str(tmp_path / "x.py")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "give a run id (or the start of one)" in err and err.count("\n") == 1, (argv, err)
    assert [r["id"] for r in store.list_runs()] == [tn] and not (tmp_path / "x.py").exists()


def test_detached_run_can_be_stopped(tmp_path, ttn_file, capsys):
    runs = str(tmp_path / "runs")
    assert main(["train", str(ttn_file), "--epochs", "50", "--detach", "--json", "--runs-dir", runs]) == 0
    (rid,) = json.loads(capsys.readouterr().out)["runs"]
    assert RunStore(runs).get_run(rid)["status"] in ("queued", "running")
    assert main(["runs", "--runs-dir", runs, "stop", rid, "--wait", "60"]) == 0
    assert "stopped" in capsys.readouterr().out
    assert RunStore(runs).get_run(rid)["status"] == "stopped"

    # --json on stop, resume and delete prints JSON (they printed their text lines)
    assert main(["runs", "--runs-dir", runs, "stop", rid, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"id": rid, "was_running": False, "status": "stopped",
                                                   "reason": RunStore(runs).get_run(rid)["reason"]}
    assert main(["train", str(ttn_file), "--epochs", "50", "--detach", "--json", "--runs-dir", runs]) == 0
    (rid2,) = json.loads(capsys.readouterr().out)["runs"]
    deadline = time.monotonic() + 120
    while not (Path(runs) / rid2 / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # an evaluation (each epoch) writes the checkpoint that resume needs
    assert main(["runs", "--runs-dir", runs, "stop", rid2, "--wait", "60", "--json"]) == 0
    stopped = json.loads(capsys.readouterr().out)
    assert stopped["was_running"] is True and stopped["status"] == "stopped"
    assert main(["runs", "--runs-dir", runs, "resume", rid2, "--detach", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"runs": [rid2]}
    assert main(["runs", "--runs-dir", runs, "stop", rid2, "--wait", "60", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "stopped"
    assert main(["runs", "--runs-dir", runs, "delete", rid2, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": rid2}
    assert [r["id"] for r in RunStore(runs).list_runs()] == [rid]


def test_runs_metrics_since_out_of_64_bit_range_exits_2(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    _, (tn, _) = _fake_finished_pair(runs)
    for since in ("99999999999999999999999", "-99999999999999999999999", str(2 ** 63)):
        assert main(["runs", "--runs-dir", runs, "metrics", tn, "--since", since]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --since {since}: out of range") and err.count("\n") == 1
    assert main(["runs", "--runs-dir", runs, "metrics", tn, "--since", str(2 ** 63 - 1), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["runs", "--runs-dir", runs, "metrics", tn, "--since", "-5", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


@pytest.mark.parametrize("extra,message", [
    (["--seed", "99999999999999999999999"], "seed must be from 0 to 2^32 - 1, got 99999999999999999999999"),
    (["--seed", str(2 ** 32)], "seed must be from 0 to 2^32 - 1"),
    (["--seed", "-1"], "seed must be from 0 to 2^32 - 1, got -1"),
    (["--epochs", "99999999999999999999999", "--detach"], "epochs must be at most 2^31 - 1"),
    (["--batch-size", str(2 ** 31)], "batch_size must be at most 2^31 - 1"),
    (["--eval-every", str(2 ** 31)], "eval_every must be at most 2^31 - 1"),
    (["--nproc", "99999"], "nproc must be at most 1024"),
])
def test_out_of_range_counts_and_seeds_are_refused_before_a_run_is_recorded(tmp_path, ttn_file, capsys, extra,
                                                                            message):
    runs = str(tmp_path / "runs")
    for dry in ([], ["--dry-run"]):
        assert main(["train", str(ttn_file), "--dataset", "digits", "--runs-dir", runs] + extra + dry) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert RunStore(runs).list_runs() == []


def test_run_config_bounds_hold_what_training_takes():
    from engine.train.config import ConfigError, RunConfig

    top = RunConfig(seed=2 ** 32 - 1, epochs=2 ** 31 - 1, max_steps=2 ** 31 - 1, log_every=2 ** 31 - 1,
                    threads=1024)
    assert top.seed == 2 ** 32 - 1 and top.epochs == 2 ** 31 - 1
    for key, value in (("max_steps", 2 ** 31), ("log_every", 2 ** 31), ("threads", 1025), ("seed", 2 ** 63)):
        with pytest.raises(ConfigError, match=f"{key} must be"):
            RunConfig(**{key: value})


def test_a_relative_data_dir_is_read_from_where_the_command_ran(tmp_path, monkeypatch, capsys):
    """The run's process works in its run folder: `--data-dir data` passed the launcher's check there and then
    failed the run ('MNIST not found')."""
    from tests.test_data import fake_mnist

    fake_mnist(tmp_path / "work" / "data" / "MNIST" / "raw", n_train=40, n_test=20)
    design, runs = tmp_path / "mpo.json", tmp_path / "runs"
    save_design(make_template("mpo", 784, 64, 2), design)
    monkeypatch.chdir(tmp_path / "work")
    assert main(["train", str(design), "--dataset", "mnist", "--data-dir", "data", "--epochs", "1",
                 "--runs-dir", str(runs), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["status"] == "completed", run.get("reason")
    assert run["config"]["data_dir"] == str(tmp_path / "work" / "data")  # recorded as the folder it named
    # the default data folder under a relative TNSTUDIO_HOME: the same failure, in the run's process
    fake_mnist(tmp_path / "work" / "home" / "data" / "MNIST" / "raw", n_train=40, n_test=20)
    monkeypatch.setenv("TNSTUDIO_HOME", "home")
    assert main(["train", str(design), "--dataset", "mnist", "--epochs", "1", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["status"] == "completed", run.get("reason")
    assert RunStore(tmp_path / "work" / "home" / "runs").get_run(run["id"])["status"] == "completed"
