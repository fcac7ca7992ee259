"""Riding out a lost database connection: a restart, a failover, or an admin terminating sessions.

``pool_pre_ping`` replaces connections that died while idle in the pool; a connection that dies in the middle of a
query still raises. The operations below are retried with exponential backoff (tenacity) while the error is a lost
connection, and only then: a bad value or a constraint violation fails at once, as it would again. Single storage
calls get this from :class:`ftlab.storage.RetryingStorage`; callers use :func:`retry_on_connection_loss` themselves
only for compound steps that must be redone as a whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_delay, wait_exponential_jitter

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Long enough for a database server restart or a managed failover; a worker gives up (exit non-zero) after that.
RECONNECT_TIMEOUT_S = 300.0


def is_connection_loss(error: BaseException) -> bool:
    """True for a dropped or refused database connection, also when Optuna wrapped it in StorageInternalError."""
    while error is not None:
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(error, sqlalchemy.exc.PendingRollbackError):
            # A query after a failed one in the same transaction (Optuna's _get_trials retries a query that failed
            # with OperationalError in place): what it reports is what happened first.
            error = error.__context__  # type: ignore[assignment]
            continue
        if not isinstance(error, optuna.exceptions.StorageInternalError | sqlalchemy.exc.StatementError):
            return False
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


def is_concurrent_schema_creation(error: BaseException) -> bool:
    """True when creating Optuna's tables collided with another process creating them at the same moment.

    Workers create the schema under the study lock, but a lock whose session was dropped is no lock: two workers can
    then both run CREATE TABLE, and PostgreSQL rejects the second with a duplicate in its catalog. The tables exist
    afterwards, so opening the storage again succeeds.
    """
    while error is not None:
        if isinstance(error, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError):
            message = str(error)
            return "pg_type_typname_nsp_index" in message or "already exists" in message
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return False


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    first_line = str(error).strip().splitlines()[0] if error else "?"
    logger.warning(
        "database connection lost (%s); retrying in %.1f s (attempt %d)",
        first_line[:200],
        state.upcoming_sleep,
        state.attempt_number,
    )


def retry_on_connection_loss(
    operation: Callable[[], T],
    timeout_s: float = RECONNECT_TIMEOUT_S,
    also: Callable[[BaseException], bool] = lambda error: False,
) -> T:
    """Run ``operation``, again after a backoff while it fails with a lost connection, for up to ``timeout_s``.

    Only for operations that are safe to repeat (reads, or writes that end in the same state when done twice).
    ``also`` names other errors worth a retry for this operation.
    """
    retrying = retry(
        retry=retry_if_exception(lambda error: is_connection_loss(error) or also(error)),
        wait=wait_exponential_jitter(initial=0.5, max=15),
        stop=stop_after_delay(timeout_s),
        before_sleep=_log_retry,
        reraise=True,
    )
    return retrying(operation)()


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
    for up to ``RECONNECT_TIMEOUT_S``.

    Like the retrying stub of Optuna's gRPC client (and ftlab's for the proxy, ``_grpc._RetryingStub``): every caller
    of a study on an RDB storage gets the backoff of :func:`retry_on_connection_loss` for each single call, so code that
    only reads or writes one thing needs no retry of its own. Callers keep an explicit retry only around compound steps:
    several calls that must be redone together (check then write, under a lock).

    Which calls are sent again, and why that is safe:

    - reads: they change nothing;
    - ``set_*_user_attr``, ``set_*_system_attr``, ``set_trial_intermediate_value``: upserts, the same state when done
      twice;
    - ``set_trial_param``: a second insert of the same parameter violates a unique key, which Optuna ignores, so the
      value committed first stays (a *new* sample after a lost commit is the caller's concern: the launcher's
      ``_prepare`` reloads the trial and is retried as a whole);
    - ``_get_stale_trial_ids``: a read.

    Which are sent once, the connection loss raised to the caller, because done twice they do something else:

    - ``create_new_trial``: a second trial (Optuna's RDBStorage itself tries it up to 5 times on a failed commit).
      ``ask`` runs inside the scheduler's retried ``_next_trial``; a trial whose commit landed before the connection
      dropped is left RUNNING without a heartbeat, and ``reaper.fail_orphaned_trials`` fails it;
    - ``set_trial_state_values``: done twice it reports "taken by another worker" (WAITING → RUNNING) or raises
      UpdateFinishedTrialError (a finished state). ``study.tell`` runs inside ftlab's ``tell``, retried as a whole,
      which first looks whether the trial is finished already; ``retry_trial`` and the reaper read first too;
    - ``create_new_study``, ``delete_study``: DuplicatedStudyError or KeyError the second time (``optuna.create_study``
      with ``load_if_exists`` is retried as a whole by the scheduler);
    - ``record_heartbeat``: a missed beat is harmless within the grace period, and a beat that waited minutes for the
      database would hold up the worker's watch over its trial process.
    """

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
