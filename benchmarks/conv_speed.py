"""Forward+backward step time of VGG-16-like conv layers: nn.Conv2d, tensorly-torch's FactorizedConv (CP, Tucker)
and TN Studio's TNConv2d (CP, Tucker-2, TT / MPO), printed as one table per layer.

    .venv/bin/python benchmarks/conv_speed.py                  # CPU, 2 threads, the two standard layers
    .venv/bin/python benchmarks/conv_speed.py --device cuda    # on a GPU
    .venv/bin/python benchmarks/conv_speed.py --layers 256x256x3x56x8 --reps 20 --cp-rank 64 --tucker-rank 64
    .venv/bin/python benchmarks/conv_speed.py --with-mpo            # also the MPO (TT-conv)

One step = forward, a dense upstream gradient, backward into every parameter and the input (a hidden conv layer).
Reported: median (and min) over ``--reps`` rounds after ``--warmup`` rounds; each round steps every layer once
(interleaved), so load from other processes hits every layer alike. tensorly-torch's layers use its ``factorized``
implementation (CP: 1x1 -> separable depthwise -> 1x1; Tucker: 1x1 -> kxk -> 1x1), the forward TN Studio's CP and
Tucker-2 programs also run, at (almost) equal parameters: CP rank R on both sides (tensorly-torch adds R weights),
Tucker ranks (r, r) on the channels (tensorly-torch also factorises the kernel modes at full rank, kh^2 + kw^2 more).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import (interleaved_rounds, medians, prepare_device, title,  # noqa: E402  (benchmarks/timing.py)
                    training_step)
from engine.design.conv import make_conv_template  # noqa: E402
from engine.nn.conv import TNConv2d  # noqa: E402
from engine.nn.linear import count_parameters  # noqa: E402

# (in channels, out channels, kernel, image side, batch): VGG-16's conv3_2 and conv5_2 shapes
LAYERS = [(256, 256, 3, 56, 8), (512, 512, 3, 14, 16)]


def layers(cin: int, cout: int, k: int, args) -> list[tuple[str, Callable[[], nn.Module]]]:
    """(label, factory) of every layer compared at this size."""
    out: list[tuple[str, Callable[[], nn.Module]]] = [("nn.Conv2d", lambda: nn.Conv2d(cin, cout, k, padding=k // 2))]
    r, t = args.cp_rank, args.tucker_rank
    try:
        import tltorch

        out.append((f"tltorch cp r{r}", lambda: tltorch.FactorizedConv(
            cin, cout, k, order=2, padding=k // 2, factorization="cp", rank=r, implementation="factorized",
            bias=True)))
        out.append((f"tltorch tucker r{t}", lambda: tltorch.FactorizedConv(
            cin, cout, k, order=2, padding=k // 2, factorization="tucker", rank=(t, t, k, k),
            implementation="factorized", bias=True)))
    except ImportError:
        print("tensorly-torch is not installed: its rows are skipped", file=sys.stderr)
    designs = [(f"TN cp r{r}", make_conv_template("cp", cin, cout, k, r, in_factors=[cin], out_factors=[cout],
                                                   padding=k // 2)),
               (f"TN tucker2 r{t}", make_conv_template("tucker", cin, cout, k, t, in_factors=[cin],
                                                        out_factors=[cout], padding=k // 2))]
    if args.with_mpo:  # TT-conv: streams patches through the chain (im2col or kernel first), slower on a CPU
        designs.append((f"TN mpo chi={args.tt_rank}", make_conv_template("mpo", cin, cout, k, args.tt_rank,
                                                                          padding=k // 2)))
    for label, d in designs:
        out.append((label, lambda d=d: TNConv2d(d, seed=0)))
    return out


def stepper(layer: nn.Module, batch: int, cin: int, cout: int, side: int, device: str) -> Callable[[], float]:
    """One forward + backward (parameters and input); returns its wall time in ms."""
    x = torch.randn(batch, cin, side, side, device=device, requires_grad=True)
    with torch.no_grad():
        g = torch.randn_like(layer(x))
    return training_step(layer, x, g)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--layers", default=None, help="comma list of INxOUTxKxSIDExBATCH (default: the two VGG layers)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cp-rank", type=int, default=64)
    p.add_argument("--tucker-rank", type=int, default=64)
    p.add_argument("--tt-rank", type=int, default=16)
    p.add_argument("--with-mpo", action="store_true", help="also TN Studio's MPO (TT-conv) at --tt-rank")
    p.add_argument("--only", default=None, help="run only layers whose label contains this text")
    args = p.parse_args(argv)
    sizes = LAYERS if not args.layers else [tuple(int(v) for v in s.split("x")) for s in args.layers.split(",")]
    dev = prepare_device(args.device, args.threads)
    print(title("conv_speed", "forward+backward step", args.reps, dev))
    for cin, cout, k, side, batch in sizes:
        print(f"\n## {cin}->{cout} {k}x{k} at {side}x{side}, batch {batch}\n")
        print(f"| {'layer':<20} | {'params':>9} | {'fewer':>6} | {'program':<11} | {'ms/step':>9} | {'min':>8} | "
              f"{'vs Conv2d':>9} | {'vs tltorch':>10} |")
        print(f"|{'-' * 22}|{'-' * 10}:|{'-' * 7}:|{'-' * 13}|{'-' * 10}:|{'-' * 9}:|{'-' * 10}:|{'-' * 11}:|")
        runs, steps = {}, {}
        for label, make in layers(cin, cout, k, args):
            if args.only and args.only not in label and label != "nn.Conv2d":
                continue
            torch.manual_seed(0)
            runs[label] = make().to(dev)
            steps[label] = stepper(runs[label], batch, cin, cout, side, dev)
        times = interleaved_rounds(steps, args.reps, args.warmup)
        med = medians(times)
        dense_params = cin * cout * k * k + cout
        base = med.get("nn.Conv2d")
        for label, layer in runs.items():
            ms, fastest = med[label], min(times[label])
            kind = "cp" if " cp " in f" {label} " else "tucker" if "tucker" in label else None
            peer = next((v for lab, v in med.items() if lab.startswith("tltorch") and kind and kind in lab), None)
            prog = layer.program(batch, (side, side)).schedule if isinstance(layer, TNConv2d) else "-"
            vs = f"{ms / peer:.2f}x" if peer and not label.startswith("tltorch") else "-"
            n = count_parameters(layer)
            print(f"| {label:<20} | {n:>9,} | {dense_params / n:>5.1f}x | {prog:<11} | {ms:>9.2f} | {fastest:>8.2f} "
                  f"| {ms / base:>8.2f}x | {vs:>10} |", flush=True)
        del runs, steps
    print("\nparams include the bias; fewer = dense params / params; ratios use the medians; vs tltorch compares TN "
          "CP with tensorly-torch CP and TN Tucker-2 with tensorly-torch Tucker")


if __name__ == "__main__":
    main()
