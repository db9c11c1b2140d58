"""Forward+backward step time of dense, tensorly-torch and TN Studio layers, printed as a table.

    .venv/bin/python benchmarks/layer_speed.py                  # CPU, 2 threads, all three sizes
    .venv/bin/python benchmarks/layer_speed.py --device cuda    # on a GPU
    .venv/bin/python benchmarks/layer_speed.py --sizes 1024x1024x128 --reps 20
    .venv/bin/python benchmarks/layer_speed.py --sizes none --digits-rounds 9   # the digits epoch only

One step = forward, a dense upstream gradient, backward into every parameter and the input (as for a hidden layer).
Reported: median (and min) over ``--reps`` rounds after ``--warmup`` rounds; each round steps every layer once
(interleaved), so load from other processes on a shared machine hits every layer alike. The TNLinear MPO and
tensorly-torch's block-TT and CP use the same leg factorisation (balanced, smallest legs at the ends) and the MPO
the block-TT's rank, so the two have exactly the same number of parameters. Nonlinear generators whose largest
intermediate exceeds ``--max-intermediate`` times W are skipped (listed with the size).

The small-layer row (256x256, batch 64) is the size of the digits MLP's hidden layer; ``--digits-rounds`` rounds of
one training epoch of that MLP (64-256-[256x256]-10, fused AdamW, gradient clipping, batch 64, as ``tnstudio
train`` runs it) compare the dense MLP with the one whose hidden layer is a TTN (chi 4, gelu, legs 4x4x4x2x2),
interleaved, and both again with torch's default (unfused) AdamW.
The CPU runs keep freed memory in the process (:func:`engine.nn.runtime.keep_freed_memory`, as training processes
do), for every row alike; ``--no-keep-freed`` measures glibc's default.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import (device_sync, interleaved_rounds, medians, prepare_device,  # noqa: E402  (benchmarks/timing.py)
                    timed_ms, title, training_step)
from engine.design.model import Design  # noqa: E402
from engine.design.factorize import balanced_factors  # noqa: E402
from engine.nn.linear import TNLinear, count_parameters  # noqa: E402
from engine.contract.program import compile_program  # noqa: E402
from engine.design.templates import make_template  # noqa: E402
from engine.train.optim import adamw  # noqa: E402

SIZES = [(256, 256, 64), (1024, 1024, 128), (4096, 4096, 64), (25088, 4096, 16)]
DIGITS_LEGS = [4, 4, 4, 2, 2]  # the digits sweep's factorisation of 256


def tt_shapes(features: int, legs: int) -> tuple[int, ...]:
    """Balanced leg factors with the smallest at the ends (``1024 -> (4, 8, 8, 4)``), as TT layers usually use."""
    f = sorted(balanced_factors(features, legs))
    left, right = f[0::2], f[1::2]
    return tuple(left + right[::-1])


def layers(in_f: int, out_f: int, args) -> list[tuple[str, Callable[[], nn.Module], Design | None]]:
    """(label, factory, TN design or None) of every layer compared at this size."""
    out: list[tuple[str, Callable[[], nn.Module], Design | None]] = [
        ("nn.Linear", lambda: nn.Linear(in_f, out_f), None)]
    a, b = tt_shapes(in_f, args.legs), tt_shapes(out_f, args.legs)
    try:
        import tltorch

        for fact, rank in (("blocktt", args.tt_rank), ("cp", args.cp_rank)):
            out.append((f"tltorch {fact} r{rank}", lambda f=fact, r=rank: tltorch.FactorizedLinear(
                a, b, factorization=f, rank=r, implementation="factorized"), None))
    except ImportError:
        print("tensorly-torch is not installed: its rows are skipped", file=sys.stderr)
    designs = [(f"TN mpo chi={args.tt_rank}", make_template("mpo", in_f, out_f, args.tt_rank, in_factors=list(a),
                                                             out_factors=list(b)))]
    for kind, bond in (("ttn", args.ttn_bond), ("mera", args.mera_bond)):
        designs.append((f"TN {kind} chi={bond} {args.activation}",
                        make_template(kind, in_f, out_f, bond, activation=args.activation)))
    for label, d in designs:
        out.append((label, lambda d=d: TNLinear(d, seed=0), d))
    return out


def stepper(layer: nn.Module, batch: int, in_f: int, out_f: int, device: str) -> Callable[[], float]:
    """A function running one forward + backward (parameters and input) and returning its wall time in ms."""
    x = torch.randn(batch, in_f, device=device, requires_grad=True)
    g = torch.randn(batch, out_f, device=device)
    return training_step(layer, x, g)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--sizes", default=None, help="comma list of INxOUTxBATCH (default: the three standard sizes)")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--legs", type=int, default=4, help="legs per side of the MPO / block-TT shapes")
    p.add_argument("--tt-rank", type=int, default=8)
    p.add_argument("--cp-rank", type=int, default=64)
    p.add_argument("--ttn-bond", type=int, default=4)
    p.add_argument("--mera-bond", type=int, default=2)
    p.add_argument("--max-intermediate", type=float, default=4.0,
                   help="skip TN layers whose largest intermediate exceeds this many times W's size")
    p.add_argument("--activation", default="gelu")
    p.add_argument("--only", default=None, help="run only layers whose label contains this text")
    p.add_argument("--digits-rounds", type=int, default=7, help="rounds of the digits epoch (0: skip it)")
    p.add_argument("--no-keep-freed", action="store_true", help="CPU: leave glibc's allocator as it is")
    args = p.parse_args(argv)
    sizes = (SIZES if not args.sizes else [] if args.sizes == "none" else
             [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")])
    dev = prepare_device(args.device, args.threads, keep_freed=not args.no_keep_freed)
    print(title("layer_speed", "forward+backward step", args.reps, dev))
    for in_f, out_f, batch in sizes:
        print(f"\n## {in_f}x{out_f}, batch {batch}\n")
        print(f"| {'layer':<24} | {'params':>10} | {'schedule':<11} | {'ms/step':>9} | {'min':>8} | {'vs Linear':>9} "
              f"| {'vs blocktt':>10} |")
        print(f"|{'-' * 26}|{'-' * 11}:|{'-' * 13}|{'-' * 10}:|{'-' * 9}:|{'-' * 10}:|{'-' * 11}:|")
        runs, steps, notes = {}, {}, []
        for label, make, design in layers(in_f, out_f, args):
            if args.only and args.only not in label and label != "nn.Linear":
                continue
            if design is not None:
                big = compile_program(design, batch).largest_intermediate
                if big > args.max_intermediate * in_f * out_f:
                    notes.append(f"| {label:<24} | {design.params + out_f:>10,} | skipped: an intermediate of "
                                 f"{big:,} entries ({big / (in_f * out_f):.0f}x W) |")
                    continue
            torch.manual_seed(0)
            runs[label] = make().to(dev)
            steps[label] = stepper(runs[label], batch, in_f, out_f, dev)
        times = interleaved_rounds(steps, args.reps, args.warmup)
        med = medians(times)
        base, tt = med.get("nn.Linear"), next((v for k, v in med.items() if "blocktt" in k), None)
        for label, layer in runs.items():
            ms, fastest = med[label], min(times[label])
            sched = layer.program(batch).schedule if isinstance(layer, TNLinear) else "-"
            vs_tt = f"{ms / tt:.2f}x" if tt and "blocktt" not in label else "-"
            print(f"| {label:<24} | {count_parameters(layer):>10,} | {sched:<11} | {ms:>9.2f} | {fastest:>8.2f} | "
                  f"{ms / base:>8.2f}x | {vs_tt:>10} |", flush=True)
        for line in notes:
            print(line)
        del runs, steps
    print("\nparams include the bias; ratios use the medians; vs blocktt compares with tensorly-torch block-TT")
    if args.digits_rounds:
        digits_epoch(dev, args.digits_rounds)


def digits_epoch(dev: str, rounds: int) -> None:
    """One training epoch of the digits MLP, dense vs a TTN hidden layer, ``rounds`` interleaved rounds."""
    import math

    from engine.train.config import RunConfig
    from engine.train.data import load_dataset
    from engine.train.models import build_model

    ds = load_dataset("digits")
    x, y = ds.x_train.to(dev), ds.y_train.to(dev)
    design = make_template("ttn", 256, 256, 4, activation="gelu", in_factors=DIGITS_LEGS, out_factors=DIGITS_LEGS)
    config = RunConfig(dataset="digits", model="mlp")
    models = {}
    for optimizer in ("", ", default AdamW"):
        for label, d in (("dense MLP", None), ("TTN chi=4 gelu MLP", design)):
            torch.manual_seed(0)
            model = build_model(config, ds, d).to(dev)
            if optimizer:  # torch's single-tensor AdamW (its default on the CPU), for comparison
                opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            else:  # the trainer's
                opt = adamw(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
            models[label + optimizer] = (model, opt)
    loss_fn = nn.CrossEntropyLoss()
    sync = device_sync(dev)

    def epoch(model: nn.Module, opt: torch.optim.Optimizer, perm: torch.Tensor) -> None:
        for start in range(0, len(x), config.batch_size):
            b = perm[start:start + config.batch_size]
            loss = loss_fn(model(x[b]).float(), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
            opt.step()

    def epoch_timer(model: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], float]:
        """Times one epoch in ms; the n-th call (from 0) shuffles with seed n."""
        seeds = itertools.count()

        def timed_epoch() -> float:
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(next(seeds))).to(dev)
            return timed_ms(lambda: epoch(model, opt, perm), sync)

        return timed_epoch

    times = interleaved_rounds({label: epoch_timer(*mo) for label, mo in models.items()}, rounds, warmup=1)
    med = medians(times)
    steps = math.ceil(len(x) / config.batch_size)
    print(f"\n## digits epoch: MLP 64-256-[256x256]-10, batch {config.batch_size}, {steps} steps, fused AdamW as "
          f"the trainer runs it (median and min of {rounds} interleaved rounds)\n")
    print("| model | params | ms/epoch | min | vs dense (same optimizer) |")
    print("|---|---:|---:|---:|---:|")
    for label, (model, _) in models.items():
        dense = "dense MLP" + label.partition("MLP")[2]
        print(f"| {label} | {count_parameters(model):,} | {med[label]:.1f} | {min(times[label]):.1f} | "
              f"{med[label] / med[dense]:.2f}x |")


if __name__ == "__main__":
    main()
