"""What a study holds, as plain data: every trial's record, the best trial, the baseline trial and the gain between.

``ftlab status``, the report, the end of ``ftlab sweep`` and ``ftlab best`` all read the study through this module:
there is one way to pick the best trial and one way to compute a gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ftlab.record import BASELINE_ATTR, TrialRecord


@dataclass(frozen=True)
class Gain:
    """An improvement over the baseline on one objective; positive is better, whatever the direction."""

    absolute: float
    relative: float | None  # None when the baseline's value is 0


def gain(value: float, baseline: float, direction: StudyDirection) -> Gain:
    """How much better ``value`` is than ``baseline`` for an objective optimised in ``direction``."""
    absolute = baseline - value if direction == StudyDirection.MINIMIZE else value - baseline
    return Gain(absolute, absolute / abs(baseline) if baseline else None)


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The enqueued baseline trial, if it completed."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return next((trial for trial in completed if trial.user_attrs.get(BASELINE_ATTR)), None)


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (several); empty when nothing completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE trial; with several objectives, the Pareto-front trial best on the first objective."""
    return _best_of(pareto_front(study), study.directions[0])


def _best_of(front: list[FrozenTrial], direction: StudyDirection) -> FrozenTrial | None:
    sign = 1 if direction == StudyDirection.MINIMIZE else -1
    return min(front, key=lambda trial: sign * trial.values[0], default=None)


@dataclass
class Comparison:
    """The best trial against the baseline trial on the first objective, with the Pareto front: what ``ftlab status``,
    the end of ``ftlab sweep``, ``ftlab best``, the report and the export show (one shape, also as JSON)."""

    metric: str
    best: TrialRecord
    baseline: TrialRecord | None
    gain: Gain | None  # None until the baseline trial has completed
    pareto_front: list[int] = field(default_factory=list)  # trial numbers; the best alone with one objective

    @property
    def best_value(self) -> float:
        assert self.best.values is not None
        return self.best.values[0]

    @property
    def baseline_value(self) -> float | None:
        return self.baseline.values[0] if self.baseline is not None and self.baseline.values else None

    def sentence(self) -> str:
        best = f"best trial #{self.best.number}: {self.metric} {self.best_value:.4f}"
        if self.baseline is None or self.gain is None:
            return f"{best} (the baseline trial has not completed)"
        if self.best.number == self.baseline.number:
            return f"the baseline (trial #{self.best.number}) is still the best: {self.metric} {self.best_value:.4f}"
        relative = f" ({self.gain.relative:+.1%} better)" if self.gain.relative is not None else ""
        return f"{best} vs baseline #{self.baseline.number} {self.baseline_value:.4f}{relative}"

    def as_json(self) -> dict[str, Any]:
        """The best trial's figures, the baseline's and the gain; the flat ``best_value``… keys sum it up."""
        absolute, relative = (self.gain.absolute, self.gain.relative) if self.gain else (None, None)
        return {
            "metric": self.metric,
            "trial": self.best.number,
            **_figures(self.best),
            "train_loss": self.best.train_loss,
            "tokens_seen": self.best.tokens_seen,
            "gain": {"absolute": absolute, "relative": relative},
            "baseline": None if self.baseline is None else {"trial": self.baseline.number, **_figures(self.baseline)},
            "pareto_front": self.pareto_front,
            "best_trial": self.best.number,
            "best_value": self.best_value,
            "baseline_trial": self.baseline.number if self.baseline else None,
            "baseline_value": self.baseline_value,
            "absolute_gain": absolute,
            "relative_gain": relative,
        }


def _figures(record: TrialRecord) -> dict[str, Any]:
    return {
        "params": record.params,
        "values": record.values,
        "eval_loss": record.eval_loss,
        "perplexity": record.perplexity,
        "metrics": record.metrics,
        "mlflow_run_id": record.mlflow_run_id,
    }


def compare(study: optuna.Study, metric: str) -> Comparison | None:
    """The best trial against the baseline trial; None when no trial has completed."""
    front = pareto_front(study)
    best = _best_of(front, study.directions[0])
    if best is None:
        return None
    baseline = baseline_trial(study)
    found = None if baseline is None else gain(best.values[0], baseline.values[0], study.directions[0])
    return Comparison(
        metric,
        TrialRecord.from_trial(best),
        TrialRecord.from_trial(baseline) if baseline else None,
        found,
        [trial.number for trial in front],
    )


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by Optuna state, and ``DIVERGED``: how many of the FAIL ones diverged (their loss became NaN)."""
    counts = {state.name: 0 for state in TrialState} | {"DIVERGED": 0}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
        counts["DIVERGED"] += trial.state == TrialState.FAIL and TrialRecord.from_trial(trial).diverged
    return counts


def status_json(study: optuna.Study, metric: str) -> dict[str, Any]:
    """Everything ``ftlab status --json`` prints."""
    comparison = compare(study, metric)
    return {
        "study": study.study_name,
        "counts": state_counts(study),
        "trials": [TrialRecord.from_trial(trial).as_json() for trial in study.get_trials(deepcopy=False)],
        "best": None if comparison is None else comparison.as_json(),
    }


def format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"
