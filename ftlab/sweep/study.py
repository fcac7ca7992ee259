"""The Optuna study behind a sweep: storage, sampler, pruner and directions, built from the sweep file."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import RDBStorage

from ftlab.config import PrunerConfig, SamplerConfig, SweepConfig
from ftlab.tracking import DEFAULT_STORE_DIR

# SQLite serialises writers; with several trial processes reporting at once, wait for the lock instead of failing.
_SQLITE_LOCK_TIMEOUT_S = 120


def default_storage_url(root: Path | None = None) -> str:
    """SQLite beside MLflow's store in ``./mlruns``: one folder holds everything a local sweep produced."""
    store = (root or Path.cwd()) / DEFAULT_STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'optuna.db'}"


def storage_url_for(sweep: SweepConfig, override: str | None = None) -> str:
    return override or sweep.storage.url or default_storage_url()


def open_storage(url: str) -> RDBStorage:
    """An RDB storage that survives contention (SQLite lock waits) and dropped connections (pre-ping)."""
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": _SQLITE_LOCK_TIMEOUT_S}
    return RDBStorage(url, engine_kwargs=engine_kwargs)


def build_sampler(config: SamplerConfig, sweep: SweepConfig, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """Optuna's own sampler for ``config.name``, seeded with ``config.seed + seed_offset``.

    A resumed sweep passes the number of trials it already has as the offset: the same seed again would replay the
    same random draws and repeat finished trials, while this keeps a resumed sweep reproducible all the same.
    """
    seed = None if config.seed is None else config.seed + seed_offset
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


def build_pruner(config: PrunerConfig) -> optuna.pruners.BasePruner:
    """Optuna's own pruner; its steps are tokens seen, so ``n_warmup_tokens`` and resources are in tokens."""
    if config.name == "none":
        return optuna.pruners.NopPruner()
    if config.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_tokens
        )
    if config.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=config.min_resource_tokens, reduction_factor=config.reduction_factor
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=config.min_resource_tokens, reduction_factor=config.reduction_factor
    )


def _existing_trials(storage: RDBStorage, name: str) -> int:
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return 0


def create_or_load_study(sweep: SweepConfig, storage_url: str) -> optuna.Study:
    """The sweep's study, created on first use and resumed afterwards (its name is the sweep's name)."""
    storage = open_storage(storage_url)
    return optuna.create_study(
        study_name=sweep.name,
        storage=storage,
        sampler=build_sampler(sweep.sampler, sweep, seed_offset=_existing_trials(storage, sweep.name)),
        pruner=build_pruner(sweep.pruner),
        directions=[objective.direction for objective in sweep.objectives],
        load_if_exists=True,
    )


def load_study(sweep: SweepConfig, storage_url: str) -> optuna.Study:
    """An existing study, for reading (status, report, best)."""
    return optuna.load_study(study_name=sweep.name, storage=open_storage(storage_url))
