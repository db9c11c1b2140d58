"""Shared test set-up: every test gets its own TN Studio home folder, and torch stays on few threads."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _tnstudio_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("tnstudio_home")
    monkeypatch.setenv("TNSTUDIO_HOME", str(home))
    yield home


def pytest_configure(config):
    # pytest-xdist's workers (`make test` runs one per core) take one thread each: two workers with two OpenMP
    # threads apiece on two cores spin-wait against each other (set here in the controller, which the workers inherit)
    workers = os.environ.get("PYTEST_XDIST_WORKER") or getattr(config.option, "numprocesses", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1" if workers else "2")


@pytest.fixture
def one_thread():
    """Tiny layers run faster on one torch thread: OpenMP spin-waits dominate on a shared 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
