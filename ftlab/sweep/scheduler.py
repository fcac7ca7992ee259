"""The worker loop of ``ftlab sweep`` and ``ftlab worker``: ``workers`` threads that each ask the study for a trial
when the budget allows and hand it to :class:`~ftlab.sweep.launcher.TrialLauncher`, which runs it; SIGTERM and
Ctrl-C stop them.

The study's storage is the single source of truth, so a sweep run again resumes where it stopped, and workers on
other machines share the budget through it.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import optuna

from ftlab.config import SweepConfig
from ftlab.record import PARENT_RUN_ATTR, TrialRecord
from ftlab.settings import resolve_train_config
from ftlab.storage import StudyLock, is_concurrent_schema_creation, retry_on_connection_loss
from ftlab.sweep import compat, runs
from ftlab.sweep import study as studies
from ftlab.sweep.budget import Budget, Decision, decide, failing
from ftlab.sweep.events import MachineFaultError, PreemptedError, RunningTrial, SweepFailingError, TrialEvent
from ftlab.sweep.forkserver import trial_process_context
from ftlab.sweep.launcher import TrialLauncher
from ftlab.sweep.reaper import reap, reap_due, stale_trial_callback
from ftlab.sweep.space import baseline_point
from ftlab.tracking import end_run, experiment_name, start_or_resume_parent_run

_POLL_S = 0.5
# A worker with nothing to start looks again after 0.5 s, then 1 s, then every 2 s (each with jitter, so that many
# workers do not look in step); a trial ending in this process wakes it at once.
_IDLE_MAX_S = 2.0


@dataclass(eq=False, kw_only=True)
class Scheduler:
    """Runs one sweep from this machine with ``workers`` trials at a time: decides when each trial starts.

    Built by :meth:`open`, which opens the study and builds the rest.
    """

    study: optuna.Study
    study_lock: StudyLock
    launcher: TrialLauncher
    # The failure budget counts what happens from now on: a sweep run again after a fix gets a fresh start.
    finished_at_start: set[int]
    parent: runs.ParentRun
    failure: str | None = None
    preempted: bool = False
    parent_run_id: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _worker_errors: list[BaseException] = field(default_factory=list, init=False)
    _trial_ended: threading.Condition = field(default_factory=threading.Condition, init=False)

    @classmethod
    def open(
        cls,
        sweep: SweepConfig,
        sweep_file: Path,
        storage_url: str,
        tracking_uri: str,
        *,
        workers: int = 1,
        seed_salt: int = 0,
        accept_changes: bool = False,
        parent: runs.ParentRun | None = None,
        data_fingerprint: str | None = None,
        changes_fix: str = studies.ACCEPT_CHANGES_FIX,
    ) -> Scheduler:
        """Start the trials' fork server, open (or create) the sweep's study under the study lock and check that it
        still matches the sweep file, model and data (``data_fingerprint``, from the preflight; see
        :func:`ftlab.sweep.study.remember_sweep`); ``changes_fix`` is what a refusal offers. ``parent``: the MLflow run
        the trials nest under (:func:`ftlab.sweep.runs.sweep_parent_run` by default).

        Raises:
            UserError: the study was started from a different search space, objective or baseline.
        """
        context = trial_process_context()
        baseline_config = resolve_train_config(sweep, sweep_file.parent, source=str(sweep_file))
        point = baseline_point(sweep, baseline_config, str(sweep_file))
        study_lock = StudyLock(storage_url, sweep.name)
        signature = studies.sweep_signature(sweep, baseline_config, data_fingerprint)

        def open_study() -> optuna.Study:
            with study_lock.held():  # workers starting together would race to create the schema and the study
                study = studies.create_or_load_study(sweep, storage_url, stale_trial_callback(tracking_uri), seed_salt)
                studies.remember_sweep(study, signature, str(sweep_file), accept_changes, changes_fix)
                return study

        study: optuna.Study = retry_on_connection_loss(open_study, also=is_concurrent_schema_creation)
        parent = parent or runs.sweep_parent_run(sweep, sweep_file, storage_url)
        launcher = TrialLauncher(
            sweep=sweep,
            sweep_file=sweep_file,
            storage_url=storage_url,
            tracking_uri=tracking_uri,
            study=study,
            baseline_config=baseline_config,
            baseline_point=point,
            workers=workers,
            context=context,
            best_lock=StudyLock(storage_url, sweep.name, purpose="best"),
            show_parent=parent.show,
        )
        return cls(
            study=study,
            study_lock=study_lock,
            launcher=launcher,
            finished_at_start={trial.number for trial in study.trials if trial.state.is_finished()},
            parent=parent,
        )

    @property
    def sweep(self) -> SweepConfig:
        return self.launcher.sweep

    @property
    def running(self) -> dict[int, RunningTrial]:
        """The trials running on this machine now, by number."""
        return self.launcher.running

    # --- start and end of the sweep ----------------------------------------------------------------------------------

    def start_parent_run(self, budget: Budget) -> None:
        """One MLflow parent run per sweep, reopened when the sweep resumes; workers agree on it under the lock. Its
        ``budget.n_trials`` param is the budget this run has (``--n-trials`` over the file's)."""
        params = runs.parent_run_params(self.sweep, budget)

        def start() -> str:
            with self.study_lock.held():
                run_id = start_or_resume_parent_run(
                    self.launcher.tracking_uri,
                    experiment_name(self.sweep),
                    run_name=self.parent.name,
                    existing_run_id=self.study.user_attrs.get(PARENT_RUN_ATTR),
                    tags=self.parent.tags(self.study),
                    params=params,
                )
                self.study.set_user_attr(PARENT_RUN_ATTR, run_id)
                return run_id

        self.parent_run_id = self.launcher.parent_run_id = retry_on_connection_loss(start)

    def finish(self, status: str, reason: str | None) -> None:
        """Close the parent run (the report module logs plots to it first)."""
        end_run(self.launcher.tracking_uri, self.parent_run_id, status, reason)

    def run(self, budget: Budget, timeout: float | None, on_event: Callable[[TrialEvent], None]) -> None:
        """Run trials until the budget is spent (see :func:`ftlab.sweep.budget.decide`), ``timeout`` passes, or
        Ctrl-C; ``on_event`` hears each trial start and end. A fixed plan runs what is enqueued; a search first
        enqueues the baseline.

        Raises:
            PreemptedError, MachineFaultError, SweepFailingError: see :meth:`_raise_why_stopped_early`.
        """

        def enqueue() -> None:
            with self.study_lock.held():  # two workers starting together must not both enqueue it
                studies.enqueue_baseline(self.study, self.launcher.baseline_point)

        if not budget.fixed:
            retry_on_connection_loss(enqueue)
        self.start_parent_run(budget)
        deadline = time.monotonic() + timeout if timeout else None
        finished = [threading.Event() for _ in range(self.launcher.workers)]
        for index in range(self.launcher.workers):
            threading.Thread(
                target=self._worker,
                args=(index, budget, deadline, finished[index], on_event),
                name=f"ftlab-worker-{index}",
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
        if self.launcher.machine_fault is not None:
            raise MachineFaultError(self.launcher.machine_fault)
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
        self.launcher.stop_event.set()
        self.launcher.signal_all(signum)

    # --- one worker --------------------------------------------------------------------------------------------------

    def _worker(
        self,
        index: int,
        budget: Budget,
        deadline: float | None,
        finished: threading.Event,
        on_event: Callable[[TrialEvent], None],
    ) -> None:
        idle_s = _POLL_S
        try:
            while not self.launcher.stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
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
                try:
                    self.launcher.launch(trial_id, index, on_event)
                finally:
                    with self._trial_ended:  # this process's idle workers look again now, not after their back-off
                        self._trial_ended.notify_all()
        except BaseException as error:
            # Stop the other workers too and let run() raise it: a sweep whose worker died must not exit 0.
            self._worker_errors.append(error)
            self.launcher.stop_event.set()
        finally:
            finished.set()

    def _next_trial(self, budget: Budget) -> tuple[Decision, int | None]:
        """Reap dead workers' trials, then ask for a trial if the budget allows; the decision and the trial's id.

        Every worker of the study agrees on the budget by holding the study lock. Retried as a whole when the
        connection drops: only ``ask`` writes, and it is the last step.
        """
        if not reap_due(self.study):
            # A first look without the lock: a worker with nothing to start (the budget is spent, or running trials
            # may meet it) must not queue for the lock that starting workers need. DONE never turns back (unless the
            # baseline must run again, which counts as START here), and a START is decided again under the lock.
            decision = self._decide(self.study.get_trials(deepcopy=False), budget)
            if decision is not Decision.START:
                return decision, None
        with self.study_lock.held():
            reap(self.study, self.launcher.tracking_uri)
            decision = self._decide(self.study.get_trials(deepcopy=False), budget)
            if decision is not Decision.START:
                return decision, None
            if not budget.fixed:
                # Every baseline trial failed from outside meanwhile (a reaped one): queue it again, never lose it.
                studies.enqueue_baseline(self.study, self.launcher.baseline_point)
            return decision, compat.trial_id_of(studies.ask(self.study))

    def _decide(self, trials: list[optuna.trial.FrozenTrial], budget: Budget) -> Decision:
        """The budget's decision on ``trials``; DONE, and the sweep stopping, when they keep failing."""
        waiting = not budget.fixed and (studies.baseline_waiting(trials) or studies.baseline_needed(self.study, trials))
        decision = decide([trial.state for trial in trials], budget, studies.grid_exhausted(self.study), waiting)
        if decision is not Decision.DONE and (reason := self._failing(trials)) is not None:
            self.failure = reason
            self.launcher.stop_event.set()
            return Decision.DONE
        return decision

    def _failing(self, trials: list[optuna.trial.FrozenTrial]) -> str | None:
        """Why the trials since this worker started keep failing, if they do (every worker of the study sees it)."""
        finished = [t for t in trials if t.state.is_finished() and t.number not in self.finished_at_start]
        finished.sort(key=lambda trial: trial.datetime_complete or trial.datetime_start or datetime.min)
        records = [TrialRecord.from_trial(trial) for trial in finished]
        return failing(records, self.sweep.budget.max_failures_in_a_row)
