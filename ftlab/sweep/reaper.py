"""Trials whose worker died: failed after the heartbeat grace period, their runs ended KILLED, retried once.

Any live worker (and ``ftlab status --reap``) calls Optuna's ``fail_stale_trials``; the storage then calls the
callback below for each trial it failed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import optuna
import sqlalchemy
from mlflow import MlflowClient
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ftlab.sweep.attrs import FAIL_REASON_ATTR, RUN_ID_ATTR
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
    """Enqueue a retry of a trial that was stopped on purpose (preemption), as a dead worker's trial would get.

    Safe to repeat: an attempt whose connection dropped after the commit has enqueued it already.
    """
    trial = study._storage.get_trial(trial_id)
    for other in study.get_trials(deepcopy=False):
        if other.system_attrs.get("retry_history", [None])[-1] == trial.number:
            return
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)


def retried_trial_number(study: optuna.Study, trial_id: int) -> int | None:
    """The number of the trial this one retries, if it is a retry."""
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(study._storage.get_trial(trial_id))


# Optuna's stale-trial check skips RUNNING trials that never sent a heartbeat; these are found here.
_NEVER_BEATING = sqlalchemy.text(
    "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL"
)


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials that never sent a heartbeat and are older than the grace period; their numbers.

    A worker records the first heartbeat right after ``ask``, under the study lock. A trial without one was asked for
    by an attempt whose connection dropped after the commit: no process runs it, and Optuna's ``fail_stale_trials``
    would leave it RUNNING forever (and the budget waiting on it). It never trained, so it is not retried.
    """
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    if not isinstance(backend, RDBStorage) or backend.heartbeat_interval is None:
        return []
    grace = timedelta(seconds=backend.grace_period or 2 * backend.heartbeat_interval)
    with backend.engine.connect() as connection:
        trial_ids = connection.execute(_NEVER_BEATING, {"study_id": study._study_id}).scalars().all()
    failed = []
    for trial_id in trial_ids:
        trial = storage.get_trial(trial_id)
        if trial.datetime_start is None or datetime.now() - trial.datetime_start < grace:
            continue  # just asked: its worker is about to record the first heartbeat
        storage.set_trial_user_attr(
            trial_id,
            FAIL_REASON_ATTR,
            "asked for, but the worker lost its database connection before starting it; it never ran",
        )
        if storage.set_trial_state_values(trial_id, TrialState.FAIL):
            logger.warning("trial %d was asked for but never started (connection lost); marked FAIL", trial.number)
            failed.append(trial.number)
    return failed


def reap(study: optuna.Study) -> None:
    """Fail (and retry) every trial whose heartbeat is older than the grace period; fail trials that never beat."""
    fail_orphaned_trials(study)
    optuna.storages.fail_stale_trials(study)
