"""The Network tab: a whole architecture, its layers' designs, the totals, training and export.

``NetworkView(state, home)`` is a self-contained ``pn.viewable.Viewer``:

- **Architecture**: pick one from the engine's catalogue (MLP, 1-D CNN, LeNet-5, CIFAR VGG, ResNet-18, AlexNet,
  VGG-16, Transformer encoder, ViT-B/16) or a ``package.module:factory``, the input shape and classes (or a data set,
  which gives both) and options; **New network** starts with every layer dense. Network files can be uploaded,
  downloaded and saved to ``<home>/networks``.
- **Layer table** (one row per assignable layer, the attention cores and the other parameters together): kind,
  shape, what it is assigned, dense and TN parameters, compression and bars of each layer's share of the dense
  model's parameters and FLOPs, dense and as assigned. Clicking a layer selects it and, when it can take a design,
  opens its design on the Design tab's canvas (a default TTN for a dense layer); from then on every valid edit on
  the canvas flows back into that layer (:meth:`NetworkView.canvas_changed`), as long as the design keeps the
  layer's shape. Conv layers are counted but take no designs yet (the engine says why).
- **Rules**: bulk rules (``linear:ttn:4:gelu:min=1000000``), applied in order; per-layer overrides (the canvas,
  *Make dense*, *Clear override*) win over them.
- **Totals** update after every change, from the engine's whole-network report (the same numbers as
  ``tnstudio network cost``).
- **Train**: launches the whole network as a run in its own process (:func:`engine.train.networks.launch_network`,
  the run store in ``<home>/runs``), optionally with its dense baseline, and follows its status.
- **Export**: a torch-only module file of the whole network (with the last completed run's weights, if any), offered
  as downloads.

Everything runs in widget callbacks or the session's periodic callback (the session's thread); only Panel widgets and
panes are changed, never raw Bokeh models. Integration with the studio's Design tab goes through
:class:`studio.state.StudioState`: ``replace(design, label)`` opens a design on the canvas and a watcher on
``valid_design`` reports committed edits (see :meth:`NetworkView.canvas_changed`).
"""
from __future__ import annotations

import html
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from engine.design.model import Design, parse_json
from engine.design.conv import make_conv_template
from engine.design.templates import make_template
from engine.format import int_list, nbytes, ratio, si
from engine.network.catalogue import architectures
from engine.network.format import NetworkError, NetworkSpec, load_network, new_network, save_network
from engine.network.report import NetworkReport, network_report

from .drafts import draft_paths, read_draft, with_unsaved_note, write_draft
from .session import session_doc
from .style import css, styled
from .upload import Upload, too_large
from .widgets import FloatField, IntField, Tick, button, form_values, hint, restore_form, section

log = logging.getLogger(__name__)
POLL_MS = 1000
DEFAULT_DATASET = "mnist1d"
TABLE_COLUMNS = ["layer", "kind", "shape", "assignment", "dense params", "params", "compression", "FLOPs", "memory",
                 "params % dense", "params % TN", "FLOPs % dense", "FLOPs % TN"]
BAR_COLUMNS = ["params share", "FLOPs share"]  # shown: dense (grey) and as assigned (blue) in one cell
MAX_UPLOAD_BYTES = 8 * 2 ** 20  # network files opened in the browser (designs inline); checked there first
FORM_FIELDS = ("arch", "import_path", "dataset", "input_shape", "classes", "options",  # kept with the network
               "train_epochs", "train_batch", "train_lr", "train_device", "train_baseline")


def bars_html(dense: float, tn: float) -> str:
    """Two bars: a layer's share (percent) of the dense model, dense (grey) and as assigned (blue)."""
    def bar(cls: str, v: float) -> str:
        width = 0 if v <= 0 else max(v, 0.8)
        return f"<div class='tn-bar {cls}' style='width:{min(width, 100):.2f}%'></div>"

    return (f"<div class='tn-bars' title='dense {dense:.2f}% / as assigned {tn:.2f}% of the dense model'>"
            f"{bar('d', dense)}{bar('t', tn)}</div>")


def device_choices() -> list[str]:
    """auto, cpu, and cuda when torch sees a GPU."""
    import torch

    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def parse_shape(text: str) -> list[int] | None:
    """``"3,32,32"`` or ``"3x32x32"`` -> ``[3, 32, 32]``; empty -> None."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        dims = int_list(text, spaces=True)  # "3,,32" and "3x" too: no part is dropped
    except ValueError:
        raise ValueError(f"input shape must be integers such as 3,32,32, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"input shape must be integers >= 1 such as 3,32,32, got {text!r}")
    return dims


def parse_options(arch: str, text: str) -> dict[str, Any]:
    """``"hidden=256,256; activation=gelu"`` -> the architecture's checked option values."""
    from engine.network.catalogue import architecture

    out: dict[str, Any] = {}
    for part in re.split(r"[;\n]+", text or ""):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"option {part.strip()!r}: write KEY=VALUE, e.g. hidden=256,256")
        if key.strip() in out:
            raise ValueError(f"option {key.strip()!r} is given twice: give each option once")
        if ":" in arch:
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value.strip()
        else:
            out[key.strip()] = architecture(arch).option(key.strip()).parse_text(value)
    return out


class NetworkView(Viewer):
    """The Network tab (see the module docstring). The methods are the tab's actions, callable from tests."""

    spec = param.ClassSelector(class_=NetworkSpec, doc="The network being designed (a network file's contents).")
    report = param.ClassSelector(class_=NetworkReport, allow_None=True,
                                 doc="The engine's whole-network report of spec at batch (None while invalid).")
    batch = param.Integer(default=1, bounds=(1, None), doc="Examples per forward pass in the report.")
    error = param.String(default="", doc="Why the last change was refused ('' when it was applied).")
    message = param.String(default="", doc="The tab's last status line.")
    selected = param.String(default="", doc="The layer last clicked in the table ('' none).")
    editing = param.String(default="", doc="The layer whose design is on the canvas: committed canvas edits flow "
                                           "back into it ('' none).")
    run_ids = param.List(default=[], doc="The runs launched from this tab (network run, then its dense baseline).")
    run_status = param.String(default="", doc="The status line of those runs.")
    export_path = param.String(default="", doc="The last exported module file ('' none).")
    opened_design = param.Integer(default=0, doc="Bumps when a layer's design is opened on the canvas (the app then "
                                                 "shows the Design tab).")
    open_tab = param.String(default="", doc="A tab the user asked for with this network in it ('Train', 'Export'): "
                                            "the app shows it, set to the current network.")
    cards = param.Boolean(default=True, doc="Show the train and export cards on this tab; the app sets it False when "
                                            "its Train and Export tabs show them (train_panel(), export_panel()).")

    def __init__(self, state: Any, home: str | Path | None = None, spec: NetworkSpec | None = None, **params: Any):
        super().__init__(**params)
        self.state = state
        self.home = Path(home or getattr(state, "home", None) or ".").expanduser()
        self._opening = False
        self._poll = None
        w = {"sizing_mode": "stretch_width"}
        text = [css("network", "notes")]
        names = [a.name for a in architectures()]
        self.arch = styled(pn.widgets.Select(label="Architecture", options=names + ["import path"], value="mlp", **w,
                                             css_classes=["tn-net-arch"]))
        self.import_path = styled(pn.widgets.TextInput(label="package.module:factory",
                                                       placeholder="mypkg.models:make_net", visible=False, **w))
        from engine.train.data import dataset_names

        self.dataset = styled(pn.widgets.Select(label="Data set (input shape and classes)",
                                                options=["(none)"] + list(dataset_names()), value=DEFAULT_DATASET, **w,
                                                css_classes=["tn-net-dataset"]))
        self.input_shape = styled(pn.widgets.TextInput(label="Input shape per example", placeholder="default", **w))
        self.classes = styled(pn.widgets.IntInput(label="Classes", value=None, start=1, placeholder="default", **w))
        self.options = styled(pn.widgets.TextInput(label="Options (key=value; ...)", placeholder="hidden=256,256",
                                                   **w))
        self.new_button = button("New network", self.new_from_form, color="primary", **w,
                                 css_classes=["tn-net-new"], key=lambda: (self.arch.value, self.dataset.value,
                                                                          self.input_shape.value, self.classes.value,
                                                                          self.options.value))
        self.arch_help = pn.pane.HTML("", stylesheets=text, **w)
        self.rule = styled(pn.widgets.TextInput(label="Rule", value="linear:ttn:4:gelu", css_classes=["tn-net-rule"],
                                                **w))
        self.apply_button = button("Apply rule", lambda: self.apply_rule(self.rule.value), color="primary",
                                   css_classes=["tn-net-apply"], **w, key=lambda: (self.rule.value, self.spec.rules))
        self.clear_rules_button = button("Clear rules", self.clear_rules, **w, css_classes=["tn-net-clear-rules"])
        self.rules_pane = pn.pane.HTML("", stylesheets=text, **w)
        self.layer_pane = pn.pane.HTML("", stylesheets=text, css_classes=["tn-net-layer-pane"], **w)
        self.dense_button = button("Make dense", lambda: self.set_dense(self.selected), disabled=True, **w)
        self.clear_button = button("Clear override", lambda: self.clear_override(self.selected), disabled=True, **w)
        self.unlink_button = button("Stop canvas link", self.unlink, disabled=True, **w)
        self.status_pane = pn.pane.HTML("", stylesheets=text, css_classes=["tn-net-status"], **w)
        self.totals_pane = pn.pane.HTML("", stylesheets=text, css_classes=["tn-net-totals-pane"], **w)
        self.table = pn.widgets.Tabulator(
            pd.DataFrame(columns=TABLE_COLUMNS + BAR_COLUMNS), show_index=False, disabled=True, selectable=1,
            layout="fit_data_fill", sortable=False, sizing_mode="stretch_both", min_height=240,
            css_classes=["tn-net-table"], formatters={c: {"type": "html"} for c in BAR_COLUMNS},
            stylesheets=[css("network-bars", "table")], hidden_columns=[c for c in TABLE_COLUMNS if "%" in c],
            titles={"params share": "params share", "FLOPs share": "FLOPs share", "dense params": "dense p.",
                    "compression": "compr.", "memory": "mem."},
            text_align={"dense params": "right", "params": "right", "compression": "right", "FLOPs": "right",
                        "memory": "right"},
            widths={c: 125 for c in BAR_COLUMNS})
        self.batch_input = styled(pn.widgets.IntInput(label="Batch (report)", value=1, start=1, width=130))
        self.legend = pn.pane.HTML("<div class='tn-net-msg'>click a layer to open its design on the canvas · bars: "
                                   "the layer's share of the dense model, <span style='color:#94a3b8'>grey: dense"
                                   "</span>, <span style='color:#0ea5e9'>blue: as assigned</span></div>",
                                   stylesheets=text, sizing_mode="stretch_width", align="end")
        self.upload = Upload(accept=".json,application/json", max_bytes=MAX_UPLOAD_BYTES, what="network files", **w,
                             css_classes=["tn-net-upload"])
        self.save_name = styled(pn.widgets.TextInput(label="Save as", placeholder="network name", **w))
        self.save_button = button("Save to library", lambda: self.save(self.save_name.value), **w,
                                  key=lambda: (self.save_name.value, self.spec))
        self.download = styled(pn.widgets.FileDownload(callback=self._download_json, filename="network.json",
                                                       label="Download network JSON", embed=False, **w))
        # training and export (cards the studio's Train and Export tabs show: train_panel(), export_panel())
        self.train_summary = pn.pane.HTML("", stylesheets=text, css_classes=["tn-net-train-summary"], **w)
        self.train_epochs = IntField(label="Epochs", value=5, css_class="tn-net-epochs", width=130)
        self.train_batch = IntField(label="Batch size", value=64, css_class="tn-net-batch", width=130)
        self.train_lr = FloatField(label="Learning rate", value=3e-3, css_class="tn-net-lr", width=130)
        self.train_device = styled(pn.widgets.Select(label="Device", options=device_choices(), value="auto",
                                                     css_classes=["tn-net-device"], width=130))
        self.train_baseline = Tick(label="also train the dense baseline", css_class="tn-net-baseline")
        self.launch_button = button("▶  Train network", self.launch, once=True, color="primary", height=40, **w,
                                    css_classes=["tn-net-launch"], key=self._launch_key)
        self.run_pane = pn.pane.HTML("", stylesheets=text, **w, css_classes=["tn-net-run-status"])
        self.export_note = pn.pane.HTML("", stylesheets=text, **w, css_classes=["tn-net-export-note"])
        self.export_weights = Tick(label="with the last completed run's weights", value=True,
                                   css_class="tn-net-export-weights")
        self.export_button = button("Export torch module", self.export, css_classes=["tn-net-export"], **w,
                                    color="primary", key=lambda: (self.spec, self.export_weights.value))
        self.export_download = styled(pn.widgets.FileDownload(callback=self._download_export, filename="network.py",
                                                              label="Download module (.py)", disabled=True,
                                                              embed=False, **w, css_classes=["tn-net-download-py"]),
                                      "primary-download")
        self.weights_download = styled(pn.widgets.FileDownload(callback=self._download_weights, filename="network.pt",
                                                               label="Download weights (.pt)", disabled=True,
                                                               embed=False, **w, css_classes=["tn-net-download-pt"]),
                                       "weights-download")
        self.goto_train = button("Train it on the Train tab →", lambda: self.ask_for("Train"), **w,
                                 css_classes=["tn-net-goto-train"], dedupe=False)
        self.goto_export = button("Export it on the Export tab →", lambda: self.ask_for("Export"), **w,
                                  css_classes=["tn-net-goto-export"], dedupe=False)
        # wiring
        self.arch.param.watch(lambda e: self._arch_changed(), "value")
        self.table.on_click(self._table_clicked)
        self.batch_input.param.watch(lambda e: setattr(self, "batch", int(e.new or 1)), "value")
        self.upload.param.watch(lambda e: self.load_json(e.new, self.upload.filename or "upload"), "value")
        self.upload.param.watch(lambda e: self._refuse(self.upload.refused.get("message", "")), "refusals")
        self.dataset.param.watch(lambda e: self._render_train_summary(), "value")
        self.param.watch(lambda e: self._recompute(), ["spec", "batch"])
        self.param.watch(lambda e: self._render_status(), ["error", "message"])
        self.param.watch(lambda e: self._render_layer(), ["selected", "editing", "report"])
        state.param.watch(self.canvas_changed, ["valid_design"])
        self._arch_changed()
        restored, note = self._read_draft() if spec is None else (None, None)
        if restored is not None:
            spec, form = restored
        if spec is None:
            spec = new_network("mlp", [1, 40], 10, name="mlp on mnist1d")
        self._own: Path | None = None  # the networks/ file this network was opened from or last saved to
        self._draft_held = False  # True while an opened network is put into the form: _apply then saves it once
        self.spec = spec
        if restored is not None:
            self._set_form(form)  # the form as it was: the data set is also what the Train card trains on
            self.message = f"restored {spec.name} (autosaved)"
        if note:
            self.error = note
        for name in ("dataset", "train_epochs", "train_batch", "train_lr", "train_device", "train_baseline"):
            getattr(self, name).param.watch(lambda e: self._save_draft(), "value")  # kept with the network

    # ------------------------------------------------------------------ the autosaved network
    def _autosave(self) -> bool:
        return bool(getattr(self.state, "autosave", False))

    def _save_draft(self) -> None:
        """Keep the network (designs inline) in this tab's draft and in ``<home>/network_draft.json``, as the
        Design tab keeps its design: a reload or a crash loses no rule and no layer's design."""
        if not self._autosave() or self._draft_held:
            return
        text = json.dumps({"saved": time.time(), "network": self.spec.to_dict(inline=True),
                           "form": self._form_values()})
        try:
            write_draft(text, *self._draft_paths())
        except OSError as e:  # a read-only home or a full disk: keep working, say so
            log.warning("could not autosave the network to %s: %s", self._draft_paths()[0], e)
            self.message = with_unsaved_note(self.message, e, "download or save the network to keep it")

    def _draft_paths(self) -> tuple[Path, Path | None]:
        return draft_paths(self.home, "network", getattr(self.state, "draft_id", ""))

    def _form_fields(self) -> dict[str, Any]:
        """The New-network form, the data set (which the Train card also trains on) and the Train card's fields, as
        the draft keeps them (in the order they are restored)."""
        return {name: getattr(self, name) for name in FORM_FIELDS}

    def _form_values(self) -> dict[str, Any]:
        return form_values(self._form_fields())

    def _set_form(self, values: Any) -> None:
        """The form as a draft kept it; a value the widget cannot take (an architecture or data set this studio
        does not offer, text that is too long) is left as it is: the network itself is what must come back."""
        restore_form(self._form_fields(), values)

    def _read_draft(self) -> tuple[tuple[NetworkSpec, Any] | None, str | None]:
        """The autosaved network with its form (this tab's own, else the newest of any tab) and a note: one that
        cannot be read or no longer resolves is set aside as ``<name>.damaged.json`` and the note says so; the tab
        then starts with the default network."""
        if not self._autosave():
            return None, None

        def parse(raw: bytes) -> tuple[NetworkSpec, Any]:
            data = parse_json(raw)  # bounded size and nesting, no NaN, UTF-8
            if not isinstance(data, dict) or "network" not in data:
                raise NetworkError("not an autosaved network (no 'network' in it)")
            spec = NetworkSpec.from_dict(data["network"])
            self._check(spec)  # resolves against its architecture (an untrusted import path is refused here)
            return spec, data.get("form")

        return read_draft(parse, *self._draft_paths(), "network")

    # ------------------------------------------------------------------ the network
    def _arch_changed(self) -> None:
        arch = self.arch.value
        self.import_path.visible = arch == "import path"
        if arch == "import path":
            self.arch_help.object = ("<div class='tn-net-msg'>factory(**options) must return the nn.Module; give "
                                     "the input shape.</div>")
            return
        a = next(a for a in architectures() if a.name == arch)
        opts = "; ".join(f"{o.name}={json.dumps(o.default)}" for o in a.options) or "none"
        self.arch_help.object = (f"<div class='tn-net-msg'>{html.escape(a.description)}<br>default input "
                                 f"{list(a.input_shape)}, {a.num_classes} classes; options: {html.escape(opts)}</div>")

    def new_from_form(self) -> bool:
        """**New network** with the form's architecture, data set / input shape, classes and options."""
        arch = self.import_path.value.strip() if self.arch.value == "import path" else self.arch.value
        try:
            shape = parse_shape(self.input_shape.value)
            options = parse_options(arch, self.options.value)
        except ValueError as e:
            return self._refuse(str(e))
        dataset = None if self.dataset.value == "(none)" else self.dataset.value
        return self.new_network(arch, shape, self.classes.value, options, dataset)

    def new_network(self, arch: str, input_shape: list[int] | None = None, num_classes: int | None = None,
                    options: dict[str, Any] | None = None, dataset: str | None = None) -> bool:
        """A new network of ``arch``, every layer dense (``dataset`` gives the input shape and classes)."""
        name = arch
        if dataset:
            from engine.train.data import dataset_spec

            ds = dataset_spec(dataset)
            input_shape = input_shape or list(ds.input_shape)
            num_classes = num_classes or ds.num_outputs
            name = f"{arch} on {dataset}"
        try:
            spec = new_network(arch, input_shape, num_classes, options or {}, name=name)
            self._check(spec)
        except (NetworkError, ValueError) as e:
            return self._refuse(str(e))
        self.editing = self.selected = ""
        self._own = None
        self._apply(spec, f"new network: {spec.architecture.label}, every layer dense")
        return True

    def load(self, spec: NetworkSpec, label: str = "opened") -> bool:
        try:
            self._check(spec)
        except (NetworkError, ValueError) as e:
            return self._refuse(str(e))
        self.editing = self.selected = ""
        self._own = None  # an opened file sets it again (load_file)
        self._draft_held = True  # the form's watchers would save the old network with the new network's data set
        try:
            data = self._show_in_form(spec)
        finally:
            self._draft_held = False
        self._apply(spec, f"{label} {spec.name}{data}")
        return True

    def _show_in_form(self, spec: NetworkSpec) -> str:
        """The form shows what an opened network is made of (architecture, options, input shape, classes), so New
        network remakes it, and a data set that fits it (the one chosen if it does, else the first that does,
        else none), which the Train card trains on; returns what the status line says about the data set."""
        from engine.train.data import dataset_spec

        ref = spec.architecture
        if ref.import_path:
            self.arch.value, self.import_path.value = "import path", ref.import_path
        elif ref.name in self.arch.options:
            self.arch.value = ref.name
        self.options.value = "; ".join(f"{k}={json.dumps(v)}" for k, v in (ref.options or {}).items())
        self.input_shape.value = ",".join(map(str, spec.input_shape)) if spec.input_shape else ""
        self.classes.value = spec.num_classes
        try:
            shape, classes = spec.resolved_input_shape, spec.resolved_num_classes
        except NetworkError:  # checked already by the caller; nothing to match a data set against
            return ""
        fits = [n for n in self.dataset.options if n != "(none)" and tuple(dataset_spec(n).input_shape) == shape
                and classes in (None, dataset_spec(n).num_outputs)]
        if self.dataset.value in fits:
            return ""
        self.dataset.value = fits[0] if fits else "(none)"
        size = "x".join(map(str, shape)) + (f", {classes} classes" if classes else "")
        return (f" (data set {fits[0]}: it fits its input {size})" if fits else
                f" (no data set here fits its input {size}: train it from the command line on your data)")

    def load_json(self, data: str | bytes | None, source: str = "file") -> bool:
        """Open a network file's text (from the upload, at most ``MAX_UPLOAD_BYTES``); design paths in it cannot be
        read from the browser."""
        if not data:
            return False
        if len(data) > MAX_UPLOAD_BYTES:
            return self._refuse(too_large(source, len(data), MAX_UPLOAD_BYTES, "network files"))
        try:
            text = data.decode() if isinstance(data, bytes) else data
            return self.load(NetworkSpec.from_json(text), f"opened {source}:")
        except (NetworkError, UnicodeDecodeError) as e:
            return self._refuse(f"{source}: {e}")

    def load_file(self, path: str | Path) -> bool:
        try:
            opened = self.load(load_network(path), f"opened {Path(path).name}:")
        except (NetworkError, FileNotFoundError) as e:
            return self._refuse(str(e))
        self._own = Path(path) if opened else self._own
        return opened

    def save(self, name: str = "") -> Path | None:
        """Save the network (designs inline) as ``<home>/networks/<name>.json``. A file there that holds another
        network is kept: this one is saved as ``<name>-2.json`` (``-3``, ...) instead, unless that file is the one
        the network was opened from or last saved to."""
        from engine.design.library import safe_name

        try:
            stem = safe_name(name or self.spec.name)  # the file stem rule of the design library
        except ValueError:
            self._refuse("give the network a name made of letters or digits")
            return None
        path = wanted = self.home / "networks" / f"{stem}.json"
        n = 1
        while path != self._own and self._holds_another(path):
            n += 1
            path = wanted.with_name(f"{stem}-{n}.json")
        try:
            save_network(self.spec, path, inline=True)
        except OSError as e:
            self._refuse(f"cannot write {path}: {e}")
            return None
        self._own = path
        self.message = f"saved {path}" + (f" ({wanted.name} holds another network, kept)" if path != wanted else "")
        return path

    def _holds_another(self, path: Path) -> bool:
        """Whether ``path`` is a file holding something other than this network (a damaged file counts)."""
        try:
            if not path.exists():
                return False
            return load_network(path).fingerprint() != self.spec.fingerprint()
        except (NetworkError, OSError, ValueError):
            return True

    def _download_json(self) -> io.StringIO:
        return io.StringIO(self.spec.to_json(inline=True) + "\n")

    # ------------------------------------------------------------------ rules and layers
    def apply_rule(self, text: str) -> bool:
        """Append a bulk rule (refused with the engine's reason when it cannot be parsed or applied)."""
        from engine.network.rules import RuleError

        from engine.network.analysis import analyse
        from engine.network.rules import unmatched_warning

        try:
            spec = self.spec.with_rules([text])
            warning = self._check(spec)
            idle = unmatched_warning(spec.rules[-1:], analyse(spec).layers)
        except (RuleError, NetworkError, ValueError) as e:
            return self._refuse(str(e))
        self._apply(spec, f"rule {text.strip()} applied{f' · warning: {idle}' if idle else ''}{warning}")
        return True

    def remove_rule(self, index: int) -> bool:
        from dataclasses import replace

        rules = list(self.spec.rules)
        if not 0 <= index < len(rules):
            return self._refuse(f"no rule {index + 1}")
        removed = rules.pop(index)
        self._apply(replace(self.spec, rules=tuple(rules)), f"removed rule {removed}")
        return True

    def clear_rules(self) -> bool:
        from dataclasses import replace

        self._apply(replace(self.spec, rules=()), "rules cleared")
        return True

    def set_design(self, layer: str, design: Design | None) -> bool:
        """Give ``layer`` ``design`` (None: dense) as a per-layer override."""
        try:
            spec = self.spec.with_layer(layer, design)
            warning = self._check(spec)
        except (NetworkError, ValueError) as e:
            return self._refuse(str(e))
        what = "dense" if design is None else f"{design.name} ({design.params:,} core params)"
        self._apply(spec, f"{layer} is now {what}{warning}")
        return True

    def set_dense(self, layer: str) -> bool:
        if self.editing == layer:
            self.editing = ""
        return self.set_design(layer, None)

    def clear_override(self, layer: str) -> bool:
        """Remove ``layer``'s override: the rules decide again."""
        if layer not in self.spec.layers:
            return self._refuse(f"{layer} has no override: the rules decide it")
        if self.editing == layer:
            self.editing = ""
        self._apply(self.spec.without_layer(layer), f"{layer}: override removed, the rules decide")
        return True

    def _table_clicked(self, event: Any) -> None:
        frame = self.table.value
        if event.row is None or event.row >= len(frame):
            return
        self.select(str(frame.iloc[event.row]["layer"]))

    def layer_row(self, name: str):
        return self.report.row(name) if self.report is not None else None

    def select(self, name: str) -> bool:
        """Click on a layer: select it and, when it can take a design, open its design on the canvas (a default
        TTN, chi 4, gelu for a dense layer: it becomes the layer's design at the first edit)."""
        try:
            row = self.layer_row(name)
        except KeyError:
            return self._refuse(f"no layer {name!r} in the table")
        self.selected = name
        if row is None or not row.assignable:
            self.editing = ""
            if row is not None and row.kind == "conv1d":
                self.message = f"{name}: Conv1d layers are counted but take no TN designs (dense only)"
            elif row is not None and row.kind == "conv2d":  # why, in the engine's words (grouped, string padding,
                # a padding mode other than zeros); it had always said "grouped"
                from engine.network.analysis import analyse

                info = analyse(self.spec).layer(name)
                why = info.conv_refusal() if info is not None else None
                self.message = f"{why or name + ': this conv layer takes no conv2d design'} (dense only)"
            return True
        return self.open_layer(name)

    def open_layer(self, name: str) -> bool:
        """Open ``name``'s design on the canvas and link the canvas to it (edits flow back)."""
        from engine.network.analysis import analyse
        from engine.network.format import resolve

        an = analyse(self.spec)
        info = an.layer(name)
        if info is None:
            return self._refuse(f"{name} cannot take a design")
        design = resolve(self.spec, an.layers)[name].design
        fresh = design is None
        if fresh and info.kind == "conv2d":  # a conv layer: a suggested CP-conv of its own target
            try:
                t = info.conv_target()
            except ValueError as e:  # a grouped conv, string padding, a padding mode other than zeros
                return self._refuse(str(e))
            design = make_conv_template("cp", t.in_channels, t.out_channels, t.kernel_size, 8, None, [t.in_channels],
                                        [t.out_channels], stride=t.stride, padding=t.padding, dilation=t.dilation,
                                        name=f"{name} cp rank 8", image=info.in_shape[-2:] or None)
        elif fresh:
            design = make_template("ttn", info.in_features, info.out_features, 4, "gelu", name=f"{name} ttn chi=4 gelu")
        self._opening = True
        try:
            self.state.replace(design, "network layer")
        finally:
            self._opening = False
        self.editing = name
        self.opened_design += 1
        suggested = "CP-conv" if info.kind == "conv2d" else "TTN"
        self.message = (f"{name} ({info.shape}) is on the canvas" + (f": a suggested {suggested}, applied to the layer "
                        "at your first edit" if fresh else "; edits flow back to the network"))
        return True

    def canvas_changed(self, event: Any = None) -> None:
        """A committed (valid) design on the canvas while a layer is linked: it becomes that layer's design when
        it has the layer's shape; otherwise the link stays and the tab says why nothing changed."""
        if self._opening or not self.editing:
            return
        design = getattr(self.state, "valid_design", None)
        if design is None:
            return
        row = self.layer_row(self.editing)
        if row is None:
            return
        current = self.spec.layers.get(self.editing)
        if current is not None and current.design is not None and current.design.fingerprint() == design.fingerprint():
            return
        from engine.network.analysis import analyse

        info = analyse(self.spec).layer(self.editing)
        assert info is not None  # the editing layer has a row, so the analysis holds it
        why = info.fits(design)  # shape (linear layers) or conv target (conv layers)
        if why is not None:
            self._refuse(f"the canvas design does not fit: {why}: not applied (the link stays)")
            return
        self.set_design(self.editing, design.copy())

    def unlink(self) -> None:
        self.editing = ""
        self.message = "canvas no longer linked to a layer"

    # ------------------------------------------------------------------ recomputing and rendering
    def _check(self, spec: NetworkSpec) -> str:
        """Resolve ``spec`` against its architecture (raises NetworkError / ValueError with the reasons); returns
        a warning for layers the assignment makes larger than dense ('' when none)."""
        from engine.network.analysis import analyse
        from engine.network.format import resolve
        from engine.network.rules import growth_warning

        grown = growth_warning(resolve(spec, analyse(spec).layers))
        return f" · warning: {grown}" if grown else ""

    def _apply(self, spec: NetworkSpec, message: str) -> None:
        """Every change of the network comes here: shown, and autosaved (a reload or a crash loses none)."""
        self.error = ""
        self.spec = spec
        self.message = message
        self._save_draft()

    def _refuse(self, message: str) -> bool:
        self.error = message
        return False

    def _recompute(self) -> None:
        try:
            self.report = network_report(self.spec, batch=self.batch)
        except (NetworkError, ValueError) as e:
            self.report = None
            self.error = str(e)
        self.rules_pane.object = ("<div class='tn-net-rules'>" + "<br>".join(
            f"{n}. {html.escape(r)}" for n, r in enumerate(self.spec.rules, 1)) + "</div>") if self.spec.rules else (
            "<div class='tn-net-msg'>no rules: every layer dense unless overridden</div>")
        frame = self.table_frame()
        frame["params share"] = [bars_html(a, b) for a, b in zip(frame["params % dense"], frame["params % TN"])]
        frame["FLOPs share"] = [bars_html(a, b) for a, b in zip(frame["FLOPs % dense"], frame["FLOPs % TN"])]
        self.table.value = frame
        self.totals_pane.object = self.totals_html()
        self.save_name.value = self.save_name.value or self.spec.name

    def table_frame(self) -> pd.DataFrame:
        """The layer table: assignable layers and attention cores, the other parameters in one row; shares in
        percent of the dense model's parameters and FLOPs."""
        rep = self.report
        if rep is None:
            return pd.DataFrame(columns=TABLE_COLUMNS)
        tot_p = max(rep.totals.dense_params, 1)
        tot_f = max(rep.totals.dense_forward_flops, 1)
        rows = []
        others = [r for r in rep.rows if r.kind == "other"]
        for r in rep.rows:
            if r.kind == "other":
                continue
            rows.append({"layer": r.name, "kind": r.kind, "shape": r.shape, "assignment": r.assignment,
                         "dense params": f"{r.dense_params:,}", "params": f"{r.params:,}",
                         "compression": ratio(r.compression) if r.params else "-", "FLOPs": si(r.flops),
                         "memory": nbytes(r.peak_bytes),
                         "params % dense": round(100 * r.dense_params / tot_p, 2),
                         "params % TN": round(100 * r.params / tot_p, 2),
                         "FLOPs % dense": round(100 * r.dense_flops / tot_f, 2),
                         "FLOPs % TN": round(100 * r.flops / tot_f, 2)})
        if others:
            n, f = sum(r.params for r in others), sum(r.flops for r in others)
            rows.append({"layer": f"({len(others)} other modules)", "kind": "other", "shape": "-",
                         "assignment": "dense", "dense params": f"{n:,}", "params": f"{n:,}", "compression": "1x",
                         "FLOPs": si(f), "memory": nbytes(sum(r.param_bytes for r in others)),
                         "params % dense": round(100 * n / tot_p, 2), "params % TN": round(100 * n / tot_p, 2),
                         "FLOPs % dense": round(100 * f / tot_f, 2), "FLOPs % TN": round(100 * f / tot_f, 2)})
        return pd.DataFrame(rows, columns=TABLE_COLUMNS)

    def totals_html(self) -> str:
        rep = self.report
        if rep is None:
            return "<div class='tn-net-msg'>no report: the network has problems (see above)</div>"
        t = rep.totals

        def tile(k: str, v: str, s: str) -> str:
            return (f"<div class='t'><div class='k'>{html.escape(k)}</div><div class='v'>{html.escape(v)}</div>"
                    f"<div class='s'>{html.escape(s)}</div></div>")

        comp = (f"compressed layers {t.compressed_dense_params:,} → {t.compressed_params:,} "
                f"({ratio(t.compressed_compression)})" if t.compressed_compression else "no TN layers yet")
        return ("<div class='tn-net-totals' data-params='%d' data-dense-params='%d'>" % (t.params, t.dense_params)
                + tile("params", f"{t.params:,}", f"dense {t.dense_params:,}; {ratio(t.compression)} smaller")
                + tile("TN layers", str(t.tn_layers), comp)
                + tile(f"forward FLOPs (batch {rep.batch})", si(t.forward_flops),
                       f"dense {si(t.dense_forward_flops)}; " + (f"{ratio(t.flops_ratio)} fewer" if t.flops_ratio >= 1
                                                                 else f"{ratio(1 / t.flops_ratio)} more"))
                + tile("memory", nbytes(t.inference_bytes),
                       f"inference (dense {nbytes(t.dense_inference_bytes)}); training {nbytes(t.train_bytes)} "
                       f"(dense {nbytes(t.dense_train_bytes)})")
                + "</div>")

    def _render_status(self) -> None:
        parts = []
        if self.error:
            parts.append(f"<div class='tn-net-error'>{html.escape(self.error)}</div>")
        if self.message:
            parts.append(f"<div class='tn-net-msg'>{html.escape(self.message)}</div>")
        self.status_pane.object = "".join(parts)

    def _render_layer(self) -> None:
        name = self.selected
        self.unlink_button.disabled = not self.editing
        if not name or self.report is None:
            self.layer_pane.object = "<div class='tn-net-layer'>click a layer in the table</div>"
            self.dense_button.disabled = self.clear_button.disabled = True
            return
        try:
            r = self.report.row(name)
        except KeyError:
            self.layer_pane.object = ""
            return
        link = " · <b>linked to the canvas</b>" if self.editing == name else ""
        self.layer_pane.object = (
            f"<div class='tn-net-layer'><b>{html.escape(r.name)}</b> ({html.escape(r.kind)}, "
            f"{html.escape(r.shape)}){link}<br>assignment: {html.escape(r.assignment)} "
            f"<span style='color:#64748b'>({html.escape(r.source)})</span><br>params {r.params:,} of "
            f"{r.dense_params:,} dense · FLOPs {si(r.flops)} of {si(r.dense_flops)}</div>")
        self.dense_button.disabled = not r.assignable or r.assignment == "dense"
        self.clear_button.disabled = name not in self.spec.layers

    # ------------------------------------------------------------------ training
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def launch(self, dataset: str | None = None, epochs: int | None = None, batch_size: int | None = None,
               lr: float | None = None, device: str | None = None, baseline: bool | None = None) -> list[str]:
        """Train the whole network (and, with ``baseline``, its all-dense twin), each run in its own process."""
        from engine.train.networks import launch_network

        ds = dataset or (None if self.dataset.value == "(none)" else self.dataset.value)
        if not ds:
            self._refuse_launch("pick a data set on the Network tab (Architecture) to train on")
            return []
        fields = {"dataset": ds, "epochs": int(epochs or self.train_epochs.value),
                  "batch_size": int(batch_size or self.train_batch.value), "lr": float(lr or self.train_lr.value),
                  "device": device or self.train_device.value}
        want_baseline = self.train_baseline.value if baseline is None else baseline
        try:
            ids = [launch_network(self.spec, self.runs_dir(), **fields)]
            if want_baseline:
                ids.append(launch_network(self.spec, self.runs_dir(), parent=ids[0], baseline=True, **fields))
        except ValueError as e:  # config, device, data, memory: the user's to fix, in one line
            self._refuse_launch(str(e))
            return []
        except OSError as e:  # the process could not be started: say so, keep the traceback in the log
            log.exception("starting a network training process failed")
            self._refuse_launch(str(e))
            return []
        self.run_ids = ids
        self.message = f"launched run {ids[0]}" + (f" and its dense baseline {ids[1]}" if len(ids) > 1 else "")
        self.refresh_runs()
        if self._poll is None and session_doc() is not None:
            self._poll = pn.state.add_periodic_callback(self.refresh_runs, period=POLL_MS)
        return ids

    def _refuse_launch(self, message: str) -> None:
        """A refused launch: said on this tab's status line and in the train card (which may be on the Train
        tab)."""
        self._refuse(f"not launched: {message}")
        self.run_pane.object = f"<div class='tn-net-error'>Not launched: {html.escape(message)}</div>"

    def _launch_key(self) -> tuple:
        """What Train network acts on (a double click launches once)."""
        return (self.spec, self.dataset.value, self.train_epochs.value, self.train_batch.value, self.train_lr.value,
                self.train_device.value, self.train_baseline.value, tuple(self.run_ids))

    def ask_for(self, tab: str) -> None:
        """Ask the app for ``tab`` ('Train', 'Export') showing this network (sets :attr:`open_tab`)."""
        self.open_tab = ""  # the same request twice still notifies
        self.open_tab = tab

    @param.depends("report", "spec", watch=True)
    def _render_train_summary(self) -> None:
        """What the train card trains: the network, its size and the data set (set on the Network tab)."""
        ds = None if self.dataset.value == "(none)" else self.dataset.value
        rep = self.report
        if rep is None:
            size = "<span class='tn-net-error'>the network has problems: see the Network tab</span>"
        else:
            t = rep.totals
            size = (f"{t.params:,} params ({ratio(t.compression)} smaller than dense), {t.tn_layers} TN "
                    f"layer{'s' if t.tn_layers != 1 else ''}")
        data = (f"data set <b>{html.escape(ds)}</b>" if ds else
                "<span class='tn-net-error'>no data set: pick one on the Network tab</span>")
        self.train_summary.object = (f"<div class='tn-net-summary'>Trains the network <b>"
                                     f"{html.escape(self.spec.name)}</b>: {size}; {data} (the architecture, data set "
                                     f"and rules are set on the Network tab)</div>")

    def refresh_runs(self) -> None:
        """Read the launched runs' status from the run store (the session's periodic callback)."""
        if not self.run_ids:
            return
        from engine.train.store import ACTIVE, RunStore

        store = RunStore(self.runs_dir())
        lines, active = [], False
        for rid in self.run_ids:
            run = store.get_run(rid, with_design=False)
            res = run.get("results") or {}
            label = "dense baseline" if (run.get("config") or {}).get("baseline") else "network"
            if run["status"] == "completed" and res.get("test_accuracy") is not None:
                what = f"completed: test accuracy {100 * res['test_accuracy']:.2f}%"
            elif run["status"] in ACTIVE:
                active = True
                what = f"{run['status']}: step {run.get('step') or 0} of {run.get('total_steps') or '?'}"
            else:
                what = f"{run['status']}" + (f": {run['reason']}" if run.get("reason") else "")
            lines.append(f"<span class='tn-net-run-line' data-status='{html.escape(run['status'])}'>"
                         f"{html.escape(label)} run {html.escape(rid)}: {html.escape(what)}</span>")
        self.run_status = " · ".join(lines)
        self.run_pane.object = f"<div class='tn-net-run'>{'<br>'.join(lines)}</div>"
        if not active and self._poll is not None:
            self._poll.stop()
            self._poll = None

    # ------------------------------------------------------------------ export
    def _last_weights(self) -> tuple[dict[str, Any] | None, NetworkSpec, str]:
        """The last completed network run's weights and the network it trained (else None and this network)."""
        from engine.train.store import RunStore

        for rid in self.run_ids:
            run = RunStore(self.runs_dir()).get_run(rid, with_design=False)
            cfg = run.get("config") or {}
            if run["status"] == "completed" and not cfg.get("baseline") and run.get("checkpoint"):
                import torch

                state = torch.load(run["checkpoint"], map_location="cpu", weights_only=True)
                return state["model"], NetworkSpec.from_dict(cfg["network"]), f"run {rid}"
        return None, self.spec, ""

    def export(self) -> Path | None:
        """Write the torch-only module (and the weights of the last completed run) under ``<home>/exports``."""
        from engine.network.export import ExportError, export_network

        state, spec, source = self._last_weights() if self.export_weights.value else (None, self.spec, "")
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", spec.name).strip("_") or "network"
        try:
            written = export_network(spec, self.home / "exports" / f"{stem}.py", state, source=source)
        except (ExportError, ValueError, OSError) as e:
            self._refuse(f"export failed: {e}")
            self.export_note.object = f"<div class='tn-net-error'>Export failed: {html.escape(str(e))}</div>"
            return None
        self.export_note.object = (f"<div class='tn-net-run'>Wrote {html.escape(', '.join(p.name for p in written))}"
                                   f" to {html.escape(str(written[0].parent))}"
                                   + (f" (weights of {html.escape(source)})" if source else "") + "</div>")
        self.export_path = str(written[0])
        self.export_download.filename = written[0].name
        self.export_download.disabled = False
        if len(written) > 1:
            self.weights_download.filename = written[1].name
        self.weights_download.disabled = len(written) < 2
        self.message = f"exported {', '.join(p.name for p in written)} to {written[0].parent}" + (
            f" (weights of {source})" if source else "")
        return written[0]

    def _download_export(self) -> io.BytesIO:
        return io.BytesIO(Path(self.export_path).read_bytes()) if self.export_path else io.BytesIO(b"")

    def _download_weights(self) -> io.BytesIO:
        p = Path(self.export_path).with_suffix(".pt") if self.export_path else None
        return io.BytesIO(p.read_bytes()) if p is not None and p.is_file() else io.BytesIO(b"")

    def close(self) -> None:
        """The session ended: stop polling the run store."""
        if self._poll is not None:
            self._poll.stop()
            self._poll = None

    # ------------------------------------------------------------------ layout
    def train_panel(self) -> pn.Column:
        """The card that trains the whole network (the studio's Train tab shows it when the current network is
        chosen there)."""
        return section("Train the whole network", self.train_summary,
                       pn.Row(self.train_epochs, self.train_batch, margin=0),
                       pn.Row(self.train_lr, self.train_device, margin=0), self.train_baseline, self.launch_button,
                       self.run_pane, css_classes=["tn-net-train-card"])

    def export_panel(self) -> pn.Column:
        """The card that exports the whole network (the studio's Export tab shows it when the current network is
        chosen there)."""
        return section("Export the whole network",
                       hint("One torch-only module file of the whole network, every TN layer inlined; written to "
                            "<code>exports/</code> in the studio home.", margin=(4, 10)),
                       self.export_weights, self.export_button, self.export_note, self.export_download,
                       self.weights_download, css_classes=["tn-net-export-card"])

    def __panel__(self) -> pn.viewable.Viewable:
        left = pn.Column(
            section("Architecture", self.arch, self.import_path, self.arch_help, self.dataset, self.input_shape,
                    self.classes, self.options, self.new_button),
            section("Bulk rules", self.rule, pn.Row(self.apply_button, self.clear_rules_button, margin=0),
                    self.rules_pane),
            section("Layer", self.layer_pane, pn.Row(self.dense_button, self.clear_button, margin=0),
                    self.unlink_button),
            section("Network file", hint(f"Open a network JSON (at most {MAX_UPLOAD_BYTES // 2 ** 20} MiB):",
                                         margin=(4, 10, 0, 10)),
                    self.upload, self.save_name, self.save_button, self.download),
            width=320, margin=(10, 8, 10, 10), scroll=True, sizing_mode="stretch_height", min_height=200)
        top = pn.Row(self.batch_input, self.legend, margin=0, sizing_mode="stretch_width")
        if not self.cards:  # the Train and Export tabs show the cards: say where
            top = pn.Row(self.batch_input, self.legend, pn.Column(self.goto_train, self.goto_export, width=250,
                                                                  margin=0), margin=0, sizing_mode="stretch_width")
        centre = pn.Column(self.status_pane, self.totals_pane, top, self.table, sizing_mode="stretch_both",
                           margin=(10, 10 if not self.cards else 4, 10, 4), min_height=200)
        parts = [left, centre]
        if self.cards:
            parts.append(pn.Column(self.train_panel(), self.export_panel(), width=300, margin=(10, 10, 10, 8),
                                   scroll=True, sizing_mode="stretch_height", min_height=200))
        return pn.Row(*parts, sizing_mode="stretch_both", min_height=520, css_classes=["tn-network-tab"])
