"""The ``search`` command of the ``tnstudio`` CLI: design search under budgets (see :mod:`engine.search`).

::

    tnstudio search --in 256 --out 256 --dataset digits --max-params 2000 [--max-flops F --batch B]
                    [--max-train-memory M] --trials 40 --workers 2 [--storage URL] --name S [--detach] [--json]
    tnstudio search show S [--json] [--all]     # the front, best per kind, pruned counts (--all: every trial)
    tnstudio search stop S                      # workers stop at their next evaluation; trials are queued again
    tnstudio search join S [--workers N] [--trials N]   # more workers (another machine: same --storage URL)
    tnstudio search refit S                     # train the front's designs again on all training data (test)
    tnstudio search list                        # the searches in the storage

Running ``tnstudio search ... --name S`` again with the same search continues it (a larger ``--trials`` trains
more); with another search under that name it is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from engine.cli.common import UserError, read_factors

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}  # FLOP prefixes (memory: parse_bytes)


def parse_amount(text: str | None, what: str) -> float | None:
    """A FLOP count: ``"2M"`` -> 2e6, ``"5e8"`` -> 5e8, ``"3GFLOP"`` -> 3e9; None stays None. At least 1 and
    finite; a byte unit (``64MiB``) is refused (it had been read as a FLOP count)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if unit.endswith("flops") or unit.endswith("flop"):
        unit = unit[:-5] if unit.endswith("flops") else unit[:-4]
    if not m or unit not in _UNITS:
        raise UserError(f"{what} must be a number of FLOPs with an optional prefix (e.g. 2e6, 2M, 3GFLOP), got "
                        f"{text!r}")
    value = float(m.group(1)) * _UNITS[unit]
    if not 1 <= value < float("inf"):
        raise UserError(f"{what} must be at least 1 FLOP and finite, got {text!r}")
    return value


def _memory(text: str | None) -> int | None:
    """``--max-train-memory`` as every memory budget is read (:func:`engine.contract.slicing.parse_bytes`)."""
    from engine.contract.slicing import parse_bytes

    if text is None:
        return None
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise UserError(f"--max-train-memory: {e}") from None


def _list(text: str | None, flag: str) -> list[str] | None:
    """``"a, b c"`` -> ``["a", "b", "c"]``; None (the option not given) stays None; an option given with no value
    (``--kinds ''``) is refused (it had meant the defaults)."""
    if text is None:
        return None
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    if not items:
        raise UserError(f"{flag} is empty: give at least one value, or leave the option out for the defaults")
    return items


def _bond_ranges(items: list[str] | None) -> dict[str, tuple[int, int]]:
    out = {}
    for item in items or []:
        kind, _, rng = item.partition("=")
        lo, _, hi = rng.partition(":")
        if kind.strip() in out:
            raise UserError(f"--bond-range gives {kind.strip()!r} twice: give each kind's range once")
        try:
            out[kind.strip()] = (int(lo), int(hi or lo))
        except ValueError:
            raise UserError(f"--bond-range takes KIND=LOW:HIGH (e.g. ttn=2:6), got {item!r}") from None
    return out


def build_spec(args: argparse.Namespace):
    from engine.search import Budget, LayerSpace, SearchSpec
    from engine.search.space import DEFAULT_ACTIVATIONS, DEFAULT_LEGS, SpaceError
    from engine.search.spec import SpecError

    if args.in_features is None or args.out_features is None or args.name is None:
        raise UserError("a search needs --in, --out and --name (or: tnstudio search show|stop|join|list ...)")
    if args.max_flops is not None and args.batch is None:
        raise UserError("--max-flops needs --batch: the batch size the forward FLOPs are counted at")
    for flag, text in (("--in-factors", args.in_factors), ("--out-factors", args.out_factors)):
        if text is not None and not text.strip():
            raise UserError(f"{flag} is empty: give factors such as 4,4,4, or leave the option out")
    in_f, out_f = read_factors(args.in_factors, "--in-factors"), read_factors(args.out_factors, "--out-factors")
    legs_given = _list(args.legs, "--legs")
    try:
        legs = tuple(int(v) for v in legs_given) if legs_given is not None else DEFAULT_LEGS
    except ValueError:
        raise UserError(f"--legs takes numbers of legs such as 3,4,5, got {args.legs!r}") from None
    factorisations = ()
    if in_f or out_f:
        if not (in_f and out_f):
            raise UserError("give both --in-factors and --out-factors (or neither)")
        factorisations = ((tuple(in_f), tuple(out_f)),)
    try:
        space_kw: dict[str, Any] = dict(
            in_features=args.in_features, out_features=args.out_features, legs=legs, factorisations=factorisations,
            bond_ranges=tuple(_bond_ranges(args.bond_range).items()),
            activations=tuple(_list(args.activations, "--activations") or DEFAULT_ACTIVATIONS),
            per_bond=not args.no_per_bond)
        if args.kinds is not None:
            space_kw["kinds"] = tuple(_list(args.kinds, "--kinds"))
        if args.lateral is not None:
            space_kw["options"] = (("lateral", tuple(_list(args.lateral, "--lateral"))),)
        space = LayerSpace(**space_kw)
        budget = Budget(max_params=args.max_params, max_flops=parse_amount(args.max_flops, "--max-flops"),
                        max_train_memory=_memory(args.max_train_memory),
                        batch=args.batch_size if args.batch is None else args.batch)
        return SearchSpec(name=args.name, space=space, budget=budget, dataset=args.dataset,
                          objective=args.objective, trials=args.trials, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                          val_fraction=args.val_fraction, pruner=args.pruner, startup_trials=args.startup_trials)
    except (SpaceError, SpecError, ValueError) as e:
        raise UserError(str(e)) from None


def _progress_printer(out=None):
    shown: set[int] = set()
    out = out or sys.stdout

    def show(rep) -> None:
        for t in sorted(rep.trials, key=lambda t: t.finished or 0):
            if t.status in ("running", "waiting") or t.number in shown:
                continue
            shown.add(t.number)
            if t.status == "complete":
                what = (f"complete, {t.params:,} params, val {t.val_accuracy:.3f}"
                        + (f" (test {t.test_accuracy:.3f})" if t.test_accuracy is not None else "")
                        + (f", repeats #{t.duplicate_of}" if t.duplicate_of is not None else ""))
            elif t.status == "pruned":
                what = f"pruned ({t.pruned_by}): {t.reason}"
            else:
                what = f"{t.status}: {t.reason or ''}"
            print(f"[{rep.counts['trained']}/{rep.target} trained] #{t.number} {t.label or ''}: {what}", file=out,
                  flush=True)

    return show


def _errors():
    from engine.search.spec import SpecError
    from engine.search.storage import StorageError
    from engine.search.study import WorkerFailed

    return (SpecError, StorageError, WorkerFailed)


def _mend(name: str, url: str | None) -> None:
    """Before a search writes: a torn last line of its journal (a crash mid-write) is set aside, said in a line."""
    from engine.search.storage import mend_journal, storage_url

    notice = mend_journal(storage_url(name, url))
    if notice:
        print(f"notice: {notice}", file=sys.stderr, flush=True)


def _started(name: str, procs: list[Any]) -> str:
    """``--detach --json``: the search and its workers' pids and logs, as JSON."""
    from engine.search.study import worker_log

    return json.dumps({"search": name, "workers": [
        {"pid": p.pid, "log": str(worker_log(name, getattr(p, "worker_index", k)))} for k, p in enumerate(procs)]})


WORKERS_PER_CORE = 4  # a search's workers on one machine: each trains in its own process


def check_workers(n: int) -> None:
    """``--workers`` between 1 and WORKERS_PER_CORE per core of this machine (more machines: `search join` on each,
    with the same --storage URL); refused before the study or any worker exists."""
    most = WORKERS_PER_CORE * (os.cpu_count() or 1)
    if not 1 <= n <= most:
        raise UserError(f"--workers must be between 1 and {most} ({WORKERS_PER_CORE} per core of this machine; "
                        f"more machines can join with the same --storage), got {n}")


def cmd_run(args: argparse.Namespace) -> int:
    from engine.search.study import create_search, start_workers, wait_workers, worker_log

    from engine.train.config import device_problem

    spec = build_spec(args)
    check_workers(args.workers)
    problem = device_problem(spec.device)  # before the study or any worker exists
    if problem:
        raise UserError(f"--device: {problem}")
    try:
        _mend(spec.name, args.storage)
        study = create_search(spec, args.storage)
        del study
        procs = start_workers(spec.name, args.workers, args.storage, args.runs_dir)
    except _errors() as e:
        raise UserError(str(e)) from None
    if args.detach:
        print(_started(spec.name, procs) if args.json else
              f"search {spec.name}: {args.workers} worker(s) started (pids {', '.join(str(p.pid) for p in procs)}; "
              f"logs {worker_log(spec.name, 0).parent}); follow with: tnstudio search show {spec.name}")
        return 0
    print(f"search {spec.name}: {spec.space.size():,} candidate designs, budgets {spec.budget.describe()}; "
          f"training {spec.trials} on {spec.dataset} with {args.workers} worker(s)", file=sys.stderr, flush=True)
    try:
        rep = wait_workers(procs, spec.name, args.storage, progress=None if args.json else _progress_printer())
    except KeyboardInterrupt:
        print(f"\nstopped: continue with tnstudio search join {spec.name}", file=sys.stderr)
        return 130
    except _errors() as e:  # a worker that failed (its cause), a journal that became unreadable
        raise UserError(str(e)) from None
    if args.refit:
        rep = _refit(spec.name, args)
    print(json.dumps(rep.to_dict(), indent=2) if args.json else "\n" + rep.format())
    return 0


def _refit(name: str, args: argparse.Namespace):
    from engine.search.report import study_report
    from engine.search.study import refit_front

    def said(number: int, res: dict) -> None:
        if not args.json:
            print(f"refit #{number}: test accuracy {res['test_accuracy']:.3f} (run {res['run_id']})", flush=True)

    try:
        refit_front(name, args.storage, args.runs_dir, progress=said)
        return study_report(name, args.storage)
    except _errors() as e:
        raise UserError(str(e)) from None


def cmd_refit(args: argparse.Namespace) -> int:
    rep = _refit(args.study, args)
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.format())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from engine.search.report import study_report

    try:
        rep = study_report(args.study, args.storage)
    except _errors() as e:
        raise UserError(str(e)) from None
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.format(all_trials=args.all))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from engine.search.study import stop_search

    try:
        asked = stop_search(args.study, args.storage)
    except _errors() as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps({"search": args.study, "asked": bool(asked)}))
        return 0
    print(f"search {args.study}: " + ("asked every worker to stop (each ends at its next evaluation; the trial it "
                                      "was training is queued again)" if asked else "already asked to stop"))
    return 0


def cmd_join(args: argparse.Namespace) -> int:
    from engine.search.study import resume_search, start_workers, wait_workers

    check_workers(args.workers)
    try:
        _mend(args.study, args.storage)
        resume_search(args.study, args.storage, args.trials)
        procs = start_workers(args.study, args.workers, args.storage, args.runs_dir, first_index=args.first_index)
    except _errors() as e:
        raise UserError(str(e)) from None
    if args.detach:
        print(_started(args.study, procs) if args.json else f"search {args.study}: {args.workers} worker(s) "
                                                                     f"started")
        return 0
    try:
        rep = wait_workers(procs, args.study, args.storage, progress=None if args.json else _progress_printer())
    except KeyboardInterrupt:
        return 130
    except _errors() as e:  # a worker that failed (its cause), a journal that became unreadable
        raise UserError(str(e)) from None
    print(json.dumps(rep.to_dict(), indent=2) if args.json else "\n" + rep.format())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from engine.search.storage import list_studies

    try:
        names = list_studies(args.storage)
    except _errors() as e:
        raise UserError(str(e)) from None
    print(json.dumps(names) if args.json else "\n".join(names) or "no searches")
    return 0


ACTIONS = {None: cmd_run, "show": cmd_show, "stop": cmd_stop, "join": cmd_join, "list": cmd_list,
           "refit": cmd_refit}


def cmd_search(args: argparse.Namespace) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return ACTIONS[getattr(args, "search_action", None)](args)


def register(sub: argparse._SubParsersAction) -> None:
    from engine.design.templates import TEMPLATE_KINDS
    from engine.search.spec import OBJECTIVES, PRUNERS

    p = sub.add_parser("search", help="search TN layer designs under budgets; show the Pareto front",
                       description="Propose TN layer designs with Optuna, price each with the cost model before "
                       "any training (infeasible ones are pruned at once), train the feasible ones briefly and "
                       "report the Pareto front of validation accuracy against params (or FLOPs). Without an "
                       "ACTION: start (or continue) the search --name.")
    g = p.add_argument_group("the layer and the space")
    g.add_argument("--in", dest="in_features", type=int, default=None, help="in features of the layer")
    g.add_argument("--out", dest="out_features", type=int, default=None, help="out features of the layer")
    g.add_argument("--kinds", default=None, help=f"template kinds to try (default: all: {', '.join(TEMPLATE_KINDS)})")
    g.add_argument("--legs", default=None, help="numbers of legs to factorise in/out into (default 2,3,4,5,6)")
    g.add_argument("--in-factors", default=None, help="one fixed in factorisation, e.g. 4,4,4,2,2 (with "
                   "--out-factors; replaces --legs)")
    g.add_argument("--out-factors", default=None)
    g.add_argument("--bond-range", action="append", default=None, metavar="KIND=LOW:HIGH",
                   help="bond range of a kind (repeatable; defaults: attn/mera 2:4, tucker 1:3, cp 2:64, others 2:8)")
    g.add_argument("--no-per-bond", action="store_true", help="one bond dimension for all bonds only")
    g.add_argument("--activations", default=None, help="activations to try on nonlinear kinds (default none,gelu)")
    g.add_argument("--lateral", default=None, help="lateral options to try on ttn/attn/mera, e.g. none,all")
    b = p.add_argument_group("budgets (checked with the cost model before training)")
    b.add_argument("--max-params", type=int, default=None)
    b.add_argument("--max-flops", default=None, help="forward FLOPs at --batch (e.g. 5M)")
    b.add_argument("--batch", type=int, default=None, help="batch for the FLOPs and memory budgets (default: "
                   "--batch-size)")
    b.add_argument("--max-train-memory", default=None, help="training memory at --batch (e.g. 16MiB)")
    t = p.add_argument_group("objectives and training")
    t.add_argument("--dataset", default="digits")
    t.add_argument("--objective", default="params", choices=OBJECTIVES, help="the size to minimise")
    t.add_argument("--trials", type=int, default=40, help="candidates to train (default 40)")
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--val-fraction", type=float, default=0.2, help="training examples held out for validation "
                   "(0: optimise the test accuracy, as a hand sweep does)")
    t.add_argument("--pruner", default="median", choices=PRUNERS)
    t.add_argument("--startup-trials", type=int, default=10, help="random candidates before TPE models")
    r = p.add_argument_group("running")
    r.add_argument("--name", default=None, help="the study's name")
    r.add_argument("--workers", type=int, default=2, help="worker processes on this machine")
    r.add_argument("--storage", default=None, help="RDB URL (postgresql://...) or journal file; default "
                   "$TNSTUDIO_SEARCH_STORAGE, else <TNSTUDIO_HOME>/search/NAME.journal")
    r.add_argument("--runs-dir", default=None, help="runs folder (default: $TNSTUDIO_HOME/runs)")
    r.add_argument("--detach", action="store_true", help="start the workers and return")
    r.add_argument("--refit", action="store_true", help="at the end, train the front's designs again on all "
                   "training examples (their test accuracy as a hand sweep measures it)")
    r.add_argument("--json", action="store_true", help="print the final report as JSON")
    acts = p.add_subparsers(dest="search_action", metavar="ACTION")
    show = acts.add_parser("show", help="the front, best per kind, pruned counts")
    show.add_argument("--all", action="store_true", help="also every trial")
    stop = acts.add_parser("stop", help="stop every worker of a search")
    join = acts.add_parser("join", help="run more workers on a search (continues a stopped one)")
    join.add_argument("--workers", type=int, default=1)
    join.add_argument("--trials", type=int, default=None, help="a new number of candidates to train")
    join.add_argument("--first-index", type=int, default=0, help="number of the first worker (seeds, logs)")
    join.add_argument("--detach", action="store_true")
    join.add_argument("--runs-dir", default=argparse.SUPPRESS)
    lst = acts.add_parser("list", help="the searches in the storage")
    ref = acts.add_parser("refit", help="train the front's designs again on all training examples")
    ref.add_argument("--runs-dir", default=argparse.SUPPRESS)
    for a in (show, stop, join, lst, ref):
        if a is not lst:
            a.add_argument("study", help="the search's name")
        a.add_argument("--storage", default=argparse.SUPPRESS, help="RDB URL or journal file")
        a.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p.set_defaults(handler=cmd_search)
