"""Starting, stopping and resuming training runs, each in its own process.

API (stable; the CLI and the studio use it)::

    run_id = launch(config, design=None, runs_dir=None, name=None, parent=None)
    stop(run_id, runs_dir=None, timeout=None) -> bool      # SIGTERM -> checkpoint -> status "stopped"
    resume(run_id, runs_dir=None) -> run_id                 # a stopped/failed run continues from its checkpoint
    wait(run_id, runs_dir=None, timeout=None) -> run dict   # until the run ends

``launch`` takes a :class:`~engine.train.config.RunConfig` (or a dict of its fields, checked by building one),
refuses a device this machine lacks (:meth:`~engine.train.config.RunConfig.check_device`), missing data files
(:func:`~engine.train.data.check_dataset`), a design that does not fit the model
(:func:`~engine.train.models.check_fit`) and a model whose training the cost model prices beyond this machine's
memory, or the GPU's (:func:`check_memory`, with both numbers), records the run (status ``queued``), then starts
``python -m engine.train --run ID --runs-dir DIR`` detached: a new session (its own process group), so closing
the terminal or restarting the studio does not end it; its stdout/stderr go to ``<run dir>/log.txt``. The
launching process reaps the child in a daemon thread, so a finished run leaves no zombie behind.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from engine.files import expand_user, remove_orphan_temps
from engine.design.model import Design
from engine.format import torch_load_reason
from engine.home import tnstudio_home
from engine.train.config import RunConfig
from engine.train.data import check_dataset, dataset_spec
from engine.train.models import CNN_FEATURES, check_fit, mlp_plan
from engine.train.store import ACTIVE, RunStore, StoreError

EVAL_BATCH = 1024  # Trainer.evaluate's batch (forward only)
log = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the engine package


class ProcessStartError(ValueError):
    """A run's training process could not be started (no process slot, no memory, a full disk for its log)."""


def _reap(proc: subprocess.Popen) -> None:
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()


def start_process(run_id: str, store: RunStore, resume: bool = False) -> subprocess.Popen:
    """Start the training process of a recorded run (detached, logging to ``log.txt``) and record its pid."""
    from engine.train.store import process_start_time

    cmd = [sys.executable, "-m", "engine.train", "--run", run_id, "--runs-dir", str(store.root)]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if env.get("TNSTUDIO_HOME"):  # the process works in its run folder: a relative home would name another one
        env["TNSTUDIO_HOME"] = str(tnstudio_home())
    try:
        with open(store.run_dir(run_id) / "log.txt", "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=str(store.run_dir(run_id)), start_new_session=True)
    except OSError as e:  # else the run would stay queued with no process, for ever
        reason = f"its training process could not be started: {e.strerror or e}"
        try:
            store.set_status(run_id, "failed", reason)
        except (StoreError, OSError) as e2:  # the store is what failed: the run shows as queued, stoppable
            log.warning("run %s: %s; recording that failed too: %s", run_id, reason, e2)
        again = "resume it" if resume else "start it again"
        raise ProcessStartError(f"run {run_id}: {reason} (recorded as failed; {again} once the machine has room)"
                                ) from e
    store.update(run_id, pid=proc.pid, pid_start=process_start_time(proc.pid))
    _reap(proc)
    return proc


def memory_estimate(config: RunConfig, design: Design | None) -> dict[str, int]:
    """Bytes one training process needs, by the cost model (no torch, nothing allocated).

    ``layer``: the design's layer (:func:`engine.contract.cost.cost_report`'s training memory at the per-process
    batch, or the evaluation's forward peak at batch 1024 when larger; its dense baseline with ``config.baseline``);
    ``rest``: the other dense layers (weights, gradients, Adam's two moments, activations); ``init``: initialising
    the cores (a nonlinear design calibrates on W, on the CPU); ``total``: ``layer + rest``.
    """
    from engine.contract.cost import cost_report, init_memory_bytes

    if config.network is not None:  # a whole network: its report's training memory (engine.train.networks)
        from engine.train.networks import memory_estimate as network_memory

        return network_memory(config, EVAL_BATCH)
    per_rank = max(1, -(-config.batch_size // config.nproc))
    spec = dataset_spec(config.dataset)
    if config.model == "mlp":
        hidden, layer = mlp_plan(spec.in_features, spec.num_outputs, design,
                                 list(config.hidden) if config.hidden is not None else None, config.layer)
        sizes = [spec.in_features] + hidden + [spec.num_outputs]
        dense = [(sizes[k], sizes[k + 1]) for k in range(len(sizes) - 1) if k != layer]
    elif config.model == "cnn":  # convolutions and the classifier after the design are small
        dense = [(CNN_FEATURES, 256), (256, spec.num_outputs)] if design is None or design.conv is not None else [
            (design.out_features, spec.num_outputs)]
        sizes = [spec.in_features, CNN_FEATURES * 8]  # activations of the conv blocks, roughly
    else:  # other model kinds (e.g. a whole network): the design's layer only
        dense, sizes = [], [spec.in_features]
    rest_params = sum(a * b + b for a, b in dense)
    rest = 4 * (4 * rest_params + 3 * max(per_rank, EVAL_BATCH) * sum(sizes))
    layer_bytes = init = 0
    if design is not None and design.conv is not None:  # a conv2d design: its conv programs at the layer's images
        from engine.contract.conv import conv_cost_report
        from engine.train.models import cnn_conv_image

        image = cnn_conv_image(spec.input_shape) if spec.is_image else None
        train = conv_cost_report(design, batch=per_rank, image=image)
        evaluation = conv_cost_report(design, batch=EVAL_BATCH, image=image)
    elif design is not None:
        train = cost_report(design, batch=per_rank)
        evaluation = cost_report(design, batch=EVAL_BATCH)
        if not train.executable:
            raise ValueError(f"design {design.name!r} cannot be trained: a step of its contraction program joins "
                             f"more than 52 indices, more than torch.einsum can name (see `tnstudio cost`)")
        if config.baseline:
            layer_bytes = train.dense_train_memory_bytes
        else:
            layer_bytes = max(train.train_memory_bytes, evaluation.peak_memory_bytes)
            init = init_memory_bytes(design)
    return {"layer": layer_bytes, "rest": rest, "init": init, "total": layer_bytes + rest}


def check_memory(config: RunConfig, design: Design | None) -> dict[str, int]:
    """Refuse (:class:`engine.resources.ResourceError`, a ``ValueError``) a run whose training the cost model
    prices beyond this machine's memory (all ``nproc`` processes on the CPU) or, on CUDA, one GPU's; the message
    has both numbers. Returns :func:`memory_estimate`."""
    from engine.resources import check_fits

    need = memory_estimate(config, design)
    what = f"training design {design.name!r}" if design is not None else "training this dense model"
    what += f" at batch {config.batch_size}" + (f" over {config.nproc} processes" if config.nproc > 1 else "")
    if design is not None:
        check_fits(need["init"], f"initialising design {design.name!r} (calibrated on W)",
                   hint="lower the bond dimensions (`tnstudio cost --schedule materialise --batch 1` shows W's cost)")
    if config.device.startswith("cuda"):
        check_fits(need["total"], what, config.device)
    else:
        check_fits(need["total"] * config.nproc, what)
    return need


def absolute_paths(config: RunConfig) -> RunConfig:
    """``config`` with its folder and file paths (``data_dir``, ``init_from``) absolute: the run's process works in
    its run folder, where a path relative to the launcher's folder (``--data-dir data``) names nothing."""
    paths = {k: str(expand_user(v).absolute()) for k in ("data_dir", "init_from")
             if (v := getattr(config, k)) is not None and not Path(v).is_absolute()}
    return dataclasses.replace(config, **paths) if paths else config


def check_launch(config: RunConfig | Mapping[str, Any], design: Design | dict | None = None
                 ) -> tuple[RunConfig, Design | None, dict[str, int]]:
    """Every check :func:`launch` makes before it records a run (config, device, data files, fit, memory);
    returns the checked config, the design and :func:`memory_estimate`. Raises ``ValueError`` subclasses."""
    if not isinstance(config, RunConfig):
        config = RunConfig.from_dict(config)
    config = absolute_paths(config)
    config.check_device()
    check_dataset(config.dataset, config.data_dir)
    if isinstance(design, dict):
        design = Design.from_dict(design)
    if design is not None:
        design.check()
    check_fit(config, design)
    return config, design, check_memory(config, design)


def launch(config: RunConfig | Mapping[str, Any], design: Design | dict | None = None,
           runs_dir: str | os.PathLike | None = None, name: str | None = None, parent: str | None = None) -> str:
    """Record a run and start it in its own process; returns the run id. A bad config, a device this machine
    lacks, missing data, a design that does not fit the model or training that would not fit in memory raise
    ``ValueError`` (ConfigError, DataError, DesignError, ModelError, ResourceError) before anything is recorded
    (:func:`check_launch`)."""
    config, design, _ = check_launch(config, design)
    store = RunStore(runs_dir)
    run_id = store.create_run(config, design, name=name, parent=parent)
    start_process(run_id, store)
    return run_id


def resume(run_id: str, runs_dir: str | os.PathLike | None = None) -> str:
    """Continue a stopped or failed run from its checkpoint, in a new process; returns the run id."""
    store = RunStore(runs_dir)
    run = store.get_run(run_id, with_design=False)
    if run["status"] in ACTIVE:
        raise ValueError(f"run {run['id']} is {run['status']}: nothing to resume")
    if run["status"] == "completed":
        raise ValueError(f"run {run['id']} has completed: start a new run to train longer")
    folder = store.run_dir(run["id"])
    if not folder.is_dir():
        raise ValueError(f"run {run['id']}'s folder {folder} is gone (its checkpoint with it): start it again instead")
    ckpt = folder / "checkpoint.pt"
    if not ckpt.exists():
        raise ValueError(f"run {run['id']} has no checkpoint to resume from (it ended before its first "
                         f"evaluation): start it again instead")
    check_checkpoint(ckpt)
    RunConfig.from_dict(run["config"]).check_device()
    if not store.claim_for_resume(run["id"]):  # another resume got there first (one atomic check-and-set)
        raise ValueError(f"run {run['id']} is already being resumed: nothing to do")
    remove_orphan_temps(folder)  # a trainer killed while it wrote a checkpoint left its temporary file
    start_process(run["id"], store, resume=True)
    return run["id"]


def check_checkpoint(path: Path) -> None:
    """Refuse a checkpoint torch cannot load (cut short, overwritten, a folder) before a process is started for
    it, in one line naming it (torch's own message runs to paragraphs and names no file). Memory-mapped: the
    archive and its pickled structure are read, the tensors' bytes are left to the trainer, which loads them."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch.load's failures on a damaged file are of many kinds
        # (EOFError, OSError, UnpicklingError, RuntimeError from the zip reader, IsADirectoryError): one answer
        raise ValueError(f"checkpoint {path} is damaged ({torch_load_reason(e)}): it cannot be resumed; start the run "
                         f"again instead") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"checkpoint {path} is not a TN Studio checkpoint (no model state): it cannot be resumed")


def wait(run_id: str, runs_dir: str | os.PathLike | None = None, timeout: float | None = None,
         poll: float = 0.2) -> dict[str, Any]:
    """Block until the run has ended (or ``timeout`` seconds passed); returns the run dict."""
    store = RunStore(runs_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = store.get_run(run_id, with_design=False)
        if run["status"] not in ACTIVE or (deadline is not None and time.monotonic() > deadline):
            return run
        time.sleep(poll)


def stop(run_id: str, runs_dir: str | os.PathLike | None = None, timeout: float | None = None) -> bool:
    """Ask a run to stop (it checkpoints, then records ``stopped``); with ``timeout``, wait that long for it.
    Returns whether the run was active."""
    store = RunStore(runs_dir)
    active = store.stop_run(run_id)
    if active and timeout:
        wait(run_id, runs_dir, timeout)
    return active
