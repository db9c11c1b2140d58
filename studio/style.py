"""The studio's stylesheet (``studio/static/studio.css``, shipped as package data) and its named sections.

Every Panel component renders in its own shadow root, so a component is given only the sections it needs:
``css("cards", "notes")`` is the text of those sections, passed as ``stylesheets=[...]``. The text is inlined (read
once from the package), so the page loads no stylesheet from anywhere, and nothing from the internet.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import panel as pn

_MARK = re.compile(r"^/\* @section ([a-z0-9-]+) \*/\s*$", re.M)


@lru_cache(maxsize=1)
def stylesheet() -> str:
    """The whole stylesheet file."""
    return resources.files("studio").joinpath("static", "studio.css").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def sections() -> dict[str, str]:
    """Section name -> its CSS (the text between its ``@section`` marker and the next)."""
    text = stylesheet()
    marks = list(_MARK.finditer(text))
    return {m.group(1): text[m.end(): marks[k + 1].start() if k + 1 < len(marks) else len(text)].strip()
            for k, m in enumerate(marks)}


@lru_cache(maxsize=64)
def css(*names: str) -> str:
    """The CSS of the named sections, in order (``KeyError`` naming an unknown section)."""
    table = sections()
    missing = [n for n in names if n not in table]
    if missing:
        raise KeyError(f"no section {', '.join(missing)} in studio.css (has: {', '.join(table)})")
    return "\n".join(table[n] for n in names)


def styled(widget: pn.widgets.Widget, *names: str) -> pn.widgets.Widget:
    """``widget`` with the shared look of every control (section ``controls``) and any other sections; returns it."""
    widget.stylesheets = [*widget.stylesheets, css("controls", *names)]
    return widget
