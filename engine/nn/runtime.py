"""Process-wide runtime settings for training on the CPU.

:func:`keep_freed_memory`: glibc's allocator serves every allocation above 32 MiB with a fresh ``mmap`` and returns
it to the kernel on ``free``, so each large tensor of a training step (a W x chi^2 generator intermediate, W's
gradient) is page-faulted and zeroed by the kernel again at every step. Measured on the 2-core CPU, one thread: a
4096 x 4096 gelu MERA training step 1,487 -> 581 ms, nn.Linear's 114 -> 87 ms. Turning ``mmap`` off and never
trimming the heap keeps freed memory in the process for the next step, as PyTorch's CUDA caching allocator does on
the GPU; the price is that the process's resident memory stays at its peak (which the cost model's training memory
predicts). The training process (``python -m engine.train``) and the benchmarks call it; a library user opts in.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_APPLIED = False


def keep_freed_memory() -> bool:
    """Keep freed memory in the process (glibc: no ``mmap`` for large blocks, no heap trimming). Returns whether it
    applies (Linux with glibc); elsewhere it does nothing and returns False. Idempotent."""
    global _APPLIED
    if _APPLIED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to do
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    _APPLIED = ok
    return ok
