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
    os.environ.setdefault("OMP_NUM_THREADS", "2")
