"""Optuna's gRPC storage proxy (``grpc://HOST:PORT``): only the proxy holds database connections, for hundreds of
workers. Heartbeats go into trial system attributes; the study lock is a study of its own (:class:`_StorageMutex`).
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage, GrpcStorageProxy
from optuna.study import StudyDirection

from ftlab.config import StorageConfig
from ftlab.errors import ConfigError
from ftlab.storage._base import BaseStorageBackend, StaleTrialCallback, StudyMutex, lock_name
from ftlab.storage._heartbeat import SystemAttrHeartbeat
from ftlab.storage._resilience import retry_on_connection_loss

logger = logging.getLogger(__name__)

# The study lock behind a gRPC proxy (see _StorageMutex): a holder that died is presumed dead after this long. Longer
# than any section the lock guards may take, including an MLflow call under it during a tracking-server outage.
_STORAGE_MUTEX_LEASE_S = 120.0

# The proxy answers a database error inside an operation (a restart, a dropped connection) with status UNKNOWN and
# Optuna's StorageInternalError message; the database has rolled that operation back, so it can be sent again.
_ROLLED_BACK_DETAILS = "An exception is raised during the commit"


def grpc_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``grpc://HOST:PORT`` URL.

    Raises:
        ConfigError: the URL has no numeric port.
    """
    host, _, port = url.removeprefix("grpc://").rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        message = f"a gRPC storage URL is grpc://HOST:PORT, but got {url!r}"
        raise ConfigError.single(message, where="--storage", value=url, fix="give the proxy's port")
    return host, int(port)


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
    rides out a lost database connection (``RECONNECT_TIMEOUT_S``). Through the proxy, a database restart otherwise
    reaches every worker as an error that ends it (benchmarks/scale_out.py, chaos ``pg_restart``)."""

    def __init__(self, stub: object) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Callable[..., object]:
        call = getattr(self._stub, name)

        def retried(*args: object, **kwargs: object) -> object:
            return retry_on_connection_loss(lambda: call(*args, **kwargs), also=is_transient_grpc_error)

        return retried


class HeartbeatGrpcStorageProxy(SystemAttrHeartbeat, GrpcStorageProxy):
    """Optuna's gRPC storage proxy client with ftlab's heartbeats, kept in the storage behind the proxy, and every
    call retried as a lost database connection is (:class:`_RetryingStub`)."""

    def _setup(self) -> None:
        # Public stand-in: none; the client's stub and its trials' cache are private, and every call goes through them.
        super()._setup()
        self._stub = _RetryingStub(self._stub)
        self._cache.grpc_client = self._stub


class _StorageMutex(StudyMutex):
    """A lock made of a study that exists while the lock is held, for storages that offer no lock of their own (the
    gRPC proxy): creating a study whose name is taken fails (``DuplicatedStudyError``), atomically, in the database
    behind the proxy, so exactly one worker holds it.

    A holder that died leaves its lock study behind: a waiter that has seen the same one for ``_STORAGE_MUTEX_LEASE_S``
    deletes it by id. Ids are never reused, so two waiters breaking the same dead lock cannot delete a newer one.
    """

    def __init__(self, storage: BaseStorage, name: str) -> None:
        self._storage = storage
        self._name = name

    @contextmanager
    def held(self) -> Iterator[None]:
        lock_id = self._acquire()
        try:
            yield
        finally:
            with suppress(KeyError):  # broken by a waiter that took this holder for dead
                self._storage.delete_study(lock_id)

    def _acquire(self) -> int:
        first_seen: dict[int, float] = {}
        while True:
            with suppress(DuplicatedStudyError):
                return self._storage.create_new_study([StudyDirection.MINIMIZE], self._name)
            try:
                holder = self._storage.get_study_id_from_name(self._name)
            except KeyError:
                continue  # released in between
            if time.monotonic() - first_seen.setdefault(holder, time.monotonic()) > _STORAGE_MUTEX_LEASE_S:
                logger.warning(
                    "study lock %r held for over %.0f s: taking its holder for dead", self._name, _STORAGE_MUTEX_LEASE_S
                )
                with suppress(KeyError):
                    self._storage.delete_study(holder)
                continue
            time.sleep(random.uniform(0.01, 0.05))  # jittered: waiters do not retry in lockstep


class GrpcBackend(BaseStorageBackend):
    """``grpc://HOST:PORT``: Optuna's gRPC storage proxy (``pip install 'ftlab[grpc]'`` for its client)."""

    fix = "start the proxy (docs/scale-out.md, section 9), or check HOST:PORT"

    def handles(self, url: str) -> bool:
        return url.startswith("grpc://")

    def open(
        self, url: str, config: StorageConfig | None = None, on_stale_trial: StaleTrialCallback | None = None
    ) -> BaseStorage:
        host, port = grpc_address(url)
        try:
            import grpc  # noqa: F401  (Optuna's proxy client needs it: the extra ftlab[grpc])
        except ImportError:
            raise ConfigError.single(
                "a grpc:// storage needs the grpcio package",
                where="--storage",
                value=url,
                fix="pip install 'ftlab[grpc]' (or grpcio)",
            ) from None
        with warnings.catch_warnings():  # "experimental": chosen knowingly, and docs/scale-out.md says so
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = HeartbeatGrpcStorageProxy(host=host, port=port)
        return storage.configure_heartbeat(config, on_stale_trial)

    def mutex(self, url: str, study_name: str, purpose: str) -> StudyMutex:
        return _StorageMutex(self.open(url), f"ftlab.lock:{lock_name(study_name, purpose)}")

    def problem(self, url: str, timeout_s: float) -> str | None:
        try:
            host, port = grpc_address(url)
        except ConfigError as error:
            return error.problems[0].message
        try:
            proxy = self.open(url)
            assert isinstance(proxy, HeartbeatGrpcStorageProxy)
            proxy.wait_server_ready(timeout=timeout_s)
            proxy.close()
        except (ConnectionError, ConfigError) as error:
            return f"no gRPC storage proxy answers at {host}:{port} within {timeout_s:.0f} s ({error})"
        return None
