"""Trials whose worker died: failed after the heartbeat grace period, their runs ended KILLED, retried once.

Any live worker (and ``ftlab status --reap``) calls Optuna's ``fail_stale_trials``; the storage then calls the
callback below for each trial it failed.
"""

from __future__ import annotations

import logging

import optuna
from mlflow import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from ftlab.sweep.attrs import RUN_ID_ATTR
from ftlab.sweep.study import StaleTrialCallback

logger = logging.getLogger(__name__)

MAX_RETRIES = 1


def stale_trial_callback(tracking_uri: str) -> StaleTrialCallback:
    """End the dead trial's MLflow run KILLED, then enqueue one retry with the same params (Optuna's own callback)."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            client = MlflowClient(tracking_uri=tracking_uri)
            reason = "the worker running this trial stopped sending heartbeats (killed, or its machine was lost)"
            try:
                client.set_tag(run_id, "ftlab.end_reason", reason)
                client.set_terminated(run_id, status="KILLED")
            except Exception as error:  # the tracking server may be down; the Optuna side must still be settled
                logger.warning("could not end MLflow run %s of dead trial %d: %s", run_id, trial.number, error)
        retry(study, trial)

    return on_stale_trial


def retry_trial(study: optuna.Study, trial_id: int) -> None:
    """Enqueue a retry of a trial that was stopped on purpose (preemption), as a dead worker's trial would get."""
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, study._storage.get_trial(trial_id))


def retried_trial_number(study: optuna.Study, trial_id: int) -> int | None:
    """The number of the trial this one retries, if it is a retry."""
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(study._storage.get_trial(trial_id))


def reap(study: optuna.Study) -> None:
    """Fail (and retry) every trial whose heartbeat is older than the grace period."""
    optuna.storages.fail_stale_trials(study)
