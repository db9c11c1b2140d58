"""Design and cost a tensor-network layer through the Python API.

Walks through the engine's design tools, top to bottom:

1. build template designs (a linear MPO and a nonlinear TTN) for a 1024 x 1024 layer,
2. ask the cost model what they cost (parameters, FLOPs, memory) and which schedule it picks,
3. sweep the bond dimension to see how cost grows with it,
4. save a design as JSON and load it back, and see how an invalid design is reported.

Run:  .venv/bin/python examples/design_and_cost.py [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.contract.cost import cost_report  # noqa: E402
from engine.design.model import Design, DesignError, load_design, save_design  # noqa: E402
from engine.design.templates import make_template  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="design and cost a TN layer")
    p.add_argument("--out", default=None, help="folder for the saved design (default: a temporary folder)")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="tnstudio-example-"))
    out.mkdir(parents=True, exist_ok=True)

    # 1. A linear MPO (tensor train): 1024 = 4x4x8x8 on both sides, bond dimension 8.
    mpo = make_template("mpo", 1024, 1024, bond=8, in_factors=[4, 4, 8, 8], out_factors=[4, 4, 8, 8])
    print(f"{mpo.name}: {len(mpo.tensors)} cores, {mpo.params:,} parameters "
          f"(dense {mpo.dense_params:,}, {mpo.compression:,.0f}x smaller)")
    for t in mpo.tensors:
        print(f"  {t.id}: shape {mpo.shape(t.id)}")

    # 2. What it costs at batch 64. A linear design can be contracted into W first ("materialise") or applied to
    #    x core by core ("stream"); the cost model counts both and picks the one with fewer FLOPs.
    rep = cost_report(mpo, batch=64)
    print("\n" + rep.format())
    for name, s in rep.schedules.items():
        print(f"  {name:<12} forward {s.forward_flops:>13,} FLOPs   training memory "
              f"{s.train_memory_bytes / 2**20:7.2f} MiB")

    # A nonlinear TTN (gelu after each contraction) is a weight *generator*: it must build W, then x @ W.
    ttn = make_template("ttn", 1024, 1024, bond=8, activation="gelu", in_factors=[4, 4, 8, 8],
                        out_factors=[4, 4, 8, 8])
    rep_ttn = cost_report(ttn, batch=64)
    print(f"\n{ttn.name}: {rep_ttn.params:,} params, schedule {rep_ttn.schedule}, "
          f"generate {rep_ttn.generate_flops:,} + apply x@W = forward {rep_ttn.forward_flops:,} FLOPs")

    # 3. Cost against the bond dimension: parameters grow as chi^2 (MPO) and chi^3 (TTN internal nodes).
    print(f"\n{'kind':<5} {'chi':>4} {'params':>9} {'compression':>12} {'forward FLOPs':>15} {'train MiB':>10}")
    for kind, act in (("mpo", None), ("ttn", "gelu")):
        for chi in (2, 4, 8, 16):
            d = make_template(kind, 1024, 1024, bond=chi, activation=act, in_factors=[4, 4, 8, 8],
                              out_factors=[4, 4, 8, 8])
            r = cost_report(d, batch=64)
            print(f"{kind:<5} {chi:>4} {r.params:>9,} {r.compression:>11,.0f}x {r.forward_flops:>15,} "
                  f"{r.train_memory_bytes / 2**20:>10.2f}")

    # 4. Designs are JSON files: save, load, and get the same design (same fingerprint) back.
    path = save_design(mpo, out / "mpo_1024.json")
    again = load_design(path)
    print(f"\nsaved {path} and loaded it back: same design = {again.fingerprint() == mpo.fingerprint()}")

    # An invalid design raises DesignError listing every problem in words (the studio shows these messages).
    broken = mpo.to_dict()
    broken["indices"]["r0"]["dim"] = 0
    try:
        Design.from_dict(broken)
    except DesignError as e:
        print("invalid design rejected:", "; ".join(e.problems))
    return 0


if __name__ == "__main__":
    sys.exit(main())
