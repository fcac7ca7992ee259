"""What a trial process is given: the job, and the worker's folder and environment to run it in.

Both sides of a trial's process use it: :mod:`ftlab.sweep.process` (the worker, which starts it) and
:mod:`ftlab.sweep.trial_process` (the trial, which runs it), so neither imports the other for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
    holdout: bool = False  # a confirmation run judged on the holdout split (never a sweep trial)
    worker_pid: int = field(default_factory=os.getpid)  # the sweep process that started the trial
    context: WorkerContext = field(default_factory=WorkerContext)

    @property
    def result_file(self) -> str:
        return str(Path(self.trial_dir) / "result.json")

    @property
    def progress_file(self) -> str:
        return str(Path(self.trial_dir) / "progress.json")
