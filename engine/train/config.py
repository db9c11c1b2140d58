"""Run configs: every training setting with its type and default, checked in one place (:class:`RunConfig`)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from engine.design.model import MAX_DIM
from engine.format import clip_middle
from engine.train.data import DataError, dataset_name
from engine.train.models import HIDDEN_ACTIVATIONS, model_names


class ConfigError(ValueError):
    """A run config with a bad value; the message names the key and what is allowed (``key``: that key)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


MAX_COUNT = 2 ** 31 - 1  # epochs, batch size, steps and intervals: the run store keeps 64-bit integers, and step
# counts are products of these
MAX_SEED = 2 ** 32 - 1  # what every seeded step takes: torch.manual_seed, the data order's generator (seed x 100003
# + epoch, at most 2^64 - 1) and numpy's generators (no negatives)
MAX_PROCESSES = 1024  # data-parallel processes of one run
MAX_THREADS = 1024  # CPU threads per process


def _label(text: str) -> dict[str, str]:
    return {"label": text}


@dataclass(frozen=True)
class RunConfig:
    """A complete, checked training config; build variants with ``dataclasses.replace``.

    Fields: dataset (a registered name or alias, stored canonical), data_dir (folder of the file data sets;
    None: ``<TNSTUDIO_HOME>/data``), model (a registered kind: mlp, cnn), hidden (MLP hidden sizes; None: built
    around the design), layer (MLP layer the design replaces; None: the first that fits), hidden_activation,
    epochs, batch_size (global), lr (AdamW peak), weight_decay, warmup (fraction of the steps), grad_clip (0: off),
    device (auto|cpu|cuda|cuda:N), amp, compile (run the model's forward and backward through torch.compile: CUDA
    graphs on a GPU, fused kernels on the CPU; the first steps pay the compilation), seed (0 to 2^32 - 1),
    baseline (nn.Linear in place of the design), nproc (data-parallel processes), eval_every (steps; 0: each
    epoch), log_every (steps), max_steps (stop early; None: all epochs; these counts go up to 2^31 - 1),
    threads (CPU threads per process; None: one thread for small MLPs, whose steps are too short to gain from
    more, else torch's default), init_from (None: a fresh initialisation; else a ``.pt`` file holding the whole
    model's state dict, loaded strictly with ``weights_only=True`` before the first step, e.g. a truncated layer
    fine-tuned as a child run; a relative path is resolved against the run's folder, see
    :func:`engine.analysis.finetune.finetune`), network (None, or a whole network to train: a network file's
    JSON with every design inline, :mod:`engine.network.format`; it sets ``model`` to ``network``).

    Construction checks every field and raises :class:`ConfigError`; :meth:`from_dict` / :meth:`to_dict` convert
    to and from the JSON the run store keeps (same keys as ever, so old run stores load).
    """

    dataset: str = field(default="digits", metadata=_label("data set"))
    data_dir: str | None = field(default=None, metadata=_label("data folder"))
    model: str = field(default="mlp", metadata=_label("model"))
    hidden: tuple[int, ...] | None = field(default=None, metadata=_label("MLP hidden sizes"))
    layer: int | None = field(default=None, metadata=_label("layer the design replaces"))
    hidden_activation: str = field(default="relu", metadata=_label("hidden activation"))
    epochs: int = field(default=10, metadata=_label("epochs"))
    batch_size: int = field(default=64, metadata=_label("batch size"))
    lr: float = field(default=3e-3, metadata=_label("learning rate"))
    weight_decay: float = field(default=1e-4, metadata=_label("weight decay"))
    warmup: float = field(default=0.05, metadata=_label("warm-up"))
    grad_clip: float = field(default=1.0, metadata=_label("gradient clipping"))
    device: str = field(default="auto", metadata=_label("device"))
    amp: bool = field(default=False, metadata=_label("mixed precision"))
    compile: bool = field(default=False, metadata=_label("compiled step"))
    seed: int = field(default=0, metadata=_label("seed"))
    baseline: bool = field(default=False, metadata=_label("dense baseline"))
    nproc: int = field(default=1, metadata=_label("processes"))
    eval_every: int = field(default=0, metadata=_label("evaluation interval"))
    log_every: int = field(default=10, metadata=_label("logging interval"))
    max_steps: int | None = field(default=None, metadata=_label("maximum steps"))
    threads: int | None = field(default=None, metadata=_label("CPU threads"))
    init_from: str | None = field(default=None, metadata=_label("initial weights"))
    network: dict | None = field(default=None, metadata=_label("network"))

    def __post_init__(self) -> None:
        self._validate()

    # ----------------------------------------------------------------- checks
    def _set(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, value)  # normalising a frozen instance while it is being built

    def _need(self, key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {clip_middle(repr(getattr(self, key)))}", key)

    def _validate(self) -> None:
        try:
            self._set("dataset", dataset_name(str(self.dataset)))
        except DataError as e:
            raise ConfigError(str(e), "dataset") from None
        self._check_network()
        self._need("model", self.model in model_names(), f"one of {', '.join(model_names())}")
        for key in ("epochs", "batch_size", "nproc", "log_every"):
            self._need(key, _is_int(getattr(self, key), 1), "an integer >= 1")
        self._need("eval_every", _is_int(self.eval_every, 0), "an integer >= 0")
        self._need("seed", _is_int(self.seed), "an integer")
        for key, most, text in (("epochs", MAX_COUNT, "2^31 - 1"), ("batch_size", MAX_COUNT, "2^31 - 1"),
                                ("log_every", MAX_COUNT, "2^31 - 1"), ("eval_every", MAX_COUNT, "2^31 - 1"),
                                ("nproc", MAX_PROCESSES, str(MAX_PROCESSES))):
            self._need(key, getattr(self, key) <= most, f"at most {text}")
        self._need("seed", 0 <= self.seed <= MAX_SEED, "from 0 to 2^32 - 1")
        for key in ("lr", "weight_decay", "grad_clip", "warmup"):
            value = getattr(self, key)
            positive = key == "lr"
            self._need(key, _is_number(value) and (value > 0 if positive else value >= 0) and math.isfinite(value),
                       "a finite number > 0" if positive else "a finite number >= 0")
            self._set(key, float(value))
        self._need("warmup", self.warmup < 1, "a fraction in [0, 1)")
        self._need("max_steps", self.max_steps is None or _is_int(self.max_steps, 1), "None or an integer >= 1")
        self._need("max_steps", self.max_steps is None or self.max_steps <= MAX_COUNT, "at most 2^31 - 1")
        self._need("hidden", self.hidden is None or (isinstance(self.hidden, (list, tuple)) and all(
            _is_int(h, 1) and h <= MAX_DIM for h in self.hidden)), "None or a list of integers from 1 to 2^31 - 1")
        if self.hidden is not None:
            self._set("hidden", tuple(self.hidden))
        self._need("threads", self.threads is None or _is_int(self.threads, 1), "None or an integer >= 1")
        self._need("threads", self.threads is None or self.threads <= MAX_THREADS, f"at most {MAX_THREADS}")
        self._need("layer", self.layer is None or _is_int(self.layer, 0), "None or an integer >= 0")
        self._need("hidden_activation", self.hidden_activation in HIDDEN_ACTIVATIONS,
                   f"one of {', '.join(HIDDEN_ACTIVATIONS)}")
        dev = str(self.device)
        self._need("device", dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
                   "auto, cpu, cuda or cuda:N")
        self._set("device", dev)
        for key in ("baseline", "amp", "compile"):
            value = getattr(self, key)
            self._need(key, isinstance(value, bool) or (_is_int(value) and value in (0, 1)), "True or False")
            self._set(key, bool(value))
        self._need("data_dir", self.data_dir is None or isinstance(self.data_dir, (str, os.PathLike)),
                   "None or a folder")
        if self.data_dir is not None:
            self._set("data_dir", os.fspath(self.data_dir))
        init = self.init_from
        self._need("init_from", init is None or (isinstance(init, (str, os.PathLike)) and
                                                 os.fspath(init).endswith(".pt")), "None or a path to a .pt file")
        if init is not None:
            self._set("init_from", os.fspath(init))

    def _check_network(self) -> None:
        """``network``: a valid network file's JSON (parsed, not built: no torch); it makes ``model`` "network"."""
        if self.network is None:
            self._need("model", self.model != "network", "given with a network (--model network trains a network "
                       "file)")
            return
        from engine.network.format import NetworkError, NetworkSpec

        self._need("network", isinstance(self.network, dict), "None or a network file's JSON object")
        try:
            spec = NetworkSpec.from_dict(self.network)
        except NetworkError as e:
            raise ConfigError(f"network: {e}", "network") from None
        if any(a.path for a in spec.layers.values()):
            raise ConfigError("network: give every design inline (NetworkSpec.resolved_copy), not by path", "network")
        self._set("model", "network")

    def check_device(self) -> None:
        """Refuse, with a :class:`ConfigError`, a CUDA device this machine lacks (the launcher calls this before
        recording a run; imports torch unless the device is cpu, or auto on one process)."""
        problem = device_problem(self.device, self.nproc)
        if problem:
            raise ConfigError(problem, "device")

    # ----------------------------------------------------------------- conversions
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def label(cls, key: str) -> str:
        """A field's name in words (for forms and messages)."""
        return next((f.metadata.get("label", key) for f in fields(cls) if f.name == key), key)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """A config from a dict such as the run store keeps (missing keys take their defaults)."""
        unknown = set(data) - set(cls.keys())
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(sorted(unknown))}; known: {', '.join(cls.keys())}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able dict of every field (``hidden`` as a list), as the run store keeps it."""
        out = {k: getattr(self, k) for k in self.keys()}
        if self.hidden is not None:
            out["hidden"] = list(self.hidden)
        return out


def _is_int(value: Any, minimum: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def device_problem(device: str, nproc: int = 1) -> str | None:
    """Why this machine cannot train on ``device`` with ``nproc`` processes, or None when it can."""
    if device == "cpu" or (device == "auto" and nproc == 1):
        return None
    import torch

    if not torch.cuda.is_available():
        if device == "auto":
            return None
        return f"device {device} asked for but torch sees no GPU: use --device cpu or auto"
    count = torch.cuda.device_count()
    if nproc > 1 and count < nproc:
        return f"nproc={nproc} on CUDA needs {nproc} GPUs, torch sees {count}"
    if device.startswith("cuda:") and int(device[5:]) >= count:
        return f"device {device} asked for but torch sees {count} GPU{'s' if count != 1 else ''}"
    return None
