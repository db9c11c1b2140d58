"""End-to-end: a long randomised sequence of edits in the browser, and after every step the page tells the truth.

The steps are what a user does with the mouse and keyboard: generate every template (sizes, bonds, activations,
lateral tensors), retype the leg factorisations, set bond dimensions (including 0, -3, "abc" and values that make
the layer larger than dense, which are confirmed or cancelled), set activations, add tensors and connect them by
dragging, delete with the Delete key, undo and redo, rename, upload files (good and broken), add a leg and fit the
layer size, start a new design. After each step the test downloads the design JSON through the page and checks
that the canvas (every tensor with its kind, shape and parameters, every leg and bond label), the header, the
inspector, the save-as name and the cost cards show what the engine computes from that JSON. It fails on any
browser page error, on the console noise the studio must not make, and on any error or traceback in the server's
log. ``make test`` runs a bounded sequence; the ``long`` one (``make test-all``) runs 200 steps of another seed.
``TNSTUDIO_STEPS``, ``TNSTUDIO_LONG_STEPS`` and ``TNSTUDIO_SEED`` change their lengths and the sequence.
"""
from __future__ import annotations

import json
import math
import os
import random
import time

import pytest

from engine.contract.cost import cost_report
from engine.design.model import Design
from engine.design.templates import TEMPLATES, lateral_levels
from engine.format import si
from studio.app import create_app
from studio.state import StudioState
from studio.widgets import COOLDOWN_S

try:
    from tests.browser import (Console, ServerLog, browser_page, choose_template, drag, require_browser, screenshot,
                               serve_app)
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from browser import (Console, ServerLog, browser_page, choose_template, drag, require_browser, screenshot,
                         serve_app)

pytestmark = pytest.mark.browser

STEPS = int(os.environ.get("TNSTUDIO_STEPS", "24"))
LONG_STEPS = int(os.environ.get("TNSTUDIO_LONG_STEPS", "200"))
SEED = int(os.environ.get("TNSTUDIO_SEED", "7"))
SYNC_S = 25.0  # the shared test machine can be slow: how long the page may take to show a change


def expected(d: Design) -> dict:
    """What the page must show for design ``d``, computed from the JSON alone (not by the studio's code)."""
    dims = {k: ix.dim for k, ix in d.indices.items()}
    users: dict[str, list[str]] = {}
    for t in d.tensors:
        for i in t.indices:
            users.setdefault(i, []).append(t.id)
    nodes = {}
    for t in d.tensors:
        shape = [dims[i] for i in t.indices if i in dims]
        params = 0 if t.kind == "delta" else math.prod(shape)
        nodes[f"T:{t.id}"] = f"{t.id}\n{t.kind}\n{'×'.join(map(str, shape)) or 'no legs'} · {si(params)} p"
    bonds = {}
    for name, ix in d.indices.items():
        who = users.get(name, [])
        if ix.role in ("in", "out") or (ix.role == "bond" and len(who) <= 1 and not ix.hyperedge):
            nodes[f"L:{name}"] = f"{name} · {ix.dim}" + (" ?" if ix.role == "bond" else "")
        elif ix.role == "bond" and len(who) == 2 and not ix.hyperedge:
            bonds[f"B:{name}"] = f"{name} · {ix.dim}"
        else:
            nodes[f"H:{name}"] = f"{name} · {ix.dim}"
    valid = not d.problems()
    return {"nodes": nodes, "bonds": bonds, "name": d.name, "valid": valid,
            "params": cost_report(d).params if valid else None,
            "shape": f"W {d.in_features:,} × {d.out_features:,} · {len(d.tensors)} tensors"}


class Studio:
    """The page, and the server-side app only to know when the page has caught up with it."""

    def __init__(self, page, apps, tmp_path):
        self.page, self.apps, self.tmp = page, apps, tmp_path
        self.last_valid_params: int | None = None
        self.uploads = 0
        self.kinds: set[str] = set()
        self.last_add = 0.0  # when the design last showed the tensor a "+ Tensor" click added

    @property
    def state(self) -> StudioState:
        return self.apps[-1].state

    # -------------------------------------------------------------- reading the page
    def settle(self) -> None:
        """Wait until the header shows the server's current version and no edit waits for confirmation."""
        deadline = time.monotonic() + SYNC_S
        while time.monotonic() < deadline:
            v = self.page.locator(".tn-header").first.get_attribute("data-version")
            if v == str(self.state.version):
                return
            self.page.wait_for_timeout(100)
        raise AssertionError(f"the header never showed version {self.state.version}")

    def download(self) -> Design:
        with self.page.expect_download(timeout=30000) as info:
            self.page.locator(".tn-download button").click()
        path = self.tmp / f"dl{time.monotonic_ns()}.json"
        info.value.save_as(path)
        return Design.from_json(path.read_text(), validate=False)

    def shown(self) -> dict:
        p = self.page
        nodes = dict(p.locator(".tn-canvas .react-flow__node").evaluate_all(
            "els => els.map(e => [e.getAttribute('data-id'), e.innerText.trim()])"))
        bonds = dict(p.locator(".tn-canvas .react-flow__edge").evaluate_all(
            "els => els.map(e => [e.getAttribute('data-id') || (e.getAttribute('data-testid') || '').replace("
            "'rf__edge-', ''), (e.querySelector('.react-flow__edge-text') || {}).textContent || ''])"))
        header = p.locator(".tn-header").first
        cards = p.locator(".tn-metric-params")
        return {"nodes": nodes, "bonds": {k: v for k, v in bonds.items() if k.startswith("B:")},
                "name": header.locator(".tn-name").inner_text(),
                "shape": header.locator(".tn-shape").inner_text(),
                "save_as": p.locator(".tn-save-name input").input_value(),
                "params": int(cards.first.get_attribute("data-value")) if cards.count() else None}

    def inspector_matches(self, d: Design) -> list[str]:
        p, sel = self.page, self.state.selection
        out = []
        if not sel["tensors"] and not sel["indices"]:
            if p.locator(".tn-field-name input").input_value() != d.name:
                out.append("inspector name")
            legs = sorted((ix.axis, k) for k, ix in d.indices.items() if ix.role == "in")
            want = ",".join(str(d.indices[k].dim) for _, k in legs)
            if p.locator(".tn-field-factors-in input").input_value() != want:
                out.append(f"inspector in legs {p.locator('.tn-field-factors-in input').input_value()} != {want}")
        elif len(sel["tensors"]) == 1 and not sel["indices"]:
            t = next((x for x in d.tensors if x.id == sel["tensors"][0]), None)
            if t is None:
                return [f"selection names tensor {sel['tensors'][0]!r}, which the design lacks"]
            params = 0 if t.kind == "delta" else math.prod(d.indices[i].dim for i in t.indices if i in d.indices)
            text = p.locator(".tn-tensor-info .tn-info").inner_text()
            if f"{params:,} core params" not in text or t.id not in text:
                out.append(f"inspector tensor: {text!r}, want {params:,} core params")
        elif len(sel["indices"]) == 1 and not sel["tensors"]:
            name = sel["indices"][0]
            if name not in d.indices:
                return [f"selection names index {name!r}, which the design lacks"]
            got = p.locator(f".tn-field-dim-{name} input").input_value()
            if got != str(d.indices[name].dim):
                out.append(f"inspector {name}: {got} != {d.indices[name].dim}")
        return out

    def check(self, step: str) -> None:
        self.settle()
        d = self.download()
        assert d.to_dict() == self.state.design.to_dict(), f"{step}: the download is not the design"
        want = expected(d)
        if want["valid"]:
            self.last_valid_params = want["params"]
        elif not self.state.valid_design:
            self.last_valid_params = None
        deadline = time.monotonic() + SYNC_S
        while True:
            got = self.shown()
            problems = []
            if got["nodes"] != want["nodes"]:
                missing = {k: v for k, v in want["nodes"].items() if got["nodes"].get(k) != v}
                extra = {k: v for k, v in got["nodes"].items() if k not in want["nodes"]}
                problems.append(f"canvas nodes differ: want {missing}, extra {extra}")
            if got["bonds"] != want["bonds"]:
                problems.append(f"bond labels differ: {got['bonds']} != {want['bonds']}")
            if got["name"] != d.name or got["save_as"] != d.name:
                problems.append(f"names: header {got['name']!r}, save as {got['save_as']!r}, design {d.name!r}")
            if got["shape"] != want["shape"]:
                problems.append(f"header {got['shape']!r} != {want['shape']!r}")
            if got["params"] != self.last_valid_params:
                problems.append(f"params card {got['params']} != {self.last_valid_params}")
            problems += self.inspector_matches(d)
            if not problems:
                return
            if time.monotonic() > deadline:
                screenshot(self.page, "consistency_failure")
                raise AssertionError(f"after {step}: " + "; ".join(problems))
            self.page.wait_for_timeout(200)

    # -------------------------------------------------------------- doing things
    def fill(self, selector: str, text: str) -> None:
        field = self.page.locator(selector)
        field.fill(str(text))
        field.press("Enter")

    def deselect(self) -> None:
        if self.state.selection != {"tensors": [], "indices": []}:
            self.page.locator(".tn-canvas .react-flow__pane").click(position={"x": 12, "y": 12})
            self.wait(lambda: self.state.selection == {"tensors": [], "indices": []}, "deselect")
        self.page.locator(".tn-design-info .tn-info").wait_for(timeout=SYNC_S * 1000)

    def wait(self, cond, what: str) -> None:
        deadline = time.monotonic() + SYNC_S
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.page.wait_for_timeout(80)

    def answer_confirmation(self, rng: random.Random) -> str:
        if not self.state.pending:
            return ""
        field = self.state.pending["field"]
        self.page.locator(f".tn-warn[data-field='{field}']").wait_for(timeout=SYNC_S * 1000)  # asked under the field
        which = rng.choice(["tn-confirm", "tn-cancel"])
        buttons = self.page.locator(f".{which} button").filter(visible=True)
        for _ in range(4):  # the note may be redrawn while the pointer gets there: find it again
            if not self.state.pending:
                break
            try:
                buttons.first.click(timeout=6000)
            except Exception:  # noqa: BLE001 - redrawn under the pointer: look again
                self.page.wait_for_timeout(300)
                continue
            deadline = time.monotonic() + 5
            while self.state.pending and time.monotonic() < deadline:
                self.page.wait_for_timeout(100)
        if self.state.pending:
            screenshot(self.page, "consistency_confirm")
            raise AssertionError(f"no visible {which} button for pending {self.state.pending}")
        self.wait(lambda: not self.state.pending, "the confirmation to go")
        return " + " + ("apply anyway" if which == "tn-confirm" else "cancel")

    def browser_graph(self) -> str:
        """What the page's ReactFlow Bokeh models hold (node and edge counts), and the server's flows."""
        page = self.page.evaluate("""() => { const out = [];
            for (const doc of (window.Bokeh ? Bokeh.documents : [])) for (const m of doc._all_models.values()) {
                if (!String(m.type).includes('ReactFlow')) continue;
                const d = m.data || m; out.push([String(m.type), (d.nodes || []).length, (d.edges || []).length]); }
            return out; }""")
        server = [(len(a.design.canvas.flow.nodes), len(a.design.canvas.flow.edges)) for a in self.apps]
        return f"page {page}, server flows {server}"

    def selection_seen(self) -> str:
        """What the server and the page hold as selected (for a failure's message)."""
        page_sel = self.page.locator(".tn-canvas .react-flow__node.selected, .tn-canvas .react-flow__edge.selected"
                                     ).evaluate_all("els => els.map(e => e.getAttribute('data-id'))")
        box = ("e => { const r = e.getBoundingClientRect(); return [Math.round(r.x), Math.round(r.y), "
               "Math.round(r.width), Math.round(r.height)]; }")
        c = self.page.locator(".tn-canvas .react-flow").first
        geo = {"canvas": c.evaluate(box), "scroll": c.evaluate("e => [e.scrollLeft, e.scrollTop]"),
               "transform": self.page.locator(".tn-canvas .react-flow__viewport").first.evaluate(
                   "e => e.style.transform"),
               "labels": self.page.locator(".tn-canvas .react-flow__edge").evaluate_all(
                   f"els => els.map(e => [e.getAttribute('data-id'), "
                   f"(e.querySelector('.react-flow__edge-textwrapper') ? ({box})(e.querySelector("
                   f"'.react-flow__edge-textwrapper')) : null)])")}
        return f"server selection {self.state.selection}, selected in the page {page_sel}, geometry {geo}"

    def in_canvas(self, target) -> bool:
        """Whether ``target``'s centre lies inside the canvas's visible area."""
        box, c = target.bounding_box(), self.page.locator(".tn-canvas .react-flow").first.bounding_box()
        if not box or not c:
            return False
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        return c["x"] <= x <= c["x"] + c["width"] and c["y"] <= y <= c["y"] + c["height"]

    def show(self, target, what: str) -> None:
        """A user clicks only what the canvas shows: when ``target`` lies outside it, fit the view first (the
        canvas's own fit button). A click there lands beside the canvas and selects nothing (seen: a node right
        of the canvas after an undo that brought back a wider drawing without fitting the view)."""
        if self.in_canvas(target):
            return
        self.page.locator(".tn-canvas .react-flow__controls-fitview").click()
        deadline = time.monotonic() + 5
        while not self.in_canvas(target):
            if time.monotonic() > deadline:
                flow = self.apps[-1].design.canvas.flow
                xs = [n["position"]["x"] for n in flow.nodes if isinstance(n.get("position"), dict)]
                raise AssertionError(f"{what} is outside the canvas even after fitting the view (server viewport "
                                     f"{flow.viewport}, node x from {min(xs, default=None)} to {max(xs, default=None)})")
            self.page.wait_for_timeout(100)

    def click_node(self, tid: str) -> None:
        node = self.page.locator(".tn-canvas").get_by_test_id(f"rf__node-T:{tid}")
        self.show(node, f"tensor {tid}")
        try:
            node.click(timeout=5000)
        except Exception as e:  # covered by another node or a label: the click goes to its centre anyway
            print("click_node fallback", tid, str(e)[:600])
            node.dispatch_event("click")
        self.wait(lambda: self.state.selection["tensors"] == [tid], f"selecting {tid}")
        # and the inspector in the page shows it (not the previous selection's widgets)
        self.page.locator(".tn-tensor-info .tn-info", has_text=f"Tensor {tid} ").wait_for(timeout=SYNC_S * 1000)

    def click_bond(self, name: str) -> None:
        label = self.page.locator(".tn-canvas").get_by_test_id(f"rf__edge-B:{name}").locator(".react-flow__edge-textwrapper")
        self.show(label, f"bond {name}")
        try:
            label.click(timeout=5000)
        except Exception as e:  # covered: dispatch the click on the label itself
            print("click_bond fallback", name, str(e)[:600])
            label.dispatch_event("click")
        self.wait(lambda: self.state.selection == {"tensors": [], "indices": [name]}, f"selecting {name}")


# ------------------------------------------------------------------------------------------------- the steps
def generate(ui: Studio, rng: random.Random) -> str:
    p = ui.page
    kind = rng.choice(list(TEMPLATES))
    spec = TEMPLATES[kind]
    inf, outf, bond = rng.choice([64, 128, 256, 784]), rng.choice([32, 64, 256]), rng.choice([2, 3, 4])
    choose_template(p, kind)
    ui.fill(".tn-g-in input", inf)
    ui.fill(".tn-g-out input", outf)
    ui.fill(".tn-g-bond input", bond)
    act = rng.choice(["none", "relu", "gelu", "tanh"]) if spec.nonlinear else "none"
    if spec.nonlinear:
        p.locator(".tn-g-activation select").select_option(act)
    lateral = "none"
    if spec.options and lateral_levels(kind, inf, outf) and rng.random() < 0.5:
        lateral = rng.choice(["all", "top", f"level {lateral_levels(kind, inf, outf)[0]}"])
        p.locator(".tn-g-lateral select").select_option(lateral)
    elif spec.options:
        p.locator(".tn-g-lateral select").select_option("none")
    add = bool(ui.state.design.tensors) and rng.random() < 0.15 and len(ui.state.design.tensors) < 20
    ui.kinds.add(kind)
    before = ui.state.version
    target = p.locator(".tn-add-template button" if add else ".tn-generate button")
    target.click()
    changed = lambda: ui.state.version != before or ui.state.pending or ui.state.field_errors  # noqa: E731
    try:
        ui.wait(changed, "generate")
    except AssertionError:
        # seen about once in three full-suite runs on the loaded CI machine: the click reaches the server but the
        # design does not change (not reproduced in isolation); keep a picture, click once more, and fail if that
        # one is lost too
        screenshot(p, "consistency_generate_lost")
        target.click()
        ui.wait(changed, "generate (clicked again)")
    return f"{'add' if add else 'generate'} {kind} {inf}x{outf} chi={bond} {act} lateral={lateral}" + \
        ui.answer_confirmation(rng)


def set_legs(ui: Studio, rng: random.Random) -> str:
    ui.deselect()
    d = ui.state.design
    legs = sorted((ix.axis, k) for k, ix in d.indices.items() if ix.role == "in")
    if not legs:
        return "no in legs"
    dims = [d.indices[k].dim for _, k in legs]
    choice = rng.random()
    if choice < 0.45:
        text = ",".join(map(str, reversed(dims)))
    elif choice < 0.75:
        text = ",".join(str(rng.choice([2, 3, 4, 7])) for _ in dims)
    else:
        text = rng.choice(["0," * (len(dims) - 1) + "4", "a,b", ",".join(["-2"] * len(dims))])
    ui.fill(".tn-field-factors-in input", text)
    ui.page.wait_for_timeout(150)
    return f"in legs {text}" + ui.answer_confirmation(rng)


def set_bond(ui: Studio, rng: random.Random) -> str:
    d = ui.state.design
    users = d.users()
    bonds = [k for k, ix in d.indices.items() if ix.role == "bond" and not ix.hyperedge and len(users.get(k, [])) == 2]
    if not bonds:
        return "no bond"
    name = rng.choice(bonds)
    ui.click_bond(name)
    value = rng.choice(["2", "3", "5", "6", "0", "-3", "abc", "700"])
    ui.fill(f".tn-field-dim-{name} input", value)
    ui.page.wait_for_timeout(150)
    return f"bond {name} = {value}" + ui.answer_confirmation(rng)


def set_activation(ui: Studio, rng: random.Random) -> str:
    d = ui.state.design
    if not d.tensors:
        return "no tensor"
    tid = rng.choice(d.tensors).id
    ui.click_node(tid)
    act = rng.choice(["none", "relu", "gelu", "sigmoid"])
    ui.page.locator(".tn-activation select").select_option(act)
    ui.page.wait_for_timeout(150)
    return f"{tid} activation {act}" + ui.answer_confirmation(rng)


def add_and_connect(ui: Studio, rng: random.Random) -> str:
    p = ui.page
    before = {t.id for t in ui.state.design.tensors}
    added = lambda: len(ui.state.design.tensors) == len(before) + 1  # noqa: E731
    # a click on "+ Tensor" within COOLDOWN_S of the end of the last add, with nothing changed since, is the second
    # half of a double click and ignored by design (studio.widgets.guard); the end is not visible from here (the
    # design changes before the action returns, about 0.3 s here), so wait a margin of 2 s past the change
    wait = ui.last_add + COOLDOWN_S + 2.0 - time.monotonic()
    if wait > 0:
        p.wait_for_timeout(wait * 1000)
    p.locator(".tn-add-tensor button").click()
    ui.wait(added, "a new tensor")
    ui.last_add = time.monotonic()
    new = next(t.id for t in ui.state.design.tensors if t.id not in before)
    ui.settle()
    if before and rng.random() < 0.85:
        other = rng.choice(sorted(before))
        src = p.locator(".tn-canvas").get_by_test_id(f"rf__node-T:{new}").locator("[data-handleid='ls']")
        dst = p.locator(".tn-canvas").get_by_test_id(f"rf__node-T:{other}").locator(f"[data-handleid='{rng.choice(['r', 'b', 'ls', 'ts'])}']")
        src.wait_for()
        drag(p, src, dst)
        p.wait_for_timeout(200)
        return f"add {new}, connect to {other}" + ui.answer_confirmation(rng)
    return f"add {new}"


def delete(ui: Studio, rng: random.Random) -> str:
    d = ui.state.design
    if not d.tensors:
        return "nothing to delete"
    tid = rng.choice(d.tensors).id
    ui.click_node(tid)
    before = ui.state.version
    ui.page.keyboard.press("Delete")
    ui.wait(lambda: ui.state.version != before or ui.state.pending, f"deleting {tid}")
    return f"delete {tid}" + ui.answer_confirmation(rng)


def undo_redo(ui: Studio, rng: random.Random) -> str:
    which = "redo" if ui.state.can_redo and rng.random() < 0.4 else "undo"
    if which == "undo" and not ui.state.can_undo:
        return "nothing to undo"
    before = ui.state.version
    ui.page.locator(f".tn-{which} button").click()
    ui.wait(lambda: ui.state.version != before, which)
    return which


def rename(ui: Studio, rng: random.Random) -> str:
    ui.deselect()
    name = rng.choice(["ring from scratch", "layer A", "   ", "vgg fc7 trial", "x" * 12])
    ui.fill(".tn-field-name input", name)
    ui.page.wait_for_timeout(150)
    return f"rename {name!r}"


def upload(ui: Studio, rng: random.Random, saved: list[dict]) -> str:
    ui.uploads += 1
    path = ui.tmp / f"upload{ui.uploads}.json"
    if saved and rng.random() < 0.75:
        path.write_text(json.dumps(rng.choice(saved)))
        what = "good"
    else:
        path.write_text(rng.choice(['{"format": "tnstudio-design", "version": 1}', "{not json", "[1, 2]"]))
        what = "broken"
    ui.page.locator(".tn-upload input[type=file]").set_input_files(str(path))
    if what == "broken":
        ui.page.locator(".tn-error[data-field='open']").wait_for(timeout=SYNC_S * 1000)
    ui.page.wait_for_timeout(300)
    return f"upload {what} file" + ui.answer_confirmation(rng)


def fit_size(ui: Studio, rng: random.Random) -> str:
    d = ui.state.design
    if not d.tensors:
        return "no tensor"
    tid = rng.choice(d.tensors).id
    ui.click_node(tid)
    p = ui.page
    p.locator(".tn-leg-role select").select_option(rng.choice(["in", "out"]))
    ui.fill(".tn-leg-dim input", rng.choice(["2", "3"]))
    before = ui.state.version
    p.locator(".tn-add-leg button").click()
    ui.wait(lambda: ui.state.version != before or ui.state.pending or ui.state.field_errors, "the new leg")
    answer = ui.answer_confirmation(rng)
    ui.deselect()
    if any("multiply to" in x for x in ui.state.problems):
        before = ui.state.version
        p.locator(".tn-fit button").click()
        ui.wait(lambda: ui.state.version != before or ui.state.pending, "fit layer size")
        return f"leg on {tid}{answer}, fit size" + ui.answer_confirmation(rng)
    return f"leg on {tid}{answer}"


def new_design(ui: Studio, rng: random.Random) -> str:
    before = ui.state.version
    ui.page.locator(".tn-new button").click()
    ui.wait(lambda: ui.state.version != before, "new design")
    return "new design"


ACTIONS = [(generate, 5), (set_legs, 3), (set_bond, 5), (set_activation, 3), (add_and_connect, 3), (delete, 2),
           (undo_redo, 4), (rename, 2), (upload, 2), (fit_size, 2), (new_design, 1)]


@pytest.mark.slow
def _trace_canvas(monkeypatch) -> list[str]:
    """The canvas's gestures and redraws as the server sees them (time, what, selection after), for a failure's
    message: a click that selected nothing says whether the browser reported it and what was redrawn after."""
    import collections
    import functools

    from studio.canvas import Canvas

    trace: collections.deque = collections.deque(maxlen=30)
    t0 = time.monotonic()

    def traced(name: str, fn):
        @functools.wraps(fn)  # keeps param.depends' watch on redraw
        def run(self, *args):
            fn(self, *args)
            payload = args[0] if args and isinstance(args[0], dict) else {}
            brief = {k: ([n.get("id") if isinstance(n, dict) else n for n in v] if isinstance(v, list) else v)
                     for k, v in payload.items() if k in ("nodes", "edges", "node_id")}
            trace.append(f"{time.monotonic() - t0:7.2f} {name} {brief} -> {self.state.selection}, flow "
                         f"{len(self.flow.nodes)} nodes, {len(self.flow.edges)} edges")
        return run

    for name in ("_selection_changed", "_check_drawing", "redraw"):
        monkeypatch.setattr(Canvas, name, traced(name, getattr(Canvas, name)))
    init = Canvas.__init__

    def watched_init(self, **params):
        init(self, **params)
        import traceback

        def edges_set(event):
            where = [f"{f.name}" for f in traceback.extract_stack()[-14:-1]]
            trace.append(f"{time.monotonic() - t0:7.2f} flow.edges {len(event.old)} -> {len(event.new)} via {where}")
        self.flow.param.watch(edges_set, "edges")

    monkeypatch.setattr(Canvas, "__init__", watched_init)
    return trace


@pytest.mark.parametrize("steps, seed", [(STEPS, SEED), pytest.param(LONG_STEPS, SEED + 1, marks=pytest.mark.long,
                                                                      id="long")])
def test_randomised_edits_keep_every_view_true(tmp_path, monkeypatch, steps, seed):
    require_browser()
    apps = []
    trace = _trace_canvas(monkeypatch)

    def factory():
        app = create_app(state=StudioState(home=str(tmp_path / "home")))
        apps.append(app)
        return app

    rng = random.Random(seed)
    saved: list[dict] = []
    done: list[str] = []
    timings: list[tuple] = []
    started = time.monotonic()
    with ServerLog() as server, serve_app(factory) as url, browser_page(1600, 1000) as page:
        console = Console(page)
        page.goto(url)
        page.locator(".tn-canvas").get_by_test_id("rf__node-T:top").wait_for(timeout=90000)
        ui = Studio(page, apps, tmp_path)
        ui.check("start")
        funcs, weights = zip(*ACTIONS)
        for n in range(steps):
            fn = generate if not ui.state.design.tensors or n == 0 else rng.choices(funcs, weights)[0]
            t0 = time.monotonic()
            try:
                what = fn(ui, rng, saved) if fn is upload else fn(ui, rng)
            except Exception as e:  # noqa: BLE001 - an assertion or playwright's timeout: report what happened
                screenshot(page, "consistency_action")
                raise AssertionError(f"{e} (step {n}, {fn.__name__}; {ui.selection_seen()})\nsteps so far:\n"
                                     + "\n".join(done[-12:]) + "\ncanvas events:\n" + "\n".join(trace)) from None
            t1 = time.monotonic()
            done.append(f"{n}: {what}")
            try:
                ui.check(what)
                timings.append((what, round(t1 - t0, 2), round(time.monotonic() - t1, 2)))
            except AssertionError as e:
                raise AssertionError(f"{e}\nsteps so far:\n" + "\n".join(done[-12:]) + "\ncanvas events:\n"
                                     + "\n".join(trace) + f"\nbrowser models: {ui.browser_graph()}") from None
            if not ui.state.problems and len(saved) < 8:
                saved.append(ui.state.design.to_dict())
        # the draft survives a reload
        page.reload()
        page.locator(".tn-header").first.wait_for(timeout=90000)
        ui.check("reload")
        assert "restored" in page.locator(".tn-header .tn-msg").inner_text()
        screenshot(page, "consistency_end")
    assert console.page_errors == [], console.page_errors
    assert console.errors == [], console.errors
    assert console.noise() == [], console.noise()
    assert server.records == [], "\n".join(server.records)
    assert len(done) >= min(60, steps) and len(ui.kinds) >= min(4, steps // 10), (len(done), ui.kinds)
    print(f"{len(done)} steps in {time.monotonic() - started:.0f} s")
    if os.environ.get("TNSTUDIO_TIMINGS"):
        for row in timings:
            print(*row)
