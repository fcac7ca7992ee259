"""PostgreSQL, or any other database SQLAlchemy can open: Optuna's RDBStorage, each single call retried while the
connection is lost (:class:`RetryingStorage`), and PostgreSQL's advisory lock for the study lock."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy
import sqlalchemy.exc
from optuna.storages import BaseStorage, RDBStorage, _CachedStorage

from ftlab.config import StorageConfig
from ftlab.errors import first_line
from ftlab.storage._base import BaseStorageBackend, NoMutex, StaleTrialCallback, StudyMutex, lock_name
from ftlab.storage._resilience import RetryingStorage


def open_rdb(
    url: str,
    engine_kwargs: dict[str, Any],
    config: StorageConfig | None = None,
    on_stale_trial: StaleTrialCallback | None = None,
) -> BaseStorage:
    """Optuna's RDBStorage at ``url`` (pre-ping replaces connections that died while idle), behind Optuna's own cache
    (what ``optuna.create_study`` would wrap it in) and ftlab's retries."""
    heartbeat: dict[str, Any] = {}
    if config is not None:
        heartbeat = {
            "heartbeat_interval": config.heartbeat_interval,
            "grace_period": config.grace_period,
            "heartbeat_stale_trial_callback": on_stale_trial,
        }
    storage = RDBStorage(url, engine_kwargs={"pool_pre_ping": True, **engine_kwargs}, **heartbeat)
    return RetryingStorage(_CachedStorage(storage))


class AdvisoryLock(StudyMutex):
    """A PostgreSQL session advisory lock: released by the server when its session ends, so a dead worker's lock
    does not outlive it."""

    def __init__(self, url: str, name: str) -> None:
        self._engine = sqlalchemy.create_engine(url, pool_pre_ping=True, poolclass=sqlalchemy.NullPool)
        self._key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)  # 64 bits

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
            try:
                yield
            finally:
                try:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                except sqlalchemy.exc.DBAPIError as error:
                    # A session lock ends with its session: a dropped connection has released it already.
                    if not error.connection_invalidated:
                        raise


class RDBBackend(BaseStorageBackend):
    """``postgresql://user@host/db`` (or ``postgresql+psycopg2://``), or any other SQLAlchemy database URL."""

    fix = (
        "check host, port, database name and credentials (postgresql://user@host:5432/db); the database must exist "
        "and be reachable from this machine"
    )

    def handles(self, url: str) -> bool:
        try:
            sqlalchemy.engine.make_url(url).get_dialect()
        except (sqlalchemy.exc.ArgumentError, ValueError):
            return False  # not a URL, or a scheme SQLAlchemy has no dialect for (NoSuchModuleError)
        return True

    def open(
        self, url: str, config: StorageConfig | None = None, on_stale_trial: StaleTrialCallback | None = None
    ) -> BaseStorage:
        if config is not None:
            # A worker's study: one connection kept for the worker's lifetime. SQLAlchemy's default pool keeps up to 5
            # idle, and a worker's threads fill it once (benchmarks/scale_out.py: 6 connections a worker before this),
            # which a database's max_connections (100 by default) runs out of at about 16 workers.
            return open_rdb(url, {"pool_size": 1}, config, on_stale_trial)
        # Everyone else uses the study for a few operations: a trial process (load it, one report per evaluation,
        # while it trains for minutes), `ftlab status`, the preflight's schema check. None of them should hold an
        # idle connection while it trains or after it is done; a connection per operation costs milliseconds.
        return open_rdb(url, {"poolclass": sqlalchemy.NullPool})

    def mutex(self, url: str, study_name: str, purpose: str) -> StudyMutex:
        return AdvisoryLock(url, lock_name(study_name, purpose)) if url.startswith("postgresql") else NoMutex()

    def problem(self, url: str, timeout_s: float) -> str | None:
        connect_args = {"connect_timeout": int(timeout_s)} if url.startswith("postgresql") else {}
        try:
            engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool, connect_args=connect_args)
            engine.connect().close()
        except (sqlalchemy.exc.ArgumentError, ImportError) as error:
            return f"not a database URL ftlab can open ({first_line(error)})"
        except sqlalchemy.exc.DBAPIError as error:
            return f"cannot connect to the study storage: {first_line(error)}"
        return None
