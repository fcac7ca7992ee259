"""Which database errors count as a lost connection, and that only those are retried."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
import sqlalchemy.exc

from ftlab.storage import is_connection_loss, retry_on_connection_loss
from tests.support.services import postgres_database

pytest_plugins = ["tests.support.services"]


def _operational_error() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


def _wrapped_by_optuna(cause: Exception) -> optuna.exceptions.StorageInternalError:
    try:
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from cause
    except optuna.exceptions.StorageInternalError as error:
        return error


def test_lost_connections_are_recognised_also_inside_optuna_s_wrapper() -> None:
    assert is_connection_loss(_operational_error())
    assert is_connection_loss(_wrapped_by_optuna(_operational_error()))
    integrity = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert not is_connection_loss(integrity)
    assert not is_connection_loss(_wrapped_by_optuna(sqlalchemy.exc.DataError("INSERT", {}, Exception("too long"))))
    assert not is_connection_loss(ValueError("bad value"))


def _pending_rollback_after(first: Exception) -> optuna.exceptions.StorageInternalError:
    """What Optuna raises when its fallback query runs in the transaction the first error left invalid."""
    try:
        try:
            raise first
        except Exception:
            raise sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")  # noqa: B904
    except sqlalchemy.exc.PendingRollbackError as pending:
        return _wrapped_by_optuna(pending)


def test_a_pending_rollback_counts_as_what_left_the_transaction_invalid() -> None:
    assert is_connection_loss(_pending_rollback_after(_operational_error()))
    integrity = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert not is_connection_loss(_pending_rollback_after(integrity))
    assert not is_connection_loss(sqlalchemy.exc.PendingRollbackError("no context"))


def test_a_collision_creating_the_schema_is_recognised() -> None:
    from ftlab.storage import is_concurrent_schema_creation

    collision = sqlalchemy.exc.IntegrityError(
        "CREATE TABLE studies",
        {},
        Exception('duplicate key value violates unique constraint "pg_type_typname_nsp_index"'),
    )
    assert is_concurrent_schema_creation(_wrapped_by_optuna(collision))
    assert not is_concurrent_schema_creation(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_connection_loss(collision)  # retried only where the caller asks for it: opening the storage


def test_a_lost_connection_is_retried_until_it_works() -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise _operational_error()
        return "done"

    assert retry_on_connection_loss(flaky, timeout_s=30) == "done"
    assert len(attempts) == 3


def test_other_errors_are_not_retried() -> None:
    attempts = []

    def broken() -> None:
        attempts.append(1)
        raise ValueError("bad value")

    with pytest.raises(ValueError):
        retry_on_connection_loss(broken, timeout_s=30)
    assert len(attempts) == 1


@pytest.mark.services
def test_a_real_terminated_session_is_a_connection_loss_and_the_retry_reconnects() -> None:
    with postgres_database("ftlab_resilience") as url:
        engine = sqlalchemy.create_engine(url, pool_pre_ping=False)
        with engine.connect() as connection:
            pid = connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
        admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
        with admin.connect() as connection:  # what a database restart does to the pooled connection
            connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()

        def query() -> int:
            with engine.connect() as connection:
                return int(connection.execute(sqlalchemy.text("SELECT 1")).scalar())

        with pytest.raises(sqlalchemy.exc.DBAPIError) as lost:
            query()  # the pool hands out the dead connection: without pre-ping this fails
        assert is_connection_loss(lost.value)
        assert retry_on_connection_loss(query, timeout_s=30) == 1
        engine.dispose()


def _heartbeat_study(tmp_path, grace_period: int = 1) -> optuna.Study:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=grace_period
    )
    return optuna.create_study(study_name="orphans", storage=storage)


def test_a_trial_asked_for_but_never_started_is_failed_after_the_grace_period(tmp_path) -> None:
    from ftlab.sweep.reaper import fail_orphaned_trials
    from tests.support.clock import StudyClock

    study = _heartbeat_study(tmp_path)
    clock = StudyClock(study)
    orphan = study.ask()  # as if the connection dropped before its first heartbeat: nobody runs it
    running = study.ask()
    study._storage.record_heartbeat(running._trial_id)
    assert fail_orphaned_trials(study, clock) == []  # younger than the grace period: its worker may be about to beat
    clock.advance(1.2)
    assert fail_orphaned_trials(study, clock) == [orphan.number]
    states = {trial.number: trial.state for trial in study.get_trials()}
    assert states == {orphan.number: optuna.trial.TrialState.FAIL, running.number: optuna.trial.TrialState.RUNNING}
    assert "never ran" in study.get_trials()[orphan.number].user_attrs["fail_reason"]


def test_retrying_a_preempted_trial_twice_enqueues_one_retry(tmp_path) -> None:
    from ftlab.sweep.reaper import retry_trial

    study = _heartbeat_study(tmp_path)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    retry_trial(study, trial._trial_id)
    retry_trial(study, trial._trial_id)  # an attempt whose connection dropped after the commit, repeated
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].params == trial.params
