"""Small shared view pieces: titled sections and the per-field error note."""
from __future__ import annotations

import html

import panel as pn

from .state import StudioState

SECTION_CSS = """
:host { background: #ffffff; border: 1px solid #e2e8f0; border-radius: 10px; box-shadow: 0 1px 2px rgba(15,23,42,.04); }
"""
TITLE_CSS = ".tn-title{font:600 12px Inter,system-ui,sans-serif;letter-spacing:.06em;text-transform:uppercase;" \
            "color:#64748b;margin:2px 0 0}"
ERROR_CSS = ".tn-error{color:#b91c1c;background:#fef2f2;border:1px solid #fecaca;border-radius:6px;" \
            "padding:5px 8px;font-size:12px;line-height:1.35;font-family:Inter,system-ui,sans-serif}"


def section(title: str, body: pn.viewable.Viewable, **kw) -> pn.Column:
    head = pn.pane.HTML(f"<div class='tn-title'>{html.escape(title)}</div>", stylesheets=[TITLE_CSS],
                        margin=(6, 10, 0, 10))
    return pn.Column(head, body, stylesheets=[SECTION_CSS], sizing_mode="stretch_width", margin=(0, 0, 10, 0),
                     **kw)


def error_html(message: str | None, field: str = "") -> str:
    if not message:
        return ""
    return f"<div class='tn-error' data-field='{html.escape(field)}'>{html.escape(message)}</div>"


def error_note(state: StudioState, field: str) -> pn.pane.HTML:
    """An HTML pane that shows ``state.field_errors[field]`` (empty when there is none)."""
    pane = pn.pane.HTML(error_html(state.field_errors.get(field), field), stylesheets=[ERROR_CSS],
                        sizing_mode="stretch_width", margin=(0, 5))

    def update(*_):
        pane.object = error_html(state.field_errors.get(field), field)

    state.param.watch(update, ["field_errors"])
    return pane
