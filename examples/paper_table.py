"""The paper table: TTN, aTTN, MERA and MPO designs for the big layers of AlexNet and VGG-16.

For the fully connected layers of AlexNet (9216x4096, 4096x4096, 4096x1000), of VGG-16 (25088x4096, 4096x4096,
4096x1000) and one convolution (VGG-16 conv5: a 3x3 kernel from 512 to 512 channels, read as the im2col matrix
(512*3*3) x 512 = 4608 x 512), this script builds one design per kind (TTN, aTTN, MERA, MPO, and lateral variants
of TTN and MERA where they fit the compression range), prints what each costs and saves every design under
``engine/assets/designs/`` so the studio lists them as presets.

Every number comes from ``engine.contract.cost.cost_report``: parameters, compression, generation FLOPs (building W from
the cores), forward FLOPs at batch 64 and the memory of one training step (float32, Adam) at batch 64. For the
convolution, "batch 64" means 64 im2col rows (patches), not 64 images.

Run it::

    .venv/bin/python examples/paper_table.py                 # aligned table, writes engine/assets/designs/*.json
    .venv/bin/python examples/paper_table.py --markdown      # the same table as markdown (README)
    .venv/bin/python examples/paper_table.py --out /tmp/x    # write the presets elsewhere (--out '' : nowhere)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.contract.cost import cost_report  # noqa: E402
from engine.design.model import Design, save_design  # noqa: E402
from engine.design.templates import make_template  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The layers: key -> (network, layer, in_features, out_features). W is in x out (the layer computes x @ W).
LAYERS = {
    "alexnet_fc6": ("AlexNet", "fc6", 9216, 4096),
    "alexnet_fc7": ("AlexNet", "fc7", 4096, 4096),
    "alexnet_fc8": ("AlexNet", "fc8", 4096, 1000),
    "vgg16_fc6": ("VGG-16", "fc6", 25088, 4096),
    "vgg16_fc7": ("VGG-16", "fc7", 4096, 4096),
    "vgg16_fc8": ("VGG-16", "fc8", 4096, 1000),
    "vgg16_conv5": ("VGG-16", "conv5 (3x3, 512->512)", 4608, 512),
}


@dataclass(frozen=True)
class Spec:
    """How one design is built: leg factorisations, the bond dimension chi and (trees) the leaf bond."""

    in_factors: tuple[int, ...]
    out_factors: tuple[int, ...]
    chi: int
    leaf: int | None = None  # bond from each leaf (the tensor holding a site's open legs) up into the tree


# The choices, per layer and kind. The larger the layer, the more it is compressed (about 2,000x for the smallest
# matrices up to about 74,000x for VGG-16 fc6), and within a layer the four kinds have comparable parameter counts.
#
# Why leaf bonds: the nonlinear generators (gelu after every absorption) must be evaluated bottom-up in a fixed
# order, and in aTTN and MERA the disentanglers join neighbouring subtrees before the top, so the last fragments
# hold all of W times the bonds still open at that point: W x chi^2 with 3 or 4 sites, W x chi^3 with 5 or 6
# (a MERA needs 5 or more sites to differ from an aTTN: two disentangler layers). More, smaller legs do not help
# (more sites leave more bonds open). What helps is keeping the upper bonds at chi = 2 and spending parameters on
# the leaf bonds, which are contracted away at the bottom: the training memory stays that of chi = 2 while the
# parameter count reaches the target. TTN and MPO have no such term (their W is built from disjoint halves).
SPECS: dict[str, dict[str, Spec]] = {
    "alexnet_fc6": {
        "ttn": Spec((8, 8, 6, 6, 4), (8, 8, 4, 4, 4), chi=5),
        "attn": Spec((12, 12, 8, 8), (8, 8, 8, 8), chi=2, leaf=4),
        "mera": Spec((8, 8, 6, 6, 4), (8, 8, 4, 4, 4), chi=2, leaf=6),
        "mpo": Spec((8, 8, 6, 6, 4), (8, 8, 4, 4, 4), chi=3),
    },
    "alexnet_fc7": {
        "ttn": Spec((8, 8, 8, 8), (8, 8, 8, 8), chi=4),
        "attn": Spec((8, 8, 8, 8), (8, 8, 8, 8), chi=2, leaf=4),
        "mera": Spec((4, 4, 4, 4, 4, 4), (4, 4, 4, 4, 4, 4), chi=2, leaf=6),
        "mpo": Spec((8, 8, 4, 4, 4), (8, 8, 4, 4, 4), chi=3),
    },
    "alexnet_fc8": {
        "ttn": Spec((8, 8, 4, 4, 4), (5, 5, 5, 4, 2), chi=5),
        "attn": Spec((8, 8, 8, 8), (8, 5, 5, 5), chi=4),
        "mera": Spec((8, 8, 4, 4, 4), (5, 5, 5, 4, 2), chi=2, leaf=6),
        "mpo": Spec((8, 8, 8, 8), (8, 5, 5, 5), chi=3),
    },
    "vgg16_fc6": {
        "ttn": Spec((8, 8, 8, 7, 7), (8, 8, 4, 4, 4), chi=5),
        "attn": Spec((16, 14, 14, 8), (8, 8, 8, 8), chi=2, leaf=4),
        "mera": Spec((8, 8, 8, 7, 7), (8, 8, 4, 4, 4), chi=2, leaf=6),
        "mpo": Spec((8, 8, 8, 7, 7), (8, 8, 4, 4, 4), chi=3),
    },
    # VGG-16 fc7 uses MPO-Net's factorisation (Gao et al. 2020): [4,4,8,8,4] x [4,4,8,8,4], MPO ranks 4 -> 2,432.
    "vgg16_fc7": {
        "ttn": Spec((4, 4, 8, 8, 4), (4, 4, 8, 8, 4), chi=6),
        "attn": Spec((4, 4, 8, 8, 4), (4, 4, 8, 8, 4), chi=2, leaf=8),
        "mera": Spec((4, 4, 8, 8, 4), (4, 4, 8, 8, 4), chi=2, leaf=8),
        "mpo": Spec((4, 4, 8, 8, 4), (4, 4, 8, 8, 4), chi=4),
    },
    "vgg16_fc8": {
        "ttn": Spec((8, 8, 8, 8), (8, 5, 5, 5), chi=7),
        "attn": Spec((8, 8, 8, 8), (8, 5, 5, 5), chi=5),
        "mera": Spec((8, 8, 4, 4, 4), (5, 5, 5, 4, 2), chi=2, leaf=8),
        "mpo": Spec((8, 8, 8, 8), (8, 5, 5, 5), chi=4),
    },
    "vgg16_conv5": {
        "ttn": Spec((12, 8, 8, 6), (8, 4, 4, 4), chi=5),
        "attn": Spec((12, 8, 8, 6), (8, 4, 4, 4), chi=4),
        "mera": Spec((8, 6, 6, 4, 4), (4, 4, 4, 4, 2), chi=2, leaf=6),
        "mpo": Spec((8, 6, 6, 4, 4), (4, 4, 4, 4, 2), chi=4),
    },
}
KINDS = ("ttn", "attn", "mera", "mpo")
KIND_LABEL = {"ttn": "TTN", "attn": "aTTN", "mera": "MERA", "mpo": "MPO",
              "ttn-lateral": "TTN + lateral 0", "mera-lateral": "MERA + lateral all"}
ACTIVATION = "gelu"  # the nonlinear kinds (ADNTN generators) carry gelu; the MPO stays linear

# Lateral variants (ADNTN's lateral mixing tensors, the templates' ``lateral`` option): the plain kind's spec plus
# lateral tensors, listed after it wherever the compression stays in the published range. The TTN gets them on
# level 0 only (with five sites: one lateral joining leaves inside one half of the root's split, so W still streams
# through the two halves); the MERA on every level (between its disentanglers: a brick wall of two-site tensors
# under each isometry layer; its generator holds W times more open bonds: about 3x the training memory).
LATERAL_VARIANTS: dict[str, tuple[str, str | list[int]]] = {"ttn-lateral": ("ttn", [0]),
                                                              "mera-lateral": ("mera", "all")}
COMPRESSION_RANGE = (1_900, 77_000)  # ADNTN's 2,000x-77,000x per layer


def base_kind(kind: str) -> str:
    """The template kind of a design kind (``"mera-lateral"`` -> ``"mera"``)."""
    return LATERAL_VARIANTS[kind][0] if kind in LATERAL_VARIANTS else kind


def kinds_for(key: str) -> list[str]:
    """The design kinds of one layer: the four kinds, each followed by its lateral variants that fit the range."""
    out = []
    for kind in KINDS:
        out.append(kind)
        for variant, (base, _) in LATERAL_VARIANTS.items():
            if base == kind and COMPRESSION_RANGE[0] <= build(key, variant).compression <= COMPRESSION_RANGE[1]:
                out.append(variant)
    return out


def with_leaf_bond(design: Design, dim: int) -> Design:
    """A copy of a tree design whose leaf bonds (bonds of tensors holding open legs) have dimension ``dim``."""
    out = design.copy()
    open_legs = {name for name, ix in out.indices.items() if ix.role != "bond"}
    for t in out.tensors:
        if open_legs & set(t.indices):
            for name in t.indices:
                if out.indices[name].role == "bond":
                    out.indices[name].dim = dim
    out.meta["leaf_bond"] = dim
    return out.check()


def build(key: str, kind: str) -> Design:
    """The design for one layer and kind, with a readable name and meta data for the studio's preset list."""
    net, layer, n_in, n_out = LAYERS[key]
    spec = SPECS[key][base_kind(kind)]
    act = None if kind == "mpo" else ACTIVATION
    d = make_template(base_kind(kind), n_in, n_out, bond=spec.chi, activation=act,
                      in_factors=spec.in_factors, out_factors=spec.out_factors,
                      lateral=LATERAL_VARIANTS[kind][1] if kind in LATERAL_VARIANTS else None)
    if spec.leaf is not None:
        d = with_leaf_bond(d, spec.leaf)
    bonds = f"chi={spec.chi}" + (f", leaf {spec.leaf}" if spec.leaf else "")
    d.name = f"{net} {layer} {n_in}x{n_out} - {KIND_LABEL[kind]} {bonds}" + (f", {act}" if act else "")
    d.meta.update({"preset": True, "network": net, "layer": layer, "source": "examples/paper_table.py"})
    return d


# ----------------------------------------------------------------------------- formatting
def human(n: float) -> str:
    """1234567 -> '1.23M' (FLOPs)."""
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            text = f"{n / div:.3g}"
            return (f"{n / div:.0f}" if "e" in text else text) + unit
    return f"{n:.3g}"


def human_bytes(n: float) -> str:
    """1.5 * 2**30 -> '1.5 GiB' (three significant digits, never in exponent notation)."""
    for unit, div in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= div:
            v = n / div
            return f"{v:,.0f} {unit}" if v >= 100 else f"{v:.3g} {unit}"
    return f"{int(n)} B"


def legs(spec: Spec) -> str:
    return "x".join(map(str, spec.in_factors)) + " -> " + "x".join(map(str, spec.out_factors))


HEADER = ("layer", "W (in x out)", "kind", "legs (in -> out)", "bonds", "params", "compression", "gen FLOPs",
          "fwd FLOPs @64", "train mem @64")


def rows(keys: list[str], batch: int) -> list[tuple[str, ...]]:
    """One row per layer for the dense weight, then one per design; every number from cost_report."""
    out = []
    for key in keys:
        net, layer, n_in, n_out = LAYERS[key]
        name, shape = f"{net} {layer}", f"{n_in}x{n_out}"
        dense = None
        for kind in kinds_for(key):
            spec = SPECS[key][base_kind(kind)]
            rep = cost_report(build(key, kind), batch=batch)
            if dense is None:
                dense = (name, shape, "dense", "-", "-", f"{rep.dense_params:,}", "1x", "-",
                         human(rep.dense_forward_flops), human_bytes(rep.dense_train_memory_bytes))
                out.append(dense)
            bonds = f"{spec.chi}" + (f" (leaf {spec.leaf})" if spec.leaf else "")
            out.append(("", "", KIND_LABEL[kind], legs(spec), bonds, f"{rep.params:,}",
                        f"{rep.compression:,.0f}x", human(rep.generate_flops), human(rep.forward_flops),
                        human_bytes(rep.train_memory_bytes)))
    return out


def aligned(table: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[c]) for r in [HEADER, *table]) for c in range(len(HEADER))]
    right = {5, 6, 7, 8, 9}  # numbers right-aligned

    def line(r):
        return "  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(HEADER), "  ".join("-" * w for w in widths), *(line(r) for r in table)])


def markdown(table: list[tuple[str, ...]]) -> str:
    head = "| " + " | ".join(HEADER) + " |"
    sep = "|" + "|".join("---:" if c >= 5 else "---" for c in range(len(HEADER))) + "|"
    return "\n".join([head, sep, *("| " + " | ".join(r) + " |" for r in table)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "engine" / "assets" / "designs"),
                   help="folder for the preset JSON files (default engine/assets/designs; '' writes none)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--batch", type=int, default=64, help="batch size for forward FLOPs and memory (default 64)")
    p.add_argument("--layers", nargs="*", choices=list(LAYERS), default=list(LAYERS),
                   help="only these layers (default: all)")
    p.add_argument("--quick", action="store_true", help="the first and last layer only (for smoke tests)")
    args = p.parse_args(argv)
    keys = [args.layers[0], args.layers[-1]] if args.quick and len(args.layers) > 1 else args.layers

    table = rows(keys, args.batch)
    print(markdown(table) if args.markdown else aligned(table))

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = [save_design(build(key, kind), out / f"{key}_{kind}.json") for key in keys for kind in kinds_for(key)]
        print(f"\nwrote {len(written)} designs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
