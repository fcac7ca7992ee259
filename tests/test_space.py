"""The search space around the baseline: what trials sample, the baseline's own point, and the effective batch split."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from ftlab.config import parse_sweep
from ftlab.errors import ConfigError
from ftlab.settings import resolve_train_config
from ftlab.sweep.space import baseline_point, params_to_overrides, same_point, sample_overrides
from tests.helpers import SMALL_SWEEP


def sweep_with(**search: object):
    return parse_sweep({**SMALL_SWEEP, "search": search})


def test_a_factor_range_is_a_log_range_around_the_baseline_value() -> None:
    sweep = sweep_with(learning_rate={"factor": [0.5, 4]})
    baseline = resolve_train_config(sweep, Path())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = []
    for _ in range(30):
        trial = study.ask()
        values.append(sample_overrides(trial, sweep, baseline)["learning_rate"])
        study.tell(trial, 0.0)
    assert all(0.5e-3 <= value <= 4e-3 for value in values)
    distribution = study.trials[0].distributions["learning_rate"]
    assert distribution.log and math.isclose(distribution.low, 0.5e-3) and math.isclose(distribution.high, 4e-3)


def test_the_effective_batch_is_split_into_the_baseline_micro_batch_and_accumulation() -> None:
    sweep = sweep_with(total_train_batch_size={"choices": [8, 16, 6]})
    baseline = resolve_train_config(sweep, Path())
    assert baseline.per_device_train_batch_size == 4
    assert params_to_overrides({"total_train_batch_size": 16}, baseline) == {
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4,
    }
    # 6 is not a multiple of 4: the largest micro-batch up to 4 that divides it.
    assert params_to_overrides({"total_train_batch_size": 6}, baseline) == {
        "per_device_train_batch_size": 3,
        "gradient_accumulation_steps": 2,
    }
    assert params_to_overrides({"learning_rate": 1e-4}, baseline) == {"learning_rate": 1e-4}


def test_the_baseline_point_holds_the_baseline_values_of_every_searched_key() -> None:
    sweep = sweep_with(
        learning_rate={"factor": [0.5, 4]},
        total_train_batch_size={"choices": [8, 16]},
        warmup_ratio={"type": "float", "low": 0.0, "high": 0.2},
    )
    baseline = resolve_train_config(sweep, Path())
    assert baseline_point(sweep, baseline) == {"learning_rate": 1e-3, "total_train_batch_size": 8, "warmup_ratio": 0.1}


def test_a_baseline_value_outside_the_choices_is_a_config_error_naming_the_key() -> None:
    sweep = sweep_with(total_train_batch_size={"choices": [16, 32]})
    baseline = resolve_train_config(sweep, Path())
    with pytest.raises(ConfigError, match=r"search\.total_train_batch_size\.choices.*add 8"):
        baseline_point(sweep, baseline, "sweep.yaml")


def test_same_point_compares_floats_with_a_tolerance() -> None:
    assert same_point({"lr": 1e-3, "batch": 8}, {"lr": 1e-3 * (1 + 1e-12), "batch": 8})
    assert not same_point({"lr": 1e-3, "batch": 8}, {"lr": 2e-3, "batch": 8})
    assert not same_point({"lr": 1e-3}, {"lr": 1e-3, "batch": 8})
