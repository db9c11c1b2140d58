"""The ``tnstudio`` command line: templates, validation, cost, training, runs, export and the studio server.

Each command is a ``cmd_<name>(args) -> int`` function registered in :func:`build_parser`. Errors users can cause
(bad files, invalid designs, wrong arguments) print one clear message and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from .design import DesignError, load_design, save_design


class UserError(Exception):
    """A problem with the user's input: printed without a traceback, exit status 2."""


def _load(path: str):
    try:
        return load_design(path)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except DesignError as e:
        raise UserError(f"{path}: invalid design:\n" + "\n".join(f"  - {p}" for p in e.problems)) from None


def _factors(text: str | None) -> list[int] | None:
    from .factorize import parse_factors

    try:
        return parse_factors(text)
    except ValueError as e:
        raise UserError(str(e)) from None


# ----------------------------------------------------------------------------- template
def cmd_template(args: argparse.Namespace) -> int:
    from .templates import make_template

    bond: int | list[int] = args.bond
    if isinstance(args.bond, str):
        vals = _factors(args.bond) or [4]
        bond = vals[0] if len(vals) == 1 else vals
    try:
        d = make_template(args.kind, args.in_features, args.out_features, bond, args.activation,
                          _factors(args.in_factors), _factors(args.out_factors), name=args.name)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.output:
        save_design(d, args.output)
        print(f"wrote {args.output}: {d.name}, {len(d.tensors)} tensors, {d.params:,} params "
              f"({d.compression:,.1f}x compression)")
    else:
        print(d.to_json())
    return 0


# ----------------------------------------------------------------------------- validate
def cmd_validate(args: argparse.Namespace) -> int:
    _load(args.file)
    print("ok")
    return 0


# ----------------------------------------------------------------------------- cost
def cmd_cost(args: argparse.Namespace) -> int:
    from .cost import cost_report, format_report

    d = _load(args.file)
    try:
        rep = cost_report(d, batch=args.batch, dtype=args.dtype, schedule=args.schedule, search=args.search,
                          time_budget=args.budget)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


# ----------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from studio.app import serve

    serve(port=args.port, address=args.address, show=args.show)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    from .templates import TEMPLATE_KINDS

    p = argparse.ArgumentParser(prog="tnstudio", description="TN Studio: design, cost, train and export "
                                "tensor-network layers.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("template", help="write a template design (mpo, tensor_ring, tucker, cp, ttn, attn, mera)")
    t.add_argument("kind", help=f"one of {', '.join(TEMPLATE_KINDS)}")
    t.add_argument("--in", dest="in_features", type=int, required=True, help="in_features of the layer")
    t.add_argument("--out", dest="out_features", type=int, required=True, help="out_features of the layer")
    t.add_argument("--bond", default="4", help="bond dimension (mpo/tensor_ring: one value or a comma list)")
    t.add_argument("--activation", default=None, help="activation for nonlinear designs (ttn, attn, mera, mpo)")
    t.add_argument("--in-factors", default=None, help="factorisation of in_features, e.g. 8,8,8,8")
    t.add_argument("--out-factors", default=None, help="factorisation of out_features")
    t.add_argument("--name", default=None, help="design name")
    t.add_argument("-o", "--output", default=None, help="output JSON file (default: print)")
    COMMANDS["template"] = cmd_template

    v = sub.add_parser("validate", help="check a design file; exit 0 and 'ok', or 2 with the problems")
    v.add_argument("file")
    COMMANDS["validate"] = cmd_validate

    c = sub.add_parser("cost", help="parameters, FLOPs, memory and contraction path of a design")
    c.add_argument("file")
    c.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    c.add_argument("--dtype", default="float32", help="float32, float16, bfloat16 or float64")
    c.add_argument("--schedule", default="auto", choices=["auto", "materialise", "stream"])
    c.add_argument("--search", default="fast", choices=["fast", "thorough"],
                   help="path search effort (thorough adds cotengra's hyper-optimiser)")
    c.add_argument("--budget", type=float, default=2.0,
                   help="seconds per network for cotengra with --search thorough (default 2)")
    c.add_argument("--json", action="store_true", help="print JSON")
    COMMANDS["cost"] = cmd_cost

    s = sub.add_parser("serve", help="start the studio in the browser")
    s.add_argument("--port", type=int, default=5006)
    s.add_argument("--address", default="127.0.0.1")
    s.add_argument("--show", action="store_true", help="open a browser window")
    COMMANDS["serve"] = cmd_serve

    for register in _EXTRA:
        register(sub, COMMANDS)
    return p


# Commands defined in other modules register here: each is f(subparsers, COMMANDS).
_EXTRA: list[Callable] = []


def _register_extras() -> None:
    from . import cli_export, cli_train  # imported here: they import from this module

    for m in (cli_train, cli_export):
        if m.register not in _EXTRA:  # main() may run several times in one process (tests)
            _EXTRA.append(m.register)


# Commands that never touch torch: they skip registering train/runs/export, whose option lists import torch.
LIGHT_COMMANDS = ("template", "validate", "cost", "serve")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in LIGHT_COMMANDS:
        _register_extras()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
