"""Export a design to code and check that the exported module computes the same layer.

1. load a design (default: the VGG-16 fc7 MPO preset from the paper table, MPO-Net's factorisation) or build one,
2. make a ``TNLinear`` from it (stands in for a trained layer),
3. write it as a standalone PyTorch module (torch only, no TN Studio needed), with its weights beside it,
   and as a snippet that uses the engine,
4. import the generated module, load the weights, and compare its output with the engine's.

Run:  .venv/bin/python examples/export_design.py [--design FILE] [--out DIR] [--quick]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from engine.design.model import load_design  # noqa: E402
from engine.nn.export import class_name, write_export  # noqa: E402
from engine.nn.linear import TNLinear  # noqa: E402
from engine.design.templates import make_template  # noqa: E402

PRESET = Path(__file__).resolve().parents[1] / "engine" / "assets" / "designs" / "vgg16_fc7_mpo.json"


def import_file(path: Path):
    """Import a Python file as a module (how a user would load the exported layer without installing it)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="export a design as a torch module and check it")
    p.add_argument("--design", default=None, help=f"design JSON (default {PRESET.name}, if present)")
    p.add_argument("--out", default=None, help="output folder (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="a small nonlinear TTN instead of the preset (smoke test)")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="tnstudio-export-"))

    # 1. The design: a file, the preset, or (quick) a small nonlinear TTN built on the spot.
    if args.design:
        design = load_design(args.design)
    elif args.quick or not PRESET.exists():
        design = make_template("ttn", 256, 128, bond=4, activation="gelu", name="ttn 256x128 gelu")
    else:
        design = load_design(PRESET)
    print(f"design: {design.name} ({design.params:,} parameters, {design.compression:,.0f}x compression)")

    # 2. A layer with weights (a trained one would come from a run; see `tnstudio export --run`).
    layer = TNLinear(design, seed=0)

    # 3. Standalone torch module (+ weights as .pt beside it) and an engine snippet (+ the design JSON).
    files = write_export(design, "torch", out / "tn_layer.py", weights=layer.state_dict())
    files += write_export(design, "snippet", out / "use_layer.py")
    for f in files:
        print(f"wrote {f} ({f.stat().st_size:,} bytes)")

    # 4. The exported class needs only torch: import it, load the weights, compare outputs with the engine.
    exported = getattr(import_file(files[0]), class_name(design))()
    exported.load_state_dict(torch.load(files[1], weights_only=True))
    x = torch.randn(8, design.in_features)
    with torch.no_grad():
        ref, got = layer(x), exported(x)
    err = float((got - ref).abs().max() / ref.abs().max())
    print(f"exported {type(exported).__name__}: output {tuple(got.shape)}, max relative difference to the engine "
          f"{err:.2e}")
    if err > 1e-4:
        print("the exported module disagrees with the engine", file=sys.stderr)
        return 1
    print("\nfirst lines of the generated module:")
    print("\n".join(files[0].read_text().splitlines()[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
