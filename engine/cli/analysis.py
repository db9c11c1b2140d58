"""``tnstudio spectra``, ``truncate`` and ``features``: bonds of a trained layer as latent spaces.

Examples::

    tnstudio spectra --run 3f2a                      # every bond's singular values of run 3f2a's layer
    tnstudio spectra layer.json --weights layer.pt --json
    tnstudio truncate --run 3f2a --max-bond 4 -o small.json     # writes small.json and small.pt
    tnstudio truncate layer.json --weights layer.pt --tol 0.05 -o small.json
    tnstudio truncate --run 3f2a --tol 0.3 -o small.json --finetune 3   # then fine-tune as a child run of 3f2a
    tnstudio truncate --run 9c1d --layer fc2 --tol 0.3 -o small.json --finetune 3   # a network run's TN layer
    tnstudio features --run 3f2a --dataset digits    # per bond: variance, class means, linear probe

The design file may be left out with ``--run`` (the run's own design is used). Weights files are state dicts
(``tnstudio export --run``'s OUT.pt, a truncation's .pt, or a whole model's) holding the layer's ``cores.<id>``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from engine.cli.common import UserError, cannot_write, load_state_file, output_file, read_design


# --------------------------------------------------------------------- loading


def _layer(args: argparse.Namespace) -> tuple[Any, dict[str, Any], str]:
    """(design, the layer's state dict, where it came from) from FILE and --run / --weights."""
    from engine.analysis.runs import RunError, load_run_layer
    from engine.nn.export import layer_state_dict

    if bool(args.run) == bool(args.weights):
        raise UserError("give the weights with --run ID or --weights FILE (one of them)")
    design = read_design(args.file) if args.file else None
    if args.run:
        try:
            layer = load_run_layer(args.run, args.runs_dir, design, args.layer)
        except RunError as e:
            raise UserError(str(e)) from None
        where = f"{layer.module} of " if layer.module else ""
        return layer.design, layer.state, f"{where}run {layer.run_id} ({layer.name}, {layer.status})"
    if design is None:
        raise UserError("--weights needs the design file too: tnstudio COMMAND DESIGN.json --weights FILE")
    try:
        state = layer_state_dict(load_state_file(args.weights), design, args.layer)
    except ValueError as e:
        raise UserError(f"{args.weights}: {e}") from None
    return design, state, Path(args.weights).name


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v else "0"


# --------------------------------------------------------------------- spectra
def _check_tol(tol: float | None) -> None:
    """``--tol`` as truncate takes it: a finite number >= 0 (NaN, infinities and negatives refused up front)."""
    if tol is not None and not (tol >= 0 and math.isfinite(tol)):
        raise UserError(f"--tol must be a finite number >= 0, got {tol!r}")


def cmd_spectra(args: argparse.Namespace) -> int:
    from engine.analysis.spectra import bond_spectra

    _check_tol(args.tol)
    if args.show < 0:
        raise UserError(f"--show must be a number of values >= 0, got {args.show}")
    design, state, source = _layer(args)
    try:
        rep = bond_spectra(design, state)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(dict(rep.to_dict(args.tol), source=source), indent=2))
        return 0
    kind = ("nonlinear: the spectra of the fragments each tensor absorbs" if not rep.linear
            else "exact" if rep.exact else "approximate")
    norm = f", ||W|| = {rep.norm:.4g}" if rep.norm is not None else ""
    print(f"bond spectra of {design.name!r} from {source}: {kind}{norm} ({rep.seconds * 1e3:.0f} ms)")
    for note in rep.notes:
        print(f"  {note}")
    if not len(rep):
        print("  the design has no bonds")
        return 0
    print(f"{'bond':<10} {'dim':>5} {'rank':>5} {'used':>6} {'entropy':>8}  {'method':<12} values (largest first)")
    for s in rep:
        shown = " ".join(_fmt(v) for v in s.values[:args.show]) + (" ..." if len(s.values) > args.show else "")
        print(f"{s.bond:<10} {s.dim:>5} {s.effective_rank(args.tol):>5} {100 * s.used_fraction(args.tol):>5.0f}% "
              f"{s.entropy:>8.3f}  {s.method:<12} {shown}")
    print(f"rank: values kept for a relative tail <= {args.tol:g}; used: rank / dim; entropy in nats (max ln dim)")
    return 0


# --------------------------------------------------------------------- truncate
def _max_bond(text: str | None) -> int | dict[str, int] | None:
    """``"4"`` -> 4; ``"r0=2,r1=3"`` -> {"r0": 2, "r1": 3}."""
    if text is None:
        return None
    try:
        if "=" not in text:
            return int(text)
        out: dict[str, int] = {}
        for part in text.split(","):
            name, k = part.split("=")
            if name.strip() in out:
                raise UserError(f"--max-bond gives bond {name.strip()!r} twice ({text!r}): give each bond once")
            out[name.strip()] = int(k)
        return out
    except ValueError:
        raise UserError(f"--max-bond must be an integer or BOND=K,BOND=K (e.g. r0=2,r1=3), got {text!r}") from None


def cmd_truncate(args: argparse.Namespace) -> int:
    import torch

    from engine.analysis.truncate import truncate
    from engine.design.model import save_design
    from engine.files import atomic_write

    if args.max_bond is None and args.tol is None:
        raise UserError("give --max-bond K (or BOND=K,...) or --tol T (a relative error budget for W)")
    _check_tol(args.tol)
    if args.finetune is not None and not args.run:
        raise UserError("--finetune continues a training run: give the layer with --run ID")
    if args.finetune is not None and args.finetune < 1:
        raise UserError(f"--finetune needs a number of epochs >= 1, got {args.finetune}")
    out = output_file(args.output, "truncated.json")
    if out.suffix != ".json":
        raise UserError(f"-o must name a .json design file (the weights go beside it as .pt), got {args.output}")
    design, state, source = _layer(args)
    try:
        res = truncate(design, state, max_bond=_max_bond(args.max_bond), tol=args.tol)
    except ValueError as e:
        raise UserError(str(e)) from None
    weights_path = out.with_suffix(".pt")
    try:
        save_design(res.design, out)
        atomic_write(weights_path, lambda f: torch.save(res.state_dict(bias=state.get("bias")), f))
    except OSError as e:
        raise cannot_write(getattr(e, "filename", None) or out, e) from None
    child = _finetune(args, res) if args.finetune is not None else None
    if args.json:
        report = dict(res.to_dict(), source=source, design_file=str(out), weights_file=str(weights_path))
        if child is not None:
            report["finetune"] = child
        print(json.dumps(report, indent=2))
        return 0 if child is None or child["status"] in ("completed", "stopped", "queued", "running") else 1
    how = ("exact; equals the discarded tail" if res.method == "canonical"
           else "measured: W and W' formed; nonlinear tree, fragment rows kept" if res.error == "measured"
           else "estimated from Gaussian probes; nonlinear tree, fragment rows kept" if res.method == "fragment"
           else f"exact; gauge estimate {res.discarded_tail:.4g}")
    print(f"truncated {design.name!r} from {source}: params {res.params_before:,} -> {res.params_after:,} "
          f"({res.params_before / max(res.params_after, 1):.2f}x fewer), relative error ||W - W'|| / ||W|| = "
          f"{res.relative_error:.4g} ({how})")
    for b in res.bonds:
        if b.before != b.after:
            print(f"  {b.bond}: {b.before} -> {b.after}")
    print(f"wrote {out}")
    print(f"wrote {weights_path} (the layer's state dict{', with its bias' if 'bias' in state else ''})")
    if child is not None:
        _print_finetune(child)
        return 0 if child["status"] in ("completed", "stopped", "queued", "running") else 1
    return 0


def _finetune(args: argparse.Namespace, res: Any) -> dict[str, Any]:
    """Launch the fine-tuning child run; follow it unless ``--detach``. Returns what to report."""
    import sys

    from engine.analysis.finetune import finetune
    from engine.analysis.runs import RunError, get_run
    from engine.cli.train import follow

    parent = get_run(args.run, args.runs_dir)
    try:
        network = bool((parent.get("config") or {}).get("network"))  # --layer names its layer; else a prefix
        child_id = finetune(parent["id"], res, args.finetune, args.runs_dir, lr=args.lr,
                            layer=args.layer if network else None)
    except (RunError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.detach:
        run = get_run(child_id, args.runs_dir)
    else:
        run = follow(child_id, args.runs_dir, label=f"{child_id} (fine-tune)", out=sys.stderr)
    before = (parent.get("results") or {}).get("test_accuracy")
    after = (run.get("results") or {}).get("test_accuracy")
    return {"run": run["id"], "parent": parent["id"], "status": run["status"], "reason": run.get("reason"),
            "epochs": args.finetune, "parent_test_accuracy": before, "test_accuracy": after,
            "params_before": res.params_before, "params_after": res.params_after}


def _print_finetune(child: dict[str, Any]) -> None:
    if child["status"] in ("queued", "running"):
        print(f"fine-tuning as run {child['run']} (child of {child['parent']}): follow with tnstudio runs show "
              f"{child['run']}")
        return
    if child["status"] != "completed":
        print(f"fine-tune run {child['run']} {child['status']}: {child.get('reason') or ''}")
        return
    pct = (lambda v: "-" if v is None else f"{100 * v:.2f}%")
    print(f"fine-tuned {child['epochs']} epochs as run {child['run']} (child of {child['parent']}): test accuracy "
          f"{pct(child['test_accuracy'])} with {child['params_after']:,} core params, vs "
          f"{pct(child['parent_test_accuracy'])} with {child['params_before']:,} before truncation")


# --------------------------------------------------------------------- features
def cmd_features(args: argparse.Namespace) -> int:
    from engine.analysis.features import bond_features
    from engine.analysis.runs import RunError, load_run_model, run_layer_inputs

    if not args.run:
        raise UserError("features streams a run's data: give --run ID")
    if args.samples < 1:
        raise UserError(f"--samples must be a number of samples >= 1, got {args.samples}")
    design = read_design(args.file) if args.file else None
    try:
        loaded = load_run_model(args.run, args.runs_dir, design, args.layer)  # one read of the checkpoint
        layer = loaded[0]
        inputs = run_layer_inputs(layer.run_id, args.runs_dir, args.dataset, ("test", "train"), args.samples,
                                  layer_name=layer.module, loaded=loaded)
        ev, fit = inputs["test"], (inputs["train"] if inputs["test"].classification else None)
    except RunError as e:
        raise UserError(str(e)) from None
    try:
        rep = bond_features(layer.design, layer.state, ev.x, ev.labels if ev.classification else None,
                            fit=(fit.x, fit.labels) if fit is not None else None, probe=ev.classification)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(dict(rep.to_dict(), run=layer.run_id, dataset=ev.dataset), indent=2))
        return 0
    chance = f", chance {100 * rep.chance_accuracy:.1f}%" if rep.chance_accuracy is not None else ""
    print(f"bond features of {layer.design.name!r} (run {layer.run_id}) on {ev.dataset}: {rep.samples} test samples"
          + (f", probe fitted on {rep.fit_samples} training samples" if rep.fit_samples else "") + chance)
    print(f"{'bond':<10} {'dim':>5} {'units':>7} {'probe':>7}  variance share per component (largest first)")
    for b in rep.bonds:
        share = sorted(b.variance_share, reverse=True)
        shown = " ".join(f"{100 * v:.0f}%" for v in share[:8]) + (" ..." if len(share) > 8 else "")
        probe = "-" if b.probe_accuracy is None or math.isnan(b.probe_accuracy) else f"{100 * b.probe_accuracy:.1f}%"
        print(f"{b.bond:<10} {b.dim:>5} {b.group * b.dim:>7} {probe:>7}  {shown}")
    for bond, why in rep.not_carried.items():
        print(f"{bond:<10} not carried: {why}")
    print("units: entries of the stream state carrying the bond; --json adds per-class mean activations (heatmap)")
    return 0


# --------------------------------------------------------------------- parsers
def _weights_args(p: argparse.ArgumentParser, weights: bool = True) -> None:
    p.add_argument("file", nargs="?", default=None, help="design JSON file (default with --run: the run's design)")
    p.add_argument("--run", default=None, help="a training run's id (a prefix is enough): its trained layer")
    if weights:
        p.add_argument("--weights", default=None, help="a state dict file holding the layer's cores")
    p.add_argument("--layer", default=None,
                   help="prefix of the layer inside the weights (e.g. 'net.2.'; default: found by core names); a "
                        "network run's TN layer by module name (e.g. fc2; default: its only one)")
    p.add_argument("--runs-dir", default=None, help="runs folder (default: <TNSTUDIO_HOME>/runs)")


def register(sub: argparse._SubParsersAction) -> None:
    from engine.analysis.spectra import DEFAULT_TOL

    s = sub.add_parser("spectra", help="singular values, entropy and effective rank of every bond of a trained layer")
    _weights_args(s)
    s.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help=f"relative tail tolerance of the effective rank (default {DEFAULT_TOL:g})")
    s.add_argument("--show", type=int, default=8, help="values shown per bond (default 8; --json has all)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(handler=cmd_spectra)

    t = sub.add_parser("truncate", help="shrink the bonds of a trained layer; writes the design and weights "
                                        "(--finetune: then fine-tune it as a child run)")
    _weights_args(t)
    t.add_argument("--max-bond", default=None, help="the most values a bond keeps: K, or BOND=K,BOND=K for some bonds")
    t.add_argument("--tol", type=float, default=None,
                   help="relative error budget ||W - W'|| / ||W||, spread over the bonds")
    t.add_argument("-o", "--output", required=True, help="the truncated design (.json); its weights go beside it (.pt)")
    t.add_argument("--finetune", type=int, default=None, metavar="EPOCHS",
                   help="then fine-tune the truncated layer for EPOCHS epochs as a child run of --run (the model's "
                        "other layers from the run's checkpoint)")
    t.add_argument("--lr", type=float, default=None,
                   help="fine-tuning peak learning rate (default: a third of the run's)")
    t.add_argument("--detach", action="store_true", help="start the fine-tuning run and return at once")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(handler=cmd_truncate)

    f = sub.add_parser("features", help="what a run's data carries through each bond: variance, class means, probe")
    _weights_args(f, weights=False)
    f.add_argument("--dataset", default=None, help="data set to stream (default: the run's)")
    f.add_argument("--samples", type=int, default=1000,
                   help="at most this many test samples (and training samples for the probe); default 1000")
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(handler=cmd_features)
