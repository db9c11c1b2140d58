"""The run store: records, metrics, concurrent reading while another process writes, dead-process detection,
and the launcher's guarantees (SIGKILL loses no logged metrics; SIGTERM checkpoints and records 'stopped')."""
from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.train import launcher
from engine.design.model import save_design
from engine.home import runs_dir, tnstudio_home
from engine.train.store import RunNotFound, RunStore, pid_alive, process_start_time
from engine.design.templates import make_template


def test_paths_follow_tnstudio_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path / "h"))
    assert tnstudio_home() == tmp_path / "h"
    assert runs_dir() == (tmp_path / "h" / "runs").resolve() and runs_dir().is_dir()
    assert runs_dir(tmp_path / "other") == (tmp_path / "other").resolve()
    monkeypatch.delenv("TNSTUDIO_HOME")
    assert tnstudio_home() == Path.home() / ".tnstudio"


def test_create_get_list_and_prefixes(tmp_path):
    store = RunStore(tmp_path)
    d = make_template("mpo", 64, 64, 4)
    a = store.create_run({"dataset": "digits", "epochs": 1}, d)
    for empty in ("", "  "):  # the start of every id: with one run it named that run (`runs delete ''` deleted it)
        with pytest.raises(RunNotFound, match="give a run id"):
            store.get_run(empty)
    b = store.create_run({"dataset": "digits", "baseline": True}, None, name="dense", parent=a)
    run = store.get_run(a)
    assert run["status"] == "queued" and run["design"] == d.to_dict() and run["design_name"] == d.name
    assert run["config"] == {"dataset": "digits", "epochs": 1} and run["name"] == f"{d.name} on digits"
    assert (tmp_path / a / "design.json").exists()
    assert [r["id"] for r in store.list_runs()] == [b, a]  # newest first
    assert store.get_run(b)["parent"] == a and store.get_run(b)["design"] is None
    assert store.get_run(a[:5])["id"] == a
    with pytest.raises(RunNotFound, match="no run"):
        store.get_run("zzzz")
    with pytest.raises(RunNotFound, match="no run"):
        store.get_run("%")  # a character, not SQL's wildcard
    ids = [a, b]
    while len({i[0] for i in ids}) == len(ids):  # hex ids: two share a first character within 17 runs
        ids.append(store.create_run({"dataset": "digits"}))
    first = next(c for c in {i[0] for i in ids} if sum(i[0] == c for i in ids) == 2)
    with pytest.raises(RunNotFound, match="matches 2 runs"):
        store.get_run(first)

    con = sqlite3.connect(tmp_path / "runs.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_status_and_metrics(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits"})
    store.set_status(rid, "running", pid=os.getpid(), pid_start=process_start_time(os.getpid()))
    rows = [{"step": s, "split": "train", "loss": 1.0 / s, "accuracy": 0.5, "lr": 0.1, "elapsed": s * 0.1}
            for s in (10, 20, 30)]
    store.log_metrics(rid, rows[:2])
    store.log_metrics(rid, rows[2])
    store.log_metrics(rid, {"step": 30, "split": "test", "loss": 0.2, "accuracy": 0.9})
    got = store.metrics(rid)
    assert [m["step"] for m in got] == [10, 20, 30, 30] and got[0]["loss"] == pytest.approx(0.1)
    assert store.get_run(rid)["step"] == 30
    assert [m["split"] for m in store.metrics(rid, since_step=20)] == ["train", "test"]
    assert [m["step"] for m in store.metrics(rid, after_seq=got[1]["seq"])] == [30, 30]
    assert [m["loss"] for m in store.metrics(rid, split="test")] == [0.2]
    with pytest.raises(ValueError, match="unknown metric"):
        store.log_metrics(rid, {"step": 1, "split": "train", "los": 1.0})
    with pytest.raises(ValueError, match="unknown status"):
        store.set_status(rid, "done")
    store.set_status(rid, "completed", results={"test_accuracy": 0.9})
    run = store.get_run(rid)
    assert run["finished"] >= run["started"] and run["results"] == {"test_accuracy": 0.9}
    assert store.delete_metrics_after(rid, 10) == 3 and len(store.metrics(rid)) == 1
    store.delete_run(rid)
    assert store.list_runs() == [] and not (tmp_path / rid).exists()


def test_dead_processes_are_reported_failed(tmp_path):
    store = RunStore(tmp_path)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits but is not reaped: a zombie
    time.sleep(0.5)
    ids = []
    for pid in (done.pid, zombie.pid, os.getpid()):
        rid = store.create_run({"dataset": "digits"})
        store.set_status(rid, "running", pid=pid)
        ids.append(rid)
    status = {r["id"]: r for r in store.list_runs()}
    assert status[ids[0]]["status"] == "failed" and "process died" in status[ids[0]]["reason"]
    assert status[ids[1]]["status"] == "failed"
    assert status[ids[2]]["status"] == "running"  # this process is alive
    assert store.get_run(ids[0])["status"] == "failed"  # recorded, not just reported
    assert not pid_alive(os.getpid(), start=(process_start_time(os.getpid()) or 0) + 1)  # a reused pid
    zombie.wait()


def test_stop_and_delete_rules(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits"})
    with pytest.raises(ValueError, match="stop it before deleting"):
        store.delete_run(rid)
    assert store.stop_run(rid) is True  # queued without a process: stopped at once
    assert store.get_run(rid)["status"] == "stopped"
    assert store.stop_run(rid) is False


WRITER = """
import sys
from engine.train.store import RunStore
store = RunStore(sys.argv[1])
for s in range(1, 301):
    store.log_metrics(sys.argv[2], {"step": s, "split": "train", "loss": 1.0 / s})
"""


def test_reading_while_another_process_writes(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits"})
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), rid])
    seen = []
    while proc.poll() is None:
        rows = store.metrics(rid)
        assert [m["step"] for m in rows] == list(range(1, len(rows) + 1))  # always a consistent prefix
        seen.append(len(rows))
    assert proc.returncode == 0
    assert [m["loss"] for m in store.metrics(rid)] == pytest.approx([1.0 / s for s in range(1, 301)])
    assert len(seen) > 1


# ----------------------------------------------------------------------------- real training processes
def _wait_for(cond, timeout=90.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


LONG = {"dataset": "digits", "epochs": 200, "log_every": 2, "batch_size": 32}


def test_training_processes_import_the_engine_from_the_checkout():
    """The run process's PYTHONPATH is the folder holding the engine package (not the package itself, whose
    modules would shadow the standard library's: engine/types.py for ``types``)."""
    root = Path(launcher._PACKAGE_ROOT)
    assert (root / "engine" / "__init__.py").is_file() and (root / "engine" / "train" / "launcher.py").is_file()


def test_sigkill_loses_no_logged_metrics(tmp_path):
    rid = launcher.launch(LONG, make_template("ttn", 256, 256, 4, activation="gelu"), tmp_path)
    store = RunStore(tmp_path)
    _wait_for(lambda: len(store.metrics(rid)) >= 4, what="metric rows")
    pid = store.get_run(rid)["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not pid_alive(pid), what="the process to die")
    snapshot = store.metrics(rid)
    reopened = RunStore(tmp_path)
    rows = reopened.metrics(rid)
    assert rows == snapshot and len(rows) >= 4
    assert [m["step"] for m in rows] == sorted(m["step"] for m in rows)
    assert all(m["loss"] is not None and m["loss"] > 0 for m in rows)
    run = reopened.get_run(rid)
    assert run["status"] == "failed" and "process died" in run["reason"]


def test_sigterm_checkpoints_stops_and_resumes(tmp_path):
    cfg = dict(LONG, eval_every=10)
    rid = launcher.launch(cfg, None, tmp_path)
    store = RunStore(tmp_path)
    _wait_for(lambda: store.metrics(rid, split="test"), what="a first evaluation")
    assert launcher.stop(rid, tmp_path, timeout=60)
    run = store.get_run(rid)
    assert run["status"] == "stopped", run
    stopped_at = run["step"]
    assert "resume" in run["reason"] and stopped_at >= 10
    state = torch.load(tmp_path / rid / "checkpoint.pt", weights_only=True)
    assert state["step"] == stopped_at and set(state) >= {"model", "optimizer", "scheduler"}
    before = store.metrics(rid)
    launcher.resume(rid, tmp_path)
    _wait_for(lambda: store.get_run(rid)["step"] > stopped_at + 4, what="the resumed run to log")
    rows = store.metrics(rid)
    assert rows[:len(before)] == before  # nothing logged up to the checkpoint is lost
    # continues where it stopped: the next logging point is the next multiple of log_every (2) or the next epoch
    # end, whichever comes first (a stop can land on an odd epoch end: 45 steps of 32 per digits epoch)
    per_epoch = math.ceil(run["summary"]["train_examples"] / LONG["batch_size"])
    following = min((stopped_at // 2 + 1) * 2, (stopped_at // per_epoch + 1) * per_epoch)
    assert rows[len(before)]["step"] == following
    assert launcher.stop(rid, tmp_path, timeout=60)
    assert store.get_run(rid)["status"] == "stopped"


@pytest.mark.slow
def test_killing_the_attached_cli_leaves_the_run_training(tmp_path):
    """`tnstudio train` only follows the run: SIGKILL it and the run (its own session) completes regardless."""
    design = tmp_path / "ttn.json"
    save_design(make_template("ttn", 256, 256, 4, activation="gelu"), design)
    cli = subprocess.Popen([sys.executable, "-m", "engine.cli", "train", str(design), "--epochs", "3",
                            "--runs-dir", str(tmp_path / "runs")], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    store = RunStore(tmp_path / "runs")
    (run,) = _wait_for(lambda: [r for r in store.list_runs() if r["status"] == "running"], what="a running run")
    cli.kill()
    cli.wait()
    end = launcher.wait(run["id"], tmp_path / "runs", timeout=120)
    assert end["status"] == "completed" and end["results"]["test_accuracy"] > 0.5
    steps = [m["step"] for m in store.metrics(run["id"], split="train")]
    assert steps == sorted(steps) and steps[-1] == end["total_steps"]


def test_a_network_run_is_named_after_its_network_and_shown_in_one_line(tmp_path, capsys):
    """A network run recorded without a name is named after its network (not "dense"), and `runs show` prints its
    network file (designs inline, kilobytes) as the network's name and TN layers, their cores counted on the built
    model; `--json` keeps the whole file."""
    import json

    from engine.cli import main
    from engine.network.build import build_network
    from engine.network.format import new_network
    from engine.train.networks import network_config

    spec = new_network("mlp", [1, 40], 10, name="small mlp").with_rules(["linear:ttn:4:min=3000"])
    cores = sum(p.numel() for n, p in build_network(spec).named_parameters() if ".cores." in n)
    store = RunStore(tmp_path / "runs")
    rid = store.create_run(network_config(spec, dataset="mnist1d"), None)
    assert store.get_run(rid)["name"] == "small mlp on mnist1d"
    assert main(["runs", "--runs-dir", str(tmp_path / "runs"), "show", rid]) == 0
    (config,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("config")]
    assert config.endswith(f"network=small mlp (2 TN layers, {cores:,} core params)") and "'format'" not in config
    assert main(["runs", "--runs-dir", str(tmp_path / "runs"), "show", rid, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["network"] == network_config(spec, dataset="mnist1d").network


def test_a_training_process_that_cannot_start_is_a_failed_run_and_one_line(tmp_path, monkeypatch, capsys):
    """When the machine cannot start the trainer (no process slot: EAGAIN), the run had stayed queued with no
    process for ever and the CLI printed a traceback; now it is recorded as failed with the reason, `tnstudio
    train` says so in one line (exit 2), and a resume that cannot start leaves the run resumable."""
    import errno

    from engine.cli import main

    def no_process(*args, **kwargs):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(launcher.subprocess, "Popen", no_process)
    design = tmp_path / "d.json"
    save_design(make_template("mpo", 64, 64, 2), design)
    rc = main(["train", str(design), "--dataset", "digits", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"),
               "--detach"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "its training process could not be started: Resource temporarily unavailable" in err
    (run,) = RunStore(tmp_path / "runs").list_runs()
    assert run["status"] == "failed" and "could not be started" in run["reason"]

    store = RunStore(tmp_path / "runs")  # a failed run with a checkpoint whose resume cannot start
    rid = store.create_run({"dataset": "digits", "epochs": 1}, make_template("mpo", 64, 64, 2))
    store.set_status(rid, "failed", "killed")
    torch.save({"step": 0}, store.run_dir(rid) / "checkpoint.pt")
    monkeypatch.setattr(launcher, "check_checkpoint", lambda path: None)
    with pytest.raises(launcher.ProcessStartError, match="resume it once"):
        launcher.resume(rid, tmp_path / "runs")
    assert store.get_run(rid)["status"] == "failed"
