"""The library entry points behind ``ftlab sweep``, ``ftlab status`` and ``ftlab report``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow import MlflowClient
from rich.console import Console

from ftlab import paths, preflight
from ftlab.config import SweepConfig, load_sweep
from ftlab.errors import UserError
from ftlab.settings import resolve_train_config
from ftlab.sweep.budget import Budget
from ftlab.sweep.confirm import (
    PARENT_RUN_NAME,
    Candidate,
    Confirmation,
    candidates,
    confirm_config,
    confirmation,
    enqueue_plan,
    seeds_for,
    write_confirmation_report,
)
from ftlab.sweep.forkserver import trial_process_context
from ftlab.sweep.process import WorkerContext, call_in_context
from ftlab.sweep.reaper import reap, stale_trial_callback
from ftlab.sweep.record import PARENT_RUN_ATTR, REPORTED_ATTR
from ftlab.sweep.report import log_report
from ftlab.sweep.resilience import is_concurrent_schema_creation, retry_on_connection_loss
from ftlab.sweep.runner import MachineFaultError, PreemptedError, SweepFailingError, SweepRunner
from ftlab.sweep.study import StudyLock, create_or_load_study, load_study, open_storage, storage_url_for
from ftlab.sweep.summary import Comparison, compare
from ftlab.sweep.view import SweepView


@dataclass
class SweepOutcome:
    study: optuna.Study
    comparison: Comparison | None
    parent_run_id: str
    report_dir: Path
    tracking_uri: str
    experiment_id: str


def tracking_uri_for(sweep: SweepConfig, override: str | None = None) -> str:
    """``--tracking-uri``, else the sweep file's ``tracking.uri``, else ``MLFLOW_TRACKING_URI`` or ``./mlruns``."""
    return override or sweep.tracking.uri or paths.default_tracking_uri()


def run_sweep(
    sweep_file: Path,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    workers: int = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    console: Console | None = None,
    live: bool | None = None,
    seed_salt: int = 0,
    accept_changes: bool = False,
) -> SweepOutcome:
    """Run (or resume) the sweep in ``sweep_file`` and log its report to the parent MLflow run.

    ``n_trials`` and ``timeout`` override the file's ``budget``; ``n_trials`` counts COMPLETE trials in the study,
    so running a finished sweep again does nothing and raising ``n_trials`` adds trials.

    Raises:
        UserError: the sweep cannot start (see :mod:`ftlab.preflight`), before any trial does.
        SweepFailingError: the trials kept failing (the failure budget); the parent run ends FAILED with the reason.
        PreemptedError: SIGTERM; the running trials saved checkpoints and wait for their retries.
        MachineFaultError: this machine's disk is full; the trial that found out waits for its retry.
    """
    sweep = load_sweep(sweep_file)
    complete = n_trials if n_trials is not None else sweep.budget.n_trials
    timeout = timeout if timeout is not None else sweep.budget.timeout
    if complete is None and timeout is None:
        raise UserError.single(
            "the sweep has no budget: it would run forever",
            where=f"{sweep_file}:budget",
            fix="set budget.n_trials or budget.timeout in the file, or pass --n-trials / --timeout",
        )
    budget = Budget(n_trials=complete, max_trials=sweep.budget.max_trials)
    return run_study(
        sweep, sweep_file, budget, timeout=timeout, workers=workers, storage_url=storage_url,
        tracking_uri=tracking_uri, console=console, live=live, seed_salt=seed_salt, accept_changes=accept_changes,
    )  # fmt: skip


def run_study(
    sweep: SweepConfig,
    sweep_file: Path,
    budget: Budget,
    *,
    timeout: float | None = None,
    workers: int = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    console: Console | None = None,
    live: bool | None = None,
    seed_salt: int = 0,
    accept_changes: bool = False,
    parent_run_name: str | None = None,
    prepare: Callable[[optuna.Study], None] | None = None,
    report: Callable[[optuna.Study, str, str, Path], object] | None = None,
    headline: Callable[[optuna.Study], str] | None = None,
) -> SweepOutcome:
    """Check that the study can start, open it, call ``prepare(study)`` under the study lock (a plan enqueues its
    trials there), run trials until ``budget`` is spent, write the report (``report(study, tracking_uri,
    parent_run_id, report_dir)``; the sweep's plots by default) and end the parent run. ``headline(study)`` sums the
    study up in the view after each COMPLETE trial (the best against the baseline by default). See
    :func:`run_sweep` for what it raises."""
    if workers < 1:
        raise UserError.single(
            "need at least one worker", where="--workers", value=workers, fix="pass --workers 1 or more"
        )
    storage = storage_url_for(sweep, storage_url)
    uri = tracking_uri_for(sweep, tracking_uri)
    check_before_trials(sweep, sweep_file, storage_url, tracking_uri)
    runner = SweepRunner(sweep, sweep_file, storage, uri, workers=workers, seed_salt=seed_salt,
                         accept_changes=accept_changes, parent_run_name=parent_run_name)  # fmt: skip
    if prepare is not None:

        def prepared() -> None:
            with runner.study_lock.held():
                prepare(runner.study)

        retry_on_connection_loss(prepared)
    view = SweepView(runner, console or Console(), sweep.objectives[0].metric, live=live, headline=headline)
    runner.on_event = view.on_event
    status, reason = "FINISHED", None
    report_dir = paths.report_dir(sweep.name)
    write_report = report or (lambda study, uri, run_id, out_dir: log_report(study, sweep, uri, run_id, out_dir))
    try:
        with view.context():
            runner.run(budget, timeout)
    except (KeyboardInterrupt, PreemptedError):
        status = "KILLED"
        raise
    except SweepFailingError as error:
        status, reason = "FAILED", str(error)
        raise
    except MachineFaultError as error:
        status, reason = "KILLED", f"this machine cannot run trials: {error}"
        raise
    finally:
        if runner.parent_run_id:
            # A preempted worker has seconds left, and a full disk no room: whoever runs next writes the report.
            if (
                not runner.preempted
                and runner.machine_fault is None
                and retry_on_connection_loss(lambda: _report_is_due(runner))
            ):
                retry_on_connection_loss(lambda: write_report(runner.study, uri, runner.parent_run_id, report_dir))
            runner.finish(status, reason)
    comparison = retry_on_connection_loss(lambda: compare(runner.study, sweep.objectives[0].metric))
    experiment = MlflowClient(tracking_uri=uri).get_run(runner.parent_run_id).info.experiment_id
    return SweepOutcome(runner.study, comparison, runner.parent_run_id, report_dir, uri, experiment)


def run_confirm(
    sweep_file: Path,
    *,
    top: int = 3,
    seeds: int = 5,
    workers: int = 1,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
    console: Console | None = None,
    live: bool | None = None,
    seed_salt: int = 0,
    join_only: bool = False,
    configurations: list[Candidate] | None = None,
) -> Confirmation | None:
    """Train the sweep's baseline and its ``top`` best configurations again with ``seeds`` new seeds each (see
    :mod:`ftlab.sweep.confirm`), log the table and the plot to the "confirm" parent run, and return the verdict.

    ``join_only`` (``ftlab worker --confirm``): run what ``ftlab confirm`` enqueued, enqueue nothing.
    ``configurations``: confirm these instead of the sweep's baseline and top ``top`` (the first must be the baseline).

    Raises:
        UserError: bad ``top``/``seeds``, no sweep study, or no completed baseline trial yet.
    """
    for name, value, least in (("--top", top, 1), ("--seeds", seeds, 1)):
        if value < least:
            raise UserError.single(
                f"needs {least} or more", where=name, value=value, fix=f"pass {name} {least} or more"
            )
    sweep = load_sweep(sweep_file)
    plan: list[Candidate] = configurations or []
    if not join_only and not plan:
        _, sweep_study = open_sweep_study(sweep_file, storage_url)
        plan = retry_on_connection_loss(lambda: candidates(sweep_study, top))
    seed_list = seeds_for(resolve_train_config(sweep, sweep_file.parent, source=str(sweep_file)).seed, seeds)
    confirm = confirm_config(sweep)
    metric = sweep.objectives[0].metric

    def report(study: optuna.Study, uri: str, parent_run_id: str, out_dir: Path) -> None:
        found = confirmation(study, metric)
        if found is not None:
            write_confirmation_report(found, out_dir)
            MlflowClient(tracking_uri=uri).log_artifacts(parent_run_id, str(out_dir), "confirm")

    outcome = run_study(
        confirm, sweep_file, Budget(fixed=True), workers=workers, storage_url=storage_url, tracking_uri=tracking_uri,
        console=console, live=live, seed_salt=seed_salt, parent_run_name=PARENT_RUN_NAME,
        prepare=None if join_only else lambda study: enqueue_plan(study, plan, seed_list), report=report,
        headline=lambda study: _verdict_so_far(study, metric),
    )  # fmt: skip
    return retry_on_connection_loss(lambda: confirmation(outcome.study, metric))


def _verdict_so_far(study: optuna.Study, metric: str) -> str:
    found = confirmation(study, metric)
    return f"so far: {found.sentence()}" if found else "no baseline run has completed yet"


def check_before_trials(
    sweep: SweepConfig, sweep_file: Path, storage_override: str | None, tracking_override: str | None
) -> None:
    """Prove the sweep can start (:mod:`ftlab.preflight`): the services here, the rest in a process from the trials'
    fork server, which has transformers imported already and prepares (and caches) the data for the trials.

    Raises:
        UserError: every problem found.
    """
    storage_where = "--storage" if storage_override else f"{sweep_file}:storage.url"
    tracking_where = "--tracking-uri" if tracking_override else f"{sweep_file}:tracking.uri"
    storage, uri = storage_url_for(sweep, storage_override), tracking_uri_for(sweep, tracking_override)
    with ProcessPoolExecutor(max_workers=1, mp_context=trial_process_context()) as pool:
        checked = pool.submit(
            call_in_context, WorkerContext(), preflight.trial_problems, sweep, sweep_file.parent, str(sweep_file)
        )
        problems = preflight.service_problems(storage, uri, storage_where, tracking_where)
        if not problems:
            # While the trial side checks itself: create the stores' tables (seconds on a new SQLite file). No study
            # and no run yet: a sweep that cannot start leaves nothing but empty stores. Under the study lock, as
            # workers starting together would race to create the same tables.
            retry_on_connection_loss(
                lambda: _create_store_tables(sweep, storage, uri), also=is_concurrent_schema_creation
            )
        problems += checked.result()
    preflight.raise_problems(problems)


def _create_store_tables(sweep: SweepConfig, storage: str, tracking_uri: str) -> None:
    with StudyLock(storage, sweep.name).held():
        open_storage(storage)
        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)


def _report_is_due(runner: SweepRunner) -> bool:
    """Workers sharing a study finish at about the same time: the first to see the study as it is now writes the
    report, the others skip it (``ftlab report`` writes it again on demand)."""
    with runner.study_lock.held():
        finished = sum(trial.state.is_finished() for trial in runner.study.get_trials(deepcopy=False))
        if runner.study.user_attrs.get(REPORTED_ATTR) == finished:
            return False
        runner.study.set_user_attr(REPORTED_ATTR, finished)
        return True


def open_sweep_study(sweep_file: Path, storage_url: str | None = None) -> tuple[SweepConfig, optuna.Study]:
    """The sweep file and its existing study, for commands that only read.

    Raises:
        UserError: the study does not exist in that storage yet.
    """
    sweep = load_sweep(sweep_file)
    storage = storage_url_for(sweep, storage_url)
    try:
        return sweep, load_study(sweep, storage)
    except KeyError:
        raise UserError.single(
            f"no study named {sweep.name!r} in the storage",
            where=str(sweep_file),
            fix=f"run `ftlab sweep {sweep_file}` first, or pass the --storage it ran with",
        ) from None


def report_sweep(sweep_file: Path, storage_url: str | None = None, tracking_uri: str | None = None) -> Path:
    """Regenerate the plots and comparison and log them to the sweep's parent run; returns the report folder."""
    sweep, study = open_sweep_study(sweep_file, storage_url)
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent:
        raise UserError.single(
            "the sweep has no MLflow parent run yet", where=str(sweep_file), fix="run the sweep first"
        )
    out_dir = paths.report_dir(sweep.name)
    log_report(study, sweep, tracking_uri_for(sweep, tracking_uri), parent, out_dir)
    return out_dir


def reap_sweep(sweep_file: Path, storage_url: str | None = None, tracking_uri: str | None = None) -> None:
    """Fail, end KILLED and retry once every trial of the sweep whose worker stopped sending heartbeats."""
    sweep = load_sweep(sweep_file)
    uri = tracking_uri_for(sweep, tracking_uri)
    study = create_or_load_study(sweep, storage_url_for(sweep, storage_url), stale_trial_callback(uri))
    reap(study)
