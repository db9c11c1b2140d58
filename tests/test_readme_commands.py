"""Every `tnstudio` command the README and CONTRIBUTING show is one the command line accepts.

A new user copies commands from the README: a renamed flag or command there is a first-minute failure that no other
test sees. Command lines in code blocks are parsed whole by the real parser (each optional ``[...]`` part taken and
left out, each ``a|b`` alternative tried, placeholders such as ``ID`` filled in); commands quoted in the prose and
flags named in a line's comment must exist on that command. Parsing only: nothing runs.
"""
from __future__ import annotations

import argparse
import itertools
import re
import shlex
from pathlib import Path

import pytest

from engine.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "CONTRIBUTING.md")
PARSER = build_parser()
PLACEHOLDERS = {"ID": "7", "S": "study", "N": "2", "F": "design.json", "DIR": "runs", "URL": "sqlite:///s.db",
                "K": "3", "D": "digits", "KIND": "mpo"}


def _children(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def _command(words: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The longest command path at the start of ``words`` (after ``tnstudio``) and its parser."""
    path, p = [], PARSER
    for w in words:
        child = _children(p).get(w)
        if child is None:
            break
        path.append(w)
        p = child
    return path, p


def _flags(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def _code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each `tnstudio` command line in fenced code blocks, continuations joined."""
    out, in_block, pending, start = [], False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        if pending:
            line, n = pending + " " + line.strip(), start
            pending = ""
        stripped = re.sub(r"^\.venv/bin/", "", line.strip())
        if not stripped.startswith("tnstudio "):
            continue
        if stripped.split("#")[0].rstrip().endswith("\\"):
            pending, start = stripped.split("#")[0].rstrip()[:-1], n
            continue
        out.append((n, stripped))
    return out


def _variants(command: str) -> list[str]:
    """Every way to read a documented line: each ``[...]`` part taken or left out, each ``a|b`` alternative."""
    parts = re.split(r"(\[[^\]]*\])", command)
    choices = []
    for part in parts:
        if part.startswith("["):
            inner = part[1:-1].strip()
            choices.append([""] + _alternatives(inner))
        else:
            choices.append([part])
    out = []
    for c in itertools.product(*choices):
        words = re.sub(r"\s+", " ", "".join(c)).strip().split(" ")  # then a word ``a|b`` is one value or the other
        out += [" ".join(w) for w in itertools.product(*(w.split("|") if "|" in w else [w] for w in words))]
    return out


def _alternatives(inner: str) -> list[str]:
    """``--run ID | --weights F`` -> both."""
    return [a.strip() for a in inner.split(" | ")]


def _expand(line: str) -> list[str]:
    """A documented line (comment removed) as command lines: ``runs list | show ID | ...`` is one per command."""
    command = line.split("  #")[0].split(" # ")[0].strip()
    words = command.split()
    if " | " in command and "[" not in command:  # alternatives of one command group
        path, _ = _command(words[1:])
        group = "tnstudio " + " ".join(path[:-1])
        first, *rest = command.split(" | ")
        return [first] + [f"{group} {r.strip()}" for r in rest]
    return _variants(command)


def _fill(words: list[str]) -> list[str]:
    return [PLACEHOLDERS.get(w, w) for w in words if w != "..."]


def _documented(text_of: dict[str, str]) -> list[tuple[str, int, str]]:
    return [(name, n, line) for name, text in text_of.items() for n, line in _code_lines(text)]


TEXTS = {name: (ROOT / name).read_text() for name in DOCS}
LINES = _documented(TEXTS)


def test_the_docs_show_commands():
    """The extraction finds the README's command blocks (a test that parses nothing proves nothing)."""
    assert len(LINES) >= 40
    groups = {_command(line.split()[1:])[0][0] for _, _, line in LINES}
    assert {"template", "cost", "train", "runs", "export", "search", "network", "spectra", "truncate"} <= groups


@pytest.mark.parametrize("where,number,line", LINES, ids=[f"{w}:{n}" for w, n, _ in LINES])
def test_a_documented_command_line_parses(where, number, line):
    for command in _expand(line):
        words = _fill(shlex.split(command))[1:]
        path, p = _command(words)
        assert path, f"{where}:{number}: {command!r} names no command"
        try:
            PARSER.parse_args(words)
        except SystemExit:
            pytest.fail(f"{where}:{number}: the parser refuses {command!r}")


COMMENTED = [(w, n, line) for w, n, line in LINES if "#" in line]


@pytest.mark.parametrize("where,number,line", COMMENTED, ids=[f"{w}:{n}" for w, n, _ in COMMENTED])
def test_flags_named_in_a_commands_comment_exist(where, number, line):
    path, p = _command(line.split()[1:])
    comment = line.split("#", 1)[1]
    named = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", comment))
    assert named <= _flags(p), f"{where}:{number}: `tnstudio {' '.join(path)}` has no {sorted(named - _flags(p))}"


def _quoted() -> list[tuple[str, int, str]]:
    out = []
    for name, text in TEXTS.items():
        for n, line in enumerate(text.splitlines(), 1):
            for m in re.finditer(r"`(tnstudio [^`]+)`", line):
                out.append((name, n, m[1]))
    return out


QUOTED = _quoted()


@pytest.mark.parametrize("where,number,quote", QUOTED, ids=[f"{w}:{n}" for w, n, _ in QUOTED])
def test_commands_quoted_in_the_prose_exist_with_their_flags(where, number, quote):
    words = quote.split()[1:]
    path, p = _command(words)
    if words and words[0] not in ("COMMAND", "--help"):
        assert path, f"{where}:{number}: `{quote}` names no command"
    flags = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", quote))
    assert flags <= _flags(p), f"{where}:{number}: `tnstudio {' '.join(path)}` has no {sorted(flags - _flags(p))}"


def _python_imports() -> list[tuple[str, int, str]]:
    out = []
    for name, text in TEXTS.items():
        in_python = False
        for n, line in enumerate(text.splitlines(), 1):
            if line.startswith("```"):
                in_python = line.strip() == "```python"
                continue
            if in_python and re.match(r"(from \S+ import .+|import \S+)$", line.split("#")[0].strip()):
                out.append((name, n, line.split("#")[0].strip()))
    return out


IMPORTS = _python_imports()


def test_the_python_examples_import_what_exists():
    """The README's Python examples import names the engine has (run in a fresh namespace)."""
    assert len(IMPORTS) >= 5
    for where, number, line in IMPORTS:
        try:
            exec(line, {})  # noqa: S102 - a fixed import line from the repository's own README
        except ImportError as e:
            pytest.fail(f"{where}:{number}: {line!r}: {e}")


@pytest.mark.parametrize("name", DOCS)
def test_every_table_row_is_one_line(name):
    """A Markdown table row is one line: a row wrapped like prose (as an edit once did to the README's goal table)
    ends the table there and shows the rest as text. Outside code blocks, a line that starts a row ends it, and a
    table's rows have as many cells as its header."""
    rows, header, fenced = [], None, False
    for number, line in enumerate(TEXTS[name].splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.startswith("|"):
            assert line.rstrip().endswith("|"), f"{name}:{number}: a table row wrapped onto the next line"
            cells = len(re.findall(r"(?<!\\)\|", line)) - 1
            header = cells if header is None else header
            rows.append((number, cells))
            assert cells == header, f"{name}:{number}: {cells} cells, the table's header has {header}"
        else:
            header = None
    assert rows or name != "README.md"
