"""The storage package: one dispatch from a URL to its backend, and the retrying storage that rides out a dropped
database connection for single calls (against a real PostgreSQL)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from ftlab.config import StorageConfig
from ftlab.errors import ConfigError
from ftlab.storage import (
    RetryingStorage,
    backend_for,
    is_connection_loss,
    open_storage,
    storage_exists,
    storage_problem,
)
from ftlab.storage._grpc import GrpcBackend
from ftlab.storage._journal import JournalBackend
from ftlab.storage._rdb import RDBBackend
from ftlab.storage._sqlite import SQLiteBackend
from ftlab.sweep import compat
from tests.support.services import postgres_database

pytest_plugins = ["tests.support.services"]


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        ("sqlite:///mlruns/optuna.db", SQLiteBackend),
        ("sqlite:////abs/optuna.db", SQLiteBackend),
        ("postgresql://ftlab@db:5432/optuna", RDBBackend),
        ("postgresql+psycopg2://ftlab:secret@db/optuna", RDBBackend),
        ("grpc://proxy:13000", GrpcBackend),
        ("grpc://no-port", GrpcBackend),  # its backend says what is wrong with it (below)
        ("journal:///shared/study.journal", JournalBackend),
        ("journal:////nfs/study.journal", JournalBackend),
    ],
)
def test_each_url_form_goes_to_its_backend(url: str, backend: type) -> None:
    assert type(backend_for(url)) is backend


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379", "s3://bucket/optuna.db", "optuna.db"])
def test_an_unknown_scheme_is_a_clear_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as error:
        backend_for(url)
    (problem,) = error.value.problems
    assert "not a database URL ftlab can open" in problem.message
    assert problem.where == "--storage" and problem.value == url
    assert problem.fix is not None and "postgresql://" in problem.fix
    with pytest.raises(ConfigError):
        open_storage(url)
    assert "not a database URL ftlab can open" in (storage_problem(url) or "")


def test_a_malformed_grpc_url_is_a_config_error_naming_the_form() -> None:
    with pytest.raises(ConfigError, match="grpc://HOST:PORT"):
        open_storage("grpc://no-port")


def test_reading_commands_create_no_store(tmp_path: Path) -> None:
    sqlite, journal = f"sqlite:///{tmp_path / 'a' / 'optuna.db'}", f"journal:///{tmp_path / 'b' / 'study.journal'}"
    assert not storage_exists(sqlite) and not storage_exists(journal)
    assert list(tmp_path.iterdir()) == [], "asking created nothing"
    for url in (sqlite, journal):
        optuna.create_study(study_name="made", storage=open_storage(url))
        assert storage_exists(url)


def test_an_rdb_storage_is_wrapped_and_compat_still_finds_optunas_storage(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", StorageConfig(heartbeat_interval=1))
    assert isinstance(storage, RetryingStorage)
    study = optuna.create_study(study_name="wrapped", storage=storage)
    assert compat.storage_of(study) is storage, "not wrapped again by Optuna's cache"
    assert isinstance(compat.rdb_backend(study), RDBStorage)
    assert compat.heartbeat_interval_of(study) == 1


# --- the retrying storage against a real PostgreSQL ------------------------------------------------------------------


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database("ftlab_retrying") as url:
        yield url


def _terminate_during(url: str, table: str, call: object) -> object:
    """Run ``call`` in a thread while ``table`` is locked, kill the session it waits in (as a database restart or
    an admin would), release the lock; what ``call`` returned or raised."""
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()  # type: ignore[operator]
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    with admin.connect() as holder:
        holder.execute(sqlalchemy.text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        thread = threading.Thread(target=run)
        thread.start()
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as killer:
            waiting = sqlalchemy.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            pids: list[int] = []
            for _ in range(200):  # until the call waits on the lock
                if pids := list(killer.execute(waiting).scalars()):
                    break
                threading.Event().wait(0.05)
            assert pids, "the call never reached the database"
            for pid in pids:
                killer.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        holder.rollback()  # releases the lock
    thread.join(timeout=60)
    admin.dispose()
    return outcome


@pytest.mark.services
def test_a_single_call_rides_out_a_terminated_connection(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    storage = open_storage(postgres_url, StorageConfig(heartbeat_interval=1))
    study_id = storage.create_new_study([StudyDirection.MINIMIZE], "retrying")
    trial_id = storage.create_new_trial(study_id)
    storage.set_trial_user_attr(trial_id, "before", 1)

    with caplog.at_level(logging.WARNING, logger="ftlab.storage._resilience"):
        outcome = _terminate_during(postgres_url, "trials", lambda: storage.get_trial(trial_id))
    assert "error" not in outcome, outcome.get("error")
    assert outcome["value"].user_attrs == {"before": 1}  # type: ignore[attr-defined]
    assert "database connection lost" in caplog.text, "the call was retried, not lucky"

    # The next calls go on over the same storage as if nothing happened.
    storage.set_trial_user_attr(trial_id, "after", 2)
    assert storage.get_trial(trial_id).user_attrs == {"before": 1, "after": 2}


@pytest.mark.services
def test_a_write_that_would_differ_when_repeated_is_sent_once(postgres_url: str) -> None:
    storage = open_storage(postgres_url, StorageConfig(heartbeat_interval=1))
    study_id = storage.create_new_study([StudyDirection.MINIMIZE], "once")
    trial_id = storage.create_new_trial(study_id)

    def tell() -> bool:
        return storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])

    outcome = _terminate_during(postgres_url, "trials", tell)
    error = outcome.get("error")
    assert isinstance(error, BaseException) and is_connection_loss(error), "raised to the caller's compound retry"
    # Rolled back: the caller (ftlab's `tell`, retried as a whole) finds the trial unfinished and tells it again.
    assert storage.get_trial(trial_id).state is TrialState.RUNNING
    assert tell() is True
    assert storage.get_trial(trial_id).values == [1.0]
