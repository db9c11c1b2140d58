"""A search's embedded journal after a crash mid-write (a torn last line), and workers that cannot work: real
journals, real worker processes, a real damaged run store."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
import pytest

from engine.cli import main
from engine.search import Budget, LayerSpace, SearchSpec
from engine.search.storage import StorageError, open_storage, storage_url
from engine.search.study import create_search, open_search, resume_search
from engine.search.worker import run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(name: str, **kw) -> SearchSpec:
    space = LayerSpace(64, 64, kinds=("mpo",), legs=(3,), bond_ranges=(("mpo", (2, 3)),), per_bond=False)
    kw.setdefault("epochs", 1)
    kw.setdefault("startup_trials", 1)
    return SearchSpec(name=name, space=space, budget=Budget(), **kw)


def _finish_trials(name: str, n: int) -> None:
    """``n`` finished trials, told through the study (no training: the journal is what is under test)."""
    study, _ = open_search(name)
    for i in range(n):
        trial = study.ask()
        trial.set_user_attr("label", f"t{i}")
        study.tell(trial, [0.5 + i / 100, 100.0 + i])


def _complete(name: str) -> dict[int, list[float]]:
    study = optuna.load_study(study_name=name, storage=open_storage(storage_url(name), heartbeat=False))
    return {t.number: t.values for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


def _every_line_parses(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n")
    for line in data.splitlines():
        json.loads(line)


def test_a_torn_last_line_is_set_aside_before_the_search_writes_again(caplog):
    create_search(_spec("s1", trials=2))
    _finish_trials("s1", 3)
    path = storage_url("s1")
    before = _complete("s1")
    assert len(before) == 3
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-40])  # a crash 40 bytes before the end of the last append
    last_start = data[:-1].rfind(b"\n") + 1
    assert _complete("s1") == {k: v for k, v in before.items() if k != 2}  # Optuna's reader skips the torn line

    resume_search("s1", trials=4)  # writes (the new size): the torn line is set aside first
    torn = Path(path + ".torn")
    assert torn.read_bytes() == data[last_start:-40]  # every removed byte kept beside the journal
    assert "set aside in" in caplog.text and str(torn) in caplog.text
    _every_line_parses(path)
    _finish_trials("s1", 2)  # more trials after the mend: all appended on clean lines
    _every_line_parses(path)
    after = _complete("s1")  # a fresh reader replays the whole study
    assert {k: after[k] for k in (0, 1)} == {k: before[k] for k in (0, 1)} and len(after) == 4
    assert open_search("s1")[1].trials == 4


def test_a_tail_torn_while_a_storage_is_open_is_set_aside_at_its_next_append():
    """A worker beside this one that crashed mid-append: the next append of any open storage (under Optuna's
    journal lock) lands on a clean line, so the study stays readable."""
    create_search(_spec("live"))
    study, _ = open_search("live")  # open before the damage, as a running worker is
    _finish_trials("live", 2)
    path = storage_url("live")
    with open(path, "ab") as f:
        f.write(b'{"op_code":6,"worker_id":"x","trial_id":1,"state":1,"values":[0.9,10')  # cut short
    trial = study.ask()
    study.tell(trial, [0.7, 50.0])
    _every_line_parses(path)
    assert Path(path + ".torn").read_bytes().endswith(b'"values":[0.9,10')
    assert sorted(_complete("live")) == [0, 1, 2]


def test_a_second_torn_tail_gets_its_own_file_and_a_foreign_file_is_never_cut(tmp_path):
    create_search(_spec("twice"))
    path = storage_url("twice")
    for piece in (b'{"op_code":2,"worker', b'{"op_code":8,"tri'):
        with open(path, "ab") as f:
            f.write(piece)
        resume_search("twice", trials=3)
    assert Path(path + ".torn").read_bytes() == b'{"op_code":2,"worker'
    assert Path(path + ".2.torn").read_bytes() == b'{"op_code":8,"tri'
    _every_line_parses(path)

    foreign = tmp_path / "notes.txt"
    foreign.write_bytes(b"my notes, no newline")
    with pytest.raises(StorageError, match="not a search journal"):
        create_search(_spec("f"), str(foreign))
    assert foreign.read_bytes() == b"my notes, no newline" and not list(tmp_path.glob("*.torn"))


def test_cli_join_after_a_torn_journal_keeps_every_finished_trial(capsys):
    args = ["--in", "64", "--out", "64", "--kinds", "mpo", "--legs", "3", "--epochs", "1", "--startup-trials", "1",
            "--no-per-bond", "--bond-range", "mpo=2:3", "--name", "cut"]
    assert main(["search", *args, "--trials", "1", "--workers", "1"]) == 0
    path = storage_url("cut")
    before = _complete("cut")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-40])
    capsys.readouterr()
    rc = main(["search", "join", "cut", "--trials", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Pareto front" in out and "set aside in" in err
    assert Path(path + ".torn").exists()
    _every_line_parses(path)
    assert main(["search", "show", "cut", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["counts"]["trained"] >= 2 and rep["done"]
    after = _complete("cut")
    assert all(after.get(k) == v for k, v in before.items() if k != max(before))  # nothing finished is lost


def test_cli_search_whose_workers_cannot_open_the_run_store_exits_2_naming_it(capsys, _tnstudio_home):
    runs = _tnstudio_home / "runs"
    runs.mkdir()
    (runs / "runs.db").write_bytes(b"garbage\n")
    rc = main(["search", "--in", "64", "--out", "64", "--kinds", "mpo", "--trials", "2", "--epochs", "1",
               "--name", "dead", "--workers", "1", "--startup-trials", "1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "worker 0 failed" in line and "runs.db is damaged" in line and "tnstudio runs repair" in line
    assert "Traceback" not in err
    assert (runs / "runs.db").read_bytes() == b"garbage\n"  # left for `runs repair`, never touched


def test_a_worker_whose_trials_keep_failing_ends_naming_the_cause(monkeypatch, _tnstudio_home):
    """The run store damaged after the worker opened it: every trial fails; the worker used to propose trials
    for ever (failed ones count towards nothing)."""
    from engine.search import objective as objective_mod

    create_search(_spec("fail", trials=2))
    opened = objective_mod.SearchObjective.__init__

    def open_then_damage(self, *a, **kw):
        opened(self, *a, **kw)
        (Path(self.store.root) / "runs.db").write_bytes(b"garbage\n")

    monkeypatch.setattr(objective_mod.SearchObjective, "__init__", open_then_damage)
    result = {}
    thread = threading.Thread(target=lambda: result.update(res=run_worker("fail")), daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the worker kept proposing failing trials"
    res = result["res"]
    assert res.stopped_by == "failures" and res.trials_run == 3
    assert "3 trials in a row failed" in res.error and "runs.db is damaged" in res.error


def test_a_journal_that_records_no_search_says_so(capsys):
    """A journal cut before its first record, or not a journal at all, was reported as 'no search' alone."""
    create_search(_spec("whole"))
    path = Path(storage_url("whole"))
    for name, data in (("cut", path.read_bytes()[:40]), ("binary", b"\xff\xfe\x00")):
        Path(storage_url(name)).write_bytes(data)
        assert main(["search", "show", name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"no search {name!r} in {storage_url(name)}: the file records no search" in err
        assert f"{len(data):,} bytes" in err
    assert main(["search", "show", "whole"]) == 0
