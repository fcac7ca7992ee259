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
from pathlib import Path

import psutil

from ftlab.record import TrialRecord
from ftlab.sweep.job import TrialJob

_POLL_S = 0.5


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
