"""Train a tensor-network layer on the 8x8 digits and compare it with the dense layer it replaces.

The model is an MLP built around the design, 64 -> 256 -> [256 x 256 layer] -> 10, trained twice with the same
settings: once with the TN layer (a nonlinear TTN generator by default) and once with an ``nn.Linear`` in its
place (the dense baseline). Both runs go through the training engine's Python API and are recorded in the run
store, so ``tnstudio serve`` shows them (with their curves) in the Training tab.

Run:  .venv/bin/python examples/train_digits.py [--kind ttn] [--bond 4] [--epochs 15] [--quick]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.train.store import RunStore  # noqa: E402
from engine.design.templates import make_template  # noqa: E402
from engine.train.config import RunConfig  # noqa: E402
from engine.train.loop import run_training  # noqa: E402


def train(store: RunStore, config: RunConfig, design, name: str) -> dict:
    """Record a run in the store, train it in this process and return the finished run."""
    run_id = store.create_run(config, design, name=name)

    def progress(row: dict) -> None:  # called at every logging point; test rows come at each epoch's end
        if row["split"] == "test":
            print(f"  {name:<28} epoch {row['epoch']:5.1f}  test loss {row['loss']:.3f}  "
                  f"accuracy {row['accuracy']:.3f}")

    run = run_training(run_id, str(store.root), progress=progress)
    if run["status"] != "completed":
        raise SystemExit(f"run {run_id} {run['status']}: {run['reason']}")
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train a TN layer and its dense baseline on digits")
    p.add_argument("--kind", default="ttn", help="template kind: ttn, attn, mera, mpo, tensor_ring, tucker, cp")
    p.add_argument("--bond", type=int, default=4, help="bond dimension (default 4)")
    p.add_argument("--activation", default="gelu", help="activation inside the network ('none': linear)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--runs-dir", default=None, help="run store folder (default: the studio's, $TNSTUDIO_HOME/runs)")
    p.add_argument("--quick", action="store_true", help="2 epochs (smoke test)")
    args = p.parse_args(argv)
    epochs = 2 if args.quick else args.epochs

    # The design: 256 = 4x4x4x2x2 on both sides, five sites.
    act = None if args.activation == "none" or args.kind in ("tucker", "cp") else args.activation
    design = make_template(args.kind, 256, 256, bond=args.bond, activation=act, in_factors=[4, 4, 4, 2, 2],
                           out_factors=[4, 4, 4, 2, 2])
    print(f"design: {design.name}, {design.params:,} parameters ({design.compression:,.0f}x fewer than dense)")

    # One config for both runs; baseline=True swaps the TN layer for an nn.Linear of the same shape.
    config = RunConfig(dataset="digits", model="mlp", epochs=epochs, batch_size=64, lr=3e-3, device="cpu", seed=0)
    store = RunStore(args.runs_dir)
    tn = train(store, config, design, f"{args.kind} chi={args.bond}")
    dense = train(store, replace(config, baseline=True), design, "dense baseline")

    print(f"\n{'model':<16} {'layer params':>12} {'model params':>12} {'test accuracy':>13} {'seconds':>8}")
    for label, run in (("TN " + args.kind, tn), ("dense", dense)):
        r = run["results"]
        print(f"{label:<16} {r['layer_params']:>12,} {r['params']:>12,} {r['test_accuracy']:>13.3f} "
              f"{r['train_seconds']:>8.1f}")
    print(f"\nruns recorded in {store.root} (ids {tn['id']}, {dense['id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
