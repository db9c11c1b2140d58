"""Files written whole or not at all: a temporary file beside the target, renamed over it.

A write that fails part way (a full disk, a file size limit, a killed process) leaves the file that was there
untouched and no temporary file behind; readers never see half a file. Every file the engine or the studio
rewrites (designs, networks, exports, run records and checkpoints, the studio's draft, prepared datasets) goes
through here.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(fileobj)`` (binary) into a temporary file beside it, then rename it into
    place (missing folders are made). The temporary name is unique per call, so threads and processes writing the
    same file at once never share one: the last rename wins, whole."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:  # created with the umask's permissions, unlike mkstemp's 0600
            write(f)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))
