"""``tnstudio network``: whole networks (architecture + per-layer designs), and the network side of ``train`` and
``export``.

Examples::

    tnstudio network list                                          # the architecture catalogue
    tnstudio network new vgg16 -o v.json                           # torchvision's VGG-16, every layer dense
    tnstudio network new mlp --dataset mnist1d -o m.json           # input shape and classes from the data set
    tnstudio network new mypkg.models:make_net --input 3,32,32 -o n.json --option width=64
    tnstudio network assign v.json --rule "linear:ttn:4:gelu"      # bulk rule (appended; rules apply in order)
    tnstudio network assign v.json --layer classifier.6 --design fc8.json   # per-layer override (inline copy)
    tnstudio network assign v.json --layer classifier.6 --dense    # or back to dense; --clear: the rules decide
    tnstudio network show v.json                                   # assignable layers and what each gets
    tnstudio network cost v.json --batch 1 [--json]                # per-layer rows and totals
    tnstudio train m.json --dataset mnist1d --epochs 20 --baseline # train the whole network (and all-dense)
    tnstudio export m.json --to torch -o m.py [--run ID]           # torch-only module file (+ m.pt)

Under torchrun (``torchrun --nproc-per-node 2 -m engine.cli train m.json ...``) ``tnstudio train`` trains in the
launched processes as their ranks instead of starting its own (:func:`torchrun_train`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from engine.cli.common import UserError, read_design, read_factors
from engine.format import printable

if TYPE_CHECKING:
    from engine.design.model import Design
    from engine.network.format import NetworkSpec
    from engine.train.config import RunConfig


def read_network(path: str, check: bool = True) -> NetworkSpec:
    """Load a network file; with ``check``, also resolve its rules and layers against the built architecture
    (meta device). Every problem becomes a :class:`UserError` listing them."""
    from engine.network.format import NetworkError, load_network

    try:
        spec = load_network(path)
        if check:
            _resolve(spec)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except NetworkError as e:
        raise UserError(_problems(path, e.problems)) from None
    except ValueError as e:  # CatalogueError, RuleError from building
        raise UserError(f"{path}: {e}") from None
    return spec


def _problems(path: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{path}: invalid network: {problems[0]}"
    return f"{path}: invalid network ({len(problems)} problems):\n" + "\n".join(f"  - {p}" for p in problems)


def _infos(spec: NetworkSpec) -> list[Any]:
    """The network's assignable layers (the analysis is cached per architecture)."""
    from engine.network.analysis import analyse

    return list(analyse(spec).layers)


def _resolve(spec: NetworkSpec) -> dict[str, Any]:
    from engine.network.format import resolve

    return resolve(spec, _infos(spec))


def _save(spec: NetworkSpec, path: str) -> None:
    from engine.network.format import save_network

    try:
        save_network(spec, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- new / list
def cmd_list(args: argparse.Namespace) -> int:
    from engine.network.catalogue import architectures

    for a in architectures():
        opts = ", ".join(f"{o.name}={json.dumps(o.default)}" for o in a.options)
        print(f"{a.name:<12} {a.title}: {a.description}")
        print(f"{'':<12} input {list(a.input_shape)}, {a.num_classes} classes"
              + (f"; options: {opts}" if opts else "") + (" (torchvision)" if a.source == "torchvision" else ""))
    print("or a model by import path: package.module:factory (factory(**options) returns the nn.Module; give "
          "--input)")
    return 0


def _options(arch: str, texts: list[str]) -> dict[str, Any]:
    from engine.network.catalogue import CatalogueError, architecture

    out: dict[str, Any] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {text!r}: write KEY=VALUE, e.g. hidden=256,256")
        key = key.strip()
        if key in out:
            raise UserError(f"--option {key} is given twice: give each option once")
        if ":" in arch:  # a user factory: JSON values when they parse, else the text
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
            continue
        try:
            out[key] = architecture(arch).option(key).parse_text(value)
        except CatalogueError as e:
            raise UserError(str(e)) from None
    return out


def cmd_new(args: argparse.Namespace) -> int:
    from engine.network.format import NetworkError, new_network

    try:
        shape = read_factors(args.input) if args.input is not None else None
    except UserError:
        shape = None
    if args.input is not None and not shape:
        raise UserError(f"--input must be the shape of one example, integers >= 1 separated by commas (e.g. 3,32,32), "
                        f"got {args.input!r}")
    classes = args.classes
    if args.dataset:
        from engine.train.data import DataError, dataset_spec

        try:
            ds = dataset_spec(args.dataset)
        except DataError as e:
            raise UserError(str(e)) from None
        shape = shape or list(ds.input_shape)
        classes = classes or ds.num_outputs
    try:
        spec = new_network(args.arch, shape, classes, _options(args.arch, args.option or []), name=args.name)
        _resolve(spec)  # builds it (meta device): a bad option or input shape shows now
    except NetworkError as e:
        raise UserError(_problems(args.arch, e.problems)) from None
    except ValueError as e:
        raise UserError(str(e)) from None
    _save(spec, args.output)
    from engine.network.analysis import analyse

    an = analyse(spec)
    print(f"wrote {args.output}: {spec.architecture.label}, input {list(spec.resolved_input_shape)}, "
          f"{an.dense_params:,} params, {len(an.layers)} assignable layers")
    return 0


# ----------------------------------------------------------------------------- assign / show
def cmd_assign(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from engine.network.format import NetworkError
    from engine.network.rules import RuleError, growth_warning, unmatched_warning

    spec = read_network(args.file)
    if not (args.rule or args.layer or args.clear_rules):
        raise UserError("give --rule RULE, --layer NAME with --design FILE / --dense / --clear, or --clear-rules")
    if args.layer is None and (args.design or args.dense or args.clear):
        raise UserError("--design, --dense and --clear need --layer NAME")
    if args.layer is not None and sum(map(bool, (args.design, args.dense, args.clear))) != 1:
        raise UserError("--layer NAME needs exactly one of --design FILE, --dense or --clear")
    try:
        if args.clear_rules:
            spec = replace(spec, rules=())
        if args.rule:
            spec = spec.with_rules(args.rule)
        if args.layer is not None:
            if args.clear:
                spec = spec.without_layer(args.layer)
            elif args.dense:
                spec = spec.with_layer(args.layer, None)
            else:
                design = read_design(args.design)
                path = None
                if args.by_path:
                    import os

                    path = os.path.relpath(os.path.abspath(args.design), spec.base_dir or ".")
                spec = spec.with_layer(args.layer, design, path)
        res = _resolve(spec)
    except RuleError as e:
        raise UserError(str(e)) from None
    except NetworkError as e:
        raise UserError(_problems(args.file, e.problems)) from None
    out = args.output or args.file
    _save(spec, out)
    tn = sum(1 for r in res.values() if r.design is not None)
    print(f"wrote {out}: {len(spec.rules)} rule(s), {len(spec.layers)} layer override(s); {tn} of {len(res)} "
          f"layers are TN")
    for warning in (unmatched_warning(args.rule or [], _infos(spec)), growth_warning(res)):
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from engine.network.analysis import analyse
    from engine.network.format import resolve

    spec = read_network(args.file)
    an = analyse(spec)
    res = resolve(spec, an.layers)
    rows = [{"name": i.name, "kind": i.kind, "shape": i.shape, "rows": i.rows,
             "assignment": "dense" if res[i.name].design is None else res[i.name].design.name,
             "source": res[i.name].source} for i in an.layers]
    if args.json:
        print(json.dumps({"name": spec.name, "architecture": spec.architecture.label,
                          "input_shape": list(spec.resolved_input_shape), "rules": list(spec.rules),
                          "layers": rows}, indent=2))
        return 0
    print(f"{spec.name}: {spec.architecture.label}, input {list(spec.resolved_input_shape)}, "
          f"{spec.resolved_num_classes} classes, {an.dense_params:,} params (dense)")
    for n, r in enumerate(spec.rules, 1):
        print(f"rule {n}: {r}")
    shown = [(printable(r["name"]), printable(r["assignment"])) for r in rows]  # one line per layer, whatever its name
    w = max((len(name) for name, _ in shown), default=4)
    for r, (name, assignment) in zip(rows, shown):
        print(f"  {name:<{w}}  {r['kind']:<9}  {r['shape']:<22}  {assignment}  ({r['source']})")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from engine.network.report import network_report

    spec = read_network(args.file)
    from engine.design.model import MAX_DIM

    if not 1 <= args.batch <= MAX_DIM:  # as `tnstudio cost` (a batch is a dimension: at most 2^31 - 1)
        raise UserError(f"--batch must be an integer from 1 to {MAX_DIM}, got {args.batch}")
    try:
        rep = network_report(spec, batch=args.batch, dtype=args.dtype)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.format(all_rows=args.all))
    return 0


# ----------------------------------------------------------------------------- train and export hooks
def run_config(args: argparse.Namespace, spec: NetworkSpec) -> RunConfig:
    """The run config of ``tnstudio train NETWORK.json`` (the options the train command shares)."""
    from engine.train.config import ConfigError
    from engine.train.networks import network_config

    if args.hidden or args.layer is not None or args.model not in ("mlp", "network"):
        raise UserError("--model, --hidden and --layer describe the single-layer models: a network file brings its "
                        "own architecture")
    try:
        return network_config(spec, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                              batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                              device=args.device, amp=args.amp, compile=args.compile, seed=args.seed,
                              nproc=args.nproc, eval_every=args.eval_every)
    except ConfigError as e:
        raise UserError(str(e)) from None
    except ValueError as e:
        raise UserError(str(e)) from None


def torchrun_train(config: RunConfig, design: Design | None, args: argparse.Namespace, name: str | None) -> int:
    """``tnstudio train`` inside torchrun: rank 0 checks and records the run, every rank trains it."""
    from engine.train.launcher import check_launch
    from engine.train.loop import torchrun_main

    def create(store) -> str:
        cfg, d, _ = check_launch(config, design)
        return store.create_run(cfg, d, name=name)

    try:
        run = torchrun_main(None, args.runs_dir, create=create)
    except ValueError as e:
        raise UserError(str(e)) from None
    if run is None:
        return 0
    from engine.cli.train import finish_line

    print(json.dumps(run, indent=2) if args.json else finish_line(run))
    return 0 if run["status"] in ("completed", "stopped") else 1


def export_network_cli(args: argparse.Namespace) -> int:
    """``tnstudio export NETWORK.json --to torch -o net.py [--run ID | --weights F]``."""
    from pathlib import Path

    from engine.network.export import ExportError, export_network
    from engine.network.format import NetworkSpec

    if args.to != "torch":
        raise UserError(f"a network exports --to torch (a torch-only module file), not {args.to!r}")
    if not args.output:
        raise UserError("exporting a network needs -o OUT.py (weights go beside it as OUT.pt)")
    spec = read_network(args.file) if args.file else None
    state, source = None, ""
    if args.run:
        from engine.cli.export import run_weights

        state, run = run_weights(args.run, args.runs_dir)
        net = (run.get("config") or {}).get("network")
        if net is None:
            raise UserError(f"run {run['id']} did not train a network: export its design with tnstudio export")
        if (run.get("config") or {}).get("baseline"):
            raise UserError(f"run {run['id']} trained the dense baseline: its weights do not fit the TN network")
        spec = NetworkSpec.from_dict(net)  # exactly what the run trained
        source = f"run {run['id']} ({run['name']}, {run['status']})"
    elif args.weights:
        from engine.cli.common import load_state_file

        state, source = load_state_file(args.weights), Path(args.weights).name
    if spec is None:
        raise UserError("give a network file (or --run ID of a network run)")
    try:
        written = export_network(spec, args.output, state, source=source)
    except ExportError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot write {args.output}: {e.strerror or e}") from None
    for p in written:
        print(f"wrote {p}")
    return 0


# ----------------------------------------------------------------------------- registration
def register(sub: argparse._SubParsersAction) -> None:
    n = sub.add_parser("network", help="whole networks: an architecture with a design (or dense) per layer",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ns = n.add_subparsers(dest="network_command", metavar="SUBCOMMAND")
    n.set_defaults(handler=lambda args: (n.print_help(), 0)[1])

    li = ns.add_parser("list", help="the architecture catalogue")
    li.set_defaults(handler=cmd_list)

    new = ns.add_parser("new", help="a network file for an architecture, every layer dense")
    new.add_argument("arch", help="a catalogue name (tnstudio network list) or package.module:factory")
    new.add_argument("-o", "--output", required=True, help="the network file to write")
    new.add_argument("--dataset", default=None, help="take input shape and classes from this data set")
    new.add_argument("--input", default=None, help="input shape per example, e.g. 3,32,32 (default: the "
                     "architecture's)")
    new.add_argument("--classes", type=int, default=None, help="number of outputs (default: the architecture's)")
    new.add_argument("--option", action="append", metavar="KEY=VALUE", help="an architecture option, e.g. "
                     "hidden=256,256 (repeatable)")
    new.add_argument("--name", default=None, help="network name (default: the architecture)")
    new.set_defaults(handler=cmd_new)

    a = ns.add_parser("assign", help="bulk rules and per-layer designs (the file is rewritten, or -o)")
    a.add_argument("file")
    a.add_argument("--rule", action="append", metavar="RULE",
                   help="SELECTOR:TEMPLATE[:BOND[:ACTIVATION]][:key=value], e.g. linear:ttn:4:gelu or "
                        "linear:ttn:4:gelu:min=1000000 (repeatable; appended, later rules win)")
    a.add_argument("--layer", default=None, help="a layer name (tnstudio network show lists them)")
    a.add_argument("--design", default=None, help="with --layer: this design file (copied inline)")
    a.add_argument("--by-path", action="store_true", help="with --design: store the file's path, not a copy")
    a.add_argument("--dense", action="store_true", help="with --layer: make it dense")
    a.add_argument("--clear", action="store_true", help="with --layer: remove its override (rules decide)")
    a.add_argument("--clear-rules", action="store_true", help="remove every rule first")
    a.add_argument("-o", "--output", default=None, help="write here instead of rewriting the file")
    a.set_defaults(handler=cmd_assign)

    s = ns.add_parser("show", help="the assignable layers and what each gets")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_show)

    c = ns.add_parser("cost", help="the whole-network report: per-layer params, FLOPs, memory and totals")
    c.add_argument("file")
    c.add_argument("--batch", type=int, default=1, help="examples per forward pass (default 1)")
    c.add_argument("--dtype", default="float32", help="float32, float16, bfloat16 or float64")
    c.add_argument("--all", action="store_true", help="list every module with parameters (norms, ...) too")
    c.add_argument("--json", action="store_true", help="print JSON: layers (rows) and totals")
    c.set_defaults(handler=cmd_cost)
