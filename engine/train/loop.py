"""The training loop of a run: ``python -m engine.train --run ID [--runs-dir D] [--resume]``.

A run is recorded in the :class:`~engine.train.store.RunStore` first (its :class:`~engine.train.config.RunConfig`
and design, see :mod:`engine.train.launcher`); this module trains it and writes everything back there: status,
metric rows, checkpoints, results.

Training: AdamW (torch's fused kernel, :mod:`engine.train.optim`), linear warm-up then cosine decay to zero (per
step), gradient-norm clipping, seeded (data order, initialisation), CUDA when available (``device="auto"``), optional
AMP (bfloat16 autocast; float16 with a grad scaler on GPUs without bfloat16). Train rows are logged every
``log_every`` steps, a test evaluation (and a checkpoint) every ``eval_every`` steps (0: at every epoch end) and at
the end.

Endings: ``completed`` (results recorded); ``failed`` with the reason when the loss or the gradient norm stops
being finite, or on any error (traceback in the run's log.txt); ``stopped`` on SIGTERM / SIGINT or the store's
stop flag: the run finishes its step, saves a checkpoint and records where it stopped. ``--resume`` continues
from the checkpoint (``torch.load(weights_only=True)``) at the same step and data order, dropping metric rows
logged after it.

Data parallel: ``nproc > 1`` runs that many processes with torch.distributed (gloo on CPU, nccl on GPU): the
launched process is rank 0 and starts the others; ``batch_size`` is the global batch, split across ranks; each
rank sees its own shard of every epoch's permutation; gradients are averaged by DDP, metrics summed over ranks.
Only rank 0 writes to the store and the checkpoint. Beyond one machine, :func:`torchrun_main` runs one rank under
torchrun (``torchrun --nnodes M --nproc-per-node N ... -m engine.train --run ID``): the process group comes from
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), rank 0 reads the run from its
store and sends it to the others, and only rank 0 writes the store.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.design.model import Design
from engine.files import atomic_write, expand_user
from engine.train.config import ConfigError, RunConfig, device_problem
from engine.train.data import Dataset, load_dataset
from engine.train.models import build_model
from engine.train.optim import adamw
from engine.train.store import RunStore, process_start_time

log = logging.getLogger(__name__)
SMALL_STEP_FLOPS = 2e8  # below this (MLP forward + backward per step), one CPU thread beats several
CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str, rank: int = 0, world: int = 1) -> torch.device:
    """``auto`` -> CUDA when available; with several processes on CUDA, rank r uses GPU r. A device this machine
    lacks raises :class:`ConfigError` (:func:`~engine.train.config.device_problem`)."""
    problem = device_problem(name, world)
    if problem:
        raise ConfigError(problem, "device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and world > 1:
        return torch.device(f"cuda:{rank}")
    if name == "cuda":  # an explicit index: torch.cuda.set_device refuses a bare "cuda"
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def lr_lambda(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero."""
    warm = int(round(total_steps * warmup_fraction))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return f


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
                  ) -> list[torch.Tensor]:
    """Index batches of one epoch for one rank: a seeded permutation, cut into global batches, each split
    across ranks (the last, smaller batch included)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    batches = []
    for start in range(0, n, batch_size):
        chunk = perm[start:start + batch_size]
        batches.append(chunk[rank::world] if len(chunk) >= 2 * world else _small_share(chunk, rank, world))
    return batches


def _small_share(chunk: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """One rank's share of a global batch of fewer than two examples per rank (an epoch's last): pairs for the
    first ranks (an odd one out to rank 0), nothing for the rest, so that no rank trains on a single example, which
    BatchNorm refuses in training (a last batch of 2 on 2 processes had failed a run that one process finishes).
    The loss weighs every example by the global batch (:meth:`Trainer._batch_loss`), so any split trains alike."""
    m, pairs = len(chunk), len(chunk) // 2
    if pairs == 0:
        return chunk if rank == 0 else chunk[:0]
    if rank >= pairs:
        return chunk[:0]
    odd = m % 2
    return chunk[0 if rank == 0 else 2 * rank + odd:2 * rank + 2 + odd]


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self) -> dict[int, Any]:
        """Install the handlers (main thread only); returns the previous ones for :meth:`restore`."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def restore(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name


class Trainer:
    """Trains one run on one rank (see the module docstring)."""

    def __init__(self, store: RunStore | None, run_id: str, rank: int = 0, world: int = 1, resume: bool = False,
                 run: dict[str, Any] | None = None, local_rank: int | None = None):
        self.store: RunStore = store  # None on ranks > 0 under torchrun (they never write; rank 0 sends the run)
        self.run_id: str = run_id
        self.rank: int = rank
        self.local_rank: int = rank if local_rank is None else local_rank  # the GPU index on this machine
        self.world: int = world
        self.resume: bool = resume
        self.run: dict[str, Any] = run if run is not None else store.get_run(run_id)
        self.config: RunConfig = RunConfig.from_dict(self.run["config"])
        self.design: Design | None = Design.from_dict(self.run["design"]) if self.run.get("design") else None
        self.dir: Path = Path(self.run["dir"])
        self.ckpt_path: Path = self.dir / CHECKPOINT
        self.stop: _StopFlag = _StopFlag()
        self.is_main: bool = rank == 0
        # set by setup(): device, data, model, optimisation
        self.device: torch.device = torch.device("cpu")
        self.data: Dataset | None = None
        self.model: nn.Module | None = None
        self.net: nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
        self.summary: dict[str, Any] = {}
        self.x_train: torch.Tensor = torch.empty(0)
        self.y_train: torch.Tensor = torch.empty(0)
        self.x_test: torch.Tensor = torch.empty(0)
        self.y_test: torch.Tensor = torch.empty(0)
        self.classify: bool = True
        self.loss_fn: nn.Module = nn.CrossEntropyLoss()
        self.steps_per_epoch: int = 0
        self.total_steps: int = 0
        self.opt: torch.optim.Optimizer | None = None
        self.sched: torch.optim.lr_scheduler.LRScheduler | None = None
        self.amp_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        # progress, restored from a checkpoint on resume
        self.step: int = 0
        self.elapsed: float = 0.0
        self.best: float | None = None
        self.last_eval: tuple[float, float | None] | None = None
        self._rank_rngs: list[torch.Tensor] | None = None  # every rank's random state at the last checkpoint step

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        config = self.config
        self.device = resolve_device(config.device, self.local_rank, self.world)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.manual_seed(config.seed)
        self.data = load_dataset(config.dataset, config.data_dir)
        self.model = build_model(config, self.data, self.design).to(self.device)
        self.summary = dict(self.model.summary, dataset=self.data.name, train_examples=len(self.data.x_train),
                            test_examples=len(self.data.x_test), device=str(self.device), nproc=self.world)
        if self.device.type == "cpu":
            threads = config.threads
            if threads is None and config.model in ("mlp", "network"):  # forward + backward ~ 3 x forward
                per_example = self.summary.get("forward_flops") or 2 * self.summary["params"]
                step_flops = 3 * per_example * config.batch_size / self.world
                threads = 1 if step_flops < SMALL_STEP_FLOPS else None
            if threads is not None:
                torch.set_num_threads(threads)
        if config.init_from and not self.resume and self.rank == 0:
            self._load_init(config.init_from)  # ranks > 0 receive these weights from DDP's broadcast of rank 0's
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                               if self.device.type == "cuda" else None)
        if config.compile:
            # CUDA graphs on a GPU, where TN layers' small kernels are launch-bound (measured on an H200: 1.6-3.4x
            # off a TN layer's step); inductor's fused kernels on the CPU. Evaluation and checkpoints use the model
            self.net = torch.compile(self.net, mode="reduce-overhead" if self.device.type == "cuda" else "default")
        self.x_train = self.data.x_train.to(self.device)
        self.y_train = self.data.y_train.to(self.device)
        self.x_test = self.data.x_test.to(self.device)
        self.y_test = self.data.y_test.to(self.device)
        self.classify = self.data.task == "classification"
        self.loss_fn = nn.CrossEntropyLoss() if self.classify else nn.MSELoss()
        self.steps_per_epoch = math.ceil(len(self.x_train) / config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.opt = adamw(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(self.total_steps, config.warmup))
        self.amp_dtype = None
        if config.amp:
            cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            self.amp_dtype = torch.bfloat16 if (self.device.type == "cpu" or cuda_bf16) else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step, self.elapsed, self.best, self.last_eval = 0, 0.0, None, None
        if self.resume:
            self._load_checkpoint()

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        if not self.is_main:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                 "elapsed": self.elapsed, "best": self.best, "total_steps": self.total_steps,
                 "rng": torch.get_rng_state()}
        if self.world > 1 and self._rank_rngs is not None:  # every rank's, for its dropout masks after a resume
            state["rng_ranks"] = self._rank_rngs
        atomic_write(self.ckpt_path, lambda f: torch.save(state, f))
        self.store.update(self.run_id, checkpoint=str(self.ckpt_path))

    def init_path(self, path: str) -> Path:
        """``init_from`` as a path: a relative one is resolved against the run's folder."""
        p = expand_user(path)
        return p if p.is_absolute() else self.dir / p

    def _load_init(self, path: str) -> None:
        """Start from the weights in ``init_from``: the whole model's state dict, loaded strictly
        (``weights_only=True``); a missing file, a missing or extra entry, or a shape that differs raises
        :class:`ConfigError` naming them."""
        p = self.init_path(path)
        if not p.is_file():
            raise ConfigError(f"init_from: no such file {p}", "init_from")
        try:
            state = torch.load(p, map_location=self.device, weights_only=True)
        except Exception as e:  # torch.load raises many types; the run records one line
            raise ConfigError(f"init_from: {p} is not a state dict torch can load with weights_only=True ({e})",
                              "init_from") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise ConfigError(f"init_from: {p} holds {type(state).__name__}, not a state dict", "init_from")
        own = self.model.state_dict()
        problems = [f"missing {k}" for k in own if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in own]
        problems += [f"{k} has shape {tuple(state[k].shape)} in the file but {tuple(v.shape)} in the model"
                     for k, v in own.items() if k in state and hasattr(state[k], "shape")
                     and tuple(state[k].shape) != tuple(v.shape)]
        if problems:
            shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            raise ConfigError(f"init_from: {p} does not fit the model ({shown})", "init_from")
        self.model.load_state_dict(state, strict=True)

    def _load_checkpoint(self) -> None:
        if not self.ckpt_path.exists():
            raise FileNotFoundError(f"run {self.run_id} has no checkpoint to resume from ({self.ckpt_path})")
        state = torch.load(self.ckpt_path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.elapsed, self.best = int(state["step"]), float(state["elapsed"]), state["best"]
        ranks = state.get("rng_ranks")
        own = ranks[self.rank] if isinstance(ranks, list) and len(ranks) == self.world else state["rng"]
        torch.set_rng_state(own.cpu())  # each rank its own (all had been given rank 0's: other dropout masks)
        if self.is_main:
            self.store.delete_metrics_after(self.run_id, self.step)

    # ----------------------------------------------------------------- distributed helpers
    def _gather_rngs(self) -> None:
        """Every rank's CPU random state, gathered at a logging step that a checkpoint follows (an evaluation or a
        stop; a collective: every rank is there and agrees on both)."""
        import torch.distributed as dist

        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, torch.get_rng_state())
        self._rank_rngs = [torch.as_tensor(t).cpu() for t in states]

    def _sum(self, values: list[float]) -> list[float]:
        """Sum numbers over ranks (identity on one process)."""
        if self.world == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, batch: int = 1024) -> tuple[float, float | None]:
        """Test loss and accuracy (None for regression) over the whole test set, summed across ranks."""
        self.model.eval()
        loss_sum, correct, count = 0.0, 0.0, 0.0
        idx = torch.arange(self.rank, len(self.x_test), self.world, device=self.device)
        for start in range(0, len(idx), batch):
            b = idx[start:start + batch]
            with self._autocast():
                out = self.model(self.x_test[b]).float()
            y = self.y_test[b]
            loss_sum += float(self.loss_fn(out, y)) * len(b)
            if self.classify:
                correct += float((out.argmax(1) == y).sum())
            count += len(b)
        self.model.train()
        loss_sum, correct, count = self._sum([loss_sum, correct, count])
        return loss_sum / max(count, 1), (correct / max(count, 1) if self.classify else None)

    def _batch_loss(self, out: torch.Tensor, y: torch.Tensor, whole: int) -> torch.Tensor:
        """The loss to differentiate for this rank's share of a global batch of ``whole`` examples. One process:
        the batch's mean. Several: DDP averages the ranks' gradients with equal weights, so each rank's loss is its
        examples' sum over the global batch's denominator, times the number of ranks; the average is then the
        global batch's mean gradient for any split. The ranks' own means had weighted an uneven split's examples
        unequally (batch 65 on 2 ranks: weights off by 3e-3 after 2 epochs) and made an empty share (the last
        batch of an epoch can hold fewer examples than ranks) a NaN loss that failed the run."""
        if self.world == 1:
            return self.loss_fn(out, y)
        total = F.cross_entropy(out, y, reduction="sum") if self.classify else F.mse_loss(out, y, reduction="sum")
        per_example = math.prod(out.shape[1:]) if not self.classify else 1  # MSE's mean runs over every entry
        return total * (self.world / (whole * per_example))

    # ----------------------------------------------------------------- the loop
    def train(self, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        config, store = self.config, self.store
        if self.is_main:
            pid = os.getpid()
            store.set_status(self.run_id, "running", None, pid=pid, pid_start=process_start_time(pid),
                             host=socket.gethostname(), total_steps=self.total_steps, summary=self.summary,
                             finished=None)
        log_every = config.log_every
        eval_every = config.eval_every or self.steps_per_epoch
        acc_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        acc_correct = torch.zeros((), device=self.device, dtype=torch.float64)
        acc_norm = torch.zeros((), device=self.device, dtype=torch.float64)
        acc_count, window_start, last_time = 0, self.step, time.perf_counter()
        self.model.train()
        epoch = self.step // self.steps_per_epoch
        while self.step < self.total_steps:
            batches = epoch_batches(len(self.x_train), config.batch_size, config.seed, epoch, self.rank, self.world)
            first = self.step - epoch * self.steps_per_epoch
            for k, b in enumerate(batches[first:], first):
                whole = min(config.batch_size, len(self.x_train) - k * config.batch_size)  # the global batch
                b = b.to(self.device)
                x, y = self.x_train[b], self.y_train[b]
                with self._autocast():
                    out = self.net(x)
                    loss = self._batch_loss(out.float(), y, whole)
                self.opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.opt)
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip or math.inf)
                self.scaler.step(self.opt)
                self.scaler.update()
                self.sched.step()
                self.step += 1
                acc_loss += (loss.detach().double() * whole / self.world) if self.world > 1 else \
                    loss.detach().double() * len(b)  # this rank's examples' summed loss
                acc_norm += norm.detach().double()
                if self.classify:
                    acc_correct += (out.detach().argmax(1) == y).sum()
                acc_count += len(b)
                end_of_epoch = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
                eval_due = self.step % eval_every == 0 or self.step == self.total_steps
                if self.step % log_every and not end_of_epoch and not eval_due:  # (an evaluation step is one too:
                    continue  # it had waited for a logging step, so --eval-every 7 with log_every 10 never ran)
                # ---- a logging point: reduce over ranks, check health and the stop flag
                now = time.perf_counter()
                self.elapsed += now - last_time
                stop_local = float(self.stop.signal is not None
                                   or (self.is_main and store.stop_requested(self.run_id)))
                loss_sum, correct, count, norm_sum, stop_any = self._sum(
                    [acc_loss.item(), acc_correct.item(), float(acc_count), acc_norm.item(), stop_local])
                if self.world > 1 and (eval_due or stop_any):  # a checkpoint follows at this step
                    self._gather_rngs()
                # with a float16 grad scaler, inf gradients are expected now and then: the scaler skips the step
                if not (math.isfinite(loss_sum) and (math.isfinite(norm_sum) or self.scaler.is_enabled())):
                    what = "loss" if not math.isfinite(loss_sum) else "gradient norm"
                    raise _NonFinite(f"{what} became {'nan' if math.isnan(loss_sum + norm_sum) else 'inf'} "
                                     f"by step {self.step} (epoch {self.step / self.steps_per_epoch:.2f}): "
                                     f"lower the learning rate (lr={config.lr:g}), turn on gradient clipping or "
                                     f"check the design's bond dimensions and activations")
                row = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "split": "train",
                       "loss": loss_sum / count, "accuracy": correct / count if self.classify else None,
                       "lr": self.sched.get_last_lr()[0],
                       "throughput": count / max(now - last_time, 1e-9) if self.step > window_start else None,
                       "elapsed": self.elapsed}
                rows = [row]
                if eval_due:
                    test_loss, test_acc = self.evaluate()
                    metric = test_acc if test_acc is not None else -test_loss
                    self.best = metric if self.best is None else max(self.best, metric)
                    rows.append({"step": self.step, "epoch": row["epoch"], "split": "test", "loss": test_loss,
                                 "accuracy": test_acc, "lr": row["lr"], "elapsed": self.elapsed})
                    self.last_eval = (test_loss, test_acc)
                if self.is_main:
                    store.log_metrics(self.run_id, rows)
                    if len(rows) > 1:
                        self.save_checkpoint()
                if progress is not None:
                    for r in rows:
                        progress(r)
                acc_loss.zero_(), acc_correct.zero_(), acc_norm.zero_()
                acc_count, window_start, last_time = 0, self.step, time.perf_counter()
                if self.step >= self.total_steps:
                    break
                if stop_any:
                    raise _Stopped(self.stop.signal or "stop requested")
            epoch += 1
        test_loss, test_acc = self.last_eval or self.evaluate()
        return self._results(test_loss, test_acc)

    def _results(self, test_loss: float, test_acc: float | None) -> dict[str, Any]:
        res = {"test_loss": test_loss, "test_accuracy": test_acc, "steps": self.step,
               "epochs": self.step / self.steps_per_epoch, "train_seconds": self.elapsed}
        if test_acc is not None:
            res["best_test_accuracy"] = self.best
        else:
            yv = self.y_test.float()
            res["test_r2"] = 1.0 - test_loss / float(((yv - yv.mean(0)) ** 2).mean())
        res.update({k: self.summary[k] for k in ("params", "layer_params", "layer_dense_params",
                                                 "layer_compression", "design_compression")})
        return res


class _NonFinite(RuntimeError):
    pass


class _Stopped(Exception):
    pass


# --------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_distributed(rank: int, world: int, port: int, device_name: str) -> None:
    import torch.distributed as dist

    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    if not cuda:  # share the cores between the ranks (setup() may lower it further for small models)
        torch.set_num_threads(max(1, torch.get_num_threads() // world))


def _worker(rank: int, world: int, port: int, run_id: str, root: str, resume: bool) -> None:
    """A rank > 0: trains in step with rank 0 and writes nothing."""
    import torch.distributed as dist

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop
    store = RunStore(root)
    trainer = Trainer(store, run_id, rank, world, resume)
    _init_distributed(rank, world, port, trainer.config.device)
    try:
        trainer.setup()
        trainer.train()
    except (_Stopped, _NonFinite):
        pass  # expected endings, seen by every rank at the same step: rank 0 records them
    finally:
        dist.destroy_process_group()


def _record_stop(trainer: Trainer, store: RunStore, run_id: str, what: str, hint: str = "") -> None:
    """Checkpoint a stopped run and record it ``stopped``; when the checkpoint cannot be written, record it
    ``failed`` with that reason (the error had escaped the stop's handler, so the run was recorded only later, by
    a reader, as 'process died'). Its earlier checkpoint, if any, stays resumable."""
    try:
        trainer.save_checkpoint()
    except Exception as e:  # noqa: BLE001 - any failure to write (permissions, a full disk, a folder in the way)
        log.exception("run %s: the checkpoint of its stop could not be written", run_id)
        store.set_status(run_id, "failed", f"{what}, but its checkpoint could not be written: "
                                           f"{type(e).__name__}: {e}", step=trainer.step)
        return
    store.set_status(run_id, "stopped", what + hint, step=trainer.step)


def run_training(run_id: str, runs_dir: str | None = None, resume: bool = False,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train a recorded run in this process (rank 0; starts ranks 1..nproc-1); returns the final run dict."""
    store = RunStore(runs_dir)
    run_id = store.resolve(run_id)
    trainer = Trainer(store, run_id, 0, 1, resume)
    previous_handlers, previous_threads = trainer.stop.install(), torch.get_num_threads()
    world = trainer.config.nproc
    procs = []
    try:
        if world > 1:
            import torch.multiprocessing as mp

            trainer.world = world
            port = _free_port()
            ctx = mp.get_context("spawn")
            for r in range(1, world):
                p = ctx.Process(target=_worker, args=(r, world, port, run_id, str(store.root), resume), daemon=True)
                p.start()
                procs.append(p)
            _init_distributed(0, world, port, trainer.config.device)
        trainer.setup()
        results = trainer.train(progress)
        store.set_status(run_id, "completed", None, results=results, step=trainer.step)
    except _Stopped as e:
        _record_stop(trainer, store, run_id, f"stopped at step {trainer.step} of {trainer.total_steps} ({e})",
                     f"; resume with: tnstudio runs resume {run_id}")
    except _NonFinite as e:
        store.set_status(run_id, "failed", str(e))
    except BaseException as e:  # noqa: BLE001 - every ending is recorded: the traceback goes to the run's log.txt
        log.exception("run %s failed", run_id)
        store.set_status(run_id, "failed", f"{type(e).__name__}: {e}")
        if not isinstance(e, Exception):
            raise
    finally:
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
        _StopFlag.restore(previous_handlers)
        torch.set_num_threads(previous_threads)
        sys.stdout.flush()
    return store.get_run(run_id, with_design=False)


# --------------------------------------------------------------------- torchrun
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun_env() -> dict[str, Any] | None:
    """torchrun's environment when this process was started by it (or by any launcher of torch.distributed that
    sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``
    when given), else None."""
    if not all(k in os.environ for k in TORCHRUN_VARS):
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return {"rank": rank, "world": world, "local_rank": int(os.environ.get("LOCAL_RANK", rank)),
            "local_world": int(os.environ.get("LOCAL_WORLD_SIZE", world)),
            "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"}


def torchrun_main(run_id: str | None = None, runs_dir: str | None = None, resume: bool = False,
                  create: Callable[[RunStore], str] | None = None,
                  progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Train one run as this process's rank under torchrun (``torchrun --nproc-per-node N [--nnodes M ...] -m
    engine.train --run ID`` or ``-m engine.cli train NETWORK.json ...``).

    The process group comes from torchrun's environment (``init_method="env://"``: RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT; the GPU is LOCAL_RANK). Rank 0 opens the run store, records the run (``create(store) -> run id``)
    or reads ``run_id``, and sends the run to the other ranks, which never touch a store (on other machines there
    is none); rank 0 writes metrics, checkpoints and the ending. Returns the final run dict on rank 0, None on the
    others. A problem rank 0 finds before training (a bad config, missing data) raises ``ValueError`` on every
    rank.
    """
    import torch.distributed as dist

    env = torchrun_env()
    if env is None:
        raise RuntimeError("not started by torchrun: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not set")
    rank, world = env["rank"], env["world"]
    cuda = torch.cuda.is_available()
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", init_method="env://",
                            timeout=timedelta(seconds=300))
    store: RunStore | None = None
    box: list[Any] = [None, None]
    if rank == 0:
        try:
            store = RunStore(runs_dir)
            rid = store.resolve(run_id) if run_id else create(store)  # type: ignore[misc]
            box = [store.get_run(rid), None]
        except Exception as e:  # noqa: BLE001 - sent to every rank, raised there as one clear error
            log.debug("rank 0 could not open run %s in %s", run_id, runs_dir, exc_info=True)
            box = [None, f"{e}"]
    dist.broadcast_object_list(box, src=0)
    run, error = box
    if error is not None:
        dist.destroy_process_group()
        raise ValueError(error)
    run_id = run["id"]
    trainer = Trainer(store, run_id, rank, world, resume, run=run, local_rank=env["local_rank"])
    previous_threads = torch.get_num_threads()
    if not cuda:  # share this machine's cores between its ranks
        torch.set_num_threads(max(1, previous_threads // max(1, env["local_world"])))
    previous = trainer.stop.install() if rank == 0 else {}
    if rank != 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop
    try:
        trainer.setup()
        trainer.summary["torchrun"] = {"world": world, "master": env["master"]}
        results = trainer.train(progress)
        if rank == 0:
            store.set_status(run_id, "completed", None, results=results, step=trainer.step)
    except _Stopped as e:
        if rank == 0:
            _record_stop(trainer, store, run_id, f"stopped at step {trainer.step} of {trainer.total_steps} ({e})")
    except _NonFinite as e:
        if rank == 0:
            store.set_status(run_id, "failed", str(e))
    except BaseException as e:  # noqa: BLE001 - rank 0 records every ending
        log.exception("run %s failed on rank %d", run_id, rank)
        if rank == 0:
            store.set_status(run_id, "failed", f"{type(e).__name__} on rank 0: {e}")
        if not isinstance(e, Exception):
            raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        _StopFlag.restore(previous)
        torch.set_num_threads(previous_threads)
        sys.stdout.flush()
    return store.get_run(run_id, with_design=False) if rank == 0 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.train", description="Train a run recorded in the run store "
                                "(under torchrun: as one rank of a distributed run).")
    p.add_argument("--run", required=True, help="run id (see tnstudio runs list)")
    p.add_argument("--runs-dir", default=None, help="runs folder (default: $TNSTUDIO_HOME/runs)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine.nn.runtime import keep_freed_memory

    keep_freed_memory()  # a run is its own process: keep freed CPU memory for the next step (no page faults)
    if torchrun_env() is not None:
        run = torchrun_main(args.run, args.runs_dir, args.resume)
        if run is None:  # ranks > 0 report nothing
            return 0
    else:
        run = run_training(args.run, args.runs_dir, args.resume)
    print(f"run {run['id']}: {run['status']}" + (f" ({run['reason']})" if run.get("reason") else ""), flush=True)
    return 0 if run["status"] in ("completed", "stopped") else 1

