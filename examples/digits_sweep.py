"""Accuracy against compression on the 8x8 digits: TTN, aTTN, MERA and MPO layers at several bond dimensions.

Each design replaces the 256 x 256 hidden layer of the MLP 64 -> 256 -> [256 x 256] -> 10 (legs 4x4x4x2x2 on
both sides, five sites, so the MERA has two disentangler layers); the dense baseline trains the same MLP with an
``nn.Linear``. The nonlinear kinds (ttn, attn, mera) carry gelu, and each also runs with lateral mixing tensors on
every level that has places (``lateral="all"``: two for the TTN, three for the aTTN and the MERA). Every run goes
through the training engine (``engine.train``) on the CPU with the same settings and seed, and is recorded in the
run store.

Writes ``digits_sweep.html`` (a Bokeh plot with its JavaScript inlined, so it opens offline) and
``digits_sweep.json`` (the table) to ``--out``, and prints the table.

Run:  .venv/bin/python examples/digits_sweep.py [--epochs 15] [--out DIR] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.train.store import RunStore  # noqa: E402
from engine.design.templates import make_template  # noqa: E402
from engine.train.config import RunConfig  # noqa: E402
from engine.train.loop import run_training  # noqa: E402

FACTORS = [4, 4, 4, 2, 2]  # 256 = 4*4*4*2*2
# The lateral variants: the kind and its ``lateral`` option.
VARIANTS = {"ttn-lateral": ("ttn", "all"), "attn-lateral": ("attn", "all"), "mera-lateral": ("mera", "all")}
# aTTN and MERA generators cost far more per bond dimension (see examples/paper_table.py), so they stop earlier; so
# do the lateral variants, whose laterals join subtrees into W x chi^3 (TTN, aTTN) and W x chi^5 (MERA) while
# generating (at chi = 4 the MERA's would be 256 MiB per forward pass).
BONDS = {"ttn": (2, 4, 8), "ttn-lateral": (2, 3, 4), "attn": (2, 3, 4), "attn-lateral": (2, 3, 4),
         "mera": (2, 3, 4), "mera-lateral": (2, 3), "mpo": (2, 4, 8)}
LABEL = {"ttn": "TTN", "ttn-lateral": "TTN + lateral", "attn": "aTTN", "attn-lateral": "aTTN + lateral",
         "mera": "MERA", "mera-lateral": "MERA + lateral", "mpo": "MPO", "dense": "dense"}
COLOR = {"ttn": "#1f77b4", "attn": "#ff7f0e", "mera": "#2ca02c", "mpo": "#d62728", "dense": "#555555"}
COLOR.update({v: COLOR[base] for v, (base, _) in VARIANTS.items()})  # a variant: its kind's colour, dashed


def run_one(store: RunStore, config: RunConfig, design, name: str) -> dict:
    """Train one recorded run in this process and return its results."""
    run = run_training(store.create_run(config, design, name=name), str(store.root))
    if run["status"] != "completed":
        raise SystemExit(f"{name}: run {run['id']} {run['status']}: {run['reason']}")
    return run["results"]


def sweep(bonds: dict[str, tuple[int, ...]], epochs: int, store: RunStore, seed: int = 0) -> list[dict]:
    config = RunConfig(dataset="digits", model="mlp", epochs=epochs, device="cpu", seed=seed)
    rows = []
    for kind, chis in bonds.items():
        base, lateral = VARIANTS.get(kind, (kind, None))
        for chi in chis:
            design = make_template(base, 256, 256, bond=chi, activation=None if kind == "mpo" else "gelu",
                                   in_factors=FACTORS, out_factors=FACTORS, lateral=lateral)
            res = run_one(store, config, design, f"sweep {kind} chi={chi}")
            rows.append({"kind": kind, "chi": chi, "params": design.params, "compression": design.compression,
                         "accuracy": res["test_accuracy"], "seconds": res["train_seconds"]})
            print(f"  {LABEL[kind]:<14} chi={chi}: {design.params:>6,} params, accuracy {res['test_accuracy']:.3f}",
                  flush=True)
    # the dense baseline: the same MLP with nn.Linear(256, 256)
    res = run_one(store, replace(config, baseline=True), design, "sweep dense baseline")
    rows.append({"kind": "dense", "chi": None, "params": 256 * 256, "compression": 1.0,
                 "accuracy": res["test_accuracy"], "seconds": res["train_seconds"]})
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'kind':<14} {'chi':>4} {'params':>8} {'compression':>12} {'test accuracy':>14} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{LABEL[r['kind']]:<14} {r['chi'] if r['chi'] else '-':>4} {r['params']:>8,} "
                     f"{r['compression']:>11,.0f}x {r['accuracy']:>14.3f} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, epochs: int) -> Path:
    """Accuracy vs compression (log x), one line per kind (lateral variants dashed in their kind's colour), the
    dense baseline as a dashed grey line."""
    from bokeh.io import save
    from bokeh.models import ColumnDataSource, HoverTool, Span
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    title = f"Digits: accuracy vs compression ({epochs} epoch{'s' if epochs != 1 else ''}, CPU)"
    fig = figure(x_axis_type="log", width=880, height=440, x_axis_label="compression of the 256x256 layer (x)",
                 y_axis_label="test accuracy", title=title, tools="pan,wheel_zoom,box_zoom,reset,save")
    for kind in [k for k in LABEL if k != "dense"]:
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        src = ColumnDataSource({k: [r[k] for r in sel] for k in ("compression", "accuracy", "chi", "params")})
        dash, marker = ("dashed", "triangle") if kind in VARIANTS else ("solid", "circle")
        fig.line("compression", "accuracy", source=src, color=COLOR[kind], line_width=2, line_dash=dash,
                 legend_label=LABEL[kind])
        fig.scatter("compression", "accuracy", source=src, color=COLOR[kind], size=9, marker=marker,
                    legend_label=LABEL[kind])
    dense = [r for r in rows if r["kind"] == "dense"]
    if dense:
        fig.add_layout(Span(location=dense[0]["accuracy"], dimension="width", line_dash="dashed",
                            line_color=COLOR["dense"], line_width=2))
        fig.scatter([1.0], [dense[0]["accuracy"]], color=COLOR["dense"], size=9, marker="square",
                    legend_label=f"dense ({dense[0]['accuracy']:.3f})")
    fig.add_tools(HoverTool(tooltips=[("chi", "@chi"), ("params", "@params{0,0}"),
                                      ("compression", "@compression{0,0.0}x"), ("accuracy", "@accuracy{0.000}")]))
    fig.add_layout(fig.legend[0], "right")  # beside the plot, covering no point
    return Path(save(fig, filename=str(path), resources=INLINE, title="TN Studio: digits sweep"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="accuracy vs compression for ttn/attn/mera (with and without lateral "
                                            "tensors) and mpo on digits")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--out", default=None, help="folder for the plot and table (default: a temporary folder)")
    p.add_argument("--runs-dir", default=None, help="run store folder (default: the studio's, $TNSTUDIO_HOME/runs)")
    p.add_argument("--quick", action="store_true", help="bond 2 only, 1 epoch (smoke test)")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="tnstudio-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    bonds = {k: v[:1] for k, v in BONDS.items()} if args.quick else BONDS
    epochs = 1 if args.quick else args.epochs

    rows = sweep(bonds, epochs, RunStore(args.runs_dir))
    print("\n" + table(rows))
    (out / "digits_sweep.json").write_text(json.dumps(rows, indent=2))
    html = plot(rows, out / "digits_sweep.html", epochs)
    print(f"\nwrote {html} and {out / 'digits_sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
