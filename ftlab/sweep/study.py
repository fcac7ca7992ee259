"""The Optuna study behind a sweep: storage, sampler, pruner and directions from the sweep file; asking for trials
and telling it their outcome.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import numpy as np
import optuna
import sqlalchemy
import sqlalchemy.exc
from filelock import FileLock
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ftlab import paths
from ftlab.config import SamplerConfig, StorageConfig, SweepConfig, TrainConfig
from ftlab.errors import ConfigError
from ftlab.sweep import compat
from ftlab.sweep.record import BASELINE_ATTR, SWEEP_ATTR, SWEEP_CHANGES_ATTR, TrialRecord
from ftlab.tracking import flatten

logger = logging.getLogger(__name__)

StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]

# SQLite serialises writers; with several trial processes reporting at once, wait for the lock instead of failing.
_SQLITE_LOCK_TIMEOUT_S = 120
# The study lock behind a gRPC proxy (see _StorageMutex): a holder that died is presumed dead after this long. Longer
# than any section the lock guards may take, including an MLflow call under it during a tracking-server outage.
_STORAGE_MUTEX_LEASE_S = 120.0


def storage_url_for(sweep: SweepConfig, override: str | None = None) -> str:
    """``--storage``, else the sweep file's ``storage.url``, else SQLite under ``./mlruns``."""
    return override or sweep.storage.url or paths.default_storage_url()


def open_storage(
    url: str, config: StorageConfig | None = None, on_stale_trial: StaleTrialCallback | None = None
) -> BaseStorage:
    """The study storage at ``url``: an SQLAlchemy URL (``sqlite:///``, ``postgresql://``), Optuna's gRPC storage
    proxy (``grpc://HOST:PORT``), or Optuna's JournalStorage on a file (``journal:///PATH``).

    An RDB storage survives contention (SQLite lock waits) and dropped connections (pre-ping). With ``config``,
    running trials send heartbeats and a trial silent for ``grace_period`` seconds is failed by whichever worker looks
    next (``fail_stale_trials``), which then calls ``on_stale_trial``. The gRPC and journal storages keep no
    heartbeats of their own; ftlab's go into a trial system attribute there (:class:`compat.SystemAttrHeartbeat`).
    """
    storage = _optuna_storage(url)
    if storage is not None:
        if config is not None:
            storage.configure_heartbeat(config.heartbeat_interval, config.grace_period, on_stale_trial)
        return storage
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if (database := paths.sqlite_file(url)) is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs["connect_args"] = {"timeout": _SQLITE_LOCK_TIMEOUT_S}
    elif config is not None:
        # A worker's study: one connection kept for the worker's lifetime. SQLAlchemy's default pool keeps up to 5
        # idle, and a worker's threads fill it once (benchmarks/scale_out.py: 6 connections a worker before this),
        # which a database's max_connections (100 by default) runs out of at about 16 workers.
        engine_kwargs["pool_size"] = 1
    else:
        # Everyone else uses the study for a few operations: a trial process (load it, one report per evaluation,
        # while it trains for minutes), `ftlab status`, the preflight's schema check. None of them should hold an
        # idle connection while it trains or after it is done; a connection per operation costs milliseconds.
        engine_kwargs["poolclass"] = sqlalchemy.NullPool
    heartbeat: dict[str, Any] = {}
    if config is not None:
        heartbeat = {
            "heartbeat_interval": config.heartbeat_interval,
            "grace_period": config.grace_period,
            "heartbeat_stale_trial_callback": on_stale_trial,
        }
    return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)


def _optuna_storage(url: str) -> compat.SystemAttrHeartbeat | None:
    """The gRPC proxy client or the journal storage for their URLs; None for an SQLAlchemy URL."""
    if (journal := paths.journal_file(url)) is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return compat.HeartbeatJournalStorage(JournalFileBackend(str(journal)))
    if (address := paths.grpc_address(url)) is not None:
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
            return compat.HeartbeatGrpcStorageProxy(host=address[0], port=address[1])
    return None


def storage_problem(url: str, timeout_s: float = 5) -> str | None:
    """Why the gRPC proxy or journal file at ``url`` cannot be used now, or None when it can (and for other URLs,
    which :mod:`ftlab.preflight` checks itself)."""
    if (journal := paths.journal_file(url)) is not None:
        folder = journal.resolve().parent
        while not folder.exists():
            folder = folder.parent
        return None if os.access(folder, os.W_OK) else f"cannot write the journal file's folder {folder}"
    try:
        address = paths.grpc_address(url)
    except ValueError as error:
        return str(error)
    if address is None:
        return None
    try:
        proxy = open_storage(url)
        assert isinstance(proxy, compat.HeartbeatGrpcStorageProxy)
        proxy.wait_server_ready(timeout=timeout_s)
        proxy.close()
    except (ConnectionError, ConfigError) as error:
        return f"no gRPC storage proxy answers at {address[0]}:{address[1]} within {timeout_s:.0f} s ({error})"
    return None


class _StorageMutex:
    """A lock made of a study that exists while the lock is held, for storages that offer no lock of their own (the
    gRPC proxy): creating a study whose name is taken fails (``DuplicatedStudyError``), atomically, in the database
    behind the proxy, so exactly one worker holds it.

    A holder that died leaves its lock study behind: a waiter that has seen the same one for ``lease_s`` seconds
    deletes it by id. Ids are never reused, so two waiters breaking the same dead lock cannot delete a newer one.
    """

    def __init__(self, storage: BaseStorage, name: str, lease_s: float = _STORAGE_MUTEX_LEASE_S) -> None:
        self._storage = storage
        self._name = name
        self._lease_s = lease_s

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
            if time.monotonic() - first_seen.setdefault(holder, time.monotonic()) > self._lease_s:
                logger.warning(
                    "study lock %r held for over %.0f s: taking its holder for dead", self._name, self._lease_s
                )
                with suppress(KeyError):
                    self._storage.delete_study(holder)
                continue
            time.sleep(random.uniform(0.01, 0.05))  # jittered: waiters do not retry in lockstep


class StudyLock:
    """Serialises "check the budget, then ask for a trial" across every worker process of a study.

    PostgreSQL: a session advisory lock keyed by the study name. SQLite: a lock file beside the database. A journal
    file: a lock file beside it. A gRPC proxy: a lock study in the storage behind it (:class:`_StorageMutex`).
    Without it, two workers could both see one trial left in the budget and both start one.

    ``purpose`` names a lock of its own for other work that workers must take turns at (``"best"``: marking the best
    trial in MLflow), so that it does not hold up the workers that are starting trials.
    """

    def __init__(self, storage_url: str, study_name: str, purpose: str = "study") -> None:
        self.purpose = purpose
        self._file_lock: FileLock | None = None
        self._engine: sqlalchemy.Engine | None = None
        self._mutex: _StorageMutex | None = None
        name = study_name if purpose == "study" else f"{study_name}:{purpose}"
        suffix = "" if purpose == "study" else f".{purpose}"
        self._key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        if (database := paths.sqlite_file(storage_url)) is not None:
            self._file_lock = FileLock(f"{database}{suffix}.lock")
        elif (journal := paths.journal_file(storage_url)) is not None:
            # Not `{journal}.lock`: Optuna's own lock for writing the journal is a symlink of that name.
            self._file_lock = FileLock(f"{journal}.ftlab{suffix}.lock")
        elif storage_url.startswith("postgresql"):
            self._engine = sqlalchemy.create_engine(storage_url, pool_pre_ping=True, poolclass=sqlalchemy.NullPool)
        elif paths.grpc_address(storage_url) is not None:
            self._mutex = _StorageMutex(open_storage(storage_url), f"ftlab.lock:{name}")

    @contextmanager
    def held(self) -> Iterator[None]:
        if self._file_lock is not None:
            with self._file_lock:
                yield
            return
        if self._mutex is not None:
            with self._mutex.held():
                yield
            return
        if self._engine is None:
            yield
            return
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


# --- sampler and pruner ----------------------------------------------------------------------------------------------


def sampler_seed(seed: int | None, existing_trials: int = 0, salt: int = 0) -> int | None:
    """The sampler's seed: the file's own for a new study, else one derived from (seed, existing trials, salt).

    A resumed sweep must not reuse the seed (it would replay the same draws and repeat finished trials), yet stays
    reproducible. Workers add a random salt, so that two joining at the same moment do not draw alike. The three are
    mixed by numpy's SeedSequence rather than added: with a sum, (1 trial, salt 5) and (0 trials, salt 6) collide.
    """
    if seed is None or (existing_trials == 0 and salt == 0):
        return seed
    return int(np.random.SeedSequence([seed, existing_trials, salt]).generate_state(1)[0])


def build_sampler(
    config: SamplerConfig, sweep: SweepConfig, existing_trials: int = 0, salt: int = 0
) -> optuna.samplers.BaseSampler:
    """Optuna's own sampler for ``config.name``, seeded by :func:`sampler_seed`."""
    seed = sampler_seed(config.seed, existing_trials, salt)
    startup = {} if config.n_startup_trials is None else {"n_startup_trials": config.n_startup_trials}
    if config.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, **startup)
    if config.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.name == "grid":
        grid = {name: spec.choices for name, spec in sweep.search.items()}  # type: ignore[union-attr]
        return optuna.samplers.GridSampler(grid, seed=seed)
    if config.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    if config.name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.GPSampler(seed=seed, **startup)


def build_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    """Optuna's own pruner; its steps are tokens seen, so ``n_warmup_tokens`` and resources are in tokens.

    ``min_resource_tokens: auto`` is the first fidelity point (``eval_tokens``) where the sweep sets one: Optuna's own
    "auto" (1 % of the first finished trial's last step) would put several rungs before the first evaluation, where
    one report would then have to clear them all at once. The pruner is not stored with the study: every process
    that reports to a trial builds it from the sweep file, or Optuna's default would decide.
    """
    config = sweep.pruner
    if config.name == "none":
        return optuna.pruners.NopPruner()
    if config.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_tokens
        )
    min_resource = config.min_resource_tokens
    if min_resource == "auto" and isinstance(sweep.train.get("eval_tokens"), int):
        min_resource = sweep.train["eval_tokens"]
    if config.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=min_resource, reduction_factor=config.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(min_resource=min_resource, reduction_factor=config.reduction_factor)


# --- opening the study -----------------------------------------------------------------------------------------------


def _existing_trials(storage: BaseStorage, name: str) -> int:
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return 0


def create_or_load_study(
    sweep: SweepConfig, storage_url: str, on_stale_trial: StaleTrialCallback | None = None, seed_salt: int = 0
) -> optuna.Study:
    """The sweep's study, created on first use and resumed afterwards (its name is the sweep's name).

    ``seed_salt`` keeps worker processes that start at the same moment from drawing the same trials.
    """
    storage = open_storage(storage_url, sweep.storage, on_stale_trial)
    study = optuna.create_study(
        study_name=sweep.name,
        storage=storage,
        sampler=build_sampler(sweep.sampler, sweep, _existing_trials(storage, sweep.name), seed_salt),
        pruner=build_pruner(sweep),
        directions=[objective.direction for objective in sweep.objectives],
        load_if_exists=True,
    )
    if study.metric_names is None:  # Optuna's plots and optuna-dashboard then say "eval/loss", not "Objective Value"
        study.set_metric_names([objective.metric for objective in sweep.objectives])
    return study


def sweep_signature(sweep: SweepConfig, baseline: TrainConfig) -> dict[str, Any]:
    """What makes the study's trials comparable: its search space, its objectives, and the baseline's training
    settings (the fixed ``train`` block included). Folders are left out: they differ between machines."""
    return {
        "search": {name: spec.model_dump(mode="json") for name, spec in sweep.search.items()},
        "objective": [objective.model_dump(mode="json") for objective in sweep.objectives],
        "baseline": baseline.model_dump(mode="json", exclude={"output_dir"}),
    }


def signature_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for every setting that differs between two signatures."""
    before, after = flatten(old), flatten(new)
    return [
        f"{key}: {before.get(key, '(unset)')} → {after.get(key, '(unset)')}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def remember_sweep(study: optuna.Study, signature: dict[str, Any], source: str, accept_changes: bool) -> None:
    """Record the sweep with a new study; on a resume, refuse a sweep file whose search space, objective or
    baseline changed (its trials would be compared, and pruned, against the old ones), unless the change is accepted,
    which is then recorded.

    Raises:
        ConfigError: the sweep changed and ``accept_changes`` is off, or an objective's direction changed (an
            Optuna study keeps its directions).
    """
    old = study.user_attrs.get(SWEEP_ATTR)
    if old == signature:
        return
    if old is not None:
        changes = signature_changes(old, signature)
        directions = [objective["direction"] for objective in signature["objective"]]
        if directions != [direction.name.lower() for direction in study.directions]:
            raise ConfigError.single(
                f"the study {study.study_name!r} optimises in another direction; an Optuna study keeps its directions",
                where=f"{source}:objective",
                value=directions,
                fix="give the sweep a new `name:` to start a new study",
            )
        if not accept_changes:
            raise ConfigError.single(
                f"the sweep changed since study {study.study_name!r} started, and its trials would be compared (and "
                f"pruned) against the old ones: {'; '.join(changes)}",
                where=source,
                fix="give the sweep a new `name:` to start a new study, or pass --accept-changes to go on with this "
                "one (the change is recorded in the study)",
            )
        history = [*study.user_attrs.get(SWEEP_CHANGES_ATTR, []), {"at": _now(), "changes": changes}]
        study.set_user_attr(SWEEP_CHANGES_ATTR, history)
    study.set_user_attr(SWEEP_ATTR, signature)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def load_study(sweep: SweepConfig, storage_url: str) -> optuna.Study:
    """An existing study, for reading (status, report, best).

    Raises:
        KeyError: no study of that name in the storage (also when a local SQLite or journal file does not exist: it
            is not created, so a command that only reads leaves nothing behind).
    """
    database = paths.sqlite_file(storage_url) or paths.journal_file(storage_url)
    if database is not None and not database.is_file():
        raise KeyError(sweep.name)
    return optuna.load_study(study_name=sweep.name, storage=open_storage(storage_url), pruner=build_pruner(sweep))


# --- asking and telling ----------------------------------------------------------------------------------------------


def enqueue_baseline(study: optuna.Study, point: dict[str, Any]) -> None:
    """The documented recipe is trial 0 of every sweep, so the search is always measured against it.

    A grid sampler ignores enqueued trials and would run the baseline's point a second time; there the grid runs it
    once and the runner marks that trial as the baseline.
    """
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        return
    # Again when every baseline trial so far failed: a resumed sweep (the cause fixed) must measure the baseline.
    pending_or_done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    baselines = [trial for trial in study.get_trials(deepcopy=False) if trial.user_attrs.get(BASELINE_ATTR)]
    if not any(trial.state in pending_or_done for trial in baselines):
        study.enqueue_trial(point, user_attrs={BASELINE_ATTR: True}, skip_if_exists=False)


def grid_exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial, with its first heartbeat recorded at once, so that a dead worker's trial is always found."""
    trial = study.ask()
    compat.record_heartbeat(study, compat.trial_id_of(trial))
    return trial


def tell(study: optuna.Study, trial_id: int, record: TrialRecord) -> None:
    """Store a trial's outcome: its figures or reason as user attributes, then its state (and values).

    Safe to repeat: an attempt whose connection dropped after the commit has told it already.
    """
    trial = compat.trial_handle(study, trial_id)
    if compat.storage_of(study).get_trial(trial_id).state.is_finished():
        return
    for key, value in record.to_user_attrs().items():
        trial.set_user_attr(key, value)
    if record.state == "COMPLETE":
        study.tell(trial, record.values)
    else:
        study.tell(trial, state=TrialState.PRUNED if record.state == "PRUNED" else TrialState.FAIL)
