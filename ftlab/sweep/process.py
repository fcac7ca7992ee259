"""One trial process, seen from the worker: start it from the fork server, beat its heartbeat while it runs, pass
signals on, wait for it to end and read its record.

Nothing here imports torch or transformers: the worker process stays light, the fork server holds those.
"""

from __future__ import annotations

import multiprocessing.context
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from ftlab.sweep.record import TrialRecord

_POLL_S = 0.5

T = TypeVar("T")


@dataclass(frozen=True)
class WorkerContext:
    """The worker's folder and environment as they are now, for a process started from the fork server, which
    keeps the ones it was started with (a library caller may have changed both since)."""

    cwd: str = field(default_factory=os.getcwd)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def enter(self) -> None:
        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.environ)


def call_in_context(context: WorkerContext, function: Callable[..., T], *args: Any) -> T:
    """Call ``function(*args)`` in a process from the fork server as if in the worker (a process pool's target)."""
    context.enter()
    return function(*args)


@dataclass(frozen=True)
class TrialJob:
    """Everything a trial process needs, picklable."""

    sweep: dict[str, Any]
    sweep_dir: str
    storage_url: str
    trial_id: int
    trial_number: int
    overrides: dict[str, Any]
    params: dict[str, Any]  # the sampled values, by the sweep file's names (overrides split the effective batch)
    tracking_uri: str
    run_id: str
    trial_dir: str
    cuda_visible_devices: str | None = None
    cpu_threads: int | None = None  # several CPU trials at once split the cores instead of oversubscribing them
    resume_from: str | None = None  # a retried trial's predecessor's checkpoint
    worker_pid: int = field(default_factory=os.getpid)  # the sweep process that started the trial
    context: WorkerContext = field(default_factory=WorkerContext)

    @property
    def result_file(self) -> str:
        return str(Path(self.trial_dir) / "result.json")

    @property
    def progress_file(self) -> str:
        return str(Path(self.trial_dir) / "progress.json")


def _trial_main(job: TrialJob) -> None:
    # Imported in the trial process, where the fork server has it preloaded; the worker never imports torch.
    from ftlab.sweep.trial_process import run_trial_job

    run_trial_job(job)


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` still runs (a zombie, as an orphan becomes under a container's PID 1, does not)."""
    try:
        return pid is not None and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


class TrialProcess:
    """Runs one :class:`TrialJob` in a process of its own and returns what it came to.

    ``beat`` is called every ``heartbeat_interval`` seconds while the process runs: the worker's heartbeat for the
    trial. If the worker dies, the beats stop and another worker reaps the trial.
    """

    def __init__(
        self,
        context: multiprocessing.context.BaseContext,
        job: TrialJob,
        beat: Callable[[], None],
        heartbeat_interval: float,
    ) -> None:
        self.job = job
        self._beat = beat
        self._interval = heartbeat_interval
        self._process = context.Process(target=_trial_main, args=(job,), name=f"ftlab-trial-{job.trial_number}")

    def run(self) -> tuple[TrialRecord | None, int | None]:
        """Start the process and wait for its end: its record (None if it died without one) and exit code."""
        Path(self.job.result_file).unlink(missing_ok=True)
        self._process.start()
        while self._process.join(timeout=self._interval) is None and self._process.exitcode is None:
            self._beat()
        # The exit code comes through the fork server. If that died first (a SIGTERM to the whole job reaches it
        # too), multiprocessing reports 255 while the trial may still be saving its checkpoint: wait for the trial.
        while _alive(self._process.pid):
            time.sleep(min(_POLL_S, self._interval))
            self._beat()
        return TrialRecord.read(Path(self.job.result_file)), self._process.exitcode

    def signal(self, signum: signal.Signals) -> None:
        """Pass Ctrl-C (SIGINT) or preemption (SIGTERM) on: the trial ends its run and writes its record."""
        if self._process.pid and self._process.is_alive():
            os.kill(self._process.pid, signum)
