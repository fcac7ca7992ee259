"""What runs inside a trial's own process: train, report to Optuna for pruning, write one result file.

The sweep process starts this through a fork server that has already imported torch, transformers, datasets, MLflow
and Optuna, so a trial process starts in a fraction of a second yet shares no state (or GPU memory) with the others.
Whatever happens here, the parent learns it from the result file, or from the exit code when the process died.
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from mlflow import MlflowClient

from ftlab.config import SweepConfig
from ftlab.console import quiet_libraries
from ftlab.errors import UserError
from ftlab.settings import resolve_train_config
from ftlab.sweep.resilience import retry_on_connection_loss
from ftlab.sweep.space import split_effective_batch
from ftlab.sweep.study import build_pruner, open_storage
from ftlab.tracking import RunTracker
from ftlab.training.callbacks import TrainingCallback, TrainPlan
from ftlab.training.loop import NonFiniteLossError, TrainingPreemptedError
from ftlab.trial import run_trial


@dataclass(frozen=True)
class TrialJob:
    """Everything a trial process needs, picklable."""

    sweep: dict[str, Any]
    sweep_dir: str
    storage_url: str
    study_name: str
    trial_id: int
    trial_number: int
    overrides: dict[str, Any]
    tracking_uri: str
    run_id: str
    result_file: str
    progress_file: str
    cuda_visible_devices: str | None = None
    cpu_threads: int | None = None  # several CPU trials at once split the cores instead of oversubscribing them
    worker_pid: int = field(default_factory=os.getpid)  # the sweep process that started the trial
    trial_dir: str | None = None
    resume_from: str | None = None  # a retried trial's predecessor's checkpoint


@dataclass
class TrialReport:
    """The result file's content."""

    state: str  # complete | pruned | failed | interrupted
    reason: str = ""
    values: list[float] = field(default_factory=list)
    eval_loss: float | None = None
    perplexity: float | None = None
    train_loss: float | None = None
    tokens_seen: int | None = None
    seconds: float | None = None
    device: str | None = None
    model_dir: str | None = None
    data_fingerprint: str | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    retry: bool = False  # the trial was lost to something outside it (SIGKILL, preemption): run it again

    def write(self, path: Path) -> None:
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(asdict(self)))
        os.replace(staging, path)

    @classmethod
    def read(cls, path: Path) -> TrialReport | None:
        return cls(**json.loads(path.read_text())) if path.exists() else None


class SettingsNotAppliedError(RuntimeError):
    """A sampled hyperparameter did not reach the trainer as sampled."""


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
        retry_on_connection_loss(lambda: self.trial.report(value, step=tokens_seen))
        if retry_on_connection_loss(self.trial.should_prune):
            raise optuna.TrialPruned(f"pruned after {tokens_seen:,} tokens: {self.metric} {value:.4f}")


class ProgressCallback(TrainingCallback):
    """Writes the latest step, loss and eval loss to a small file that the sweep's live view reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state: dict[str, Any] = {"step": 0, "total_steps": None, "train_loss": None, "eval_loss": None}

    def _write(self) -> None:
        staging = self.path.with_suffix(".tmp")
        staging.write_text(json.dumps(self.state))
        os.replace(staging, self.path)

    def on_train_begin(self, plan: TrainPlan) -> None:
        self.state.update(step=0, total_steps=plan.total_steps)
        self._write()

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.state.update(step=step, train_loss=metrics["train/loss"])
        self._write()

    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        self.state.update(step=step, eval_loss=metrics["eval/loss"])
        self._write()


def _objective_values(sweep: SweepConfig, eval_loss: float, perplexity: float, seconds: float) -> list[float]:
    by_metric = {"eval/loss": eval_loss, "eval/perplexity": perplexity, "cost/device_hours": seconds / 3600}
    return [by_metric[objective.metric] for objective in sweep.objectives]


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


def run_trial_job(job: TrialJob) -> None:
    """Entry point of a trial process. Never raises: every outcome ends in the result file and the run's state."""
    _die_with_worker(job.worker_pid)
    if job.cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = job.cuda_visible_devices  # before anything touches CUDA
    os.environ["FTLAB_TRIAL_NUMBER"] = str(job.trial_number)
    if job.cpu_threads:
        torch.set_num_threads(job.cpu_threads)
    quiet_libraries()
    result_file = Path(job.result_file)
    tracker = RunTracker(MlflowClient(tracking_uri=job.tracking_uri), job.run_id)
    # SIGTERM (preemption, from the worker or from a scheduler signalling the whole job) ends the trial at the next
    # step boundary with a checkpoint, so its retry loses nothing.
    stop_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.set())
    try:
        report = _train_with_oom_retry(job, tracker, stop_requested)
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches this process directly and again through the sweep; let only the first count.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        report = TrialReport("interrupted", "stopped by Ctrl-C")
        tracker.end("KILLED", reason=report.reason)
    report.write(result_file)
    # Everything is stored (the run ended after its metrics were flushed). Skip interpreter teardown, which waits up
    # to a second for MLflow's idle logging threads: a second per trial, for nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train_with_oom_retry(job: TrialJob, tracker: RunTracker, stop_requested: threading.Event) -> TrialReport:
    sweep = SweepConfig.model_validate(job.sweep)
    sweep_dir = Path(job.sweep_dir)
    # The pruner is not stored with the study: build the sweep's own, or Optuna's default would decide.
    study = retry_on_connection_loss(
        lambda: optuna.load_study(
            study_name=job.study_name, storage=open_storage(job.storage_url), pruner=build_pruner(sweep)
        )
    )
    trial = optuna.trial.Trial(study, job.trial_id)
    overrides = dict(job.overrides)
    oom_history: list[str] = []
    while True:
        out_of_memory = None
        try:
            train_config = resolve_train_config(sweep, sweep_dir, overrides)
            expected = {
                "learning_rate": train_config.learning_rate,
                "total_train_batch_size": train_config.total_train_batch_size,
            }
            callbacks = [
                PruningCallback(trial, sweep.objectives[0].metric, expected, can_prune=len(sweep.objectives) == 1),
                ProgressCallback(Path(job.progress_file)),
            ]
            outcome = run_trial(
                sweep,
                train_config,
                sweep_dir=sweep_dir,
                tracking_uri=job.tracking_uri,
                run_name=f"trial-{job.trial_number:03d}",
                callbacks=callbacks,
                tracker=tracker,
                log_params=not oom_history,  # MLflow params are immutable; retries are recorded as tags
                trial_dir=Path(job.trial_dir) if job.trial_dir else None,
                resume_from=Path(job.resume_from) if job.resume_from else None,
                stop_requested=stop_requested,
            )
            result = outcome.result
            tracker.end("FINISHED")
            return TrialReport(
                "complete",
                values=_objective_values(sweep, result.eval_loss, result.eval_perplexity, result.seconds),
                eval_loss=result.eval_loss,
                perplexity=result.eval_perplexity,
                train_loss=result.train_loss,
                tokens_seen=result.tokens_seen,
                seconds=result.seconds,
                device=outcome.device,
                model_dir=str(outcome.model_dir),
                data_fingerprint=outcome.data_fingerprint,
                per_device_train_batch_size=train_config.per_device_train_batch_size,
                gradient_accumulation_steps=train_config.gradient_accumulation_steps,
            )
        except torch.cuda.OutOfMemoryError as error:
            out_of_memory = str(error).splitlines()[0] if str(error) else "CUDA out of memory"
        except optuna.TrialPruned as error:
            tracker.end("KILLED", reason=f"pruned: {error}")
            return TrialReport("pruned", str(error))
        except TrainingPreemptedError as error:
            tracker.end("KILLED", reason=str(error))
            return TrialReport("interrupted", str(error), retry=True)
        except NonFiniteLossError as error:
            reason = f"pruned: {error}"
            tracker.end("KILLED", reason=reason)
            return TrialReport("pruned", reason)
        except (UserError, SettingsNotAppliedError) as error:
            tracker.end("FAILED", reason=str(error))
            return TrialReport("failed", str(error))
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            tracker.end("FAILED", reason=reason + "\n" + traceback.format_exc(limit=8))
            return TrialReport("failed", reason)

        # Out of memory: free the failed attempt (outside the except block, whose traceback pins its tensors),
        # then retry with half the micro-batch and twice the accumulation: the sampled effective batch is kept.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        micro, total = train_config.per_device_train_batch_size, train_config.total_train_batch_size
        if micro == 1:
            reason = f"out of memory even at per_device_train_batch_size=1: {out_of_memory}"
            tracker.end("FAILED", reason=reason)
            return TrialReport("failed", reason)
        new_micro, new_accumulation = split_effective_batch(total, max(1, micro // 2))
        oom_history.append(f"{micro}x{train_config.gradient_accumulation_steps}->{new_micro}x{new_accumulation}")
        overrides.update(per_device_train_batch_size=new_micro, gradient_accumulation_steps=new_accumulation)
        tracker.set_tags(
            {
                "ftlab.oom_retries": ", ".join(oom_history),
                "ftlab.applied.per_device_train_batch_size": str(new_micro),
                "ftlab.applied.gradient_accumulation_steps": str(new_accumulation),
            }
        )
