"""The run store: every training run's config, design, status, metrics and results, indexed in one SQLite file
and kept recoverable in each run's own folder.

Layout under the runs folder (``engine.home.runs_dir()``: ``<TNSTUDIO_HOME>/runs`` unless overridden)::

    runs.db                 SQLite in WAL mode: tables ``runs`` and ``metrics`` (the index everything reads)
    <run id>/run.json       the run's record (every field of the ``runs`` row but the design), rewritten
                            atomically with each change while the index's write lock is held
    <run id>/config.json    the run's config
    <run id>/design.json    the design the run trains (absent for an all-dense run)
    <run id>/metrics.jsonl  append-only: one JSON line per metric row, flushed before the row is committed to the
                            index (so every committed row is in it), plus ``{"truncate_after": step}`` lines where
                            a resumed run dropped rows
    <run id>/log.txt        stdout/stderr of the run's process (tracebacks land here)
    <run id>/checkpoint.pt  torch.save of state dicts (model, optimizer, scheduler, step, ...)

Damage. A ``runs.db`` that is not a database, is truncated, holds another program's tables or is a folder raises
:class:`StoreDamaged` (a :class:`StoreError`, a ``ValueError``) naming the file and the fix, never a sqlite
traceback; a runs folder that is a file raises :class:`StoreError`. :func:`repair_store` (``tnstudio runs
repair``) moves a damaged index aside (``runs.db.damaged-<time>``, never deleted) and rebuilds it from the run
folders, and on a healthy index imports missing runs, restores metric rows only the folders hold and writes the
folder records of runs made before they existed. Opening a store whose index lacks runs that have folders (a
0-byte or replaced ``runs.db``) imports them at once, with a notice (``store.notice``, and a logged warning).

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
    repair_store(root=None) -> dict               # rebuild / resync the index from the run folders

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
import logging
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import time
import uuid
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from engine.files import atomic_write_text, expand_user, remove_orphan_temps
from engine.format import clip_middle, is_unicode_text
from engine.home import runs_dir

log = logging.getLogger(__name__)

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
_COLUMNS = {"runs": ("id", "status") + _FIELDS, "metrics": ("seq", "run_id") + METRIC_FIELDS}
_IDENTIFYING = {"runs": ("id", "status", "config"), "metrics": ("seq", "run_id", "step", "split")}
RECORD, CONFIG, DESIGN, METRICS = "run.json", "config.json", "design.json", "metrics.jsonl"
DB_NAME = "runs.db"
LOCK_WAIT_S = 30.0  # how long a connection waits for another process's lock before giving up


class StoreError(ValueError):
    """The run store cannot be used as it is; the message names the file and what to do."""


class StoreDamaged(StoreError):
    """``runs.db`` is damaged, foreign or not a file: ``tnstudio runs repair`` rebuilds it from the run folders."""


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

    def __init__(self, root: str | os.PathLike | None = None, recover: bool = True):
        self.root = open_runs_dir(root)
        self.path = self.root / DB_NAME
        self.notice: str | None = None  # what opening did beyond opening (runs restored from their folders)
        if self.path.is_dir():
            raise StoreDamaged(f"{self.path} is a folder, not the run store's database: {_repair(self.root)}")
        with self._connect() as con:
            _use_wal(con)
            con.executescript(_SCHEMA)
            _check_schema(con, self.path)
        if recover:
            restored = self._import_missing()
            if restored:
                self.notice = (f"restored {restored} run{'s' if restored != 1 else ''} into {self.path} from "
                               f"their folders (the index had lost them)")
                log.warning("%s", self.notice)

    # ----------------------------------------------------------------- plumbing
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection per call: a transaction committed on exit (rolled back on error), then closed. sqlite's
        errors about the file itself become :class:`StoreError` / :class:`StoreDamaged` naming it."""
        try:
            with closing(sqlite3.connect(self.path, timeout=LOCK_WAIT_S)) as con:
                con.row_factory = sqlite3.Row
                con.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_S * 1000)}")
                con.execute("PRAGMA synchronous=NORMAL")
                with con:
                    yield con
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # our own mistakes, not the file's
        except sqlite3.DatabaseError as e:
            raise _file_error(self.path, e) from None

    def run_dir(self, run_id: str) -> Path:
        """The run's folder, ``<root>/<id>``; an id that is not one folder name (``..``, a path: a hand-edited
        index) is refused, so nothing outside the runs folder is ever read, written or deleted for a run."""
        if not is_run_folder_name(run_id):
            raise StoreDamaged(f"{self.path}: run id {clip_middle(repr(run_id))} is not a folder name inside "
                               f"{self.root}; {_repair(self.root)}")
        return self.root / run_id

    def _write_record(self, con: sqlite3.Connection, run_id: str) -> None:
        """Rewrite ``<run>/run.json`` from the index row (call inside the transaction that changed it: its write
        lock orders the files as the commits)."""
        row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        folder = self.run_dir(run_id)
        if row is None or not folder.is_dir():
            return
        record = {k: row[k] for k in row.keys() if k != "design"}
        for k in _JSON_FIELDS:
            if k in record:
                record[k] = json.loads(record[k]) if record[k] else None
        try:
            _write_json(folder / RECORD, record)
        except OSError as e:  # the index holds the change; only its copy in the folder is behind
            log.warning("could not write %s: %s", folder / RECORD, e)

    def _append_metrics(self, run_id: str, lines: list[dict[str, Any]]) -> None:
        folder = self.run_dir(run_id)
        if not folder.is_dir():
            return
        try:
            with open(folder / METRICS, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(line) + "\n" for line in lines))
                f.flush()
        except OSError as e:  # the index still gets the rows; only their copy in the folder is missing
            log.warning("could not append to %s: %s", folder / METRICS, e)

    # ----------------------------------------------------------------- recovery from the run folders
    def _import_missing(self) -> int:
        """Import the runs whose folders hold a record but the index lacks; returns how many."""
        try:
            folders = [e.name for e in os.scandir(self.root) if e.is_dir() and (Path(e.path) / RECORD).is_file()
                       and is_run_folder_name(e.name)]  # a name no command could type or print stays a folder
        except OSError:
            return 0
        if not folders:
            return 0
        with self._connect() as con:
            known = {r[0] for r in con.execute("SELECT id FROM runs").fetchall()}
        restored = 0
        for rid in sorted(folders):
            if rid not in known:
                try:
                    restored += self._import_run(rid)
                except (TypeError, ValueError) as e:  # a hand-edited record: leave it for `runs repair` to name
                    log.warning("could not restore run %r from %s: %s", rid, self.root / rid, e)
        return restored

    def _import_run(self, run_id: str) -> bool:
        """Insert one run and its metric rows from its folder (in one transaction, unless already there)."""
        folder = self.run_dir(run_id)
        record = _read_json(folder / RECORD)
        if not isinstance(record, dict):
            return False
        config = record.get("config") if isinstance(record.get("config"), dict) else _read_json(folder / CONFIG)
        design = _read_json(folder / DESIGN) if (folder / DESIGN).is_file() else None
        rows = read_metrics_file(folder / METRICS)
        values = {k: record.get(k) for k in _FIELDS if k not in ("config", "design")}
        values["config"] = config if isinstance(config, dict) else {}
        values["design"] = design if isinstance(design, dict) else None
        values["status"] = values["status"] if values.get("status") in STATUSES else "failed"
        step = values.get("step")
        values["step"] = max([step if isinstance(step, int) else 0] + [int(r["step"]) for r in rows])
        if not values.get("checkpoint") and (folder / "checkpoint.pt").is_file():
            values["checkpoint"] = str(folder / "checkpoint.pt")
        now = time.time()
        values["created"] = values.get("created") or now
        values["updated"] = now
        row_values({"id": run_id, **{k: json.dumps(v) if k in _JSON_FIELDS and v is not None else v
                                     for k, v in values.items()}})  # a hand-edited record: ValueError naming it
        cols = ("id",) + tuple(values)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            if con.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                return False
            con.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        (run_id,) + tuple(json.dumps(v) if k in _JSON_FIELDS and v is not None else v
                                          for k, v in values.items()))
            _insert_metrics(con, run_id, rows)
        return True

    def _row_to_run(self, row: sqlite3.Row, with_design: bool) -> dict[str, Any]:
        try:
            run = row_values(row)
        except ValueError as e:  # a row another program (or a hand) wrote: name it, say how to rebuild it
            raise StoreDamaged(f"{self.path}: {e}; {_repair(self.root)}") from None
        if run.get("checkpoint"):  # kept in the run's own folder: a copied or moved store reads its own copy (the
            # index holds the absolute path it was written at)
            run["checkpoint"] = str(self.run_dir(run["id"]) / Path(run["checkpoint"]).name)
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
        if not is_unicode_text([name, config, design_dict]):  # before anything is made: a name from a terminal
            # can hold undecodable bytes (lone surrogates)
            raise ValueError("the run's name or config holds characters that are not Unicode text (bytes that were "
                             "not UTF-8)")
        if name is None:
            network = config.get("network") if isinstance(config.get("network"), dict) else {}
            what = (design_dict.get("name", "design") if design_dict
                    else str(network.get("name") or "network") if network else "dense")
            name = f"{what} on {config.get('dataset', '?')}" + (" (dense baseline)" if config.get("baseline")
                                                                else "")
        run_id = uuid.uuid4().hex[:8]
        folder = self.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=False)
        try:
            if design_dict is not None:
                atomic_write_text(folder / DESIGN, json.dumps(design_dict, indent=2))
            _write_json(folder / CONFIG, config)
            now = time.time()
            with self._connect() as con:  # a failure inside rolls the row back
                con.execute("INSERT INTO runs (id, name, status, created, updated, host, config, design, parent) "
                            "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                            (run_id, name, now, now, socket.gethostname(), json.dumps(config),
                             json.dumps(design_dict) if design_dict is not None else None, parent))
                self._write_record(con, run_id)
        except BaseException:  # a full disk, a locked index, ^C: no half-made run folder is left behind
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return run_id

    def resolve(self, run_id: str) -> str:
        """The full id of the one run whose id starts with ``run_id`` (an empty prefix names no run: it would
        match every one)."""
        if not isinstance(run_id, str) or not run_id.strip():
            raise RunNotFound(f"give a run id (or the start of one), got {run_id!r}")
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
                        self._write_record(con, run["id"])
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
            if cur.rowcount:
                self._write_record(con, run_id)
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

    def claim_for_resume(self, run_id: str) -> bool:
        """Queue a stopped or failed run again, in one check-and-set (two resumes at once: one wins, the other gets
        False), clearing its stop flag, end time and its ended process (the launcher records the new one). The old
        pid had stayed: any reader in between (the studio polls the store) found a queued run whose process was dead,
        recorded it ``failed``, and a second resume could claim it again: two trainers, duplicated metric rows."""
        now = time.time()
        with self._connect() as con:
            cur = con.execute("UPDATE runs SET status='queued', reason=NULL, stop_requested=0, finished=NULL, "
                              "pid=NULL, pid_start=NULL, updated=? WHERE id=? AND status IN ('stopped', 'failed')",
                              (now, run_id))
            if cur.rowcount:
                self._write_record(con, run_id)
        return bool(cur.rowcount)

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
        record = self.run_dir(run["id"]) / RECORD
        held = record.with_name(RECORD + ".deleting")
        try:  # the record out of the way first, so a folder left behind is never restored as a run ...
            os.replace(record, held)
        except OSError:
            held = None
        try:
            with self._connect() as con:
                con.execute("DELETE FROM metrics WHERE run_id = ?", (run["id"],))
                con.execute("DELETE FROM runs WHERE id = ?", (run["id"],))
        except StoreError:  # ... and back when the index keeps the run (locked, full): nothing is half deleted
            if held is not None:
                os.replace(held, record)
            raise
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
            problem = metric_row_problem(r)
            if problem:
                raise ValueError(f"metric row of run {run_id}: {problem}")
            values.append(tuple(now if f == "time" and r.get(f) is None else r.get(f) for f in METRIC_FIELDS))
        # the run's folder first: a row the index commits is always in metrics.jsonl too
        self._append_metrics(run_id, [dict(zip(METRIC_FIELDS, v)) for v in values])
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
        self._append_metrics(run_id, [{"truncate_after": int(step)}])
        with self._connect() as con:
            cur = con.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))
            con.execute("UPDATE runs SET step = ? WHERE id = ?", (step, run_id))
        return cur.rowcount


# --------------------------------------------------------------------- helpers and repair
def _repair(root: Path) -> str:
    """How to repair the store at ``root`` (the command names the folder unless it is the default one)."""
    default = runs_dir(None, create=False)
    where = "" if root == default else f" --runs-dir {root}"
    return (f"your runs are kept in their folders: `tnstudio runs{where} repair` moves it aside (never deleting it) "
            f"and rebuilds the index from them")


def existing_store(root: str | os.PathLike | None = None) -> RunStore:
    """The run store at ``root`` for reading: a ``root`` that names no folder is a :class:`StoreError` (a mistyped
    ``--runs-dir`` made an empty store there and reported "no runs"); the default folder is made as ever."""
    if root is not None:
        p = expand_user(root)
        try:
            missing = not p.exists()
        except OSError as e:
            raise StoreError(f"cannot use the runs folder {p}: {e.strerror or e}") from None
        if missing:
            raise StoreError(f"no runs folder {p}: nothing has run there (check --runs-dir)")
    return RunStore(root)


def open_runs_dir(root: str | os.PathLike | None = None) -> Path:
    """The runs folder (created), or :class:`StoreError` when the path is a file or cannot be made."""
    where = os.fspath(root) if root else f"{runs_dir(None, create=False)} (the default)"
    try:
        return runs_dir(root)
    except (FileExistsError, NotADirectoryError):
        raise StoreError(f"runs folder {where}: a file is in the way of the folder (give --runs-dir a folder)") \
            from None
    except OSError as e:
        raise StoreError(f"cannot use the runs folder {where}: {e.strerror or e}") from None


def _use_wal(con: sqlite3.Connection) -> None:
    """Put the store in WAL mode. sqlite answers a switch that another process's open races with "database is
    locked" at once, without waiting in its busy handler (two search workers opening a new store together did, about
    1 open in 25 with four at once), so the switch is retried here for as long as a lock is waited for elsewhere."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _file_error(path: Path, e: sqlite3.DatabaseError) -> StoreError:
    """What a sqlite error about the file means for the user."""
    text = str(e)
    if "locked" in text or "busy" in text:
        return StoreError(f"{path} stayed locked by another process for {LOCK_WAIT_S:g} s ({text}): try again")
    if "readonly" in text or "read-only" in text:
        return StoreError(f"{path} is read-only ({text}): make it and its folder writable")
    if "disk is full" in text or "disk I/O error" in text:  # a full disk (or a file size limit) while writing
        return StoreError(f"cannot write {path} ({text}): free disk space and try again (the store itself is kept "
                          f"as it was)")
    if "unable to open" in text:
        return StoreError(f"cannot open {path} ({text}): check that its folder is writable and that "
                          f"{path.name} is a file")
    return StoreDamaged(f"{path} is damaged or is not a TN Studio run store ({text}); {_repair(path.parent)}")


def _check_schema(con: sqlite3.Connection, path: Path) -> None:
    """Refuse another program's tables under our names; add the columns newer versions use."""
    for table, cols in _COLUMNS.items():
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})").fetchall()}
        missing_id = [c for c in _IDENTIFYING[table] if c not in have]
        if missing_id:
            raise StoreDamaged(f"{path} is not a TN Studio run store: its table {table!r} lacks "
                               f"{', '.join(missing_id)}; {_repair(path.parent)}")
        for c in cols:
            if c not in have:
                con.execute(f"ALTER TABLE {table} ADD COLUMN {c}")


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    atomic_write_text(path, json.dumps(data, indent=2))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_metrics_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The metric rows of a run's ``metrics.jsonl``, truncation markers applied; an unreadable line (the tail a
    killed process left half written) is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return rows
    with f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            if "truncate_after" in row:
                cut = row["truncate_after"]
                rows = [r for r in rows if isinstance(cut, (int, float)) and r["step"] <= cut]
            elif metric_row_problem(row) is None:
                rows.append({k: row.get(k) for k in METRIC_FIELDS})
    return rows


def metric_row_problem(row: Mapping[str, Any]) -> str | None:
    """Why ``row`` is not a metric row (None when it is): ``step`` a whole number within 64 bits, ``split`` text,
    every other field a number (a float of any value: a diverged run's loss is NaN; an integer within 64 bits, as
    sqlite stores them) or missing. A hand-edited ``metrics.jsonl`` line (a NaN step, a list where a loss belongs)
    is skipped by readers instead of breaking the index or every command that shows it."""
    step = row.get("step")
    if not _is_number(step) or not math.isfinite(step) or step != int(step) or not -INT64 <= step < INT64:
        return f"step {clip_middle(repr(step))} is not a whole number"
    if not isinstance(row.get("split"), str):
        return f"split {clip_middle(repr(row.get('split')))} is not text"
    for k in METRIC_FIELDS:
        v = row.get(k)
        if k in ("step", "split") or v is None:
            continue
        if not _is_number(v) or (isinstance(v, int) and abs(v) >= INT64):
            return f"{k} {clip_middle(repr(v))} is not a number"
    return None


def _insert_metrics(con: sqlite3.Connection, run_id: str, rows: list[dict[str, Any]]) -> None:
    con.executemany(f"INSERT INTO metrics (run_id, {', '.join(METRIC_FIELDS)}) "
                    f"VALUES (?, {', '.join('?' * len(METRIC_FIELDS))})",
                    [(run_id,) + tuple(r.get(f) for f in METRIC_FIELDS) for r in rows])


_NUMBER_FIELDS = ("created", "started", "finished", "updated")
INT64 = 2 ** 63  # sqlite's integers are 64-bit: from -INT64 to INT64 - 1
_LAST_TIME = 1e11  # seconds since 1970: the year 5138 (a time beyond it is no time a run was made)
_SUMMARY_NUMBERS = ("params", "core_params", "layer_params", "layer_dense_params", "forward_flops",
                    "train_examples", "test_examples", "nproc")
_INT_FIELDS = ("pid", "pid_start", "step", "total_steps", "stop_requested")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_run_folder_name(run_id: Any) -> bool:
    """Whether ``run_id`` names one folder inside the runs folder and can be typed and printed: a non-empty name
    without spaces at its ends, not ``.`` or ``..``, of printable characters other than ``/`` and ``\\`` (ids are
    8 hex digits, or the name of a folder a run was restored from)."""
    return (isinstance(run_id, str) and 0 < len(run_id) <= 255 and run_id not in (".", "..")
            and run_id == run_id.strip() and run_id.isprintable() and not any(c in run_id for c in "/\\"))


def row_values(row: sqlite3.Row | Mapping[str, Any]) -> dict[str, Any]:
    """A ``runs`` row as a run dict (JSON fields parsed); ``ValueError`` naming the run and the field when a value
    has the wrong type (text where a time belongs, a JSON field that is not JSON)."""
    run = {k: row[k] for k in row.keys()}
    rid = run.get("id")
    if "id" in run and not is_run_folder_name(rid):
        raise ValueError(f"run id {clip_middle(repr(rid))} is not a folder name inside the runs folder")
    for k in _JSON_FIELDS:
        if k in run:
            try:
                run[k] = json.loads(run[k]) if run[k] else None
            except (TypeError, ValueError, RecursionError):
                raise ValueError(f"run {rid}'s {k} is not JSON") from None
            if run[k] is not None and not isinstance(run[k], dict):
                raise ValueError(f"run {rid}'s {k} is not a JSON object")
    for k in _NUMBER_FIELDS:
        v = run.get(k)
        if v is not None and (not _is_number(v) or not 0 <= v < _LAST_TIME):
            raise ValueError(f"run {rid}'s {k} is {clip_middle(repr(v))}, not a time in seconds")
    for k in _INT_FIELDS:
        v = run.get(k)
        if v is not None and (not isinstance(v, int) or not -INT64 <= v < INT64):
            raise ValueError(f"run {rid}'s {k} is {clip_middle(repr(v))}, not a 64-bit integer")
    for k, v in (run.get("results") or {}).items():
        if v is not None and not _is_number(v):
            raise ValueError(f"run {rid}'s result {clip_middle(repr(k))} is {clip_middle(repr(v))}, not a number")
    for k in _SUMMARY_NUMBERS:
        v = (run.get("summary") or {}).get(k)
        if v is not None and not _is_number(v):
            raise ValueError(f"run {rid}'s summary {k} is {clip_middle(repr(v))}, not a number")
    if "status" in run and run["status"] not in STATUSES:
        raise ValueError(f"run {rid}'s status is {clip_middle(repr(run['status']))}, not one of "
                         f"{', '.join(STATUSES)}")
    return run


def _healthy(path: Path) -> str | None:
    """Why ``path`` cannot serve as the index (None when it can): not a file, not a database, damaged pages
    (``PRAGMA quick_check``) or foreign tables."""
    if not path.exists():
        return None
    if not path.is_file():
        return "it is not a file"
    try:
        with closing(sqlite3.connect(path, timeout=LOCK_WAIT_S)) as con:
            check = con.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                return f"quick_check: {check[0] if check else 'no answer'}"
            for table in _IDENTIFYING:
                have = {r[1] for r in con.execute(f"PRAGMA table_info({table})").fetchall()}
                if have and any(c not in have for c in _IDENTIFYING[table]):
                    return f"its table {table!r} is not a run store's"
            con.row_factory = sqlite3.Row
            try:  # values of the wrong type (written by hand or by another program) make the index unusable too
                for row in con.execute("SELECT * FROM runs"):
                    row_values(row)
            except ValueError as e:
                return str(e)
    except sqlite3.DatabaseError as e:
        text = str(e)
        if any(w in text for w in ("locked", "busy", "readonly", "read-only", "unable to open")):
            raise _file_error(path, e) from None  # the file is fine; it cannot be used now: say why, move nothing
        return text
    return None


def repair_store(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Make the index whole again from the run folders; returns what was done.

    A ``runs.db`` that cannot serve (a folder, not a database, damaged, foreign tables) is moved aside with its
    WAL files to ``runs.db.damaged-<time>`` (never deleted) and a new index is built from every run folder that
    holds a record. On a healthy index: runs with a folder record but no row are imported, a run whose
    ``metrics.jsonl`` holds more rows than the index gets them back, and runs without folder records (made by an
    older TN Studio) get them written from the index. Keys: ``moved`` (path or None), ``reason``, ``restored``
    (run ids imported), ``resynced`` (run ids whose metrics were restored), ``recorded`` (run ids given folder
    records), ``skipped`` (folders without a record), ``temps`` (temporary files of killed writes removed from the
    folders of runs that are not active), ``runs``.
    """
    root_path = open_runs_dir(root)
    path = root_path / DB_NAME
    moved, reason = None, _healthy(path)
    if reason is not None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = path.with_name(f"{DB_NAME}.damaged-{stamp}")
        n = 1
        while moved.exists():
            n += 1
            moved = path.with_name(f"{DB_NAME}.damaged-{stamp}-{n}")
        try:
            os.replace(path, moved)
            for suffix in ("-wal", "-shm"):
                extra = path.with_name(DB_NAME + suffix)
                if extra.exists():
                    os.replace(extra, moved.with_name(moved.name + suffix))
        except OSError as e:
            raise StoreError(f"cannot move {path} aside ({reason}): {e.strerror or e}; make {root_path} writable "
                             f"and repair again") from None
    store = RunStore(root_path, recover=False)
    with store._connect() as con:
        known = {r[0] for r in con.execute("SELECT id FROM runs").fetchall()}
    restored, resynced, recorded, skipped, temps = [], [], [], [], []
    for entry in sorted(os.scandir(root_path), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        folder = Path(entry.path)
        rid = entry.name
        has_record = (folder / RECORD).is_file()
        if not is_run_folder_name(rid):  # a name no command could type or print: left as a folder
            skipped.append(rid)
            continue
        if rid not in known:
            try:
                ok = has_record and store._import_run(rid)
            except (TypeError, ValueError) as e:
                log.warning("could not restore run %r from %s: %s", rid, folder, e)
                ok = False
            if ok:
                restored.append(rid)
            elif any(folder.iterdir()):
                skipped.append(rid)
            continue
        if not has_record:  # a run from before folder records: write them from the index
            with store._connect() as con:
                row = con.execute("SELECT config FROM runs WHERE id = ?", (rid,)).fetchone()
                _write_json(folder / CONFIG, json.loads(row[0]) if row and row[0] else {})
                rows = [dict(r) for r in con.execute(f"SELECT {', '.join(METRIC_FIELDS)} FROM metrics "
                                                      f"WHERE run_id = ? ORDER BY seq", (rid,)).fetchall()]
                atomic_write_text(folder / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
                store._write_record(con, rid)
            recorded.append(rid)
            continue
        rows = read_metrics_file(folder / METRICS)
        with store._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT status, pid, pid_start, host FROM runs WHERE id = ?", (rid,)).fetchone()
            if row["status"] in ACTIVE and row["host"] == socket.gethostname() \
                    and pid_alive(row["pid"], row["pid_start"]):
                continue  # its trainer appends to the file before each commit: a count taken now is no evidence
            if row["status"] not in ACTIVE:  # no writer left: temporary files of a killed one go
                temps.extend(f"{rid}/{name}" for name in remove_orphan_temps(folder))
            count = con.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (rid,)).fetchone()[0]
            if len(rows) > count:
                con.execute("DELETE FROM metrics WHERE run_id = ?", (rid,))
                _insert_metrics(con, rid, rows)
                if rows:
                    con.execute("UPDATE runs SET step = MAX(COALESCE(step, 0), ?) WHERE id = ?",
                                (max(int(r["step"]) for r in rows), rid))
                resynced.append(rid)
    with store._connect() as con:
        total = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    return {"path": str(path), "moved": str(moved) if moved else None, "reason": reason, "restored": restored,
            "resynced": resynced, "recorded": recorded, "skipped": skipped, "temps": temps, "runs": total}
