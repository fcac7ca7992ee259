"""Shared test setup: every test session builds its own offline demo assets once, in a temporary FTLAB_HOME (one for
all of its pytest-xdist workers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def ftlab_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point ftlab's asset and cache home at a per-session folder so tests never touch the user's."""
    home = Path(os.environ.get("FTLAB_TEST_HOME") or _session_folder(tmp_path_factory) / "ftlab_home")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["FTLAB_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return home


def _session_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This session's temporary folder; under pytest-xdist the one its workers share, so that they build the demo
    assets once between them (the build takes a file lock, as several workers on one machine would)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
