"""Shared test set-up: every test gets its own TN Studio home folder, and torch stays on few threads."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# `make test` (CI) draws the same examples on every run (a hash of each test), so what lands stays green unless the
# code changes; `make fuzz` runs the same property tests with fresh random examples (the adversarial search: run it
# before a change lands; a failure prints the example to add as an @example). `--hypothesis-profile` picks one.
# (too_slow: drawing examples on a 2-core machine that runs two test workers is not a test's failure)
settings.register_profile("ci", derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", derandomize=False, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


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
