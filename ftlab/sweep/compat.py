"""Every use of Optuna's and MLflow's private parts, in one place, each with the public API it stands in for and why.

ftlab drives trials with ask/tell from several processes (one per trial, workers on other machines), which Optuna's
public API only half covers: it has no public way to get a study's storage, a trial's id, or to rebuild a trial
handle in another process. MLflow logs system metrics only for the fluent API's "active run", which ftlab's trial
runs (created by id with MlflowClient) never are. pyproject.toml pins both below their next majors, and
tests/test_compat.py fails when any touchpoint below disappears. Storages without what ftlab needs get a clear error,
not an AttributeError.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, GrpcStorageProxy, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from ftlab.errors import UserError
from ftlab.sweep.resilience import retry_on_connection_loss


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
            :func:`ftlab.sweep.study.open_storage` with heartbeats).
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


# --- heartbeats for storages that keep none: Optuna's JournalStorage and GrpcStorageProxy -----------------------------

HEARTBEAT_ATTR = "ftlab:heartbeat"  # trial system attribute: the worker's clock (seconds since the epoch) at the beat

StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


class SystemAttrHeartbeat(BaseHeartbeat):
    """Optuna's heartbeat interface on top of any storage: a beat is a trial system attribute holding the worker's
    clock, and a RUNNING trial whose last beat is older than the grace period is stale. Public stand-in: none;
    ``BaseHeartbeat`` is private, and it is what ``optuna.storages.fail_stale_trials`` and
    ``RetryHeartbeatStaleTrialCallback`` go by, so reaping and retries work unchanged on these storages.

    Unlike RDBStorage (the database server's clock), the beats carry each worker's own clock: workers' clocks must
    agree to well within the grace period (NTP does). Mixed into a storage class first, so its methods are used.
    """

    _heartbeat_interval: int | None = None
    _grace_period: int | None = None
    _stale_trial_callback: StaleTrialCallback | None = None

    def configure_heartbeat(
        self, interval: int, grace_period: int | None, callback: StaleTrialCallback | None = None
    ) -> None:
        """Turn heartbeats on: beats every ``interval`` s, stale after ``grace_period`` s (default 2 intervals)."""
        self._heartbeat_interval = interval
        self._grace_period = grace_period or 2 * interval
        self._stale_trial_callback = callback

    def record_heartbeat(self, trial_id: int) -> None:
        # A trial told, or reaped by another worker, since the last beat has nothing left to keep alive.
        with suppress(UpdateFinishedTrialError):
            self._storage().set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self._grace_period is not None
        now = time.time()
        return [
            trial._trial_id
            for trial in self._running(study_id)
            if HEARTBEAT_ATTR in trial.system_attrs and now - trial.system_attrs[HEARTBEAT_ATTR] > self._grace_period
        ]

    def _running(self, study_id: int) -> list[FrozenTrial]:
        return self._storage().get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))

    def _storage(self) -> BaseStorage:
        assert isinstance(self, BaseStorage), "mix SystemAttrHeartbeat into a storage class"
        return self

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleTrialCallback | None:
        return self._stale_trial_callback


class HeartbeatJournalStorage(SystemAttrHeartbeat, JournalStorage):
    """Optuna's JournalStorage (a log file on a filesystem every worker shares) with ftlab's heartbeats."""


class HeartbeatGrpcStorageProxy(SystemAttrHeartbeat, GrpcStorageProxy):
    """Optuna's gRPC storage proxy client with ftlab's heartbeats, kept in the storage behind the proxy, and every
    call retried as a lost database connection is (:class:`_RetryingStub`)."""

    def _setup(self) -> None:
        # Public stand-in: none; the client's stub and its trials' cache are private, and every call goes through them.
        super()._setup()
        self._stub = _RetryingStub(self._stub)
        self._cache.grpc_client = self._stub


# The proxy answers a database error inside an operation (a restart, a dropped connection) with status UNKNOWN and
# Optuna's StorageInternalError message; the database has rolled that operation back, so it can be sent again.
_ROLLED_BACK_DETAILS = "An exception is raised during the commit"


def is_transient_grpc_error(error: BaseException) -> bool:
    """True for a gRPC storage call worth sending again: the proxy unreachable or restarting (UNAVAILABLE), or its
    database connection lost during the call (UNKNOWN with StorageInternalError's message)."""
    import grpc

    if not isinstance(error, grpc.RpcError) or not isinstance(error, grpc.Call):
        return False
    code = error.code()
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.UNKNOWN and _ROLLED_BACK_DETAILS in (error.details() or "")
    )


class _RetryingStub:
    """The proxy client's gRPC stub, each call retried with backoff while it fails transiently, for as long as ftlab
    rides out a lost database connection (``resilience.RECONNECT_TIMEOUT_S``). Through the proxy, a database restart
    otherwise reaches every worker as an error that ends it (benchmarks/scale_out.py, chaos ``pg_restart``)."""

    def __init__(self, stub: object) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Callable[..., object]:
        call = getattr(self._stub, name)

        def retried(*args: object, **kwargs: object) -> object:
            return retry_on_connection_loss(lambda: call(*args, **kwargs), also=is_transient_grpc_error)

        return retried


def rdb_backend(study: optuna.Study) -> RDBStorage | None:
    """The RDB storage behind the study, or None for any other kind. Optuna wraps an RDBStorage in a private
    cache (``_CachedStorage._backend``); public stand-in: none."""
    storage = storage_of(study)
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


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
        if storage.get_heartbeat_interval() is None:
            return []
        return [
            trial._trial_id
            for trial in storage._running(study_id_of(study))
            if HEARTBEAT_ATTR not in trial.system_attrs
        ]
    backend = rdb_backend(study)
    if backend is None or backend.heartbeat_interval is None:
        return []
    with backend.engine.connect() as connection:
        return list(connection.execute(_NEVER_BEATING, {"study_id": study_id_of(study)}).scalars().all())


def grace_period_of(study: optuna.Study) -> float | None:
    """Seconds without a heartbeat after which a running trial counts as dead; None without heartbeats."""
    storage = storage_of(study)
    if isinstance(storage, SystemAttrHeartbeat):
        return None if storage.get_heartbeat_interval() is None else float(storage._grace_period or 0)
    backend = rdb_backend(study)
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
