"""What a study holds, as plain data: every trial, the best, and the baseline trial to compare it with.

``ftlab status``, ``ftlab report`` and the end of ``ftlab sweep`` all read the study through this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ftlab.sweep.attrs import BASELINE_ATTR, FAIL_REASON_ATTR, PRUNE_REASON_ATTR, RUN_ID_ATTR


@dataclass
class TrialRow:
    number: int
    state: str
    baseline: bool
    params: dict[str, Any]
    values: list[float] | None
    eval_loss: float | None
    perplexity: float | None
    duration_s: float | None
    mlflow_run_id: str | None
    reason: str | None


@dataclass
class Comparison:
    """The best trial against the baseline trial on the first objective."""

    metric: str
    best_trial: int
    best_value: float
    baseline_trial: int | None
    baseline_value: float | None

    @property
    def absolute_gain(self) -> float | None:
        return None if self.baseline_value is None else self.baseline_value - self.best_value

    @property
    def relative_gain(self) -> float | None:
        if self.baseline_value is None or self.baseline_value == 0:
            return None
        return (self.baseline_value - self.best_value) / abs(self.baseline_value)

    def sentence(self) -> str:
        if self.baseline_value is None:
            best = f"best trial #{self.best_trial}: {self.metric} {self.best_value:.4f}"
            return f"{best} (the baseline trial has not completed)"
        if self.best_trial == self.baseline_trial:
            return f"the baseline (trial #{self.best_trial}) is still the best: {self.metric} {self.best_value:.4f}"
        relative = self.relative_gain or 0.0
        return (
            f"best trial #{self.best_trial}: {self.metric} {self.best_value:.4f} vs baseline #{self.baseline_trial} "
            f"{self.baseline_value:.4f} ({relative:+.1%} better)"
        )


def trial_row(trial: FrozenTrial) -> TrialRow:
    duration = trial.duration.total_seconds() if trial.duration else None
    reason = trial.user_attrs.get(FAIL_REASON_ATTR) or trial.user_attrs.get(PRUNE_REASON_ATTR)
    return TrialRow(
        number=trial.number,
        state=trial.state.name,
        baseline=bool(trial.user_attrs.get(BASELINE_ATTR)),
        params=dict(trial.params),
        values=list(trial.values) if trial.values else None,
        eval_loss=trial.user_attrs.get("eval_loss"),
        perplexity=trial.user_attrs.get("perplexity"),
        duration_s=duration,
        mlflow_run_id=trial.user_attrs.get(RUN_ID_ATTR),
        reason=reason,
    )


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The enqueued baseline trial, if it completed."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get(BASELINE_ATTR):
            return trial
    return None


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (several); empty when nothing completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def compare(study: optuna.Study, metric: str) -> Comparison | None:
    best = best_trials(study)
    if not best:
        return None
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1
    top = min(best, key=lambda trial: sign * trial.values[0])
    baseline = baseline_trial(study)
    return Comparison(
        metric=metric,
        best_trial=top.number,
        best_value=top.values[0],
        baseline_trial=baseline.number if baseline else None,
        baseline_value=baseline.values[0] if baseline else None,
    )


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def status_json(study: optuna.Study, metric: str) -> dict[str, Any]:
    """Everything ``ftlab status --json`` prints."""
    comparison = compare(study, metric)
    return {
        "study": study.study_name,
        "counts": state_counts(study),
        "trials": [asdict(trial_row(trial)) for trial in study.get_trials(deepcopy=False)],
        "best": None
        if comparison is None
        else {
            **asdict(comparison),
            "absolute_gain": comparison.absolute_gain,
            "relative_gain": comparison.relative_gain,
        },
    }


def format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"
