"""One storage call at a time, sent again when the database connection drops under it.

Like the retrying stub of Optuna's gRPC client (and ftlab's for the proxy, ``_grpc._RetryingStub``): every caller
of a study on an RDB storage gets the backoff of :func:`retry_on_connection_loss` for each single call, so code that
only reads or writes one thing needs no retry of its own. Callers keep an explicit retry only around compound steps:
several calls that must be redone together (check then write, under a lock).

Which calls are sent again, and why that is safe:

- reads: they change nothing;
- ``set_*_user_attr``, ``set_*_system_attr``, ``set_trial_intermediate_value``: upserts, the same state when done
  twice;
- ``set_trial_param``: a second insert of the same parameter violates a unique key, which Optuna ignores, so the
  value committed first stays (a *new* sample after a lost commit is the caller's concern: the launcher's ``_prepare``
  reloads the trial and is retried as a whole);
- ``_get_stale_trial_ids``: a read.

Which are sent once, the connection loss raised to the caller, because done twice they do something else:

- ``create_new_trial``: a second trial (Optuna's RDBStorage itself tries it up to 5 times on a failed commit).
  ``ask`` runs inside the scheduler's retried ``_next_trial``; a trial whose commit landed before the connection dropped
  is left RUNNING without a heartbeat, and ``reaper.fail_orphaned_trials`` fails it;
- ``set_trial_state_values``: done twice it reports "taken by another worker" (WAITING → RUNNING) or raises
  UpdateFinishedTrialError (a finished state). ``study.tell`` runs inside ftlab's ``tell``, retried as a whole, which
  first looks whether the trial is finished already; ``retry_trial`` and the reaper read first too;
- ``create_new_study``, ``delete_study``: DuplicatedStudyError or KeyError the second time (``optuna.create_study``
  with ``load_if_exists`` is retried as a whole by the scheduler);
- ``record_heartbeat``: a missed beat is harmless within the grace period, and a beat that waited minutes for the
  database would hold up the worker's watch over its trial process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat

from ftlab.storage._resilience import retry_on_connection_loss


def _retried(name: str) -> Callable[..., Any]:
    def call(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        method = getattr(self._backend, name)
        return retry_on_connection_loss(lambda: method(*args, **kwargs))

    call.__name__ = name
    return call


def _once(name: str) -> Callable[..., Any]:
    def call(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._backend, name)(*args, **kwargs)

    call.__name__ = name
    return call


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage (with heartbeats) whose single calls are retried while the database connection is lost,
    for up to ``RECONNECT_TIMEOUT_S``; see the module's docstring for which calls and why."""

    def __init__(self, backend: BaseStorage) -> None:
        self._backend = backend  # the name compat.rdb_backend unwraps, as it does Optuna's _CachedStorage

    # reads
    get_study_id_from_name = _retried("get_study_id_from_name")
    get_study_name_from_id = _retried("get_study_name_from_id")
    get_study_directions = _retried("get_study_directions")
    get_study_user_attrs = _retried("get_study_user_attrs")
    get_study_system_attrs = _retried("get_study_system_attrs")
    get_all_studies = _retried("get_all_studies")
    get_trial_id_from_study_id_trial_number = _retried("get_trial_id_from_study_id_trial_number")
    get_trial_number_from_id = _retried("get_trial_number_from_id")
    get_trial_param = _retried("get_trial_param")
    get_trial = _retried("get_trial")
    get_all_trials = _retried("get_all_trials")
    get_n_trials = _retried("get_n_trials")
    get_best_trial = _retried("get_best_trial")
    get_trial_params = _retried("get_trial_params")
    get_trial_user_attrs = _retried("get_trial_user_attrs")
    get_trial_system_attrs = _retried("get_trial_system_attrs")
    _get_stale_trial_ids = _retried("_get_stale_trial_ids")
    # writes that end in the same state when done twice
    set_study_user_attr = _retried("set_study_user_attr")
    set_study_system_attr = _retried("set_study_system_attr")
    set_trial_param = _retried("set_trial_param")
    set_trial_intermediate_value = _retried("set_trial_intermediate_value")
    set_trial_user_attr = _retried("set_trial_user_attr")
    set_trial_system_attr = _retried("set_trial_system_attr")
    # writes that do something else when done twice: sent once (see the module's docstring)
    create_new_study = _once("create_new_study")
    delete_study = _once("delete_study")
    create_new_trial = _once("create_new_trial")
    set_trial_state_values = _once("set_trial_state_values")
    record_heartbeat = _once("record_heartbeat")
    # no database round trip
    check_trial_is_updatable = _once("check_trial_is_updatable")
    remove_session = _once("remove_session")
    get_heartbeat_interval = _once("get_heartbeat_interval")
    get_heartbeat_stale_trial_callback = _once("get_heartbeat_stale_trial_callback")
