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
from typing import TypeVar

import optuna
import sqlalchemy.exc
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
