"""The winner of a sweep, as ``ftlab best`` shows it and the export writes it: the study's
:class:`~ftlab.sweep.summary.Comparison` (the best trial's record, the baseline's, the gain and the Pareto front),
refused with a user error while no trial has completed."""

from __future__ import annotations

import optuna

from ftlab.config import SweepConfig
from ftlab.errors import UserError, redact_url
from ftlab.hints import shell_command
from ftlab.sweep.summary import Comparison, compare


def ui_command(tracking_uri: str) -> str:
    """The command that opens this sweep's runs in the MLflow UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return shell_command("open", redact_url(tracking_uri))
    return shell_command("mlflow", "ui", "--backend-store-uri", redact_url(tracking_uri))


def select_best(study: optuna.Study, sweep: SweepConfig, source: str) -> Comparison:
    """The best COMPLETE trial (see :func:`ftlab.sweep.summary.best_trial`) against the baseline trial.

    Raises:
        UserError: no trial has completed yet.
    """
    comparison = compare(study, sweep.objectives[0].metric)
    if comparison is None:
        raise UserError.single(
            "the sweep has no completed trial yet",
            where=source,
            fix=f"run `{shell_command('ftlab', 'sweep', source)}` until at least one trial completes "
            f"(`{shell_command('ftlab', 'status', source)}` shows them)",
        )
    return comparison
