"""The Optuna study behind a sweep: sampler, pruner and directions from the sweep file; asking for trials and
telling it their outcome. Where the study lives (storage URLs, locks, reconnecting) is :mod:`ftlab.storage`'s.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from ftlab.config import SamplerConfig, SweepConfig, TrainConfig
from ftlab.demo import load_sweep_with_assets
from ftlab.errors import ConfigError, UserError
from ftlab.hints import shell_command
from ftlab.record import BASELINE_ATTR, SWEEP_ATTR, SWEEP_CHANGES_ATTR, TrialRecord
from ftlab.storage import StaleTrialCallback, open_storage, storage_exists, storage_url_for
from ftlab.sweep import compat, identity
from ftlab.sweep.cluster_task import SLURM_TASK_ATTR, current_slurm_task
from ftlab.tracking import flatten

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
        # constant_liar: parallel workers see each other's running trials (as bad ones) and so do not all propose
        # the same point. Explicit: Optuna 4, which ftlab also supports, leaves it off.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, **startup)
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


def create_or_load_study(
    sweep: SweepConfig, storage_url: str, on_stale_trial: StaleTrialCallback | None = None, seed_salt: int = 0
) -> optuna.Study:
    """The sweep's study, created on first use and resumed afterwards (its name is the sweep's name).

    ``seed_salt`` keeps worker processes that start at the same moment from drawing the same trials.
    """
    storage = open_storage(storage_url, sweep.storage, on_stale_trial)
    try:
        existing_trials = len(storage.get_all_trials(storage.get_study_id_from_name(sweep.name), deepcopy=False))
    except KeyError:
        existing_trials = 0  # a new study
    study = optuna.create_study(
        study_name=sweep.name,
        storage=storage,
        sampler=build_sampler(sweep.sampler, sweep, existing_trials, seed_salt),
        pruner=build_pruner(sweep),
        directions=[objective.direction for objective in sweep.objectives],
        load_if_exists=True,
    )
    if study.metric_names is None:  # Optuna's plots and optuna-dashboard then say "eval/loss", not "Objective Value"
        study.set_metric_names([objective.metric for objective in sweep.objectives])
    return study


def sweep_signature(sweep: SweepConfig, baseline: TrainConfig, data_fingerprint: str | None = None) -> dict[str, Any]:
    """What makes the study's trials comparable: its search space, its objectives, the baseline's training
    settings (the fixed ``train`` block included), the model, and the data (its settings and the prepared data's
    ``data_fingerprint``, see :mod:`ftlab.sweep.identity`). Folders are left out: they differ between machines."""
    return {
        "search": {name: spec.model_dump(mode="json") for name, spec in sweep.search.items()},
        "objective": [objective.model_dump(mode="json") for objective in sweep.objectives],
        "baseline": baseline.model_dump(mode="json", exclude={"output_dir"}),
        identity.MODEL_KEY: identity.model_identity(sweep),
        **identity.data_identity(sweep, data_fingerprint),
    }


def signature_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old → new`` for every setting that differs between two signatures."""
    before, after = flatten(old), flatten(new)
    return [
        f"{key}: {before.get(key, '(unset)')} → {after.get(key, '(unset)')}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def refuse_changes(study: optuna.Study, signature: dict[str, Any], source: str, fix: str) -> None:
    """Refuse to go on with ``study`` if the sweep it remembers differs from ``signature``; records nothing. A study
    that remembers none, or no model and data (an older ftlab did not record them), differs in nothing there.

    Raises:
        ConfigError: what changed, with ``fix``.
    """
    old = study.user_attrs.get(SWEEP_ATTR)
    if old is not None and (changes := signature_changes(*identity.comparable(old, signature))):
        raise _changed(study, changes, source, fix)


def _changed(study: optuna.Study, changes: list[str], source: str, fix: str) -> ConfigError:
    return ConfigError.single(
        f"the sweep changed since study {study.study_name!r} started, and its trials would be compared (and "
        f"pruned) against the old ones: {'; '.join(changes)}",
        where=source,
        fix=fix,
    )


ACCEPT_CHANGES_FIX = (
    "give the sweep a new `name:` to start a new study, or pass --accept-changes to go on with this one (the change "
    "is recorded in the study)"
)


def remember_sweep(
    study: optuna.Study,
    signature: dict[str, Any],
    source: str,
    accept_changes: bool,
    changes_fix: str = ACCEPT_CHANGES_FIX,
) -> None:
    """Record the sweep with a new study; on a resume, refuse a sweep file whose search space, objective, baseline,
    model or data changed (its trials would be compared, and pruned, against the old ones), unless the change is
    accepted, which is then recorded. ``changes_fix`` is the refusal's fix (commands without --accept-changes give
    their own).

    A study written before ftlab remembered the model and the data has nothing to compare them with: they are
    recorded on its first resume, without a refusal (see :func:`ftlab.sweep.identity.comparable`).

    Raises:
        ConfigError: the sweep changed and ``accept_changes`` is off, or an objective's direction changed (an
            Optuna study keeps its directions).
    """
    old = study.user_attrs.get(SWEEP_ATTR)
    if old == signature:
        return
    if old is not None:
        old, signature = identity.comparable(old, signature)
    if old is not None and old != signature:
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
            raise _changed(study, changes, source, changes_fix)
        at = datetime.now(UTC).isoformat(timespec="seconds")
        history = [*study.user_attrs.get(SWEEP_CHANGES_ATTR, []), {"at": at, "changes": changes}]
        study.set_user_attr(SWEEP_CHANGES_ATTR, history)
    study.set_user_attr(SWEEP_ATTR, signature)


def load_study(sweep: SweepConfig, storage_url: str) -> optuna.Study:
    """An existing study, for reading (status, report, best).

    Raises:
        KeyError: no study of that name in the storage (also when a local SQLite or journal file does not exist: it
            is not created, so a command that only reads leaves nothing behind).
    """
    if not storage_exists(storage_url):
        raise KeyError(sweep.name)
    return optuna.load_study(study_name=sweep.name, storage=open_storage(storage_url), pruner=build_pruner(sweep))


# --- asking and telling ----------------------------------------------------------------------------------------------


def enqueue_baseline(study: optuna.Study, point: dict[str, Any]) -> None:
    """The documented recipe is trial 0 of every sweep, so the search is always measured against it.

    A grid sampler ignores enqueued trials and would run the baseline's point a second time; there the grid runs it
    once and the launcher marks that trial as the baseline.
    """
    if baseline_needed(study, study.get_trials(deepcopy=False)):
        study.enqueue_trial(point, user_attrs={BASELINE_ATTR: True}, skip_if_exists=False)


def baseline_needed(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether no baseline trial of ``trials`` is done, running or waiting: every one so far failed (a resumed
    sweep, the cause fixed, must measure it; a reaped one whose retries a guard stopped is queued again), or none
    was enqueued yet. Never with a grid sampler, which ignores enqueued trials and runs the baseline's point itself.
    """
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        return False
    pending_or_done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return not any(trial.state in pending_or_done for trial in trials if trial.user_attrs.get(BASELINE_ATTR))


def baseline_waiting(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether a baseline trial (or its retry) is enqueued and not started yet."""
    return any(trial.state == TrialState.WAITING and trial.user_attrs.get(BASELINE_ATTR) for trial in trials)


def grid_exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def ask(study: optuna.Study) -> optuna.Trial:
    """A new trial, with its first heartbeat recorded at once, so that a dead worker's trial is always found."""
    trial = study.ask()
    compat.record_heartbeat(study, compat.trial_id_of(trial))
    if (task := current_slurm_task()) is not None:  # which SLURM task runs it, for `ftlab status`
        trial.set_user_attr(SLURM_TASK_ATTR, task)
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


def open_sweep_study(sweep_file: Path, storage_url: str | None = None) -> tuple[SweepConfig, optuna.Study]:
    """The sweep file and its existing study, for commands that only read.

    Raises:
        UserError: the study does not exist in that storage yet.
    """
    sweep = load_sweep_with_assets(sweep_file)
    storage = storage_url_for(sweep, storage_url)
    try:
        return sweep, load_study(sweep, storage)
    except KeyError:
        raise UserError.single(
            f"no study named {sweep.name!r} in the storage",
            where=str(sweep_file),
            fix=f"run `{shell_command('ftlab', 'sweep', sweep_file)}` first, or pass the --storage it ran with",
        ) from None
