"""Live cost latency and path quality of TN Studio's cost model.

For every template at sizes up to 128 tensors (legs of dimension 2, bond dimension ``--bond``):

- latency: time to a full :func:`engine.contract.cost.cost_report` right after one bond-dimension change (a new fingerprint:
  nothing cached), median over ``--changes`` changes; goal: median under 50 ms for <= 64 tensors;
- quality: FLOPs of the program's contraction (generating W, and streaming x at batch ``--batch``) against
  cotengra's HyperOptimizer given ``--budget`` seconds (10 s by default, as in the issue) on the same network,
  both counted by the program's own rule; goal: within 1.1x.

    .venv/bin/python benchmarks/cost_latency.py                 # the full table (about 10 s per network)
    .venv/bin/python benchmarks/cost_latency.py --budget 1      # a quick run (a few minutes)
    .venv/bin/python benchmarks/cost_latency.py --warm          # live search after a thorough one at bond - 1
    .venv/bin/python benchmarks/cost_latency.py --kinds none --loopy-sizes 60,80   # loopy networks only

Loopy random networks (random 3-regular graphs of 24-80 tensors, bonds and legs of dimension 2, half the tensors
holding an in leg, half an out leg; several seeds): the same latency and quality rows, and the background
refinement's quality (``--search thorough`` for ``--refine`` seconds, the studio's default 2 s) against cotengra's
10 s; goals: live within 1.5x, refined within 1.1x.

The live (fast) search is a pure function of the design: it no longer reads paths remembered at other bond
dimensions, so ``--warm`` now reports the cold figures for it (the background thorough search reads them).
Designs that validation refuses (e.g. a Tucker core of more than 2^63 - 1 entries) are listed as refused.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.contract.cache import clear_cache  # noqa: E402
from engine.contract.cost import cost_report  # noqa: E402
from engine.contract.paths import cotengra_path, path_cost  # noqa: E402
from engine.contract.program import BATCH, compile_program  # noqa: E402
from engine.design.graphs import regular_graph_design as loopy_design  # noqa: E402
from engine.design.templates import make_template  # noqa: E402

# the reference: cotengra's HyperOptimizer with its default path finders (kahypar's partitioner among them when
# kahypar is installed: the strongest reference this machine has)
REFERENCE = ("cotengra's default methods, kahypar included" if importlib.util.find_spec("kahypar")
             else "cotengra's default methods; kahypar not installed")
KINDS = ("mpo", "tensor_ring", "tucker", "cp", "ttn", "attn", "mera")
SITES = (4, 8, 16, 32, 64, 128)


def design(kind: str, sites: int, bond: int):
    n = 2 ** sites
    return make_template(kind, n, n, bond, in_factors=[2] * sites, out_factors=[2] * sites)


def loopy_latency_ms(n: int, seed: int, bond: int, batch: int, changes: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for k in range(changes):
        d = loopy_design(n, bond + (k % 2), seed)
        clear_cache(paths=True)
        t, c = time.perf_counter(), time.process_time()
        cost_report(d, batch=batch)
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return wall, cpu


def refined_flops(d, batch: int, which: str, seconds: float) -> int:
    """FLOPs after the background refinement: a thorough compile for ``seconds`` (cold caches)."""
    clear_cache(paths=True)
    if which.startswith("generate"):
        return compile_program(d, batch, "materialise", "thorough", seconds).generate_flops
    return compile_program(d, batch, "stream", "thorough", seconds).flops


def latency_ms(kind: str, sites: int, bond: int, batch: int, changes: int) -> tuple[list[float], list[float]]:
    """Wall and CPU times of a full report after each bond change (bond, bond+1, ...: always a new fingerprint).

    CPU time (this process only) is what the report costs on an otherwise idle core; wall time also counts the
    waits when other processes share the cores."""
    wall, cpu = [], []
    for k in range(changes):
        d = design(kind, sites, bond + (k % 2))
        clear_cache(paths=True)
        t, c = time.perf_counter(), time.process_time()
        cost_report(d, batch=batch)
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return wall, cpu


def networks(d, batch: int):
    """(name, operands, output indices, dims) of the two linear networks: cores -> W and x + cores -> y."""
    dims = {k: v.dim for k, v in d.indices.items()}
    dims[BATCH] = batch
    cores = [(t.id, tuple(t.indices)) for t in d.tensors]
    yield "generate W", cores, tuple(d.in_legs + d.out_legs), dims
    yield f"stream B={batch}", [("x", (BATCH,) + tuple(d.in_legs))] + cores, (BATCH,) + tuple(d.out_legs), dims


def program_flops(d, batch: int, which: str) -> int:
    if which.startswith("generate"):
        return compile_program(d, batch, "materialise").generate_flops
    return compile_program(d, batch, "stream").flops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=10.0, help="cotengra seconds per network (default 10)")
    p.add_argument("--bond", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--changes", type=int, default=7, help="bond changes timed per design (default 7)")
    p.add_argument("--max-tensors", type=int, default=128)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--no-cotengra", action="store_true", help="latency only")
    p.add_argument("--loopy-sizes", default="24,40,60,80", help="tensors of the loopy random networks ('' : none)")
    p.add_argument("--loopy-seeds", default="0,1,2")
    p.add_argument("--refine", type=float, default=2.0,
                   help="seconds of the background (thorough) refinement scored on loopy networks (0: skip)")
    p.add_argument("--warm", action="store_true",
                   help="quality of the live search after a background thorough search (cotengra, --budget) at the "
                        "previous bond dimension, the studio's flow: paths are remembered per network structure")
    args = p.parse_args(argv)

    print(f"{'template':<12}{'sites':>6}{'tensors':>8}{'wall ms':>9}{'cpu ms':>8}  "
          f"{'network':<14}{'ours':>11}{'cotengra':>11}{'ratio':>9}")
    ratios, meds, cmeds = [], [], []
    for kind in [k for k in args.kinds.split(",") if k and k != "none"]:
        for sites in SITES:
            try:
                d = design(kind, sites, args.bond)
                design(kind, sites, args.bond + 1)  # latency_ms alternates bond and bond + 1
            except ValueError as e:  # validation's bounds (e.g. a Tucker core of more than 2^63 - 1 entries)
                print(f"{kind:<12}{sites:>6}  refused by validation: {e}")
                break
            if len(d.tensors) > args.max_tensors:
                break
            wall, cpu = latency_ms(kind, sites, args.bond, args.batch, args.changes)
            med, cmed = statistics.median(wall), statistics.median(cpu)
            if len(d.tensors) <= 64:
                meds.append(med)
                cmeds.append(cmed)
            head = f"{kind:<12}{sites:>6}{len(d.tensors):>8}{med:>9.1f}{cmed:>8.1f}  "
            if args.no_cotengra:
                print(head)
                continue
            if args.warm:  # a thorough refinement ran at bond - 1; the live report is then asked at bond
                prev = design(kind, sites, args.bond - 1)
                for sched in ("materialise", "stream"):
                    compile_program(prev, args.batch, sched, "thorough", args.budget)
                clear_cache()
            for k, (name, ops, out, dims) in enumerate(networks(d, args.batch)):
                ours = program_flops(d, args.batch, name)
                try:
                    path = cotengra_path(ops, out, dims, args.budget, methods=None, reconfigure=False)
                    theirs = path_cost([ix for _, ix in ops], path, frozenset(out), dims)[0]
                except Exception as e:  # noqa: BLE001  (report, keep benchmarking)
                    print(f"{head if k == 0 else ' ' * len(head)}{name:<14} cotengra failed: {e}")
                    continue
                ratio = ours / theirs if theirs else 1.0
                ratios.append(ratio)
                print(f"{head if k == 0 else ' ' * len(head)}{name:<14}{ours:>11.3g}{theirs:>11.3g}{ratio:>9.3g}")
            sys.stdout.flush()
    if meds:
        print(f"\nlatency of a full report after a bond change, designs <= 64 tensors (median per design): "
              f"wall {statistics.median(meds):.1f} ms typical, {max(meds):.1f} ms worst; "
              f"cpu {statistics.median(cmeds):.1f} ms typical, {max(cmeds):.1f} ms worst (goal < 50 ms); "
              f"{sum(m < 50 for m in cmeds)}/{len(cmeds)} designs under 50 ms cpu")
    print(f"load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if ratios:
        print(f"path FLOPs / cotengra ({args.budget:g} s): median {statistics.median(ratios):.3f}, "
              f"worst {max(ratios):.3f} (goal <= 1.1); {sum(r <= 1.1 for r in ratios)}/{len(ratios)} within goal")
    if args.loopy_sizes:
        loopy(args)
    return 0


def loopy(args) -> None:
    """The loopy random networks: latency, live quality and refined quality against cotengra."""
    sizes = [int(v) for v in args.loopy_sizes.split(",")]
    seeds = [int(v) for v in args.loopy_seeds.split(",")]
    bond = 2
    print(f"\nloopy random networks (3-regular, bonds 2, legs 2): live = fast search, refined = thorough "
          f"{args.refine:g} s, both against cotengra {args.budget:g} s ({REFERENCE})")
    print(f"{'network':<22}{'wall ms':>9}{'cpu ms':>8}  {'network':<14}{'live':>11}{'refined':>11}{'cotengra':>11}"
          f"{'live x':>8}{'ref x':>7}")
    live, refined, lat = [], [], {}
    for n in sizes:
        for seed in seeds:
            d = loopy_design(n, bond, seed)
            wall, cpu = loopy_latency_ms(n, seed, bond, args.batch, args.changes)
            lat.setdefault(n, []).append((statistics.median(wall), statistics.median(cpu)))
            head = f"{d.name:<22}{statistics.median(wall):>9.1f}{statistics.median(cpu):>8.1f}  "
            if args.no_cotengra:
                print(head)
                continue
            for k, (name, ops, out, dims) in enumerate(networks(d, args.batch)):
                ours = program_flops(d, args.batch, name)
                path = cotengra_path(ops, out, dims, args.budget, methods=None, reconfigure=False)
                theirs = path_cost([ix for _, ix in ops], path, frozenset(out), dims)[0]
                ref = refined_flops(d, args.batch, name, args.refine) if args.refine else ours
                live.append(ours / theirs)
                refined.append(ref / theirs)
                print(f"{head if k == 0 else ' ' * len(head)}{name:<14}{ours:>11.3g}{ref:>11.3g}{theirs:>11.3g}"
                      f"{ours / theirs:>8.3g}{ref / theirs:>7.3g}", flush=True)
    for n, v in lat.items():  # wall: what the user waits (the two schedules' searches overlap from 32 tensors)
        walls, cpus = [w for w, _ in v], [c for _, c in v]
        print(f"loopy n={n}: report latency median {statistics.median(walls):.0f} ms wall (max {max(walls):.0f}), "
              f"{statistics.median(cpus):.0f} ms cpu (max {max(cpus):.0f})")
    small = [w for n, v in lat.items() if n <= 64 for w, _ in v]
    if small:
        print(f"loopy networks of <= 64 tensors: median {statistics.median(small):.0f} ms wall (goal < 50 ms)")
    if live:
        print(f"loopy live / cotengra: median {statistics.median(live):.2f}, worst {max(live):.3g}; "
              f"{sum(r <= 1.5 for r in live)}/{len(live)} within 1.5x")
        print(f"loopy refined ({args.refine:g} s) / cotengra: median {statistics.median(refined):.2f}, worst "
              f"{max(refined):.3g}; {sum(r <= 1.1 for r in refined)}/{len(refined)} within 1.1x")


if __name__ == "__main__":
    sys.exit(main())
