"""Save and open designs: JSON download/upload, the local library under ``<home>/designs`` and the presets.

An upload goes through the same path as every other way of opening a design: :meth:`StudioState.load_json` (size
limit ``MAX_UPLOAD_BYTES``, then the engine's validation), and its refusal is shown under the upload field. The file
chooser (:class:`studio.upload.Upload`) checks the size in the browser first: a larger file is never sent (a file
over Bokeh's websocket limit would close the connection), and the same refusal is shown.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import panel as pn
import param
from panel.viewable import Viewer

from engine.design.library import designs_dir, library, open_design, presets, safe_name, save_to_library
from engine.design.model import DesignError

from .state import MAX_UPLOAD_BYTES, StudioState
from .style import css, styled
from .upload import Upload
from .widgets import FieldNote, button, hint, section


def download_name(name: str) -> str:
    try:
        return safe_name(name) + ".json"
    except ValueError:
        return "design.json"


class Files(Viewer):
    """Download / upload and the library; refusals go to ``field_errors['open'|'library']``."""

    state = param.ClassSelector(class_=StudioState, doc="The studio state whose design is saved and replaced.")

    def __init__(self, **params: Any):
        super().__init__(**params)
        s = self.state
        self.download = styled(pn.widgets.FileDownload(
            callback=self._payload, filename=download_name(s.design.name), label="⬇ Download JSON",
            sizing_mode="stretch_width", css_classes=["tn-download"], embed=False), "primary-download")
        self.upload = Upload(accept=".json,application/json", max_bytes=MAX_UPLOAD_BYTES, what="designs",
                             sizing_mode="stretch_width", css_classes=["tn-upload"])
        self.upload.param.watch(self._uploaded, "value")
        self.upload.param.watch(lambda _e: self.state.refuse("open", self.upload.refused["message"]), "refusals")
        self.save_name = styled(pn.widgets.TextInput(label="save as", value=s.design.name, sizing_mode="stretch_width",
                                                css_classes=["tn-save-name"]))
        self.save_button = button("Save", self.save, once=True, color="success", width=70, align="end",
                                  css_classes=["tn-save"], key=lambda: (self.save_name.value, s.version))
        self.choice = styled(pn.widgets.Select(label="library and presets", options=self._options(),
                                               sizing_mode="stretch_width", css_classes=["tn-library"]))
        self.open_button = button("Open", self.open_selected, once=True, width=70, align="end",
                                  css_classes=["tn-open"], key=lambda: (self.choice.value, s.version))
        self.saved = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 5), stylesheets=[css("text")])
        self.open_note = FieldNote(state=s, field="open")
        self.library_note = FieldNote(state=s, field="library")
        self._own: str | None = None  # the library file this draft was opened from or last saved to

    def _payload(self) -> io.StringIO:
        return io.StringIO(self.state.to_json() + "\n")

    @param.depends("state.layout_version", watch=True)
    def _design_replaced(self) -> None:
        """A new, generated or opened design is no longer the library file the draft came from (an open sets it
        again right after)."""
        self._own = None

    @param.depends("state.version", watch=True)
    def _design_changed(self) -> None:
        name = self.state.design.name
        self.download.filename = download_name(name)
        if self.save_name.value != name:
            self.save_name.value = name
        self.saved.object = ""

    def _uploaded(self, event: Any) -> None:
        if event.new is None:
            return
        self.state.load_json(event.new, source=self.upload.filename or "the upload")

    def _options(self) -> dict[str, str]:
        opts = {f"library · {k}": str(p) for k, p in library(self.state.home).items()}
        opts.update({f"preset · {k}": str(p) for k, p in presets().items()})
        return opts or {"(no saved designs yet)": ""}

    def refresh(self) -> None:
        self.choice.options = self._options()

    def save(self, replace: bool = False) -> bool:
        """Save the design under the name in the save-as field (which becomes the design's name). A library file
        that holds another design (another name mapping to the same file, or other maths) is replaced only after
        the user confirms, unless it is the file this draft was opened from or last saved to."""
        name = (self.save_name.value or "").strip() or self.state.design.name
        try:
            stem = safe_name(name)
        except ValueError as e:
            self.state.refuse("library", str(e))
            return False
        target = designs_dir(self.state.home) / f"{stem}.json"
        other = None if replace or str(target) == self._own else self._other_design(target, name)
        if other:
            return self.state.ask("library", f"saving replaces {target.name}, which holds {other}",
                                  lambda: self.save(replace=True))
        if name != self.state.design.name and not self.state.set_name(name):
            self.state.refuse("library", self.state.field_errors.get("name", f"cannot name the design {name!r}"))
            return False
        try:
            path = save_to_library(self.state.design, name, self.state.home)
        except (ValueError, OSError) as e:
            self.state.refuse("library", str(e))
            return False
        self._own = str(path)
        self.state._clear_error("library")
        self.state.note(f"saved {path.name}")
        self.saved.object = f"<div class='tn-note'>saved {path.name} in {designs_dir(self.state.home)}</div>"
        self.refresh()
        self.choice.value = str(path)
        return True

    def _other_design(self, path: Path, name: str) -> str | None:
        """What ``path`` holds, in words, when it is not this draft under ``name`` (None: no file, or the same)."""
        try:
            exists = path.is_file()
        except OSError:
            return None  # the save itself says why it cannot write there
        if not exists:
            return None
        try:
            saved = open_design(path)
        except (DesignError, FileNotFoundError):
            return "a file that is not a valid design"
        if saved.name != name:
            return f"the design {saved.name!r}"
        if saved.fingerprint() != self.state.design.fingerprint():
            return f"another version of {name!r} ({saved.params:,} params)"
        return None

    def open_selected(self) -> bool:
        path = self.choice.value
        if not path:
            return False
        try:
            d = open_design(path)
        except (DesignError, FileNotFoundError) as e:
            problems = e.problems if isinstance(e, DesignError) else [str(e)]
            self.state.refuse("library", f"{Path(path).name}: " + "; ".join(problems))
            return False
        opened = self.state.replace(d, "opened")
        if opened and Path(path).parent == designs_dir(self.state.home):
            self._own = str(path)  # saving it again replaces it without asking
        return opened

    def __panel__(self) -> pn.viewable.Viewable:
        return section("Files", pn.Column(
            self.download,
            hint(f"Open a design JSON (at most {MAX_UPLOAD_BYTES // 2 ** 20} MiB):", margin=(4, 5, 0, 5)),
            self.upload, self.open_note,
            pn.Row(self.save_name, self.save_button, margin=0), self.library_note, self.saved,
            pn.Row(self.choice, self.open_button, margin=0),
            margin=0, sizing_mode="stretch_width"))
