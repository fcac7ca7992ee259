"""A folder, a FIFO or a missing path where a file is expected is named for what it is, not all "not found"."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ftlab.baselines import load_card
from ftlab.config import DataConfig, load_sweep
from ftlab.data._source import resolve_source
from ftlab.errors import UserError


@pytest.fixture
def kinds(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "folder.txt").mkdir()
    os.mkfifo(tmp_path / "pipe.txt")
    return {"folder": tmp_path / "folder.txt", "fifo": tmp_path / "pipe.txt", "missing": tmp_path / "gone.txt"}


EXPECTED = {
    "folder": "is a folder, not a file",
    "fifo": "is not a regular file (a pipe, device or socket)",
    "missing": "not found",
}


@pytest.mark.parametrize("kind", EXPECTED)
def test_a_data_file_that_is_not_a_file_is_named_for_what_it_is(kinds: dict[str, Path], kind: str) -> None:
    config = DataConfig(train_files=[str(kinds[kind])], block_size=16)
    with pytest.raises(UserError) as refused:  # returns at once: a FIFO is never opened
        resolve_source(config, None)
    message = str(refused.value)
    assert f"data.train_files[0]: data file {EXPECTED[kind]}" in message and str(kinds[kind]) in message
    if kind != "missing":
        assert "not found" not in message


@pytest.mark.parametrize("kind", EXPECTED)
def test_a_sweep_file_or_card_that_is_not_a_file_is_named_for_what_it_is(kinds: dict[str, Path], kind: str) -> None:
    with pytest.raises(UserError, match=re.escape(f"sweep file {EXPECTED[kind]}")):
        load_sweep(kinds[kind])
    with pytest.raises(UserError, match=re.escape(f"model card {EXPECTED[kind]}")):
        load_card(kinds[kind])
