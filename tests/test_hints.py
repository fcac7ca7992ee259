"""Commands printed for the user to copy run as printed, also with spaces or quotes in their paths."""

from __future__ import annotations

import shlex
from pathlib import Path

import optuna
import pytest

from ftlab.config import load_sweep
from ftlab.errors import UserError
from ftlab.export.best import select_best, ui_command
from ftlab.hints import shell_command
from tests.support.sweeps import write_sweep

AWKWARD = "my sweeps/it's a sweep.yaml"


def test_shell_command_reads_back_as_the_same_words() -> None:
    words = ["ftlab", "status", AWKWARD, "--storage", "sqlite:////tmp/a b/optuna.db"]
    assert shlex.split(shell_command(*words)) == words
    assert shell_command("ftlab", "status", "plain.yaml") == "ftlab status plain.yaml", "plain paths stay plain"


def test_hints_in_messages_quote_paths(tmp_path: Path) -> None:
    folder = tmp_path / "my sweeps"
    folder.mkdir()
    sweep = load_sweep(write_sweep(folder))
    study = optuna.create_study(study_name="small")
    source = str(folder / "sweep file.yaml")
    with pytest.raises(UserError) as refused:
        select_best(study, sweep, source)
    hinted = str(refused.value).split("run `")[1].split("`")[0]
    assert shlex.split(hinted) == ["ftlab", "sweep", source]
    uri = f"sqlite:///{tmp_path}/my store/mlflow.db"
    assert shlex.split(ui_command(uri)) == ["mlflow", "ui", "--backend-store-uri", uri]
