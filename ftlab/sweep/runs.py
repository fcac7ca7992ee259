"""How a sweep's runs read in the MLflow UI: their names, tags and descriptions, and the best run so far marked on the
parent run's row and on its own.

MLflow has no "pruned" state (a pruned trial's run ends KILLED, as Optuna's PRUNED maps best), so every child run
also says in words what its trial came to: the ``optuna.trial.state`` tag and the run's description.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from ftlab.config import SweepConfig
from ftlab.sweep.record import RUN_NAME_ATTR, RUN_TAGS_ATTR, TrialRecord
from ftlab.sweep.summary import compare, state_counts
from ftlab.tracking import DESCRIPTION_TAG, SOURCE_TAG, mark_best, param_value, redact_url

logger = logging.getLogger(__name__)


def parent_run_name(sweep: SweepConfig) -> str:
    # Not the bare sweep name: that is the experiment's name too, and the parent's row would read as the experiment.
    return f"{sweep.name}-sweep"


def parent_run_tags(sweep: SweepConfig, sweep_file: Path, storage_url: str) -> dict[str, str]:
    return {
        "ftlab.role": "sweep",
        "optuna.study_name": sweep.name,
        "optuna.storage": redact_url(storage_url),
        "ftlab.sweep_file": str(sweep_file),
        SOURCE_TAG: f"ftlab sweep {sweep_file}",
        DESCRIPTION_TAG: (
            f"The sweep {sweep.name}: an Optuna study ({sweep.sampler.name} sampler, {sweep.pruner.name} pruner) "
            f"around the baseline, one nested run per trial. Its metrics: the best trial so far against the baseline."
        ),
    }


def _settings(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={param_value(value)}" for key, value in params.items())


def trial_run_name(trial: optuna.Trial, baseline: bool) -> str:
    return trial.user_attrs.get(RUN_NAME_ATTR) or f"trial-{trial.number:03d}" + ("-baseline" if baseline else "")


def trial_run_tags(
    sweep: SweepConfig, sweep_file: Path, trial: optuna.Trial, baseline: bool, retry_of: int | None
) -> dict[str, str]:
    what = "the baseline" if baseline else "a trial"
    retry = f", retrying trial {retry_of}" if retry_of is not None else ""
    return {
        "optuna.trial.number": str(trial.number),
        "optuna.study_name": sweep.name,
        "optuna.trial.state": "RUNNING",
        "ftlab.baseline": str(baseline).lower(),
        **({"ftlab.retry_of_trial": str(retry_of)} if retry_of is not None else {}),
        SOURCE_TAG: f"ftlab sweep {sweep_file}",
        DESCRIPTION_TAG: f"Trial {trial.number}, {what} of sweep {sweep.name}{retry}: {_settings(trial.params)}",
        **trial.user_attrs.get(RUN_TAGS_ATTR, {}),
    }


def outcome_tags(record: TrialRecord, metric: str, description: str) -> dict[str, str]:
    """The trial's state and what it came to, added to its run's description."""
    if record.state == "COMPLETE" and record.values:
        outcome = f"COMPLETE: {metric} {record.values[0]:.4f}"
    else:
        outcome = f"{record.state}: {record.reason}"
    return {"optuna.trial.state": record.state, DESCRIPTION_TAG: f"{description}\n\n{outcome}"}


def show_best(study: optuna.Study, sweep: SweepConfig, tracking_uri: str, parent_run_id: str) -> None:
    """The best trial against the baseline as the parent run's metrics, and the best trial's run tagged
    ``ftlab.best``. A tracking server that cannot take it now costs this update only."""
    metric = sweep.objectives[0].metric
    comparison = compare(study, metric)
    if comparison is None or comparison.best.mlflow_run_id is None:
        return
    counts = state_counts(study)
    metrics = {
        f"best/{metric}": comparison.best_value,
        "trials/complete": counts["COMPLETE"],
        "trials/pruned": counts["PRUNED"],
        "trials/failed": counts["FAIL"],
    }
    if comparison.baseline_value is not None:
        metrics[f"baseline/{metric}"] = comparison.baseline_value
    if comparison.gain is not None and comparison.gain.relative is not None:
        metrics["best/gain_over_baseline"] = comparison.gain.relative
    tags = {"ftlab.best_trial": str(comparison.best.number), "ftlab.summary": comparison.sentence()}
    try:
        mark_best(tracking_uri, parent_run_id, comparison.best.mlflow_run_id, metrics, counts["COMPLETE"], tags)
    except Exception as error:
        logger.warning("could not mark the best run in MLflow: %s", error)
