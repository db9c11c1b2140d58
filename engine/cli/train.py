"""The ``train`` command of the ``tnstudio`` CLI, and the run-following helpers ``runs`` shares.

``tnstudio train [DESIGN.json] --dataset digits --epochs E [--baseline] [--device auto] [--nproc N] [--detach]``
launches a run in its own process (see :mod:`engine.train.launcher`) and, unless ``--detach``, follows it with a
progress bar read from the run store; Ctrl-C then stops the run (checkpoint, status ``stopped``). ``--baseline``
also trains the same model with ``nn.Linear`` in place of the design and prints both side by side.

The options build a :class:`~engine.train.config.RunConfig`, which checks them; ``--dataset`` and ``--model`` choices
and the defaults come from the data-set and model registries and the config itself. ``tnstudio runs`` (inspecting and
controlling runs) lives in :mod:`engine.cli.runs`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.common import UserError, read_design, read_factors

if TYPE_CHECKING:
    from engine.design.model import Design
    from engine.train.config import RunConfig


def _store(args: argparse.Namespace):
    """The run store of ``--runs-dir`` for the commands that read it (a damaged or missing one raises StoreError:
    one line, exit 2)."""
    from engine.train.store import existing_store

    return existing_store(args.runs_dir)


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
def follow(run_id: str, runs_dir: str | None, label: str = "", poll: float = 0.25, out: TextIO | None = None
           ) -> dict[str, Any]:
    """Show a run's progress (tqdm bar on stderr; test results as lines on ``out``, default stdout) until it ends;
    Ctrl-C stops the run."""
    from tqdm import tqdm

    from engine.train.store import ACTIVE, RunStore

    store = RunStore(runs_dir)
    bar = tqdm(total=None, desc=label or run_id, unit="step", dynamic_ncols=True, disable=None, file=sys.stderr)
    out = out or sys.stdout
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
                    bar.write(f"{label or run_id}  epoch {_num(row['epoch'], '.2f')}  step {row['step']}  "
                              f"{row['split']} loss {_num(row['loss'], '.4f')}{acc}", file=out)
                    out.flush()
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
def _config(args: argparse.Namespace) -> RunConfig:
    """The run config the options describe (the TN run; its baseline is a ``replace`` of it)."""
    from engine.train.config import ConfigError, RunConfig

    hidden = read_factors(args.hidden, "--hidden") if args.hidden else None
    try:
        return RunConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model, hidden=hidden,
                         layer=args.layer, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, device=args.device, amp=args.amp, compile=args.compile,
                         seed=args.seed, nproc=args.nproc, eval_every=args.eval_every)
    except ConfigError as e:
        raise UserError(str(e)) from None


def _launch(config: RunConfig, design: Design | None, args: argparse.Namespace, name: str | None = None,
            parent: str | None = None) -> str:
    """Launch a run; a bad config, a missing GPU or data set, a design that does not fit: one line, exit 2."""
    from engine.train.launcher import launch

    try:
        return launch(config, design, args.runs_dir, name=name, parent=parent)
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
                "layer": (f"nn.{s.get('layer_type') or 'Linear'}" if s.get("baseline")
                          else (run.get("design_name") or "TN")),
                "core params": f"{s['core_params']:,}" if s.get("core_params") is not None else "-",
                "layer params (with bias)": f"{s.get('layer_params', 0):,}",
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


def dry_run(config: RunConfig, design: Design | None, baseline: bool, as_json: bool) -> int:
    """Every check a launch makes (config, device, data files, fit, memory), then a summary; records nothing."""
    from engine.format import nbytes
    from engine.train.launcher import check_launch

    checked = []
    for cfg in [config] + ([replace(config, baseline=True)] if baseline else []):
        try:
            checked.append(check_launch(cfg, design)[2])
        except ValueError as e:
            raise UserError(str(e)) from None
    if as_json:
        print(json.dumps({"ok": True, "memory": checked}))
        return 0
    what = f"design {design.name!r}" if design is not None else "a dense model"
    for cfg, need in zip([config, replace(config, baseline=True)], checked):
        label = "dense baseline" if cfg.baseline else what
        print(f"ok: {label} on {cfg.dataset} ({cfg.model}), batch {cfg.batch_size}, device {cfg.device}: about "
              f"{nbytes(need['total'])} per process by the cost model"
              + (f", {nbytes(need['init'])} to initialise" if need["init"] else ""))
    print("dry run: nothing was recorded or started")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from engine.network.format import is_network_file
    from engine.train.loop import torchrun_env

    name = args.name
    if args.design and is_network_file(args.design):  # a whole network (engine.cli.network)
        from engine.cli.network import read_network, run_config

        spec = read_network(args.design)
        design, config = None, run_config(args, spec)
        name = name or f"{spec.name} on {config.dataset}"
    else:
        design = read_design(args.design) if args.design else None
        if args.baseline and design is None:
            raise UserError("--baseline compares a design with nn.Linear: give a design file")
        config = _config(args)
    if args.dry_run:
        return dry_run(config, design, args.baseline, args.json)
    if torchrun_env() is not None:  # started by torchrun: train here, as this process's rank
        from engine.cli.network import torchrun_train

        return torchrun_train(config, design, args, name)
    tn_id = _launch(config, design, args, name=name)
    baseline = replace(config, baseline=True)
    if args.detach:
        ids = [tn_id]
        if args.baseline:
            ids.append(_launch(baseline, design, args, parent=tn_id))
        if args.json:
            print(json.dumps({"runs": ids}))
        else:
            for rid in ids:
                print(f"started run {rid}")
            print("follow with: tnstudio runs show ID; stop with: tnstudio runs stop ID")
        return 0
    out = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON alone
    runs = [follow(tn_id, args.runs_dir, label=tn_id, out=out)]
    if not args.json:
        print(finish_line(runs[0]))
    if args.baseline and runs[0]["status"] == "completed":
        base_id = _launch(baseline, design, args, parent=tn_id)
        runs.append(follow(base_id, args.runs_dir, label=f"{base_id} (dense baseline)", out=out))
        if not args.json:
            print(finish_line(runs[1]))
            print()
            print(comparison_table(runs[0], runs[1]))
    if args.json:
        print(json.dumps(runs if args.baseline else runs[0], indent=2))
    return 0 if all(r["status"] in ("completed", "stopped") for r in runs) else 1


# ----------------------------------------------------------------------------- registration
def _registry_epilog() -> str:
    from engine.train.data import dataset_specs
    from engine.train.models import model_kinds

    lines = ["data sets (--dataset; aliases in brackets):"]
    for s in dataset_specs():
        alias = f" [{', '.join(s.aliases)}]" if s.aliases else ""
        lines.append(f"  {s.name:<17} {s.description}{alias}")
    lines.append("models (--model):")
    lines += [f"  {k.name:<17} {k.description}" for k in model_kinds()]
    return "\n".join(lines)


def _canonical_dataset(text: str) -> str:
    """``--dataset`` values: aliases and case folded to the registered name (unknown ones left for argparse)."""
    from engine.train.data import DataError, dataset_name

    try:
        return dataset_name(text)
    except DataError:
        return text


def register(sub: argparse._SubParsersAction) -> None:
    from engine.train.config import RunConfig
    from engine.train.data import dataset_names, dataset_specs
    from engine.train.models import model_names

    d = RunConfig()  # the defaults
    files = "/".join(s.name for s in dataset_specs() if s.needs_files)
    t = sub.add_parser("train", help="train a model whose layer is a design (runs in its own process)",
                       epilog=_registry_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("design", nargs="?", default=None, help="design JSON file (omit for an all-dense model), or a "
                   "network file (tnstudio network): the whole network is trained")
    t.add_argument("--dataset", default=d.dataset, type=_canonical_dataset, choices=dataset_names(), metavar="NAME",
                   help=f"one of {', '.join(dataset_names())} (default {d.dataset}; listed below)")
    t.add_argument("--data-dir", default=d.data_dir, help=f"folder with the {files} files in torchvision's layout "
                   f"(default: $TNSTUDIO_HOME/data)")
    t.add_argument("--model", default=d.model, choices=model_names(), help=f"default {d.model}; listed below")
    t.add_argument("--hidden", default=None, help="MLP hidden sizes, e.g. 256,256 (default: built around "
                   "the design)")
    t.add_argument("--layer", type=int, default=d.layer, help="which MLP layer the design replaces (default: the "
                   "first that fits)")
    t.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default {d.epochs})")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"global batch size (default {d.batch_size})")
    t.add_argument("--lr", type=float, default=d.lr, help=f"AdamW peak learning rate (default {d.lr:g}; cosine decay)")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"AdamW weight decay (default {d.weight_decay:g})")
    t.add_argument("--seed", type=int, default=d.seed, help=f"seed of initialisation and data order (default {d.seed})")
    t.add_argument("--device", default=d.device, help="auto (CUDA when available; the default), cpu, cuda or cuda:N")
    t.add_argument("--amp", action="store_true", help="mixed precision (bfloat16 autocast)")
    t.add_argument("--compile", action="store_true",
                   help="run the model's step through torch.compile (CUDA graphs on a GPU; compiles first)")
    t.add_argument("--nproc", type=int, default=d.nproc, help="data-parallel processes (torch.distributed)")
    t.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N steps (default: each epoch)")
    t.add_argument("--baseline", action="store_true", help="also train the dense baseline and compare")
    t.add_argument("--detach", action="store_true", help="start the run(s) and return at once")
    t.add_argument("--dry-run", action="store_true", help="make every check a launch makes (config, device, data, "
                   "fit, memory by the cost model), print the estimate and record nothing")
    t.add_argument("--name", default=None, help="run name")
    t.add_argument("--runs-dir", default=None, help="runs folder (default: $TNSTUDIO_HOME/runs)")
    t.add_argument("--json", action="store_true", help="print the final run record(s) as JSON")
    t.set_defaults(handler=cmd_train)
