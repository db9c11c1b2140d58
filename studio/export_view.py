"""The Export tab: the current design as a standalone PyTorch module, its JSON, or a snippet using the engine.

The code is produced by :mod:`engine.export` (straight-line einsum steps from the contraction program); this view
only previews it and offers downloads. A run's trained weights (from its checkpoint) can be exported with it: the
code is then for the design that run trained, and ``<name>.pt`` holds the layer's state dict.
"""
from __future__ import annotations

import html
import io
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import panel as pn
import param
from panel.viewable import Viewer

from engine.design.model import Design, DesignError
from engine.format import nbytes
from engine.nn.export import export_source, layer_state_dict, to_snippet
from engine.train.store import StoreError

from .fmt import ratio
from .session import SessionDispatcher
from .state import StudioState
from .style import css, styled
from .widgets import error_html, section

log = logging.getLogger(__name__)

FORMAT_LABELS = {"PyTorch module": "torch", "Design JSON": "json", "Engine snippet": "snippet"}
SUFFIX = {"torch": ".py", "json": ".json", "snippet": "_snippet.py"}
NO_WEIGHTS = "none (fresh initialisation)"
RUNS_POLL_MS = 3000
def highlight(code: str, language: str) -> str:
    """Code as HTML with inline colours (pygments when installed, plain escaped text otherwise)."""
    try:
        from pygments import highlight as _hl
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import JsonLexer, PythonLexer

        lexer = JsonLexer() if language == "json" else PythonLexer()
        body = _hl(code, lexer, HtmlFormatter(nowrap=True, noclasses=True, style="monokai"))
    except ImportError:  # pragma: no cover - pygments ships with the UI stack
        body = html.escape(code)
    return f"<pre class='tn-code'>{body}</pre>"


def file_stem(design: Design) -> str:
    """A file name stem from the design name (``"mera 256x256 chi=4"`` -> ``mera_256x256_chi4``)."""
    import re

    stem = re.sub(r"[^A-Za-z0-9]+", "_", design.name or "").strip("_").lower()
    return stem[:60] or "tn_layer"


class ExportView(Viewer):
    """Preview and download the export of ``state.valid_design`` (or of a run's design, with its weights).

    Parts (documented attributes): ``format``, ``weights`` (run choice), ``info``, ``code`` (the preview),
    ``download``, ``download_weights``. The code is generated in a worker thread (``background``) whose result is
    handed to the session's thread (:class:`~studio.session.SessionDispatcher`).
    """

    state = param.ClassSelector(class_=StudioState, doc="The studio state whose valid design is exported.")
    background = param.Boolean(default=True, doc="Generate in a worker thread (False: at once, for tests).")
    active = param.Boolean(default=True, doc="Whether the tab is in front: the export is generated only then "
                                             "(compiling every schedule of a large design takes a while).")

    def __init__(self, state: StudioState | None = None, runs_root: str | Path | None = None, **params: Any):
        super().__init__(state=state, **params)
        self.runs_root = Path(runs_root) if runs_root else Path(self.state.home) / "runs"
        self.dispatcher = SessionDispatcher.current()
        self.format = pn.widgets.RadioButtonGroup(options=FORMAT_LABELS, value="torch", color="primary",
                                                  variant="outline", sizing_mode="stretch_width",
                                                  css_classes=["tn-export-format"])
        self.weights = styled(pn.widgets.Select(label="Trained weights", options=[NO_WEIGHTS], value=NO_WEIGHTS,
                                                sizing_mode="stretch_width", css_classes=["tn-export-weights"]))
        self.info = pn.pane.HTML(stylesheets=[css("export", "notes")], sizing_mode="stretch_width", margin=(0, 10))
        self.code = pn.pane.HTML(stylesheets=[css("export")], sizing_mode="stretch_both", min_height=400,
                                 styles={"overflow": "auto"}, css_classes=["tn-export-code"])
        self.download = styled(pn.widgets.FileDownload(callback=self._code_file, filename="layer.py",
                                                       label="Download", sizing_mode="stretch_width",
                                                       css_classes=["tn-download-code"], embed=False, height=38),
                               "primary-download")
        self.download_weights = styled(pn.widgets.FileDownload(callback=self._weights_file, filename="layer.pt",
                                                               label="Download weights", sizing_mode="stretch_width",
                                                               visible=False, embed=False, height=38,
                                                               css_classes=["tn-download-weights"]),
                                       "weights-download")
        self.network: Any = None  # the Network tab's view, once attached: "Current network" exports its network
        self.what = styled(pn.widgets.RadioButtonGroup(options={"Current design": "design",
                                                                "Current network": "network"},
                                                       value="design", visible=False, sizing_mode="stretch_width",
                                                       css_classes=["tn-export-what"], margin=(0, 0, 8, 0)))
        self.net_code = pn.pane.HTML(self._net_placeholder(), stylesheets=[css("export", "train")],
                                     sizing_mode="stretch_both", min_height=400, styles={"overflow": "auto"},
                                     css_classes=["tn-export-code", "tn-export-network-code"])
        self.what.param.watch(lambda *_: self._show_what(), "value")
        self._cards: tuple[Any, Any] = (None, None)
        self._right: pn.Column | None = None  # the code shown: the design's or the network's
        self._runs: dict[str, dict[str, Any]] = {}  # option label -> run dict
        self._text, self._design, self._state_dict = "", None, None
        self._lock = threading.Lock()
        self._generation = 0
        self.format.param.watch(lambda *_: self.refresh(), "value")
        self.weights.param.watch(lambda *_: self.refresh(), "value")
        self.refresh_runs()
        self.refresh()

    # ------------------------------------------------------------------ runs with weights
    def refresh_runs(self) -> None:
        """The runs with a checkpoint and a design (their weights can be exported)."""
        if not (self.runs_root / "runs.db").exists():
            return
        from engine.train.store import RunStore

        try:
            runs = RunStore(self.runs_root).list_runs()
        except (StoreError, sqlite3.Error, OSError) as e:  # locked or half-written: keep the options, try later
            log.debug("runs with weights not refreshed: %s", e)
            return
        found: dict[str, dict[str, Any]] = {}
        for r in runs:
            if r.get("checkpoint") and r.get("design_name") and not (r.get("config") or {}).get("baseline"):
                acc = (r.get("results") or {}).get("best_test_accuracy")
                label = f"{r['id']} · {r['name']} · {r['status']}" + (f" · {acc:.1%}" if acc is not None else "")
                found[label] = r
        if list(found) != list(self._runs):
            self._runs = found
            keep = self.weights.value if self.weights.value in found else NO_WEIGHTS
            self.weights.options = [NO_WEIGHTS] + list(found)
            self.weights.value = keep

    # ------------------------------------------------------------------ generation
    @param.depends("state.version", "state.memory_budget", "active", watch=True)
    def refresh(self) -> None:
        """Regenerate the export (in a worker thread: compiling a large design's programs can take a second);
        while the tab is not in front, only note that it is out of date."""
        if not self.active or self.what.value == "network":  # not shown: generated when it is
            self._stale = True
            return
        self._stale = False
        self._generation += 1
        gen = self._generation
        if self.background:
            self.code.loading = True
            threading.Thread(target=self._generate, args=(gen,), daemon=True, name="tn-export").start()
        else:
            self._generate(gen)

    def _budget(self, design: Design, fmt: str) -> int | None:
        """The Live cost card's memory budget where one applies: a linear target, exported as code (not JSON)."""
        return self.state.memory_budget if design.conv is None and fmt != "json" else None

    def _selected_run(self) -> dict[str, Any] | None:
        return self._runs.get(self.weights.value) if self.weights.value != NO_WEIGHTS else None

    def _generate(self, gen: int) -> None:
        fmt, run = self.format.value, self._selected_run()
        design, state_dict, note, error, budget = self.state.valid_design, None, "", "", None
        try:
            if run is not None:
                design, state_dict = self._run_weights(run)
                if self.state.valid_design is None or design.fingerprint() != self.state.valid_design.fingerprint():
                    note = (f"Exporting the design run {run['id']} trained (<b>{html.escape(design.name)}</b>), "
                            f"which differs from the design on the canvas.")
            if design is None:
                raise DesignError("the design has problems: fix them on the Design tab to export it")
            if self.state.problems and run is None:
                note = "The draft has problems: this is the last valid design."
            stem = file_stem(design)
            budget = self._budget(design, fmt)
            if fmt == "snippet":
                text = to_snippet(design, f"{stem}.json", f"{stem}.pt" if state_dict is not None else None, budget)
            else:
                source = f"run {run['id']} ({run['name']})" if run is not None else ""
                text = export_source(design, fmt, source=source, memory_budget=budget)
            if budget is not None:
                note = " ".join(filter(None, [note, f"Planned within the Live cost's memory budget ({nbytes(budget)} "
                                                    f"per training step) at every batch."]))
        except (DesignError, ValueError, OSError, KeyError) as e:  # no valid design, a bad or missing checkpoint
            text, error = "", str(e)
        except Exception as e:  # noqa: BLE001 - this may run in a worker thread, where an uncaught exception
            # would vanish: whatever the exporter or torch.load raised becomes a message in the panel, and the
            # traceback goes to the log
            log.warning("export of %r failed", getattr(design, "name", None), exc_info=True)
            text, error = "", str(e)
        with self._lock:
            if gen != self._generation:
                return  # a newer request superseded this one
            self._text, self._design, self._state_dict = text, design, state_dict
        if self.background:
            self.dispatcher(lambda: self._show(fmt, design, run, note, error, budget) if gen == self._generation
                            else None)
        else:
            self._show(fmt, design, run, note, error, budget)

    def _run_weights(self, run: dict[str, Any]) -> tuple[Design, dict[str, Any]]:
        import torch

        from engine.train.store import RunStore

        full = RunStore(self.runs_root).get_run(run["id"])
        design = Design.from_dict(full["design"])
        ckpt = torch.load(full["checkpoint"], map_location="cpu", weights_only=True)
        return design, layer_state_dict(ckpt.get("model", ckpt), design)

    def _show(self, fmt: str, design: Design | None, run: dict[str, Any] | None, note: str, error: str,
              budget: int | None) -> None:
        """Show the generated text with its file name and command line (``budget``: the one the text was planned
        with, not the field's value now, which may have changed while a worker generated it)."""
        if error or design is None:
            self.info.object = error_html(error or 'nothing to export')
            self.code.object = ""
            self.download.disabled = True
            self.download_weights.visible = False
            self.code.loading = False
            return
        stem = file_stem(design)
        fname = stem + SUFFIX[fmt]
        what = {"torch": "a standalone <code>nn.Module</code> (imports torch only), straight-line einsum steps from "
                         "the contraction program; state-dict keys as <code>TNLinear</code>",
                "json": "the design file (load with <code>engine.design.load_design</code> or open in the studio)",
                "snippet": f"a script using the engine: <code>TNLinear(load_design('{stem}.json'))</code>; "
                           f"save the design JSON beside it"}[fmt]
        cli = (f"tnstudio export {stem}.json --to {fmt} -o {fname}" + (f" --run {run['id']}" if run else "")
               + (f" --memory-budget {budget}" if budget is not None else ""))
        weights = (f"<div>Weights: <span class='file'>{stem}.pt</span> from run <b>{run['id']}</b> "
                   f"(<code>torch.load(..., weights_only=True)</code>)</div>" if run else
                   "<div class='muted'>Train this design on the Train tab to export its weights too.</div>")
        self.info.object = (
            f"<div class='tn-exp'><div><b>{html.escape(design.name)}</b> · {design.in_features:,} → "
            f"{design.out_features:,} · {design.params:,} core params · {ratio(design.compression)} compression</div>"
            f"<div>File: <span class='file'>{html.escape(fname)}</span> — {what}.</div>{weights}"
            + (f"<div class='note'>{note}</div>" if note else "")
            + f"<div class='cli'>$ {html.escape(cli)}</div></div>")
        self.code.object = highlight(self._text, "json" if fmt == "json" else "python")
        self.download.filename = fname
        self.download.label = f"Download {fname}"
        self.download.disabled = False
        self.download_weights.filename = f"{stem}.pt"
        self.download_weights.label = f"Download {stem}.pt (weights)"
        self.download_weights.visible = run is not None
        self.code.loading = False

    # ------------------------------------------------------------------ downloads
    def _code_file(self) -> io.BytesIO:
        with self._lock:
            return io.BytesIO(self._text.encode())

    def _weights_file(self) -> io.BytesIO:
        import torch

        buf = io.BytesIO()
        with self._lock:
            state = self._state_dict or {}
        torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, buf)
        buf.seek(0)
        return buf

    def close(self) -> None:
        self.dispatcher.close()

    # ------------------------------------------------------------------ the whole network
    def attach_network(self, network: Any) -> None:
        """Offer ``network``'s network (a :class:`studio.network_view.NetworkView`) next to the design: a switch
        above the card shows its export card (``network.export_panel()``) and the module it wrote."""
        self.network = network
        self.what.visible = True
        network.param.watch(lambda *_: self._show_network_code(), "export_path")

    def show_network(self) -> None:
        """Switch to exporting the current network (the Network tab's "Export it" button)."""
        if self.network is not None:
            self.what.value = "network"

    @staticmethod
    def _net_placeholder() -> str:
        return ("<div class='tn-placeholder'>Press <b>&nbsp;Export torch module&nbsp;</b> to write the whole network "
                "as one torch-only module: its code shows here.</div>")

    def _show_network_code(self) -> None:
        path = Path(self.network.export_path) if self.network is not None and self.network.export_path else None
        try:
            text = path.read_text(encoding="utf-8") if path is not None else ""
        except OSError as e:  # removed meanwhile: say so where the code would be
            log.info("exported module %s not shown: %s", path, e)
            text = ""
        self.net_code.object = highlight(text, "python") if text else self._net_placeholder()

    def _show_what(self) -> None:
        network = self.what.value == "network" and self.network is not None
        form, net = self._cards
        if form is not None:
            form.visible = not network
        if net is not None:
            net.visible = network
        if self._right is not None:
            shown = self.net_code if network else self.code
            if list(self._right.objects) != [shown]:
                self._right[:] = [shown]
        if not network:
            self.refresh()

    # ------------------------------------------------------------------ layout
    def __panel__(self) -> pn.viewable.Viewable:
        controls = section("Export", pn.Column(
            pn.pane.HTML("<div class='tn-exp muted'>Format</div>", stylesheets=[css("export")],
                         margin=(4, 10, 0, 10)),
            self.format, self.weights, self.info, self.download, self.download_weights,
            sizing_mode="stretch_width", margin=(0, 0, 8, 0)))
        net = self.network.export_panel() if self.network is not None else None
        self._cards = (controls, net)
        network = self.what.value == "network" and net is not None
        controls.visible = not network
        if net is not None:
            net.visible = network
        left = pn.Column(self.what, controls, *([net] if net is not None else []), width=400,
                         margin=(10, 8, 10, 10), scroll=True, sizing_mode="stretch_height", min_height=200)
        right = self._right = pn.Column(self.net_code if network else self.code, sizing_mode="stretch_both",
                                        margin=(10, 10, 10, 4))
        if self.dispatcher.served:
            pn.state.add_periodic_callback(self.refresh_runs, period=RUNS_POLL_MS)
        return pn.Row(left, right, sizing_mode="stretch_both", min_height=520)
