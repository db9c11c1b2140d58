"""Save and open designs: JSON download/upload, the local library under ``<home>/designs`` and the presets."""
from __future__ import annotations

import io
import re

import panel as pn

from engine.design.model import DesignError

from engine.design.library import designs_dir, library, open_design, presets, safe_name, save_to_library
from .state import StudioState
from .widgets import error_note, section


def download_name(name: str) -> str:
    try:
        return safe_name(name) + ".json"
    except ValueError:
        return "design.json"


class Files:
    """Download / upload and the library; messages about files go to ``field_errors['open'|'library']``."""

    def __init__(self, state: StudioState):
        self.state = state
        self.download = pn.widgets.FileDownload(callback=self._payload, filename=download_name(state.design.name),
                                                label="⬇ Download JSON", color="primary",
                                                sizing_mode="stretch_width", css_classes=["tn-download"])
        self.upload = pn.widgets.FileInput(accept=".json,application/json", sizing_mode="stretch_width",
                                           css_classes=["tn-upload"])
        self.upload.param.watch(self._uploaded, "value")
        self.name = pn.widgets.TextInput(label="save as", placeholder="name", value=state.design.name, width=150)
        self.save_btn = pn.widgets.Button(label="Save", width=70, align="end", color="success")
        self.save_btn.on_click(lambda *_: self.save())
        self.choice = pn.widgets.Select(label="library and presets", options=self._options(),
                                        sizing_mode="stretch_width")
        self.open_btn = pn.widgets.Button(label="Open", width=70, align="end")
        self.open_btn.on_click(lambda *_: self.open_selected())
        self.note = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 5),
                                 stylesheets=[".tn-note{font-size:11.5px;color:#166534}"])
        self._seen_layout = state.layout_version
        state.param.watch(self._design_changed, ["version"])

    def _payload(self) -> io.StringIO:
        return io.StringIO(self.state.to_json() + "\n")

    def _design_changed(self, *_) -> None:
        self.download.filename = download_name(self.state.design.name)
        if self.state.layout_version != self._seen_layout:  # a newly opened design: suggest its name
            self._seen_layout = self.state.layout_version
            self.name.value = self.state.design.name

    def _uploaded(self, event) -> None:
        if event.new is None:
            return
        self.state.load_json(event.new, source=self.upload.filename or "upload")

    def _options(self) -> dict[str, str]:
        opts = {f"library · {k}": str(p) for k, p in library(self.state.home).items()}
        opts.update({f"preset · {k}": str(p) for k, p in presets().items()})
        return opts or {"(no saved designs yet)": ""}

    def refresh(self) -> None:
        self.choice.options = self._options()

    def save(self) -> bool:
        try:
            path = save_to_library(self.state.design, self.name.value or self.state.design.name, self.state.home)
        except (ValueError, OSError) as e:
            self.state._refuse("library", str(e))
            return False
        self.state._clear_error("library")
        self.note.object = f"<div class='tn-note'>saved {path.name} in {designs_dir(self.state.home)}</div>"
        self.refresh()
        self.choice.value = str(path)
        return True

    def open_selected(self) -> bool:
        path = self.choice.value
        if not path:
            return False
        try:
            d = open_design(path)
        except DesignError as e:
            self.state._refuse("library", f"{re.sub(r'.*/', '', path)}: " + "; ".join(e.problems))
            return False
        self.state._clear_error("library")
        self.state.replace(d, "opened")
        return True

    def view(self) -> pn.viewable.Viewable:
        return section("Files", pn.Column(
            self.download,
            pn.pane.HTML("<div style='font:11.5px Inter,system-ui;color:#64748b'>Open a design JSON:</div>",
                         margin=(4, 5, 0, 5)),
            self.upload, error_note(self.state, "open"),
            pn.Row(self.name, self.save_btn, margin=0), error_note(self.state, "library"), self.note,
            pn.Row(self.choice, self.open_btn, margin=0),
            margin=0, sizing_mode="stretch_width"))
