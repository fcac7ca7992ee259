"""What runs inside a trial's own process: train, report to Optuna for pruning, end the run, write the record.

The sweep starts this through a fork server that has already imported torch, transformers, datasets, MLflow and
Optuna, so a trial process starts in a fraction of a second yet shares no state (or GPU memory) with the others.
Whatever happens here, the worker learns it from the result file, or from the exit code when the process died.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import optuna
import torch
from mlflow import MlflowClient

from ftlab.config import SweepConfig
from ftlab.console import quiet_libraries
from ftlab.errors import UserError
from ftlab.figures import HOLDOUT_FIGURES, on_holdout
from ftlab.fileio import NoSpaceError, atomic_write_json
from ftlab.folders import refused_write
from ftlab.interrupt import as_interrupt, raise_interrupt
from ftlab.record import DIVERGED_PREFIX, TrialRecord
from ftlab.settings import resolve_train_config
from ftlab.storage import is_connection_loss, open_storage, retry_on_connection_loss
from ftlab.sweep import compat
from ftlab.sweep.job import TrialJob
from ftlab.sweep.study import build_pruner
from ftlab.tracking import TrackedRun, param_value
from ftlab.training.callbacks import TrainingCallback, TrainPlan
from ftlab.training.launch import RankFailedError
from ftlab.training.loop import NonFiniteLossError, TrainingPreemptedError
from ftlab.training.oom import OutOfMemoryAtBatchOneError
from ftlab.trial import run_trial


class SettingsNotAppliedError(RuntimeError):
    """A sampled hyperparameter did not reach the trainer as sampled."""


class TrialReapedError(RuntimeError):
    """Another worker failed this trial while it ran (its worker was paused or cut off past the grace period), ended
    its run KILLED and queued a retry: whatever this process has left to say changes nothing."""

    def __init__(self) -> None:
        super().__init__("reaped by another worker while it ran (no heartbeat within the grace period); retried there")


class PruningCallback(TrainingCallback):
    """Reports the objective at fidelity points measured in tokens seen and stops the trial if Optuna says so."""

    def __init__(self, trial: optuna.Trial, metric: str, expected: dict[str, Any], can_prune: bool) -> None:
        self.trial = trial
        self.metric = metric
        self.expected = expected
        self.can_prune = can_prune

    def on_train_begin(self, plan: TrainPlan) -> None:
        # A silently ignored hyperparameter would make the sweep's result a lie: check what the trainer really uses.
        lr = self.expected["learning_rate"]
        if not math.isclose(plan.learning_rate, lr, rel_tol=1e-9):
            raise SettingsNotAppliedError(f"learning_rate sampled {lr} but the optimizer runs at {plan.learning_rate}")
        batch = self.expected["total_train_batch_size"]
        if plan.total_train_batch_size != batch:
            raise SettingsNotAppliedError(
                f"effective batch sampled {batch} but the trainer runs {plan.per_device_train_batch_size} × "
                f"{plan.gradient_accumulation_steps} = {plan.total_train_batch_size}"
            )

    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        if not self.can_prune or self.metric not in metrics:
            return
        value = metrics[self.metric]
        try:
            self.trial.report(value, step=tokens_seen)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise TrialReapedError from None
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after {tokens_seen:,} tokens: {self.metric} {value:.4f}")


class ProgressCallback(TrainingCallback):
    """Writes the latest step and the latest value of every logged and evaluated metric to a small file that the
    sweep's live view reads (it shows the sweep's objectives)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, Any] = {"step": 0, "total_steps": None, "latest": {}}

    def on_train_begin(self, plan: TrainPlan) -> None:
        self.state.update(step=0, total_steps=plan.total_steps)
        atomic_write_json(self.path, self.state)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.state["step"] = step
        self.state["latest"].update(metrics)
        atomic_write_json(self.path, self.state)

    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        self.on_log(step, metrics)


def objective_values(sweep: SweepConfig, record: TrialRecord, *, holdout: bool = False) -> list[float]:
    """The sweep's objectives, in order, from a COMPLETE trial's final metrics (the config checked their names); on
    the ``holdout``, each objective's holdout counterpart where it has one (:func:`ftlab.figures.on_holdout`)."""
    return [record.metrics[on_holdout(o.metric) if holdout else o.metric] for o in sweep.objectives]


# Failures whose message says all there is to say; any other error is a bug, and its run keeps the traceback.
EXPECTED_FAILURES = (UserError, SettingsNotAppliedError, OutOfMemoryAtBatchOneError, NoSpaceError, NonFiniteLossError)


def record_for(error: BaseException) -> TrialRecord:
    """What a trial that raised ``error`` comes to (any error after Ctrl-C reached it: :mod:`ftlab.interrupt`)."""
    error = as_interrupt(error)
    if isinstance(error, optuna.TrialPruned):
        return TrialRecord("PRUNED", str(error))
    if isinstance(error, NonFiniteLossError):
        # The settings' own failure (too high a learning rate…): it counts for the failure budget, so a range where
        # every trial diverges stops the sweep instead of pruning trial after trial.
        return TrialRecord("FAIL", f"{DIVERGED_PREFIX}{error}")
    if (stopped := _stopped_from_outside(error)) is not None:
        return stopped
    if isinstance(error, NoSpaceError):  # this machine's disk, not the configuration: retried, and the worker stops
        return TrialRecord("FAIL", str(error), retry=True, machine_fault=True)
    if refused := refused_write(error):  # a read-only folder, likewise: every trial here would fail alike
        return TrialRecord(
            "FAIL", f"{refused} (make it writable, then run the sweep again)", retry=True, machine_fault=True
        )
    if isinstance(error, EXPECTED_FAILURES):
        return TrialRecord("FAIL", str(error))
    return TrialRecord("FAIL", f"{type(error).__name__}: {error}")


def _stopped_from_outside(error: BaseException) -> TrialRecord | None:
    """The record of a trial stopped by something outside it (preemption, Ctrl-C, a reaper, a lost database, a
    killed rank), or None for any other error."""
    if isinstance(error, TrainingPreemptedError):
        return TrialRecord("FAIL", str(error), retry=True)  # the retry resumes from the checkpoint it saved
    if isinstance(error, KeyboardInterrupt):
        return TrialRecord("FAIL", "stopped by Ctrl-C", retry=True)  # resumed with the sweep
    if isinstance(error, TrialReapedError):
        return TrialRecord("FAIL", str(error))  # told already, and retried, by the worker that reaped it
    if is_connection_loss(error):  # the database went away (a restart), not the trial: one retry, which resumes
        return TrialRecord("FAIL", f"lost the database connection: {error}", retry=True)
    if isinstance(error, RankFailedError) and error.stopped_from_outside:  # a rank killed: retried, and resumed
        return TrialRecord("FAIL", str(error), retry=True)
    return None


def run_ending(error: BaseException) -> tuple[str, str] | None:
    """How a trial's MLflow run ends on ``error``: KILLED when pruned or stopped, FAILED when it failed; a reaped
    trial's run stays as the reaper ended it."""
    if isinstance(error, TrialReapedError):
        return None
    error = as_interrupt(error)
    record = record_for(error)
    reason = record.reason or ""
    if record.state == "PRUNED" or record.retry or isinstance(error, KeyboardInterrupt):
        return "KILLED", reason
    if not isinstance(error, EXPECTED_FAILURES):
        reason += "\n" + "".join(traceback.format_exception(error, limit=8))
    return "FAILED", reason


def _die_with_worker(worker_pid: int) -> None:
    """Kill this trial if its worker dies, so no orphan keeps training (and holding the GPU) after a SIGKILL.

    The trial's parent is the fork server, which outlives the worker while any trial runs, so watch the worker itself.
    """

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(worker_pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="ftlab-worker-watch", daemon=True).start()


def _first_ctrl_c_only(signum: int, frame: object) -> None:
    """A terminal's Ctrl-C reaches this process directly and again through the worker: the first one stops the
    trial, the second must not interrupt it while it ends its run KILLED and writes its record."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_interrupt(signum, frame)


def run_trial_job(job: TrialJob) -> None:
    """Entry point of a trial process. Never raises: every outcome ends in the result file and the run's state."""
    _die_with_worker(job.worker_pid)
    job.context.enter()
    if job.cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.cuda_visible_devices  # before anything touches CUDA
    os.environ["FTLAB_TRIAL_NUMBER"] = str(job.trial_number)
    if job.cpu_threads:
        torch.set_num_threads(job.cpu_threads)
    quiet_libraries()
    # SIGTERM (preemption, from the worker or from a scheduler signalling the whole job) ends the trial at the next
    # step boundary with a checkpoint, so its retry loses nothing.
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.set())
    # SIGINT comes blocked from the fork server (ftlab.sweep.forkserver): a Ctrl-C from before this point is dropped
    # (ignored, then unblocked), as the trial ignored it before; from here on Ctrl-C stops the trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, _first_ctrl_c_only)
    run = TrackedRun(MlflowClient(tracking_uri=job.tracking_uri), job.run_id, ending=run_ending)
    try:
        with run, compat.system_metrics(run.run_id, job.tracking_uri):
            record = _train(job, run, stop_requested)
    except BaseException as error:
        record = record_for(error)
    record.write(Path(job.result_file))
    # Everything is stored (the run ended after its metrics were flushed). Skip interpreter teardown, which waits up
    # to a second for MLflow's idle logging threads: a second per trial, for nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train(job: TrialJob, run: TrackedRun, stop_requested: threading.Event) -> TrialRecord:
    sweep = SweepConfig.model_validate(job.sweep)
    sweep_dir = Path(job.sweep_dir)
    # Retried as a whole: opening an RDB storage connects and checks the schema before the retrying storage exists.
    study = retry_on_connection_loss(
        lambda: optuna.load_study(
            study_name=sweep.name, storage=open_storage(job.storage_url), pruner=build_pruner(sweep)
        )
    )
    trial = compat.trial_handle(study, job.trial_id)
    train_config = resolve_train_config(sweep, sweep_dir, job.overrides)
    # What the sweep searched, apart from what it fixed: `search.*` params and a tag naming them, for the UI's columns.
    run.log_params({f"search.{name}": param_value(value) for name, value in job.params.items()})
    run.set_tags({"ftlab.searched": ", ".join(job.params)})
    expected = {
        "learning_rate": train_config.learning_rate,
        "total_train_batch_size": train_config.total_train_batch_size,
    }
    callbacks = [
        PruningCallback(trial, sweep.objectives[0].metric, expected, can_prune=len(sweep.objectives) == 1),
        ProgressCallback(Path(job.progress_file)),
    ]
    record = run_trial(
        sweep,
        train_config,
        run,
        Path(job.trial_dir),
        sweep_dir=sweep_dir,
        callbacks=callbacks,
        resume_from=Path(job.resume_from) if job.resume_from else None,
        stop_requested=stop_requested,
        nested=True,
        holdout=job.holdout,
    )
    if compat.storage_of(study).get_trial(job.trial_id).state.is_finished():
        raise TrialReapedError
    record.values = objective_values(sweep, record, holdout=job.holdout)
    # Only finished trials have these: a column where a pruned trial's early eval/loss cannot pass for a final one.
    # Each under its own name: a confirmation on the holdout logs its validation figures too, for the gap.
    finals = [o.metric for o in sweep.objectives] + (list(HOLDOUT_FIGURES.values()) if job.holdout else [])
    run.log_metrics({f"final/{name}": record.metrics[name] for name in dict.fromkeys(finals)}, step=0)
    return record
