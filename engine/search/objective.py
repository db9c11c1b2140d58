"""One trial of a design search: propose, price, maybe train, and answer Optuna with two objectives.

:class:`SearchObjective` is the callable a worker hands to ``study.optimize``. For each trial it

1. asks the :class:`~engine.search.space.LayerSpace` for a candidate (Optuna's sampler chooses) and builds it; a
   combination a template refuses is pruned with the template's reason;
2. prices it with the cost model (:class:`~engine.search.budget.Budget`) and records one constraint per limit
   (``Trial.set_constraint``, so the TPE sampler learns the feasible region); an infeasible candidate is pruned at
   once with the reason, costing no training;
3. a candidate that repeats a design already trained in the study gets that trial's result (no training);
4. otherwise records a run in the run store (``summary.search`` links it to the study and trial; the trial's user
   attributes hold the run id, host and runs folder) and trains it in this process with :class:`SearchTrainer`;
5. returns ``(validation accuracy, params or forward FLOPs)``: maximise, minimise.

**Pruning on accuracy.** Optuna's ``Trial.report`` / ``should_prune`` do not support multi-objective studies (they
raise ``NotImplementedError``), and ranking by accuracy alone would prune exactly the small designs a Pareto front
wants. So each trained trial also runs in a single-objective *companion study* of the same storage, named
``<study>/prune/<objective>-2^<k>``: one per power-of-two size bucket of the second objective (params or FLOPs).
The trial reports its validation accuracy after every epoch there and asks Optuna's pruner (``MedianPruner`` or
``SuccessiveHalvingPruner``) whether to stop: a design is stopped when it trails earlier designs *of about its
size* at the same epoch. Pruned trials are recorded in the main study as ``PRUNED`` with the reason, and their
runs as ``stopped`` with a checkpoint (``tnstudio runs resume`` finishes one).
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any, Callable

import numpy as np

from engine.search.spec import STOP_ATTR, SearchSpec
from engine.search.storage import COMPANION_MARK, redact

log = logging.getLogger(__name__)
STOP_POLL_S = 0.5


def size_bucket(value: float) -> int:
    """The power-of-two bucket of a size (params or FLOPs): ``k`` with ``2^k <= value < 2^(k+1)``."""
    return int(math.floor(math.log2(max(float(value), 1.0))))


def companion_name(study_name: str, objective: str, value: float) -> str:
    return f"{study_name}{COMPANION_MARK}{objective}-2^{size_bucket(value)}"


def make_pruner(spec: SearchSpec):
    """Optuna's pruner for the companion studies (None: no pruning)."""
    import optuna

    if spec.pruner == "none":
        return None
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, spec.epochs // 8), reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, spec.epochs // 5), interval_steps=1)


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: ``fraction`` of each class held out, seeded (the same for every trial)."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        val.append(idx[:int(round(fraction * len(idx)))])
    v = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[v] = False
    return np.flatnonzero(mask), v


class _Pruned(Exception):
    """The companion study's pruner stopped the trial."""


class _Interrupted(Exception):
    """The search was stopped (``tnstudio search stop``) or the worker was asked to end."""


def _make_trainer_class():
    """:class:`SearchTrainer`, built on first use so that importing this module does not import torch."""
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    from engine.train.loop import Trainer, lr_lambda

    class SearchTrainer(Trainer):
        """The run store's :class:`~engine.train.loop.Trainer` with a validation split carved out of the training
        examples. Every evaluation measures the test split (logged as ``test`` rows, as for any run, so the Train
        tab shows the usual curves) and the validation split (``last_val``; the search logs ``val`` rows)."""

        def __init__(self, store, run_id: str, val_fraction: float, split_seed: int, link: dict[str, Any]):
            super().__init__(store, run_id)
            self.val_fraction, self.split_seed, self.link = val_fraction, split_seed, link
            self.x_val: torch.Tensor | None = None
            self.y_val: torch.Tensor | None = None
            self.last_val: tuple[float, float | None] | None = None

        def setup(self) -> None:
            super().setup()
            self.summary["search"] = self.link
            if self.val_fraction <= 0:
                return
            tr, va = stratified_holdout(self.y_train.cpu().numpy(), self.val_fraction, self.split_seed)
            tr_t, va_t = torch.as_tensor(tr, device=self.device), torch.as_tensor(va, device=self.device)
            self.x_val, self.y_val = self.x_train[va_t], self.y_train[va_t]
            self.x_train, self.y_train = self.x_train[tr_t], self.y_train[tr_t]
            config = self.config
            self.steps_per_epoch = math.ceil(len(self.x_train) / config.batch_size)
            self.total_steps = config.epochs * self.steps_per_epoch
            if config.max_steps:
                self.total_steps = min(self.total_steps, config.max_steps)
            self.sched = LambdaLR(self.opt, lr_lambda(self.total_steps, config.warmup))
            self.summary.update(train_examples=len(tr), val_examples=len(va))

        def evaluate(self, batch: int = 1024) -> tuple[float, float | None]:
            test = super().evaluate(batch)
            if self.x_val is None:
                self.last_val = test
                return test
            saved = self.x_test, self.y_test
            self.x_test, self.y_test = self.x_val, self.y_val
            try:
                self.last_val = super().evaluate(batch)
            finally:
                self.x_test, self.y_test = saved
            return test

    return SearchTrainer


_TRAINER = None


def search_trainer_class():
    global _TRAINER
    if _TRAINER is None:
        _TRAINER = _make_trainer_class()
    return _TRAINER


def _design_key(trial) -> str | None:
    """The fingerprint of the design a trial trained (built again from its candidate for trials recorded before
    the fingerprint was)."""
    key = trial.user_attrs.get("design_key")
    if key is None and trial.user_attrs.get("candidate"):
        from engine.search.space import Candidate

        try:
            key = Candidate.from_dict(trial.user_attrs["candidate"]).build().fingerprint()
        except (KeyError, TypeError, ValueError) as e:  # a candidate no template builds: it trained nothing
            log.debug("trial %d's candidate does not build: %r", trial.number, e)
    return key


class SearchObjective:
    """The objective of one worker (see the module docstring). ``stop_check()`` says whether to stop now (the
    worker's signal flag); the study's stop flag is read too, at most every :data:`STOP_POLL_S` seconds."""

    def __init__(self, study, spec: SearchSpec, storage_url: str, runs_dir: str | None = None,
                 stop_check: Callable[[], bool] | None = None, max_retries: int = 2):
        from engine.train.store import RunStore

        self.study, self.spec, self.storage_url = study, spec, storage_url
        self.store = RunStore(runs_dir)
        self.stop_check = stop_check or (lambda: False)
        self.max_retries = max_retries
        self.pruner = make_pruner(spec)
        self._companions: dict[str, Any] = {}
        self._last_poll, self._stopped = 0.0, False

    # ------------------------------------------------------------------ stopping
    def should_stop(self, force_poll: bool = False) -> bool:
        if self._stopped or self.stop_check():
            self._stopped = True
            return True
        now = time.monotonic()
        if force_poll or now - self._last_poll >= STOP_POLL_S:
            self._last_poll = now
            if self.study.user_attrs.get(STOP_ATTR):
                self._stopped = True
        return self._stopped

    # ------------------------------------------------------------------ the trial
    def __call__(self, trial) -> tuple[float, float]:
        import optuna

        from engine.train.store import process_start_time

        pid = os.getpid()
        worker = {"host": socket.gethostname(), "pid": pid, "pid_start": process_start_time(pid)}
        # a retried trial inherits the attributes of its failed attempt: start from a clean slate
        for key, value in (("worker", worker), ("trained", False), ("run_id", None), ("reason", None),
                           ("pruned_by", None), ("duplicate_of", None), ("companion", None)):
            trial.set_user_attr(key, value)
        cand = self.spec.space.suggest(trial)
        trial.set_user_attr("candidate", cand.to_dict())
        trial.set_user_attr("label", cand.label)
        trial.set_user_attr("kind", cand.kind)
        try:
            design = cand.build()
        except ValueError as e:
            trial.set_constraint("valid", 1.0)
            self._prune(trial, "invalid", f"the template refuses it: {e}")
        feas = self.spec.budget.check(design)
        for key, value in feas.constraints.items():
            trial.set_constraint(key, value)
        trial.set_user_attr("params", feas.params)
        trial.set_user_attr("forward_flops", feas.forward_flops)
        trial.set_user_attr("train_memory_bytes", feas.train_memory_bytes)
        if not feas.ok:
            self._prune(trial, "budget", feas.reason)
        size = feas.params if self.spec.objective == "params" else feas.forward_flops

        design_key = design.fingerprint()
        trial.set_user_attr("design_key", design_key)
        earlier = self._earlier(trial, design_key)
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier.number)
            for key in ("val_accuracy", "test_accuracy", "run_id", "host", "runs_dir"):
                trial.set_user_attr(key, earlier.user_attrs.get(key))
            if earlier.state == optuna.trial.TrialState.PRUNED:
                self._prune(trial, "accuracy", f"repeats trial {earlier.number}, which was pruned: "
                                               f"{earlier.user_attrs.get('reason')}")
            return float(earlier.values[0]), float(earlier.values[1])

        if self.should_stop(force_poll=True):
            trial.set_user_attr("reason", "interrupted: the search was stopped before this trial trained; queued "
                                          "again")
            self.retry(trial.number, trial.params, trial.user_attrs)
            self.study.stop()
            raise _Interrupted("the search was stopped before this trial trained")
        val_acc, _ = self._train(trial, cand, design)
        return float(val_acc), float(size)

    def _prune(self, trial, by: str, reason: str):
        import optuna

        trial.set_user_attr("pruned_by", by)
        trial.set_user_attr("reason", reason)
        raise optuna.TrialPruned(reason)

    def _earlier(self, trial, design_key: str):
        """An earlier finished trial of the same network that trained (or repeats one that did), if any. Networks
        are compared by the design's fingerprint, not by the choices that made it: per-bond dimensions that are all
        equal build the uniform design, and the two-leg TTN, aTTN and MERA build one network; each had been trained
        again and listed on the front once per choice."""
        import optuna

        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        for t in self.study.get_trials(deepcopy=False, states=states):
            if t.number == trial.number or t.user_attrs.get("pruned_by") not in (None, "accuracy"):
                continue
            if _design_key(t) == design_key:
                return t
        return None

    # ------------------------------------------------------------------ training
    def _companion(self, size: float):
        import optuna

        name = companion_name(self.study.study_name, self.spec.objective, size)
        if name not in self._companions:
            self._companions[name] = optuna.create_study(
                study_name=name, storage=self.study._storage, direction="maximize", pruner=self.pruner,
                sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
        return self._companions[name]

    def _train(self, trial, cand, design) -> tuple[float, float | None]:
        import optuna

        spec, store = self.spec, self.store
        link = {"study": self.study.study_name, "trial": trial.number, "storage": redact(self.storage_url)}
        run_id = store.create_run(spec.run_config(), design,
                                  name=f"search {self.study.study_name} #{trial.number}: {cand.label}")
        store.update(run_id, summary={"search": link})
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("runs_dir", str(store.root))
        trial.set_user_attr("trained", True)
        size = trial.user_attrs["params"] if spec.objective == "params" else trial.user_attrs["forward_flops"]
        comp = ctrial = None
        if self.pruner is not None:
            comp = self._companion(size)
            ctrial = comp.ask()
            trial.set_user_attr("companion", {"study": comp.study_name, "trial_id": ctrial._trial_id})

        trainer = search_trainer_class()(store, run_id, spec.val_fraction, spec.seed, link)
        curve: list[list[float]] = []

        def progress(row: dict[str, Any]) -> None:
            if row["split"] == "test":
                val_loss, val_acc = trainer.last_val
                if spec.val_fraction > 0:
                    store.log_metrics(run_id, {"step": row["step"], "epoch": row["epoch"], "split": "val",
                                               "loss": val_loss, "accuracy": val_acc, "lr": row["lr"],
                                               "elapsed": row["elapsed"]})
                epoch = int(round(row["epoch"]))
                curve.append([epoch, val_acc])
                trial.set_user_attr("val_accuracy", val_acc)
                if ctrial is not None and trainer.step < trainer.total_steps:
                    ctrial.report(val_acc, epoch)
                    if ctrial.should_prune():
                        raise _Pruned(f"validation accuracy {val_acc:.3f} after epoch {epoch} trails earlier "
                                      f"designs of {self._bucket_text(size)} ({spec.pruner} pruner)")
            if self.should_stop():
                raise _Interrupted("the search was stopped")

        t0 = time.perf_counter()
        try:
            trainer.setup()
            results = trainer.train(progress)
        except _Pruned as e:
            trainer.save_checkpoint()
            store.set_status(run_id, "stopped", f"pruned by the search: {e}", step=trainer.step)
            if comp is not None:
                comp.tell(ctrial, state=optuna.trial.TrialState.PRUNED)
            self._record_training(trial, trainer, curve, time.perf_counter() - t0)
            self._prune(trial, "accuracy", str(e))
        except _Interrupted as e:
            if trainer.opt is not None:
                trainer.save_checkpoint()
            store.set_status(run_id, "stopped", f"{e} at step {trainer.step} of {trainer.total_steps}",
                             step=trainer.step)
            self._fail_companion(comp, ctrial)
            trial.set_user_attr("reason", f"interrupted: {e}; queued again")
            self.retry(trial.number, trial.params, trial.user_attrs)
            self.study.stop()
            raise
        except BaseException as e:
            reason = str(e) if type(e).__module__ == "engine.train.loop" else f"{type(e).__name__}: {e}"
            log.exception("trial %s failed", trial.number)
            store.set_status(run_id, "failed", reason)
            self._fail_companion(comp, ctrial)
            trial.set_user_attr("reason", reason)
            raise
        val_loss, val_acc = trainer.last_val
        results = dict(results, val_loss=val_loss, val_accuracy=val_acc,
                       val_examples=int(len(trainer.y_val)) if trainer.y_val is not None else 0)
        store.set_status(run_id, "completed", None, results=results, step=trainer.step)
        if comp is not None:
            comp.tell(ctrial, val_acc)
        trial.set_user_attr("test_accuracy", results.get("test_accuracy"))
        self._record_training(trial, trainer, curve, time.perf_counter() - t0)
        return val_acc, results.get("test_accuracy")

    @staticmethod
    def _record_training(trial, trainer, curve: list[list[float]], seconds: float) -> None:
        trial.set_user_attr("val_curve", curve)
        trial.set_user_attr("epochs_trained", round(trainer.step / max(trainer.steps_per_epoch, 1), 3))
        trial.set_user_attr("train_seconds", round(seconds, 2))

    def _bucket_text(self, size: float) -> str:
        k = size_bucket(size)
        what = "params" if self.spec.objective == "params" else "FLOPs"
        return f"{2 ** k:,}-{2 ** (k + 1) - 1:,} {what}"

    @staticmethod
    def _fail_companion(comp, ctrial) -> None:
        import optuna

        if comp is not None and ctrial is not None:
            try:
                comp.tell(ctrial, state=optuna.trial.TrialState.FAIL)
            except Exception as e:  # noqa: BLE001 - already finished elsewhere: nothing to tell
                log.debug("companion trial %s already finished: %r", ctrial.number, e)

    def retry(self, number: int, params: dict[str, Any], user_attrs: dict[str, Any]) -> bool:
        """Queue trial ``number``'s candidate again (at most ``max_retries`` times per original trial)."""
        return queue_retry(self.study, number, params, user_attrs, self.max_retries)


def queue_retry(study, number: int, params: dict[str, Any], user_attrs: dict[str, Any], max_retries: int = 2
                ) -> bool:
    """Enqueue the same parameters as a new trial (``retry_of``: the first attempt), unless retried enough."""
    first = user_attrs.get("retry_of", number)
    attempt = int(user_attrs.get("attempt", 1)) + 1
    if attempt > max_retries + 1:
        return False
    study.enqueue_trial(params, user_attrs={"retry_of": first, "attempt": attempt})
    return True


def refit(spec: SearchSpec, study_name: str, number: int, candidate: dict[str, Any], storage_url: str,
          runs_dir: str | None = None) -> dict[str, Any]:
    """Train trial ``number``'s design again on *all* training examples (no validation split), as a hand sweep
    trains, and return ``{"run_id", "test_accuracy", "host"}`` (the run is in the run store, ``summary.search``
    marking it a refit). Selection used the validation split; this is the design's fair test number."""
    from engine.search.space import Candidate
    from engine.train.store import RunStore

    cand = Candidate.from_dict(candidate)
    store = RunStore(runs_dir)
    link = {"study": study_name, "trial": number, "storage": redact(storage_url), "refit": True}
    run_id = store.create_run(spec.run_config(), cand.build(), name=f"search {study_name} #{number} refit: "
                              f"{cand.label}")
    store.update(run_id, summary={"search": link})
    trainer = search_trainer_class()(store, run_id, 0.0, spec.seed, link)
    try:
        trainer.setup()
        results = trainer.train()
    except BaseException as e:
        store.set_status(run_id, "failed", str(e) if type(e).__module__ == "engine.train.loop"
                         else f"{type(e).__name__}: {e}")
        raise
    store.set_status(run_id, "completed", None, results=results, step=trainer.step)
    return {"run_id": run_id, "test_accuracy": results.get("test_accuracy"), "host": socket.gethostname(),
            "runs_dir": str(store.root)}

