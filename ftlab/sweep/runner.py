"""The worker loop of ``ftlab sweep`` and ``ftlab worker``: ask the study for a trial, run it in a process of its
own as a nested MLflow run, tell the study what it came to; ``workers`` of these loops at once, as threads.

The study's storage is the single source of truth, so a sweep run again resumes where it stopped, and workers on
other machines share the budget through it.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import optuna

from ftlab import paths
from ftlab.config import SweepConfig, TrainConfig
from ftlab.settings import resolve_train_config
from ftlab.sweep import compat, runs
from ftlab.sweep import study as studies
from ftlab.sweep.budget import Budget, Decision, decide, failing
from ftlab.sweep.forkserver import trial_process_context
from ftlab.sweep.process import TrialJob, TrialProcess, describe_exit
from ftlab.sweep.reaper import reap, reap_due, retried_trial_number, retry_trial, stale_trial_callback
from ftlab.sweep.record import BASELINE_ATTR, OVERRIDES_ATTR, PARENT_RUN_ATTR, RUN_ID_ATTR, TrialRecord
from ftlab.sweep.resilience import is_concurrent_schema_creation, is_connection_loss, retry_on_connection_loss
from ftlab.sweep.space import baseline_point, same_point, sample_overrides
from ftlab.tracking import (
    DESCRIPTION_TAG,
    TrackedRun,
    end_run,
    experiment_name,
    flatten,
    start_or_resume_parent_run,
)

logger = logging.getLogger(__name__)

_POLL_S = 0.5
# A worker with nothing to start looks again after 0.5 s, then 1 s, then every 2 s (each with jitter, so that many
# workers do not look in step); a trial ending in this process wakes it at once.
_IDLE_MAX_S = 2.0

EventKind = Literal["started", "COMPLETE", "PRUNED", "FAIL"]


@dataclass
class TrialEvent:
    """Something the live view or the plain log shows."""

    kind: EventKind
    number: int
    params: dict[str, Any]
    baseline: bool
    record: TrialRecord | None = None
    worker: int = 0


@dataclass
class RunningTrial:
    number: int
    params: dict[str, Any]
    baseline: bool
    progress_file: Path
    started: float = field(default_factory=time.time)


class SweepFailingError(Exception):
    """The sweep stopped because its trials keep failing (see :func:`ftlab.sweep.budget.failing`)."""


class PreemptedError(Exception):
    """The worker was told to stop (SIGTERM: preemption, a scheduler's time limit); its trials were checkpointed and
    queued for a retry."""


class MachineFaultError(Exception):
    """This machine cannot run trials (its disk is full): the worker stopped taking them, and the trial that found
    out is queued for a retry, which another worker, or this one once room is made, runs."""


class SweepRunner:
    """Runs one sweep from this machine with ``workers`` trials at a time."""

    def __init__(
        self,
        sweep: SweepConfig,
        sweep_file: Path,
        storage_url: str,
        tracking_uri: str,
        workers: int = 1,
        on_event: Callable[[TrialEvent], None] | None = None,
        seed_salt: int = 0,
        accept_changes: bool = False,
        parent_run_name: str | None = None,
    ) -> None:
        self._context = trial_process_context()
        self.sweep = sweep
        self.sweep_file = sweep_file
        self.storage_url = storage_url
        self.tracking_uri = tracking_uri
        self.workers = workers
        self.on_event = on_event or (lambda event: None)
        self.experiment = experiment_name(sweep)
        self.parent_run_name = parent_run_name or runs.parent_run_name(sweep)
        self.baseline_config: TrainConfig = resolve_train_config(sweep, sweep_file.parent, source=str(sweep_file))
        self.baseline_point = baseline_point(sweep, self.baseline_config, str(sweep_file))
        self.study_lock = studies.StudyLock(storage_url, sweep.name)
        self.best_lock = studies.StudyLock(storage_url, sweep.name, purpose="best")

        signature = studies.sweep_signature(sweep, self.baseline_config)

        def open_study() -> optuna.Study:
            with self.study_lock.held():  # workers starting together would race to create the schema and the study
                study = studies.create_or_load_study(sweep, storage_url, stale_trial_callback(tracking_uri), seed_salt)
                studies.remember_sweep(study, signature, str(sweep_file), accept_changes)
                return study

        self.study: optuna.Study = retry_on_connection_loss(open_study, also=is_concurrent_schema_creation)
        # The failure budget counts what happens from now on: a sweep run again after a fix gets a fresh start.
        self._finished_at_start = {trial.number for trial in self.study.trials if trial.state.is_finished()}
        self.failure: str | None = None
        self.machine_fault: str | None = None
        self.preempted = False
        self.parent_run_id = ""
        self.running: dict[int, RunningTrial] = {}
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._processes: set[TrialProcess] = set()
        self._worker_errors: list[BaseException] = []
        self._trial_ended = threading.Condition()

    # --- start and end of the sweep ----------------------------------------------------------------------------------

    def start_parent_run(self) -> str:
        """One MLflow parent run per sweep, reopened when the sweep resumes; workers agree on it under the lock."""

        def start() -> str:
            with self.study_lock.held():
                run_id = start_or_resume_parent_run(
                    self.tracking_uri,
                    self.experiment,
                    run_name=self.parent_run_name,
                    existing_run_id=self.study.user_attrs.get(PARENT_RUN_ATTR),
                    tags=runs.parent_run_tags(self.sweep, self.sweep_file, self.storage_url),
                    params=flatten(self.sweep.model_dump(mode="json", exclude={"storage", "tracking"})),
                )
                self.study.set_user_attr(PARENT_RUN_ATTR, run_id)
                return run_id

        self.parent_run_id = retry_on_connection_loss(start)
        return self.parent_run_id

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Close the parent run (the report module logs plots to it first)."""
        if self.parent_run_id:
            end_run(self.tracking_uri, self.parent_run_id, status, reason)

    def run(self, budget: Budget, timeout: float | None) -> None:
        """Run trials until the budget is spent (see :func:`ftlab.sweep.budget.decide`), ``timeout`` passes, or
        Ctrl-C. A fixed plan runs what is enqueued; a search first enqueues the baseline."""

        def enqueue() -> None:
            with self.study_lock.held():  # two workers starting together must not both enqueue it
                studies.enqueue_baseline(self.study, self.baseline_point)

        if not budget.fixed:
            retry_on_connection_loss(enqueue)
        self.start_parent_run()
        deadline = time.monotonic() + timeout if timeout else None
        finished = [threading.Event() for _ in range(self.workers)]
        for index in range(self.workers):
            threading.Thread(
                target=self._worker, args=(index, budget, deadline, finished[index]), name=f"ftlab-worker-{index}"
            ).start()
        # Wait on events, not Thread.join: a KeyboardInterrupt that lands inside join() can leave the thread looking
        # finished while it still records its trial's outcome.
        previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            while not all(event.wait(timeout=_POLL_S) for event in finished):
                pass
        except KeyboardInterrupt:
            self._stop_trials(signal.SIGINT)  # a terminal's Ctrl-C reaches them directly too
            for event in finished:
                event.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
        self._raise_why_stopped_early()

    def _raise_why_stopped_early(self) -> None:
        """Every worker thread is done: raise what stopped them before the budget was met, if anything did."""
        if self.preempted:
            raise PreemptedError("stopped by SIGTERM")
        if self.machine_fault is not None:
            raise MachineFaultError(self.machine_fault)
        if self.failure is not None:
            raise SweepFailingError(self.failure)
        if self._worker_errors:  # a worker thread failed outside any trial: the sweep did not do what it was asked
            raise self._worker_errors[0]

    def _on_sigterm(self, signum: int, frame: object) -> None:
        """Preemption: each running trial checkpoints at its next step and is queued for a retry; no new trial starts,
        and the worker exits non-zero once they have."""
        self.preempted = True
        self._stop_trials(signal.SIGTERM)

    def _stop_trials(self, signum: signal.Signals) -> None:
        self.stop_event.set()
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            process.signal(signum)

    # --- one worker --------------------------------------------------------------------------------------------------

    def _worker(self, index: int, budget: Budget, deadline: float | None, finished: threading.Event) -> None:
        idle_s = _POLL_S
        try:
            while not self.stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
                with self._lock:
                    decision, trial_id = retry_on_connection_loss(lambda: self._next_trial(budget))
                if decision is Decision.DONE:
                    return
                if trial_id is None:
                    with self._trial_ended:
                        self._trial_ended.wait(timeout=idle_s * random.uniform(0.75, 1.25))
                    idle_s = min(idle_s * 2, _IDLE_MAX_S)
                    continue
                idle_s = _POLL_S
                self._run_one(trial_id, index)
        except BaseException as error:
            # Stop the other workers too and let run() raise it: a sweep whose worker died must not exit 0.
            self._worker_errors.append(error)
            self.stop_event.set()
        finally:
            finished.set()

    def _next_trial(self, budget: Budget) -> tuple[Decision, int | None]:
        """Reap dead workers' trials, then ask for a trial if the budget allows; the decision and the trial's id.

        Every worker of the study agrees on the budget by holding the study lock. Retried as a whole when the
        connection drops: only ``ask`` writes, and it is the last step.
        """
        if not reap_due(self.study):
            # A first look without the lock: a worker with nothing to start (the budget is spent, or running trials
            # may meet it) must not queue for the lock that starting workers need. DONE never turns back, and a START
            # is decided again under the lock.
            decision = self._decide(self.study.get_trials(deepcopy=False), budget)
            if decision is not Decision.START:
                return decision, None
        with self.study_lock.held():
            reap(self.study)
            decision = self._decide(self.study.get_trials(deepcopy=False), budget)
            if decision is not Decision.START:
                return decision, None
            return decision, compat.trial_id_of(studies.ask(self.study))

    def _decide(self, trials: list[optuna.trial.FrozenTrial], budget: Budget) -> Decision:
        """The budget's decision on ``trials``; DONE, and the sweep stopping, when they keep failing."""
        decision = decide([trial.state for trial in trials], budget, studies.grid_exhausted(self.study))
        if decision is not Decision.DONE and (reason := self._failing(trials)) is not None:
            self.failure = reason
            self.stop_event.set()
            return Decision.DONE
        return decision

    def _failing(self, trials: list[optuna.trial.FrozenTrial]) -> str | None:
        """Why the trials since this worker started keep failing, if they do (every worker of the study sees it)."""
        finished = [t for t in trials if t.state.is_finished() and t.number not in self._finished_at_start]
        finished.sort(key=lambda trial: trial.datetime_complete or trial.datetime_start or datetime.min)
        records = [TrialRecord.from_trial(trial) for trial in finished]
        return failing(records, self.sweep.budget.max_failures_in_a_row)

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
        return trial, overrides, is_baseline, retried_trial_number(self.study, trial_id)

    def _cuda_devices_for(self, worker: int) -> str | None:
        """One GPU per worker when there are several, by CUDA_VISIBLE_DEVICES; CPU workers share the CPU."""
        if self.workers == 1:
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            gpus = visible.split(",")
        else:
            import torch  # only here: the worker process otherwise never needs torch

            gpus = [str(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        return gpus[worker % len(gpus)] if gpus else None

    def _job(
        self, trial: optuna.Trial, overrides: dict[str, Any], run_id: str, retry_of: int | None, worker: int
    ) -> TrialJob:
        trial_dir = paths.trial_dir(self.baseline_config.output_dir, self.sweep.name, trial.number)
        trial_dir.mkdir(parents=True, exist_ok=True)
        resume_dir = None
        if retry_of is not None:
            resume_dir = paths.trial_dir(self.baseline_config.output_dir, self.sweep.name, retry_of)
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
            resume_from=str(resume_dir / paths.CHECKPOINT_FILE) if resume_dir else None,
        )

    def _run_one(self, trial_id: int, worker: int) -> None:
        try:
            trial, overrides, is_baseline, retry_of = retry_on_connection_loss(lambda: self._prepare(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # reaped while this worker was paused (SIGSTOP, a frozen VM): failed and retried elsewhere
        tags = runs.trial_run_tags(self.sweep, self.sweep_file, trial, is_baseline, retry_of)
        run = self._start_run(trial, is_baseline, tags)
        if run is None:
            return
        job = self._job(trial, overrides, run.run_id, retry_of, worker)
        process = TrialProcess(self._context, job, lambda: self._beat(trial_id), self.sweep.storage.heartbeat_interval)
        with self._lock:
            self.running[trial.number] = RunningTrial(trial.number, trial.params, is_baseline, Path(job.progress_file))
            self._processes.add(process)
        self.on_event(TrialEvent("started", trial.number, trial.params, is_baseline, worker=worker))
        try:
            record, exitcode = process.run()
            if record is None:  # the process died without a word: segfault, OOM killer, SIGKILL
                reason = f"trial process {describe_exit(exitcode)}"
                run.end("FAILED", reason=reason)
                # SIGKILL comes from outside (the OOM killer, a scheduler, a dying node): worth one retry, which
                # resumes from the last complete checkpoint. A segfault would most likely just happen again.
                record = TrialRecord("FAIL", reason, retry=exitcode == -signal.SIGKILL)
            self._tell(trial_id, record)
            if record.machine_fault:
                # Every trial of this machine would fail the same way: stop taking them, let the others finish.
                self.machine_fault = self.machine_fault or f"trial #{trial.number} failed: {record.reason}"
                self.stop_event.set()
            self._show(run, record, tags[DESCRIPTION_TAG])
        finally:
            with self._lock:
                self.running.pop(trial.number, None)
                self._processes.discard(process)
            with self._trial_ended:  # this process's idle workers look again now, not after their back-off
                self._trial_ended.notify_all()
        self.on_event(TrialEvent(record.state, trial.number, trial.params, is_baseline, record, worker))

    def _start_run(self, trial: optuna.Trial, is_baseline: bool, tags: dict[str, str]) -> TrackedRun | None:
        """The trial's MLflow run, linked from the trial; None when the trial was reaped meanwhile (this worker was
        paused past the grace period), with the run ended KILLED: no run is left RUNNING without a trial."""
        run = TrackedRun.start(
            self.tracking_uri,
            self.experiment,
            run_name=runs.trial_run_name(trial, is_baseline),
            parent_run_id=self.parent_run_id,
            tags=tags,
        )
        try:
            retry_on_connection_loss(lambda: trial.set_user_attr(RUN_ID_ATTR, run.run_id))
        except BaseException as error:
            run.end("KILLED", reason=f"its trial could not be started: {error}")
            if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
                return None
            raise
        return run

    def _show(self, run: TrackedRun, record: TrialRecord, description: str) -> None:
        """What the trial came to, on its run; a new best, on the parent run (workers agree under the lock)."""
        try:
            run.set_tags(runs.outcome_tags(record, self.sweep.objectives[0].metric, description))
        except Exception as error:  # the tracking server is down: the trial itself is stored, in the study and its run
            logger.warning("could not describe trial %s's run in MLflow: %s", record.number, error)
        if record.state == "COMPLETE":

            def show_best() -> None:
                # Workers take turns (each reads the study and then writes MLflow), under a lock of its own: MLflow
                # calls under the study lock held up every worker starting a trial.
                with self.best_lock.held():
                    runs.show_best(self.study, self.sweep, self.tracking_uri, self.parent_run_id)

            retry_on_connection_loss(show_best)  # it reads the study: a database restart must not end the worker

    def _beat(self, trial_id: int) -> None:
        try:
            compat.record_heartbeat(self.study, trial_id)
        except Exception as error:
            if not is_connection_loss(error):
                raise
            # A missed beat is harmless while the grace period lasts; the next one reconnects.

    def _tell(self, trial_id: int, record: TrialRecord) -> None:
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
