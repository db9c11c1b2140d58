"""The ``--device`` argument of the benchmarks: checked up front, so a missing GPU ends the run with one line."""
from __future__ import annotations

import sys

import torch


def require_device(device: str) -> str:
    """``device`` if torch can run on it (``cpu``, ``cuda``, ``cuda:N``); else exit (status 1) with a one-line message."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        sys.exit(f"error: --device {device!r} is not a torch device ({e})")
    if dev.type == "cpu":
        return device
    if dev.type != "cuda":
        sys.exit(f"error: --device {device!r}: the benchmarks run on cpu or cuda")
    if not torch.cuda.is_available():
        sys.exit(f"error: --device {device}: no CUDA device is available here (torch {torch.__version__}, built for "
                 f"CUDA {torch.version.cuda or 'none'}); run on a machine with a GPU, or use --device cpu")
    if (dev.index or 0) >= torch.cuda.device_count():
        sys.exit(f"error: --device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    torch.cuda.set_device(dev.index or 0)
    return device
