"""The sweep file schema and its error messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftlab.config import CategoricalParam, FactorParam, TrainConfig, load_sweep, parse_sweep
from ftlab.errors import ConfigError
from ftlab.settings import parse_set_options, resolve_train_config

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"name": "t", "model": {"name_or_path": "gpt2"}, "data": {"dataset": "wikitext"}}


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_sweep(data, "sweep.yaml")
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_sweep_file_loads(path: Path) -> None:
    sweep = load_sweep(path)
    assert path.read_text().startswith("#"), "each sweep file starts with a comment giving the command"
    assert f"sweeps/{path.name}" in path.read_text().split("\n\n")[0]
    resolve_train_config(sweep, path.parent, source=str(path))


def test_defaults_live_in_the_schema() -> None:
    sweep = parse_sweep(MINIMAL)
    assert sweep.sampler.name == "tpe" and sweep.pruner.name == "median"
    assert sweep.objectives[0].metric == "eval/loss" and sweep.objectives[0].direction == "minimize"
    assert TrainConfig().learning_rate == 5e-5  # transformers' TrainingArguments default


def test_unknown_keys_are_rejected_everywhere_and_reported_together() -> None:
    data = {
        **MINIMAL,
        "modle": {},
        "data": {"dataset": "wikitext", "blok_size": 64},
        "train": {"learning_rat": 1e-4},
        "sampler": {"name": "bayes"},
    }
    problems = problems_of(data)
    text = "\n".join(problems)
    assert "sweep.yaml:modle" in text and "unknown key" in text
    assert "sweep.yaml:data.blok_size" in text
    assert "sweep.yaml:sampler.name" in text and "'bayes'" in text
    assert len(problems) == 3  # the train block is checked after the schema passes


def test_misspelled_training_key_gets_a_suggestion() -> None:
    text = "\n".join(problems_of({**MINIMAL, "train": {"learning_rat": 1e-4}}))
    assert "sweep.yaml:train.learning_rat" in text and "did you mean `learning_rate`" in text


def test_wrong_value_type_names_key_and_value() -> None:
    text = "\n".join(problems_of({**MINIMAL, "data": {"dataset": "x", "block_size": "big"}}))
    assert "sweep.yaml:data.block_size" in text and "'big'" in text


def test_data_needs_exactly_one_source() -> None:
    text = "\n".join(problems_of({**MINIMAL, "data": {"dataset": "x", "train_files": ["a.txt"]}}))
    assert "exactly one of `data.dataset`" in text


def test_search_types_are_inferred() -> None:
    sweep = parse_sweep({**MINIMAL, "search": {"learning_rate": {"factor": [0.5, 10]}, "optim": {"choices": ["sgd"]}}})
    assert isinstance(sweep.search["learning_rate"], FactorParam)
    assert isinstance(sweep.search["optim"], CategoricalParam)


def test_cross_block_conflicts() -> None:
    data = {
        **MINIMAL,
        "train": {"learning_rate": 1e-4},
        "search": {
            "learning_rate": {"factor": [0.5, 2]},
            "total_train_batch_size": {"choices": [8]},
            "gradient_accumulation_steps": {"choices": [1]},
        },
        "objective": [{"metric": "eval/loss"}, {"metric": "cost/device_hours"}],
    }
    text = "\n".join(problems_of(data))
    assert "both fixed in `train` and searched" in text
    assert "effective batch" in text
    assert "cannot prune multi-objective" in text


def test_warmup_ratio_and_steps_together_are_refused_with_the_key() -> None:
    sweep = parse_sweep({**MINIMAL, "baseline": {"warmup_ratio": 0.1}, "train": {"warmup_steps": 5}})
    with pytest.raises(ConfigError, match="warmup_ratio` and `warmup_steps"):
        resolve_train_config(sweep, Path("."), source="sweep.yaml")


def test_precedence_baseline_then_train_then_overrides() -> None:
    sweep = parse_sweep({**MINIMAL, "baseline": {"learning_rate": 1e-5, "seed": 1}, "train": {"seed": 2}})
    config = resolve_train_config(sweep, Path("."), {"learning_rate": 3e-4})
    assert (config.learning_rate, config.seed) == (3e-4, 2)


def test_builtin_baseline_resolves_to_the_documented_recipe() -> None:
    sweep = parse_sweep({**MINIMAL, "baseline": "gpt2-xl_ft_logits_25k"})
    config = resolve_train_config(sweep, Path("."))
    assert config.learning_rate == 5e-7
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (4, 32)
    assert config.total_train_batch_size == 128


def test_set_options_parse_yaml_scalars_and_reject_unknown_keys() -> None:
    assert parse_set_options(["learning_rate=1e-4", "train.bf16=true"]) == {"learning_rate": 1e-4, "bf16": True}
    with pytest.raises(ConfigError, match="learning_rat"):
        parse_set_options(["learning_rat=1"])


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftlab.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_validate_reports_every_problem_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "train": {"learning_rate": -1, "sed": 3}, "budget": {"n_trials": 0}}))
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "budget.n_trials" in result.stderr and "got 0" in result.stderr


def test_validate_accepts_the_shipped_files() -> None:
    # The GPU sweeps load their models and data from the hub, which this machine cannot reach: their files and
    # search spaces are checked; the demo is checked whole (model, data, stores).
    result = run_cli("validate", "--schema-only", *sorted(str(path) for path in (ROOT / "sweeps").glob("*.yaml")))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok") == len(list((ROOT / "sweeps").glob("*.yaml")))
    demo = run_cli("validate", "sweeps/demo.yaml")
    assert demo.returncode == 0, demo.stderr


def test_missing_and_non_yaml_files_are_user_errors(tmp_path: Path) -> None:
    assert run_cli("validate", str(tmp_path / "nope.yaml")).returncode == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    result = run_cli("validate", str(broken))
    assert result.returncode == 2 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_objective_metric_names_the_close_one() -> None:
    expected = r"`eval/los` is not a final metric ftlab records; did you mean `eval/loss`\?"
    with pytest.raises(ConfigError, match=expected):
        parse_sweep({**MINIMAL, "objective": "eval/los"}, "sweep.yaml")


def test_the_holdout_is_off_by_default_a_share_below_one_and_never_an_objective() -> None:
    assert parse_sweep(MINIMAL).data.holdout_fraction == 0
    assert parse_sweep({**MINIMAL, "data": {"dataset": "x", "holdout_fraction": 0.1}}).data.holdout_fraction == 0.1
    for bad in (1, 1.5, -0.1):
        text = "\n".join(problems_of({**MINIMAL, "data": {"dataset": "x", "holdout_fraction": bad}}))
        assert "sweep.yaml:data.holdout_fraction" in text, bad
    # No sweep may choose on the holdout: its figures are not final metrics a sweep file can name.
    assert "`holdout/loss` is not a final metric" in "\n".join(problems_of({**MINIMAL, "objective": "holdout/loss"}))
