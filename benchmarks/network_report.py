"""The whole-network report on torchvision's VGG-16 (224x224): the numbers and how fast they come.

Prints (markdown) the VGG-16 table (dense; the three FC layers as the TTN presets of ``engine/assets/designs``;
as a bulk rule ``linear:ttn:4:gelu``; the conv layers compressed too, by the rules :data:`CONV_RULE` (CP-conv) or
:data:`CONV_RULE_TUCKER` (Tucker-2)) and the report's latency in this process: cold (the first report: building
the architecture on the meta device, one forward pass of shapes, the first TN cost reports) and after bulk-rule
changes (a new bond dimension of the same template, a new template), medians of ``--repeat`` runs with fresh rules
each time (the engine's caches hold compiled programs and remembered paths, as in the studio). Imports (torch,
torchvision) are timed separately.

Run:  .venv/bin/python benchmarks/network_report.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# the conv layers (all but conv1_1, whose 1,728 weights stay dense) as CP-conv of rank 64, or Tucker-2 of rank 32
CONV_RULE = "conv3x3:cp:64:min=10000:legs=1"
CONV_RULE_TUCKER = "conv3x3:tucker:32:min=10000:legs=1"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    t_import = time.perf_counter() - t0

    from engine.assets import preset_paths
    from engine.design.model import load_design
    from engine.format import nbytes, ratio, si
    from engine.network.format import new_network
    from engine.network.report import network_report

    base = new_network("vgg16")
    t0 = time.perf_counter()
    dense = network_report(base)
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    ttn = network_report(base.with_rules(["linear:ttn:4:gelu"]))
    t_cold = time.perf_counter() - t0
    presets = preset_paths()
    spec = base
    for layer, key in (("classifier.0", "vgg16_fc6_ttn"), ("classifier.3", "vgg16_fc7_ttn"),
                       ("classifier.6", "vgg16_fc8_ttn")):
        spec = spec.with_layer(layer, load_design(presets[key]))
    preset = network_report(spec)

    bond_changes, kind_changes = [], []
    for k in range(args.repeat):
        chi = 5 + k
        t0 = time.perf_counter()
        network_report(base.with_rules([f"linear:ttn:{chi}:gelu"]))
        bond_changes.append(time.perf_counter() - t0)
    for kind in ("mpo", "tucker", "cp", "tensor_ring", "mera")[:max(args.repeat, 1)]:
        t0 = time.perf_counter()
        network_report(base.with_rules([f"linear:{kind}:3"]))
        kind_changes.append(time.perf_counter() - t0)

    conv_rows = [(f"conv layers too: {rule} + FC {fc_rule}", network_report(base.with_rules([fc_rule, rule])))
                 for fc_rule, rule in (("linear:ttn:4:gelu", CONV_RULE), ("linear:ttn:4:gelu", CONV_RULE_TUCKER))]
    print("| VGG-16 (torchvision, 224x224, batch 1) | params | compression | FC params | conv params | forward FLOPs "
          "| FLOPs ratio | inference memory | training memory (AdamW) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, rep in (("dense", dense), ("FC layers as the TTN presets (vgg16_fc6/7/8_ttn)", preset),
                       ("FC layers by rule linear:ttn:4:gelu", ttn), *conv_rows):
        t = rep.totals
        fc = sum(r.params for r in rep.rows if r.kind == "linear")
        conv = sum(r.params for r in rep.rows if r.kind == "conv2d")
        print(f"| {label} | {t.params:,} | {ratio(t.compression)} | {fc:,} | {conv:,} | {si(t.forward_flops)} | "
              f"{ratio(t.flops_ratio)} | {nbytes(t.inference_bytes)} | {nbytes(t.train_bytes)} |")
    print()
    ms = lambda xs: f"{1000 * statistics.median(xs):.0f} ms (max {1000 * max(xs):.0f})"  # noqa: E731
    print(f"imports (torch, torchvision): {t_import:.2f} s")
    print(f"first report (dense; build on meta + shape pass): {1000 * t_dense:.0f} ms")
    print(f"cold report with TN layers (first TN cost reports in this process): {1000 * t_cold:.0f} ms")
    print(f"after a bulk-rule change, new bond dimension: {ms(bond_changes)}")
    print(f"after a bulk-rule change, new template kind: {ms(kind_changes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
