"""``tnstudio template``, ``validate`` and ``cost``: commands on design files (none of them imports torch)."""
from __future__ import annotations

import argparse
import json

from engine.cli.common import UserError, cannot_write, output_file, read_design, read_factors
from engine.design.model import save_design


def cmd_template(args: argparse.Namespace) -> int:
    from engine.design.templates import TEMPLATE_OPTIONS, make_template

    vals = read_factors(args.bond) or [4]
    bond: int | list[int] = vals[0] if len(vals) == 1 else vals
    options = {o.name: getattr(args, o.name) for o in TEMPLATE_OPTIONS if getattr(args, o.name) is not None}
    try:
        d = make_template(args.kind, args.in_features, args.out_features, bond, args.activation,
                          read_factors(args.in_factors), read_factors(args.out_factors), name=args.name, **options)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.output:
        out = output_file(args.output)
        try:
            save_design(d, out)
        except OSError as e:
            raise cannot_write(out, e) from None
        print(f"wrote {args.output}: {d.name}, {len(d.tensors)} tensors, {d.params:,} params "
              f"({d.compression:,.1f}x compression)")
    else:
        print(d.to_json())
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    read_design(args.file)
    print("ok")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from engine.contract.cost import cost_report

    d = read_design(args.file)
    try:
        rep = cost_report(d, batch=args.batch, dtype=args.dtype, schedule=args.schedule, search=args.search,
                          time_budget=args.budget)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.format())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from engine.contract.paths import SEARCHES
    from engine.contract.schedule import SCHEDULE_CHOICES
    from engine.design.templates import TEMPLATE_KINDS, TEMPLATE_OPTIONS, option_kinds

    t = sub.add_parser("template", help=f"write a template design ({', '.join(TEMPLATE_KINDS)})")
    t.add_argument("kind", help=f"one of {', '.join(TEMPLATE_KINDS)}")
    t.add_argument("--in", dest="in_features", type=int, required=True, help="in_features of the layer")
    t.add_argument("--out", dest="out_features", type=int, required=True, help="out_features of the layer")
    t.add_argument("--bond", default="4", help="bond dimension (mpo/tensor_ring: one value or a comma list)")
    t.add_argument("--activation", default=None, help="activation for nonlinear designs (ttn, attn, mera, mpo)")
    t.add_argument("--in-factors", default=None, help="factorisation of in_features, e.g. 8,8,8,8")
    t.add_argument("--out-factors", default=None, help="factorisation of out_features")
    for o in TEMPLATE_OPTIONS:  # options declared with the registered templates (e.g. --lateral)
        t.add_argument(f"--{o.name}", default=None, metavar="|".join(o.choices) + ("|LEVELS" if o.levels else ""),
                       help=f"{', '.join(option_kinds(o))}: {o.help}")
    t.add_argument("--name", default=None, help="design name")
    t.add_argument("-o", "--output", default=None, help="output JSON file (default: print)")
    t.set_defaults(handler=cmd_template)

    v = sub.add_parser("validate", help="check a design file; exit 0 and 'ok', or 2 with the problems")
    v.add_argument("file")
    v.set_defaults(handler=cmd_validate)

    c = sub.add_parser("cost", help="parameters, FLOPs, memory and contraction path of a design")
    c.add_argument("file")
    c.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    c.add_argument("--dtype", default="float32", help="float32, float16, bfloat16 or float64")
    c.add_argument("--schedule", default="auto", choices=SCHEDULE_CHOICES)
    c.add_argument("--search", default="fast", choices=SEARCHES,
                   help="path search effort (thorough adds cotengra's hyper-optimiser)")
    c.add_argument("--budget", type=float, default=2.0,
                   help="seconds per network for cotengra with --search thorough, above 0 and at most 3600 "
                        "(default 2)")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(handler=cmd_cost)
