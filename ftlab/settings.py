"""Resolve one trial's training settings: TrainingArguments defaults < baseline < the sweep's fixed ``train`` block <
overrides (sampled values or ``--set``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ftlab.config import TRAIN_KEYS, SweepConfig, TrainConfig
from ftlab.errors import ConfigError, Problem
from ftlab.yamlfile import SweepLoader


def parse_set_options(assignments: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are read as YAML scalars so ``1e-4`` is a float and ``true`` a bool."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip().removeprefix("train.")
        if not sep or not key:
            raise ConfigError.single(
                "expected key=value", where="--set", value=assignment, fix="write e.g. --set learning_rate=1e-4"
            )
        if key not in TRAIN_KEYS:
            raise ConfigError.single(
                f"`{key}` is not a TrainingArguments setting ftlab knows",
                where="--set",
                value=assignment,
                fix=f"use one of: {', '.join(sorted(TRAIN_KEYS))}",
            )
        try:
            # A YAML scalar as a sweep file reads it (``1e-4`` a float, see :mod:`ftlab.yamlfile`).
            value = yaml.load(raw, Loader=SweepLoader)
        except yaml.YAMLError as error:
            raise ConfigError.single(
                f"the value is not a YAML scalar ({str(error).splitlines()[0]})",
                where=f"--set {key}",
                value=raw,
                fix="quote it, e.g. --set 'key=\"text\"', or write a number or true/false",
            ) from None
        if isinstance(value, str):  # other text that Python reads as a float (``inf``) is one too
            with contextlib.suppress(ValueError):
                value = float(value)
        overrides[key] = value
    return overrides


def resolve_train_config(
    sweep: SweepConfig, sweep_dir: Path, overrides: dict[str, Any] | None = None, source: str = "<sweep>"
) -> TrainConfig:
    """Merge baseline, fixed settings and overrides into one validated :class:`TrainConfig`.

    Raises:
        ConfigError: the merged settings break the schema (e.g. warmup_ratio and warmup_steps both set).
    """
    baseline = sweep.baseline
    if isinstance(baseline, str):  # a built-in name or a Trainer model card; else inline settings or none
        from ftlab.baselines import resolve_baseline

        baseline = resolve_baseline(baseline, relative_to=sweep_dir).training_settings()
    merged = {**(baseline or {}), **sweep.train, **(overrides or {})}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as error:
        problems = [
            Problem(
                item["msg"].removeprefix("Value error, "),
                f"{source}:train.{'.'.join(str(part) for part in item['loc'])}" if item["loc"] else f"{source}:train",
                value=item.get("input"),
                fix="check the baseline, the `train` block and any --set or sampled value for this key",
            )
            for item in error.errors()
        ]
        raise ConfigError(problems) from None


def split_effective_batch(total: int, max_micro_batch: int) -> tuple[int, int]:
    """(per_device_train_batch_size, gradient_accumulation_steps) for an effective batch of ``total`` sequences.

    The micro-batch is the largest divisor of ``total`` that is at most ``max_micro_batch`` (the baseline's, which
    is what fits in memory), so micro-batch × accumulation is exactly ``total``.
    """
    micro = max(d for d in range(1, min(total, max_micro_batch) + 1) if total % d == 0)
    return micro, total // micro
