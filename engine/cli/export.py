"""``tnstudio export``: write a design as a standalone PyTorch module, design JSON or engine snippet.

Examples::

    tnstudio export layer.json --to torch -o layer.py              # torch-only nn.Module
    tnstudio export layer.json --to torch -o layer.py --run 3      # ... plus layer.pt with run 3's trained weights
    tnstudio export layer.json --to snippet -o use_layer.py        # TNLinear(load_design(...)) + the design JSON
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.cli.common import UserError, cannot_write, load_state_file, output_file, read_design
from engine.nn.export import FORMATS, export_source, layer_state_dict, write_export


def run_weights(run_id: str, runs_dir: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model state dict of a run's checkpoint, and the run (with its design)."""
    from engine.train.store import RunNotFound, existing_store

    store = existing_store(runs_dir)
    try:
        run = store.get_run(run_id)
    except RunNotFound as e:
        raise UserError(f"{e}: `tnstudio runs` lists the runs") from None
    path = run.get("checkpoint")
    if not path or not Path(path).is_file():
        raise UserError(f"run {run['id']} ({run['status']}) has no checkpoint yet: its weights are saved at each "
                        f"evaluation and at the end")
    state = load_state_file(path)
    model = state.get("model", state)
    if not isinstance(model, dict):
        raise UserError(f"{path}: the checkpoint holds no model state dict")
    return model, run


def cmd_export(args: argparse.Namespace) -> int:
    from engine.design.model import Design, DesignError
    from engine.network.format import is_network_file

    if (args.file and is_network_file(args.file)) or (args.run and not args.file and _network_run(args)):
        from engine.cli.network import export_network_cli  # a whole network: one torch-only module file

        if args.memory_budget is not None:
            raise UserError("--memory-budget applies to one linear design (--to torch or snippet), not to a network")
        return export_network_cli(args)

    if args.run and args.weights:
        raise UserError("give either --run or --weights, not both")
    if not args.file and not args.run:
        raise UserError("give a design file (or --run ID to export the design a run trained)")
    if (args.run or args.weights) and not args.output:
        raise UserError("exporting weights needs -o OUT: the state dict is written beside it as OUT.pt")
    weights, source, run = None, "", None
    if args.run:
        state, run = run_weights(args.run, args.runs_dir)
        source = f"run {run['id']} ({run['name']}, {run['status']})"
    elif args.weights:
        state, source = load_state_file(args.weights), Path(args.weights).name
    if args.file:
        design = read_design(args.file)
    elif run.get("design"):
        try:
            design = Design.from_dict(run["design"])
        except DesignError as e:
            raise UserError(f"run {run['id']}: its design is invalid: {e}") from None
    else:
        raise UserError(f"run {run['id']} trained a dense model (no design): nothing to export")
    if args.run or args.weights:
        try:
            weights = layer_state_dict(state, design, args.layer)
        except ValueError as e:
            raise UserError(str(e)) from None
    out = output_file(args.output) if args.output else None
    try:
        if out is not None:
            written = write_export(design, args.to, out, weights, batch=args.batch, source=source,
                                   memory_budget=args.memory_budget)
            for p in written:
                print(f"wrote {p}")
        else:
            print(export_source(design, args.to, batch=args.batch, memory_budget=args.memory_budget), end="")
    except ValueError as e:  # DesignError, a batch out of range, a design too large to initialise (ResourceError)
        raise UserError(str(e)) from None
    except OSError as e:
        raise cannot_write(getattr(e, "filename", None) or out, e) from None
    return 0


def _network_run(args: argparse.Namespace) -> bool:
    from engine.train.store import RunNotFound, existing_store

    try:
        return (existing_store(args.runs_dir).get_run(args.run, with_design=False).get("config") or {}).get(
            "network") is not None
    except RunNotFound:
        return False


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser("export", help="export a design as a torch module, design JSON or engine snippet")
    e.add_argument("file", nargs="?", default=None, help="design JSON file (default with --run: the run's design), "
                   "or a network file: the whole network as one torch-only module (--to torch)")
    e.add_argument("--to", default="torch", choices=FORMATS,
                   help="torch: standalone nn.Module (torch only); json: the design; snippet: code using engine")
    e.add_argument("-o", "--output", default=None, help="output file (default: print)")
    e.add_argument("--run", default=None, help="also write this run's trained layer weights (OUT.pt); "
                   "an id prefix is enough")
    e.add_argument("--weights", default=None, help="also write the layer weights from this state dict file")
    e.add_argument("--layer", default=None,
                   help="prefix of the layer inside the weights (e.g. 'fc1.'; default: found by core names)")
    e.add_argument("--runs-dir", default=None, help="runs folder (default: <TNSTUDIO_HOME>/runs)")
    e.add_argument("--batch", type=int, default=64,
                   help="reference batch size for the stream contraction path (default 64)")
    e.add_argument("--memory-budget", default=None, metavar="BYTES",
                   help="--to torch: the programs that train within BYTES (e.g. 2GiB) at every batch and dtype, as "
                        "the engine plans them (per power-of-two bucket of batches); a plan that slices W's "
                        "generation is carried too (recomputed in backward); refused when none fits at --batch. "
                        "--to snippet: TNLinear(..., memory_budget=BYTES). Linear targets only")
    e.set_defaults(handler=cmd_export)
