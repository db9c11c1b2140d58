"""The paper table: TTN, aTTN, MERA and MPO designs for the big layers of AlexNet and VGG-16, and conv designs for
their convolutions.

For the fully connected layers of AlexNet (9216x4096, 4096x4096, 4096x1000) and of VGG-16 (25088x4096, 4096x4096,
4096x1000) this script builds one design per kind (TTN, aTTN, MERA, MPO, and lateral variants of TTN and MERA where
they fit the compression range). For the convolutions (AlexNet conv2..conv5 and VGG-16's conv layers from conv1_2 on,
one row per distinct shape; torchvision's layers, 224x224 model input) it builds real conv2d designs (kernel legs
and all): CP (Lebedev et al. 2015), Tucker-2 (Kim et al. 2016), MPO / TT-conv (Garipov et al. 2016) and a TTN
generator with gelu (ADNTN). It prints what each costs and saves every design under ``engine/assets/designs/`` so the
studio lists them as presets.

Every number comes from the cost model: parameters, compression, generation FLOPs (building W or K from the cores),
forward FLOPs at batch 64 and the memory of one training step (float32, AdamW) at batch 64 (``cost_report``; for
the convolutions ``conv_cost_report`` at the layer's real input size, batch 64 images, with the program the cost
model picks).

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

from engine.contract.conv import conv_cost_report  # noqa: E402
from engine.contract.cost import cost_report  # noqa: E402
from engine.design.conv import make_conv_template  # noqa: E402
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
}

# The conv layers: key -> (network, layer(s), in channels, out channels, kernel, stride, padding, input side), as
# torchvision builds AlexNet and VGG-16 for 224x224 images (VGG-16's layers of one shape and input size share a row).
CONV_LAYERS = {
    "alexnet_conv2": ("AlexNet", "conv2", 64, 192, 5, 1, 2, 27),
    "alexnet_conv3": ("AlexNet", "conv3", 192, 384, 3, 1, 1, 13),
    "alexnet_conv4": ("AlexNet", "conv4", 384, 256, 3, 1, 1, 13),
    "alexnet_conv5": ("AlexNet", "conv5", 256, 256, 3, 1, 1, 13),
    "vgg16_conv1_2": ("VGG-16", "conv1_2", 64, 64, 3, 1, 1, 224),
    "vgg16_conv2_1": ("VGG-16", "conv2_1", 64, 128, 3, 1, 1, 112),
    "vgg16_conv2_2": ("VGG-16", "conv2_2", 128, 128, 3, 1, 1, 112),
    "vgg16_conv3_1": ("VGG-16", "conv3_1", 128, 256, 3, 1, 1, 56),
    "vgg16_conv3_2": ("VGG-16", "conv3_2-3", 256, 256, 3, 1, 1, 56),
    "vgg16_conv4_1": ("VGG-16", "conv4_1", 256, 512, 3, 1, 1, 28),
    "vgg16_conv4_2": ("VGG-16", "conv4_2-3", 512, 512, 3, 1, 1, 28),
    "vgg16_conv5_1": ("VGG-16", "conv5_1-3", 512, 512, 3, 1, 1, 14),
}
# The conv kinds: CP and Tucker-2 with one factor per channel side and rank out_channels / 8 (at least 16), the
# MPO (TT-conv: the kernel site, then the channel legs balanced at about 8) at chi 8, the TTN generator (gelu) at 6.
CONV_KINDS = ("cp", "tucker", "mpo", "ttn")
CONV_LABEL = {"cp": "CP", "tucker": "Tucker-2", "mpo": "MPO (TT-conv)", "ttn": "TTN"}
CONV_BOND = {"mpo": 8, "ttn": 6}


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


def conv_bond(key: str, kind: str) -> int:
    """The bond of a conv layer's design: CP and Tucker-2 rank out_channels / 8 (at least 16), else CONV_BOND."""
    return CONV_BOND.get(kind, max(16, CONV_LAYERS[key][3] // 8))


def build_conv(key: str, kind: str) -> Design:
    """The conv2d design for one conv layer and kind (its input size recorded as the cost report's default)."""
    net, layer, cin, cout, k, stride, pad, side = CONV_LAYERS[key]
    single = kind in ("cp", "tucker")  # Lebedev's CP and Kim's Tucker-2: one factor per channel side
    act = "gelu" if kind == "ttn" else None
    bond = conv_bond(key, kind)
    d = make_conv_template(kind, cin, cout, k, bond, act, [cin] if single else None, [cout] if single else None,
                           stride=stride, padding=pad, image=side)
    d.name = (f"{net} {layer} conv {k}x{k} {cin}->{cout} @{side} - {CONV_LABEL[kind]} "
              f"{'rank' if single else 'chi'}={bond}" + (f", {act}" if act else ""))
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


CONV_HEADER = ("layer", "conv (input)", "kind", "legs (in -> out)", "bond", "params", "compression", "program",
               "fwd FLOPs @64", "train mem @64")


def conv_rows(keys: list[str], batch: int) -> list[tuple[str, ...]]:
    """One row per conv layer for the dense kernel, then one per design; every number from conv_cost_report at the
    layer's input size (``batch`` images)."""
    out = []
    for key in keys:
        net, layer, cin, cout, k, stride, pad, side = CONV_LAYERS[key]
        conv = f"{k}x{k} {cin}->{cout}" + (f" s{stride}" if stride > 1 else "") + f" ({side}x{side})"
        for n, kind in enumerate(CONV_KINDS):
            d = build_conv(key, kind)
            rep = conv_cost_report(d, batch=batch, image=side)
            if n == 0:
                out.append((f"{net} {layer}", conv, "dense", "-", "-", f"{rep.dense_params:,}", "1x", "conv2d",
                            human(rep.dense_forward_flops), human_bytes(rep.dense_train_memory_bytes)))
            legs_ = "x".join(str(d.dim(i)) for i in d.in_legs) + " -> " + "x".join(str(d.dim(i)) for i in d.out_legs)
            out.append(("", "", CONV_LABEL[kind] + (" (gelu)" if not d.is_linear else ""), legs_,
                        str(conv_bond(key, kind)), f"{rep.params:,}", f"{rep.compression:,.0f}x", rep.program,
                        human(rep.forward_flops), human_bytes(rep.train_memory_bytes)))
    return out


def aligned(table: list[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> str:
    widths = [max(len(r[c]) for r in [header, *table]) for c in range(len(header))]
    right = {5, 6, 8, 9} | ({7} if header is HEADER else set())  # numbers right-aligned

    def line(r):
        return "  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in table)])


def markdown(table: list[tuple[str, ...]], header: tuple[str, ...] = HEADER) -> str:
    right = {5, 6, 8, 9} | ({7} if header is HEADER else set())
    head = "| " + " | ".join(header) + " |"
    sep = "|" + "|".join("---:" if c in right else "---" for c in range(len(header))) + "|"
    return "\n".join([head, sep, *("| " + " | ".join(r) + " |" for r in table)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "engine" / "assets" / "designs"),
                   help="folder for the preset JSON files (default engine/assets/designs; '' writes none)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--batch", type=int, default=64, help="batch size for forward FLOPs and memory (default 64)")
    p.add_argument("--layers", nargs="*", choices=list(LAYERS) + list(CONV_LAYERS),
                   default=list(LAYERS) + list(CONV_LAYERS), help="only these layers (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="the first and last fully connected and conv layer only (for smoke tests)")
    args = p.parse_args(argv)
    fc = [k for k in args.layers if k in LAYERS]
    convs = [k for k in args.layers if k in CONV_LAYERS]
    if args.quick:
        fc = fc[:1] + fc[-1:] if len(fc) > 1 else fc
        convs = convs[:1] + convs[-1:] if len(convs) > 1 else convs

    if fc:
        table = rows(fc, args.batch)
        print(markdown(table) if args.markdown else aligned(table))
    if convs:
        table = conv_rows(convs, args.batch)
        print()
        print(markdown(table, CONV_HEADER) if args.markdown else aligned(table, CONV_HEADER))

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = [save_design(build(key, kind), out / f"{key}_{kind}.json") for key in fc for kind in kinds_for(key)]
        written += [save_design(build_conv(key, kind), out / f"{key}_{kind}.json") for key in convs
                    for kind in CONV_KINDS]
        print(f"\nwrote {len(written)} designs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
