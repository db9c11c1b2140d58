"""Where a search's Optuna study lives.

- **Embedded (default)**: one journal file per study, ``<TNSTUDIO_HOME>/search/<name>.journal``, through Optuna's
  ``JournalStorage`` with its file backend, which Optuna recommends over SQLite for several processes on one
  machine (appends under a file lock; no server). Journal storages have no heartbeats, so a worker that is killed
  leaves its trial RUNNING: the next worker on the same machine fails it (its process is gone) and queues it
  again (:func:`engine.search.worker.reap_dead_trials`).
- **RDB URL** (``postgresql://user:pw@host/db``, also ``mysql://``, ``sqlite:///file.db``): Optuna's
  ``RDBStorage``, for workers on several machines. It records heartbeats (every 10 s; ``$TNSTUDIO_SEARCH_HEARTBEAT``
  = ``"INTERVAL,GRACE"`` changes that), and a trial whose worker stopped beating for the grace period (40 s) is
  failed and queued again (``RetryHeartbeatStaleTrialCallback``) by whichever worker starts a trial next.
  PostgreSQL needs the psycopg 3 driver (SQLAlchemy 2.1's default for ``postgresql://``): ``pip install
  "psycopg[binary]"`` (in the project's ``test`` extra).
- A path (no ``://``) is a journal file of its own.

The URL may come from ``--storage`` or the environment variable ``TNSTUDIO_SEARCH_STORAGE`` (workers get it
through the environment, so a password never shows in a process list). :func:`redact` hides passwords in
anything printed or stored.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from engine.format import first_line
from engine.home import tnstudio_home

if TYPE_CHECKING:
    import optuna

ENV_STORAGE = "TNSTUDIO_SEARCH_STORAGE"
ENV_HEARTBEAT = "TNSTUDIO_SEARCH_HEARTBEAT"
COMPANION_MARK = "/prune/"  # companion studies (per-size pruning, see engine.search.objective) hold this
HEARTBEAT_INTERVAL_S = 10
GRACE_PERIOD_S = 40
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class StorageError(ValueError):
    """A storage that cannot be opened or a study that is not in it, said in words."""


def check_name(name: str) -> str:
    """A study name: letters, digits, ``.``, ``_`` and ``-`` (it names a file of the embedded storage)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StorageError(f"study name {name!r}: use letters, digits, '.', '_' and '-' (at most 100, starting "
                           f"with a letter or digit)")
    return name


def search_dir(create: bool = True) -> Path:
    """``<TNSTUDIO_HOME>/search``: the embedded journals and the workers' logs."""
    path = tnstudio_home() / "search"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def storage_url(name: str, url: str | None = None) -> str:
    """The storage of study ``name``: ``url``, else ``$TNSTUDIO_SEARCH_STORAGE``, else the embedded journal
    (returned as its file path)."""
    url = url or os.environ.get(ENV_STORAGE) or None
    if url:
        return url if "://" in url else str(Path(url).expanduser().resolve())
    return str(search_dir() / f"{check_name(name)}.journal")


def is_rdb(url: str) -> bool:
    return "://" in url


def redact(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db`` (paths unchanged)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: ``$TNSTUDIO_SEARCH_HEARTBEAT`` (``"10,40"``) or the
    defaults :data:`HEARTBEAT_INTERVAL_S`, :data:`GRACE_PERIOD_S`."""
    text = os.environ.get(ENV_HEARTBEAT, "").strip()
    if not text:
        return HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S
    try:
        parts = [int(v) for v in text.split(",")]
        interval = parts[0]
        grace = parts[1] if len(parts) > 1 else 4 * interval
        if interval < 1 or grace <= interval:
            raise ValueError
    except ValueError:
        raise StorageError(f"{ENV_HEARTBEAT} must be 'INTERVAL[,GRACE]' in whole seconds, GRACE > INTERVAL >= 1, "
                           f"got {text!r}") from None
    return interval, grace


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring); RDB storages get heartbeats
    (:func:`heartbeat_settings`) unless ``heartbeat`` is False (readers that run no trial)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if not is_rdb(url):
        if Path(url).is_dir():
            raise StorageError(f"search storage {url} is a folder: give a journal file's path or a database URL")
        try:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url))
        except OSError as e:  # a file where a folder should be, no permission: one line for the user
            raise StorageError(f"cannot open search storage {url}: {e.strerror or e}") from None
        except Exception as e:  # noqa: BLE001 - another kind of file: Optuna's journal replay raises whatever its
            # content makes it raise (JSON errors, KeyError 'op_code', ...), so say it in one line
            raise StorageError(f"search storage {url} is not a search journal (Optuna's journal file): "
                               f"{first_line(e)}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs = {}
            if heartbeat:
                interval, grace = heartbeat_settings()
                kwargs = {"heartbeat_interval": interval, "grace_period": grace,
                          "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=2)}
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except ImportError as e:
        raise StorageError(f"cannot open {redact(url)}: {e} (PostgreSQL needs psycopg 3: "
                           f"pip install 'psycopg[binary]')") from None
    except Exception as e:  # noqa: BLE001 - a server that is down, bad credentials: one line for the user
        raise StorageError(f"cannot open {redact(url)}: {first_line(e)}") from None


def list_studies(url: str | None = None) -> list[str]:
    """The searches in a storage (companion studies left out); without ``url``: every embedded journal."""
    import optuna

    if url is None and not os.environ.get(ENV_STORAGE):
        return sorted(p.stem for p in search_dir(create=False).glob("*.journal")) \
            if search_dir(create=False).exists() else []
    url = storage_url("x", url)
    if not is_rdb(url) and not Path(url).exists():  # reading never creates a journal (a typo would leave a file)
        return []
    storage = open_storage(url, heartbeat=False)
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
                  if COMPANION_MARK not in s.study_name)
