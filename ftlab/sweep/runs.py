"""How a sweep's runs read in the MLflow UI: their names, tags and descriptions, and the best run so far marked on the
parent run's row and on its own.

MLflow has no "pruned" state (a pruned trial's run ends KILLED, as Optuna's PRUNED maps best), so every child run
also says in words what its trial came to: the ``optuna.trial.state`` tag and the run's description.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna

from ftlab.config import SweepConfig
from ftlab.errors import redact_url
from ftlab.hints import shell_command
from ftlab.record import RUN_NAME_ATTR, RUN_TAGS_ATTR, TrialRecord
from ftlab.sweep.budget import Budget
from ftlab.sweep.confirm import CONFIRMS_ATTR, SEED_ATTR
from ftlab.sweep.summary import compare, state_counts
from ftlab.tracking import DESCRIPTION_TAG, SOURCE_TAG, flatten, mark_best, param_value, run_page

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParentRun:
    """The run a study's trials nest under, as MLflow shows it: its name, its tags (description included) made from
    the study when the run starts, and ``show(study, tracking_uri, parent_run_id)``, called after each COMPLETE trial
    to put where the study stands on it. A sweep's shows its best trial; a confirmation's, its verdict."""

    name: str
    tags: Callable[[optuna.Study], dict[str, str]]
    show: Callable[[optuna.Study, str, str], None]


def sweep_parent_run(sweep: SweepConfig, sweep_file: Path, storage_url: str) -> ParentRun:
    """The sweep's own parent run: ``<sweep>-sweep``, tagged role sweep, showing the best trial so far."""
    # Not the bare sweep name: that is the experiment's name too, and the parent's row would read as the experiment.
    return ParentRun(
        name=f"{sweep.name}-sweep",
        tags=lambda study: parent_run_tags(sweep, sweep_file, storage_url),
        show=lambda study, uri, run_id: show_best(study, sweep, uri, run_id),
    )


def parent_run_tags(sweep: SweepConfig, sweep_file: Path, storage_url: str) -> dict[str, str]:
    return {
        "ftlab.role": "sweep",
        "optuna.study_name": sweep.name,
        "optuna.storage": redact_url(storage_url),
        "ftlab.sweep_file": str(sweep_file),
        SOURCE_TAG: shell_command("ftlab", "sweep", sweep_file),
        DESCRIPTION_TAG: (
            f"The sweep {sweep.name}: an Optuna study ({sweep.sampler.name} sampler, {sweep.pruner.name} pruner) "
            f"around the baseline, one nested run per trial. Its metrics: the best trial so far against the baseline "
            f"(best/gain_over_baseline_pct in percent, as the CLI prints it), logged at step = the number of COMPLETE "
            f"trials so far: in its charts the x axis (Step) counts complete trials, not training steps."
        ),
    }


def parent_run_params(sweep: SweepConfig, budget: Budget | None = None) -> dict[str, str]:
    """The sweep's settings as the parent run's params, with ``budget.n_trials`` the budget this sweep runs with
    (``--n-trials`` overrides the file's)."""
    params = flatten(sweep.model_dump(mode="json", exclude={"storage", "tracking"}))
    if budget is not None:
        params["budget.n_trials"] = "a fixed plan" if budget.fixed else str(budget.n_trials)
    return params


def trial_run_name(trial: optuna.Trial, baseline: bool) -> str:
    return trial.user_attrs.get(RUN_NAME_ATTR) or f"trial-{trial.number:03d}" + ("-baseline" if baseline else "")


def trial_label(trial: optuna.Trial | optuna.trial.FrozenTrial, baseline: bool) -> str:
    """How progress lines name a trial: its number, or for a confirmation run the sweep trial it trains again and its
    seed (the confirmation study numbers its runs 0, 1, … which clash with the sweep's own trial numbers)."""
    suffix = " (baseline)" if baseline else ""
    confirms = trial.user_attrs.get(CONFIRMS_ATTR)
    if confirms is not None:
        return f"sweep trial {confirms}{suffix}, seed {trial.user_attrs.get(SEED_ATTR)}"
    return f"trial {trial.number}{suffix}"


def trial_run_tags(
    sweep: SweepConfig, sweep_file: Path, trial: optuna.Trial, baseline: bool, retry_of: int | None
) -> dict[str, str]:
    what = "the baseline" if baseline else "a trial"
    retry = f", retrying trial {retry_of}" if retry_of is not None else ""
    settings = ", ".join(f"{key}={param_value(value)}" for key, value in trial.params.items())
    return {
        "optuna.trial.number": str(trial.number),
        "optuna.study_name": sweep.name,
        "optuna.trial.state": "RUNNING",
        "ftlab.baseline": str(baseline).lower(),
        **({"ftlab.retry_of_trial": str(retry_of)} if retry_of is not None else {}),
        SOURCE_TAG: shell_command("ftlab", "sweep", sweep_file),
        DESCRIPTION_TAG: f"Trial {trial.number}, {what} of sweep {sweep.name}{retry}: {settings}",
        **trial.user_attrs.get(RUN_TAGS_ATTR, {}),
    }


def note_trial(trial: optuna.Trial, baseline: bool, tracking_uri: str, run_id: str) -> None:
    """A note on the trial in optuna-dashboard: whether it is the baseline, and a link to its MLflow run (at the
    address ``ftlab ui`` serves a local store on). Skipped without optuna-dashboard installed, or when the storage
    cannot take it now: the trial and its run are what matter."""
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    what = "**Baseline**: the documented settings every trial is compared with." if baseline else "A searched trial."
    try:
        save_note(trial, f"{what}\n\nMLflow run: [{run_id}]({run_page(tracking_uri, run_id)})")
    except Exception as error:
        logger.warning("could not write trial %s's note for optuna-dashboard: %s", trial.number, error)


def outcome_tags(record: TrialRecord, metric: str, description: str) -> dict[str, str]:
    """The trial's state and what it came to, added to its run's description."""
    if record.state == "COMPLETE" and record.values:
        outcome = f"COMPLETE: {metric} {record.values[0]:.4f}"
    else:
        outcome = f"{record.outcome}: {record.detail}"
    tags = {"optuna.trial.state": record.state, DESCRIPTION_TAG: f"{description}\n\n{outcome}"}
    return tags | ({"ftlab.outcome": "diverged"} if record.diverged else {})


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
        metrics["best/gain_over_baseline_pct"] = 100 * comparison.gain.relative  # percent, as the CLI prints it
    tags = {"ftlab.best_trial": str(comparison.best.number), "ftlab.summary": comparison.sentence()}
    try:
        mark_best(tracking_uri, parent_run_id, comparison.best.mlflow_run_id, metrics, counts["COMPLETE"], tags)
    except Exception as error:
        logger.warning("could not mark the best run in MLflow: %s", error)
