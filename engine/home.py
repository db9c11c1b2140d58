"""Where TN Studio keeps its files.

The home folder is ``$TNSTUDIO_HOME`` when set, else ``~/.tnstudio``. Training runs live in ``<home>/runs``
unless a runs folder is given explicitly (``--runs-dir`` on the command line, ``runs_dir=`` in the API).
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.files import expand_user


def tnstudio_home() -> Path:
    """The TN Studio home folder (not created), absolute: a relative ``$TNSTUDIO_HOME`` is taken from the current
    folder (a run's process, which works in its run folder, is given the absolute one)."""
    env = os.environ.get("TNSTUDIO_HOME")
    return expand_user(env).absolute() if env else Path.home() / ".tnstudio"


def runs_dir(override: str | os.PathLike | None = None, create: bool = True) -> Path:
    """The runs folder: ``override`` when given, else ``<home>/runs``; created unless ``create`` is False."""
    path = expand_user(override) if override else tnstudio_home() / "runs"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
