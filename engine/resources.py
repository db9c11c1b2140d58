"""What this machine can hold: physical memory (or the container's limit) and a GPU's memory, so that work the
cost model prices beyond them is refused up front with both numbers instead of failing in the allocator.

``TNSTUDIO_MEMORY_BYTES`` (an integer) overrides the machine's memory, e.g. to rehearse a smaller machine.
No torch unless a GPU is asked about.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.format import nbytes

MEMORY_ENV = "TNSTUDIO_MEMORY_BYTES"
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


class ResourceError(ValueError):
    """Work the cost model prices beyond what this machine (or its GPU) holds."""


def machine_memory_bytes() -> int | None:
    """Physical memory, or the cgroup (container) memory limit when lower; None when neither can be read."""
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        if not (env.isascii() and env.isdigit()):  # str.isdigit() also admits '²', which int() refuses
            raise ResourceError(f"{MEMORY_ENV} must be a whole number of bytes, got {env!r}")
        return int(env)
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        pass
    for path in _CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2 ** 60:  # "max" or a huge number: no limit
            total = int(text) if total is None else min(total, int(text))
    return total


def gpu_memory_bytes(device: str) -> int | None:
    """Total memory of the CUDA device ``device`` (``cuda``, ``cuda:N``), None without CUDA (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
    return int(torch.cuda.get_device_properties(index).total_memory)


def check_fits(need: int, what: str, device: str = "cpu",
               hint: str = "lower the bond dimensions or the batch size, or see `tnstudio cost`") -> None:
    """Raise :class:`ResourceError` when ``need`` bytes (the cost model's estimate for ``what``) exceed this
    machine's memory, or the GPU's for a CUDA ``device``; the message has both numbers."""
    if device.startswith("cuda"):
        have, where = gpu_memory_bytes(device), f"the GPU ({device})"
    else:
        have, where = machine_memory_bytes(), "this machine"
    if have is not None and need > have:
        raise ResourceError(f"{what} needs {nbytes(need)} by the cost model's estimate, more than the "
                            f"{nbytes(have)} of memory {where} has: {hint}")
