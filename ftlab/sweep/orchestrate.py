"""The library entry points behind ``ftlab sweep``, ``ftlab status`` and ``ftlab report``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from mlflow import MlflowClient
from rich.console import Console

from ftlab import paths
from ftlab.config import SweepConfig, check_budget_options
from ftlab.demo import load_sweep_with_assets
from ftlab.errors import UserError
from ftlab.folders import refused_write
from ftlab.record import PARENT_RUN_ATTR, REPORTED_ATTR
from ftlab.settings import resolve_train_config
from ftlab.storage import (
    StudyLock,
    is_concurrent_schema_creation,
    open_storage,
    retry_on_connection_loss,
    storage_url_for,
)
from ftlab.sweep import preflight
from ftlab.sweep.budget import Budget
from ftlab.sweep.confirm import (
    CONFIRM_FIX,
    DEFAULT_CORRECTION,
    Candidate,
    Confirmation,
    candidates,
    confirm_config,
    confirm_split,
    confirmation,
    enqueue_plan,
    refuse_seen_holdout,
    seeds_for,
    selection_note,
    write_confirmation_report,
)
from ftlab.sweep.confirm_runs import confirm_parent_run
from ftlab.sweep.events import MachineFaultError, PreemptedError, SweepFailingError
from ftlab.sweep.forkserver import trial_process_context
from ftlab.sweep.job import WorkerContext, call_in_context
from ftlab.sweep.options import SweepOptions
from ftlab.sweep.reaper import reap, stale_trial_callback
from ftlab.sweep.report import log_report
from ftlab.sweep.runs import ParentRun
from ftlab.sweep.scheduler import Scheduler
from ftlab.sweep.study import (
    ACCEPT_CHANGES_FIX,
    create_or_load_study,
    open_sweep_study,
    refuse_changes,
    sweep_signature,
)
from ftlab.sweep.summary import Comparison, compare
from ftlab.sweep.verdict import Correction
from ftlab.sweep.view import SweepView
from ftlab.tracking import tracking_uri_for


@dataclass
class SweepOutcome:
    study: optuna.Study
    comparison: Comparison | None
    parent_run_id: str
    report_dir: Path
    tracking_uri: str
    experiment_id: str


def run_sweep(sweep_file: Path, options: SweepOptions | None = None) -> SweepOutcome:
    """Run (or resume) the sweep in ``sweep_file`` and log its report to the parent MLflow run.

    ``options.n_trials`` and ``options.timeout`` override the file's ``budget``; ``n_trials`` counts COMPLETE trials
    in the study, so running a finished sweep again does nothing and raising ``n_trials`` adds trials.

    Raises:
        UserError: ``n_trials`` or ``timeout`` below 1 or 0, or the sweep cannot start (see :mod:`.preflight`),
            before any trial does.
        SweepFailingError: the trials kept failing (the failure budget); the parent run ends FAILED with the reason.
        PreemptedError: SIGTERM; the running trials saved checkpoints and wait for their retries.
        MachineFaultError: this machine's disk is full; the trial that found out waits for its retry.
    """
    options = options or SweepOptions()
    check_budget_options(options.n_trials, options.timeout)
    sweep = load_sweep_with_assets(sweep_file)
    complete = options.n_trials if options.n_trials is not None else sweep.budget.n_trials
    timeout = options.timeout if options.timeout is not None else sweep.budget.timeout
    if complete is None and timeout is None:
        raise UserError.single(
            "the sweep has no budget: it would run forever",
            where=f"{sweep_file}:budget",
            fix="set budget.n_trials or budget.timeout in the file, or pass --n-trials / --timeout",
        )
    budget = Budget(n_trials=complete, max_trials=sweep.budget.max_trials)
    return run_study(sweep, sweep_file, budget, replace(options, timeout=timeout))


def run_study(
    sweep: SweepConfig,
    sweep_file: Path,
    budget: Budget,
    options: SweepOptions,
    *,
    parent: ParentRun | None = None,
    prepare: Callable[[optuna.Study], None] | None = None,
    report: Callable[[optuna.Study, str, str, Path], object] | None = None,
    headline: Callable[[optuna.Study], str] | None = None,
    changes_fix: str = ACCEPT_CHANGES_FIX,
    check_data: Callable[[str | None], None] | None = None,
) -> SweepOutcome:
    """Check that the study can start, open it (its trials nested under ``parent``, the sweep's parent run by
    default), call ``prepare(study)`` under the study lock (a plan enqueues its
    trials there), run trials until ``budget`` is spent, write the report (``report(study, tracking_uri,
    parent_run_id, report_dir)``; the sweep's plots by default) and end the parent run. ``headline(study)`` sums the
    study up in the view after each COMPLETE trial (the best against the baseline by default). ``options.n_trials``
    is not read: ``budget`` says when to stop. ``changes_fix`` is the fix a refusal of a changed sweep file offers;
    ``check_data(fingerprint)`` may refuse the prepared data before the study opens. See :func:`run_sweep` for what it
    raises."""
    if options.workers < 1:
        raise UserError.single(
            "need at least one worker", where="--workers", value=options.workers, fix="pass --workers 1 or more"
        )
    storage = storage_url_for(sweep, options.storage_url)
    uri = tracking_uri_for(sweep, options.tracking_uri)
    data_fingerprint = check_before_trials(sweep, sweep_file, options.storage_url, options.tracking_uri)
    if check_data is not None:
        check_data(data_fingerprint)
    scheduler = Scheduler.open(
        sweep,
        sweep_file,
        storage,
        uri,
        workers=options.workers,
        seed_salt=options.seed_salt,
        accept_changes=options.accept_changes,
        parent=parent,
        data_fingerprint=data_fingerprint,
        changes_fix=changes_fix,
    )
    if prepare is not None:

        def prepared() -> None:
            with scheduler.study_lock.held():
                prepare(scheduler.study)

        retry_on_connection_loss(prepared)
    view = SweepView(
        scheduler,
        options.console or Console(markup=False),
        sweep.objectives[0].metric,
        live=options.live,
        headline=headline,
    )
    status, reason = "FINISHED", None
    report_dir = paths.report_dir(sweep.name)
    write_report = report or (lambda study, uri, run_id, out_dir: log_report(study, sweep, uri, run_id, out_dir))
    try:
        with view.context():
            scheduler.run(budget, options.timeout, on_event=view.on_event)
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
        if scheduler.parent_run_id:
            _report_and_finish(
                scheduler,
                status,
                reason,
                lambda: write_report(scheduler.study, uri, scheduler.parent_run_id, report_dir),
            )
    comparison = compare(scheduler.study, sweep.objectives[0].metric)
    experiment = MlflowClient(tracking_uri=uri).get_run(scheduler.parent_run_id).info.experiment_id
    return SweepOutcome(scheduler.study, comparison, scheduler.parent_run_id, report_dir, uri, experiment)


def run_confirm(
    sweep_file: Path,
    options: SweepOptions | None = None,
    *,
    top: int = 3,
    seeds: int = 5,
    join_only: bool = False,
    configurations: list[Candidate] | None = None,
    correction: Correction = DEFAULT_CORRECTION,
    min_effect: float | None = None,
) -> Confirmation | None:
    """Train the sweep's baseline and its ``top`` best configurations again with ``seeds`` new seeds each (see
    :mod:`ftlab.sweep.confirm`), log the table and the plot to the "confirm" parent run, and return the verdict.

    ``join_only`` (``ftlab worker --confirm``): run what ``ftlab confirm`` enqueued, enqueue nothing.
    ``configurations``: confirm these instead of the sweep's baseline and top ``top`` (the first must be the baseline).
    ``correction`` and ``min_effect``: how the K configurations are compared with the baseline
    (:func:`ftlab.sweep.verdict.compare_many_to_baseline`); recorded with the plan, so that every later reading of the
    verdict (``status``, ``best``, the export) uses them too. So is the split the runs are judged on: the holdout
    split where ``data.holdout_fraction`` is set (:func:`ftlab.sweep.confirm.confirm_split`), else the validation one.
    Of ``options``, ``n_trials``, ``timeout`` and ``accept_changes`` do not apply: the plan is the budget.

    Raises:
        UserError: bad ``top``/``seeds``/``min_effect``, no sweep study, no completed baseline trial yet, a sweep
            file, model or data that changed since the sweep (or the confirmation) started, or a holdout split that
            the sweep's earlier trials may have trained on (it accepted a change of its data).
    """
    _check_confirm_options(top, seeds, min_effect)
    options = options or SweepOptions()
    sweep = load_sweep_with_assets(sweep_file)
    baseline_config = resolve_train_config(sweep, sweep_file.parent, source=str(sweep_file))
    plan: list[Candidate] = configurations or []
    try:
        sweep_study: optuna.Study | None = open_sweep_study(sweep_file, options.storage_url)[1]
    except UserError:
        if not plan and not join_only:
            raise
        sweep_study = None  # it ranked the configurations; a given plan, or a worker joining one, can do without it

    def check_data(fingerprint: str | None) -> None:
        # Confirming the sweep's configurations under another sweep file, model or data would not say whether the
        # sweep's winner is real, and would still name the runs after its trials.
        if sweep_study is not None:
            signature = sweep_signature(sweep, baseline_config, fingerprint)
            refuse_changes(sweep_study, signature, str(sweep_file), CONFIRM_FIX)

    check_data(None)  # the file and the model now; the prepared data once the preflight has its fingerprint
    split = confirm_split(sweep)
    if sweep_study is not None and split == "holdout":
        refuse_seen_holdout(sweep_study, str(sweep_file))
    if sweep_study is not None and not plan and not join_only:
        plan = candidates(sweep_study, top)
    seed_list = seeds_for(baseline_config.seed, seeds)
    metrics = [objective.metric for objective in sweep.objectives]
    settings = {
        "correction": correction,
        "min_effect": min_effect,
        "selection": selection_note(plan, top, len(metrics) > 1) if plan and not configurations else "",
        "finish": _finish_command(sweep_file, top, seeds, correction, min_effect, options.storage_url),
        "split": split,
    }

    confirm = confirm_config(sweep)

    def report(study: optuna.Study, uri: str, parent_run_id: str, out_dir: Path) -> None:
        found = confirmation(study, metrics)
        if found is not None:
            write_confirmation_report(found, out_dir)
            MlflowClient(tracking_uri=uri).log_artifacts(parent_run_id, str(out_dir), "confirm")

    outcome = run_study(
        confirm, sweep_file, Budget(fixed=True), replace(options, n_trials=None, timeout=None, accept_changes=False),
        parent=confirm_parent_run(sweep, confirm, sweep_file, storage_url_for(confirm, options.storage_url)),
        prepare=None if join_only else lambda study: enqueue_plan(study, plan, seed_list, settings), report=report,
        headline=lambda study: _verdict_so_far(study, metrics), changes_fix=CONFIRM_FIX, check_data=check_data,
    )  # fmt: skip
    return confirmation(outcome.study, metrics)


def _check_confirm_options(top: int, seeds: int, min_effect: float | None) -> None:
    for name, value in (("--top", top), ("--seeds", seeds)):
        if value < 1:
            raise UserError.single("needs 1 or more", where=name, value=value, fix=f"pass {name} 1 or more")
    if min_effect is not None and not 0 <= min_effect < 1:
        raise UserError.single(
            "is a relative difference: a fraction of the baseline's mean from 0 up to 1",
            where="--min-effect",
            value=min_effect,
            fix="pass e.g. --min-effect 0.01 for 1 %",
        )


def _finish_command(
    sweep_file: Path, top: int, seeds: int, correction: str, min_effect: float | None, storage: str | None
) -> str:
    """The `ftlab confirm` command line that runs what this plan still misses (and enqueues nothing else)."""
    words = ["ftlab confirm", str(sweep_file), f"--top {top}", f"--seeds {seeds}", f"--correction {correction}"]
    if min_effect is not None:
        words.append(f"--min-effect {min_effect}")
    if storage:
        words.append("--storage <the same storage>")
    return " ".join(words)


def _verdict_so_far(study: optuna.Study, metrics: list[str]) -> str:
    found = confirmation(study, metrics)
    return f"so far: {found.sentence()}" if found else "no baseline run has completed yet"


def check_before_trials(
    sweep: SweepConfig, sweep_file: Path, storage_override: str | None, tracking_override: str | None
) -> str | None:
    """Prove the sweep can start (:mod:`.preflight`): the services here, the rest (model, data, settings) in a process
    from the trials' fork server, which has transformers imported already and prepares (and caches) the data for the
    trials. Returns the prepared data's fingerprint, which the study remembers (:mod:`ftlab.sweep.identity`).

    Raises:
        UserError: every problem found.
    """
    storage_where = "--storage" if storage_override else f"{sweep_file}:storage.url"
    tracking_where = "--tracking-uri" if tracking_override else f"{sweep_file}:tracking.uri"
    storage, uri = storage_url_for(sweep, storage_override), tracking_uri_for(sweep, tracking_override)
    with ProcessPoolExecutor(max_workers=1, mp_context=trial_process_context()) as pool:
        try:
            checked = pool.submit(
                call_in_context, WorkerContext(), preflight.trial_check, sweep, sweep_file.parent, str(sweep_file)
            )
            problems = preflight.service_problems(storage, uri, storage_where, tracking_where)
            trial_side, data_fingerprint = checked.result()
            problems += trial_side
            if not problems:
                # Only once everything is sound (a sweep that cannot start makes nothing, not even empty stores): the
                # stores' tables (1-2 s on new SQLite files, nothing once they exist). Under the study lock, as
                # workers starting together would race to create the same tables.
                retry_on_connection_loss(
                    lambda: _create_store_tables(sweep, storage, uri), also=is_concurrent_schema_creation
                )
        except KeyboardInterrupt:
            # The check process ignores Ctrl-C (as its fork server does): stop it rather than wait for the data.
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            raise
    preflight.raise_problems(problems)
    return data_fingerprint


def _create_store_tables(sweep: SweepConfig, storage: str, tracking_uri: str) -> None:
    with StudyLock(storage, sweep.name).held():
        open_storage(storage)
        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)


def _report_and_finish(
    scheduler: Scheduler, status: str, reason: str | None, write_report: Callable[[], object]
) -> None:
    """Write the report when it is due, then end the parent run, also when the report cannot be written (a
    read-only artifacts or report folder): the run then ends FAILED, saying why, and the user gets one line.

    Raises:
        UserError: the report could not be written (the trials are kept; ``ftlab report`` writes it again).
    """
    try:
        # A preempted worker has seconds left, and a full disk no room: whoever runs next writes the report.
        if (
            not scheduler.preempted
            and scheduler.launcher.machine_fault is None
            and retry_on_connection_loss(lambda: _report_is_due(scheduler))
        ):
            retry_on_connection_loss(write_report)
    except OSError as error:
        refused = refused_write(error) or str(error)
        status, reason = "FAILED", f"the sweep's report could not be written: {refused}"
        raise UserError.single(
            reason,
            where=str(error.filename or "the report"),
            fix="make that folder writable, then run `ftlab report` on the sweep file (the trials are kept)",
        ) from None
    finally:
        scheduler.finish(status, reason)


def _report_is_due(scheduler: Scheduler) -> bool:
    """Workers sharing a study finish at about the same time: the first to see the study as it is now writes the
    report, the others skip it (``ftlab report`` writes it again on demand)."""
    with scheduler.study_lock.held():
        finished = sum(trial.state.is_finished() for trial in scheduler.study.get_trials(deepcopy=False))
        if scheduler.study.user_attrs.get(REPORTED_ATTR) == finished:
            return False
        scheduler.study.set_user_attr(REPORTED_ATTR, finished)
        return True


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
    """Settle every trial of the sweep whose worker stopped sending heartbeats: COMPLETE where its result shows it had
    finished, else failed, its run ended KILLED, and retried (see :mod:`ftlab.sweep.reaper`)."""
    sweep = load_sweep_with_assets(sweep_file)
    uri = tracking_uri_for(sweep, tracking_uri)
    study = create_or_load_study(sweep, storage_url_for(sweep, storage_url), stale_trial_callback(uri))
    reap(study, uri)
