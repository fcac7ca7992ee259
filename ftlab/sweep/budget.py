"""The sweep's budget as a pure function of the study's trials: start another trial, wait, or stop.

Every worker of a study (threads here, processes on other machines) asks this under the study lock just before it
asks Optuna for a trial, so all of them agree and the budget is met exactly.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from optuna.trial import TrialState


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


def decide(states: Iterable[TrialState], budget: Budget, grid_exhausted: bool = False) -> Decision:
    """Whether a worker may start another trial, given the states of every trial in the study.

    WAITING trials (the enqueued baseline, retries) are not started yet: they count once a worker asks for them.
    """
    counts = Counter(states)
    if grid_exhausted:
        return Decision.DONE
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
