"""The run store: every training run's config, design, status, metrics and results in one SQLite file.

Layout under the runs folder (``engine.home.runs_dir()``: ``<TNSTUDIO_HOME>/runs`` unless overridden)::

    runs.db              SQLite in WAL mode: tables ``runs`` and ``metrics``
    <run id>/design.json the design the run trains (absent for an all-dense run)
    <run id>/log.txt     stdout/stderr of the run's process (tracebacks land here)
    <run id>/checkpoint.pt  torch.save of state dicts (model, optimizer, scheduler, step, ...)

API (stable; the studio's Training tab builds on it)::

    store = RunStore(root=None)                   # root=None: the default runs folder
    run_id = store.create_run(config, design, name=None, parent=None)   # status "queued"
    store.list_runs(status=None) -> [run dict]    # newest first; dead processes reported as "failed"
    store.get_run(run_id) -> run dict             # unique id prefixes accepted; RunNotFound otherwise
    store.metrics(run_id, since_step=None, after_seq=None, split=None) -> [metric row]
    store.set_status(run_id, status, reason=None, **fields)
    store.update(run_id, **fields)                # pid, step, total_steps, summary, results, checkpoint, ...
    store.log_metrics(run_id, row_or_rows)        # committed at once
    store.stop_run(run_id) -> bool                # asks the run to stop (flag + SIGTERM); see engine.train.launcher
    store.delete_run(run_id)                      # not while it runs

A run dict has: ``id, name, status, reason, created, started, finished, updated, pid, host, step, total_steps,
stop_requested, parent, config, summary, results, checkpoint, dir, design_name`` and, from ``get_run``, ``design``
(the design as a dict, or None). Times are Unix seconds. ``summary`` describes the model (parameters, layer,
compression); ``results`` holds the final numbers (``test_accuracy``, ``test_loss``, ...).

A metric row has: ``seq`` (increasing id, use ``after_seq`` to poll for new rows without missing any), ``step``,
``epoch`` (fractional), ``split`` ("train" rows every few steps, "test" rows at each evaluation), ``loss``,
``accuracy`` (None for regression), ``lr``, ``throughput`` (examples/s), ``elapsed`` (training seconds), ``time``.

Concurrency: every call opens its own connection and commits before returning, so rows a run has logged survive
its process being killed, and readers (the studio) see them while the run writes. Statuses: queued, running,
completed, failed, stopped. A run whose process died without recording an end (SIGKILL, out of memory) is
marked ``failed`` with reason "process died" the next time it is read on the same host.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from engine.home import runs_dir

if TYPE_CHECKING:
    from engine.train.config import RunConfig

STATUSES = ("queued", "running", "completed", "failed", "stopped")
ACTIVE = ("queued", "running")
TERMINAL = ("completed", "failed", "stopped")
METRIC_FIELDS = ("step", "epoch", "split", "loss", "accuracy", "lr", "throughput", "elapsed", "time")
_JSON_FIELDS = ("config", "design", "summary", "results")
_FIELDS = ("name", "status", "reason", "created", "started", "finished", "updated", "pid", "pid_start", "host",
           "step", "total_steps", "stop_requested", "parent", "checkpoint") + _JSON_FIELDS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, reason TEXT,
    created REAL, started REAL, finished REAL, updated REAL,
    pid INTEGER, pid_start INTEGER, host TEXT, step INTEGER DEFAULT 0, total_steps INTEGER,
    stop_requested INTEGER DEFAULT 0, parent TEXT, checkpoint TEXT,
    config TEXT, design TEXT, summary TEXT, results TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch REAL,
    split TEXT NOT NULL, loss REAL, accuracy REAL, lr REAL, throughput REAL, elapsed REAL, time REAL
);
CREATE INDEX IF NOT EXISTS metrics_by_run ON metrics (run_id, seq);
"""


class RunNotFound(KeyError):
    """No run (or more than one run) matches the id given."""

    def __str__(self) -> str:
        return str(self.args[0])


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    """Whether process ``pid`` runs (zombies count as dead; a different ``start`` time means a reused pid)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return False
        if start is not None and int(fields[19]) != start:
            return False
    except (OSError, IndexError, ValueError):
        pass
    return True


class RunStore:
    """Runs and their metrics in ``<root>/runs.db`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = runs_dir(root)
        self.path = self.root / "runs.db"
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    # ----------------------------------------------------------------- plumbing
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection per call: a transaction committed on exit (rolled back on error), then closed."""
        with closing(sqlite3.connect(self.path, timeout=30.0)) as con:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA synchronous=NORMAL")
            with con:
                yield con

    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def _row_to_run(self, row: sqlite3.Row, with_design: bool) -> dict[str, Any]:
        run = {k: row[k] for k in row.keys()}
        for k in _JSON_FIELDS:
            if k in run:
                run[k] = json.loads(run[k]) if run[k] else None
        design = run.get("design")
        run["design_name"] = design.get("name") if isinstance(design, dict) else None
        if not with_design:
            run.pop("design", None)
        run["stop_requested"] = bool(run.get("stop_requested"))
        run["dir"] = str(self.run_dir(run["id"]))
        return run

    # ----------------------------------------------------------------- runs
    def create_run(self, config: RunConfig | Mapping[str, Any], design: Any = None, name: str | None = None,
                   parent: str | None = None) -> str:
        """Record a new run (status ``queued``) and make its folder; returns the run id. The config is stored as
        JSON (a :class:`~engine.train.config.RunConfig` through ``to_dict``; a dict as it is)."""
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        design_dict = design.to_dict() if hasattr(design, "to_dict") else design
        run_id = uuid.uuid4().hex[:8]
        folder = self.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=False)
        if design_dict is not None:
            (folder / "design.json").write_text(json.dumps(design_dict, indent=2))
        now = time.time()
        if name is None:
            what = design_dict.get("name", "design") if design_dict else "dense"
            name = f"{what} on {config.get('dataset', '?')}" + (" (dense baseline)" if config.get("baseline")
                                                                else "")
        with self._connect() as con:
            con.execute("INSERT INTO runs (id, name, status, created, updated, host, config, design, parent) "
                        "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                        (run_id, name, now, now, socket.gethostname(), json.dumps(config),
                         json.dumps(design_dict) if design_dict is not None else None, parent))
        return run_id

    def resolve(self, run_id: str) -> str:
        """The full id of the one run whose id starts with ``run_id``."""
        with self._connect() as con:
            rows = con.execute("SELECT id FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\'",
                               (run_id, run_id.replace("%", "\\%").replace("_", "\\_") + "%")).fetchall()
        ids = [r["id"] for r in rows]
        if run_id in ids:
            return run_id
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise RunNotFound(f"no run with id {run_id!r} in {self.root}")
        raise RunNotFound(f"{run_id!r} matches {len(ids)} runs ({', '.join(sorted(ids))}): give more characters")

    def get_run(self, run_id: str, with_design: bool = True) -> dict[str, Any]:
        run_id = self.resolve(run_id)
        with self._connect() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        run = self._row_to_run(row, with_design)
        return self._check_alive([run])[0]

    def list_runs(self, status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """All runs, newest first (``status`` filters after dead processes are marked failed)."""
        with self._connect() as con:
            cols = ", ".join(("id",) + tuple(f for f in _FIELDS if f != "design"))
            rows = con.execute(f"SELECT {cols}, json_extract(design, '$.name') AS design_name "
                               f"FROM runs ORDER BY created DESC").fetchall()
        runs = []
        for row in rows:
            run = self._row_to_run(row, with_design=False)
            run["design_name"] = row["design_name"]
            runs.append(run)
        runs = self._check_alive(runs)
        if status is not None:
            wanted = {status} if isinstance(status, str) else set(status)
            runs = [r for r in runs if r["status"] in wanted]
        return runs

    def _check_alive(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        host = socket.gethostname()
        for run in runs:
            if run["status"] in ACTIVE and run.get("pid") and run.get("host") == host \
                    and not pid_alive(run["pid"], run.get("pid_start")):
                if run["status"] == "queued" and run["stop_requested"]:
                    status, reason = "stopped", "stopped before it started"
                else:
                    status, reason = "failed", (f"process died: pid {run['pid']} ended without recording an end "
                                                f"(killed or crashed); see {Path(run['dir']) / 'log.txt'}")
                with self._connect() as con:  # only if still active: the run may have just finished
                    cur = con.execute("UPDATE runs SET status=?, reason=?, finished=?, updated=? "
                                      "WHERE id=? AND status IN ('queued', 'running')",
                                      (status, reason, time.time(), time.time(), run["id"]))
                if cur.rowcount:
                    run.update(status=status, reason=reason)
                else:
                    run.update(self.get_run(run["id"], with_design="design" in run))
        return runs

    def update(self, run_id: str, **fields: Any) -> None:
        """Set columns of a run (JSON fields take dicts)."""
        bad = set(fields) - set(_FIELDS)
        if bad:
            raise ValueError(f"unknown run field(s): {', '.join(sorted(bad))}")
        fields.setdefault("updated", time.time())
        values = [json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in fields.items()]
        with self._connect() as con:
            cur = con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                              values + [run_id])
        if not cur.rowcount:
            raise RunNotFound(f"no run with id {run_id!r} in {self.root}")

    def set_status(self, run_id: str, status: str, reason: str | None = None, **fields: Any) -> None:
        """Change a run's status (ending statuses also set ``finished``)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
        now = time.time()
        if status == "running":
            fields.setdefault("started", now)
        if status in TERMINAL:
            fields.setdefault("finished", now)
        self.update(run_id, status=status, reason=reason, **fields)

    def stop_run(self, run_id: str) -> bool:
        """Ask a run to stop: sets its stop flag and sends SIGTERM to its process; the run then checkpoints and
        records ``stopped``. A queued run without a live process is marked stopped directly. Returns whether
        the run was active."""
        run = self.get_run(run_id, with_design=False)
        if run["status"] not in ACTIVE:
            return False
        self.update(run["id"], stop_requested=1)
        if run.get("host") == socket.gethostname() and pid_alive(run.get("pid"), run.get("pid_start")):
            try:
                os.kill(run["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        elif run["status"] == "queued" and not run.get("pid"):
            self.set_status(run["id"], "stopped", "stopped before it started")
        return True

    def stop_requested(self, run_id: str) -> bool:
        with self._connect() as con:
            row = con.execute("SELECT stop_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def delete_run(self, run_id: str) -> None:
        """Remove a run, its metrics and its folder (refused while it is active)."""
        run = self.get_run(run_id, with_design=False)
        if run["status"] in ACTIVE:
            raise ValueError(f"run {run['id']} is {run['status']}: stop it before deleting it")
        with self._connect() as con:
            con.execute("DELETE FROM metrics WHERE run_id = ?", (run["id"],))
            con.execute("DELETE FROM runs WHERE id = ?", (run["id"],))
        shutil.rmtree(self.run_dir(run["id"]), ignore_errors=True)

    # ----------------------------------------------------------------- metrics
    def log_metrics(self, run_id: str, rows: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Append metric rows (dicts with :data:`METRIC_FIELDS`; missing ones are NULL) and advance ``step``."""
        rows = [rows] if isinstance(rows, dict) else list(rows)
        if not rows:
            return
        now = time.time()
        values = []
        for r in rows:
            bad = set(r) - set(METRIC_FIELDS)
            if bad:
                raise ValueError(f"unknown metric field(s): {', '.join(sorted(bad))}")
            if "step" not in r or "split" not in r:
                raise ValueError("a metric row needs 'step' and 'split'")
            values.append(tuple(now if f == "time" and r.get(f) is None else r.get(f) for f in METRIC_FIELDS))
        with self._connect() as con:
            con.executemany(f"INSERT INTO metrics (run_id, {', '.join(METRIC_FIELDS)}) "
                            f"VALUES (?, {', '.join('?' * len(METRIC_FIELDS))})", [(run_id,) + v for v in values])
            con.execute("UPDATE runs SET step = MAX(COALESCE(step, 0), ?), updated = ? WHERE id = ?",
                        (max(int(r["step"]) for r in rows), now, run_id))

    def metrics(self, run_id: str, since_step: int | None = None, after_seq: int | None = None,
                split: str | None = None) -> list[dict[str, Any]]:
        """Metric rows of a run in logging order; filters: ``step > since_step``, ``seq > after_seq``, split."""
        run_id = self.resolve(run_id)
        sql, args = "SELECT seq, " + ", ".join(METRIC_FIELDS) + " FROM metrics WHERE run_id = ?", [run_id]
        if since_step is not None:
            sql, args = sql + " AND step > ?", args + [since_step]
        if after_seq is not None:
            sql, args = sql + " AND seq > ?", args + [after_seq]
        if split is not None:
            sql, args = sql + " AND split = ?", args + [split]
        with self._connect() as con:
            return [dict(r) for r in con.execute(sql + " ORDER BY seq", args).fetchall()]

    def delete_metrics_after(self, run_id: str, step: int) -> int:
        """Drop rows logged after ``step`` (a resumed run replays those steps); returns how many."""
        with self._connect() as con:
            cur = con.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))
            con.execute("UPDATE runs SET step = ? WHERE id = ?", (step, run_id))
        return cur.rowcount
