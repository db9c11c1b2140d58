"""The TN Studio app: a header and the tabs Design (this module), Train and Export (when their modules exist).

``create_app(home)`` builds one session's viewable around a fresh :class:`~studio.state.StudioState`;
``serve(port, address, show)`` runs it with Panel's server (``tnstudio serve``, ``make serve``). Nothing is
loaded from the internet: plain Panel layouts, the bundled React Flow build and Bokeh from the local server.
"""
from __future__ import annotations

import html
from typing import Any

import panel as pn

from . import export_view, train_view
from .canvas import Canvas
from .cost_view import CostPanel
from .files_view import Files
from .gallery import Gallery, Palette
from .inspector import Inspector
from .state import StudioState

PAGE_CSS = """
:host { background: #f4f6fa; font-family: Inter, system-ui, -apple-system, "Segoe UI", sans-serif; }
"""
HEADER_CSS = """
.tn-header{display:flex;align-items:center;gap:14px;font-family:Inter,system-ui,sans-serif;color:#e2e8f0}
.tn-logo{font-weight:800;font-size:18px;letter-spacing:-.01em;color:#fff}
.tn-logo span{color:#7dd3fc}
.tn-name{font-size:14px;font-weight:600;color:#f8fafc}
.tn-shape{font-size:12px;color:#cbd5e1;background:rgba(255,255,255,.08);border-radius:999px;padding:2px 9px}
.tn-badge-ok{font-size:12px;color:#bbf7d0}.tn-badge-bad{font-size:12px;color:#fecaca}
.tn-msg{font-size:12px;color:#94a3b8;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:520px}
"""
HEADER_BOX_CSS = ":host{background:linear-gradient(90deg,#0f172a,#1e293b);border-radius:0;padding:4px 14px}"


class Header:
    def __init__(self, state: StudioState):
        self.state = state
        self.info = pn.pane.HTML(sizing_mode="stretch_width", stylesheets=[HEADER_CSS], margin=(6, 0))
        self.undo = pn.widgets.Button(label="↶ Undo", width=80, color="light", css_classes=["tn-undo"])
        self.redo = pn.widgets.Button(label="↷ Redo", width=80, color="light", css_classes=["tn-redo"])
        self.undo.on_click(lambda *_: state.undo())
        self.redo.on_click(lambda *_: state.redo())
        state.param.watch(lambda *_: self.update(), ["version", "message", "problems"])
        self.update()

    def update(self) -> None:
        s, d = self.state, self.state.design
        badge = ("<span class='tn-badge-ok'>● valid</span>" if not s.problems else
                 f"<span class='tn-badge-bad'>● {len(s.problems)} problem{'s' if len(s.problems) > 1 else ''}</span>")
        self.info.object = (
            "<div class='tn-header'><div class='tn-logo'>TN<span>Studio</span></div>"
            f"<div class='tn-name'>{html.escape(d.name)}</div>"
            f"<div class='tn-shape'>W {d.in_features:,} × {d.out_features:,} · {len(d.tensors)} tensors</div>"
            f"{badge}<div class='tn-msg'>{html.escape(s.message)}</div></div>")
        self.undo.disabled = not s.can_undo
        self.redo.disabled = not s.can_redo

    def view(self) -> pn.viewable.Viewable:
        return pn.Row(self.info, self.undo, self.redo, sizing_mode="stretch_width", stylesheets=[HEADER_BOX_CSS],
                      margin=0, align="center")


def design_tab(state: StudioState) -> pn.viewable.Viewable:
    gallery, palette, files = Gallery(state), Palette(state), Files(state)
    canvas, inspector, cost = Canvas(state), Inspector(state), CostPanel(state)
    left = pn.Column(gallery.view(), palette.view(), files.view(), width=290, margin=(10, 8, 10, 10),
                     scroll=True)
    centre = pn.Column(canvas.panel, sizing_mode="stretch_both", margin=(10, 4),
                       styles={"background": "#ffffff", "border": "1px solid #e2e8f0", "border-radius": "10px"})
    right = pn.Column(inspector.view(), cost.view(), width=420, margin=(10, 10, 10, 8), scroll=True)
    row = pn.Row(left, centre, right, sizing_mode="stretch_both", min_height=720)
    row._studio = {"gallery": gallery, "palette": palette, "files": files, "canvas": canvas,  # for tests
                   "inspector": inspector, "cost": cost}
    return row


def create_app(home: str | None = None, state: StudioState | None = None) -> pn.viewable.Viewable:
    """One session's studio: header + tabs (Design, Train, Export)."""
    pn.extension("tabulator", notifications=False)  # the Train tab uses Tabulator (bundled, served locally)
    state = state or StudioState(home=home)
    tabs = pn.Tabs(("Design", design_tab(state)), ("Train", train_view.view(state)),
                   ("Export", export_view.view(state)), sizing_mode="stretch_both", dynamic=False)
    app = pn.Column(Header(state).view(), tabs, sizing_mode="stretch_both", stylesheets=[PAGE_CSS], margin=0,
                    min_height=800)
    app._studio_state = state  # for tests and other tabs
    return app


def serve(port: int = 5006, address: str = "127.0.0.1", show: bool = False, threaded: bool = False, **kw: Any):
    """Serve the studio (one fresh state per browser session); returns Panel's server (a thread if threaded)."""
    local = address in ("127.0.0.1", "localhost", "::1")
    origins = [f"{h}:{port}" for h in ("127.0.0.1", "localhost")] if local and port else "*"
    return pn.serve({"/": lambda: create_app()}, port=port, address=address, show=show, threaded=threaded,
                    title="TN Studio", websocket_origin=origins, **kw)
