"""What YAML does behind a user's back: ``1e-4`` read as text, a key given twice silently dropped; and heartbeat
settings that would fail live trials. Each is refused or read as meant when the sweep file is loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftlab.config import MIN_HEARTBEATS_PER_GRACE, FactorParam, TrainConfig, load_sweep
from ftlab.errors import ConfigError
from ftlab.settings import parse_set_options, resolve_train_config
from ftlab.yamlfile import load_yaml

HEAD = "name: t\nmodel: {name_or_path: gpt2}\ndata: {dataset: wikitext}\n"


def sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(HEAD + text)
    return path


def test_exponent_numbers_are_floats_everywhere_in_a_sweep_file(tmp_path: Path) -> None:
    text = (
        "baseline: {learning_rate: 1e-4}\n"
        "train: {adam_epsilon: 1E-8, weight_decay: 1e-2}\n"
        "search:\n"
        "  learning_rate: {choices: [1e-4, 3e-4]}\n"
        "  warmup_ratio: {type: float, low: 0e0, high: 2e-1}\n"
        "  adam_beta2: {factor: [5e-1, 1e0]}\n"
    )
    sweep = load_sweep(sweep_file(tmp_path, text))
    assert sweep.search["learning_rate"].choices == [1e-4, 3e-4]  # type: ignore[union-attr]
    assert all(isinstance(choice, float) for choice in sweep.search["learning_rate"].choices)  # type: ignore[union-attr]
    assert isinstance(sweep.search["adam_beta2"], FactorParam)
    assert sweep.baseline == {"learning_rate": 1e-4} and sweep.train["adam_epsilon"] == 1e-8
    assert resolve_train_config(sweep, tmp_path).learning_rate == 1e-4


def test_quoted_text_stays_text_and_set_reads_values_as_the_file_does() -> None:
    assert load_yaml("a: '1e-4'\nb: 1e-4\nc: 10\nd: 12:30\n", "f") == {"a": "1e-4", "b": 1e-4, "c": 10, "d": 750}
    assert parse_set_options(["learning_rate=3e-4", "seed=7"]) == {"learning_rate": 3e-4, "seed": 7}
    with pytest.raises(ConfigError, match="--set learning_rate: the value is not a YAML scalar"):
        parse_set_options(["learning_rate=[1,"])


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("budget: {n_trials: 3}\nbudget: {n_trials: 5}\n", "budget", (4, 5)),
        ("train:\n  learning_rate: 1e-4\n  seed: 1\n  learning_rate: 2e-4\n", "learning_rate", (5, 7)),
        ("search:\n  learning_rate:\n    choices: [1]\n    choices: [2]\n", "choices", (6, 7)),
    ],
    ids=["top", "nested", "deeper"],
)
def test_a_key_given_twice_is_an_error_naming_the_file_key_and_lines(
    tmp_path: Path, text: str, key: str, lines: tuple[int, int]
) -> None:
    path = sweep_file(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and f"`{key}` is given twice" in message
    assert f"line {lines[0]} and on line {lines[1]}" in message


def test_yaml_merge_keys_may_still_be_overridden() -> None:
    data = load_yaml("d: &d {seed: 1, bf16: true}\ntrain:\n  <<: *d\n  seed: 2\n", "f")
    assert data["train"] == {"seed": 2, "bf16": True}


def test_a_grace_period_of_fewer_than_three_heartbeats_is_refused(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "storage: {heartbeat_interval: 10, grace_period: 10}\n")
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    message = str(caught.value)
    assert f"{path}:storage.grace_period" in message and f"at least {MIN_HEARTBEATS_PER_GRACE} heartbeat" in message
    assert "set `grace_period` to 30 or more" in message
    ok = sweep_file(tmp_path, "storage: {heartbeat_interval: 10, grace_period: 30}\n")
    assert load_sweep(ok).storage.grace_period == 30


def test_validate_refuses_a_duplicate_key_without_a_traceback(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "train: {seed: 1}\ntrain: {seed: 2}\n")
    result = subprocess.run(
        [sys.executable, "-m", "ftlab.cli", "validate", "--schema-only", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "`train` is given twice" in result.stderr and "line 4" in result.stderr and "line 5" in result.stderr


def test_train_config_still_reads_exponent_strings_given_from_python() -> None:
    assert TrainConfig.model_validate({"learning_rate": "1e-4"}).learning_rate == 1e-4


def test_a_number_quoted_as_text_in_choices_is_refused_by_the_search_check(tmp_path: Path) -> None:
    from ftlab.sweep import preflight

    path = sweep_file(
        tmp_path, "baseline: {learning_rate: 1e-4}\nsearch:\n  learning_rate: {choices: [1e-4, '3e-4']}\n"
    )
    sweep = load_sweep(path)
    problems = [str(problem) for problem in preflight.settings_problems(sweep, tmp_path, str(path))[1]]
    assert problems == [
        f"{path}:search.learning_rate.choices[1]: `learning_rate` is a number, but this choice is text; got '3e-4'. "
        "Fix: write it without quotes (1e-4 and 1.0e-4 both work)"
    ]
    unquoted = sweep_file(
        tmp_path, "baseline: {learning_rate: 1e-4}\nsearch:\n  learning_rate: {choices: [1e-4, 3e-4]}\n"
    )
    assert preflight.settings_problems(load_sweep(unquoted), tmp_path, str(unquoted))[1] == []
