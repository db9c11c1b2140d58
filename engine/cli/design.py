"""``tnstudio template``, ``validate`` and ``cost``: commands on design files, linear or conv2d targets (none of them
imports torch)."""
from __future__ import annotations

import argparse
import json

from engine.cli.common import UserError, cannot_write, output_file, read_design, read_factors
from engine.design.model import save_design
from engine.format import int_list


def cmd_template(args: argparse.Namespace) -> int:
    from engine.design.templates import TEMPLATE_OPTIONS, make_template

    vals = read_factors(args.bond, "--bond")
    in_f, out_f = read_factors(args.in_factors, "--in-factors"), read_factors(args.out_factors, "--out-factors")
    if not vals:  # --bond '' (or ',') named no bond: say so rather than take the default
        raise UserError(f"--bond needs a bond dimension or a comma list of them, got {args.bond!r}")
    bond: int | list[int] = vals[0] if len(vals) == 1 else vals
    options = {o.name: getattr(args, o.name) for o in TEMPLATE_OPTIONS if getattr(args, o.name) is not None}
    conv_flags = [f"--{k}" for k in ("stride", "padding", "dilation", "image") if getattr(args, k) is not None]
    try:
        if args.kernel is not None:  # a conv2d target: --in/--out are channels
            from engine.design.conv import make_conv_template

            d = make_conv_template(args.kind, args.in_features, args.out_features, _pair_arg(args.kernel, "kernel"),
                                   bond, args.activation, in_f, out_f, stride=_pair_arg(args.stride, "stride", 1),
                                   padding=_pair_arg(args.padding, "padding", 0),
                                   dilation=_pair_arg(args.dilation, "dilation", 1), name=args.name,
                                   image=args.image, **options)
        elif conv_flags:
            verb = "applies" if len(conv_flags) == 1 else "apply"
            raise UserError(f"{', '.join(conv_flags)} {verb} to conv layers: add --kernel K (then --in and --out are "
                            f"channels)")
        else:
            d = make_template(args.kind, args.in_features, args.out_features, bond, args.activation, in_f, out_f,
                              name=args.name, **options)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.output:
        out = output_file(args.output, "layer.json")
        try:
            save_design(d, out)
        except OSError as e:
            raise cannot_write(out, e) from None
        print(f"wrote {args.output}: {d.name}, {len(d.tensors)} tensors, {d.params:,} params "
              f"({d.compression:,.1f}x compression)")
    else:
        print(d.to_json())
    return 0


def _pair_arg(text: str | None, what: str, default: int | None = None) -> int | tuple[int, int]:
    """``"3"`` -> 3, ``"3,5"`` (or ``3x5``) -> (3, 5); bad text is a :class:`UserError`."""
    if text is None:
        assert default is not None
        return default
    try:
        vals = int_list(str(text), ",x*")
    except ValueError:
        vals = []
    if len(vals) not in (1, 2):  # the ranges (padding from 0, the others from 1) are the conv target's to check
        raise UserError(f"--{what} must be an integer or H,W, got {text!r}")
    return vals[0] if len(vals) == 1 else (vals[0], vals[1])


def cmd_validate(args: argparse.Namespace) -> int:
    read_design(args.file)
    print("ok")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from engine.contract.cost import cost_report

    d = read_design(args.file)
    try:
        if d.conv is not None and args.memory_budget is not None:
            raise UserError(f"--memory-budget applies to linear targets; {args.file} has a conv2d target")
        if d.conv is not None:
            from engine.contract.conv import conv_cost_report

            rep = conv_cost_report(d, batch=args.batch, image=args.image, dtype=args.dtype, schedule=args.schedule,
                                   search=args.search, time_budget=args.budget)
        elif args.image is not None:
            raise UserError(f"--image applies to conv2d designs; {args.file} has a linear target")
        else:
            rep = cost_report(d, batch=args.batch, dtype=args.dtype, schedule=args.schedule, search=args.search,
                              time_budget=args.budget, memory_budget=args.memory_budget)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.format())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from engine.contract.conv import CONV_SCHEDULE_CHOICES
    from engine.contract.paths import SEARCHES
    from engine.contract.schedule import SCHEDULE_CHOICES
    from engine.design.templates import TEMPLATE_KINDS, TEMPLATE_OPTIONS, option_kinds

    t = sub.add_parser("template", help=f"write a template design ({', '.join(TEMPLATE_KINDS)})")
    t.add_argument("kind", help=f"one of {', '.join(TEMPLATE_KINDS)}")
    t.add_argument("--in", dest="in_features", type=int, required=True,
                   help="in_features of the layer (with --kernel: input channels)")
    t.add_argument("--out", dest="out_features", type=int, required=True,
                   help="out_features of the layer (with --kernel: output channels)")
    t.add_argument("--kernel", default=None, metavar="K|KH,KW",
                   help="a conv2d target with this kernel size (nn.Conv2d's weight; --in/--out are channels)")
    t.add_argument("--stride", default=None, metavar="S|SH,SW", help="conv stride (default 1)")
    t.add_argument("--padding", default=None, metavar="P|PH,PW", help="conv zero padding (default 0)")
    t.add_argument("--dilation", default=None, metavar="D|DH,DW", help="conv dilation (default 1)")
    t.add_argument("--image", default=None, metavar="H|H,W",
                   help="conv: the input size `tnstudio cost` uses by default (recorded in the design's meta)")
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
    c.add_argument("--schedule", default="auto", choices=tuple(dict.fromkeys(SCHEDULE_CHOICES + CONV_SCHEDULE_CHOICES)),
                   help="auto (the cheapest), materialise or stream; conv designs also name a program: "
                        f"{', '.join(CONV_SCHEDULE_CHOICES[3:])}")
    c.add_argument("--image", default=None, metavar="H|H,W",
                   help="conv2d designs: the input image size (default: the design's meta image, else 32)")
    c.add_argument("--search", default="fast", choices=SEARCHES,
                   help="path search effort (thorough adds cotengra's hyper-optimiser)")
    c.add_argument("--budget", type=float, default=2.0,
                   help="--search thorough: wall-time seconds of the whole search (both schedules share it), above "
                        "0 and at most 3600 (default 2)")
    c.add_argument("--memory-budget", default=None, metavar="BYTES",
                   help="bytes a training step may take, e.g. 2GiB or 512MiB (linear targets): the generation is "
                        "sliced and recomputed in backward when nothing else fits")
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(handler=cmd_cost)
