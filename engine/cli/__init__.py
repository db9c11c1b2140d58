"""The ``tnstudio`` command line.

Each command lives in a module of this package with a ``register(subparsers)`` function that adds its parser and
sets ``handler``; :func:`build_parser` calls them in :data:`COMMAND_MODULES` order. Other packages add commands
through the ``tnstudio.commands`` entry-point group (the studio adds ``serve`` that way, so the engine never
imports the UI). Errors users can cause print one line and exit with status 2: :class:`UserError`, a damaged or
foreign run store (:class:`engine.train.store.StoreError`), and stdout closed early (``tnstudio cost F | head``).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from importlib.metadata import entry_points

from engine.cli.common import UserError
from engine.files import PathError
from engine.format import clip_quotes
from engine.train.store import StoreError

COMMAND_MODULES = ("engine.cli.design", "engine.cli.train", "engine.cli.runs", "engine.cli.export",
                   "engine.cli.analysis", "engine.cli.search", "engine.cli.network")
ENTRY_POINT_GROUP = "tnstudio.commands"

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # a write failed: no space, a size limit, a quota


def build_parser() -> argparse.ArgumentParser:
    """The full ``tnstudio`` parser: the engine's commands, then those other packages register."""
    p = argparse.ArgumentParser(prog="tnstudio", description="TN Studio: design, cost, train and export "
                                "tensor-network layers.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        ep.load()(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        if isinstance(getattr(args, "run", None), str) and not args.run.strip():  # "" is no run, not "no --run"
            raise UserError(f"--run: give a run id (or the start of one), got {args.run!r}")
        rc = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except (UserError, StoreError, PathError) as e:  # one line, whatever a message quotes (a library's own words)
        text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
        print("error: " + clip_quotes(text), file=sys.stderr)
        return 2
    except BrokenPipeError:
        _discard_stdout()
        print("error: the output was closed before it was all written (broken pipe)", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        # a write the command does not make itself (e.g. numba's cache, written on quimb's first import)
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: cannot write: {e.strerror or e}{where}: free some disk space or raise the file size limit",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced (tests) or already gone
        pass


__all__ = ["UserError", "build_parser", "main"]
