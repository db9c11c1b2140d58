"""Hypothesis fuzz of the whole command line: every command's options, drawn from its own parser.

The argument vectors are built from ``build_parser()`` itself (so a new command or option is fuzzed without editing
this file): a command, then a random subset of its options and positionals, each given a valid-looking or hostile
value (numbers at and past their limits, NaN, units, separators, control characters, very long text, other options'
names). Paths only ever point inside the test's temporary folder, which is also ``$TNSTUDIO_HOME`` and the working
directory. Left out: commands that start long work by design (``serve``, a search run or join or refit, training
without ``--dry-run``, ``truncate --finetune``), and ``network new``'s ``package.module:factory`` form (it imports and
calls what it names: the user's own code, by design).

Whatever is drawn, the command exits 0, or 2 with its error as one line (``error: ...``; argparse's own refusals
print their usage first), never a traceback; what exits 0 with ``--json`` prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.cli import build_parser

try:
    from tests.test_hostile_inputs import BASE, run_cli
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from test_hostile_inputs import BASE, run_cli

PARSER = build_parser()
SKIP = {("serve",), ("search",), ("search", "join"), ("search", "refit")}
SKIP_DESTS = {"help", "finetune"}
PATH_DESTS = {"output", "runs_dir", "data_dir", "storage", "weights"}
FILE_DESTS = {"file", "design"}
SEARCH_BUDGETS = ["0.05", "nan", "-1", "0", "abc", "inf", "1e400", ""]
TEXT = ["0", "1", "2", "3", "-1", "64", "2147483648", "9" * 40, "1e400", "nan", "inf", "-inf", "0.5", "abc", "", " ",
        "4,4", "2,,2", "2x2", "1:2", "2GiB", "0B", "-1GiB", "999EiB", "1.5G", "float32", "bf16", "int8", "mpo", "ttn",
        "mera", "cp", "gelu", "sin", "all", "top", "0,1", "digits", "teacher", "mnist", "mlp", "cnn", "lenet5",
        "cpu", "cuda", "cuda:7", "x" * 300, "é\u00ff", "a\nb", "tab\there", "--json", "-o", "../../x", "a=b",
        "hidden=256,256", "hidden=", "=", "mpo=1:4", "ttn=9:2", "kind=1:2", "fc1=mpo:4", "*=dense", "fc*=mpo:4",
        "3,32,32", "0,0,0", "G0", "r0", "i0"]


def _commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command path, its parser) for every command (a parser without subcommands), the long-running ones left
    out."""
    out = []

    def walk(path: tuple[str, ...], p: argparse.ArgumentParser) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if path and not subs and path not in SKIP:
            out.append((path, p))
        for s in subs:
            for name, child in s.choices.items():
                walk(path + (name,), child)

    walk((), PARSER)
    return out


COMMANDS = _commands()


def _files(tmp: Path) -> dict[str, str]:
    """Prepared inputs: a good design, a good network file, broken ones, a folder, a missing path."""
    tmp.mkdir(parents=True, exist_ok=True)
    design = tmp / "design.json"
    design.write_text(json.dumps(BASE))
    network = tmp / "net.json"
    rc, _, err = run_cli(["network", "new", "mlp", "-o", str(network), "--option", "hidden=16"])
    assert rc == 0, err
    (tmp / "bad.json").write_text('{"format": "tnstudio-design", "version": 1, "tensors": [')
    (tmp / "blob.json").write_bytes(bytes(range(256)))
    (tmp / "folder").mkdir(exist_ok=True)
    return {"design": str(design), "network": str(network), "bad": str(tmp / "bad.json"),
            "blob": str(tmp / "blob.json"), "folder": str(tmp / "folder"), "missing": str(tmp / "nope.json")}


# values each option accepts, by destination (the fuzz draws these three times in four, so that commands get past
# their parsing and are exercised, not only refused)
VALID = {"activation": ["gelu", "relu", "none", "tanh"], "arch": ["mlp", "cnn1d", "lenet5"], "batch": ["1", "64"],
         "batch_size": ["16", "64"], "bond": ["2", "3"], "budget": ["0.05"], "classes": ["10", "3"],
         "dataset": ["digits", "teacher", "synthetic_images", "mnist1d"], "device": ["cpu", "auto"],
         "dilation": ["1", "2"], "dtype": ["float32", "float64", "bf16", "float16"], "epochs": ["1", "2"],
         "eval_every": ["1", "10"], "hidden": ["16", "16,8"], "id": ["1", "nope"], "image": ["8", "8,6"],
         "in_factors": ["2,6", "3,4", "12"], "in_features": ["12", "16", "6"], "input": ["1,40", "1,8,8"],
         "kernel": ["1", "3", "3,1"], "kind": ["mpo", "tensor_ring", "tucker", "cp", "ttn", "attn", "mera"],
         "lateral": ["none", "all", "top", "0"], "layer": ["1", "0", "G0", "fc1"], "lr": ["0.001", "0.1"],
         "max_bond": ["1", "2", "r0=1"], "memory_budget": ["2GiB", "512MiB", "1e9", "64KiB", "1"],
         "name": ["n", "é x"], "nproc": ["1"], "option": ["hidden=16", "activation=relu"],
         "out_factors": ["3,2", "6"], "out_features": ["6", "8"], "padding": ["0", "1"], "rule": [  # rules as written (SELECTOR:TEMPLATE[:BOND...]), so that assign gets past parsing
             "linear:mpo:2", "linear:dense", "linear:ttn:2:name=fc*", "linear:tucker:2:name=fc1", "conv:cp:2"], "run": ["1", "nope"], "samples": ["8", "64"],
         "seed": ["0", "7"], "show": ["3"], "since": ["0"], "status": ["running", "finished"], "stride": ["1", "2"],
         "study": ["s", "nope"], "tol": ["0.01", "0"], "wait": ["0", "0.1"], "weight_decay": ["0", "0.01"]}


def _value(draw, path: tuple[str, ...], action: argparse.Action, tmp: Path, files: dict[str, str]) -> str:
    dest = action.dest
    if dest == "weights" and draw(st.booleans()):  # read only: the prepared files, none of them a state dict
        return draw(st.sampled_from([files["design"], files["blob"], files["bad"], files["missing"]]))
    if dest in PATH_DESTS:
        return draw(st.sampled_from([str(tmp / "out" / "a.json"), str(tmp / "out" / "x.py"), str(tmp / "folder"),
                                     str(tmp / "design.json" / "x"), str(tmp / "deeper" / "new" / "f.json"),
                                     str(tmp / "s p a c e"), str(tmp / "folder") + "/", "sqlite:///" +
                                     str(tmp / "s.db"), str(tmp / "é")]))
    if dest in FILE_DESTS:  # the good file of the command's kind half of the time
        good = files["network" if path[0] == "network" else "design"]
        return good if draw(st.booleans()) else draw(st.sampled_from(sorted(files.values())))
    if dest == "budget":
        return draw(st.sampled_from(SEARCH_BUDGETS))
    valid = [str(c) for c in action.choices] if action.choices is not None else VALID.get(dest, [])
    if valid and draw(st.integers(0, 3)):
        return draw(st.sampled_from(valid))
    return draw(st.sampled_from(TEXT))


@st.composite
def argv(draw, tmp: Path, files: dict[str, str]) -> list[str]:
    path, parser = draw(st.sampled_from(COMMANDS))
    args = list(path)
    for action in parser._actions:
        if action.dest in SKIP_DESTS or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings:
            if not action.required and draw(st.integers(0, 2)):  # an option in three
                continue
            flag = draw(st.sampled_from(action.option_strings))
            if action.nargs == 0:  # store_true / store_const
                args.append(flag)
                continue
            for _ in range(draw(st.integers(1, 2)) if isinstance(action, argparse._AppendAction) else 1):
                args += [flag, _value(draw, path, action, tmp, files)]
        elif draw(st.integers(0, 19)) > 0:  # positionals: nearly always given
            args.append(_value(draw, path, action, tmp, files))
    if path == ("train",):
        args.append("--dry-run")
    if "thorough" in args and "--budget" not in args:  # a thorough search's default budget is seconds: keep it short
        args += ["--budget", "0.05"]
    return args


def check(args: list[str]) -> tuple[int, str]:
    rc, out, err = run_cli(args)
    assert rc in (0, 2), (args, rc, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, (args, err[-2000:])
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert lines, (args, "exit 2 without a message")
        if lines[0].startswith("usage:"):  # argparse's own refusal: usage, then "prog: error: ..."
            assert ": error: " in lines[-1], (args, err)
        else:
            assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    elif "--json" in args and out.strip():
        json.loads(out)
    return rc, args[0]


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TNSTUDIO_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_command_line_exits_0_or_2_with_one_line(sandbox):
    files = _files(sandbox / "in")
    outcomes: set[tuple[int, str]] = set()

    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    @example(data=None)  # the prepared good design through cost, export and a dry run: exit 0
    def case(data):
        if data is None:
            for args in (["cost", files["design"], "--json"], ["export", files["design"], "-o",
                                                               str(sandbox / "m.py")],
                         ["train", files["design"], "--dry-run", "--runs-dir", str(sandbox / "runs")]):
                outcomes.add(check(args))
            return
        outcomes.add(check(data.draw(argv(sandbox / "in", files))))

    case()
    assert {rc for rc, _ in outcomes} == {0, 2}  # the fuzz reached both sides
    assert len({cmd for _, cmd in outcomes}) >= 8, outcomes  # and most commands
    # nothing was written outside the sandbox: every path drawn is inside it, and so are the defaults
    assert os.path.commonpath([str(sandbox), os.getcwd()]) == str(sandbox)


def test_commands_are_all_drawn_from():
    """The fuzz covers every command but those starting long work, and finds each one's options."""
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"template", "validate", "cost", "export", "train", "runs list", "runs resume", "spectra", "truncate",
            "features", "search show", "network cost", "network assign"} <= names
    assert "serve" not in names and "search" not in names
    cost = dict(COMMANDS)[("cost",)]
    assert {"--batch", "--memory-budget", "--search"} <= {o for a in cost._actions for o in a.option_strings}


@pytest.mark.parametrize("action", [["list"], ["show", "s"], ["stop", "s"]])
@pytest.mark.parametrize("content", ["folder", b'{"a": 1}\n', b'{"format": "tnstudio-design"\n,', b"[1, 2]\n"])
def test_a_search_storage_that_is_no_journal_is_one_line(action, content, sandbox):
    """Found by the fuzz above: a folder or another kind of file given as ``--storage`` made Optuna's journal replay
    raise (IsADirectoryError, JSONDecodeError, KeyError 'op_code') through the command."""
    target = sandbox / "storage"
    if content == "folder":
        target.mkdir()
    else:
        target.write_bytes(content)
    before = None if content == "folder" else target.read_bytes()
    rc, out, err = run_cli(["search", *action, "--storage", str(target)])
    assert rc == 2, (out, err)
    line = err.strip()
    assert "\n" not in line and line.startswith("error: ") and str(target) in line, err
    assert "folder" in line or "not a search journal" in line, line
    if before is not None:
        assert target.read_bytes() == before  # the file was not written to


@pytest.mark.parametrize("kind", ["foreign global", "garbage", "empty"])
def test_a_weights_file_torch_refuses_is_one_plain_line(kind, sandbox):
    """Found by the fuzz above: torch.load's refusal is several lines with terminal escape codes, and the command
    printed all of it. The message is now one plain line naming the reason."""
    import datetime

    import torch

    design = sandbox / "d.json"
    design.write_text(json.dumps(BASE))
    weights = sandbox / "w.pt"
    if kind == "foreign global":
        torch.save({"w": datetime.date(2020, 1, 1)}, weights)
    else:
        weights.write_bytes(b"garbage\n" if kind == "garbage" else b"")
    reason = {"foreign global": "Unsupported global: GLOBAL datetime.date", "garbage": "Unsupported operand",
              "empty": "EOFError"}[kind]
    for command in (["export", str(design), "--weights", str(weights), "-o", str(sandbox / "m.py")],
                    ["spectra", str(design), "--weights", str(weights)]):
        rc, out, err = run_cli(command)
        assert rc == 2, (out, err)
        line = err.strip()
        assert "\n" not in line and "\x1b" not in line and line.startswith("error: "), err
        assert "weights_only=True" in line and reason in line, line
