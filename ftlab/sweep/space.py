"""The search space around the baseline: what each trial samples, and the baseline's own point in it."""

from __future__ import annotations

import math
from typing import Any

import optuna

from ftlab.config import CategoricalParam, FactorParam, FloatParam, IntParam, ParamSpec, SweepConfig, TrainConfig
from ftlab.errors import ConfigError
from ftlab.settings import split_effective_batch


def _suggest(trial: optuna.Trial, name: str, spec: ParamSpec, baseline: TrainConfig) -> Any:
    if isinstance(spec, FactorParam):
        center = float(getattr(baseline, name))
        low, high = spec.factor
        return trial.suggest_float(name, center * low, center * high, log=True)
    if isinstance(spec, FloatParam):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntParam):
        return trial.suggest_int(name, spec.low, spec.high, log=spec.log, step=spec.step)
    assert isinstance(spec, CategoricalParam)
    return trial.suggest_categorical(name, spec.choices)


def sample_overrides(trial: optuna.Trial, sweep: SweepConfig, baseline: TrainConfig) -> dict[str, Any]:
    """Sample every searched key and turn the result into TrainingArguments overrides."""
    params = {name: _suggest(trial, name, spec, baseline) for name, spec in sweep.search.items()}
    return params_to_overrides(params, baseline)


def params_to_overrides(params: dict[str, Any], baseline: TrainConfig) -> dict[str, Any]:
    """A trial's sampled params as TrainingArguments overrides (the effective batch split into its parts)."""
    overrides = dict(params)
    if "total_train_batch_size" in overrides:
        total = int(overrides.pop("total_train_batch_size"))
        micro, accumulation = split_effective_batch(total, baseline.per_device_train_batch_size)
        overrides["per_device_train_batch_size"] = micro
        overrides["gradient_accumulation_steps"] = accumulation
    return overrides


def baseline_point(sweep: SweepConfig, baseline: TrainConfig, source: str = "<sweep>") -> dict[str, Any]:
    """The baseline's values for every searched key: trial 0 is enqueued with exactly these.

    Raises:
        ConfigError: the baseline's value is not among a categorical key's choices (trial 0 could not be run).
    """
    point: dict[str, Any] = {}
    for name, spec in sweep.search.items():
        value = baseline.total_train_batch_size if name == "total_train_batch_size" else getattr(baseline, name)
        if isinstance(spec, CategoricalParam) and value not in spec.choices:
            raise ConfigError.single(
                f"the baseline's value for `{name}` is not among the choices, so the baseline cannot be trial 0",
                where=f"{source}:search.{name}.choices",
                value=spec.choices,
                fix=f"add {value!r} to the choices",
            )
        point[name] = value
    return point


def same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two sampled points are the same trial (floats compared with a relative tolerance)."""
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, float) and isinstance(other, float):
            if not math.isclose(value, other, rel_tol=1e-9):
                return False
        elif value != other:
            return False
    return True
