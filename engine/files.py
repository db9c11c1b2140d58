"""Files written whole or not at all: a temporary file beside the target, renamed over it.

A write that fails part way (a full disk, a file size limit) leaves the file that was there untouched and no
temporary file behind; readers never see half a file. A process killed mid-write (SIGKILL) leaves its temporary
file: :func:`remove_orphan_temps` clears them where no writer can be left (a run folder at resume and repair).
Every file the engine or the studio rewrites (designs, networks, exports, run records and checkpoints, the studio's
draft, prepared datasets) goes through here.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import stat
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(fileobj)`` (binary) into a temporary file beside it, then rename it into
    place (missing folders are made). The temporary name is unique per call, so threads and processes writing the
    same file at once never share one: the last rename wins, whole.

    A symlink is written through (its target is replaced, the link stays), an existing file keeps its permissions,
    and a device or fifo (``-o /dev/stdout``, ``/dev/null``) is written to directly, as a shell would: renaming over
    it would replace the device node itself. A folder is an ``IsADirectoryError``."""
    p = Path(path)
    mode = None
    try:
        st = p.stat()  # through symlinks
    except FileNotFoundError:
        if p.is_symlink():  # a dangling link: create the file it names, as a shell's redirection does
            p = Path(os.path.realpath(p))
    else:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a folder", str(p))
        if not stat.S_ISREG(st.st_mode):  # nothing to keep whole: a stream (a full device says so: ENOSPC)
            with open(p, "wb") as f:
                write(f)
            return p
        mode = stat.S_IMODE(st.st_mode)
        if p.is_symlink():  # replace the file the link names, not the link
            p = Path(os.path.realpath(p))
    p.parent.mkdir(parents=True, exist_ok=True)
    # at most 82 characters whatever the target's length (a name of 250 is fine; the file system allows 255)
    tmp = p.with_name(f".{p.name[:64]}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:  # created with the umask's permissions, unlike mkstemp's 0600
            write(f)
        if mode is not None:
            os.chmod(tmp, mode)  # a private file stays private
        os.replace(tmp, p)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename == str(tmp):  # name the file asked for, not the temporary one
            e.filename = os.fspath(path)
        raise
    return p


# the temporary names atomic_write makes: "." + at most 64 characters of the name + "." + 12 hex digits + ".tmp"
ATOMIC_TEMP = re.compile(r"\..{1,64}\.[0-9a-f]{12}\.tmp", re.DOTALL)


def remove_orphan_temps(folder: str | os.PathLike) -> list[str]:
    """Remove :func:`atomic_write`'s temporary files from ``folder`` (only call it when no process can be writing
    there: a writer killed mid-write leaves its file behind, a checkpoint's size each); returns their names."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if ATOMIC_TEMP.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError as e:
                log.warning("could not remove the stale temporary file %s: %s", entry.path, e)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


class PathError(ValueError):
    """A path the user gave that cannot name a file here (``~nosuchuser/...``); the message says which."""


def expand_user(path: str | os.PathLike) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; :class:`PathError` (one line) when that user, or this
    process's home folder, is unknown (``Path.expanduser`` raises RuntimeError there)."""
    p = Path(path)
    try:
        return p.expanduser()
    except RuntimeError:
        head = str(p).split(os.sep, 1)[0]
        raise PathError(f"{str(path)!r}: {head!r} names no home folder on this machine; give the full path") \
            from None


def read_input_file(path: str | os.PathLike, limit: int, error: type[Exception], what: str) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes (``what`` names it in the
    messages, e.g. "design file"). A missing file is ``FileNotFoundError``; a folder, a device, fifo or socket (a
    fifo would block the reader, /dev/zero never ends), a larger or unreadable file, or a name the file system cannot
    hold is ``error`` with a one-line reason."""
    p = Path(path)
    try:
        exists, folder, regular = p.exists(), p.is_dir(), p.is_file()
    except OSError as e:  # a name longer than the file system allows, a folder that cannot be searched
        raise error(f"cannot read {p}: {e.strerror or e}") from None
    if folder:
        raise error(f"{p} is a folder, not a {what}")
    if exists and not regular:
        raise error(f"{p} is not a regular file (a device, fifo or socket), not a {what}")
    if not regular:
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        size = p.stat().st_size
        if size > limit:
            raise error(f"the {what} is {size:,} bytes, more than {limit // 2 ** 20} MiB")
        return p.read_bytes()
    except OSError as e:
        raise error(f"cannot read {p}: {e.strerror or e}") from None
