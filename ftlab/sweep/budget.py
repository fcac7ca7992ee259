"""The sweep's budget as pure functions of the study's trials: start another trial, wait, or stop, and the failure
budget that stops a sweep whose trials keep failing.

Every worker of a study (threads here, processes on other machines) asks this under the study lock just before it
asks Optuna for a trial, so all of them agree and the budget is met exactly.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from optuna.trial import TrialState

from ftlab.record import TrialRecord


class Decision(enum.Enum):
    START = "start"  # ask for a trial now
    WAIT = "wait"  # running trials may still meet the budget (or fail and leave room): look again soon
    DONE = "done"  # the budget is spent


@dataclass(frozen=True)
class Budget:
    n_trials: int | None = None
    """COMPLETE trials to reach across every worker (the baseline included); None: no such limit."""
    max_trials: int | None = None
    """Trials to start at most, whatever their outcome."""
    fixed: bool = False
    """Run the enqueued trials and nothing else (a confirmation's plan): done when none waits or runs."""


def decide(
    states: Iterable[TrialState], budget: Budget, grid_exhausted: bool = False, baseline_waiting: bool = False
) -> Decision:
    """Whether a worker may start another trial, given the states of every trial in the study.

    WAITING trials (the enqueued baseline, retries) are not started yet: they count once a worker asks for them.
    ``baseline_waiting``: the baseline (or its retry) waits to run. It runs whatever the budget says, for the search
    is measured against it: a sweep must not end claiming success while its baseline could still be run.
    """
    counts = Counter(states)
    if budget.fixed:
        if counts[TrialState.WAITING]:
            return Decision.START
        return Decision.WAIT if counts[TrialState.RUNNING] else Decision.DONE
    if grid_exhausted:
        return Decision.DONE
    if baseline_waiting:
        return Decision.START
    started = sum(counts.values()) - counts[TrialState.WAITING]
    if budget.max_trials is not None and started >= budget.max_trials:
        return Decision.DONE
    if budget.n_trials is None:
        return Decision.START
    complete = counts[TrialState.COMPLETE]
    if complete >= budget.n_trials:
        return Decision.DONE
    if complete + counts[TrialState.RUNNING] >= budget.n_trials:
        return Decision.WAIT
    return Decision.START


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "(no reason given)"


def failing(finished: Sequence[TrialRecord], max_in_a_row: int) -> str | None:
    """Why the sweep must stop because its trials keep failing, or None to go on.

    ``finished`` holds the trials that finished since this worker started, in the order they finished. A baseline
    trial that failed by an error of its own stops the sweep (nothing can be compared with it), and so do
    ``max_in_a_row`` trials in a row that did. Trials stopped from outside (a lost worker, preemption, Ctrl-C) neither
    count nor break a run of failures: they are retried.
    """
    outcomes = [record for record in finished if record.own_failure or record.state != "FAIL"]
    for record in outcomes:
        if record.baseline and record.own_failure:
            return f"the baseline trial #{record.number} failed: {_first_line(record.reason)}"
    last = outcomes[-max_in_a_row:]
    if len(last) < max_in_a_row or not all(record.own_failure for record in last):
        return None
    reason, count = Counter(_first_line(record.reason) for record in last).most_common(1)[0]
    trials = ", ".join(f"#{record.number}" for record in last)
    which = "each with" if count == len(last) else f"{count} of them with"
    counted = f"{len(last)} trials in a row" if len(last) > 1 else "a trial"
    return f"{counted} failed ({trials}), {which}: {reason}"
