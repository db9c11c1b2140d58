"""Train at chi = 8, truncate by tolerance, fine-tune as a child run: the README's "Bonds as latent spaces" goal.

For a TTN with gelu and a linear MPO (both 256 x 256 as 4x4x4x2x2 -> 4x4x4x2x2, the hidden layer of the MLP
64 -> 256 -> [256 x 256] -> 10 on the 8x8 digits, as in ``examples/digits_sweep.py``), and each seed:

1. train the parent run (``--epochs``, recorded in the run store);
2. truncate its trained layer with ``truncate(design, weights, tol=--tol)`` (the MPO: exact error; the TTN: rows of
   its activated fragments, the error of W measured by forming W);
3. score the truncated model before any training (the parent's other layers, the truncated layer);
4. fine-tune for ``--finetune`` epochs as a child run of the parent (``engine.analysis.finetune``: its own
   process, ``init_from`` the parent's checkpoint with the truncated layer, the store's ``parent`` link).

Prints a table (``--markdown`` for the README) and writes ``truncate_finetune.json`` to ``--out``.

Run:  .venv/bin/python examples/truncate_finetune.py [--tol ttn=0.5,mpo=0.6] [--seeds 0,1,2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.analysis.finetune import child_state, finetune  # noqa: E402
from engine.analysis.runs import load_run_layer  # noqa: E402
from engine.analysis.truncate import truncate  # noqa: E402
from engine.design.templates import make_template  # noqa: E402
from engine.train.config import RunConfig  # noqa: E402
from engine.train.launcher import wait  # noqa: E402
from engine.train.loop import run_training  # noqa: E402
from engine.train.store import RunStore  # noqa: E402

FACTORS = [4, 4, 4, 2, 2]
KINDS = {"ttn": "gelu", "mpo": None}  # kind -> activation
LABEL = {"ttn": "TTN (gelu)", "mpo": "MPO"}


def accuracy(config: RunConfig, design, state) -> float:
    """Test accuracy of the model ``config`` builds around ``design`` holding ``state`` (no training)."""
    import torch

    from engine.train.data import load_dataset
    from engine.train.models import build_model

    data = load_dataset(config.dataset, config.data_dir)
    model = build_model(config, data, design)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return float((model(data.x_test).argmax(1) == data.y_test).float().mean())


def one(store: RunStore, kind: str, seed: int, args: argparse.Namespace) -> dict:
    design = make_template(kind, 256, 256, bond=args.bond, activation=KINDS[kind], in_factors=FACTORS,
                           out_factors=FACTORS)
    config = RunConfig(dataset="digits", model="mlp", epochs=args.epochs, device="cpu", seed=seed)
    parent = run_training(store.create_run(config, design, name=f"{kind} chi={args.bond} seed {seed}"),
                          str(store.root))
    if parent["status"] != "completed":
        raise SystemExit(f"run {parent['id']} {parent['status']}: {parent['reason']}")
    layer = load_run_layer(parent["id"], store.root)
    res = truncate(layer.design, layer.state, tol=args.tols[kind])
    state, child_config = child_state(parent["id"], res, store.root)
    truncated_acc = accuracy(child_config, res.design, state)
    child_id = finetune(parent["id"], res, args.finetune, store.root)
    child = wait(child_id, store.root, timeout=1800)
    if child["status"] != "completed":
        raise SystemExit(f"fine-tune run {child_id} {child['status']}: {child['reason']}")
    row = {"kind": kind, "seed": seed, "chi": args.bond, "tol": args.tols[kind], "parent": parent["id"],
           "child": child_id,
           "params_before": res.params_before, "params_after": res.params_after,
           "fewer": res.params_before / res.params_after, "relative_error": res.relative_error, "error": res.error,
           "ranks": {b.bond: b.after for b in res.bonds}, "parent_accuracy": parent["results"]["test_accuracy"],
           "truncated_accuracy": truncated_acc, "finetuned_accuracy": child["results"]["test_accuracy"],
           "finetune_seconds": child["results"]["train_seconds"], "truncate_seconds": res.seconds}
    row["delta"] = row["finetuned_accuracy"] - row["parent_accuracy"]
    row["goal"] = row["fewer"] >= 2 and row["delta"] >= -0.005
    print(f"  {LABEL[kind]:<11} seed {seed}: {res.params_before:,} -> {res.params_after:,} params "
          f"({row['fewer']:.2f}x fewer), error {res.relative_error:.3f} ({res.error}); accuracy "
          f"{row['parent_accuracy']:.3f} -> {truncated_acc:.3f} truncated -> {row['finetuned_accuracy']:.3f} "
          f"fine-tuned", flush=True)
    return row


def table(rows: list[dict], markdown: bool) -> str:
    head = ["layer", "seed", "tol", "params", "fewer", "rel. error of W", "accuracy (chi=8)", "truncated",
            "fine-tuned", "change", "goal"]
    lines = []
    fmt = (lambda cells: "| " + " | ".join(cells) + " |") if markdown else (lambda cells: "  ".join(
        f"{c:>{w}}" for c, w in zip(cells, (11, 4, 4, 14, 6, 20, 16, 9, 10, 7, 4))))
    lines.append(fmt(head))
    if markdown:
        lines.append("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["kind"], []).append(r)
        lines.append(fmt([LABEL[r["kind"]], str(r["seed"]), f"{r['tol']:g}",
                          f"{r['params_before']:,} -> {r['params_after']:,}",
                          f"{r['fewer']:.2f}x", f"{r['relative_error']:.3f} ({r['error']})",
                          f"{r['parent_accuracy']:.3f}", f"{r['truncated_accuracy']:.3f}",
                          f"{r['finetuned_accuracy']:.3f}", f"{100 * r['delta']:+.2f}%",
                          "yes" if r["goal"] else "no"]))
    for kind, rs in groups.items():
        if len(rs) > 1:
            m = statistics.mean
            lines.append(fmt([LABEL[kind], "mean", f"{rs[0]['tol']:g}", f"{m(r['params_before'] for r in rs):,.0f} -> "
                              f"{m(r['params_after'] for r in rs):,.0f}", f"{m(r['fewer'] for r in rs):.2f}x",
                              f"{m(r['relative_error'] for r in rs):.3f}", f"{m(r['parent_accuracy'] for r in rs):.3f}",
                              f"{m(r['truncated_accuracy'] for r in rs):.3f}",
                              f"{m(r['finetuned_accuracy'] for r in rs):.3f}",
                              f"{100 * m(r['delta'] for r in rs):+.2f}%",
                              f"{sum(r['goal'] for r in rs)}/{len(rs)}"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tol", default="ttn=0.5,mpo=0.6",
                   help="truncation tolerance ||W - W'|| / ||W||: one number, or KIND=T,... (default ttn=0.5,mpo=0.6)")
    p.add_argument("--bond", type=int, default=8, help="bond dimension chi of the trained layers (default 8)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs of the parent runs (default 15)")
    p.add_argument("--finetune", type=int, default=3, help="fine-tuning epochs of the child runs (default 3)")
    p.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
    p.add_argument("--kinds", default="ttn,mpo", help="ttn and/or mpo (default both)")
    p.add_argument("--runs-dir", default=None, help="run store (default: a temporary folder)")
    p.add_argument("--out", default=".", help="folder for truncate_finetune.json (default: here)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 epochs, 1 epoch of fine-tuning, seed 0")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.finetune, args.seeds = 2, 1, "0"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        p.error(f"unknown kind(s) {', '.join(bad)}: choose from {', '.join(KINDS)}")
    try:
        if "=" in args.tol:
            args.tols = {k.strip(): float(v) for k, v in (part.split("=") for part in args.tol.split(","))}
        else:
            args.tols = {k: float(args.tol) for k in KINDS}
    except ValueError:
        p.error(f"--tol must be a number or KIND=T,KIND=T, got {args.tol!r}")
    missing = [k for k in kinds if k not in args.tols]
    if missing:
        p.error(f"--tol gives no tolerance for {', '.join(missing)}")
    tmp = None if args.runs_dir else tempfile.TemporaryDirectory(prefix="truncate_finetune_")
    store = RunStore(args.runs_dir or tmp.name)
    print(f"digits, MLP 64 -> 256 -> [256 x 256, legs {'x'.join(map(str, FACTORS))}] -> 10; chi={args.bond}, "
          f"{args.epochs} epochs, truncate tol {args.tol}, fine-tune {args.finetune} epochs; runs in {store.root}")
    rows = [one(store, kind, seed, args) for kind in kinds for seed in seeds]
    print()
    print(table(rows, args.markdown))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "truncate_finetune.json").write_text(json.dumps(rows, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
