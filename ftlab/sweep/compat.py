"""Every use of Optuna's and MLflow's private parts, in one place, each with the public API it stands in for and why.

ftlab drives trials with ask/tell from several processes (one per trial, workers on other machines), which Optuna's
public API only half covers: it has no public way to get a study's storage, a trial's id, or to rebuild a trial
handle in another process. MLflow logs system metrics only for the fluent API's "active run", which ftlab's trial
runs (created by id with MlflowClient) never are. pyproject.toml pins both below their next majors, and
tests/test_compat.py fails when any touchpoint below disappears. Storages without what ftlab needs get a clear error,
not an AttributeError. The storage backends' own touchpoints (Optuna's private heartbeat interface, the gRPC client's
stub) live with their backend in :mod:`ftlab.storage`; tests/test_compat.py covers them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage, _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from ftlab.errors import UserError
from ftlab.storage import RetryingStorage, SystemAttrHeartbeat


class UnsupportedStorageError(UserError):
    """The study's storage lacks something ftlab's sweeps rely on (heartbeats, for one)."""


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage. Public stand-in: none (``Study`` does not expose it); ftlab needs it to record
    heartbeats and to read and settle single trials by id from the worker process."""
    return study._storage


def study_id_of(study: optuna.Study) -> int:
    """The study's id in its storage. Public stand-in: ``storage.get_study_id_from_name(study.study_name)``, one
    more query per call."""
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """A trial's id in the storage. Public stand-in: none; ids cross process boundaries (the trial process reopens
    the trial by id) because numbers are only unique within a study."""
    return trial._trial_id


def trial_handle(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A live ``Trial`` for a trial that was asked for elsewhere (another thread or process). Public stand-in:
    ``study.ask()`` returns one, but only to the process that asked; the class is public, its constructor is
    documented as not meant for users."""
    return optuna.Trial(study, trial_id)


def record_heartbeat(study: optuna.Study, trial_id: int) -> None:
    """Record a heartbeat for a running trial. Public stand-in: ``Study.optimize`` runs a heartbeat thread itself,
    but ftlab's trials run in other processes, so the worker beats for them.

    Raises:
        UnsupportedStorageError: the storage keeps no heartbeats (an Optuna storage used as is, not opened by
            :func:`ftlab.storage.open_storage` with heartbeats).
    """
    storage = storage_of(study)
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        raise UnsupportedStorageError.single(
            f"the study's storage ({type(storage).__name__}) keeps no heartbeats, which ftlab needs to find and "
            "retry the trials of a worker that died",
            where="--storage",
            fix="use an ftlab storage URL (sqlite:///…, postgresql://…, grpc://HOST:PORT or journal:///PATH) with "
            "`storage.heartbeat_interval` set",
        )
    storage.record_heartbeat(trial_id)


def rdb_backend(study: optuna.Study) -> RDBStorage | None:
    """The RDB storage behind the study, or None for any other kind. Optuna wraps an RDBStorage in a private
    cache (``_CachedStorage._backend``), and ftlab that in :class:`ftlab.storage.RetryingStorage`; public stand-in:
    none."""
    storage = storage_of(study)
    while not isinstance(storage, RDBStorage) and isinstance(storage, RetryingStorage | _CachedStorage):
        storage = storage._backend
    return storage if isinstance(storage, RDBStorage) else None


# Optuna's stale-trial check skips RUNNING trials that never sent a heartbeat. Public stand-in: none; this reads
# Optuna's own tables (`trials`, `trial_heartbeats`), whose layout belongs to its schema version.
_NEVER_BEATING = sqlalchemy.text(
    "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL"
)


def running_trials_without_heartbeat(study: optuna.Study) -> list[int]:
    """Ids of RUNNING trials that never recorded a heartbeat (empty for storages without heartbeats)."""
    storage = storage_of(study)
    if isinstance(storage, SystemAttrHeartbeat):
        return storage.running_without_heartbeat(study_id_of(study))
    backend = rdb_backend(study)
    if backend is None or backend.heartbeat_interval is None:
        return []
    with backend.engine.connect() as connection:
        return list(connection.execute(_NEVER_BEATING, {"study_id": study_id_of(study)}).scalars().all())


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Ids of RUNNING trials whose heartbeat is older than the grace period, as ``fail_stale_trials`` finds them.
    Public stand-in: none; ``fail_stale_trials`` fails them at once, and the reaper must look first (a trial that had
    finished is told COMPLETE, not failed)."""
    storage = storage_of(study)
    assert isinstance(storage, BaseHeartbeat), "heartbeats are on: heartbeat_interval_of(study) is not None"
    return storage._get_stale_trial_ids(study_id_of(study))


def grace_period_of(study: optuna.Study) -> float | None:
    """Seconds without a heartbeat after which a running trial counts as dead; None without heartbeats."""
    storage = storage_of(study)
    backend = storage if isinstance(storage, SystemAttrHeartbeat) else rdb_backend(study)
    if backend is None or backend.heartbeat_interval is None:
        return None
    return float(backend.grace_period or 2 * backend.heartbeat_interval)


def heartbeat_interval_of(study: optuna.Study) -> float | None:
    """Seconds between a running trial's heartbeats; None when the storage keeps none."""
    storage = storage_of(study)
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        return float(storage.get_heartbeat_interval() or 0)
    return None


def set_trial_state(study: optuna.Study, trial_id: int, state: TrialState) -> bool:
    """Finish a trial that is not this process's to tell (a dead worker's). Whether this call changed it."""
    return storage_of(study).set_trial_state_values(trial_id, state)


# Seconds between samples when the user sets none (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins): MLflow's 10 s
# default leaves a minute-long trial with five points.
SYSTEM_METRICS_INTERVAL_S = 5


@contextmanager
def system_metrics(run_id: str, tracking_uri: str) -> Iterator[None]:
    """Log MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network; GPU utilisation and
    memory where ``pynvml`` finds a GPU) to the run ``run_id`` while the block runs. Public stand-in:
    ``mlflow.start_run(log_system_metrics=True)``, for the fluent API's active run only; this is its monitor, given
    the run by id."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()  # before the run ends: what it collected is flushed while the run still takes metrics
