"""Autosaved drafts: what a browser tab is working on, kept after every change and restored on reload.

Each kind of draft (:data:`DRAFT_FILES`: the Design tab's design, the Network tab's network, the Search and Train
tabs' forms) has a shared file (the newest of any tab) and one file per browser tab (named by the tab's draft id,
which is in its URL). :func:`write_draft` writes both, atomically; :func:`read_draft` reads the tab's own, else the
shared one, and sets a file it cannot use aside as ``<name>.damaged.json`` (never overwritten by the next autosave)
with a note for the user.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from engine.design.model import MAX_FILE_BYTES, parse_json
from engine.files import atomic_write_text, read_input_file
from engine.format import clip_quotes, first_line

log = logging.getLogger(__name__)
TAB_DRAFT_ID = re.compile(r"[0-9a-f]{12}")  # a browser tab's draft id (in its URL: ``?draft=<id>``)
MAX_DRAFT_BYTES = MAX_FILE_BYTES  # what parse_json takes (16 MiB; ViT-B/16 with every layer a design: ~1.5 MB)
KEEP_TAB_DRAFTS = 32  # the newest tab drafts kept per kind; older ones are removed when a tab first saves
T = TypeVar("T")
# each kind of draft: its shared file in the home folder (the newest of any tab) and the folder of the tabs' own
DRAFT_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "design": ("draft.json", ("drafts",)),  # the Design tab (<home>/drafts/<tab id>.json)
    "network": ("network_draft.json", ("drafts", "networks")),  # the Network tab
    "search": ("search_draft.json", ("drafts", "search")),  # the Search tab's form
    "train": ("train_draft.json", ("drafts", "train")),  # the Train tab's New-run form
}


def draft_paths(home: str | Path, kind: str, draft_id: str = "") -> tuple[Path, Path | None]:
    """The shared draft file of ``kind`` (see :data:`DRAFT_FILES`) and the tab's own (None: the tab has no id)."""
    shared, folder = DRAFT_FILES[kind]
    home = Path(home)
    return home / shared, (home.joinpath(*folder, f"{draft_id}.json") if draft_id else None)


def write_draft(text: str, shared: Path, mine: Path | None = None) -> None:
    """Write ``text`` to the tab's own draft ``mine`` (when the tab has an id; a tab's first draft prunes the
    oldest of its folder) and to ``shared``. ``OSError`` when either cannot be written (the caller says so)."""
    if mine is not None:
        first = not mine.exists()
        mine.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(mine, text)
        if first:
            prune_tab_drafts(mine.parent)
    atomic_write_text(shared, text)


def with_unsaved_note(message: str, error: OSError, keep: str) -> str:
    """``message`` with a note that the last autosave failed (``keep``: what the user can do to keep the work),
    once: a read-only home or a full disk keeps the last draft whole and the studio working."""
    note = f"not autosaved ({error.strerror or error}): {keep}"
    return message if note in message else (f"{message} · {note}" if message else note)


def read_draft(parse: Callable[[bytes], T], shared: Path, mine: Path | None = None,
               what: str = "draft") -> tuple[T | None, str | None]:
    """``parse(bytes)`` of the tab's own draft when it has one, else of the shared one (None when neither exists),
    and a note: a file ``parse`` fails on in any way is set aside and the note says where."""
    path = mine if mine is not None and mine.is_file() else shared
    if not path.is_file():
        return None, None
    try:
        # bounded before it is read: a draft replaced by a link to a huge file is refused, not loaded whole
        return parse(read_input_file(path, MAX_DRAFT_BYTES, ValueError, f"autosaved {what}")), None
    except Exception as e:  # noqa: BLE001 - a damaged draft of any kind (bad JSON, wrong types, numbers beyond a
        # float, a network that no longer resolves) must not keep the studio from opening: keep the file aside,
        # start afresh, say so
        aside = path.with_name(path.stem + ".damaged.json")
        try:
            path.replace(aside)
        except OSError:
            aside = path
        log.warning("the autosaved %s %s could not be restored, kept as %s: %s", what, path, aside, first_line(e))
        return None, clip_quotes(f"your autosaved {what} could not be restored ({first_line(e)}); it is kept as "
                                 f"{aside}")


def prune_tab_drafts(folder: Path) -> None:
    """Keep the newest ``KEEP_TAB_DRAFTS`` tab drafts in ``folder`` (damaged ones set aside are kept)."""
    try:
        drafts = sorted((p for p in folder.glob("*.json") if TAB_DRAFT_ID.fullmatch(p.stem)),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in drafts[KEEP_TAB_DRAFTS:]:
            old.unlink(missing_ok=True)
    except OSError as e:  # another tab pruned at the same time, or the folder went: nothing is lost
        log.debug("could not prune the tab drafts in %s: %s", folder, e)


def write_form_draft(home: str | Path, kind: str, draft_id: str, values: dict[str, Any]) -> None:
    """A form's ``values`` as the ``kind`` draft (``{"saved": time, kind: values}``) of the tab ``draft_id``:
    :func:`write_draft` (``OSError`` when it cannot be written)."""
    write_draft(json.dumps({"saved": time.time(), kind: values}), *draft_paths(home, kind, draft_id))


def read_form_draft(home: str | Path, kind: str, draft_id: str, what: str) -> tuple[dict[str, Any] | None, str | None]:
    """The form values :func:`write_form_draft` kept (the tab's own, else the newest of any tab) and
    :func:`read_draft`'s note; a file without them is set aside like any damaged draft."""
    def parse(raw: bytes) -> dict[str, Any]:
        data = parse_json(raw)  # bounded size and nesting, no NaN, UTF-8
        if not isinstance(data, dict) or not isinstance(data.get(kind), dict):
            raise ValueError(f"not an autosaved {what} (no {kind!r} in it)")
        return data[kind]

    return read_draft(parse, *draft_paths(home, kind, draft_id), what)
