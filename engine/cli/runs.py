"""``tnstudio runs list|show ID|stop ID|resume ID|metrics ID|delete ID|repair [--json]``: inspect and control runs,
and rebuild the run store's index from the run folders (``repair``)."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Callable

from engine.cli.common import UserError
from engine.cli.train import _get, _num, _pct, _store, comparison_table, finish_line, follow


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M") if t else "-"


def cmd_runs_list(args: argparse.Namespace) -> int:
    runs = _store(args).list_runs(status=args.status)
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    if not runs:
        print(f"no runs in {_store(args).root}")
        return 0
    print(f"{'id':<8}  {'status':<9}  {'created':<16}  {'step':>11}  {'test acc':>8}  name")
    for r in runs:
        res = r.get("results") or {}
        steps = f"{r.get('step') or 0}/{r.get('total_steps') or '?'}"
        print(f"{r['id']:<8}  {r['status']:<9}  {_when(r['created']):<16}  {steps:>11}  "
              f"{_pct(res.get('test_accuracy')):>8}  {r['name']}")
    return 0


def _config_value(key: str, value: object) -> str:
    """A config value as ``runs show`` prints it: a network run's network file (designs inline, kilobytes) by its
    name and TN layers (``--json`` prints it whole)."""
    if key != "network" or not isinstance(value, dict):
        return str(value)
    from engine.train.networks import tn_layer_totals

    try:
        t = tn_layer_totals(value)
    except (ValueError, KeyError, TypeError):
        return f"{value.get('name', '?')!s} (not a readable network file)"
    return f"{value.get('name', '?')!s} ({t.label}, {t.core_params:,} core params)"


def _truncation_text(rec: dict) -> str:
    """What a fine-tuning child run started from, in words (its ``truncation.json``)."""
    def num(key: str, fmt: str) -> str:
        v = rec.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "?"

    from engine.format import printable

    where = f"its layer {printable(rec['layer'])}" if isinstance(rec.get("layer"), str) else "its layer"
    return (f"fine-tunes a truncation of {where}: {num('params_before', ',')} -> {num('params_after', ',')} core "
            f"params, relative error {num('relative_error', '.3g')} ({printable(str(rec.get('error', '?')))})")


def cmd_runs_show(args: argparse.Namespace) -> int:
    store = _store(args)
    run = _get(store, args.id, with_design=args.json)
    from engine.analysis.finetune import truncation_record

    truncation = truncation_record(run["id"], args.runs_dir) if run.get("parent") else None
    if args.json:
        print(json.dumps(dict(run, truncation=truncation) if truncation else run, indent=2))
        return 0
    print(f"run {run['id']}: {run['name']}")
    print(f"  status   {run['status']}" + (f" ({run['reason']})" if run.get("reason") else ""))
    if run.get("parent"):
        print(f"  parent   {run['parent']}" + (f" ({_truncation_text(truncation)})" if truncation else ""))
    print(f"  created  {_when(run['created'])}   started {_when(run['started'])}   finished {_when(run['finished'])}")
    print(f"  progress step {run.get('step') or 0} of {run.get('total_steps') or '?'}")
    config = run["config"] or {}
    print("  config   " + ", ".join(f"{k}={_config_value(k, v)}" for k, v in config.items() if v is not None))
    if run.get("summary"):
        s = run["summary"]
        core = f"{s['core_params']:,} core params, " if s.get("core_params") is not None else ""
        print(f"  model    {s.get('architecture')}; {s.get('params', 0):,} params; layer {core}"
              f"{s.get('layer_params', 0):,} with bias (dense {s.get('layer_dense_params', 0):,} with bias)")
    for k, v in (run.get("results") or {}).items():
        print(f"  {k:<20} {v:.6g}" if isinstance(v, float) else f"  {k:<20} {v}")
    tests = store.metrics(run["id"], split="test")
    if tests:
        print("  last evaluations:")
        for m in tests[-5:]:
            print(f"    step {m['step']:>6}  epoch {_num(m['epoch'], '.2f')}  loss {_num(m['loss'], '.4f')}  "
                  f"accuracy {_pct(m['accuracy'])}")
    print(f"  folder   {run['dir']}")
    pairs = [r for r in store.list_runs() if r.get("parent") == run["id"] and (r["config"] or {}).get("baseline")]
    if pairs and pairs[0]["status"] == "completed" and run["status"] == "completed":
        print()
        print(comparison_table(run, pairs[0]))
    return 0


def cmd_runs_stop(args: argparse.Namespace) -> int:
    from engine.train.launcher import stop

    store = _store(args)
    run = _get(store, args.id)
    stopping = stop(run["id"], args.runs_dir, timeout=args.wait)
    after = store.get_run(run["id"], with_design=False) if stopping else run
    if args.json:  # the run as it stands, and whether it was running when asked
        print(json.dumps({"id": run["id"], "was_running": stopping, "status": after["status"],
                          "reason": after.get("reason")}, indent=2))
        return 0
    if not stopping:
        print(f"run {run['id']} is not running ({run['status']})")
        return 0
    print(f"run {run['id']}: {after['status']}" + (f" ({after['reason']})" if after.get("reason") else "")
          if after["status"] != "running" else f"asked run {run['id']} to stop")
    return 0


def cmd_runs_resume(args: argparse.Namespace) -> int:
    from engine.train.launcher import resume

    run = _get(_store(args), args.id)
    try:
        resume(run["id"], args.runs_dir)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.detach:
        print(json.dumps({"runs": [run["id"]]}) if args.json else f"resumed run {run['id']}")
        return 0
    end = follow(run["id"], args.runs_dir, out=sys.stderr if args.json else None)  # --json: stdout is the JSON
    print(json.dumps(end, indent=2) if args.json else finish_line(end))
    return 0 if end["status"] in ("completed", "stopped") else 1


def cmd_runs_metrics(args: argparse.Namespace) -> int:
    from engine.train.store import INT64

    if args.since is not None and not -INT64 <= args.since < INT64:
        raise UserError(f"--since {args.since}: out of range; give a step from -2^63 to 2^63 - 1")
    store = _store(args)
    run = _get(store, args.id)
    rows = store.metrics(run["id"], since_step=args.since, split=args.split)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'step':>6}  {'epoch':>6}  {'split':<5}  {'loss':>9}  {'accuracy':>8}  {'lr':>9}  {'ex/s':>8}  "
          f"{'elapsed':>7}")
    for m in rows:
        print(f"{m['step']:>6}  {_num(m['epoch'], '6.2f'):>6}  {m['split']:<5}  {_num(m['loss'], '9.4f')}  "
              f"{_pct(m['accuracy']):>8}  {_num(m['lr'], '9.2e')}  {_num(m['throughput'], '8.0f')}  "
              f"{_num(m['elapsed'], '7.1f')}")
    return 0


def cmd_runs_delete(args: argparse.Namespace) -> int:
    store = _store(args)
    run = _get(store, args.id)
    try:
        store.delete_run(run["id"])
    except ValueError as e:
        raise UserError(str(e)) from None
    print(json.dumps({"deleted": run["id"]}) if args.json else f"deleted run {run['id']}")
    return 0


def cmd_runs_repair(args: argparse.Namespace) -> int:
    from engine.train.store import is_run_folder_name, repair_store

    rep = repair_store(args.runs_dir)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    if rep["moved"]:
        print(f"moved the damaged index aside ({rep['reason']}): {rep['moved']}")
    print(f"{rep['path']}: {rep['runs']} run{'s' if rep['runs'] != 1 else ''} listed")
    for key, words in (("restored", "restored from their folders"), ("resynced", "metric rows restored"),
                       ("recorded", "folder records written (runs made before them)"),
                       ("temps", "temporary files of killed writes removed")):
        if rep[key]:
            print(f"  {words}: {', '.join(rep[key])}")
    if rep["skipped"]:
        print(f"  folders without a run record, or named as no run can be (left as they are): "
              f"{', '.join(n if is_run_folder_name(n) else repr(n) for n in rep['skipped'])}")
    if not (rep["moved"] or rep["restored"] or rep["resynced"] or rep["recorded"] or rep["temps"]):
        print("  the index was whole: nothing to do")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    return RUNS_ACTIONS[args.action](args)


RUNS_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": cmd_runs_list, "show": cmd_runs_show, "stop": cmd_runs_stop, "resume": cmd_runs_resume,
    "metrics": cmd_runs_metrics, "delete": cmd_runs_delete, "repair": cmd_runs_repair,
}


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("runs", help="list, show, stop, resume and read the metrics of training runs")
    r.add_argument("--runs-dir", default=None, help="runs folder (default: $TNSTUDIO_HOME/runs)")
    acts = r.add_subparsers(dest="action", metavar="ACTION", required=True)
    lst = acts.add_parser("list", help="all runs, newest first")
    lst.add_argument("--status", default=None, help="only runs with this status")
    show = acts.add_parser("show", help="one run: status, config, model, results, last evaluations")
    stop = acts.add_parser("stop", help="stop a run (it checkpoints and records 'stopped')")
    stop.add_argument("--wait", type=float, default=30.0, help="seconds to wait for it to stop (default 30)")
    res = acts.add_parser("resume", help="continue a stopped or failed run from its checkpoint")
    res.add_argument("--detach", action="store_true")
    met = acts.add_parser("metrics", help="the metric rows of a run")
    met.add_argument("--split", default=None, choices=["train", "test", "val"])
    met.add_argument("--since", type=int, default=None, help="only rows after this step")
    dele = acts.add_parser("delete", help="remove a run and its files")
    rep = acts.add_parser("repair", help="rebuild the run index (runs.db) from the run folders: a damaged one is "
                          "moved aside, never deleted")
    for a in (lst, show, stop, res, met, dele, rep):
        if a not in (lst, rep):
            a.add_argument("id", help="run id (a unique prefix is enough)")
        a.add_argument("--json", action="store_true", help="print JSON")
        a.add_argument("--runs-dir", default=argparse.SUPPRESS, help="runs folder")
    r.set_defaults(handler=cmd_runs)
