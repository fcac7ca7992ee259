"""The winner of a sweep: the best trial (or the Pareto front) and how it compares with the baseline trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from ftlab.config import SweepConfig
from ftlab.errors import UserError
from ftlab.sweep.attrs import RUN_ID_ATTR
from ftlab.sweep.summary import baseline_trial, best_trials
from ftlab.tracking import redact_url


@dataclass
class BestTrial:
    """The chosen trial with its figures and the baseline trial's, ready to print or to write into a card."""

    trial: FrozenTrial
    baseline: FrozenTrial | None
    pareto_front: list[FrozenTrial]
    metric: str
    maximize: bool

    @property
    def value(self) -> float:
        return self.trial.values[0]

    def gain(self) -> tuple[float | None, float | None]:
        """(absolute, relative) improvement over the baseline on the first objective; positive is better."""
        if self.baseline is None:
            return None, None
        sign = -1.0 if self.maximize else 1.0
        absolute = sign * (self.baseline.values[0] - self.value)
        return absolute, absolute / abs(self.baseline.values[0]) if self.baseline.values[0] else None

    def as_json(self, tracking_uri: str) -> dict[str, Any]:
        absolute, relative = self.gain()
        return {
            "trial": self.trial.number,
            "params": dict(self.trial.params),
            "values": list(self.trial.values),
            "metric": self.metric,
            "eval_loss": self.trial.user_attrs.get("eval_loss"),
            "perplexity": self.trial.user_attrs.get("perplexity"),
            "train_loss": self.trial.user_attrs.get("train_loss"),
            "tokens_seen": self.trial.user_attrs.get("tokens_seen"),
            "mlflow_run_id": self.trial.user_attrs.get(RUN_ID_ATTR),
            "gain": {"absolute": absolute, "relative": relative},
            "baseline": None if self.baseline is None else _figures(self.baseline),
            "pareto_front": [trial.number for trial in self.pareto_front],
            "ui": ui_command(tracking_uri),
        }


def _figures(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "params": dict(trial.params),
        "values": list(trial.values),
        "eval_loss": trial.user_attrs.get("eval_loss"),
        "perplexity": trial.user_attrs.get("perplexity"),
        "mlflow_run_id": trial.user_attrs.get(RUN_ID_ATTR),
    }


def ui_command(tracking_uri: str) -> str:
    """The command that opens this sweep's runs in the MLflow UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact_url(tracking_uri)}"
    return f"mlflow ui --backend-store-uri {redact_url(tracking_uri)}"


def select_best(study: optuna.Study, sweep: SweepConfig, source: str) -> BestTrial:
    """The best COMPLETE trial; with several objectives, the Pareto-front trial best on the first objective.

    Raises:
        UserError: no trial has completed yet.
    """
    front = best_trials(study)
    if not front:
        raise UserError.single(
            "the sweep has no completed trial yet",
            where=source,
            fix=f"run `ftlab sweep {source}` until at least one trial completes (`ftlab status {source}` shows them)",
        )
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    chosen = max(front, key=lambda trial: trial.values[0]) if maximize else min(front, key=lambda t: t.values[0])
    return BestTrial(chosen, baseline_trial(study), front, sweep.objectives[0].metric, maximize)
