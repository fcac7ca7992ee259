"""Heartbeats for storages that keep none of their own: Optuna's JournalStorage and GrpcStorageProxy."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import Self

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from ftlab.config import StorageConfig
from ftlab.storage._base import StaleTrialCallback

HEARTBEAT_ATTR = "ftlab:heartbeat"  # trial system attribute: the worker's clock (seconds since the epoch) at the beat


class SystemAttrHeartbeat(BaseHeartbeat):
    """Optuna's heartbeat interface on top of any storage: a beat is a trial system attribute holding the worker's
    clock, and a RUNNING trial whose last beat is older than the grace period is stale. Public stand-in: none;
    ``BaseHeartbeat`` is private, and it is what ``optuna.storages.fail_stale_trials`` and
    ``RetryHeartbeatStaleTrialCallback`` go by, so reaping and retries work unchanged on these storages.

    Unlike RDBStorage (the database server's clock), the beats carry each worker's own clock: workers' clocks must
    agree to well within the grace period (NTP does). Mixed into a storage class first, so its methods are used.

    ``clock`` (seconds since the epoch, ``time.time`` by default) stamps the beats and decides staleness: tests give
    it a clock they move on by hand, to age a trial past the grace period without waiting for it.
    """

    clock: Callable[[], float] = time.time  # a builtin: stays a plain function as a class attribute, not a method
    # Named as RDBStorage's: seconds between beats and without one; both None while heartbeats are off.
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    _stale_trial_callback: StaleTrialCallback | None = None

    def configure_heartbeat(self, config: StorageConfig | None, callback: StaleTrialCallback | None = None) -> Self:
        """Turn heartbeats on as ``config`` says (left off without one): beats every ``heartbeat_interval`` s, stale
        after ``grace_period`` s. Returns this storage."""
        if config is not None:
            self.heartbeat_interval = config.heartbeat_interval
            self.grace_period = config.grace_period
            self._stale_trial_callback = callback
        return self

    def record_heartbeat(self, trial_id: int) -> None:
        # A trial told, or reaped by another worker, since the last beat has nothing left to keep alive.
        with suppress(UpdateFinishedTrialError):
            self._storage().set_trial_system_attr(trial_id, HEARTBEAT_ATTR, self.clock())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.grace_period is not None
        now = self.clock()
        return [
            trial._trial_id
            for trial in self._running(study_id)
            if HEARTBEAT_ATTR in trial.system_attrs and now - trial.system_attrs[HEARTBEAT_ATTR] > self.grace_period
        ]

    def _running(self, study_id: int) -> list[FrozenTrial]:
        return self._storage().get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))

    def _storage(self) -> BaseStorage:
        assert isinstance(self, BaseStorage), "mix SystemAttrHeartbeat into a storage class"
        return self

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleTrialCallback | None:
        return self._stale_trial_callback

    def running_without_heartbeat(self, study_id: int) -> list[int]:
        """Ids of RUNNING trials that never recorded a beat (empty while heartbeats are off)."""
        if self.heartbeat_interval is None:
            return []
        return [trial._trial_id for trial in self._running(study_id) if HEARTBEAT_ATTR not in trial.system_attrs]
