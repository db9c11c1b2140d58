"""Nonlinear generators (MERA, aTTN): training-step time and memory, unsliced and under a memory budget.

    .venv/bin/python benchmarks/generator_speed.py                    # CPU, 1 thread
    .venv/bin/python benchmarks/generator_speed.py --device cuda      # on a GPU
    .venv/bin/python benchmarks/generator_speed.py --only mera4096 --reps 5

Rows: nn.Linear, the TN layer as ``auto`` picks it (unsliced) and under memory budgets (``engine.contract.slicing``:
the generation sliced and recomputed in backward). One step = forward, a dense upstream gradient, backward into
every parameter and the input; median (and min) of ``--reps`` interleaved rounds. Memory: the cost model's training
bytes of that program (params + grads + Adam + x + the replayed peak) and the allocator's measured peak of one
forward+backward (CPU: profiler memory events; CUDA: ``max_memory_allocated``) plus params and x; ``traffic``: the
bytes the program's steps read and write per training step (``engine.contract.traffic``). An unsliced program whose
predicted training memory exceeds ``--max-memory`` (default: half of this machine's memory, or of the GPU's) is
listed as skipped with the number. The CPU runs keep freed memory in the process (``engine.nn.runtime``), for
every row alike; ``--no-keep-freed`` measures glibc's default (each large buffer page-faulted again every step).
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import (interleaved_rounds, medians, prepare_device, title,  # noqa: E402  (benchmarks/timing.py)
                    training_step)
from engine.contract.cost import cost_report  # noqa: E402
from engine.design.library import presets  # noqa: E402
from engine.design.model import load_design  # noqa: E402
from engine.design.templates import make_template  # noqa: E402
from engine.format import nbytes  # noqa: E402
from engine.nn.linear import TNLinear  # noqa: E402
from engine.nn.measure import peak_bytes  # noqa: E402

CASES = {  # name -> (design factory, batch, budgets)
    "mera4096": (lambda: make_template("mera", 4096, 4096, 2, activation="gelu"), 64, ["256MiB"]),
    "vgg16_fc6_mera": (lambda: load_design(presets()["vgg16_fc6_mera"]), 64, ["2GiB"]),
    "vgg16_fc6_attn": (lambda: load_design(presets()["vgg16_fc6_attn"]), 64, ["2GiB"]),
    # the same MERA (chi 2, leaf 6, gelu) at AlexNet's fc6: small enough to train unsliced on a 24 GiB machine, so
    # sliced vs unsliced is measured where VGG-16's unsliced 18 GiB cannot run
    "alexnet_fc6_mera": (lambda: load_design(presets()["alexnet_fc6_mera"]), 64, ["2GiB"]),
}


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    from engine.resources import machine_memory_bytes

    return machine_memory_bytes() or 8 << 30


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--only", default=None, help=f"comma list of cases ({', '.join(CASES)})")
    p.add_argument("--max-memory", default=None, help="skip unsliced programs predicted above this (e.g. 8GiB)")
    p.add_argument("--no-keep-freed", action="store_true", help="CPU: leave glibc's allocator as it is")
    args = p.parse_args(argv)
    dev = prepare_device(args.device, args.threads, keep_freed=not args.no_keep_freed)
    from engine.contract.slicing import parse_bytes

    limit = parse_bytes(args.max_memory) if args.max_memory else available_bytes(dev) // 2
    print(title("generator_speed", "training step", args.reps, dev))
    for case in (args.only.split(",") if args.only else CASES):
        make, batch, budgets = CASES[case]
        d = make()
        print(f"\n## {case}: {d.name}, {d.in_features}x{d.out_features}, batch {batch}\n")
        print("| layer | program | ms/step | min | vs Linear | vs unsliced | train memory (model) | peak (measured) "
              "| traffic/step (model) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        x = torch.randn(batch, d.in_features, device=dev, requires_grad=True)
        g = torch.randn(batch, d.out_features, device=dev)
        rows = []  # (label, module, program text, model bytes, traffic)
        lin = nn.Linear(d.in_features, d.out_features, device=dev)
        from engine.contract.cost import dense_train_bytes

        rows.append(("nn.Linear", lin, "-", dense_train_bytes(d.in_features, d.out_features, batch, 4), 0))
        for budget in [None] + budgets:
            rep = cost_report(d, batch=batch, memory_budget=budget)
            label = "TN (auto)" if budget is None else f"TN, budget {budget}"
            if budget is None and rep.train_memory_bytes > limit:
                print(f"| {label} | {rep.schedule} | skipped: needs {nbytes(rep.train_memory_bytes)} to train, over "
                      f"{nbytes(limit)} | | | | | | |")
                continue
            m = TNLinear(d, seed=0, device=dev, memory_budget=budget)
            prog = m.program(batch)
            text = prog.schedule + (f", {prog.slicing.count} slices" if prog.slicing else "")
            rows.append((label, m, text, rep.train_memory_bytes, rep.train_traffic_bytes))

        times = interleaved_rounds({r[0]: training_step(r[1], x, g) for r in rows}, args.reps, args.warmup)
        med = medians(times)
        unsliced = med.get("TN (auto)")
        for label, layer, text, model, traffic in rows:
            params = sum(q.numel() for q in layer.parameters()) * 4
            peak = peak_bytes(lambda m=layer: m(x).backward(g), dev) + params + x.numel() * 4
            vs_un = f"{med[label] / unsliced:.2f}x" if unsliced and label.startswith("TN, budget") else "-"
            print(f"| {label} | {text} | {med[label]:.1f} | {min(times[label]):.1f} | "
                  f"{med[label] / med['nn.Linear']:.2f}x | {vs_un} | {nbytes(model)} | {nbytes(peak)} | "
                  f"{nbytes(traffic) if traffic else '-'} |", flush=True)
        del rows, layer
        gc.collect()
    print("\nmeasured peak: one forward+backward (no optimizer state) plus params and x; the model's training memory "
          "also counts gradients and Adam's state")
    return 0


if __name__ == "__main__":
    sys.exit(main())
