"""Package data: the JSON Schema of design files and the preset designs (``designs/*.json``).

Read them through :func:`asset` and :func:`preset_paths` (importlib.resources), so they are found in a source
checkout, an editable install and an installed wheel alike.
"""
from __future__ import annotations

from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path


def asset(name: str) -> Traversable:
    """A file of this package by relative name, e.g. ``asset("design.schema.json")``."""
    return files(__name__).joinpath(name)


def preset_paths() -> dict[str, Path]:
    """Preset design name (file stem) -> path, sorted by name."""
    folder = files(__name__).joinpath("designs")
    with as_file(folder) as path:  # a real folder for every install kind this project supports
        return {p.stem: p for p in sorted(Path(path).glob("*.json"))}
