"""The search space around the baseline: what each trial samples, the baseline's own point in it, and proof that
every value it can produce trains."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna

from ftlab.config import CategoricalParam, FactorParam, FloatParam, IntParam, ParamSpec, SweepConfig, TrainConfig
from ftlab.errors import ConfigError, Problem
from ftlab.settings import resolve_train_config, split_effective_batch


def _suggest(trial: optuna.Trial, name: str, spec: ParamSpec, baseline: TrainConfig) -> Any:
    with warnings.catch_warnings():
        # The baseline trial is enqueued with the baseline's values; one outside the range makes Optuna warn about
        # its "fixed parameter" in every trial process. `ftlab validate` says so once, in ftlab's words.
        warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
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
        processes = baseline.nproc_per_node  # the effective batch counts every process of the trial
        if total % processes:
            raise ConfigError.single(
                f"an effective batch of {total} sequences cannot be shared by nproc_per_node={processes} processes",
                where="search.total_train_batch_size",
                value=total,
                fix=f"use multiples of {processes}",
            )
        micro, accumulation = split_effective_batch(total // processes, baseline.per_device_train_batch_size)
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
        value = getattr(baseline, name)  # total_train_batch_size too: the baseline's effective batch
        if isinstance(spec, CategoricalParam) and value not in spec.choices:
            raise ConfigError.single(
                f"the baseline's value for `{name}` is not among the choices, so the baseline cannot be trial 0",
                where=f"{source}:search.{name}.choices",
                value=spec.choices,
                fix=f"add {value!r} to the choices",
            )
        point[name] = value
    return point


def baseline_outside_ranges(sweep: SweepConfig, baseline: TrainConfig, source: str = "<sweep>") -> list[str]:
    """A warning for each searched key whose baseline value lies outside its own range: trial 0 still runs the
    baseline, but no other trial comes near it (a factor range always holds its baseline)."""
    found = []
    for name, spec in sweep.search.items():
        if not isinstance(spec, FloatParam | IntParam):
            continue  # no low-high range
        value = getattr(baseline, name)  # total_train_batch_size too: the baseline's effective batch
        if not spec.low <= value <= spec.high:
            found.append(
                f"{source}:search.{name}: the baseline's value {value:g} is outside the search range "
                f"[{spec.low:g}, {spec.high:g}]; trial 0 runs the baseline, but no other trial comes near it. "
                f"Widen the range to include {value:g} if the search should be around the baseline"
            )
    return found


def same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two sampled points are the same trial (floats compared with a relative tolerance)."""
    return a.keys() == b.keys() and all(
        math.isclose(value, b[key], rel_tol=1e-9)
        if isinstance(value, float) and isinstance(b[key], float)
        else value == b[key]
        for key, value in a.items()
    )


def _extremes(name: str, spec: ParamSpec, baseline: TrainConfig) -> list[tuple[str, Any]]:
    """(where in the spec, value) for the values that bound what ``spec`` can produce.

    TrainingArguments' constraints are bounds (``> 0``, ``< 1``), so a range is valid when both its ends are.
    """
    if isinstance(spec, FactorParam):
        center = getattr(baseline, name)
        return [("factor[0]", center * spec.factor[0]), ("factor[1]", center * spec.factor[1])]
    if isinstance(spec, FloatParam | IntParam):
        return [("low", spec.low), ("high", spec.high)]
    assert isinstance(spec, CategoricalParam)
    return [(f"choices[{index}]", choice) for index, choice in enumerate(spec.choices)]


def _spec_problem(name: str, spec: ParamSpec, baseline: TrainConfig, where: str) -> Problem | None:
    """What makes a spec wrong for its key whatever its values: a factor of a zero baseline, floats for a count."""
    field = TrainConfig.model_fields.get(name)
    counts = name == "total_train_batch_size" or (field is not None and field.annotation in (int, "int"))
    if isinstance(spec, FactorParam):
        center = getattr(baseline, name)
        if counts:
            return Problem("a factor range gives fractions; this setting is a whole number", where, spec.factor,
                           "use `{type: int, low: …, high: …}` or `choices: […]`")  # fmt: skip
        if not center > 0:
            return Problem(f"a factor range multiplies the baseline's value, which is {center}", where, spec.factor,
                           "use `{type: float, low: …, high: …}` instead")  # fmt: skip
    if isinstance(spec, FloatParam) and counts:
        return Problem("a float range gives fractions; this setting is a whole number", where,
                       fix="use `type: int`")  # fmt: skip
    return None


_NUMBER_TYPES = (int, float, int | None, float | None)


def _value_problem(name: str, value: Any, where: str) -> Problem | None:
    """What is wrong with one value whatever the other settings: a fractional batch, a number quoted as text."""
    if name == "total_train_batch_size" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        return Problem("an effective batch is a whole number of sequences, at least 1", where, value,
                       "use positive whole numbers")  # fmt: skip
    field = TrainConfig.model_fields.get(name)
    if isinstance(value, str) and field is not None and field.annotation in _NUMBER_TYPES:
        # The settings would turn "3e-4" into a number, but Optuna and MLflow would record (and compare) the text.
        return Problem(f"`{name}` is a number, but this choice is text", where, value,
                       "write it without quotes (1e-4 and 1.0e-4 both work)")  # fmt: skip
    return None


def reachable_configs(
    sweep: SweepConfig, baseline: TrainConfig, sweep_dir: Path, source: str = "<sweep>"
) -> tuple[list[TrainConfig], list[Problem]]:
    """The training settings at the bounds of every searched key (the baseline's first), and every bound that
    cannot be trained: a learning rate of 0, a warmup ratio of 1.5, an effective batch of 2.5 sequences.
    """
    configs, problems = [baseline], []
    for name, spec in sweep.search.items():
        if (problem := _spec_problem(name, spec, baseline, f"{source}:search.{name}")) is not None:
            problems.append(problem)
            continue
        for key, value in _extremes(name, spec, baseline):
            where = f"{source}:search.{name}.{key}"
            if (problem := _value_problem(name, value, where)) is not None:
                problems.append(problem)
                continue
            try:
                overrides = params_to_overrides({name: value}, baseline)
                configs.append(resolve_train_config(sweep, sweep_dir, overrides, source))
            except ConfigError as error:
                reasons = "; ".join(problem.message for problem in error.problems)
                problems.append(Problem(f"`{name}` = {value!r} cannot be trained: {reasons}", where, fix=(
                    "narrow the range (or change the choices) so that every value is a valid setting")))  # fmt: skip
    return configs, problems
