"""One trial of a sweep, from start to end: sample its settings, pick its GPU, build its job, start its MLflow child
run, run it in a process of its own (with heartbeats to the study meanwhile), tell the study what it came to and show
that on its run. :mod:`ftlab.sweep.scheduler` decides when a trial starts; this module runs it.
"""

from __future__ import annotations

import logging
import multiprocessing.context
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ftlab import paths
from ftlab.config import SweepConfig, TrainConfig
from ftlab.folders import refused_write
from ftlab.record import BASELINE_ATTR, HOLDOUT_ATTR, OVERRIDES_ATTR, RUN_ID_ATTR, TRIAL_DIR_ATTR, TrialRecord
from ftlab.storage import StudyLock, is_connection_loss, retry_on_connection_loss
from ftlab.sweep import compat, runs
from ftlab.sweep import study as studies
from ftlab.sweep.events import RunningTrial, TrialEvent
from ftlab.sweep.job import TrialJob
from ftlab.sweep.process import TrialProcess, describe_exit
from ftlab.sweep.reaper import lost_record, retried_trial_number, retry_series, retry_trial
from ftlab.sweep.space import same_point, sample_overrides
from ftlab.tracking import DESCRIPTION_TAG, TrackedRun, experiment_name

logger = logging.getLogger(__name__)


def gpus_of_worker(worker: int, per_trial: int, gpus: list[str]) -> str:
    """The CUDA_VISIBLE_DEVICES of worker ``worker``'s trials, ``per_trial`` GPUs each: worker w of K gets GPUs
    w×G … w×G+G−1 of ``gpus``; with fewer than K×G GPUs the workers wrap around and share them."""
    first = worker * per_trial
    return ",".join(gpus[(first + index) % len(gpus)] for index in range(per_trial))


@dataclass(eq=False, kw_only=True)
class TrialLauncher:
    """Runs the trials this machine's workers were given, one per :meth:`launch` call, and keeps track of those
    running now (for the view, and for passing a signal on to their processes).

    Built by :meth:`ftlab.sweep.scheduler.Scheduler.open`, which opens the study and the rest.
    """

    sweep: SweepConfig
    sweep_file: Path
    storage_url: str
    tracking_uri: str
    study: optuna.Study
    baseline_config: TrainConfig
    baseline_point: dict[str, Any]
    workers: int
    context: multiprocessing.context.BaseContext
    best_lock: StudyLock
    # What the parent run shows after each COMPLETE trial (the scheduler's ParentRun.show).
    show_parent: Callable[[optuna.Study, str, str], None]
    # Set when no trial should start any more (this machine's disk is full, or the grid is used up); the scheduler's.
    stop_event: threading.Event = field(default_factory=threading.Event)
    parent_run_id: str = ""  # set by the scheduler once the sweep's parent run is started
    machine_fault: str | None = None  # why this machine cannot run trials, once a trial found out (its disk is full)
    running: dict[int, RunningTrial] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _processes: set[TrialProcess] = field(default_factory=set, init=False)

    def signal_all(self, signum: signal.Signals) -> None:
        """Pass ``signum`` on to every trial process running now."""
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            process.signal(signum)

    def launch(self, trial_id: int, worker: int, on_event: Callable[[TrialEvent], None]) -> None:
        """Run the trial ``trial_id`` (just asked for by ``worker``) to its end and tell the study what it came to;
        ``on_event`` hears when it starts and how it ends."""
        try:
            trial, overrides, is_baseline, retry_of = retry_on_connection_loss(lambda: self._prepare(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # reaped while this worker was paused (SIGSTOP, a frozen VM): failed and retried elsewhere
        tags = runs.trial_run_tags(self.sweep, self.sweep_file, trial, is_baseline, retry_of)
        run = self._start_run(trial, is_baseline, tags)
        if run is None:
            return
        runs.note_trial(trial, is_baseline, self.tracking_uri, run.run_id)
        try:
            job = self._job(trial, overrides, run.run_id, retry_of, worker)
        except OSError as error:  # its folder cannot be made (read-only since the sweep started, a file in the way)
            self._cannot_start(trial_id, trial.number, run, error)
            return
        process = TrialProcess(self.context, job, lambda: self._beat(trial_id), self.sweep.storage.heartbeat_interval)
        label = runs.trial_label(trial, is_baseline)
        with self._lock:
            self.running[trial.number] = RunningTrial(
                trial.number, trial.params, is_baseline, Path(job.progress_file), label=label
            )
            self._processes.add(process)
        on_event(TrialEvent("started", trial.number, trial.params, is_baseline, label=label))
        try:
            record, exitcode = process.run()
            if record is None:  # the process died without a word: segfault, OOM killer, SIGKILL
                reason = f"trial process {describe_exit(exitcode)}"
                # SIGKILL comes from outside (the OOM killer, a scheduler, a dying node): retried, resuming from the
                # last complete checkpoint, unless these settings keep dying. A segfault would just happen again.
                if exitcode == -signal.SIGKILL:
                    record = lost_record(compat.storage_of(self.study).get_trial(trial_id), reason)
                else:
                    record = TrialRecord("FAIL", reason)
                run.end("KILLED" if record.retry else "FAILED", reason=record.reason)
            self._tell(trial_id, trial.number, record)
            self._show(run, record, trial.number, tags[DESCRIPTION_TAG])
        finally:
            with self._lock:
                self.running.pop(trial.number, None)
                self._processes.discard(process)
        on_event(TrialEvent(record.state, trial.number, trial.params, is_baseline, record, label))

    def _cannot_start(self, trial_id: int, number: int, run: TrackedRun, error: OSError) -> None:
        """A trial whose folder cannot be made fails for a retry, its run ends KILLED, and this machine takes no more
        trials: every one would fail alike (as on a full disk)."""
        reason = f"cannot make the trial's folder: {refused_write(error) or error} (make train.output_dir writable)"
        run.end("KILLED", reason=reason)
        self._tell(trial_id, number, TrialRecord("FAIL", reason, retry=True, machine_fault=True))

    def _prepare(self, trial_id: int) -> tuple[optuna.Trial, dict[str, Any], bool, int | None]:
        """The trial with its settings sampled, whether it is the baseline, and which trial it retries (if any).

        Retried as a whole when the connection drops. Each attempt reloads the trial, so a parameter whose write
        was committed just before the connection died is read back rather than sampled (and stored) twice.
        """
        trial = compat.trial_handle(self.study, trial_id)
        overrides = {
            **sample_overrides(trial, self.sweep, self.baseline_config),
            **trial.user_attrs.get(OVERRIDES_ATTR, {}),
        }
        grid = isinstance(self.study.sampler, optuna.samplers.GridSampler)
        if grid and same_point(trial.params, self.baseline_point):
            # A grid ignores the enqueued baseline; its own trial at the baseline's point is marked instead.
            trial.set_user_attr(BASELINE_ATTR, True)
        is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        # Where its result file will be: a worker that reaps it after this one died reads it from there.
        trial_dir = paths.trial_dir(self.baseline_config.output_dir, self.sweep.name, trial.number)
        trial.set_user_attr(TRIAL_DIR_ATTR, str(trial_dir.absolute()))
        return trial, overrides, is_baseline, retried_trial_number(self.study, trial_id)

    def _cuda_devices_for(self, worker: int) -> str | None:
        """``nproc_per_node`` GPUs per worker (one by default) when there are several workers, by
        CUDA_VISIBLE_DEVICES: worker w of K gets GPUs w×G … w×G+G−1. CPU workers share the CPU."""
        if self.workers == 1:
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            gpus = visible.split(",")
        else:
            import torch  # only here: the worker process otherwise never needs torch

            gpus = [str(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        return gpus_of_worker(worker, self.baseline_config.nproc_per_node, gpus) if gpus else None

    def _job(
        self, trial: optuna.Trial, overrides: dict[str, Any], run_id: str, retry_of: int | None, worker: int
    ) -> TrialJob:
        trial_dir = paths.trial_dir(self.baseline_config.output_dir, self.sweep.name, trial.number)
        trial_dir.mkdir(parents=True, exist_ok=True)
        resume_from = None
        if retry_of is not None:
            # The latest checkpoint of the series: a retry killed before its first one resumes from an earlier one.
            series = retry_series(self.study, compat.trial_id_of(trial))
            checkpoints = [
                paths.trial_dir(self.baseline_config.output_dir, self.sweep.name, number) / paths.CHECKPOINT_FILE
                for number in reversed(series)
            ]
            resume_from = next((path for path in checkpoints if path.exists()), checkpoints[0])
        return TrialJob(
            sweep=self.sweep.model_dump(mode="json"),
            sweep_dir=str(self.sweep_file.parent),
            storage_url=self.storage_url,
            trial_id=compat.trial_id_of(trial),
            trial_number=trial.number,
            overrides=overrides,
            params=dict(trial.params),
            tracking_uri=self.tracking_uri,
            run_id=run_id,
            trial_dir=str(trial_dir),
            cuda_visible_devices=self._cuda_devices_for(worker),
            cpu_threads=max(1, (os.cpu_count() or 1) // self.workers) if self.workers > 1 else None,
            resume_from=str(resume_from) if resume_from else None,
            holdout=bool(trial.user_attrs.get(HOLDOUT_ATTR)),
        )

    def _start_run(self, trial: optuna.Trial, is_baseline: bool, tags: dict[str, str]) -> TrackedRun | None:
        """The trial's MLflow run, linked from the trial; None when the trial was reaped meanwhile (this worker was
        paused past the grace period), with the run ended KILLED: no run is left RUNNING without a trial."""
        run = TrackedRun.start(
            self.tracking_uri,
            experiment_name(self.sweep),
            run_name=runs.trial_run_name(trial, is_baseline),
            parent_run_id=self.parent_run_id,
            tags=tags,
        )
        try:
            trial.set_user_attr(RUN_ID_ATTR, run.run_id)
        except BaseException as error:
            run.end("KILLED", reason=f"its trial could not be started: {error}")
            if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
                return None
            raise
        return run

    def _show(self, run: TrackedRun, record: TrialRecord, number: int, description: str) -> None:
        """What the trial came to, on its run; a new best, on the parent run (workers agree under the lock)."""
        try:
            run.set_tags(runs.outcome_tags(record, self.sweep.objectives[0].metric, description))
        except Exception as error:  # the tracking server is down: the trial itself is stored, in the study and its run
            logger.warning("could not describe trial %s's run in MLflow: %s", number, error)
        if record.state == "COMPLETE":

            def show_best() -> None:
                # Workers take turns (each reads the study and then writes MLflow), under a lock of its own: MLflow
                # calls under the study lock held up every worker starting a trial.
                with self.best_lock.held():
                    self.show_parent(self.study, self.tracking_uri, self.parent_run_id)

            retry_on_connection_loss(show_best)  # it reads the study: a database restart must not end the worker

    def _beat(self, trial_id: int) -> None:
        try:
            compat.record_heartbeat(self.study, trial_id)
        except Exception as error:
            if not is_connection_loss(error):
                raise
            # A missed beat is harmless while the grace period lasts; the next one reconnects.

    def _tell(self, trial_id: int, number: int, record: TrialRecord) -> None:
        """Tell the study what the trial came to; queue its retry, and stop this machine, where the record says so."""
        try:
            retry_on_connection_loss(lambda: studies.tell(self.study, trial_id, record))
        except RuntimeError:
            # Optuna's grid sampler calls study.stop() once the grid is used up, which only works inside
            # study.optimize; the outcome is stored by then, so end this sweep instead.
            if not studies.grid_exhausted(self.study):
                raise
            self.stop_event.set()
        if record.retry:
            # Lost to something outside the trial (SIGKILL, preemption): run it again, resuming from its checkpoint.
            retry_on_connection_loss(lambda: retry_trial(self.study, trial_id))
        if record.machine_fault:
            # Every trial of this machine would fail the same way: stop taking them, let the others finish.
            self.machine_fault = self.machine_fault or f"trial #{number} failed: {record.reason}"
            self.stop_event.set()
