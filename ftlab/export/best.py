"""The winner of a sweep, as ``ftlab best`` shows it and the export writes it: the best trial's record, the
baseline's, the gain between them and the Pareto front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from ftlab.config import SweepConfig
from ftlab.errors import UserError
from ftlab.sweep.record import TrialRecord
from ftlab.sweep.summary import Gain, baseline_trial, best_trial, gain, pareto_front
from ftlab.tracking import redact_url


@dataclass
class BestTrial:
    """The chosen trial with its figures and the baseline trial's, ready to print or to write into a card."""

    record: TrialRecord
    baseline: TrialRecord | None
    pareto_front: list[int]
    metric: str
    gain: Gain | None

    @property
    def value(self) -> float:
        assert self.record.values is not None
        return self.record.values[0]

    def as_json(self, tracking_uri: str) -> dict[str, Any]:
        return {
            "trial": self.record.number,
            "metric": self.metric,
            **_figures(self.record),
            "train_loss": self.record.train_loss,
            "tokens_seen": self.record.tokens_seen,
            "gain": {
                "absolute": self.gain.absolute if self.gain else None,
                "relative": self.gain.relative if self.gain else None,
            },
            "baseline": None if self.baseline is None else {"trial": self.baseline.number, **_figures(self.baseline)},
            "pareto_front": self.pareto_front,
            "ui": ui_command(tracking_uri),
        }


def _figures(record: TrialRecord) -> dict[str, Any]:
    return {
        "params": record.params,
        "values": record.values,
        "eval_loss": record.eval_loss,
        "perplexity": record.perplexity,
        "mlflow_run_id": record.mlflow_run_id,
    }


def ui_command(tracking_uri: str) -> str:
    """The command that opens this sweep's runs in the MLflow UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact_url(tracking_uri)}"
    return f"mlflow ui --backend-store-uri {redact_url(tracking_uri)}"


def select_best(study: optuna.Study, sweep: SweepConfig, source: str) -> BestTrial:
    """The best COMPLETE trial (see :func:`ftlab.sweep.summary.best_trial`) against the baseline trial.

    Raises:
        UserError: no trial has completed yet.
    """
    chosen = best_trial(study)
    if chosen is None:
        raise UserError.single(
            "the sweep has no completed trial yet",
            where=source,
            fix=f"run `ftlab sweep {source}` until at least one trial completes (`ftlab status {source}` shows them)",
        )
    baseline = baseline_trial(study)
    return BestTrial(
        record=TrialRecord.from_trial(chosen),
        baseline=TrialRecord.from_trial(baseline) if baseline else None,
        pareto_front=[trial.number for trial in pareto_front(study)],
        metric=sweep.objectives[0].metric,
        gain=None if baseline is None else gain(chosen.values[0], baseline.values[0], study.directions[0]),
    )
