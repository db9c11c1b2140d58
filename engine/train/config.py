"""Run configs: every training setting with its default, checked in one place."""
from __future__ import annotations

import math
from typing import Any

from engine.train.data import dataset_name

MODELS = ("mlp", "cnn")

DEFAULT_CONFIG: dict[str, Any] = {
    "dataset": "digits", "data_dir": None, "model": "mlp", "hidden": None, "layer": None,
    "hidden_activation": "relu", "epochs": 10, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4,
    "warmup": 0.05, "grad_clip": 1.0, "device": "auto", "amp": False, "seed": 0, "baseline": False, "nproc": 1,
    "eval_every": 0, "log_every": 10, "max_steps": None, "threads": None,
}


class ConfigError(ValueError):
    """A run config with a bad value; the message names the key and what is allowed."""


def make_config(overrides: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """A complete, checked, JSON-able run config: :data:`DEFAULT_CONFIG` updated with the values given.

    Keys: dataset, data_dir, model (mlp|cnn), hidden (MLP hidden sizes or None: built around the design), layer
    (MLP layer the design replaces, None: the first that fits), hidden_activation, epochs, batch_size, lr,
    weight_decay, warmup (fraction of the steps), grad_clip (0: off), device (auto|cpu|cuda|cuda:N), amp, seed,
    baseline (nn.Linear in place of the design), nproc (data-parallel processes), eval_every (steps, 0: each
    epoch), log_every (steps), max_steps (stop early, None: all epochs), threads (CPU threads per process;
    None: one thread for small MLPs, whose steps are too short to gain from more, else torch's default).
    """
    cfg = dict(DEFAULT_CONFIG)
    given = {**(overrides or {}), **kwargs}
    unknown = set(given) - set(cfg)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(sorted(unknown))}; known: {', '.join(cfg)}")
    cfg.update({k: v for k, v in given.items()})

    def need(key: str, ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {what}, got {cfg[key]!r}")

    try:
        cfg["dataset"] = dataset_name(str(cfg["dataset"]))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    need("model", cfg["model"] in MODELS, f"one of {', '.join(MODELS)}")
    for key in ("epochs", "batch_size", "nproc", "log_every"):
        need(key, isinstance(cfg[key], int) and not isinstance(cfg[key], bool) and cfg[key] >= 1,
             "an integer >= 1")
    need("eval_every", isinstance(cfg["eval_every"], int) and cfg["eval_every"] >= 0, "an integer >= 0")
    need("seed", isinstance(cfg["seed"], int), "an integer")
    for key in ("lr", "weight_decay", "grad_clip", "warmup"):
        need(key, isinstance(cfg[key], (int, float)) and not isinstance(cfg[key], bool) and cfg[key] >= 0
             and math.isfinite(cfg[key]), "a number >= 0")
        cfg[key] = float(cfg[key])
    need("lr", cfg["lr"] > 0, "a number > 0")
    need("warmup", cfg["warmup"] < 1, "a fraction in [0, 1)")
    need("max_steps", cfg["max_steps"] is None or (isinstance(cfg["max_steps"], int) and cfg["max_steps"] >= 1),
         "None or an integer >= 1")
    need("hidden", cfg["hidden"] is None or (isinstance(cfg["hidden"], (list, tuple)) and all(
        isinstance(h, int) and h >= 1 for h in cfg["hidden"])), "None or a list of integers >= 1")
    if cfg["hidden"] is not None:
        cfg["hidden"] = list(cfg["hidden"])
    need("threads", cfg["threads"] is None or (isinstance(cfg["threads"], int) and cfg["threads"] >= 1),
         "None or an integer >= 1")
    need("layer", cfg["layer"] is None or (isinstance(cfg["layer"], int) and cfg["layer"] >= 0),
         "None or an integer >= 0")
    dev = str(cfg["device"])
    need("device", dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit()),
         "auto, cpu, cuda or cuda:N")
    cfg["baseline"], cfg["amp"] = bool(cfg["baseline"]), bool(cfg["amp"])
    if cfg["data_dir"] is not None:
        cfg["data_dir"] = str(cfg["data_dir"])
    return cfg
