"""Design search on a real PostgreSQL server: two worker processes finish one study together through an RDB URL,
as workers on several machines would.

The fixture starts Debian's PostgreSQL (package ``postgresql``; ``make test`` installs it when missing, and so does
this fixture when it runs as root) in a temporary data directory on a free loopback port, and stops it after. The
server runs as the ``postgres`` system user when the tests run as root (initdb refuses root). The test skips, with
the reason, only when no PostgreSQL can be installed or the Python driver is missing."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time


import optuna
import pytest

from engine.search import Budget, LayerSpace, SearchSpec, study_report
from engine.search.study import create_search, start_workers, worker_log
from engine.train.store import RunStore

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def _install_postgres() -> str | None:
    """Debian's postgresql package (apt-get, as root); returns why it could not be installed, or None."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed and apt-get cannot install it here (not root or not Debian)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode:
            return f"apt-get could not install postgresql: {(r.stderr or r.stdout).strip()[-300:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    try:
        import psycopg  # noqa: F401 - SQLAlchemy 2.1 reaches PostgreSQL through psycopg 3
    except ImportError:
        pytest.skip("the PostgreSQL driver is missing: pip install 'psycopg[binary]' (in the test extra)")
    bindir = _pg_bin()
    if bindir is None:
        why = _install_postgres()
        bindir = _pg_bin()
        if bindir is None:
            pytest.skip(why or "PostgreSQL was installed but no initdb was found under /usr/lib/postgresql")
    root = os.geteuid() == 0
    if root:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root but there is no 'postgres' user to run the server as")
    as_server = ["runuser", "-u", "postgres", "--"] if root else []
    tmp = tempfile.mkdtemp(prefix="tnstudio-pg-")
    if root:
        shutil.chown(tmp, "postgres", "postgres")
    data, port = os.path.join(tmp, "data"), _free_port()
    run = lambda cmd, **kw: subprocess.run(as_server + cmd, capture_output=True, text=True, timeout=120,  # noqa
                                           cwd=tmp, **kw)
    r = run([f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
    assert r.returncode == 0, r.stderr
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    r = run([f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(tmp, "server.log"), "-w", "-t", "60",
             "start"])
    assert r.returncode == 0, r.stderr + r.stdout
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run([f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(tmp, ignore_errors=True)


def test_two_workers_finish_one_study_on_postgresql(postgres_url):
    space = LayerSpace(256, 256, kinds=("ttn", "mpo", "attn"), legs=(4, 5),
                       bond_ranges=(("ttn", (2, 4)), ("mpo", (2, 4)), ("attn", (2, 3))))
    spec = SearchSpec(name="pg", space=space, budget=Budget(max_params=2000), trials=6, epochs=4,
                      startup_trials=4, pruner="median")
    create_search(spec, postgres_url)
    procs = start_workers("pg", 2, postgres_url)
    try:
        codes = [p.wait(timeout=240) for p in procs]
        assert codes == [0, 0], "\n".join(f"--- worker {i}: exit {c}\n" + worker_log("pg", i).read_text()[-3000:]
                                         for i, c in enumerate(codes) if c != 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    rep = study_report("pg", postgres_url)
    assert rep.storage == postgres_url and rep.done
    assert rep.counts["trained"] >= 6 and rep.counts["failed"] == 0 and rep.counts["running"] == 0
    assert rep.front
    # both workers trained trials of this one study, and each trial's run is in the (shared) run store
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials if t.user_attrs.get("trained")}
    assert pids == {p.pid for p in procs}
    store = RunStore()
    for t in rep.trials:
        if t.status == "complete" and t.duplicate_of is None:
            assert store.get_run(t.run_id, with_design=False)["summary"]["search"]["storage"] == postgres_url
    # companion studies (pruning per size) live in the same database and stay out of the list
    from engine.search.storage import list_studies

    assert list_studies(postgres_url) == ["pg"]
    assert any("/prune/" in s.study_name for s in optuna.get_all_study_summaries(postgres_url, False))



@pytest.mark.slow
@pytest.mark.long
def test_a_killed_worker_is_failed_by_heartbeats_and_a_restarted_worker_finishes(postgres_url, monkeypatch):
    import signal

    monkeypatch.setenv("TNSTUDIO_SEARCH_HEARTBEAT", "1,3")  # beat every second, stale after 3 s
    space = LayerSpace(256, 256, kinds=("ttn", "mpo"), legs=(5,), bond_ranges=(("ttn", (2, 3)), ("mpo", (2, 3))),
                       per_bond=False)
    spec = SearchSpec(name="pgkill", space=space, budget=Budget(max_params=2000), trials=4, epochs=10,
                      startup_trials=2, pruner="none")
    create_search(spec, postgres_url)
    (first,) = start_workers("pgkill", 1, postgres_url)
    study = optuna.load_study(study_name="pgkill", storage=postgres_url)
    S = optuna.trial.TrialState
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == S.RUNNING and t.user_attrs.get("trained")]
            if running and any(t.state == S.COMPLETE for t in trials):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no trial was training after one had finished")
        victim = running[0]
        finished = {t.number: t.values for t in trials if t.state == S.COMPLETE}
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    (second,) = start_workers("pgkill", 1, postgres_url, first_index=1)  # the restarted worker
    try:
        assert second.wait(timeout=180) == 0
    finally:
        if second.poll() is None:
            second.kill()
    rep = study_report("pgkill", postgres_url)
    for number, values in finished.items():
        t = rep.trial(number)
        assert t.status == "complete" and [t.val_accuracy, t.size] == values
    assert rep.trial(victim.number).status == "failed"  # stale: its worker stopped beating
    retried = [t for t in rep.trials if t.retry_of == victim.number]
    assert len(retried) == 1 and retried[0].status == "complete"
    assert retried[0].candidate == rep.trial(victim.number).candidate
    assert rep.counts["trained"] >= 4 and rep.counts["running"] == 0
