"""Measured memory: the peak bytes the allocator holds while a callable runs, to check the cost model against.

CPU: the profiler's allocator events (c10's ProfiledCPUMemoryReporter reports every allocation and free made while
profiling). CUDA: the caching allocator's peak statistics. Tests, benchmarks and ``tnstudio`` users compare
:func:`engine.contract.memory.replay`'s predictions with this.
"""
from __future__ import annotations

import gc
import os
from collections import Counter
from typing import Callable

import torch


def peak_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated above what was held before, while ``fn`` runs on ``device``.

    The garbage collector runs before and is paused during the measurement: a collection inside it would free
    tensors allocated earlier and lower the count (seen as rare test failures that depended on which modules a
    session had imported). On the CPU run it on one torch thread: with several, intra-op workers allocate
    concurrently and the peak depends on how the OS schedules them.
    """
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    # torch 2.14's Kineto writes lines to stderr on every CPU profile (USDT profiler_start/stop, and
    # "gpuGetDeviceCount failed" without a GPU), which land inside benchmark tables: quiet unless the user set a level
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    gc.disable()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        gc.enable()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    # a free counts only against a block of that size allocated while profiling and not yet freed: the reporter
    # remembers block sizes by address across profiling sessions, so freeing a block allocated before this session
    # at a reused address can be reported with a stale size (seen as rare, too low peaks late in long sessions)
    live: Counter = Counter()
    cur = peak = 0
    for e in events:
        n = e.nbytes()
        if n > 0:
            live[n] += 1
        elif live[-n] > 0:
            live[-n] -= 1
        else:
            continue
        cur += n
        peak = max(peak, cur)
    return peak
