"""``ftlab sweep``: an Optuna study around the baseline, each trial in a process of its own, each a nested MLflow run.

Worker threads in this process ask the study for a trial, start a trial process, wait for it and tell the study the
outcome. The study's storage is the single source of truth, so a sweep run again resumes where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.trial import TrialState

from ftlab.config import SweepConfig, TrainConfig
from ftlab.settings import resolve_train_config
from ftlab.sweep.attrs import BASELINE_ATTR, FAIL_REASON_ATTR, PARENT_RUN_ATTR, PRUNE_REASON_ATTR, RUN_ID_ATTR
from ftlab.sweep.child import TrialJob, TrialReport, run_trial_job
from ftlab.sweep.forkserver import trial_process_context
from ftlab.sweep.reaper import reap, retried_trial_number, retry_trial, stale_trial_callback
from ftlab.sweep.resilience import is_concurrent_schema_creation, is_connection_loss, retry_on_connection_loss
from ftlab.sweep.space import baseline_point, same_point, sample_overrides
from ftlab.sweep.study import StudyLock, create_or_load_study
from ftlab.tracking import RunTracker, flatten, redact_url
from ftlab.trial import CHECKPOINT_FILE

_POLL_S = 0.5


@dataclass
class TrialEvent:
    """Something the live view or the plain log shows."""

    kind: str  # started | complete | pruned | failed | interrupted
    number: int
    params: dict[str, Any]
    baseline: bool
    report: TrialReport | None = None
    worker: int = 0


@dataclass
class RunningTrial:
    number: int
    params: dict[str, Any]
    baseline: bool
    progress_file: Path
    started: float = field(default_factory=time.time)


class PreemptedError(KeyboardInterrupt):
    """The worker was told to stop (SIGTERM): a cluster preempting it, or a scheduler's time limit."""


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` still runs (a zombie, as an orphan becomes under a container's PID 1, does not)."""
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


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
    ) -> None:
        self._context = trial_process_context()
        self.sweep = sweep
        self.sweep_file = sweep_file
        self.sweep_dir = sweep_file.parent
        self.storage_url = storage_url
        self.tracking_uri = tracking_uri
        self.workers = workers
        self.on_event = on_event or (lambda event: None)
        self.baseline_config: TrainConfig = resolve_train_config(sweep, self.sweep_dir, source=str(sweep_file))
        self.baseline_point = baseline_point(sweep, self.baseline_config, str(sweep_file))
        self.study_lock = StudyLock(storage_url, sweep.name)

        def open_study() -> optuna.Study:
            with self.study_lock.held():  # workers starting together would race to create the schema and the study
                return create_or_load_study(sweep, storage_url, stale_trial_callback(tracking_uri), seed_salt)

        self.study: optuna.Study = retry_on_connection_loss(open_study, also=is_concurrent_schema_creation)
        self.preempted = False
        self.parent_run_id = ""
        self.running: dict[int, RunningTrial] = {}
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        self._processes: set[multiprocessing.process.BaseProcess] = set()
        self._worker_errors: list[BaseException] = []
        self.experiment = sweep.tracking.experiment or sweep.name

    # --- setup -------------------------------------------------------------------------------------------------

    @property
    def _grid(self) -> optuna.samplers.GridSampler | None:
        sampler = self.study.sampler
        return sampler if isinstance(sampler, optuna.samplers.GridSampler) else None

    def enqueue_baseline(self) -> None:
        """The documented recipe is trial 0 of every sweep, so the search is always measured against it.

        A grid sampler ignores enqueued trials and would run the baseline's point a second time; there the grid
        runs it once and that trial is marked as the baseline (see ``_run_one``).
        """
        has_baseline = any(trial.user_attrs.get(BASELINE_ATTR) for trial in self.study.get_trials(deepcopy=False))
        if not has_baseline and self._grid is None:
            self.study.enqueue_trial(self.baseline_point, user_attrs={BASELINE_ATTR: True}, skip_if_exists=False)

    def start_parent_run(self) -> str:
        """One MLflow parent run per sweep, reopened when the sweep resumes; workers agree on it under the lock."""

        def start() -> str:
            with self.study_lock.held():
                return self._start_parent_run()

        return retry_on_connection_loss(start)

    def _start_parent_run(self) -> str:
        existing = self.study.user_attrs.get(PARENT_RUN_ATTR)
        if existing:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.tracking_uri)
            try:
                client.update_run(existing, status="RUNNING")
                self.parent_run_id = existing
                return existing
            except Exception:  # the tracking store was reset since; start a fresh parent run
                pass
        tracker = RunTracker.start(
            self.tracking_uri,
            self.experiment,
            run_name=self.sweep.name,
            tags={
                "ftlab.role": "sweep",
                "optuna.study_name": self.sweep.name,
                "optuna.storage": redact_url(self.storage_url),
                "ftlab.sweep_file": str(self.sweep_file),
            },
        )
        tracker.log_params(flatten(self.sweep.model_dump(mode="json", exclude={"storage", "tracking"})))
        self.study.set_user_attr(PARENT_RUN_ATTR, tracker.run_id)
        self.parent_run_id = tracker.run_id
        return tracker.run_id

    # --- budget ------------------------------------------------------------------------------------------------

    def _counts(self) -> dict[TrialState, int]:
        counts = dict.fromkeys(TrialState, 0)
        for trial in self.study.get_trials(deepcopy=False):
            counts[trial.state] += 1
        return counts

    def _may_start(self, n_trials: int | None) -> bool | None:
        """True: start a trial now. None: wait (running trials may still meet the budget). False: done."""
        if self._grid is not None and self._grid.is_exhausted(self.study):
            return False
        counts = self._counts()
        max_trials = self.sweep.budget.max_trials
        if max_trials is not None and sum(counts.values()) - counts[TrialState.WAITING] >= max_trials:
            return False
        if n_trials is None:
            return True
        if counts[TrialState.COMPLETE] >= n_trials:
            return False
        if counts[TrialState.COMPLETE] + counts[TrialState.RUNNING] >= n_trials:
            return None
        return True

    # --- the worker loop ---------------------------------------------------------------------------------------

    def run(self, n_trials: int | None, timeout: float | None) -> None:
        """Run trials until ``n_trials`` COMPLETE trials exist in the study, ``timeout`` passes, or Ctrl-C."""

        def enqueue() -> None:
            with self.study_lock.held():  # two workers starting together must not both enqueue it
                self.enqueue_baseline()

        retry_on_connection_loss(enqueue)
        self.start_parent_run()
        deadline = time.monotonic() + timeout if timeout else None
        finished = [threading.Event() for _ in range(self.workers)]
        for index in range(self.workers):
            threading.Thread(
                target=self._worker, args=(index, n_trials, deadline, finished[index]), name=f"ftlab-worker-{index}"
            ).start()
        # Wait on events, not Thread.join: a KeyboardInterrupt that lands inside join() can leave the thread looking
        # finished while it still records its trial's outcome.
        previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            while not all(event.wait(timeout=_POLL_S) for event in finished):
                pass
        except KeyboardInterrupt:
            self.stop_event.set()
            self._interrupt_trials(signal.SIGTERM if self.preempted else signal.SIGINT)
            for event in finished:
                event.wait()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if self._worker_errors:  # a worker thread failed outside any trial: the sweep did not do what it was asked
            raise self._worker_errors[0]

    def _on_sigterm(self, signum: int, frame: object) -> None:
        """Preemption: stop like Ctrl-C, but the interrupted trials are retried (and the process exits non-zero)."""
        self.preempted = True
        raise PreemptedError("stopped by SIGTERM")

    def _worker(self, index: int, n_trials: int | None, deadline: float | None, finished: threading.Event) -> None:
        try:
            self._work(index, n_trials, deadline)
        except BaseException as error:
            # Stop the other workers too and let run() raise it: a sweep whose worker died must not exit 0.
            self._worker_errors.append(error)
            self.stop_event.set()
        finally:
            finished.set()

    def _work(self, index: int, n_trials: int | None, deadline: float | None) -> None:
        while not self.stop_event.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            with self._lock:
                decision, trial = retry_on_connection_loss(lambda: self._next_trial(n_trials))
            if decision is False:
                return
            if trial is None:
                time.sleep(_POLL_S)
                continue
            self._run_one(trial, index)

    def _next_trial(self, n_trials: int | None) -> tuple[bool | None, optuna.Trial | None]:
        """Reap dead workers' trials, then ask for a trial if the budget allows (see ``_may_start``).

        Every worker of the study agrees on the budget by holding the study lock. Retried as a whole when the
        connection drops: only ``ask`` writes, and it is the last step.
        """
        with self.study_lock.held():
            # Trials of dead workers: failed, their runs KILLED, retried once. Also trials an earlier attempt of this
            # call asked for but lost to a dropped connection before their first heartbeat.
            reap(self.study)
            decision = self._may_start(n_trials)
            trial = self.study.ask() if decision else None
            if trial is not None:
                self.study._storage.record_heartbeat(trial._trial_id)
        return decision, trial

    def _trial_dir(self, number: int) -> Path:
        """A trial's folder: progress, result, checkpoint, models. A retry resumes from its predecessor's folder,
        so workers on several machines resume only where that folder is on shared storage."""
        return Path(self.baseline_config.output_dir) / self.sweep.name / f"trial-{number:03d}"

    def _cuda_devices_for(self, worker: int) -> str | None:
        """One GPU per worker when there are several, by CUDA_VISIBLE_DEVICES; CPU workers share the CPU."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else None
        if gpus is None:
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            gpus = [str(i) for i in range(count)]
        if not gpus or self.workers == 1:
            return None
        return gpus[worker % len(gpus)]

    def _prepare(self, trial_id: int) -> tuple[optuna.Trial, dict[str, Any], bool, int | None]:
        """The trial with its settings sampled, whether it is the baseline, and which trial it retries (if any).

        Retried as a whole when the connection drops. Each attempt reloads the trial, so a parameter whose write
        was committed just before the connection died is read back rather than sampled (and stored) twice.
        """
        trial = optuna.Trial(self.study, trial_id)
        overrides = sample_overrides(trial, self.sweep, self.baseline_config)
        if self._grid is not None and same_point(trial.params, self.baseline_point):
            trial.set_user_attr(BASELINE_ATTR, True)
        is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        return trial, overrides, is_baseline, retried_trial_number(self.study, trial_id)

    def _run_one(self, asked: optuna.Trial, worker: int) -> None:
        trial, overrides, is_baseline, retry_of = retry_on_connection_loss(lambda: self._prepare(asked._trial_id))
        run = RunTracker.start(
            self.tracking_uri,
            self.experiment,
            run_name=f"trial-{trial.number:03d}" + ("-baseline" if is_baseline else ""),
            parent_run_id=self.parent_run_id,
            tags={
                "optuna.trial.number": str(trial.number),
                "optuna.study_name": self.sweep.name,
                "ftlab.baseline": str(is_baseline).lower(),
                **({"ftlab.retry_of_trial": str(retry_of)} if retry_of is not None else {}),
            },
        )
        retry_on_connection_loss(lambda: trial.set_user_attr(RUN_ID_ATTR, run.run_id))
        trial_dir = self._trial_dir(trial.number)
        trial_dir.mkdir(parents=True, exist_ok=True)
        job = TrialJob(
            sweep=self.sweep.model_dump(mode="json"),
            sweep_dir=str(self.sweep_dir),
            storage_url=self.storage_url,
            study_name=self.sweep.name,
            trial_id=trial._trial_id,
            trial_number=trial.number,
            overrides=overrides,
            tracking_uri=self.tracking_uri,
            run_id=run.run_id,
            result_file=str(trial_dir / "result.json"),
            progress_file=str(trial_dir / "progress.json"),
            cuda_visible_devices=self._cuda_devices_for(worker),
            cpu_threads=max(1, (os.cpu_count() or 1) // self.workers) if self.workers > 1 else None,
            trial_dir=str(trial_dir),
            resume_from=str(self._trial_dir(retry_of) / CHECKPOINT_FILE) if retry_of is not None else None,
        )
        Path(job.result_file).unlink(missing_ok=True)
        running = RunningTrial(trial.number, trial.params, is_baseline, Path(job.progress_file))
        with self._lock:
            self.running[trial.number] = running
        self.on_event(TrialEvent("started", trial.number, trial.params, is_baseline, worker=worker))
        try:
            report, exitcode = self._run_process(job, trial._trial_id)
            if report is None:  # the process died without a word: segfault, OOM killer, SIGKILL
                reason = f"trial process {_describe_exit(exitcode)}"
                run.end("FAILED", reason=reason)
                # SIGKILL comes from outside (the OOM killer, a scheduler, a dying node): worth one retry, which
                # resumes from the last complete checkpoint. A segfault would most likely just happen again.
                report = TrialReport("failed", reason, retry=exitcode == -signal.SIGKILL)
            self._tell(trial, report)
        finally:
            with self._lock:
                self.running.pop(trial.number, None)
        self.on_event(TrialEvent(report.state, trial.number, trial.params, is_baseline, report, worker))

    def _run_process(self, job: TrialJob, trial_id: int) -> tuple[TrialReport | None, int | None]:
        """Run the trial process to its end; its result file (None if it died without one) and exit code."""
        process = self._context.Process(target=run_trial_job, args=(job,), name=f"ftlab-trial-{job.trial_number}")
        process.start()
        with self._lock:
            self._processes.add(process)
        # This worker's heartbeat for the trial: if the worker dies, it stops and another worker reaps the trial.
        interval = self.sweep.storage.heartbeat_interval
        while process.join(timeout=interval) is None and process.exitcode is None:
            self._beat(trial_id)
        # The exit code comes through the fork server. If that died first (a SIGTERM to the whole job reaches it
        # too), multiprocessing reports 255 while the trial may still be saving its checkpoint: wait for the trial.
        while _alive(process.pid):
            time.sleep(min(_POLL_S, interval))
            self._beat(trial_id)
        with self._lock:
            self._processes.discard(process)
        return TrialReport.read(Path(job.result_file)), process.exitcode

    def _beat(self, trial_id: int) -> None:
        try:
            self.study._storage.record_heartbeat(trial_id)
        except Exception as error:
            if not is_connection_loss(error):
                raise
            # A missed beat is harmless while the grace period lasts; the next one reconnects.

    def _interrupt_trials(self, signum: signal.Signals) -> None:
        """Pass Ctrl-C (SIGINT) or preemption (SIGTERM) on to the trial processes, so each ends its run KILLED and
        writes its result; a preempted one saves a checkpoint first. (A terminal's Ctrl-C reaches them directly too.)
        """
        with self._lock:
            processes = list(self._processes)
        for process in processes:
            if process.is_alive() and process.pid:
                os.kill(process.pid, signum)

    def _tell(self, trial: optuna.Trial, report: TrialReport) -> None:
        try:
            retry_on_connection_loss(lambda: self._tell_outcome(trial, report))
        except RuntimeError:
            # Optuna's grid sampler calls study.stop() once the grid is used up, which only works inside
            # study.optimize; the outcome is stored by then, so end this sweep instead.
            if self._grid is None or not self._grid.is_exhausted(self.study):
                raise
            self.stop_event.set()
        if report.retry or (report.state == "interrupted" and self.preempted):
            # Lost to something outside the trial (SIGKILL, preemption): run it again, resuming from its checkpoint.
            retry_on_connection_loss(lambda: retry_trial(self.study, trial._trial_id))

    def _tell_outcome(self, trial: optuna.Trial, report: TrialReport) -> None:
        if self.study._storage.get_trial(trial._trial_id).state.is_finished():
            return  # told already, by an attempt whose connection dropped after the commit
        if report.state == "complete":
            for key in ("eval_loss", "perplexity", "train_loss", "tokens_seen", "seconds", "model_dir", "device"):
                trial.set_user_attr(key, getattr(report, key))
            trial.set_user_attr("data_fingerprint", report.data_fingerprint)
            trial.set_user_attr("per_device_train_batch_size", report.per_device_train_batch_size)
            trial.set_user_attr("gradient_accumulation_steps", report.gradient_accumulation_steps)
            self.study.tell(trial, report.values)
        elif report.state == "pruned":
            trial.set_user_attr(PRUNE_REASON_ATTR, report.reason)
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            trial.set_user_attr(FAIL_REASON_ATTR, report.reason)
            self.study.tell(trial, state=TrialState.FAIL)

    def finish(self, status: str = "FINISHED") -> None:
        """Close the parent run (the report module logs plots to it first)."""
        if self.parent_run_id:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=self.tracking_uri).set_terminated(self.parent_run_id, status=status)
