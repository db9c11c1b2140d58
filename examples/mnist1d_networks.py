"""MNIST-1D: whole networks, dense against their TN versions, several seeds, beside the published baselines.

Four network files are made with the engine's catalogue and rules (the same as ``tnstudio network new`` /
``assign``): the MLP (40 -> 256 -> 256 -> 10) and the 1-D CNN (three Conv1d layers, then 320 -> 256 -> 10), each
dense and with every linear layer of at least 20,000 weights (the MLP's fc2, the CNN's fc1) as a TTN (chi 4, gelu).
Each is trained for ``--epochs`` with ``--seeds`` seeds through the training engine (AdamW, cosine schedule, one
torch thread per run on the CPU), recorded in the run store, and the script prints a markdown table: parameters of
the whole model and of the compressed layers, test accuracy (mean and std over the seeds, and each seed), training
seconds. Greydanus (2020) reports logistic regression ~32%, MLP ~68%, CNN ~94% on the same data.

Run:  .venv/bin/python examples/mnist1d_networks.py [--epochs 30] [--seeds 0,1,2] [--lr 0.01] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.network.format import new_network, save_network  # noqa: E402
from engine.train.loop import run_training  # noqa: E402
from engine.train.networks import network_config  # noqa: E402
from engine.train.store import RunStore  # noqa: E402

RULE = "linear:ttn:4:gelu:min=20000"
PUBLISHED = {"mlp": "~68%", "cnn1d": "~94%"}


def networks():
    """(label, network spec) of the four networks."""
    out = []
    for arch in ("mlp", "cnn1d"):
        dense = new_network(arch, [1, 40], 10, name=f"{arch} (dense)")
        tn = new_network(arch, [1, 40], 10, name=f"{arch} (TN: {RULE})").with_rules([RULE])
        out += [(arch, "dense", dense), (arch, "TN", tn)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--runs-dir", default=None, help="run store (default: $TNSTUDIO_HOME/runs)")
    p.add_argument("--save", default=None, help="also write the four network files into this folder")
    p.add_argument("--quick", action="store_true", help="1 epoch, 1 seed (a smoke test)")
    args = p.parse_args(argv)
    epochs, seeds = (1, [0]) if args.quick else (args.epochs, [int(s) for s in args.seeds.split(",")])
    store = RunStore(args.runs_dir)
    rows = []
    for arch, kind, spec in networks():
        if args.save:
            save_network(spec, Path(args.save) / f"{arch}_{kind.lower()}.json")
        accs, secs, summary = [], [], {}
        for seed in seeds:
            cfg = network_config(spec, dataset="mnist1d", epochs=epochs, lr=args.lr, seed=seed, device="cpu")
            rid = store.create_run(cfg, None, name=f"{spec.name} seed {seed}")
            run = run_training(rid, str(store.root))
            if run["status"] != "completed":
                raise SystemExit(f"run {rid} {run['status']}: {run.get('reason')}")
            accs.append(run["results"]["test_accuracy"])
            secs.append(run["results"]["train_seconds"])
            summary = run["summary"]
            print(f"  {spec.name:<48} seed {seed}: test accuracy {accs[-1]:.3f} ({secs[-1]:.1f} s)", flush=True)
        rows.append((arch, kind, summary, accs, secs))
    print()
    print(f"MNIST-1D (4,000 train / 1,000 test), {epochs} epochs, lr {args.lr:g}, batch 64, seeds "
          f"{', '.join(map(str, seeds))}; CPU, one torch thread per run\n")
    print("| network | params (whole model) | compressed layers: dense -> TN params | test accuracy, mean ± std "
          "| per seed | train s / run | published (Greydanus 2020) |")
    print("|---|---:|---:|---:|---|---:|---|")
    for arch, kind, s, accs, secs in rows:
        comp = "-" if kind == "dense" else (f"{s['layer_dense_params']:,} -> {s['layer_params']:,} "
                                            f"({s['layer_dense_params'] / s['layer_params']:.0f}x)")
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {arch} {kind} | {s['params']:,} | {comp} | {100 * statistics.mean(accs):.1f}% ± {100 * sd:.1f} "
              f"| {' / '.join(f'{100 * a:.1f}' for a in accs)} | {statistics.mean(secs):.1f} | "
              f"{PUBLISHED[arch] if kind == 'dense' else ''} |")
    print("| logistic regression | | | | | | ~32% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
