"""Output paths that cannot be written are refused up front in one line: under a regular file, or in a read-only
folder (`ftlab best --export DIR`, `ftlab baseline from-card -o FILE`); nothing is left half-made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.baselines import load_card
from ftlab.baselines.recipe_file import check_output, write_recipe
from ftlab.errors import UserError
from ftlab.export.target import ExportRefusedError, check_export_target
from ftlab.folders import unwritable_reason
from tests.support.readonly import read_only_folder

SHIPPED_CARD = Path(__file__).parents[1] / "ftlab" / "baselines" / "cards" / "gpt2-xl_ft_logits_25k.md"


def test_a_path_under_a_file_is_named_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    reason = unwritable_reason(tmp_path / "notes.txt" / "model" / "deeper")
    assert reason is not None and f"{tmp_path / 'notes.txt'} is a file" in reason
    assert unwritable_reason(tmp_path / "new" / "folders" / "model") is None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"], "the probe leaves nothing"


def test_a_read_only_folder_is_named(tmp_path: Path) -> None:
    with read_only_folder(tmp_path / "ro") as folder:
        reason = unwritable_reason(folder / "sub" / "model")
    assert reason is not None and f"cannot write in {folder}" in reason and "the filesystem is read-only" in reason


@pytest.mark.parametrize("under", ["file", "read-only"])
def test_an_export_target_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path, under: str) -> None:
    if under == "file":
        (tmp_path / "taken").write_text("a file")
        target = tmp_path / "taken" / "exported"
        with pytest.raises(ExportRefusedError, match="is a file, not a folder") as refused:
            check_export_target(target, False, {})
    else:
        with read_only_folder(tmp_path / "ro") as folder, pytest.raises(ExportRefusedError) as refused:
            check_export_target(folder / "exported", True, {})
        assert "the filesystem is read-only" in str(refused.value)
    assert "--export" in str(refused.value) and "Fix: choose a folder you can write in" in str(refused.value)


def test_from_card_creates_missing_folders(tmp_path: Path) -> None:
    card = Path(shutil.copy(SHIPPED_CARD, tmp_path / "README.md"))
    output = tmp_path / "recipes" / "gpt2" / "baseline.yaml"
    check_output(output, card)
    write_recipe(output, card, load_card(card))
    assert output.is_file() and [path.name for path in output.parent.iterdir()] == ["baseline.yaml"]


def run_from_card(card: Path, output: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ftlab.cli", "baseline", "from-card", str(card), "-o", str(output)]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_from_card_under_a_file_or_into_a_read_only_folder_exits_2_in_one_line(tmp_path: Path) -> None:
    card = Path(shutil.copy(SHIPPED_CARD, tmp_path / "README.md"))
    (tmp_path / "taken").write_text("a file")
    under_file = run_from_card(card, tmp_path / "taken" / "baseline.yaml")
    assert under_file.returncode == 2, under_file.stderr
    assert "is a file, not a folder" in under_file.stderr and "Traceback" not in under_file.stderr
    assert not under_file.stdout, "refused before the recipe is printed"
    with read_only_folder(tmp_path / "ro") as folder:
        read_only = run_from_card(card, folder / "sub" / "baseline.yaml")
        assert not list(folder.iterdir()), "nothing half-made"
    assert read_only.returncode == 2, read_only.stderr
    assert "the filesystem is read-only" in read_only.stderr and "Traceback" not in read_only.stderr
    with pytest.raises(UserError):  # the library refuses the same way
        check_output(tmp_path / "taken" / "b.yaml", card)
