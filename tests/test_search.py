"""Design search: a real Optuna study over real designs, priced by the cost model, trained on digits (few epochs),
with real worker processes on the embedded journal storage (the PostgreSQL test is in test_search_postgres.py)."""
from __future__ import annotations

import json
import math
import os
import signal
import time

import optuna
import pytest

from engine.cli import main
from engine.search import Budget, Candidate, LayerSpace, SearchSpec, run_search, study_report
from engine.search.budget import Feasibility
from engine.search.objective import companion_name, size_bucket, stratified_holdout
from engine.search.report import build_report
from engine.search.spec import SpecError
from engine.search.storage import open_storage, redact, storage_url
from engine.search.study import create_search, open_search, start_workers, stop_search
from engine.search.worker import counts, reap_dead_trials, run_worker
from engine.train.store import RunStore

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(name: str, **kw) -> SearchSpec:
    space = kw.pop("space", None) or LayerSpace(256, 256, kinds=("ttn", "mpo"), legs=(4, 5), bond_ranges=(
        ("ttn", (2, 3)), ("mpo", (2, 3))))
    kw.setdefault("epochs", 2)
    kw.setdefault("startup_trials", 4)
    return SearchSpec(name=name, space=space, budget=kw.pop("budget", Budget(max_params=2000)), **kw)


# --------------------------------------------------------------------------- space and budget (no training)
def test_space_proposes_buildable_candidates_with_kind_dependent_parameters():
    space = LayerSpace(256, 256)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    seen_kinds, per_bond = set(), 0
    for _ in range(60):
        trial = study.ask()
        cand = space.suggest(trial)
        assert Candidate.from_dict(json.loads(json.dumps(cand.to_dict()))) == cand
        assert f"{cand.kind}.bond" in trial.params or f"{cand.kind}.bond0" in trial.params
        assert not any(k.endswith(".bond") and not k.startswith(cand.kind) for k in trial.params)
        per_bond += isinstance(cand.bond, tuple)
        try:
            d = cand.build()
        except ValueError:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        assert (d.in_features, d.out_features) == (256, 256)
        assert d.name == cand.label
        seen_kinds.add(cand.kind)
        study.tell(trial, [0.5, d.params])
    assert len(seen_kinds) >= 5 and per_bond > 0
    assert "4x4x4x2x2/4x4x4x2x2" in space.leg_choices()
    assert LayerSpace.from_dict(space.to_dict()) == space


@pytest.mark.parametrize("n_in,n_out", [(7, 7), (12, 12), (256, 10), (10, 256), (49, 6), (256, 256)])
def test_leg_choices_never_pair_size_one_legs(n_in, n_out):
    """More legs than either side has prime factors made sites with a size-1 leg on both sides (a 7x7 search
    proposed 7x1x1x1 MERAs: cores and no leg); such counts collapse to the largest useful one, listed once."""
    from sympy import factorint

    space = LayerSpace(n_in, n_out)
    choices = [tuple(tuple(map(int, side.split("x"))) for side in c.split("/")) for c in space.leg_choices()]
    assert len(set(choices)) == len(choices)
    for a, b in choices:
        assert math.prod(a) == n_in and math.prod(b) == n_out and len(a) == len(b)
        assert not any(x == y == 1 for x, y in zip(a, b)) or len(a) == 2, (a, b)
    useful = max(2, *(sum(factorint(n).values()) for n in (n_in, n_out)))
    assert sorted(len(a) for a, _ in choices) == sorted({min(k, useful) for k in space.legs})


def test_budget_prices_with_the_cost_model_and_names_every_broken_limit():
    d = Candidate("mpo", 256, 256, (4, 4, 4, 2, 2), (4, 4, 4, 2, 2), 8).build()
    ok = Budget(max_params=5000).check(d)
    assert ok.ok and ok.params == d.params == 2464 and ok.constraints["params"] == pytest.approx(2464 / 5000 - 1)
    bad = Budget(max_params=2000, max_flops=1e3, max_train_memory=1024, batch=32).check(d)
    assert not bad.ok and len(bad.reasons) == 3
    assert bad.reasons[0] == "params 2,464 > max 2,000"
    assert "at batch 32" in bad.reasons[1] and "forward flops" in bad.reasons[1]
    assert all(v > 0 for v in bad.constraints.values())
    assert isinstance(bad, Feasibility) and bad.to_dict()["ok"] is False


def test_holdout_is_stratified_and_fixed():
    import numpy as np

    y = np.repeat(np.arange(4), 25)
    tr, va = stratified_holdout(y, 0.2, seed=3)
    assert len(va) == 20 and set(np.bincount(y[va])) == {5} and not set(tr) & set(va)
    assert (stratified_holdout(y, 0.2, seed=3)[1] == va).all()
    assert size_bucket(140) == 7 and companion_name("s", "params", 140) == "s/prune/params-2^7"


def test_infeasible_candidates_are_pruned_with_the_reason_and_cost_no_training():
    spec = _spec("tight", space=LayerSpace(256, 256, kinds=("mpo",), legs=(5,), bond_ranges=(("mpo", (6, 8)),),
                                           per_bond=False), budget=Budget(max_params=500), trials=1,
                 max_candidates=5)
    rep = run_search(spec, workers=0)
    assert rep.counts["total"] == 5 and rep.counts["pruned_budget"] == 5 and rep.counts["trained"] == 0
    assert all(t.status == "pruned" and t.pruned_by == "budget" and "> max 500" in t.reason for t in rep.trials)
    assert rep.front == [] and list(rep.budget_reasons) == ["params > max 500"]
    assert rep.done and rep.to_dict()["done"]  # out of candidates: the workers have ended (it said not done)
    assert RunStore().list_runs() == []  # nothing trained
    study, _ = open_search("tight")
    assert all(t.constraints["params"] > 0 for t in study.trials)  # the sampler sees them as infeasible


def test_repeats_are_found_by_the_network_not_by_the_choices():
    """Two-leg TTN, aTTN and MERA build one network (a gelu has nowhere to go there), and per-bond dimensions that
    are all equal build the uniform design: each had been trained again and listed on the front once per choice.
    Here every candidate is that one network: one training, every other candidate a repeat of it, one front entry,
    and no gelu offered or shown."""
    space = LayerSpace(64, 64, kinds=("ttn", "attn", "mera"), factorisations=(((8, 8), (8, 8)),),
                       bond_ranges=(("ttn", (2, 2)), ("attn", (2, 2)), ("mera", (2, 2))), activations=("none", "gelu"))
    assert all(space.activation_choices(k, (8, 8), (8, 8)) == ("none",) for k in space.kinds)
    rep = run_search(_spec("same-net", space=space, budget=Budget(), trials=2, epochs=1, max_candidates=4),
                     workers=0)  # asks for 2 networks where there is 1: ends out of candidates
    assert rep.counts["total"] == 4 and rep.counts["trained"] == 1 and rep.counts["duplicates"] == 3
    assert len(rep.front) == 1 and not any("gelu" in (t.label or "") for t in rep.trials)
    designs = {Candidate.from_dict(t.candidate).build().fingerprint() for t in rep.trials}
    assert len(designs) == 1 and rep.done  # independently: one network; the search ended out of candidates


def test_the_space_size_counts_what_it_proposes():
    """size() counted a per-bond mode for a one-bond MPO that suggest() never offers, and a gelu where the two-leg
    MPO has no place for one (20 here instead of 14):
    checked against the distinct candidates 400 random draws propose."""
    space = LayerSpace(64, 64, kinds=("mpo",), legs=(2, 3), bond_ranges=(("mpo", (2, 3)),))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(400):
        trial = study.ask()
        seen.add(space.suggest(trial).key)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert len(seen) == space.size() == 2 + (2 + 2 ** 2) * 2  # 8x8: one bond, no activation; 4x4x4: two


def test_a_stored_spec_with_unknown_keys_is_refused():
    """Unknown keys of a stored spec (a limit from a newer version, a typo in a hand edit) were dropped, the search
    ran without them and the storage was rewritten without them; now refused, naming them."""
    spec = _spec("keys").to_dict()
    for where, extra in ((None, "max_energy_j"), ("budget", "max_latency_ms"), ("space", "bond_mode")):
        d = json.loads(json.dumps(spec))
        (d if where is None else d[where])[extra] = 1
        with pytest.raises(SpecError, match=f"unknown key '{extra}'"):
            SearchSpec.from_dict(d)
    assert SearchSpec.from_dict(spec) == SearchSpec.from_dict(json.loads(json.dumps(spec)))


def test_budget_reasons_are_counted_per_limit_whatever_the_values_unit():
    """'train memory 1.2 MiB at batch 32 > max 300 KiB' and '... 400 KiB ...' were counted as two limits
    ('train memory MiB', 'train memory KiB'); one key per limit now."""
    from engine.search.report import _budget_key

    assert _budget_key("train memory 1.2 MiB at batch 32 > max 300 KiB") == \
        _budget_key("train memory 400 KiB at batch 32 > max 300 KiB") == ["train memory > max 300 KiB"]
    assert _budget_key("forward flops 3.1 kFLOP at batch 8 > max 500 FLOP; params 2,464 > max 2,000") == \
        ["forward flops > max 500 FLOP", "params > max 2,000"]


# --------------------------------------------------------------------------- the CLI, two worker processes
def test_cli_search_with_two_workers_then_show_json(capsys):
    rc = main(["search", "--in", "256", "--out", "256", "--dataset", "digits", "--max-params", "2000", "--trials",
               "6", "--workers", "2", "--name", "S", "--epochs", "3", "--kinds", "ttn,mpo,attn,tucker"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "Pareto front" in out and "trained]" in out
    assert main(["search", "show", "S", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["counts"]["trained"] >= 6 and rep["done"]
    for t in rep["trials"]:
        assert t["status"] in ("complete", "pruned"), t
        assert t["params"] is not None and t["label"]
        if t["status"] == "pruned":
            assert t["reason"] and t["pruned_by"] in ("budget", "accuracy", "invalid")
        elif t["duplicate_of"] is None:
            assert 0 <= t["val_accuracy"] <= 1 and 0 <= t["test_accuracy"] <= 1 and t["run_id"]
    front = rep["front"]
    assert front and all(f["on_front"] for f in front)
    assert [f["params"] for f in front] == sorted(f["params"] for f in front)
    accs = [f["val_accuracy"] for f in front]
    assert accs == sorted(accs)  # a front: more params only for more accuracy
    complete = [t for t in rep["trials"] if t["status"] == "complete"]
    for t in complete:  # nothing complete beats a front design on both objectives
        assert not any(t["val_accuracy"] > f["val_accuracy"] and t["params"] < f["params"] for f in front)
    # each trained trial is a run in the store, linked back to the study
    store = RunStore()
    for t in complete:
        if t["duplicate_of"] is None:
            run = store.get_run(t["run_id"], with_design=False)
            assert run["status"] == "completed" and run["summary"]["search"]["trial"] == t["number"]
            assert run["results"]["val_accuracy"] == pytest.approx(t["val_accuracy"])
            splits = {m["split"] for m in store.metrics(t["run_id"])}
            assert splits == {"train", "test", "val"}
    # the embedded storage is a journal in the studio home; show without --json, list, and clear errors
    assert storage_url("S").endswith("search/S.journal")
    assert main(["search", "list"]) == 0 and capsys.readouterr().out.split() == ["S"]
    assert main(["search", "show", "nope"]) == 2 and "no search 'nope'" in capsys.readouterr().err
    assert main(["search", "--in", "256", "--out", "256", "--name", "S", "--max-params", "999"]) == 2
    assert "exists with another search" in capsys.readouterr().err
    assert main(["search", "--in", "256", "--out", "256", "--name", "bad name"]) == 2
    assert main(["search", "--in", "256", "--out", "256", "--name", "x", "--dataset", "teacher"]) == 2
    assert "classification" in capsys.readouterr().err


# --------------------------------------------------------------------------- killed and stopped workers
def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _training_trial(name: str):
    study, _ = open_search(name)
    running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
               if t.user_attrs.get("trained") and t.user_attrs.get("run_id")]
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return (running[0], len(done)) if running and done else None


def test_a_run_recorded_by_a_worker_that_died_before_starting_it_is_failed_with_the_trial(tmp_path):
    """The window between recording a trial's run (queued, no process yet) and starting it: a worker killed there
    leaves a run no process will ever end; reaping the trial fails that run too (found by the full suite)."""
    import socket
    import subprocess
    import sys

    from engine.design.templates import make_template
    from engine.train.config import RunConfig

    create_search(_spec("orphan"))
    study, _ = open_search("orphan")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(RunConfig(), make_template("mpo", 256, 256, 2))
    trial = study.ask()
    for key, value in (("worker", {"host": socket.gethostname(), "pid": dead.pid, "pid_start": None}),
                       ("trained", True), ("run_id", run_id), ("runs_dir", str(store.root))):
        trial.set_user_attr(key, value)
    assert store.get_run(run_id)["status"] == "queued"
    assert reap_dead_trials(study) == [trial.number]
    run = store.get_run(run_id)
    assert run["status"] == "failed" and "worker died before the run started" in run["reason"]
    assert study.trials[trial.number].state == optuna.trial.TrialState.FAIL


def test_killed_worker_loses_no_finished_trial_and_a_restarted_worker_continues():
    spec = _spec("kill", trials=3, epochs=8, pruner="none")
    create_search(spec)
    (proc,) = start_workers("kill", 1)
    try:
        victim, n_done = _wait(lambda: _training_trial("kill"), 120, "a finished trial and one training")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: t.values for t in open_search("kill")[0].get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))}
    assert len(before) >= n_done >= 1
    # a new worker (here: in this process) fails the dead worker's trial, queues it again and finishes the study
    res = run_worker("kill")
    assert victim.number in res.reaped and res.stopped_by == "target"
    rep = study_report("kill")
    for number, values in before.items():  # every finished trial is still there, unchanged
        assert rep.trial(number).status == "complete" and [rep.trial(number).val_accuracy,
                                                           rep.trial(number).size] == values
    dead = rep.trial(victim.number)
    assert dead.status == "failed" and "worker process died" in dead.reason
    retry = [t for t in rep.trials if t.retry_of == victim.number]
    assert len(retry) == 1 and retry[0].status == "complete" and retry[0].candidate == dead.candidate
    assert rep.counts["trained"] >= 3
    assert RunStore().get_run(victim.user_attrs["run_id"])["status"] == "failed"  # the store saw the process die
    assert reap_dead_trials(open_search("kill")[0]) == []  # nothing left to reap


def test_stop_ends_workers_and_join_continues(capsys):
    spec = _spec("halt", trials=2, epochs=20, pruner="none")
    create_search(spec)
    (proc,) = start_workers("halt", 1)
    try:
        _wait(lambda: _training_trial("halt"), 120, "a trial training")
        assert main(["search", "stop", "halt"]) == 0
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    rep = study_report("halt")
    (victim,) = [t for t in rep.trials if t.status == "failed"]  # the trial it was training
    assert rep.stopped and "interrupted" in victim.reason
    (queued,) = [t for t in rep.trials if t.status == "waiting"]  # its candidate, queued again
    assert queued.retry_of == victim.number
    run = RunStore().get_run(victim.run_id, with_design=False)
    assert run["status"] == "stopped" and "search was stopped" in run["reason"]
    assert not stop_search("halt")  # asked already
    capsys.readouterr()
    assert main(["search", "stop", "halt", "--json"]) == 0  # --json printed the text line
    assert json.loads(capsys.readouterr().out) == {"search": "halt", "asked": False}
    assert main(["search", "join", "halt", "--workers", "1"]) == 0
    rep = study_report("halt")
    assert not rep.stopped and rep.counts["trained"] >= 2 and rep.counts["waiting"] == 0
    retried = rep.trial(queued.number)
    assert retried.status == "complete" and retried.candidate == victim.candidate
    assert "Pareto front" in capsys.readouterr().out


def test_report_redacts_passwords():
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("/tmp/x.journal") == "/tmp/x.journal"
    storage = open_storage(storage_url("r"))
    study = optuna.create_study(study_name="r", storage=storage, directions=["maximize", "minimize"])
    study.set_user_attr("tnstudio.spec", _spec("r").to_dict())
    rep = build_report(study, "x")
    assert rep.counts["total"] == 0 and rep.front == [] and counts(study)["trained"] == 0


def test_search_reads_memory_budgets_as_cost_does():
    """`search --max-train-memory 2e6` was taken while `cost --memory-budget 2e6` was refused (two parsers)."""
    from engine.cli import build_parser
    from engine.cli.common import UserError
    from engine.cli.search import build_spec
    from engine.contract.slicing import parse_bytes

    def spec(memory):
        args = build_parser().parse_args(["search", "--in", "64", "--out", "64", "--name", "m",
                                          f"--max-train-memory={memory}", "--max-flops", "5M", "--batch", "8"])
        return build_spec(args)

    for text, expected in (("2e6", 2_000_000), ("16MiB", 16 << 20), ("1.5G", 1_500_000_000), ("4096", 4096)):
        assert spec(text).budget.max_train_memory == parse_bytes(text) == expected
        assert spec(text).budget.max_flops == 5e6
    for bad in ("0", "-1MiB", "1e30", "lots"):
        with pytest.raises(UserError, match="--max-train-memory: (a memory size|the memory budget) must be"):
            spec(bad)
    args = build_parser().parse_args(["search", "--in", "64", "--out", "64", "--name", "m", "--bond-range",
                                      "mpo=2:3", "--bond-range", "ttn=2:4", "--bond-range", "mpo=5:6"])
    with pytest.raises(UserError, match="--bond-range gives 'mpo' twice"):  # the last one had silently won
        build_spec(args)


def test_a_worker_that_cannot_start_stops_the_started_ones_and_says_why(monkeypatch, capsys):
    """The second of two workers could not be started (no process slot): the first kept running unseen and the
    CLI printed a traceback. Now the started worker is stopped and the error names the worker, the cause and how
    to continue, in one line."""
    import errno
    import subprocess
    import sys

    import engine.search.study as study_mod

    started = []
    real = subprocess.Popen

    def popen(cmd, **kwargs):
        if started:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        proc = real([sys.executable, "-c", "import signal, sys, time\n"
                     "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nprint('up', flush=True)\n"
                     "time.sleep(120)"], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"up"  # its SIGTERM handler is in place
        started.append(proc)
        return proc

    monkeypatch.setattr(study_mod.subprocess, "Popen", popen)
    with pytest.raises(study_mod.WorkerFailed) as info:
        start_workers("slots", 2)
    msg = str(info.value)
    assert "worker 1 could not be started: Resource temporarily unavailable" in msg and "\n" not in msg
    assert "the 1 started before it were stopped" in msg and "tnstudio search join slots" in msg
    assert started[0].returncode == 0  # ended by its SIGTERM, waited for


@pytest.mark.parametrize("argv,message", [
    (["--kinds", ""], "--kinds is empty"), (["--activations", " "], "--activations is empty"),
    (["--lateral", ","], "--lateral is empty"), (["--legs", ""], "--legs is empty"),
    (["--in-factors", "", "--out-factors", ""], "--in-factors is empty"),
    (["--max-flops", "1e400", "--batch", "8"], "--max-flops must be at least 1 FLOP and finite"),
    (["--max-flops", "1e-30", "--batch", "8"], "--max-flops must be at least 1 FLOP and finite"),
    (["--max-flops", "5kib", "--batch", "8"], "--max-flops must be a number of FLOPs"),
])
def test_empty_lists_and_meaningless_flop_budgets_are_refused(argv, message, capsys):
    """An option given with nothing in it (`--kinds ''`) had meant the defaults, `--max-flops 1e400` was stored as
    infinity (written as JSON's invalid `Infinity`), `5kib` read as FLOPs: each is one line now, exit 2, before
    anything is stored."""
    from engine.cli import main

    code = main(["search", "--in", "64", "--out", "64", "--name", "hostile", "--dataset", "digits", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(Exception):
        open_search("hostile")
