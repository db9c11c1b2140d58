"""A file chooser that refuses files over a size limit in the browser, before anything is sent.

Panel's ``FileInput`` (1.9) reads the whole file in the browser and sends it over the websocket as one message, with no
size limit of its own (``max_file_size`` exists only on ``FileDropper``, which loads FilePond); a file over Bokeh's
websocket limit (20 MB) closes the connection, and the page is dead. :class:`Upload` checks ``File.size`` first: a
file over ``max_bytes`` is never read, and only its name and size reach Python (``refused``), so the view can say why
under the field. Files within the limit arrive as ``filename`` and ``value`` (bytes), like ``FileInput``'s. The
component is a plain ES module (no imports, nothing from the internet).
"""
from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import param
from panel.custom import JSComponent

from .style import css

log = logging.getLogger(__name__)


def too_large(name: str, size: int, limit: int, what: str = "files") -> str:
    """The refusal of a file of ``size`` bytes over ``limit`` (the same words for the browser's check and the
    server's, :meth:`studio.state.StudioState.load_json`)."""
    return f"{name} is {size:,} bytes: {what} opened here may have at most {limit / 2 ** 20:g} MiB"


class Upload(JSComponent):
    """A file chooser: ``value`` (bytes) and ``filename`` of the last file within ``max_bytes``; ``refused`` says
    which file was too large (its ``filename`` and ``size``), ``refusals`` counts them (watch either)."""

    accept = param.String(default="", doc="File types offered (the input's accept attribute, e.g. '.json').")
    max_bytes = param.Integer(default=2 * 2 ** 20, bounds=(1, None), doc="Largest file read and sent, in bytes.")
    what = param.String(default="files", precedence=-1, doc="What is opened, in the refusal ('designs opened here may ...').")
    value = param.Bytes(default=None, allow_None=True, precedence=-1, doc="The last accepted file's contents.")
    filename = param.String(default=None, allow_None=True, precedence=-1, doc="The last accepted file's name.")
    refused = param.Dict(default={}, precedence=-1, doc="The last file refused for its size: filename and size.")
    refusals = param.Integer(default=0, precedence=-1, doc="How many files were refused for their size.")

    # Python-only: never sent to the browser
    _rename = {"value": None, "filename": None, "refused": None, "refusals": None, "what": None}

    _esm = """
export function render({ model, el }) {
  const input = document.createElement("input")
  input.type = "file"
  input.className = "bk-input"
  input.accept = model.accept
  model.on("change:accept", () => { input.accept = model.accept })
  input.addEventListener("change", () => {
    const file = input.files && input.files[0]
    if (!file) return
    if (file.size > model.max_bytes) {
      input.value = ""  // never read, never sent: the connection's message limit is not even approached
      model.send_msg({kind: "refused", filename: file.name, size: file.size})
      return
    }
    const reader = new FileReader()
    reader.onload = () => {
      const url = String(reader.result)
      model.send_msg({kind: "file", filename: file.name, size: file.size, data: url.slice(url.indexOf(",") + 1)})
    }
    reader.onerror = () => model.send_msg({kind: "unreadable", filename: file.name, size: file.size})
    reader.readAsDataURL(file)
  })
  el.appendChild(input)
}
"""

    def __init__(self, **params: Any):
        params.setdefault("stylesheets", [css("controls", "upload")])
        params.setdefault("margin", (5, 10))
        super().__init__(**params)

    def _handle_msg(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        name, size = str(msg.get("filename") or "the file"), int(msg.get("size") or 0)
        if msg.get("kind") == "file":
            try:
                data = base64.b64decode(msg.get("data") or "", validate=True)
            except (binascii.Error, ValueError) as e:
                log.warning("upload of %s arrived garbled: %s", name, e)
                self.refuse(name, size, why=f"{name} arrived garbled; choose it again")
                return
            if len(data) > self.max_bytes:  # a page that skipped the browser's check
                self.refuse(name, len(data))
                return
            self.value = None  # the same file chosen again is opened again
            self.param.update(filename=name, value=data)
        else:
            self.refuse(name, size, why=None if msg.get("kind") == "refused" else f"{name} could not be read")

    def refuse(self, name: str, size: int, why: str | None = None) -> None:
        """Record a refused file (what the browser reports for a file over ``max_bytes``)."""
        self.param.update(refused={"filename": name, "size": size,
                                   "message": why or too_large(name, size, self.max_bytes, self.what)},
                          refusals=self.refusals + 1)
