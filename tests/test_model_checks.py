"""Models that are found but cannot train are refused before a trial starts: no tokenizer (it trained on nothing and
exited 0), a block longer than the model's positions (IndexError), no weights, a broken config.json (tracebacks).
The broken folders are copies of the demo model with a file removed or spoiled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftlab.config import parse_sweep
from ftlab.demo import ensure_demo_assets
from ftlab.sweep import preflight
from tests.helpers import SMALL_SWEEP, run_ftlab, write_sweep


@pytest.fixture(scope="module")
def demo_model() -> Path:
    return ensure_demo_assets().model_dir


def broken_copy(
    demo_model: Path, folder: Path, remove: tuple[str, ...] = (), write: dict[str, str] | None = None
) -> Path:
    model = folder / "model"
    shutil.copytree(demo_model, model)
    for name in remove:
        (model / name).unlink()
    for name, text in (write or {}).items():
        (model / name).write_text(text)
    return model


def problems_for(model: Path, **data: object) -> list[str]:
    sweep = parse_sweep(
        {**SMALL_SWEEP, "model": {"name_or_path": str(model)}, "data": {**SMALL_SWEEP["data"], **data}}, "sweep.yaml"
    )
    return [str(problem) for problem in preflight.model_problems(sweep, "sweep.yaml")]


def test_the_demo_model_passes(demo_model: Path) -> None:
    assert problems_for(demo_model) == []


def test_a_model_folder_without_tokenizer_files(demo_model: Path, tmp_path: Path) -> None:
    model = broken_copy(demo_model, tmp_path, remove=("tokenizer.json", "tokenizer_config.json"))
    (problem,) = problems_for(model)
    assert problem.startswith("sweep.yaml:model.name_or_path: the tokenizer")
    assert "token(s), no vocabulary" in problem or "cannot be loaded" in problem
    assert str(model) in problem and "Fix: copy the tokenizer files" in problem


def test_a_broken_tokenizer_file(demo_model: Path, tmp_path: Path) -> None:
    model = broken_copy(demo_model, tmp_path, write={"tokenizer.json": '{"version": '})
    (problem,) = problems_for(model)
    assert "sweep.yaml:model.name_or_path: the tokenizer cannot be loaded" in problem


def test_a_block_size_beyond_the_models_positions(demo_model: Path) -> None:
    positions = json.loads((demo_model / "config.json").read_text())["n_positions"]
    (problem,) = problems_for(demo_model, block_size=positions + 1)
    assert f"sweep.yaml:data.block_size: longer than the model's {positions} positions" in problem
    assert f"got {positions + 1}" in problem and f"set data.block_size to {positions} or less" in problem
    assert problems_for(demo_model, block_size=positions) == []


def test_a_model_folder_without_weights(demo_model: Path, tmp_path: Path) -> None:
    model = broken_copy(demo_model, tmp_path, remove=("model.safetensors",))
    (problem,) = problems_for(model)
    assert "sweep.yaml:model.name_or_path: the model folder has no weights" in problem and str(model) in problem


@pytest.mark.parametrize("config", ['{"model_type": "gpt2", ', '{"model_type": "no-such-architecture"}', "[]"])
def test_a_corrupt_config_json(demo_model: Path, tmp_path: Path, config: str) -> None:
    model = broken_copy(demo_model, tmp_path, write={"config.json": config})
    (problem,) = problems_for(model)
    assert problem.startswith("sweep.yaml:model.name_or_path: the model's config.json cannot be read")
    assert "Fix: restore the folder's config.json" in problem


@pytest.mark.integration
def test_validate_and_train_refuse_a_model_without_tokenizer_with_exit_2(demo_model: Path, tmp_path: Path) -> None:
    model = broken_copy(demo_model, tmp_path, remove=("tokenizer.json", "tokenizer_config.json"))
    write_sweep(tmp_path, model={"name_or_path": str(model)})
    for command in ("validate", "train"):
        result = run_ftlab(command, "sweep.yaml", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "model.name_or_path: the tokenizer" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / ".ftlab").exists()


def test_training_data_the_tokenizer_cannot_read_is_refused() -> None:
    from ftlab.model_checks import data_token_problems

    sweep = parse_sweep({**SMALL_SWEEP, "model": {"name_or_path": "m", "tokenizer": "t"}}, "sweep.yaml")
    (problem,) = data_token_problems(sweep, [0] * 640, "sweep.yaml")
    assert "sweep.yaml:model.tokenizer: the training data tokenizes to only 1 distinct token(s)" in str(problem)
    assert data_token_problems(sweep, [5, 9, 2, 7, 5], "sweep.yaml") == []
