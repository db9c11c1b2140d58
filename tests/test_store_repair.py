"""Damaged run stores: a truncated, garbage or foreign runs.db, runs.db as a folder and --runs-dir naming a file each
give one clear line naming the file and the fix (never a sqlite traceback); a 0-byte runs.db is rebuilt from the run
folders with a notice; `tnstudio runs repair` moves a damaged index aside (never deleting it) and restores every run
and every committed metric row from the folders, also after kill -9 in the middle of writing."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.design.templates import make_template
from engine.train.store import (METRICS, RECORD, RunStore, StoreDamaged, StoreError, read_metrics_file,
                                repair_store)

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def _populate(root: Path) -> tuple[RunStore, dict[str, list[dict]]]:
    """Two runs with metrics, statuses and results (one with a design, one dense, one resumed)."""
    store = RunStore(root)
    a = store.create_run({"dataset": "digits", "epochs": 2}, make_template("mpo", 64, 64, 2), name="tn")
    b = store.create_run({"dataset": "digits", "baseline": True}, None, name="dense", parent=a)
    store.set_status(a, "running", pid=12345678, host="elsewhere")  # another host: never marked dead here
    store.log_metrics(a, [{"step": s, "split": "train", "loss": 1.0 / s, "epoch": s / 10} for s in range(1, 6)])
    store.delete_metrics_after(a, 3)  # a resumed run drops the rows after its checkpoint ...
    store.log_metrics(a, [{"step": s, "split": "train", "loss": 2.0 / s} for s in (4, 5, 6)])  # ... and replays
    store.log_metrics(a, {"step": 6, "split": "test", "loss": 0.5, "accuracy": 0.75})
    store.log_metrics(b, [{"step": 1, "split": "train", "loss": 3.0}, {"step": 2, "split": "val", "loss": 2.5}])
    store.set_status(b, "completed", results={"test_accuracy": 0.9})
    store.update(a, checkpoint=str(root / a / "checkpoint.pt"), summary={"params": 3})
    return store, {rid: store.metrics(rid) for rid in (a, b)}


def _same_runs(store: RunStore, before: dict[str, list[dict]]) -> None:
    drop = ("seq", "time")
    for rid, rows in before.items():
        got = store.metrics(rid)
        assert [{k: v for k, v in r.items() if k not in drop} for r in got] == \
               [{k: v for k, v in r.items() if k not in drop} for r in rows]
    runs = {r["id"]: r for r in store.list_runs()}
    assert set(runs) == set(before)


FAULTS = {
    "garbage": lambda p: p.write_bytes(b"this is not a database at all" * 100),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:1500]),
    "half a page": lambda p: p.write_bytes(p.read_bytes()[:5000]),
    "foreign schema": lambda p: (p.unlink(), _foreign(p)),
    "a folder": lambda p: (p.unlink(), p.mkdir(), (p / "x").write_text("x")),
}


def _foreign(p: Path) -> None:
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE runs (name TEXT, age INTEGER)")
    con.execute("INSERT INTO runs VALUES ('bob', 3)")
    con.commit()
    con.close()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_damaged_index_is_named_and_repaired(fault, tmp_path):
    store, before = _populate(tmp_path)
    db = tmp_path / "runs.db"
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, as after a clean close
    for extra in ("runs.db-wal", "runs.db-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    FAULTS[fault](db)
    for args in (["list"], ["show", list(before)[0]], ["metrics", list(before)[0]]):
        rc, out, err = cli("runs", "--runs-dir", str(tmp_path), *args)
        assert rc == 2, (fault, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err
        assert str(db) in lines[0] and f"tnstudio runs --runs-dir {tmp_path} repair" in lines[0]
    with pytest.raises(StoreDamaged):
        RunStore(tmp_path)
    rc, out, err = cli("runs", "--runs-dir", str(tmp_path), "repair")
    assert rc == 0, err
    moved = sorted(tmp_path.glob("runs.db.damaged-*"))
    assert len([m for m in moved if not m.name.endswith(("-wal", "-shm"))]) == 1  # moved aside, never deleted
    assert "moved the damaged index aside" in out and "restored" in out
    _same_runs(RunStore(tmp_path), before)
    rc, out, err = cli("runs", "--runs-dir", str(tmp_path), "list")
    assert rc == 0 and "tn" in out and "dense" in out


def test_runs_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    rc, out, err = cli("runs", "--runs-dir", str(f), "list")
    assert rc == 2 and "a file is in the way" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(StoreError):
        RunStore(f)
    rc, out, err = cli("train", "--runs-dir", str(f), "--epochs", "1")
    assert rc == 2 and "a file is in the way" in err


def test_an_empty_index_is_rebuilt_from_the_folders_with_a_notice(tmp_path, caplog):
    store, before = _populate(tmp_path)
    for name in ("runs.db", "runs.db-wal", "runs.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / "runs.db").write_bytes(b"")  # 0 bytes: sqlite would read it as an empty store
    reopened = RunStore(tmp_path)
    assert reopened.notice and "restored 2 runs" in reopened.notice
    _same_runs(reopened, before)
    assert RunStore(tmp_path).notice is None  # once
    run = reopened.get_run(list(before)[0])
    assert run["status"] == "running" and run["checkpoint"].endswith("checkpoint.pt") and run["summary"] == {
        "params": 3}
    assert run["design"]["name"] == make_template("mpo", 64, 64, 2).name


def test_deleted_runs_stay_deleted(tmp_path):
    store, before = _populate(tmp_path)
    b = [r for r in before if store.get_run(r)["status"] == "completed"][0]
    (tmp_path / b).mkdir(exist_ok=True)
    store.delete_run(b)
    (tmp_path / b).mkdir()  # a folder left behind (e.g. files still open) ...
    (tmp_path / b / METRICS).write_text('{"step": 1, "split": "train", "loss": 1}\n')
    assert b not in {r["id"] for r in RunStore(tmp_path).list_runs()}  # ... is not a run again
    rep = repair_store(tmp_path)
    assert b not in rep["restored"] and b in rep["skipped"]


def test_repair_on_a_healthy_index_restores_rows_and_writes_old_runs_records(tmp_path):
    store, before = _populate(tmp_path)
    a, b = list(before)
    with sqlite3.connect(tmp_path / "runs.db") as con:  # the index lost rows the folder still has
        con.execute("DELETE FROM metrics WHERE run_id = ? AND step > 4", (a,))
    for name in (RECORD, "config.json", METRICS):  # b as made by an older TN Studio: no folder records
        (tmp_path / b / name).unlink()
    rep = repair_store(tmp_path)
    assert rep["moved"] is None and rep["resynced"] == [a] and rep["recorded"] == [b]
    _same_runs(RunStore(tmp_path), before)
    assert repair_store(tmp_path)["resynced"] == []  # idempotent
    (tmp_path / "runs.db").write_bytes(b"garbage" * 1000)  # and now b survives a lost index too
    repair_store(tmp_path)
    _same_runs(RunStore(tmp_path), before)


def test_a_half_written_metrics_line_is_skipped(tmp_path):
    store, before = _populate(tmp_path)
    a = list(before)[0]
    with open(tmp_path / a / METRICS, "a") as f:
        f.write('{"step": 99, "split": "tr')  # the tail a killed process leaves
    rows = read_metrics_file(tmp_path / a / METRICS)
    assert [r["step"] for r in rows] == [m["step"] for m in before[a]]


WRITER = """
import sys
from engine.train.store import RunStore
store = RunStore(sys.argv[1])
rid = sys.argv[2]
s = 0
while True:
    s += 1
    store.log_metrics(rid, {"step": s, "split": "train", "loss": 1.0 / s})
    if s % 7 == 0:
        store.update(rid, step=s, summary={"at": s})
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_during_writes_keeps_every_committed_row(seed, tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits"}, None, name="victim")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), rid], env=env)
    deadline = time.monotonic() + 60
    while len(store.metrics(rid)) < 20 + 15 * seed and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = store.metrics(rid)
    assert len(committed) >= 20
    assert [m["step"] for m in committed] == list(range(1, len(committed) + 1))
    json.loads((tmp_path / rid / RECORD).read_text())  # the record file is always whole (atomic rename)
    for name in ("runs.db", "runs.db-wal", "runs.db-shm"):  # and then the index is lost altogether
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / "runs.db").write_bytes(b"\0" * 4096)
    rc, out, err = cli("runs", "--runs-dir", str(tmp_path), "repair")
    assert rc == 0, err
    rows = RunStore(tmp_path).metrics(rid)
    assert [m["loss"] for m in rows[:len(committed)]] == [m["loss"] for m in committed]
    assert len(rows) - len(committed) in (0, 1)  # at most the one row written to the folder but not committed


def _open_store(root: str, barrier, answers) -> None:
    barrier.wait()
    try:
        RunStore(root)
        answers.put("ok")
    except StoreError as e:
        answers.put(str(e))


def test_processes_opening_a_new_store_together_all_open_it(tmp_path):
    """Search workers start together on a new runs folder. sqlite refuses a racing switch to WAL at once rather than
    waiting (before the fix about 1 round in 9 here lost an opener with "database is locked" within 2 ms)."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(40):
        root = tmp_path / f"r{round_}"
        root.mkdir()
        barrier, answers = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_store, args=(str(root), barrier, answers)) for _ in range(4)]
        for p in procs:
            p.start()
        got = [answers.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        failures += [g for g in got if g != "ok"]
    assert not failures, failures


# ----------------------------------------------------------------------------- faults found by an adversarial sweep
@pytest.mark.parametrize("column, value, words", [("summary", "{not json", "summary is not JSON"),
                                                  ("created", "yesterday", "created is 'yesterday', not a time"),
                                                  ("status", "zombie", "status is 'zombie'"),
                                                  ("step", "12a", "step is '12a', not a 64-bit integer"),
                                                  ("created", 1e300, "created is 1e+300, not a time"),
                                                  ("created", -1e18, "created is -1e+18, not a time"),
                                                  ("results", '{"test_accuracy": "high"}',
                                                   "result 'test_accuracy' is 'high', not a number"),
                                                  ("summary", '{"core_params": "abc"}',
                                                   "summary core_params is 'abc', not a number")])
def test_a_hand_edited_row_is_named_and_repair_rebuilds_it(column, value, words, tmp_path):
    """Values of the wrong type in a well-formed runs.db were tracebacks in every command (even `runs show` of another
    run, which lists the runs for baselines), and repair called the index whole."""
    store, before = _populate(tmp_path)
    a = next(r["id"] for r in store.list_runs() if r["name"] == "tn")
    with closing_db(tmp_path / "runs.db") as con:
        con.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, a))
    with pytest.raises(StoreDamaged, match=re.escape(words)) as e:
        store.list_runs()
    assert a in str(e.value) and "repair` moves it aside" in str(e.value)
    rc, out, err = cli("runs", "--runs-dir", str(tmp_path), "list")
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1
    report = repair_store(tmp_path)
    assert report["moved"] and words in report["reason"] and sorted(report["restored"]) == sorted(before)
    _same_runs(RunStore(tmp_path), before)


@contextlib.contextmanager
def closing_db(path: Path):
    con = sqlite3.connect(path)
    try:
        with con:
            yield con
    finally:
        con.close()


@pytest.mark.parametrize("line", ['{"step": Infinity, "split": "train", "loss": 1.0}',
                                  '{"step": NaN, "split": "train", "loss": 1.0}',
                                  '{"step": 1e300, "split": "train", "loss": 1.0}',
                                  '{"step": 99999999999999999999999, "split": "train"}',
                                  '{"step": 9, "split": "train", "epoch": {"a": 1}}',
                                  '{"step": 9, "split": "train", "accuracy": [1]}',
                                  '{"step": 9, "split": "train", "loss": "abc"}',
                                  '{"step": 9, "split": 3}'])
def test_metric_lines_of_the_wrong_type_are_skipped(line, tmp_path):
    """A hand-edited metrics.jsonl line was imported unchecked: OverflowError / ProgrammingError tracebacks from
    `runs list` and `runs repair` (with an empty index every command failed), or a run whose later `runs metrics`
    failed on a text loss."""
    store, before = _populate(tmp_path)
    for rid in before:
        with open(tmp_path / rid / METRICS, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    assert all(len(read_metrics_file(tmp_path / rid / METRICS)) == len(before[rid]) for rid in before)
    (tmp_path / "runs.db").write_bytes(b"")  # an empty index: rebuilt from the folders on open
    _same_runs(RunStore(tmp_path), before)
    rc, out, err = cli("runs", "--runs-dir", str(tmp_path), "repair")
    assert rc == 0 and "Traceback" not in err
    with pytest.raises(ValueError, match="is not"):
        RunStore(tmp_path).log_metrics(next(iter(before)), json.loads(line.replace("Infinity", "1e999")
                                                                      .replace("NaN", "1e999")))


def test_a_diverged_runs_nan_loss_is_still_a_metric(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits"}, None)
    store.log_metrics(rid, {"step": 1, "split": "train", "loss": float("nan"), "epoch": None})
    assert len(store.metrics(rid)) == 1 and len(read_metrics_file(tmp_path / rid / METRICS)) == 1
    store.log_metrics(rid, {"step": 2, "split": "test", "loss": 0.5, "accuracy": 0.7})  # no epoch: the API allows it
    rc, out, err = cli("runs", "--runs-dir", str(tmp_path), "show", rid)
    assert rc == 0 and "epoch -  loss 0.5000" in out


def test_a_full_disk_is_not_called_damage():
    from engine.train.store import _file_error

    for text in ("database or disk is full", "disk I/O error"):
        e = _file_error(Path("/x/runs.db"), sqlite3.OperationalError(text))
        assert type(e) is StoreError and "free disk space" in str(e) and "repair" not in str(e)


def test_repair_leaves_the_metrics_of_a_live_run_to_its_trainer(tmp_path):
    """The trainer appends a row to metrics.jsonl before committing it to the index: a repair in between saw more
    rows in the file, deleted and re-inserted them all, and the trainer's commit then landed twice."""
    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits"}, None)
    store.set_status(rid, "running", pid=os.getpid(), pid_start=None)  # this live process, on this host
    store.log_metrics(rid, [{"step": s, "split": "train", "loss": 1.0} for s in (1, 2)])
    with open(tmp_path / rid / METRICS, "a", encoding="utf-8") as f:  # the row the trainer is about to commit
        f.write(json.dumps({"step": 3, "split": "train", "loss": 1.0}) + "\n")
    seqs = [r["seq"] for r in store.metrics(rid)]
    assert repair_store(tmp_path)["resynced"] == []
    assert [r["seq"] for r in store.metrics(rid)] == seqs  # untouched (the trainer commits its row itself)
    store.set_status(rid, "stopped")  # once it has ended, the file is the truth again
    assert repair_store(tmp_path)["resynced"] == [rid] and len(store.metrics(rid)) == 3


def test_a_delete_the_index_refuses_keeps_the_runs_record(tmp_path, monkeypatch):
    import engine.train.store as store_mod

    store, before = _populate(tmp_path)
    b = next(r["id"] for r in store.list_runs() if r["name"] == "dense")
    monkeypatch.setattr(store_mod, "LOCK_WAIT_S", 0.2)
    con = sqlite3.connect(tmp_path / "runs.db", timeout=0.1)
    try:
        con.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked"):
            RunStore(tmp_path, recover=False).delete_run(b)
    finally:
        con.rollback()
        con.close()
    assert (tmp_path / b / RECORD).is_file() and not (tmp_path / b / (RECORD + ".deleting")).exists()
    (tmp_path / "runs.db").unlink()  # the index lost: the run comes back from its record
    assert b in {r["id"] for r in RunStore(tmp_path).list_runs()}


def test_two_resumes_at_once_start_one_trainer(tmp_path):
    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits"}, None)
    store.set_status(rid, "stopped")
    assert [store.claim_for_resume(rid), RunStore(tmp_path).claim_for_resume(rid)] == [True, False]
    assert store.get_run(rid)["status"] == "queued"


def test_a_reader_between_a_resumes_claim_and_its_process_lets_no_second_resume_in(tmp_path):
    """The claim kept the ended process's pid: a reader in between (the studio polls the store) found a queued run
    with a dead process, recorded it failed ('process died'), and a second resume claimed it again: two trainers
    and duplicated metric rows (seen with two `runs resume` while the store was listed)."""
    import socket
    import subprocess
    import sys

    from engine.train.store import process_start_time

    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits"}, None)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(ended.pid)
    ended.wait()
    store.set_status(rid, "stopped", pid=ended.pid, pid_start=start, host=socket.gethostname())
    assert store.claim_for_resume(rid)
    assert [r["status"] for r in RunStore(tmp_path).list_runs() if r["id"] == rid] == ["queued"]  # a reader
    assert store.get_run(rid)["status"] == "queued" and store.get_run(rid)["pid"] is None
    assert not RunStore(tmp_path).claim_for_resume(rid)  # the second resume is refused


@pytest.mark.parametrize("damage", ["random", "half", "empty", "folder", "gone"])
def test_resuming_from_a_damaged_checkpoint_is_refused_up_front(damage, tmp_path):
    import torch

    from engine.train.launcher import resume

    store = RunStore(tmp_path)
    rid = store.create_run({"dataset": "digits", "epochs": 1}, make_template("mpo", 64, 64, 2))
    store.log_metrics(rid, {"step": 1, "split": "test", "loss": 1.0, "accuracy": 0.5})
    store.set_status(rid, "stopped")
    ckpt = tmp_path / rid / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(3)}, "step": 1}, ckpt)
    whole = ckpt.read_bytes()
    if damage == "random":
        ckpt.write_bytes(os.urandom(len(whole)))
    elif damage == "half":
        ckpt.write_bytes(whole[: len(whole) // 2])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "folder":
        ckpt.unlink()
        ckpt.mkdir()
    else:
        import shutil

        shutil.rmtree(tmp_path / rid)
    with pytest.raises(ValueError) as e:
        resume(rid, tmp_path)
    text = str(e.value)
    assert ("is gone" if damage == "gone" else f"checkpoint {ckpt} is damaged") in text and "\n" not in text
    assert store.get_run(rid)["status"] == "stopped"  # nothing was started or changed


def test_a_copied_store_reads_its_own_checkpoints(tmp_path):
    """runs.db holds the absolute path a checkpoint was written at: a copied store read the original's checkpoint
    (spectra, export --run, features), or said "no checkpoint yet" once the original had moved."""
    import shutil

    store = RunStore(tmp_path / "runs")
    rid = store.create_run({"dataset": "digits"}, None)
    (tmp_path / "runs" / rid / "checkpoint.pt").write_bytes(b"original")
    store.update(rid, checkpoint=str(tmp_path / "runs" / rid / "checkpoint.pt"))
    shutil.copytree(tmp_path / "runs", tmp_path / "copy")
    shutil.rmtree(tmp_path / "runs")
    copy = RunStore(tmp_path / "copy")
    for run in (copy.get_run(rid), copy.list_runs()[0]):
        assert run["checkpoint"] == str(tmp_path / "copy" / rid / "checkpoint.pt")


def test_reading_a_runs_folder_that_does_not_exist_makes_nothing(tmp_path):
    """`runs --runs-dir TYPO list` (and show, metrics, export --run) made the folder and an empty runs.db there,
    then said "no runs"."""
    typo = tmp_path / "runz"
    for args in (["runs", "--runs-dir", str(typo), "list"], ["runs", "--runs-dir", str(typo), "show", "ab"],
                 ["runs", "--runs-dir", str(typo), "metrics", "ab"]):
        rc, out, err = cli(*args)
        assert rc == 2 and "no runs folder" in err and len(err.strip().splitlines()) == 1
    assert not typo.exists()


def test_a_hand_edited_run_record_is_skipped_with_a_warning_not_a_traceback(tmp_path, caplog):
    """run.json with a step of 10^30 (beyond sqlite's integers) was an OverflowError from list, show, repair and
    spectra once the index had to be rebuilt from the folders."""
    store, before = _populate(tmp_path)
    b = next(r["id"] for r in store.list_runs() if r["name"] == "dense")
    record = json.loads((tmp_path / b / RECORD).read_text())
    record["step"] = 10 ** 30
    (tmp_path / b / RECORD).write_text(json.dumps(record))
    (tmp_path / "runs.db").unlink()
    ids = {r["id"] for r in RunStore(tmp_path).list_runs()}
    assert b not in ids and ids == set(before) - {b} and "not a 64-bit integer" in caplog.text
    rc, out, err = cli("runs", "--runs-dir", str(tmp_path), "repair")
    assert rc == 0 and "Traceback" not in err


@pytest.mark.parametrize("failing", ["design", "config", "index"])
def test_a_run_that_cannot_be_created_leaves_no_folder(failing, tmp_path, monkeypatch):
    """A full disk while a run was created left its folder half made (a design file cut short, no row), which every
    later repair skipped; now the error is raised with nothing left behind, and the next run is created as usual."""
    import errno

    import engine.train.store as store_mod

    store = RunStore(tmp_path)
    real_write, real_connect = store_mod.atomic_write_text, RunStore._connect

    def write(path, text):
        if Path(path).name == {"design": "design.json", "config": "config.json"}.get(failing):
            Path(path).write_text(text[: len(text) // 2])  # cut short, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, text)

    @contextlib.contextmanager
    def connect(self):
        raise StoreError(f"{self.path}: database or disk is full: free disk space")
        yield  # pragma: no cover

    monkeypatch.setattr(store_mod, "atomic_write_text", write)
    if failing == "index":
        monkeypatch.setattr(RunStore, "_connect", connect)
    with pytest.raises(StoreError if failing == "index" else OSError):
        store.create_run({"dataset": "digits", "epochs": 1}, make_template("mpo", 64, 64, 2), name="full")
    monkeypatch.setattr(store_mod, "atomic_write_text", real_write)
    monkeypatch.setattr(RunStore, "_connect", real_connect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]
    assert store.list_runs() == []
    rid = store.create_run({"dataset": "digits", "epochs": 1}, make_template("mpo", 64, 64, 2))
    assert [r["id"] for r in store.list_runs()] == [rid]
    rep = repair_store(tmp_path)
    assert rep["skipped"] == [] and rep["runs"] == 1


@pytest.mark.parametrize("bad_id", ["../victim", "VICTIM_ABS", "..", "a/b", "a\\b", "", " ", "a\n", "\x1b[31mred"])
def test_a_run_id_from_the_index_never_reaches_outside_the_runs_folder(bad_id, tmp_path, capsys):
    """A hand-edited index whose run id was a path (`../victim`, an absolute one): `runs delete` removed that folder
    anywhere on disk (exit 0), and `runs list` wrote run.json into it. Every id read from the index must now be one
    folder name inside the runs folder: the commands refuse in one line (exit 2), touch nothing, and `runs repair`
    rebuilds the index from the run folders."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    root = tmp_path / "runs"
    store = RunStore(root)
    rid = store.create_run({"dataset": "digits"}, make_template("mpo", 12, 6, 2).to_dict())
    bad = str(victim) if bad_id == "VICTIM_ABS" else bad_id
    with contextlib.closing(sqlite3.connect(root / "runs.db")) as con, con:
        con.execute("UPDATE runs SET id = ?, status = 'running', pid = 999999999, host = ?", (bad, os.uname()[1]))
    with pytest.raises(StoreDamaged, match="is not a folder name inside"):
        store.run_dir(bad)
    for argv in (["runs", "--runs-dir", str(root), "delete", bad or "x"], ["runs", "--runs-dir", str(root), "list"],
                 ["runs", "--runs-dir", str(root), "show", bad or "x"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert main(["runs", "--runs-dir", str(root), "repair"]) == 0
    assert [r["id"] for r in RunStore(root).list_runs()] == [rid]


@pytest.mark.parametrize("name", [" ", "a\n", "\x1b[31mred", " lead"])
def test_a_run_folder_no_command_could_name_stays_a_folder(name, tmp_path, capsys):
    """A run folder renamed to whitespace, or to a name with a newline or a terminal escape, was restored as a run
    that `runs list` printed raw (one run over two lines, an escape sent to the terminal) and that no command could
    address (`runs show ' '`: 'give a run id'). Such a folder is now left as a folder, named escaped by `repair`."""
    root = tmp_path / "runs"
    store = RunStore(root)
    odd = store.create_run({"dataset": "digits"}, None, name="odd")
    kept = store.create_run({"dataset": "digits"}, None, name="kept")
    os.rename(root / odd, root / name)
    with contextlib.closing(sqlite3.connect(root / "runs.db")) as con, con:
        con.execute("DELETE FROM runs WHERE id = ?", (odd,))
    assert [r["id"] for r in RunStore(root).list_runs()] == [kept]
    assert main(["runs", "--runs-dir", str(root), "repair"]) == 0
    out = capsys.readouterr().out
    assert repr(name) in out and "\x1b" not in out.replace("\\x1b", "") and out.count("\n") == 3, out
    assert main(["runs", "--runs-dir", str(root), "list"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 2 and kept in out
    assert (root / name).is_dir()


def test_temporary_files_of_a_killed_write_are_removed_at_resume_and_repair(tmp_path):
    """A trainer killed while it wrote its checkpoint left `.checkpoint.pt.<hex>.tmp` (a checkpoint's size) in the
    run's folder for good. A resume (the folder's writer is dead once the run is claimed) and `runs repair` (runs
    that are not active) remove atomic_write's temporary files, and nothing else."""
    import torch

    from engine.train.launcher import resume, wait

    store = RunStore(tmp_path)
    a, b = (store.create_run({"dataset": "digits", "epochs": 1}, make_template("mpo", 64, 64, 2)) for _ in "ab")
    for rid in (a, b):
        store.log_metrics(rid, {"step": 1, "split": "test", "loss": 1.0, "accuracy": 0.5})
        store.set_status(rid, "stopped")
        torch.save({"model": {"w": torch.zeros(3)}, "step": 1}, tmp_path / rid / "checkpoint.pt")

    # what a SIGKILL in atomic_write leaves (an exception there removes the file itself)
    for rid in (a, b):
        (tmp_path / rid / ".checkpoint.pt.0123456789ab.tmp").write_bytes(b"half a checkpoint")
        (tmp_path / rid / "notes.tmp").write_text("mine")  # not atomic_write's: kept
    rep = repair_store(tmp_path)
    assert sorted(rep["temps"]) == sorted(f"{rid}/.checkpoint.pt.0123456789ab.tmp" for rid in (a, b))
    (tmp_path / a / ".checkpoint.pt.ba9876543210.tmp").write_bytes(b"half a checkpoint")
    resume(a, tmp_path)
    assert not list((tmp_path / a).glob(".checkpoint.pt.*.tmp"))
    assert (tmp_path / a / "notes.tmp").is_file() and (tmp_path / b / "notes.tmp").is_file()
    wait(a, tmp_path, timeout=120)  # its trainer ends (this checkpoint holds no model it can load)
