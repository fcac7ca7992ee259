"""Trials whose worker died: failed after the heartbeat grace period, their runs ended KILLED, retried once.

Any live worker (and ``ftlab status --reap``) calls Optuna's ``fail_stale_trials``; the storage then calls the
callback below for each trial it failed.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ftlab.sweep import compat
from ftlab.sweep.record import FAIL_REASON_ATTR, RUN_ID_ATTR, STOPPED_ATTR
from ftlab.sweep.study import StaleTrialCallback
from ftlab.tracking import end_run

logger = logging.getLogger(__name__)

MAX_RETRIES = 1
DEAD_WORKER_REASON = "the worker running this trial stopped sending heartbeats (killed, or its machine was lost)"


def stale_trial_callback(tracking_uri: str) -> StaleTrialCallback:
    """End the dead trial's MLflow run KILLED, then enqueue one retry with the same params (Optuna's own callback)."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if run_id:
            try:
                end_run(tracking_uri, run_id, "KILLED", DEAD_WORKER_REASON)
            except Exception as error:  # the tracking server may be down; the Optuna side must still be settled
                logger.warning("could not end MLflow run %s of dead trial %d: %s", run_id, trial.number, error)
        retry(study, trial)

    return on_stale_trial


def retry_trial(study: optuna.Study, trial_id: int) -> None:
    """Enqueue a retry of a trial that was stopped on purpose (preemption), as a dead worker's trial would get.

    Safe to repeat: an attempt whose connection dropped after the commit has enqueued it already.
    """
    trial = compat.storage_of(study).get_trial(trial_id)
    for other in study.get_trials(deepcopy=False):
        history = RetryHeartbeatStaleTrialCallback.retry_history(other)
        if history and history[-1] == trial.number:
            return
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)


def retried_trial_number(study: optuna.Study, trial_id: int) -> int | None:
    """The number of the trial this one retries, if it is a retry."""
    trial = compat.storage_of(study).get_trial(trial_id)
    return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials that never sent a heartbeat and are older than the grace period; their numbers.

    A worker records the first heartbeat right after ``ask``, under the study lock. A trial without one was asked for
    by an attempt whose connection dropped after the commit: no process runs it, and Optuna's ``fail_stale_trials``
    would leave it RUNNING forever (and the budget waiting on it). It never trained, so it is not retried.
    """
    grace = compat.grace_period_of(study)
    if grace is None:
        return []
    storage = compat.storage_of(study)
    failed = []
    for trial_id in compat.running_trials_without_heartbeat(study):
        trial = storage.get_trial(trial_id)
        # datetime_start is the creating machine's naive local time; clusters normally run UTC.
        if trial.datetime_start is None or datetime.now() - trial.datetime_start < timedelta(seconds=grace):
            continue  # just asked: its worker is about to record the first heartbeat
        storage.set_trial_user_attr(
            trial_id,
            FAIL_REASON_ATTR,
            "asked for, but the worker lost its database connection before starting it; it never ran",
        )
        storage.set_trial_user_attr(trial_id, STOPPED_ATTR, True)
        if compat.set_trial_state(study, trial_id, TrialState.FAIL):
            logger.warning("trial %d was asked for but never started (connection lost); marked FAIL", trial.number)
            failed.append(trial.number)
    return failed


# (storage object, study id) → when this process last reaped it (time.monotonic()).
_last_reaped: dict[tuple[int, int], float] = {}


def _reaped_key(study: optuna.Study) -> tuple[int, int]:
    return id(compat.storage_of(study)), compat.study_id_of(study)


def reap_due(study: optuna.Study) -> bool:
    """Whether :func:`reap` would look for stale trials now (else it returns at once)."""
    interval = compat.heartbeat_interval_of(study)
    last = _last_reaped.get(_reaped_key(study))
    return interval is None or last is None or time.monotonic() - last >= interval


def reap(study: optuna.Study) -> None:
    """Fail (and retry) every trial whose heartbeat is older than the grace period; fail trials that never beat.

    At most once per heartbeat interval in a process: a trial turns stale on that timescale, yet every worker calls
    this under the study lock each time it looks for work (twice a second while it waits for running trials), and
    its two queries lengthened every other worker's wait for the lock. A dead worker's trial is still found within
    the grace period plus one interval.
    """
    if not reap_due(study):
        return
    _last_reaped[_reaped_key(study)] = time.monotonic()
    fail_orphaned_trials(study)
    optuna.storages.fail_stale_trials(study)
