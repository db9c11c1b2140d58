"""The ``tnstudio`` command line.

Each command lives in a module of this package with a ``register(subparsers)`` function that adds its parser and
sets ``handler``; :func:`build_parser` calls them in :data:`COMMAND_MODULES` order. Other packages add commands
through the ``tnstudio.commands`` entry-point group (the studio adds ``serve`` that way, so the engine never
imports the UI). Errors users can cause print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

from engine.cli.common import UserError

COMMAND_MODULES = ("engine.cli.design", "engine.cli.train", "engine.cli.runs", "engine.cli.export",
                   "engine.cli.analysis")
ENTRY_POINT_GROUP = "tnstudio.commands"


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
        return handler(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["UserError", "build_parser", "main"]
