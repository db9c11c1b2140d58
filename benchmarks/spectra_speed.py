"""Bond spectra of a 4096x4096 MPO at chi=16 (CPU), against forming W and taking its SVD with numpy.

- spectra: :func:`engine.analysis.bond_spectra` on the MPO (4 sites of 8 x 8, three bonds of 16), median of
  ``--repeats`` warm calls (also the first, cold call of the process: quimb's import); W is never formed;
  goal: under 200 ms;
- dense: numpy forming W from the same cores (``einsum``, 2^24 entries) and the singular values of W reshaped across
  the middle cut (4096 x 4096), median of ``--dense-repeats``; the middle bond's spectrum is checked against it.

    .venv/bin/python benchmarks/spectra_speed.py                     # about a minute (the dense SVD)
    .venv/bin/python benchmarks/spectra_speed.py --dense-repeats 0   # the spectra only
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.design.templates import make_template  # noqa: E402
from engine.nn.linear import TNLinear  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--bond", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--dense-repeats", type=int, default=1)
    args = ap.parse_args()

    d = make_template("mpo", args.features, args.features, args.bond)
    layer = TNLinear(d, seed=0, bias=False)
    shapes = ", ".join(f"{t.id} {d.shape(t.id)}" for t in d.tensors)
    print(f"{d.name}: {len(d.tensors)} cores ({shapes}), {d.params:,} params; {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}")

    t0 = time.perf_counter()
    from engine.analysis.spectra import bond_spectra

    rep = bond_spectra(d, layer)
    cold = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rep = bond_spectra(d, layer)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"spectra (exact, canonical form; W never formed): median {med * 1e3:.1f} ms over {args.repeats} calls "
          f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}); first call of the process {cold * 1e3:.0f} ms "
          f"(imports); goal < 200 ms: {'met' if med < 0.2 else 'MISSED'}")
    for s in rep:
        print(f"  {s.bond}: dim {s.dim}, effective rank {s.effective_rank()}, entropy {s.entropy:.3f}, "
              f"largest {s.values[0]:.4g}")

    if args.dense_repeats <= 0:
        return 0
    cores = {k: v.detach().double().numpy() for k, v in layer.core_tensors().items()}
    legs = d.open_legs
    mid = rep.spectra[len(rep.spectra) // 2]
    left = mid.cut[0]
    perm = [legs.index(i) for i in left] + [legs.index(i) for i in legs if i not in left]
    n_left = int(np.prod([d.dim(i) for i in left]))
    form, svd = [], []
    ref = None
    for _ in range(args.dense_repeats):
        t0 = time.perf_counter()
        ops = []
        for t in d.tensors:
            ops += [cores[t.id], t.indices]
        import opt_einsum as oe

        w = oe.contract(*ops, legs)  # the full tensor, in legs then out legs
        form.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = np.ascontiguousarray(np.transpose(w, perm)).reshape(n_left, -1)
        ref = np.linalg.svd(m, compute_uv=False)
        svd.append(time.perf_counter() - t0)
        del w, m
    f, s = statistics.median(form), statistics.median(svd)
    err = float(np.max(np.abs(np.asarray(mid.values) - ref[:mid.dim])) / ref[0])
    print(f"dense numpy: form W {f:.2f} s + SVD across the middle cut ({mid.bond}, {n_left} x {n_left}) {s:.2f} s = "
          f"{f + s:.2f} s (median of {args.dense_repeats}); {(f + s) / med:,.0f}x the spectra")
    print(f"  {mid.bond}'s spectrum vs numpy's top {mid.dim}: max relative difference {err:.1e}; numpy's value "
          f"{mid.dim + 1} is {ref[mid.dim] / ref[0]:.1e} of the largest (the bond bounds the rank)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
