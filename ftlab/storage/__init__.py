"""Where a study lives: one backend per URL form, each in a private module of its own.

- ``sqlite:///PATH`` (:mod:`._sqlite`): a local sweep, ``./mlruns/optuna.db`` by default;
- ``journal:///PATH`` (:mod:`._journal`): Optuna's JournalStorage on a file every worker shares;
- ``grpc://HOST:PORT`` (:mod:`._grpc`): Optuna's gRPC storage proxy;
- ``postgresql://…`` or any other SQLAlchemy URL (:mod:`._rdb`): Optuna's RDBStorage.

Adding a backend is one module (a :class:`BaseStorageBackend`) and one line in ``BACKENDS``. Everything else in
ftlab asks the backend through the functions below and never looks at a URL itself.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from optuna.storages import BaseStorage

from ftlab import paths
from ftlab.config import StorageConfig, SweepConfig
from ftlab.errors import ConfigError, redact_url
from ftlab.storage._base import BaseStorageBackend, StaleTrialCallback
from ftlab.storage._grpc import GrpcBackend
from ftlab.storage._heartbeat import SystemAttrHeartbeat
from ftlab.storage._journal import JournalBackend
from ftlab.storage._rdb import RDBBackend
from ftlab.storage._resilience import (
    RECONNECT_TIMEOUT_S,
    RetryingStorage,
    is_concurrent_schema_creation,
    is_connection_loss,
    retry_on_connection_loss,
)
from ftlab.storage._sqlite import SQLiteBackend, sqlite_file

__all__ = [
    "BACKENDS",
    "RECONNECT_TIMEOUT_S",
    "BaseStorageBackend",
    "RetryingStorage",
    "StaleTrialCallback",
    "StudyLock",
    "SystemAttrHeartbeat",
    "backend_for",
    "is_concurrent_schema_creation",
    "is_connection_loss",
    "open_storage",
    "retry_on_connection_loss",
    "sqlite_file",
    "storage_exists",
    "storage_files",
    "storage_problem",
    "storage_url_for",
]

# Asked in this order; the first that handles a URL is its backend. RDB last: it takes any SQLAlchemy URL.
BACKENDS: tuple[BaseStorageBackend, ...] = (SQLiteBackend(), JournalBackend(), GrpcBackend(), RDBBackend())


def storage_url_for(sweep: SweepConfig, override: str | None = None) -> str:
    """``--storage``, else the sweep file's ``storage.url``, else SQLite under ``./mlruns``."""
    return override or sweep.storage.url or paths.default_storage_url()


def backend_for(url: str) -> BaseStorageBackend:
    """The backend for ``url``.

    Raises:
        ConfigError: no backend handles it (a scheme that is no database's).
    """
    for backend in BACKENDS:
        if backend.handles(url):
            return backend
    raise ConfigError.single(
        "not a database URL ftlab can open (no storage backend for its scheme)",
        where="--storage",
        value=redact_url(url),
        fix="use sqlite:///path.db, postgresql://user@host:5432/db, grpc://HOST:PORT or journal:///PATH",
    )


def open_storage(
    url: str, config: StorageConfig | None = None, on_stale_trial: StaleTrialCallback | None = None
) -> BaseStorage:
    """The study storage at ``url``. With ``config``, running trials send heartbeats and a trial silent for
    ``grace_period`` seconds is failed by whichever worker looks next (``fail_stale_trials``), which then calls
    ``on_stale_trial``. On an RDB storage each single call rides out a lost connection (:class:`RetryingStorage`).

    Raises:
        ConfigError: no backend for ``url``, or its client is not installed.
    """
    return backend_for(url).open(url, config, on_stale_trial)


def storage_problem(url: str, timeout_s: float = 5) -> str | None:
    """Why the storage at ``url`` cannot be used now (answered within ``timeout_s``), or None when it can."""
    try:
        backend = backend_for(url)
    except ConfigError as error:
        return error.problems[0].message
    return backend.problem(url, timeout_s)


def storage_files(url: str) -> list[Path]:
    """The files on this machine that hold the study storage at ``url`` (none for a server or an unknown URL)."""
    try:
        return backend_for(url).local_files(url)
    except ConfigError:
        return []


def storage_exists(url: str) -> bool:
    """Whether the store at ``url`` is there already: a command that only reads must not create a file."""
    return backend_for(url).exists(url)


class StudyLock:
    """Serialises "check the budget, then ask for a trial" across every worker process of a study.

    PostgreSQL: a session advisory lock keyed by the study name. SQLite: a lock file beside the database. A journal
    file: a lock file beside it. A gRPC proxy: a lock study in the storage behind it. Without it, two workers could
    both see one trial left in the budget and both start one.

    ``purpose`` names a lock of its own for other work that workers must take turns at (``"best"``: marking the best
    trial in MLflow), so that it does not hold up the workers that are starting trials.
    """

    def __init__(self, storage_url: str, study_name: str, purpose: str = "study") -> None:
        self.purpose = purpose
        self._mutex = backend_for(storage_url).mutex(storage_url, study_name, purpose)

    def held(self) -> AbstractContextManager[object]:
        return self._mutex.held()
