"""Exported code is safe by construction: names, ids and index names from hostile alphabets (quotes, newlines,
backslashes, unicode, ``__import__(...)``) either break the id rule and are refused by validation with the rule
named, or are exported as literals: tokenized, the torch module (sliced under a memory budget too) and the snippet
carry a design string (valid ids and index names that carry the marker too, a copy tensor's id among them) only
inside string literals (repr) or as the validated class name, never as code or in a comment; they compile, import
in a fresh interpreter without running anything a design says (no marker file appears), and compute TNLinear's
outputs."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.design.model import NAME_RULE, RESERVED_INDEX_NAMES, Design, DesignError, valid_name
from engine.design.schema import design_schema
from engine.nn.export import class_name, to_snippet, to_torch_source, write_export
from engine.nn.linear import TNLinear
from engine.design.templates import make_template
from engine.contract.memory import memory
from engine.contract.program import compile_program
from engine.contract.slicing import slicing_sequence

ROOT = Path(__file__).resolve().parents[1]
MARKER = "PWNED"
PAYLOADS = [f"\n__import__('pathlib').Path({MARKER!r}).touch()\n#", '"""', "'''", "\\N", "\\N{BULLET}", "\\",
            "\\x00", "{0}", "{self}", "#", "\r", "\u2028", "é", "中文", "\x00", "\t", "'", '"', "\\'",
            'x"; import os',
            "__import__('os').system('touch PWNED')", ")\nimport os\n(", "\n", "\\\n", "%s", "$(touch PWNED)"]
# ids and index names that follow the rule yet read as code, or clash with names the module uses itself
CODE_LIKE = ["__import__", "self", "torch", "nn", "F", "math", "x", "W", "Wt", "y", "xs", "ys", "t0", "t1", "cores",
             "bias", "x_41", "x_", "delta_G0", "_", "__init__", "__class__", "forward", "weight", "training",
             "CORE_SHAPES", "Layer", "None", "True", "import", "lambda", "G.0", "a-b", "a.b-c_d", "_b", "_in", "_out",
             "A" * 64, "B" * 65, "0abc", "-x", ".x"]
CHARS = st.sampled_from(list("abcXYZ019_.-\"'\\\n\r\t #{}()%$éü中\u2028\x00"))
TEXT = st.one_of(st.sampled_from(PAYLOADS), st.text(CHARS, min_size=0, max_size=12),
                 st.builds(lambda a, b: a + b, st.sampled_from(PAYLOADS), st.text(CHARS, max_size=6)))
NAMES = st.one_of(st.sampled_from(CODE_LIKE), st.text(CHARS, min_size=1, max_size=10), st.sampled_from(PAYLOADS))
# ids and index names that follow the rule and carry the MARKER, so the checks below see where valid names go too
MARKED = st.builds(lambda a, b: a + MARKER + b, st.sampled_from(["", "x", "_", "a."]),
                   st.sampled_from(["", "0", "_b", "-c", ".d"]))
VALID = st.one_of(st.sampled_from([n for n in CODE_LIKE if valid_name(n) and n not in RESERVED_INDEX_NAMES]),
                  st.from_regex(NAME_RULE, fullmatch=True).filter(lambda n: n not in RESERVED_INDEX_NAMES), MARKED)


def chain(name: str, ids: list[str], idx: list[str], act: str | None) -> dict:
    """Three tensors A - B - C: A holds in leg 0, B in leg 1 and out leg 0, C out leg 1. With a fourth id and a
    seventh index name, a copy tensor (``delta``, a fixed buffer of the module) sits between B and C."""
    i0, i1, o0, o1, r0, r1 = idx[:6]
    indices = {i0: {"dim": 2, "role": "in", "axis": 0}, i1: {"dim": 3, "role": "in", "axis": 1},
               o0: {"dim": 2, "role": "out", "axis": 0}, o1: {"dim": 2, "role": "out", "axis": 1},
               r0: {"dim": 2, "role": "bond"}, r1: {"dim": 3, "role": "bond"}}
    tensors = [{"id": ids[0], "indices": [i0, r0], "activation": act},
               {"id": ids[1], "indices": [r0, i1, o0, r1]},
               {"id": ids[2], "indices": [r1, o1]}]
    if len(ids) > 3:
        r2 = idx[6]
        indices[r2] = {"dim": 3, "role": "bond"}
        tensors[2]["indices"] = [r2, o1]
        tensors.append({"id": ids[3], "kind": "delta", "indices": [r1, r2]})
    return {"format": "tnstudio-design", "version": 1, "name": name,
            "target": {"kind": "linear", "in_features": 6, "out_features": 4}, "indices": indices,
            "tensors": tensors}


def assert_marker_only_in_literals(src: str, cls: str) -> None:
    """Tokenized, ``src`` holds the MARKER (which only design strings carry) inside string literals only, or as the
    class name ``cls`` made from the design's name (the one validated identifier): never as a name, an operator or a
    comment."""
    import io
    import tokenize

    literal = {tokenize.STRING} | {getattr(tokenize, k) for k in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
                                   if hasattr(tokenize, k)}  # string tokens (3.12 splits f-strings into parts)
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in literal:
            assert MARKER not in tok.string or (tok.type == tokenize.NAME and tok.string == cls), tok


def _schema_ok(d: dict) -> bool:
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(design_schema()).is_valid(d)


RUNNER = textwrap.dedent("""\
    import importlib.util, json, runpy, sys
    jobs = json.load(open(sys.argv[1]))
    if sys.argv[2] == "torch":
        for name in ("engine", "studio", "numpy", "opt_einsum", "cotengra"):
            sys.modules[name] = None  # the torch export may use torch only
    import torch
    out = {}
    for job in jobs:
        x = torch.load(job["x"], weights_only=True)
        if sys.argv[2] == "torch":
            spec = importlib.util.spec_from_file_location("m" + str(job["n"]), job["torch"])
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            layer = mod.Layer()
            layer.load_state_dict(torch.load(job["state"], weights_only=True))
            assert mod.DESIGN_NAME == job["name"]  # the name arrives as the very string, not as code
        else:
            import os
            os.chdir(job["dir"])
            layer = runpy.run_path(job["snippet"])["layer"]
        with torch.no_grad():
            out[str(job["n"])] = layer(x)
    torch.save(out, sys.argv[3])
""")


def _run_fresh(tmp: Path, jobs: list[dict], kind: str) -> dict:
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    (tmp / "run.py").write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable] + (["-I"] if kind == "torch" else []) + [str(tmp / "run.py"), str(tmp / "jobs.json"),
                                                                     kind, str(tmp / f"out_{kind}.pt")]
    proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp / f"out_{kind}.pt", weights_only=True)


def test_hostile_names_are_refused_or_exported_as_literals(tmp_path):
    jobs, sliced_jobs, layers, deltas = [], [], {}, []

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(name=TEXT, ids=st.lists(VALID, min_size=3, max_size=4, unique=True),
           idx=st.lists(VALID, min_size=7, max_size=7, unique=True), act=st.sampled_from([None, "tanh", "relu"]),
           bad=st.one_of(st.none(), st.tuples(st.integers(0, 10), NAMES)))
    def case(name, ids, idx, act, bad):
        n_ids = len(ids)  # a fourth id is a copy (delta) tensor's
        if bad is not None:  # one name (an id or an index name) from the hostile alphabet
            k, text = bad
            names = ids + idx
            if text in names:
                return
            names[k % len(names)] = text
            ids, idx = names[:n_ids], names[n_ids:]
        d = chain(name, ids, idx, act)
        used = ids + idx[:7 if n_ids > 3 else 6]
        rule_ok = all(valid_name(n) for n in used) and not set(used[n_ids:]) & set(RESERVED_INDEX_NAMES)
        try:
            design = Design.from_dict(d)
        except DesignError as e:
            assert not rule_ok, e.problems  # refused only for breaking the rule, and the message says so
            text = " ".join(e.problems)
            assert "naming rule" in text or "reserved" in text, text
            assert "\n" not in text  # names are shown as literals: one line per problem
            assert not _schema_ok(d)  # the JSON Schema states the same rule
            return
        assert rule_ok and _schema_ok(d)
        n = len(jobs)
        deltas.extend(t.id for t in design.tensors if t.kind == "delta")
        folder = tmp_path / f"j{n}"
        folder.mkdir()
        torch.manual_seed(n)
        layer = TNLinear(design, seed=n)
        src = to_torch_source(design, source=f"run {name}")
        ast.parse(src)
        assert MARKER not in {node.id for node in ast.walk(ast.parse(src)) if isinstance(node, ast.Name)}
        assert_marker_only_in_literals(src, class_name(design))
        (folder / "layer.py").write_text(src)
        torch.save(layer.state_dict(), folder / "layer.pt")
        # under a memory budget the generation is sliced: its plan names the sliced index (a literal, never a
        # comment), and the sliced module computes the same outputs in a fresh interpreter too
        seq = slicing_sequence(compile_program(design, 64, "materialise"), 4, design.params)
        if seq:
            sliced = to_torch_source(design, memory_budget=memory(seq[0], 4, design.params, training=True).train_bytes)
            assert "SLICINGS = {" in sliced
            ast.parse(sliced)
            assert_marker_only_in_literals(sliced, class_name(design))
            (folder / "sliced.py").write_text(sliced)
        write_export(design, "snippet", folder / "use.py", weights=layer.state_dict())
        snippet = to_snippet(design, design_path=name or "d.json", weights_path=name or None)
        ast.parse(snippet)
        assert_marker_only_in_literals(snippet, class_name(design))
        x = torch.randn(3, 6, generator=torch.Generator().manual_seed(n))
        torch.save(x, folder / "x.pt")
        jobs.append({"n": n, "name": design.name, "torch": str(folder / "layer.py"), "state": str(folder / "layer.pt"),
                     "snippet": str(folder / "use.py"), "dir": str(folder), "x": str(folder / "x.pt")})
        if seq:
            sliced_jobs.append({**jobs[-1], "torch": str(folder / "sliced.py")})
        with torch.no_grad():
            layers[n] = layer(x)

    case()
    assert len(jobs) >= 5 and sliced_jobs, "too few examples passed validation to test the exports"
    assert deltas, "no exported example had a copy (delta) tensor"
    for kind, these in (("torch", jobs), ("snippet", jobs), ("torch", sliced_jobs)):
        out = _run_fresh(tmp_path, these, kind)
        for job in these:
            torch.testing.assert_close(out[str(job["n"])], layers[job["n"]], rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.rglob(MARKER)), "a design string ran as code"
    assert not (ROOT / MARKER).exists()


@pytest.mark.parametrize("where", ["name", "index", "id"])
def test_the_reported_injections_are_closed(where, tmp_path):
    """The issue's three cases: a newline in an index name (was printed into a CORE_SHAPES comment), in the design
    name (the snippet's first-line comment), and quotes / backslashes that broke compilation."""
    payload = f"x\n__import__('pathlib').Path({MARKER!r}).touch()\n#"
    d = chain("ok", ["A", "B", "C"], ["i0", "i1", "o0", "o1", "r0", "r1"], None)
    if where == "name":
        d["name"] = payload + '"""\\N'
        design = Design.from_dict(d)
        for src in (to_torch_source(design), to_snippet(design)):
            tree = ast.parse(src)
            consts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
            assert d["name"] in consts  # the whole name is one string literal
            assert not any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "__import__"
                           for n in ast.walk(tree))
        return
    if where == "index":
        d["indices"][payload] = d["indices"].pop("r0")
        for t in d["tensors"]:
            t["indices"] = [payload if i == "r0" else i for i in t["indices"]]
    else:
        d["tensors"][0]["id"] = payload
    with pytest.raises(DesignError, match="naming rule") as e:
        Design.from_dict(d)
    assert 'x\\n__import__' in str(e.value)  # shown as a literal (escaped), with a suggestion and the rule
    assert "[A-Za-z_][A-Za-z0-9_.-]{0,63}" in str(e.value) and "TN Studio 0.3" in str(e.value)


def test_presets_and_templates_follow_the_id_rule():
    from engine.design.library import presets
    from engine.design.model import load_design
    from engine.design.templates import TEMPLATE_KINDS, make_template

    for path in presets().values():
        load_design(path)  # validates, the id rule included
    for kind in TEMPLATE_KINDS:
        for opts in ({}, {"activation": "gelu"}):
            try:
                d = make_template(kind, 256, 256, 3, **opts)
            except ValueError:
                continue  # tucker and cp take no activation
            assert all(valid_name(t.id) for t in d.tensors) and all(valid_name(k) for k in d.indices)


def test_conv_exports_carry_design_strings_only_as_literals(tmp_path):
    """The conv exporter (its own module text around the helpers it shares with the linear one): a conv design with
    a hostile name and rule-abiding but code-like ids and index names exports a module and a snippet in which
    every such string sits inside a string literal (tokenized: never a name, an operator or a comment; the class
    name made from the design's name is the one validated identifier), and both
    import in a fresh interpreter without running anything a design says."""
    from engine.design.conv import make_conv_template
    from engine.nn.conv_export import to_conv_snippet, to_conv_torch_source

    base = make_conv_template("cp", 4, 3, 3, 2).to_dict()
    files = []

    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(name=TEXT, names=st.lists(VALID, min_size=16, max_size=16, unique=True))
    def case(name, names):
        old_ids = [t["id"] for t in base["tensors"]]
        old_idx = list(base["indices"])
        new = iter(names)
        ren = {k: next(new) for k in old_ids + old_idx}
        d = json.loads(json.dumps(base))
        d["name"] = name
        d["indices"] = {ren[k]: v for k, v in d["indices"].items()}
        for t in d["tensors"]:
            t["id"], t["indices"] = ren[t["id"]], [ren[i] for i in t["indices"]]
        d.pop("order", None), d.pop("root", None)
        try:
            design = Design.from_dict(d)
        except DesignError:
            return  # e.g. a renamed leg that the conv target needs by name: refused, nothing exported
        cls = class_name(design)  # the one identifier made from the name: letters and digits only, validated
        module = to_conv_torch_source(design, source=name)
        for src in (module, to_conv_snippet(design, design_path=name or "d.json", weights_path=name or None)):
            ast.parse(src)
            assert_marker_only_in_literals(src, cls)
        path = tmp_path / f"conv_{len(files)}.py"  # the module is imported below (the snippet needs the files)
        path.write_text(module)
        files.append(str(path))

    case()
    assert len(files) >= 10, "too few conv designs passed validation to test the export"
    code = ("import runpy, sys\n"
            "for f in sys.argv[1:]:\n"
            "    runpy.run_path(f)['Layer']()\n")
    proc = subprocess.run([sys.executable, "-c", code, *files], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.rglob(MARKER)) and not (ROOT / MARKER).exists(), "a design string ran as code"


def _long(*args):
    return pytest.param(*args, marks=pytest.mark.long)


@pytest.mark.parametrize("name, budget", [("f", None), _long("F", None), ("SlicedGeneration", 0.5),
                                          _long("sliced generation", 0.5), _long("SLICING", 0.5), ("SLICINGS", 0.5),
                                          _long("SLICE_ACTIVATIONS", 0.5), ("Layer", None), _long("ValueError", 0.5)])
def test_a_design_named_like_a_name_of_the_module_gets_a_free_class_name(name, budget, tmp_path):
    """A design named "f" became class F, which replaced `torch.nn.functional as F` (forward failed: no attribute
    'gelu'); "SlicedGeneration" / "SLICING" (now "SLICINGS") replaced the sliced generation's helper and its table. The
    class gets a free name (Layer appended) and the module runs, in a fresh interpreter, as TNLinear does."""
    from engine.contract.cost import cost_report
    from engine.nn.export import _other_names

    design = make_template("mera", 256, 256, 2, activation="gelu", name=name)
    mem = None if budget is None else int(cost_report(design, batch=64).train_memory_bytes * budget)
    src = to_torch_source(design, memory_budget=mem)
    cls = next(node.name for node in ast.parse(src).body if isinstance(node, ast.ClassDef)
               and any(getattr(b, "attr", None) == "Module" for b in node.bases))
    assert cls not in _other_names(src, cls) and (mem is None or "SlicedGeneration.apply" in src)
    layer = TNLinear(design, seed=1)
    (tmp_path / "layer.py").write_text(src)
    torch.save(layer.state_dict(), tmp_path / "layer.pt")
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    out = _run_fresh(tmp_path, [{"n": 0, "name": design.name, "torch": str(tmp_path / "layer.py"),
                                 "state": str(tmp_path / "layer.pt"), "x": str(tmp_path / "x.pt")}], "torch")
    with torch.no_grad():
        torch.testing.assert_close(out["0"], layer(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uses that name"):  # a class name the caller chose is refused instead
        to_torch_source(design, class_name_="F")


def test_a_conv_design_named_f_exports_a_working_module(tmp_path):
    from engine.design.conv import make_conv_template

    design = make_conv_template("cp", 4, 6, 3, 3, padding=1, name="f")
    src = to_torch_source(design)
    assert "class FLayer(nn.Module)" in src
    ns: dict = {}
    exec(compile(src, "layer.py", "exec"), ns)  # noqa: S102 - the module this test just generated
    y = ns["Layer"]()(torch.randn(2, 4, 8, 8))
    assert y.shape == (2, 6, 8, 8) and torch.isfinite(y).all()
