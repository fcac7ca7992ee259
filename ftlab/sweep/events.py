"""What a sweep's workers report to the rest of ftlab: a trial's events (for the live view or the plain log), the
trials running on this machine, and why a sweep stopped before its budget was met.

Its own module so that the scheduler, the trial launcher, the view and the CLI can all import it without cycles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ftlab.record import TrialRecord

EventKind = Literal["started", "COMPLETE", "PRUNED", "FAIL"]


@dataclass
class TrialEvent:
    """Something the live view or the plain log shows."""

    kind: EventKind
    number: int
    params: dict[str, Any]
    baseline: bool
    record: TrialRecord | None = None
    label: str = ""  # how to name the trial (:func:`ftlab.sweep.runs.trial_label`); "trial N" when empty


@dataclass
class RunningTrial:
    """A trial running on this machine, with the file its process writes its progress to."""

    number: int
    params: dict[str, Any]
    baseline: bool
    progress_file: Path
    label: str = ""


class SweepFailingError(Exception):
    """The sweep stopped because its trials keep failing (see :func:`ftlab.sweep.budget.failing`)."""


class PreemptedError(Exception):
    """The worker was told to stop (SIGTERM: preemption, a scheduler's time limit); its trials were checkpointed and
    queued for a retry."""


class MachineFaultError(Exception):
    """This machine cannot run trials (its disk is full): the worker stopped taking them, and the trial that found
    out is queued for a retry, which another worker, or this one once room is made, runs."""
