"""Which folders ``ftlab best --export DIR [--force]`` may write or replace: only new, empty or earlier exports, and
never one that holds the study, the MLflow store, the sweep file or the current folder."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from ftlab.export.target import ExportRefusedError, check_export_target, is_ftlab_export, local_store_paths


def an_export(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "ftlab.json").write_text(json.dumps({"study": "s", "trial": 1, "weights_from": "local"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def protected_of(root: Path) -> dict[str, Path]:
    return {
        "the sweep file": root / "sweep.yaml",
        "the current folder": root,
        "the study storage optuna.db": root / "mlruns" / "optuna.db",
        "the MLflow store artifacts": root / "mlruns" / "artifacts",
    }


@pytest.mark.parametrize("target", [".", "mlruns", "mlruns/artifacts", "..", "sub/.."])
def test_a_folder_holding_the_results_or_the_current_folder_is_refused_even_forced(tmp_path: Path, target: str) -> None:
    (tmp_path / "mlruns" / "artifacts").mkdir(parents=True)
    (tmp_path / "mlruns" / "optuna.db").write_bytes(b"study")
    (tmp_path / "sub").mkdir()
    with contextlib.chdir(tmp_path), pytest.raises(ExportRefusedError, match="would delete it") as refused:
        check_export_target(Path(target), True, protected_of(tmp_path))
    assert "--export" in str(refused.value) and "Fix: choose a new folder" in str(refused.value)


def test_a_folder_holding_the_sweep_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "sweep.yaml").write_text("name: x\n")
    protected = {"the sweep file": tmp_path / "conf" / "sweep.yaml"}
    with pytest.raises(ExportRefusedError, match="the sweep file"):
        check_export_target(tmp_path / "conf", True, protected)


def test_a_symlink_to_the_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "mlruns")
    with pytest.raises(ExportRefusedError, match="would delete it"):
        check_export_target(tmp_path / "link", True, protected_of(tmp_path))


def test_a_user_folder_is_never_replaced_even_forced(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    for force in (False, True):
        with pytest.raises(ExportRefusedError, match="not an earlier ftlab export") as refused:
            check_export_target(folder, force, {})
        assert "--force" not in str(refused.value).partition("Fix:")[2]


def test_a_foreign_ftlab_json_or_a_folder_inside_does_not_make_an_export(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "ftlab.json").write_text('{"name": "someone else\'s"}')
    assert not is_ftlab_export(other)
    nested = an_export(tmp_path / "nested")
    (nested / "data").mkdir()
    assert not is_ftlab_export(nested)
    with pytest.raises(ExportRefusedError, match="not an earlier ftlab export"):
        check_export_target(nested, True, {})


def test_an_earlier_export_needs_force_and_then_may_be_replaced(tmp_path: Path) -> None:
    folder = an_export(tmp_path / "out")
    assert is_ftlab_export(folder)
    with pytest.raises(ExportRefusedError, match="holds an earlier export") as refused:
        check_export_target(folder, False, protected_of(tmp_path))
    assert "pass --force" in str(refused.value)
    check_export_target(folder, True, protected_of(tmp_path))  # no error


def test_new_and_empty_folders_are_fine_and_a_file_is_refused(tmp_path: Path) -> None:
    check_export_target(tmp_path / "new", False, protected_of(tmp_path))
    (tmp_path / "empty").mkdir()
    check_export_target(tmp_path / "empty", False, protected_of(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportRefusedError, match="is a file"):
        check_export_target(tmp_path / "file", True, {})


def test_local_store_paths_name_the_files_behind_each_kind_of_url(tmp_path: Path) -> None:
    assert local_store_paths(f"sqlite:///{tmp_path}/mlflow.db") == [tmp_path / "mlflow.db", tmp_path / "artifacts"]
    assert local_store_paths(f"journal:///{tmp_path}/study.log")[0] == tmp_path / "study.log"
    assert local_store_paths(f"file://{tmp_path}/mlruns") == [tmp_path / "mlruns"]
    assert local_store_paths("mlruns") == [Path("mlruns")]
    assert local_store_paths("postgresql://u@h/db") == []
    assert local_store_paths("http://127.0.0.1:5000") == []
