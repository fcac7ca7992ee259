"""The ``ftlab`` command line: each command parses, calls one library function, prints.

User errors (:class:`ftlab.errors.UserError`) print a message and exit 2 without a traceback; anything else is a bug
and keeps its traceback.
"""

# ruff: noqa: E402  (the Ctrl-C guard below must be in place before the slow imports that follow it)
from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import sys
import threading


def _interrupted_while_importing(signum: int, frame: object) -> None:
    # Nothing has been created while this module imports (about a second): end at once, without a traceback.
    print("interrupted: nothing was done", file=sys.stderr, flush=True)
    os._exit(130)


# Ctrl-C in the first moments of a command lands in these imports; Python would print a KeyboardInterrupt traceback.
# Only while importing, and only where Ctrl-C has its default handling (not in a host that installed its own).
_IMPORTING_HANDLED = (
    threading.current_thread() is threading.main_thread()
    and signal.getsignal(signal.SIGINT) is signal.default_int_handler
)
if _IMPORTING_HANDLED:
    signal.signal(signal.SIGINT, _interrupted_while_importing)
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ftlab.console import quiet_libraries
from ftlab.errors import UserError, redact_url
from ftlab.hints import shell_command
from ftlab.interrupt import as_interrupt, raise_interrupt

if TYPE_CHECKING:
    from ftlab.sweep.confirm import Confirmation
    from ftlab.sweep.options import SweepOptions

app = typer.Typer(
    help="Hyperparameter sweeps for causal-LM fine-tuning around a documented baseline, tracked in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
baseline_app = typer.Typer(help="Documented baselines: the recipes sweeps search around.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")
launch_app = typer.Typer(help="Start a sweep's workers on a cluster scheduler.", no_args_is_help=True)
app.add_typer(launch_app, name="launch")

# Off a terminal (logs, CI, pipes) rich would assume 80 columns and fold every table; use a log-friendly width.
# Not rich markup by default: most of what is printed quotes files, values, paths and other programs' errors, where
# `[...]` is text (gloo's "[/path/pair.cc:553]"); the few styled lines pass markup=True and escape what they quote.
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160, markup=False)


def _print_error(message: str) -> None:
    """An ``error:`` line on stderr; ``message`` is text (values, paths, other programs' errors), not rich markup."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True, markup=True)


SweepFile = Annotated[Path, typer.Argument(help="A sweep file (YAML), e.g. sweeps/demo.yaml.")]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri", help="MLflow tracking URI; default MLFLOW_TRACKING_URI or ./mlruns.", show_default=False
    ),
]


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Sweep files to check.")],
    schema_only: Annotated[
        bool,
        typer.Option("--schema-only", help="Check the files and their search spaces only: no model, data or services."),
    ] = False,
) -> None:
    """Check that sweeps can start: the schema, every value the search can produce, the model, the data (prepared
    and cached), the storage and the tracking server. Every problem is reported at once."""
    quiet_libraries()
    from ftlab.demo import load_sweep_with_assets
    from ftlab.storage import storage_url_for
    from ftlab.sweep import preflight
    from ftlab.tracking import tracking_uri_for

    problems = []
    for file in files:
        try:
            sweep = load_sweep_with_assets(file)
        except UserError as error:
            problems.extend(error.problems)
            continue
        if schema_only:
            found = preflight.settings_problems(sweep, file.parent, str(file))[1]
        else:
            found = preflight.trial_check(sweep, file.parent, str(file))[0]
            found += preflight.service_problems(
                storage_url_for(sweep), tracking_uri_for(sweep), f"{file}:storage.url", f"{file}:tracking.uri"
            )
        problems.extend(found)
        if not found:
            console.print(f"[green]ok[/green] {escape(str(file))}", markup=True)
            for warning in preflight.settings_warnings(sweep, file.parent, str(file)):
                console.print(
                    f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True, markup=True
                )
    preflight.raise_problems(problems)


@baseline_app.command("list")
def baseline_list() -> None:
    """List the baselines that ship with ftlab."""
    from ftlab.baselines import builtin_baselines

    for name in builtin_baselines():
        console.print(name)


def _print_baseline(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(info))
        return
    table = Table(title=f"Baseline from {info['source']}", show_header=False)
    for key, value in info.items():
        if key not in {"warnings", "source"} and value is not None:
            table.add_row(key, str(value))
    console.print(table)
    for warning in info.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", markup=True)


@baseline_app.command("show")
def baseline_show(
    name: Annotated[str, typer.Argument(help="A built-in baseline name (see `ftlab baseline list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a built-in baseline's recipe and reported results, with consistency warnings."""
    from ftlab.baselines import load_builtin

    _print_baseline(load_builtin(name).as_json(), as_json)


@baseline_app.command("from-card")
def baseline_from_card(
    card: Annotated[Path, typer.Argument(help="A README.md written by transformers' Trainer.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Write the recipe as YAML for a sweep's `baseline:` (missing folders are created)."
        ),
    ] = None,
) -> None:
    """Read the training recipe and reported results out of a Trainer model card."""
    from ftlab.baselines import load_card
    from ftlab.baselines.recipe_file import check_output, write_recipe

    baseline = load_card(card)
    if output is not None:  # refuse a file it must not overwrite before printing anything
        check_output(output, card)
    _print_baseline(baseline.as_json(), as_json)
    if output is not None:
        write_recipe(output, card, baseline)
        err_console.print(f"wrote {output}")


@app.command("demo-assets")
def demo_assets(force: Annotated[bool, typer.Option(help="Rebuild even if present.")] = False) -> None:
    """Build the offline demo model, tokenizer and text (done automatically on first use)."""
    from ftlab.demo import ensure_demo_assets

    assets = ensure_demo_assets(force=force)
    state = f"built in {assets.seconds:.1f} s" if assets.built else "already present"
    console.print(f"demo model: {assets.model_dir}\ndemo text:  {assets.text_file}\n({state})")


@app.command("train")
def train_command(
    file: SweepFile,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a training setting: --set learning_rate=1e-4.")
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Run one trial: the sweep file's baseline configuration (plus any --set), tracked as one MLflow run."""
    quiet_libraries()
    from ftlab.demo import load_sweep_with_assets
    from ftlab.settings import parse_set_options, resolve_train_config
    from ftlab.sweep import preflight
    from ftlab.tracking import TrackedRun, experiment_name, tracking_uri_for
    from ftlab.trial import run_trial

    sweep = load_sweep_with_assets(file)
    train_config = resolve_train_config(sweep, file.parent, parse_set_options(set_ or []), source=str(file))
    uri = tracking_uri_for(sweep, tracking_uri)
    tracking_where = "--tracking-uri" if tracking_uri else f"{file}:tracking.uri"
    problems = preflight.folder_problems(sweep, [train_config], str(file)) + preflight.model_problems(sweep, str(file))
    if not problems:  # the data check loads the tokenizer: only once the model is sound
        problems = preflight.data_check(sweep, file.parent, [train_config], str(file))[0]
    preflight.raise_problems(problems + preflight.tracking_problems(uri, tracking_where))
    console.print(
        f"training [bold]{escape(sweep.name)}[/bold] baseline on {escape(sweep.model.name_or_path)}; "
        f"tracking at {escape(redact_url(uri))}",
        highlight=False,
        markup=True,
    )
    from ftlab.training.loop import NonFiniteLossError

    try:
        with stops_cleanly(), TrackedRun.start(uri, experiment_name(sweep), "train") as run:
            run.ending = _train_ending
            trial_dir = Path(train_config.output_dir) / sweep.name / f"train-{run.run_id[:8]}"
            record = run_trial(sweep, train_config, run, trial_dir, sweep_dir=file.parent)
    except NonFiniteLossError as error:
        # The settings' failure, not a wrong input: exit 1 as a failing sweep does (2 is for files and values).
        _print_error(
            f"training diverged: {error}. Its MLflow run {run.run_id} is FAILED; "
            "lower learning_rate (or raise warmup, lower max_grad_norm) and train again."
        )
        raise typer.Exit(1) from None
    assert record.eval_loss is not None and record.tokens_seen is not None and record.seconds
    table = Table(title=f"{sweep.name}: one trial", show_header=False)
    table.add_row("eval/loss", f"{record.eval_loss:.4f}")
    table.add_row("eval/perplexity", f"{record.perplexity:.3f}")
    table.add_row("train/loss (run mean)", f"{record.train_loss:.4f}")
    table.add_row("tokens seen", f"{record.tokens_seen:,}")
    table.add_row("tokens/s", f"{record.tokens_seen / record.seconds:,.0f}")
    table.add_row("device", str(record.device))
    table.add_row("MLflow run", run.run_id)
    table.add_row("model", str(record.model_dir))
    console.print(table)
    hint = shell_command("mlflow", "ui", "--backend-store-uri", redact_url(uri))
    console.print(f"See it in the MLflow UI: {hint}", highlight=False, markup=False)


def _train_ending(error: BaseException) -> tuple[str, str]:
    """How ``ftlab train``'s run ends on ``error``: a diverged loss FAILED with a "diverged: " reason, as a sweep
    trial's; anything else as any run."""
    from ftlab.record import DIVERGED_PREFIX
    from ftlab.tracking import _ending_for
    from ftlab.training.loop import NonFiniteLossError

    if isinstance(error, NonFiniteLossError):
        return "FAILED", f"{DIVERGED_PREFIX}{error}"
    return _ending_for(error)


StorageUrl = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar="FTLAB_STORAGE",
        help="Optuna storage URL (or FTLAB_STORAGE); default SQLite in ./mlruns.",
        show_default=False,
    ),
]


AcceptChanges = Annotated[
    bool,
    typer.Option(
        "--accept-changes",
        help="Go on with a study although the sweep file's search space, objective or baseline changed (recorded).",
    ),
]


@contextmanager
def stops_cleanly() -> Iterator[None]:
    """Ctrl-C exits 130 and SIGTERM (preemption) 143, each with a line saying what happens to the trials.

    Here and not in ``main``: typer turns a KeyboardInterrupt into a silent exit 130 before ``main`` could see it.
    """
    from ftlab.sweep.events import MachineFaultError, PreemptedError, SweepFailingError

    try:
        yield
    except SweepFailingError as error:
        _print_error(
            f"the sweep stopped: {error}. Finished trials are stored; fix the cause and run the same command again."
        )
        raise typer.Exit(1) from None
    except MachineFaultError as error:
        _print_error(
            f"this machine cannot run trials: {error}. That trial is queued for a retry (other workers of the study "
            "take it); make room and run the same command again."
        )
        raise typer.Exit(1) from None
    except PreemptedError:
        err_console.print("stopped by SIGTERM: the interrupted trials saved a checkpoint and will be retried")
        raise typer.Exit(143) from None
    except (KeyboardInterrupt, Exception) as error:
        if not isinstance(as_interrupt(error), KeyboardInterrupt):
            raise
        _said_interrupted.set()
        err_console.print("interrupted: finished trials are stored; run the same command again to resume")
        raise typer.Exit(130) from None


def _trial_options(
    n_trials: int | None,
    timeout: float | None,
    workers: int,
    storage: str | None,
    tracking_uri: str | None,
    **more: Any,
) -> SweepOptions:
    """The options of a command that runs trials, with the trial processes' fork server started: ``--n-trials`` and
    ``--timeout`` are checked first (a refusal must not wait for the server), and the server starts before the heavy
    imports of the command, so that both run at once. ``more``: the other fields of :class:`SweepOptions`."""
    if n_trials is not None or timeout is not None:
        from ftlab.config import check_budget_options

        check_budget_options(n_trials, timeout)
    from ftlab.sweep.forkserver import trial_process_context

    trial_process_context()
    quiet_libraries()
    from ftlab.sweep.options import SweepOptions

    return SweepOptions(
        n_trials=n_trials,
        timeout=timeout,
        workers=workers,
        storage_url=storage,
        tracking_uri=tracking_uri,
        console=console,
        **more,
    )


@app.command()
def sweep(
    file: SweepFile,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", help="COMPLETE trials to reach in the study (overrides budget).")
    ] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds after which no new trial starts.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Trials at once on this machine (one per GPU).", min=1)] = 1,
    storage: StorageUrl = None,
    tracking_uri: TrackingUri = None,
    accept_changes: AcceptChanges = False,
) -> None:
    """Run (or resume) an Optuna study around the baseline; every trial is a process and a nested MLflow run."""
    options = _trial_options(n_trials, timeout, workers, storage, tracking_uri, accept_changes=accept_changes)
    from ftlab.sweep.orchestrate import run_sweep
    from ftlab.tracking import runs_page

    with stops_cleanly():
        outcome = run_sweep(file, options)
    console.print(outcome.comparison.sentence() if outcome.comparison else "no trial completed", highlight=False)
    console.print(f"report: {outcome.report_dir} (also logged to MLflow run {outcome.parent_run_id})")
    # Hints that work as printed: with the storage and tracking store this sweep used. A URL that holds a password
    # is redacted: put it back, or export FTLAB_STORAGE / use ~/.pgpass.
    stores = (["--storage", redact_url(storage)] if storage else []) + (
        ["--tracking-uri", redact_url(tracking_uri)] if tracking_uri else []
    )
    status_hint = shell_command("ftlab", "status", file, *stores)
    console.print(f"status: {status_hint}", highlight=False, soft_wrap=True, markup=False)
    page = runs_page(outcome.tracking_uri, outcome.experiment_id)
    ui_hint = shell_command("ftlab", "ui", file, *stores)
    console.print(f"MLflow UI: {ui_hint}  →  {page}", highlight=False, soft_wrap=True, markup=False)


@app.command()
def worker(
    file: SweepFile,
    storage: Annotated[
        str,
        typer.Option(
            "--storage", envvar="FTLAB_STORAGE", help="The shared Optuna storage (postgresql://…); or FTLAB_STORAGE."
        ),
    ],
    tracking_uri: Annotated[
        str,
        typer.Option(
            "--tracking-uri", envvar="FTLAB_TRACKING_URI", help="The shared MLflow server; or FTLAB_TRACKING_URI."
        ),
    ],
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", help="COMPLETE trials the study should reach, across all workers.")
    ] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds after which no new trial starts.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Trials at once on this machine (one per GPU).", min=1)] = 1,
    accept_changes: AcceptChanges = False,
    confirm_runs: Annotated[
        bool, typer.Option("--confirm", help="Take part in the sweep's confirmation (`ftlab confirm`) instead.")
    ] = False,
) -> None:
    """Join a shared study from any machine and run trials until its budget is spent."""
    salt = secrets.randbits(32)  # workers must not draw alike
    options = _trial_options(
        n_trials, timeout, workers, storage, tracking_uri, live=False, seed_salt=salt, accept_changes=accept_changes
    )
    from ftlab.sweep.orchestrate import run_confirm, run_sweep

    if confirm_runs:
        with stops_cleanly():
            found = run_confirm(file, options, join_only=True)
        _print_confirmation(found)
        return
    with stops_cleanly():
        outcome = run_sweep(file, options)
    console.print(outcome.comparison.sentence() if outcome.comparison else "no trial completed")


@launch_app.command("slurm")
def launch_slurm_command(
    file: SweepFile,
    workers: Annotated[int, typer.Option("--workers", help="Worker tasks (a job array of this many tasks).")],
    gpus_per_worker: Annotated[
        int, typer.Option("--gpus-per-worker", help="GPUs per task (--gres=gpu:G); it runs G trials at once.")
    ] = 0,
    cpus_per_worker: Annotated[int, typer.Option("--cpus-per-worker", help="CPUs per task (--cpus-per-task).")] = 8,
    partition: Annotated[
        str | None, typer.Option("--partition", help="SLURM partition; default the cluster's.")
    ] = None,
    time: Annotated[
        str | None, typer.Option("--time", help="Time limit per task (SLURM's forms: 30, 2:00:00, 1-12).")
    ] = None,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", help="COMPLETE trials the study should reach (overrides budget).")
    ] = None,
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option("--sbatch-arg", help="Passed to sbatch as is (repeat it; e.g. --sbatch-arg=--mem=64G)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the job script; submit nothing.")] = False,
    storage: StorageUrl = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            envvar="FTLAB_TRACKING_URI",
            help="The MLflow server the tasks use (or FTLAB_TRACKING_URI); default as `ftlab sweep`.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Submit the sweep's workers to SLURM: one array task per worker, each an `ftlab worker` on the shared study.
    The URLs reach the tasks through the job's environment, never a command line."""
    quiet_libraries()
    from ftlab.config import load_sweep
    from ftlab.launch.slurm import SlurmLaunch, default_ftlab_bin, launch_slurm, sbatch_command

    sweep_file = file.resolve()
    launch = SlurmLaunch(
        sweep_file=sweep_file, sweep_name=load_sweep(file).name, workers=workers, workdir=Path.cwd(),
        gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, partition=partition, time=time,
        n_trials=n_trials, ftlab_bin=default_ftlab_bin(), sbatch_args=tuple(sbatch_arg or ()),
    )  # fmt: skip
    script, job = launch_slurm(sweep_file, launch, storage, tracking_uri, dry_run=dry_run)
    if job is None:
        print(script, end="")
        err_console.print(f"# submit with: {' '.join(sbatch_command(launch, Path('SCRIPT')))}", highlight=False)
        return
    # The watch hint repeats a flag only where the environment would not give it again (a password redacted).
    options = ""
    if storage and not os.environ.get("FTLAB_STORAGE"):
        options += f" --storage {redact_url(storage)}"
    if tracking_uri and not os.environ.get("FTLAB_TRACKING_URI"):
        options += f" --tracking-uri {redact_url(tracking_uri)}"
    gpus = f"{gpus_per_worker} GPU(s)" if gpus_per_worker else "no GPU"
    for line in (
        f"submitted SLURM job {job.job_id}: {workers} worker tasks (array 0-{workers - 1}), each "
        f"`ftlab worker {file}` with {cpus_per_worker} CPU(s), {gpus}",
        f"script: {job.script}",
        f"logs:   {job.as_attr()['logs']}",
        f"watch:  ftlab status {file}{options}   (or: squeue -j {job.job_id})",
        f"stop:   scancel {job.job_id}   (running trials checkpoint and are queued again)",
    ):
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def confirm(
    file: SweepFile,
    top: Annotated[int, typer.Option("--top", help="Best configurations to confirm besides the baseline.", min=1)] = 3,
    seeds: Annotated[int, typer.Option("--seeds", help="New training seeds per configuration.", min=1)] = 5,
    correction: Annotated[
        # ftlab.sweep.verdict's Correction, named here so that `ftlab --help` does not import scipy
        Literal["paired", "holm", "dunnett"],
        typer.Option(
            "--correction",
            help="How the configurations are tested against the baseline at once: paired (t-test on the seeds each "
            "shares with the baseline, Holm-corrected; the default: a seed's data order is the same for all), holm "
            "(Welch's t-tests, Holm-corrected) or dunnett (Dunnett's many-to-one test, equal spreads assumed).",
        ),
    ] = "paired",
    min_effect: Annotated[
        float | None,
        typer.Option(
            "--min-effect",
            help="Smallest relative difference worth having (0.01 = 1 % of the baseline's mean); a smaller one is "
            "'not worth it' however significant.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Runs at once on this machine (one per GPU).", min=1)] = 1,
    storage: StorageUrl = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Train the baseline and the sweep's top configurations again with new seeds: is the winner's gain real or seed
    noise? Resumable: runs already done are not repeated; `ftlab worker --confirm` processes can help. Exits 1 when
    planned runs are still without a result."""
    options = _trial_options(None, None, workers, storage, tracking_uri)
    from ftlab.sweep.orchestrate import run_confirm

    with stops_cleanly():
        found = run_confirm(file, options, top=top, seeds=seeds, correction=correction, min_effect=min_effect)
    _print_confirmation(found)
    if found is not None and not found.complete:
        raise typer.Exit(1)


def _print_confirmation(found: Confirmation | None) -> None:
    """What was confirmed and why, one table per objective, the verdict, and what is missing."""
    if found is None:
        console.print("no confirmation run has completed yet")
        return
    if found.selection:
        console.print(f"confirmed: {found.selection}", highlight=False)
    for objective in range(len(found.metrics)):
        table = Table(title=found.title(objective))
        for column in found.COLUMNS:
            table.add_column(column, overflow="fold")
        for cells in found.table_rows(objective):
            table.add_row(*cells)
        console.print(table)
    console.print(found.sentence(), highlight=False)
    if found.missing:
        runs = ", ".join(f"trial {trial} seed {seed}" for trial, seed in found.missing)
        console.print(f"missing: {runs}\nto finish: {found.finish}", highlight=False)


@app.command()
def status(
    file: SweepFile,
    storage: StorageUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    reap: Annotated[
        bool, typer.Option("--reap", help="First fail (and retry once) trials whose worker stopped its heartbeat.")
    ] = False,
    tracking_uri: TrackingUri = None,
) -> None:
    """Every trial's state, params, objective and duration, and the best against the baseline."""
    from ftlab.launch.slurm_tasks import job_table, launched_jobs
    from ftlab.record import TrialRecord
    from ftlab.sweep.confirm import load_confirmation
    from ftlab.sweep.orchestrate import reap_sweep
    from ftlab.sweep.study import open_sweep_study
    from ftlab.sweep.summary import compare, format_value, status_json

    if reap:
        reap_sweep(file, storage, tracking_uri)
    sweep_config, study = open_sweep_study(file, storage)
    metric = sweep_config.objectives[0].metric
    confirmed = load_confirmation(sweep_config, storage)
    jobs = launched_jobs(study, sweep_config.storage.grace_period)
    if as_json:
        shown = status_json(study, metric) | {"confirmation": confirmed.as_json() if confirmed else None}
        shown |= {"slurm_jobs": [job.as_json() for job in jobs]} if jobs else {}
        console.print_json(json.dumps(shown, default=str))
        return
    table = Table(title=f"study {study.study_name}")
    for column in ("#", "state", metric, "perplexity", "duration"):
        table.add_column(column, no_wrap=True)
    table.add_column("params", overflow="fold", ratio=2)  # wrap, never cut: the params are the point
    table.add_column("note", overflow="fold", ratio=1)
    for trial in study.get_trials(deepcopy=False):
        row = TrialRecord.from_trial(trial)
        value = row.values[0] if row.values else None
        table.add_row(
            f"{row.number}" + (" (baseline)" if row.baseline else ""),
            row.outcome,
            format_value(value),
            format_value(row.perplexity),
            f"{row.duration_s:.0f} s" if row.duration_s is not None else "-",
            ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.params.items()),
            row.detail[:60],
        )
    console.print(table)
    for job in jobs:  # the tasks of the jobs `ftlab launch slurm` submitted, and trials left by tasks that died
        console.print(job_table(job))
        for warning in job.warnings:
            err_console.print(
                f"[bold yellow]warning:[/bold yellow] {escape(warning)}", highlight=False, soft_wrap=True, markup=True
            )
    comparison = compare(study, metric)
    console.print(comparison.sentence() if comparison else "no trial has completed yet")
    if confirmed is not None:
        _print_confirmation(confirmed)


@app.command()
def report(file: SweepFile, storage: StorageUrl = None, tracking_uri: TrackingUri = None) -> None:
    """Regenerate the sweep's plots and best-versus-baseline table and log them to its parent MLflow run."""
    quiet_libraries()
    from ftlab.sweep.orchestrate import report_sweep

    out_dir = report_sweep(file, storage, tracking_uri)
    console.print(f"report written to {out_dir} and logged to the parent run under report/")


@app.command()
def best(
    file: SweepFile,
    export: Annotated[
        Path | None, typer.Option("--export", help="Write the winner as a Hugging Face model folder.")
    ] = None,
    register: Annotated[
        str | None, typer.Option("--register", help="With --export: a Model Registry name; alias `champion`.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --export: replace an earlier export (never another folder).")
    ] = False,
    storage: StorageUrl = None,
    tracking_uri: TrackingUri = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The best trial against the baseline; with --export, the winner as a verified Hugging Face model directory."""
    quiet_libraries()
    from ftlab.export.best import select_best, ui_command
    from ftlab.sweep.confirm import load_confirmation
    from ftlab.sweep.study import open_sweep_study
    from ftlab.tracking import tracking_uri_for

    if register and export is None:
        raise UserError.single("--register needs --export DIR", where="--register", fix="add --export DIR")
    sweep_config, study = open_sweep_study(file, storage)
    uri = tracking_uri_for(sweep_config, tracking_uri)
    winner = select_best(study, sweep_config, str(file)).as_json() | {"ui": ui_command(uri)}
    confirmed = load_confirmation(sweep_config, storage)
    winner["confirmation"] = confirmed.as_json() if confirmed else None
    if export is not None:
        from ftlab.export.export import export_best

        result = export_best(file, export, register=register, force=force, storage_url=storage, tracking_uri=uri)
        winner["export"] = {
            "dir": str(result.out_dir),
            "eval_loss_measured": result.measured_eval_loss,
            "weights_from": result.weights_from,
            "registered": result.registered,
        }
    if as_json:
        console.print_json(json.dumps(winner, default=str))
        return
    _print_best(winner)
    console.print(f"Browse the runs and charts: ftlab ui {file}", highlight=False)
    if confirmed is not None:
        _print_confirmation(confirmed)
    else:
        hint = shell_command("ftlab", "confirm", file)
        console.print(f"Is the gain more than seed noise? {hint}", highlight=False, markup=False)


def _print_best(winner: dict[str, Any]) -> None:
    table = Table(title=f"best trial #{winner['trial']}", show_header=True)
    for column in ("", "baseline", "best"):
        table.add_column(column)
    base = winner["baseline"] or {}
    table.add_row("trial", str(base.get("trial", "-")), str(winner["trial"]))
    for key, label in (("eval_loss", "eval/loss"), ("perplexity", "eval/perplexity")):
        table.add_row(label, _num(base.get(key)), _num(winner[key]))
    for key, value in winner["params"].items():
        table.add_row(
            key,
            str((base.get("params") or {}).get(key, "-")),
            f"{value:.4g}" if isinstance(value, float) else str(value),
        )
    console.print(table)
    gain = winner["gain"]
    if gain["absolute"] is not None:
        console.print(f"gain over the baseline: {gain['absolute']:.4f} ({gain['relative']:+.1%}) on {winner['metric']}")
    console.print(f"MLflow run {winner['mlflow_run_id']}: {winner['ui']}")
    if exported := winner.get("export"):
        console.print(
            f"exported to {exported['dir']} (weights from {exported['weights_from']}; eval loss re-measured "
            f"{exported['eval_loss_measured']:.4f})"
        )
        if exported["registered"]:
            console.print(f"registered as {exported['registered']}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


_DASHBOARD_PORT = 8080  # optuna-dashboard's own default, named so that the two UIs' ports are both in view


@app.command()
def ui(
    file: Annotated[Path | None, typer.Argument(help="A sweep file: open its tracking store.")] = None,
    port: Annotated[int, typer.Option(help="Port for the MLflow UI.", min=1, max=65535)] = 5000,
    tracking_uri: TrackingUri = None,
    storage: StorageUrl = None,
) -> None:
    """Start the MLflow UI on the sweep's store (localhost only) and say how to open optuna-dashboard on its study."""
    from ftlab import paths
    from ftlab.config import load_sweep
    from ftlab.storage import sqlite_file, storage_url_for
    from ftlab.tracking import experiment_name, runs_page, tracking_uri_for

    sweep_config = load_sweep(file) if file else None
    uri = tracking_uri_for(sweep_config, tracking_uri) if sweep_config else tracking_uri or paths.default_tracking_uri()
    database = sqlite_file(uri)
    if database is not None and not database.is_file():  # mlflow ui would create an empty store: say what is missing
        raise UserError.single(
            "no MLflow store here yet", where=str(database), fix="run a sweep first, or pass --tracking-uri"
        )
    served = uri.startswith(("http://", "https://"))  # a tracking server serves the UI itself
    if not served:
        _check_port_free(port)
    ui_address = f"http://127.0.0.1:{port}"  # where `mlflow ui` serves a local store
    if sweep_config is not None:
        from mlflow import MlflowClient

        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment_name(sweep_config))
        if experiment is not None:
            objective = sweep_config.objectives[0]
            page = runs_page(
                uri,
                experiment.experiment_id,
                ui_address,
                order_by_metric=f"final/{objective.metric}",
                ascending=objective.direction == "minimize",
            )
            # soft_wrap: a URL broken over two lines cannot be copied or clicked.
            console.print(
                f"The sweep's runs, best final/{objective.metric} first: {page}", highlight=False, soft_wrap=True
            )
            console.print(
                "Charts: to compare trials of different batch sizes, set a chart's x axis to the metric "
                "train/tokens_seen (the parent run's charts count complete trials on theirs).",
                highlight=False,
                soft_wrap=True,
            )
        study_storage = storage_url_for(sweep_config, storage)
        console.print(
            "Optuna dashboard for the study (needs `pip install 'ftlab[dashboard]'`, which `make setup` includes): "
            + shell_command("optuna-dashboard", redact_url(study_storage), "--port", str(_DASHBOARD_PORT))
            + f", then open http://127.0.0.1:{_DASHBOARD_PORT} (each trial's note links its MLflow run)",
            highlight=False,
            soft_wrap=True,
            markup=False,  # `[dashboard]` is text, not rich markup
        )
    if served:
        console.print(f"The tracking server already serves the UI: {redact_url(uri)}", highlight=False)
        return
    console.print(f"MLflow UI on {ui_address} (Ctrl-C stops it)", highlight=False)
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    os.execv(command[0], command)


def _check_port_free(port: int) -> None:
    """Say now that the port is taken, rather than let the MLflow UI fail later with a server's traceback."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise UserError.single(
                f"port {port} on 127.0.0.1 is not free ({error.strerror or error})",
                where="--port",
                value=port,
                fix="stop what is using it, or pass another port, e.g. --port 5001",
            ) from None


_said_interrupted = threading.Event()  # a command said what Ctrl-C left behind


def main() -> None:
    """Console-script entry point: user errors become a message and exit code 2; Ctrl-C exits 130 with one line."""
    try:
        _run()
    except SystemExit as done:
        # typer turns a KeyboardInterrupt outside `stops_cleanly` (while a command starts) into a silent exit 130.
        if done.code == 130 and not _said_interrupted.is_set():
            err_console.print("interrupted: the command stopped before it started any trial", highlight=False)
        _exit_without_teardown(done.code)
    except KeyboardInterrupt:  # outside typer: while it parses the command line
        err_console.print("interrupted: nothing was done", highlight=False)
        _exit_without_teardown(130)


def _exit_without_teardown(code: object) -> NoReturn:
    """End the process as Python would, minus tearing down every imported module one by one.

    That teardown (torch, transformers, MLflow, Optuna and plotting libraries loaded) took 1-2 s at the end of every
    command, longer than ``ftlab status`` runs. Threads are joined and atexit handlers run first, as at a normal exit:
    MLflow's logging queue is drained, multiprocessing's children are reaped, log handlers are flushed.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
    shutdown_threads = getattr(threading, "_shutdown", None)  # what the interpreter calls first when it exits
    if shutdown_threads is not None:
        shutdown_threads()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _run() -> None:
    try:
        app()
    except UserError as error:
        # User text (values, paths, YAML excerpts) is printed as it is: `[...]` in it is not rich markup.
        _print_error(str(error))
        sys.exit(2)
    except Exception as error:
        from ftlab.fileio import NoSpaceError
        from ftlab.folders import refused_write
        from ftlab.storage import RECONNECT_TIMEOUT_S, is_connection_loss

        # A write that a folder refused (read-only, permissions) or found no room for, as one line with the fix: the
        # last safety net of every command, after the checks each makes before it starts.
        if isinstance(error, NoSpaceError):
            _print_error(f"{error}; make room (or raise `ulimit -f`) and run the command again")
            sys.exit(2)
        if refused := refused_write(error):
            _print_error(f"{refused}; make that folder writable for this user and run the command again")
            sys.exit(2)
        if not is_connection_loss(error):
            raise
        cause = str(error.__cause__ or error).strip().splitlines()[0]
        _print_error(
            f"lost the database connection (retried for up to {RECONNECT_TIMEOUT_S:.0f} s): {redact_url(cause)}. "
            "Finished trials are stored; run the same command again once the database is back to resume."
        )
        sys.exit(1)


if _IMPORTING_HANDLED:  # imported: from here on Ctrl-C is a KeyboardInterrupt, handled by each command
    signal.signal(signal.SIGINT, raise_interrupt)

if __name__ == "__main__":
    main()
