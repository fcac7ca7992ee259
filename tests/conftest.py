"""Shared test setup: every test session builds its own offline demo assets once, in a temporary FTLAB_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def ftlab_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point ftlab's asset and cache home at a per-session folder so tests never touch the user's."""
    home = Path(os.environ.get("FTLAB_TEST_HOME") or tmp_path_factory.mktemp("ftlab_home"))
    os.environ["FTLAB_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return home
