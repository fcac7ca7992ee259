"""The final figures of a training run, in one registry: name → how it is computed from what the loop measured.

The names are the ones users write in a sweep's ``objective:`` (``eval/loss``, ``cost/device_hours``…), the keys of
``TrainResult.metrics`` and of a trial record's ``metrics``, and the ``final/<name>`` MLflow metrics of an objective.
Adding a final figure is one entry in :data:`FINAL_METRICS`, plus a field of :class:`Measured` (filled in by the loop)
if it needs something the loop does not measure yet: the config, the trial record, the study and the objective values
follow from here.

Torch-free and importing nothing of ftlab, so that the sweep file's schema can check objective names against it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

_MAX_EXP_ARG = math.log(sys.float_info.max)  # ≈ 709.78; beyond it exp overflows


def perplexity(loss: float) -> float:
    """exp(loss), returning ``inf`` instead of raising ``OverflowError`` for very large losses."""
    if math.isnan(loss):
        return math.nan
    return math.exp(loss) if loss < _MAX_EXP_ARG else math.inf


@dataclass(frozen=True)
class Measured:
    """What a finished training run measured; every final figure is computed from it."""

    steps: int
    tokens_seen: int
    train_loss: float  # token-weighted mean over the whole run, steps run before a resume included
    eval_loss: float  # at the last evaluation
    best_eval_loss: float
    seconds: float
    peak_memory_mb: float
    devices: int = 1  # the trial's processes (one device each): device-hours count them all


FINAL_METRICS: dict[str, Callable[[Measured], float]] = {
    "eval/loss": lambda run: run.eval_loss,
    "eval/perplexity": lambda run: perplexity(run.eval_loss),
    "eval/best_loss": lambda run: run.best_eval_loss,
    "train/loss": lambda run: run.train_loss,
    "train/tokens_seen": lambda run: run.tokens_seen,
    "perf/train_seconds": lambda run: run.seconds,
    "perf/tokens_per_second": lambda run: run.tokens_seen / run.seconds,
    "perf/peak_memory_mb": lambda run: run.peak_memory_mb,
    "cost/device_hours": lambda run: run.seconds * run.devices / 3600,
}


def final_figures(measured: Measured) -> dict[str, float]:
    """Every final figure of a run, by name, in the registry's order."""
    return {name: compute(measured) for name, compute in FINAL_METRICS.items()}


# The figures of the final model on the holdout split (``data.holdout_fraction``), by the objective each stands in
# for. Not in FINAL_METRICS, on purpose: no sweep may choose on the holdout, only ``ftlab confirm`` measures it.
# eval/best_loss has none: the best of several evaluations is a choice made on the validation split.
HOLDOUT_FIGURES: dict[str, str] = {"eval/loss": "holdout/loss", "eval/perplexity": "holdout/perplexity"}


def holdout_figures(loss: float) -> dict[str, float]:
    """The holdout figures of a final model whose token-weighted mean loss on the holdout split is ``loss``."""
    return {"holdout/loss": loss, "holdout/perplexity": perplexity(loss)}


def on_holdout(metric: str) -> str:
    """The figure a confirmation on the holdout split compares for the objective ``metric``: its holdout counterpart,
    or ``metric`` itself where it has none (training and cost figures, eval/best_loss)."""
    return HOLDOUT_FIGURES.get(metric, metric)
