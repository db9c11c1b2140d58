"""The ``train`` and ``runs`` commands of the ``tnstudio`` CLI.

``tnstudio train [DESIGN.json] --dataset digits --epochs E [--baseline] [--device auto] [--nproc N] [--detach]``
launches a run in its own process (see :mod:`engine.launcher`) and, unless ``--detach``, follows it with a
progress bar read from the run store; Ctrl-C then stops the run (checkpoint, status ``stopped``). ``--baseline``
also trains the same model with ``nn.Linear`` in place of the design and prints both side by side.

``tnstudio runs list|show ID|stop ID|resume ID|metrics ID|delete ID [--json]`` inspects and controls runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from engine.cli.common import UserError, read_design, read_factors


def _store(args: argparse.Namespace):
    from engine.train.store import RunStore

    return RunStore(args.runs_dir)


def _get(store, run_id: str, with_design: bool = False) -> dict[str, Any]:
    from engine.train.store import RunNotFound

    try:
        return store.get_run(run_id, with_design=with_design)
    except RunNotFound as e:
        raise UserError(str(e)) from None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None, fmt: str = ".4g") -> str:
    return "-" if v is None else format(v, fmt)


# ----------------------------------------------------------------------------- following a run
def follow(run_id: str, runs_dir: str | None, label: str = "", poll: float = 0.25) -> dict[str, Any]:
    """Show a run's progress (tqdm bar; test results as lines) until it ends; Ctrl-C stops the run."""
    from tqdm import tqdm

    from engine.train.store import ACTIVE, RunStore

    store = RunStore(runs_dir)
    bar = tqdm(total=None, desc=label or run_id, unit="step", dynamic_ncols=True, disable=None, file=sys.stderr)
    after, last_train = 0, None
    try:
        while True:
            run = store.get_run(run_id, with_design=False)
            if run.get("total_steps") and bar.total != run["total_steps"]:
                bar.total = run["total_steps"]
                bar.refresh()
            for row in store.metrics(run_id, after_seq=after):
                after = row["seq"]
                if row["split"] == "train":
                    last_train = row
                else:
                    acc = f"  accuracy {_pct(row['accuracy'])}" if row["accuracy"] is not None else ""
                    bar.write(f"{label or run_id}  epoch {row['epoch']:.2f}  step {row['step']}  "
                              f"test loss {row['loss']:.4f}{acc}", file=sys.stdout)
                    sys.stdout.flush()
            if last_train is not None:
                post = {"loss": f"{last_train['loss']:.4f}"}
                if last_train["accuracy"] is not None:
                    post["acc"] = _pct(last_train["accuracy"])
                bar.set_postfix(post, refresh=False)
            bar.n = run.get("step") or 0
            bar.refresh()
            if run["status"] not in ACTIVE:
                return run
            time.sleep(poll)
    except KeyboardInterrupt:
        bar.write(f"stopping run {run_id} (it saves a checkpoint first) ...")
        store.stop_run(run_id)
        from engine.train.launcher import wait

        return wait(run_id, runs_dir, timeout=60)
    finally:
        bar.close()


# ----------------------------------------------------------------------------- train
def _config(args: argparse.Namespace, design) -> dict[str, Any]:
    from engine.train.loop import ConfigError, make_config

    hidden = read_factors(args.hidden) if args.hidden else None
    try:
        return make_config(dataset=args.dataset, data_dir=args.data_dir, model=args.model, hidden=hidden,
                           layer=args.layer, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, device=args.device, amp=args.amp, seed=args.seed,
                           nproc=args.nproc, eval_every=args.eval_every, baseline=args.baseline_only)
    except ConfigError as e:
        raise UserError(str(e)) from None


def _launch(cfg: dict[str, Any], design, args, name=None, parent=None) -> str:
    from engine.train.launcher import launch

    try:
        return launch(cfg, design, args.runs_dir, name=name, parent=parent)
    except ValueError as e:
        raise UserError(str(e)) from None


def comparison_table(tn: dict[str, Any], base: dict[str, Any]) -> str:
    """The TN run and its dense baseline side by side (plain text)."""
    def col(run: dict[str, Any]) -> dict[str, str]:
        s, r = run.get("summary") or {}, run.get("results") or {}
        acc = r.get("test_accuracy")
        score = _pct(acc) if acc is not None else f"R2 {_num(r.get('test_r2'), '.4f')}"
        dc = s.get("design_compression")
        return {"run": run["id"], "status": run["status"],
                "layer": ("nn.Linear" if s.get("baseline") else (run.get("design_name") or "TN")),
                "layer params": f"{s.get('layer_params', 0):,}",
                "compression (W)": "1.0x" if s.get("baseline") else (f"{dc:,.1f}x" if dc else "-"),
                "model params": f"{s.get('params', 0):,}",
                "test accuracy" if acc is not None else "test score": score,
                "test loss": _num(r.get("test_loss"), ".4f"),
                "train time": f"{r['train_seconds']:.1f} s" if r.get("train_seconds") is not None else "-"}
    a, b = col(tn), col(base)
    w0 = max(len(k) for k in a)
    w1 = max(len("TN layer"), *(len(v) for v in a.values()))
    lines = [f"{'':<{w0}}  {'TN layer':<{w1}}  dense baseline"]
    lines += [f"{k:<{w0}}  {a[k]:<{w1}}  {b.get(k, '-')}" for k in a]
    return "\n".join(lines)


def finish_line(run: dict[str, Any]) -> str:
    r = run.get("results") or {}
    if run["status"] == "completed":
        acc = r.get("test_accuracy")
        score = f"test accuracy {_pct(acc)}" if acc is not None else f"test R2 {_num(r.get('test_r2'), '.4f')}"
        return (f"run {run['id']} completed: {score}, test loss {_num(r.get('test_loss'), '.4f')}, "
                f"{r.get('train_seconds', 0):.1f} s")
    return f"run {run['id']} {run['status']}: {run.get('reason') or ''}"


def cmd_train(args: argparse.Namespace) -> int:
    design = read_design(args.design) if args.design else None
    if args.baseline and design is None:
        raise UserError("--baseline compares a design with nn.Linear: give a design file")
    args.baseline_only = False
    cfg = _config(args, design)
    tn_id = _launch(cfg, design, args, name=args.name)
    base_cfg = dict(cfg, baseline=True)
    if args.detach:
        ids = [tn_id]
        if args.baseline:
            ids.append(_launch(base_cfg, design, args, parent=tn_id))
        if args.json:
            print(json.dumps({"runs": ids}))
        else:
            for rid in ids:
                print(f"started run {rid}")
            print("follow with: tnstudio runs show ID; stop with: tnstudio runs stop ID")
        return 0
    runs = [follow(tn_id, args.runs_dir, label=tn_id)]
    if not args.json:
        print(finish_line(runs[0]))
    if args.baseline and runs[0]["status"] == "completed":
        base_id = _launch(base_cfg, design, args, parent=tn_id)
        runs.append(follow(base_id, args.runs_dir, label=f"{base_id} (dense baseline)"))
        if not args.json:
            print(finish_line(runs[1]))
            print()
            print(comparison_table(runs[0], runs[1]))
    if args.json:
        print(json.dumps(runs if args.baseline else runs[0], indent=2))
    return 0 if all(r["status"] in ("completed", "stopped") for r in runs) else 1


# ----------------------------------------------------------------------------- registration
def register(sub: argparse._SubParsersAction) -> None:
    from engine.train.data import DATASETS
    from engine.train.config import MODELS

    t = sub.add_parser("train", help="train a model whose layer is a design (runs in its own process)")
    t.add_argument("design", nargs="?", default=None, help="design JSON file (omit for an all-dense model)")
    t.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)} (default digits)")
    t.add_argument("--data-dir", default=None, help="folder with the mnist/fashion_mnist/cifar10 files")
    t.add_argument("--model", default="mlp", choices=MODELS, help="mlp (default) or cnn")
    t.add_argument("--hidden", default=None, help="MLP hidden sizes, e.g. 256,256 (default: built around "
                   "the design)")
    t.add_argument("--layer", type=int, default=None, help="which MLP layer the design replaces (default: the "
                   "first that fits)")
    t.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    t.add_argument("--batch-size", type=int, default=64, help="global batch size (default 64)")
    t.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate (default 3e-3; cosine decay)")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    t.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order (default 0)")
    t.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    t.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 autocast)")
    t.add_argument("--nproc", type=int, default=1, help="data-parallel processes (torch.distributed)")
    t.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (default: each epoch)")
    t.add_argument("--baseline", action="store_true", help="also train the dense baseline and compare")
    t.add_argument("--detach", action="store_true", help="start the run(s) and return at once")
    t.add_argument("--name", default=None, help="run name")
    t.add_argument("--runs-dir", default=None, help="runs folder (default: $TNSTUDIO_HOME/runs)")
    t.add_argument("--json", action="store_true", help="print the final run record(s) as JSON")
    t.set_defaults(handler=cmd_train)
