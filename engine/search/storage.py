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

**A torn journal tail.** A write cut short (a crash, power loss or a full disk in the middle of an append) leaves
the journal's last line unterminated. Optuna's reader skips such a last line, but its writer appends the next
operation straight onto it, which glues two operations into one unreadable line in the middle of the file: from
then on the whole study, every finished trial included, no longer replays. So before any append (under Optuna's
own journal lock, see :class:`MendingJournalLock`) and before a search starts writing (:func:`mend_journal`), an
unterminated or unparseable last line is set aside: its bytes are saved beside the journal in
``<journal>.torn`` (``<journal>.<n>.torn`` when that exists), the journal is cut back to its last complete line,
and a one-line notice is logged.

The URL may come from ``--storage`` or the environment variable ``TNSTUDIO_SEARCH_STORAGE`` (workers get it
through the environment, so a password never shows in a process list). :func:`redact` hides passwords in
anything printed or stored.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from engine.files import expand_user
from engine.format import first_line
from engine.home import tnstudio_home

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

ENV_STORAGE = "TNSTUDIO_SEARCH_STORAGE"
ENV_HEARTBEAT = "TNSTUDIO_SEARCH_HEARTBEAT"
COMPANION_MARK = "/prune/"  # companion studies (per-size pruning, see engine.search.objective) hold this
TORN_SUFFIX = ".torn"  # the set-aside tail of a journal: <journal>.torn
_JOURNAL_START = b'{"op_code":'  # how every line Optuna's journal writes begins
_TAIL_CHUNK = 1 << 16
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
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StorageError(f"search folder {path}: a file is in the way of the folder (set TNSTUDIO_HOME to a "
                               f"folder, or give --storage)") from None
        except OSError as e:
            raise StorageError(f"cannot use the search folder {path}: {e.strerror or e}") from None
    return path


def storage_url(name: str, url: str | None = None) -> str:
    """The storage of study ``name``: ``url``, else ``$TNSTUDIO_SEARCH_STORAGE``, else the embedded journal
    (returned as its file path)."""
    url = url or os.environ.get(ENV_STORAGE) or None
    if url:
        return url if "://" in url else str(expand_user(url).resolve())
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


def _last_line_start(f, end: int) -> int:
    """The offset just after the last ``\\n`` before ``end`` (0 when there is none), read backwards in chunks."""
    pos = end
    while pos > 0:
        step = min(_TAIL_CHUNK, pos)
        f.seek(pos - step)
        chunk = f.read(step)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


def _torn_tail_start(f, size: int) -> int:
    """Where the journal's torn tail begins: the start of an unterminated last line, or of a terminated last line
    that is not JSON; ``size`` when the last line is sound (or the file is empty)."""
    if size == 0:
        return size
    f.seek(size - 1)
    if f.read(1) != b"\n":
        return _last_line_start(f, size)
    start = _last_line_start(f, size - 1)
    f.seek(start)
    try:
        json.loads(f.read(size - start))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        return start
    return size


def _torn_path(path: str) -> Path:
    torn = Path(path + TORN_SUFFIX)
    n = 2
    while torn.exists():
        torn = Path(f"{path}.{n}{TORN_SUFFIX}")
        n += 1
    return torn


def set_aside_torn_tail(path: str) -> str | None:
    """Cut a torn last line off journal ``path`` (see the module docstring), saving its bytes first; returns the
    notice (None when the tail was sound). The caller holds the journal's lock, so no writer is mid-append.

    Optuna offers no repair of its journal file (``JournalFileBackend.read_logs`` only skips a bad last line, and
    ``append_logs`` writes after it), so this is hand-written. A file whose only line is not Optuna's (a foreign
    file given as ``--storage``) is refused, never cut."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return None
    with f:
        size = os.fstat(f.fileno()).st_size
        cut = _torn_tail_start(f, size)
        if cut >= size:
            return None
        f.seek(cut)
        torn = f.read(size - cut)
        if cut == 0 and not torn.startswith(_JOURNAL_START):
            raise StorageError(f"search storage {path} is not a search journal (Optuna's journal file): its "
                               f"only line is not one of Optuna's")
        aside = _torn_path(path)
        with open(aside, "xb") as out:  # saved (and on disk) before anything is cut
            out.write(torn)
            out.flush()
            os.fsync(out.fileno())
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    what = "unterminated" if not torn.endswith(b"\n") else "unreadable"
    return (f"search journal {path}: its last line was {what} (a write cut short by a crash); its {len(torn):,} "
            f"bytes are set aside in {aside} and the journal continues from its last complete line")


@functools.lru_cache(maxsize=None)
def _journal_lock_class():
    """:class:`MendingJournalLock`, made on first use (this module imports no optuna at import time); it is
    reachable as ``engine.search.storage.MendingJournalLock`` (module ``__getattr__``), so a storage pickles."""
    from optuna.storages.journal import JournalFileSymlinkLock

    class MendingJournalLock(JournalFileSymlinkLock):
        """Optuna's journal file lock (the one ``JournalFileBackend`` uses by default) that, once held, sets a torn
        tail aside (:func:`set_aside_torn_tail`), so every append lands on a fresh line. Optuna takes this lock
        for every append and for nothing else; ``lock_obj`` is its way to give the backend another lock."""

        def __init__(self, filepath: str) -> None:
            super().__init__(filepath)
            self.journal_path = filepath

        def acquire(self) -> bool:
            held = super().acquire()
            try:
                notice = set_aside_torn_tail(self.journal_path)
            except BaseException:
                self.release()
                raise
            if notice:
                log.warning("%s", notice)
            return held

    MendingJournalLock.__module__, MendingJournalLock.__qualname__ = __name__, "MendingJournalLock"
    return MendingJournalLock


def __getattr__(name: str):
    if name == "MendingJournalLock":
        return _journal_lock_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def journal_lock(path: str):
    """The :class:`MendingJournalLock` of journal ``path``."""
    return _journal_lock_class()(path)


def mend_journal(url: str) -> str | None:
    """Before a search writes to journal ``url`` (an RDB URL: nothing to do): set a torn last line aside under
    the journal's lock; returns the notice, or None (the caller says it: printed by the CLI, logged by others)."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if is_rdb(url) or not Path(url).is_file():
        return None
    try:
        lock = JournalFileSymlinkLock(url)
        lock.acquire()
        try:
            notice = set_aside_torn_tail(url)
        finally:
            lock.release()
    except OSError as e:
        raise StorageError(f"cannot mend search storage {url}: {e.strerror or e}") from None
    return notice


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (see the module docstring); RDB storages get heartbeats
    (:func:`heartbeat_settings`) unless ``heartbeat`` is False (readers that run no trial)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if not is_rdb(url):
        if Path(url).is_dir():
            raise StorageError(f"search storage {url} is a folder: give a journal file's path or a database URL")
        if Path(url).exists() and not Path(url).is_file():  # a fifo blocks the journal's reader, /dev/zero never ends
            raise StorageError(f"search storage {url} is not a regular file (a device, fifo or socket): give a "
                               f"journal file's path or a database URL")
        try:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url, lock_obj=journal_lock(url)))
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
