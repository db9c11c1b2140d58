"""The design library: named designs under ``<home>/designs``, and the presets shipped in :mod:`engine.assets`."""
from __future__ import annotations

import re
from pathlib import Path

from engine.files import expand_user
from engine.assets import preset_paths
from engine.design.model import Design, DesignError, load_design, save_design
from engine.home import tnstudio_home


def designs_dir(home: str | Path | None = None) -> Path:
    """``<home>/designs`` (``home`` defaults to the TN Studio home folder); not created."""
    return expand_user(home or tnstudio_home()) / "designs"


def safe_name(name: str) -> str:
    """A file stem from a design name: letters, digits, ``-``, ``_`` and ``.``; refuses empty names."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    if not stem:
        raise ValueError("give the design a name made of letters or digits")
    return stem[:80]


def save_to_library(design: Design, name: str, home: str | Path | None = None) -> Path:
    """Save ``design`` as ``<home>/designs/<name>.json`` (the design's name becomes ``name``)."""
    d = design.copy()
    d.name = name.strip()
    return save_design(d, designs_dir(home) / f"{safe_name(name)}.json")


def list_designs(folder: Path) -> dict[str, Path]:
    """Stem -> path of every ``*.json`` in ``folder`` (sorted; empty when the folder does not exist)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.json"))}


def library(home: str | Path | None = None) -> dict[str, Path]:
    return list_designs(designs_dir(home))


def presets() -> dict[str, Path]:
    """Preset name -> path of the designs shipped with TN Studio."""
    return preset_paths()


def open_design(path: str | Path) -> Design:
    """Load a design file; every failure is a :class:`DesignError` with a readable message."""
    try:
        return load_design(path)
    except DesignError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise DesignError(f"cannot read {Path(path).name}: {e}") from None
