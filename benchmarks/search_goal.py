"""The design search's measured goal: on a data set, a 256x256 layer under a parameter budget, does the search's
Pareto front hold a design at least as accurate as the best design of the hand sweep, with fewer parameters?

The hand sweep is the README's (examples/digits_sweep.py: TTN / aTTN / MERA with gelu and MPO at three bond
dimensions each, legs 4x4x4x2x2, MLP 64 -> 256 -> [256x256] -> 10, 15 epochs, seed 0, test accuracy). For digits
its numbers are the README's table; ``--hand`` (and any other data set) runs the same grid here first.

The search runs ``--workers`` worker processes (``engine.search.run_search``) with the default space (every
template kind, 2-6 legs, bonds uniform and per bond, activations none/gelu) and trains ``--trials`` candidates for
the same 15 epochs on 80% of the training examples (20% held out: the validation accuracy it optimises); the
verdict compares the test accuracy of the front's designs, which the search never optimised, with the hand
sweep's best test accuracy within the budget.

Run:  .venv/bin/python benchmarks/search_goal.py --dataset digits [--trials 40 --workers 2 --max-params 2000]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FACTORS = [4, 4, 4, 2, 2]
GRID = {"ttn": (2, 4, 8), "attn": (2, 3, 4), "mera": (2, 3, 4), "mpo": (2, 4, 8)}
# README "Accuracy vs compression on digits" (examples/digits_sweep.py, 15 epochs, seed 0, CPU)
README_DIGITS = [("ttn", 2, 140, 0.978), ("ttn", 4, 432, 0.975), ("ttn", 8, 2048, 0.978),
                 ("attn", 2, 172, 0.975), ("attn", 3, 420, 0.975), ("attn", 4, 944, 0.967),
                 ("mera", 2, 188, 0.975), ("mera", 3, 501, 0.969), ("mera", 4, 1200, 0.964),
                 ("mpo", 2, 184, 0.975), ("mpo", 4, 656, 0.975), ("mpo", 8, 2464, 0.961)]


def hand_sweep(dataset: str, epochs: int, runs_dir: str) -> list[tuple[str, int, int, float]]:
    from engine.design.templates import make_template
    from engine.train.config import RunConfig
    from engine.train.loop import run_training
    from engine.train.store import RunStore

    store = RunStore(runs_dir)
    config = RunConfig(dataset=dataset, model="mlp", epochs=epochs, device="cpu", seed=0)
    rows = []
    for kind, chis in GRID.items():
        for chi in chis:
            d = make_template(kind, 256, 256, bond=chi, activation=None if kind == "mpo" else "gelu",
                              in_factors=FACTORS, out_factors=FACTORS)
            run = run_training(store.create_run(config, d, name=f"hand {kind} chi={chi}"), str(store.root))
            acc = run["results"]["test_accuracy"]
            rows.append((kind, chi, d.params, acc))
            print(f"  hand {kind:<5} chi={chi}: {d.params:>5,} params, test accuracy {acc:.3f}", flush=True)
    return rows


def _f(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-params", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--hand", action="store_true", help="run the hand sweep here (always for data sets but digits)")
    p.add_argument("--hand-from", default=None, help="reuse the hand sweep of an earlier result JSON of this script")
    p.add_argument("--name", default=None)
    p.add_argument("--out", default=None, help="folder for the JSON result (default: a temporary folder)")
    args = p.parse_args(argv)

    import optuna

    from engine.search import Budget, LayerSpace, SearchSpec, run_search, study_report
    from engine.search.study import refit_front

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out or tempfile.mkdtemp(prefix="tnstudio-search-goal-"))
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = str(out / "runs")

    if args.hand_from:
        hand, hand_source = [tuple(h) for h in json.loads(Path(args.hand_from).read_text())["hand"]], "run earlier"
    elif args.dataset == "digits" and not args.hand:
        hand, hand_source = README_DIGITS, "README table"
    else:
        print(f"hand sweep on {args.dataset} ({args.epochs} epochs):", flush=True)
        t0 = time.perf_counter()
        hand, hand_source = hand_sweep(args.dataset, args.epochs, runs_dir), "run here"
        print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    within = [h for h in hand if h[2] <= args.max_params]
    ref = max(within, key=lambda h: (h[3], -h[2]))

    name = args.name or f"goal-{args.dataset}-{int(time.time())}"
    spec = SearchSpec(name=name, space=LayerSpace(256, 256), budget=Budget(max_params=args.max_params),
                      dataset=args.dataset, trials=args.trials, epochs=args.epochs, val_fraction=args.val_fraction)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rep = run_search(spec, workers=args.workers, runs_dir=runs_dir)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    t1 = time.perf_counter()
    refit_front(name, runs_dir=runs_dir)
    refit_s = time.perf_counter() - t1
    rep = study_report(name)

    c = rep.counts
    print(f"\n### {args.dataset}: search {name}, max {args.max_params:,} params, {args.workers} workers\n")
    print(f"{c['trained']} trained ({c['pruned_accuracy']} of them pruned on accuracy), {c['total']} candidates "
          f"({c['pruned_budget']} over budget, {c['pruned_invalid']} refused by a template, {c['duplicates']} "
          f"repeats, {c['failed']} failed); search wall {wall:.0f} s, CPU {cpu:.0f} s (workers); refit of the "
          f"{len(rep.front)} front designs {refit_s:.0f} s\n")
    print("| front design | params | val acc | test acc (80% train) | test acc (refit, all train) |\n"
          "|---|---:|---:|---:|---:|")
    for t in rep.front:
        print(f"| {t.label} | {t.params:,} | {t.val_accuracy:.3f} | {_f(t.test_accuracy)} | "
              f"{_f(t.refit_test_accuracy)} |")
    wins = [t for t in rep.front if (t.refit_test_accuracy or 0) >= ref[3] and t.params < ref[2]]
    best_front = max((t for t in rep.front if t.refit_test_accuracy is not None),
                     key=lambda t: (t.refit_test_accuracy, -t.params), default=None)
    print(f"\nbest hand design within {args.max_params:,} params ({hand_source}): {ref[0]} chi={ref[1]}, "
          f"{ref[2]:,} params, test accuracy {ref[3]:.3f}")
    if wins:
        w = min(wins, key=lambda t: t.params)
        verdict = (f"MET: the front holds {w.label}: {w.params:,} params (< {ref[2]:,}), test accuracy "
                   f"{w.refit_test_accuracy:.3f} (>= {ref[3]:.3f})")
    else:
        verdict = (f"NOT MET: no front design reaches test accuracy >= {ref[3]:.3f} with fewer than {ref[2]:,} "
                   f"params" + (f"; the front's most accurate on test is {best_front.label}, {best_front.params:,} "
                                f"params, {best_front.refit_test_accuracy:.3f}" if best_front else ""))
    print(verdict)
    result = {"dataset": args.dataset, "name": name, "wall_s": wall, "cpu_s": cpu, "refit_s": refit_s, "hand": hand,
              "hand_source": hand_source, "reference": ref, "verdict": verdict, "report": rep.to_dict()}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out / (name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
