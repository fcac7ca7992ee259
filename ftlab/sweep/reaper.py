"""Trials whose worker died: settled by what their result file says, else failed after the heartbeat grace period,
their runs ended KILLED, and retried.

Any live worker (and ``ftlab status --reap``) calls :func:`reap`. It first looks at each stale trial's result file
(and MLflow run): a trial that had finished, its final figures logged, is told COMPLETE, never relabelled KILLED.
The others get their reason and are left to Optuna's ``fail_stale_trials``, which calls the callback below for each.

Trials stopped from outside (Ctrl-C, preemption, a dead worker) are always retried, the baseline above all: a retry
limit would count a Ctrl-C and then lose the trial for good. One guard: the same settings' process or worker dying
:data:`MAX_LOST_IN_A_ROW` times in a row (SIGKILL, a dead worker; not Ctrl-C or preemption) counts as the trial's own
failure, for a configuration that kills its machine every time (host out of memory) would otherwise be retried
forever. It then spends the failure budget like any failure of the trial's own; a baseline stops the sweep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from ftlab.figures import on_holdout
from ftlab.record import (
    FAIL_REASON_ATTR,
    HOLDOUT_ATTR,
    LOST_ATTR,
    RUN_ID_ATTR,
    STOPPED_ATTR,
    TRIAL_DIR_ATTR,
    TrialRecord,
)
from ftlab.storage import StaleTrialCallback
from ftlab.sweep import compat
from ftlab.sweep import study as studies
from ftlab.tracking import end_run

logger = logging.getLogger(__name__)

MAX_LOST_IN_A_ROW = 3
"""The same settings' process or worker dying this many times in a row is the trial's own failure, not retried."""
LOST_IN_A_ROW_ATTR = "ftlab.lost_in_a_row"  # trial: how many of the trials it retries in a row died (see above)
DEAD_WORKER_REASON = "the worker running this trial stopped sending heartbeats (killed, or its machine was lost)"
# Optuna's own system attributes for a retry (RetryHeartbeatStaleTrialCallback's): its tools read them too.
_FAILED_TRIAL = "failed_trial"
_RETRY_HISTORY = "retry_history"
# What belongs to one attempt and must not be copied into its retry.
_PER_ATTEMPT = (RUN_ID_ATTR, TRIAL_DIR_ATTR, FAIL_REASON_ATTR, STOPPED_ATTR, LOST_ATTR, LOST_IN_A_ROW_ATTR)


def lost_record(trial: FrozenTrial, reason: str) -> TrialRecord:
    """What a trial whose process or worker died without a word comes to: retried, unless its settings have now
    killed it :data:`MAX_LOST_IN_A_ROW` times in a row, which is then their own failure (not retried)."""
    lost = int(trial.user_attrs.get(LOST_IN_A_ROW_ATTR, 0)) + 1
    if lost < MAX_LOST_IN_A_ROW:
        return TrialRecord("FAIL", reason, retry=True, lost=True)
    return TrialRecord(
        "FAIL",
        f"its process or worker died {lost} times in a row with these settings (last: {reason}); counted as their "
        "own failure (do they exhaust the machine's memory?)",
        lost=True,
    )


def stale_trial_callback(tracking_uri: str) -> StaleTrialCallback:
    """End the dead trial's MLflow run KILLED (FAILED where its settings keep killing it), then enqueue its retry."""

    def on_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        record = TrialRecord.from_trial(trial)
        retried = record.retry or not record.reason  # no reason: failed by Optuna without ftlab's look (an older ftlab)
        if run_id := trial.user_attrs.get(RUN_ID_ATTR):
            status = "KILLED" if retried else "FAILED"
            try:
                end_run(tracking_uri, run_id, status, record.reason or DEAD_WORKER_REASON)
            except Exception as error:  # the tracking server may be down; the Optuna side must still be settled
                logger.warning("could not end MLflow run %s of dead trial %d: %s", run_id, trial.number, error)
        if retried:
            enqueue_retry(study, trial)

    return on_stale_trial


def enqueue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a retry of ``trial`` with the same params and identity (baseline, overrides); no retry limit."""
    history = [*trial.system_attrs.get(_RETRY_HISTORY, []), trial.number]
    system_attrs = {**trial.system_attrs, _FAILED_TRIAL: history[0], _RETRY_HISTORY: history}
    user_attrs = {key: value for key, value in trial.user_attrs.items() if key not in _PER_ATTEMPT}
    lost = int(trial.user_attrs.get(LOST_IN_A_ROW_ATTR, 0)) + bool(trial.user_attrs.get(LOST_ATTR))
    if lost:
        user_attrs[LOST_IN_A_ROW_ATTR] = lost  # Ctrl-C and preemption neither count nor break the row
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )


def retry_trial(study: optuna.Study, trial_id: int) -> None:
    """Enqueue a retry of a trial stopped from outside (preemption, Ctrl-C, a killed trial process).

    Safe to repeat: an attempt whose connection dropped after the commit has enqueued it already.
    """
    trial = compat.storage_of(study).get_trial(trial_id)
    for other in study.get_trials(deepcopy=False):
        history = other.system_attrs.get(_RETRY_HISTORY)
        if history and history[-1] == trial.number:
            return
    enqueue_retry(study, trial)


def retry_series(study: optuna.Study, trial_id: int) -> list[int]:
    """The numbers of the trials this one retries, the first first (empty if it is no retry)."""
    return list(compat.storage_of(study).get_trial(trial_id).system_attrs.get(_RETRY_HISTORY, []))


def retried_trial_number(study: optuna.Study, trial_id: int) -> int | None:
    """The number of the trial this one retries, if it is a retry: the last of its series."""
    series = retry_series(study, trial_id)
    return series[-1] if series else None


def _finished_record(trial: FrozenTrial, tracking_uri: str | None, metric_names: list[str]) -> TrialRecord | None:
    """The COMPLETE record of a stale trial that had finished (its worker died before telling the study), from its
    result file or, where that is on another machine, its MLflow run ended FINISHED with its final figures."""
    if trial_dir := trial.user_attrs.get(TRIAL_DIR_ATTR):
        with suppress(OSError, ValueError, TypeError):  # unreadable: judged by the run instead
            record = TrialRecord.read(Path(trial_dir) / "result.json")
            if record is not None and record.state == "COMPLETE" and record.values:
                return record
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if not (tracking_uri and run_id and metric_names):
        return None
    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except Exception as error:  # the tracking server is down: the trial is failed and retried as any dead one
        logger.warning("could not read MLflow run %s of dead trial %d: %s", run_id, trial.number, error)
        return None
    if trial.user_attrs.get(HOLDOUT_ATTR):  # a confirmation run judged on the holdout: its values are those figures
        metric_names = [on_holdout(name) for name in metric_names]
    finals = {name: run.data.metrics.get(f"final/{name}") for name in metric_names}
    if run.info.status != "FINISHED" or None in finals.values():
        return None
    return TrialRecord("COMPLETE", values=[finals[name] for name in metric_names], metrics=dict(finals))


def settle_stale_trials(study: optuna.Study, tracking_uri: str | None = None) -> None:
    """Before Optuna fails the stale trials: tell COMPLETE those that had finished; give the others their reason
    (stopped from outside and retried, or their own failure after :data:`MAX_LOST_IN_A_ROW`)."""
    storage = compat.storage_of(study)
    if compat.heartbeat_interval_of(study) is None:
        return
    for trial_id in compat.stale_trial_ids(study):
        trial = storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            continue
        try:
            finished = _finished_record(trial, tracking_uri, list(study.metric_names or []))
            if finished is not None:
                studies.tell(study, trial_id, finished)
                logger.warning("trial %d had finished when its worker died: told COMPLETE", trial.number)
                continue
            for key, value in lost_record(trial, DEAD_WORKER_REASON).to_user_attrs().items():
                storage.set_trial_user_attr(trial_id, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its own worker (only paused) or another reaper settled it meanwhile


def fail_orphaned_trials(study: optuna.Study, clock: Callable[[], float] = time.time) -> list[int]:
    """Fail RUNNING trials that never sent a heartbeat and are older than the grace period; their numbers.

    A worker records the first heartbeat right after ``ask``, under the study lock. A trial without one was asked for
    by an attempt whose connection dropped after the commit: no process runs it, and Optuna's ``fail_stale_trials``
    would leave it RUNNING forever (and the budget waiting on it). It never trained, so it is not retried.

    ``clock``: seconds since the epoch, the age's "now" (tests pass a clock they move on by hand).
    """
    grace = compat.grace_period_of(study)
    if grace is None:
        return []
    storage = compat.storage_of(study)
    failed = []
    now = datetime.fromtimestamp(clock())
    for trial_id in compat.running_trials_without_heartbeat(study):
        trial = storage.get_trial(trial_id)
        # datetime_start is the creating machine's naive local time; clusters normally run UTC.
        if trial.datetime_start is None or now - trial.datetime_start < timedelta(seconds=grace):
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


def reap(study: optuna.Study, tracking_uri: str | None = None) -> None:
    """Settle every trial whose heartbeat is older than the grace period (COMPLETE where it had finished, else
    failed and retried); fail trials that never beat. ``tracking_uri``: where to look for a finished trial's run.

    At most once per heartbeat interval in a process: a trial turns stale on that timescale, yet every worker calls
    this under the study lock each time it looks for work (twice a second while it waits for running trials), and
    its two queries lengthened every other worker's wait for the lock. A dead worker's trial is still found within
    the grace period plus one interval.
    """
    if not reap_due(study):
        return
    _last_reaped[_reaped_key(study)] = time.monotonic()
    fail_orphaned_trials(study)
    settle_stale_trials(study, tracking_uri)
    optuna.storages.fail_stale_trials(study)
