"""The timing harness of the layer benchmarks (conv_speed, layer_speed, generator_speed).

Each benchmark times steps (one forward + backward, or one training epoch) in interleaved rounds after warm-up
rounds: every round runs every step once, so load from other processes on a shared machine hits every row alike.
A GPU is synchronised before and after each timed step; rows report the median (and min) in ms.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch import nn

from devices import require_device  # benchmarks/devices.py, beside this module


def prepare_device(device: str, threads: int, keep_freed: bool = False) -> str:
    """Check ``device`` (exit with one line when torch cannot run on it), set torch's CPU threads and, on the CPU,
    keep freed memory in the process when ``keep_freed`` (:func:`engine.nn.runtime.keep_freed_memory`)."""
    dev = require_device(device)
    torch.set_num_threads(threads)
    if dev == "cpu" and keep_freed:
        from engine.nn.runtime import keep_freed_memory

        keep_freed_memory()
    return dev


def device_description(device: str) -> str:
    """The GPU's name, or ``CPU, <threads> threads``."""
    return torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"


def title(benchmark: str, measured: str, reps: int, device: str) -> str:
    """A report's first line: what is timed, over how many rounds, with which torch on which device."""
    return (f"# {benchmark}: {measured} in ms, median (and min) of {reps} interleaved rounds "
            f"(torch {torch.__version__}, {device_description(device)})")


def device_sync(device: str) -> Callable[[], None]:
    """A function waiting until ``device`` has run all its queued work (nothing to wait for on the CPU)."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def timed_ms(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Wall time of one ``fn()`` in ms, the device synchronised before and after."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return (time.perf_counter() - t0) * 1e3


def training_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], float]:
    """A function timing one forward + backward of ``layer`` on ``x`` (upstream gradient ``grad``; gradients into
    every parameter and ``x``, cleared first), in ms."""
    sync = device_sync(x.device.type)

    def step() -> float:
        for p in layer.parameters():
            p.grad = None
        x.grad = None
        return timed_ms(lambda: layer(x).backward(grad), sync)

    return step


def interleaved_rounds(steps: dict[str, Callable[[], float]], reps: int, warmup: int) -> dict[str, list[float]]:
    """Each step's times (ms) over ``reps`` rounds after ``warmup`` untimed ones; a round runs every step once."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(reps):
        for label, step in steps.items():
            times[label].append(step())
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each row's times."""
    return {label: statistics.median(values) for label, values in times.items()}
