"""The TN Studio app: a header and the tabs listed in :data:`TABS` (Design, Train, Export, and the optional ones in
:data:`OPTIONAL_TABS` whose modules exist).

:class:`StudioApp` builds one browser session's page around a :class:`~studio.state.StudioState`; ``serve(...)``
runs it with Panel's server (``tnstudio serve``, ``make serve``). Nothing is loaded from the internet: plain Panel
layouts, the bundled React Flow build, Bokeh and the studio's stylesheet from the local server.

Adding a tab is one entry in :data:`TABS` (a component class taking ``state=``, e.g. a ``pn.viewable.Viewer``), or
in :data:`OPTIONAL_TABS` (module, class) for a module that may not be there yet.
"""
from __future__ import annotations

import html
import importlib
import logging
import warnings
from typing import Any, Callable

import panel as pn
import param
from bokeh.util.warnings import BokehUserWarning
from panel.viewable import Viewer

from .canvas import Canvas
from .cost_view import CostPanel
from .export_view import ExportView
from .files_view import Files
from .gallery import Gallery, Palette
from .inspector import Inspector
from .session import (SessionDispatcher, on_session_end, quiet_closed_tab_writes, swallow_double_clicks,
                      tab_draft_id)
from .state import StudioState
from .style import css
from .train_view import TrainView
from .widgets import button

log = logging.getLogger(__name__)
# Bokeh warns when a browser event names a model by its full definition instead of a bare reference, which it does
# for a button replaced in its own click callback (the inspector rebuilds itself after an edit); Bokeh then uses the
# model it knows, so the warning says nothing about the studio
warnings.filterwarnings("ignore", message="reference already known", category=BokehUserWarning)


def keep_stylesheets_local() -> None:
    """Never let Panel point a page at its CDN (Panel 1.9.4 bug, worked around here).

    With dynamic tabs, a tab that was shown and is hidden again keeps its Bokeh models, detached from the document;
    a pane of it that changes then (a background result, a poll) is rebuilt with no document, so Panel takes its
    CDN as the place of its own CSS (``panel.reactive.CDN_DIST``) and rewrites the session's one shared
    ``loading.css`` stylesheet to the CDN's address: every component of the page then asks the internet for it
    (a console error offline). The local address in that place leaves the stylesheet as it is."""
    import panel.reactive
    from panel.io.resources import LOCAL_DIST

    panel.reactive.CDN_DIST = LOCAL_DIST


keep_stylesheets_local()
quiet_closed_tab_writes()
LOOPBACK = ("127.0.0.1", "localhost", "::1")
AUTH_HELP = ("anyone who can reach it can read and write designs and start training processes on this machine: "
             "serve on 127.0.0.1 (the default), or protect it with --basic-auth PASSWORD_OR_FILE (Panel's basic "
             "authentication) or an OAuth provider (--oauth-provider with --oauth-key, --oauth-secret and "
             "--cookie-secret, also --oauth-encryption-key), as `tnstudio serve --help` lists")


class Header(Viewer):
    """The top bar: the design's name and size, valid or not, the last message, New / Undo / Redo."""

    state = param.ClassSelector(class_=StudioState, doc="The studio state shown.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        s = self.state
        self.info = pn.pane.HTML(sizing_mode="stretch_width", stylesheets=[css("header")], margin=(6, 0),
                                 css_classes=["tn-header-info"])
        self.new = button("+ New", s.new_design, width=80, color="light", css_classes=["tn-new"],
                          key=lambda: s.version, description="start an empty design (undo brings this one back)")
        self.undo = button("↶ Undo", s.undo, width=80, color="light", css_classes=["tn-undo"], dedupe=False)
        self.redo = button("↷ Redo", s.redo, width=80, color="light", css_classes=["tn-redo"], dedupe=False)
        self.update()

    @param.depends("state.version", "state.message", "state.problems", watch=True)
    def update(self) -> None:
        s, d = self.state, self.state.design
        n = len(s.problems)
        badge = ("<span class='tn-badge-ok'>● valid</span>" if not n else
                 f"<span class='tn-badge-bad'>● {n} problem{'s' if n > 1 else ''}</span>")
        refused = " refused" if s.message.startswith(("refused:", "confirm:")) else ""
        self.info.object = (
            f"<div class='tn-header' data-version='{s.version}'><div class='tn-logo'>TN<span>Studio</span></div>"
            f"<div class='tn-name' title='{html.escape(d.name, quote=True)}'>{html.escape(d.name)}</div>"
            f"<div class='tn-shape'>W {d.in_features:,} × {d.out_features:,} · {len(d.tensors)} tensors</div>"
            f"{badge}<div class='tn-msg{refused}'>{html.escape(s.message)}</div></div>")
        self.undo.disabled = not s.can_undo
        self.redo.disabled = not s.can_redo

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Row(self.info, self.new, self.undo, self.redo, sizing_mode="stretch_width",
                      stylesheets=[css("header")], margin=0, align="center", css_classes=["tn-header-bar"])


class DesignTab(Viewer):
    """Gallery, palette and files (left), the canvas (centre), inspector and live cost (right)."""

    state = param.ClassSelector(class_=StudioState, doc="The studio state designed on.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        s = self.state
        self.canvas = Canvas(state=s)
        self.gallery = Gallery(state=s)
        self.palette = Palette(state=s, place=self.canvas.add_tensor)
        self.files = Files(state=s)
        self.inspector = Inspector(state=s)
        self.cost = CostPanel(state=s)

    def __panel__(self) -> pn.viewable.Viewable:
        # the side columns scroll on their own, so the canvas keeps the window's height (1280 x 800 included)
        left = pn.Column(self.gallery, self.palette, self.files, width=272, margin=(10, 6, 10, 10), scroll=True,
                         sizing_mode="stretch_height", min_height=200, css_classes=["tn-left"])
        right = pn.Column(self.inspector, self.cost, width=384, margin=(10, 10, 10, 6), scroll=True,
                          sizing_mode="stretch_height", min_height=200, css_classes=["tn-right"])
        return pn.Row(left, self.canvas, right, sizing_mode="stretch_both", min_height=540,
                      css_classes=["tn-design-row"])


def _optional(module: str, attr: str) -> Callable[..., Any] | None:
    """``module.attr`` when the module exists (None when it is not there yet); without ``attr``, the one
    ``Viewer`` class the module defines."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise
    if hasattr(mod, attr):
        return getattr(mod, attr)
    found = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, Viewer)
             and v.__module__ == mod.__name__]
    if len(found) == 1:
        return found[0]
    log.warning("%s defines no %s (nor exactly one Viewer): its tab is left out", module, attr)
    return None


TABS: list[tuple[str, Callable[..., Any]]] = [("Design", DesignTab), ("Train", TrainView), ("Export", ExportView)]
OPTIONAL_TABS: list[tuple[str, str, str, str | None]] = [
    # (title, module, component class, the tab it goes after): tabs whose modules are being written
    ("Inspect", "studio.inspect_view", "InspectView", "Design"),
    ("Network", "studio.network_view", "NetworkView", "Inspect"),
    ("Search", "studio.search_view", "SearchView", "Train"),
]


def tab_list() -> list[tuple[str, Callable[..., Any]]]:
    """The tabs of a session: :data:`TABS` with the optional ones whose modules exist."""
    tabs = list(TABS)
    for title, module, attr, after in OPTIONAL_TABS:
        factory = _optional(module, attr)
        if factory is None or any(t == title for t, _ in tabs):
            continue
        at = next((k + 1 for k, (t, _) in enumerate(tabs) if t == after), len(tabs))
        tabs.insert(at, (title, factory))
    return tabs


class StudioApp(Viewer):
    """One browser session's studio: the header and one component per tab, all over one :class:`StudioState`.

    ``components`` maps tab titles to their components (``components["Design"].canvas`` is the canvas,
    ``components["Train"]`` the Train tab, ...); ``header`` is the top bar, ``tabs`` the tab layout.
    """

    state = param.ClassSelector(class_=StudioState, doc="The session's studio state.")

    def __init__(self, home: str | None = None, tabs: list[tuple[str, Callable[..., Any]]] | None = None,
                 **params: Any):
        params.setdefault("state", None)
        if params["state"] is None:
            params["state"] = StudioState(home=home, draft_id=tab_draft_id())
        super().__init__(**params)
        pn.extension("tabulator", notifications=False)  # the Train tab's table (bundled, served locally)
        self.dispatcher = SessionDispatcher.current()
        self.state.dispatch = self.dispatcher
        self.header = Header(state=self.state)
        self.components: dict[str, Any] = {title: factory(state=self.state) for title, factory in (tabs or tab_list())}
        self._wire()  # before the tabs: wrapping a component in the tab layout renders it (__panel__)
        # dynamic: a tab is rendered in the browser when it is shown, so the page loads (and updates) only the
        # tab in front; components with an ``active`` parameter are told whether they are in front
        # (each in a plain wrapper: a tab not shown is a placeholder with its wrapper's sizes, so no tab's minimum
        # height makes the page taller than the window while another tab is in front)
        self.tabs = pn.Tabs(*((t, pn.Column(c, sizing_mode="stretch_both", margin=0)) for t, c in self.components.items()),
                            sizing_mode="stretch_both", dynamic=True, stylesheets=[css("page")], css_classes=["tn-tabs"])
        self.tabs.param.watch(lambda *_: self._activate(), "active")
        self._activate()
        on_session_end(self.close)
        swallow_double_clicks()

    @property
    def design(self) -> DesignTab:
        return self.components["Design"]

    def close(self) -> None:
        """The session ended: stop background work and polling."""
        self.dispatcher.close()
        self.state.close()
        for comp in self.components.values():
            if hasattr(comp, "close"):
                comp.close()

    def show(self, title: str) -> Any:
        """Bring the tab titled ``title`` to the front; returns its component (None when there is none)."""
        titles = list(self.components)
        if title not in titles:
            return None
        self.tabs.active = titles.index(title)
        return self.components[title]

    def _activate(self) -> None:
        front = list(self.components)[self.tabs.active] if self.components else None
        for title, comp in self.components.items():
            if "active" in getattr(comp, "param", {}):
                comp.active = title == front

    def _wire(self) -> None:
        """Requests tabs make of each other: a component's ``opened_design`` bump shows the Design tab, its
        ``open_run`` shows that run on the Train tab (the Search tab has both). A component that offers a whole
        network (``train_panel()`` and ``export_panel()``: the Network tab) is attached to the tabs that take one
        (``attach_network``: Train and Export), which then show its cards instead of it; its ``open_tab`` request
        shows such a tab with the network chosen."""
        networks = [c for c in self.components.values() if hasattr(c, "train_panel") and hasattr(c, "export_panel")]
        takers = [c for c in self.components.values() if hasattr(c, "attach_network")]
        for net in networks[:1]:
            for comp in takers:
                comp.attach_network(net)
            if takers and "cards" in net.param:
                net.cards = False
            if "open_tab" in net.param:
                def open_tab(event: Any) -> None:
                    comp = self.show(event.new) if event.new else None
                    if comp is not None and hasattr(comp, "show_network"):
                        comp.show_network()
                net.param.watch(open_tab, "open_tab")
        for comp in self.components.values():
            params = getattr(comp, "param", None)
            if params is None:
                continue
            if "opened_design" in params:
                comp.param.watch(lambda _e: self.show("Design"), "opened_design")
            if "open_run" in params:
                def open_run(event: Any) -> None:
                    train = self.show("Train") if event.new else None
                    if train is not None and hasattr(train, "show_run"):
                        train.show_run(event.new)
                comp.param.watch(open_run, "open_run")

    def __panel__(self) -> pn.viewable.Viewable:
        return pn.Column(self.header, self.tabs, sizing_mode="stretch_both", stylesheets=[css("page")], margin=0,
                         min_height=640)


def create_app(home: str | None = None, state: StudioState | None = None) -> StudioApp:
    """One session's studio (a :class:`StudioApp`)."""
    return StudioApp(home=home, state=state)


def serve(port: int = 5006, address: str = "127.0.0.1", show: bool = False, threaded: bool = False,
          basic_auth: str | None = None, oauth_provider: str | None = None, **kw: Any):
    """Serve the studio (one fresh state per browser session); returns Panel's server (a thread if threaded).

    Authentication options are Panel's (``basic_auth``, ``oauth_provider``, ``oauth_key``, ``oauth_secret``,
    ``cookie_secret``, ``oauth_encryption_key``, ...). Binding to a non-loopback address without them warns.
    """
    local = address in LOOPBACK
    if not local and not basic_auth and not oauth_provider:
        message = f"TN Studio is served on {address}, not only this machine, without authentication: {AUTH_HELP}"
        warnings.warn(message, stacklevel=2)
        log.warning(message)
    origins = [f"{h}:{port}" for h in ("127.0.0.1", "localhost")] if local and port else "*"
    auth = {k: v for k, v in (("basic_auth", basic_auth), ("oauth_provider", oauth_provider)) if v}
    return pn.serve({"/": create_app}, port=port, address=address, show=show, threaded=threaded,
                    title="TN Studio", websocket_origin=origins, **auth, **kw)
