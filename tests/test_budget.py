"""The budget as a pure function of the study's trial states: start, wait or done, for one worker and for many."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from ftlab.sweep.budget import Budget, Decision, decide

C, R, P, F, W = TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING


@pytest.mark.parametrize(
    ("states", "budget", "expected"),
    [
        ([], Budget(n_trials=3), Decision.START),
        ([W], Budget(n_trials=3), Decision.START),  # the enqueued baseline waits for someone to ask for it
        ([C, C], Budget(n_trials=3), Decision.START),
        ([C, C, C], Budget(n_trials=3), Decision.DONE),
        ([C, C, C, C], Budget(n_trials=3), Decision.DONE),  # raced past it: still done, never more
        # Pruned and failed trials do not count towards n_trials: the search goes on.
        ([C, P, F, P], Budget(n_trials=3), Decision.START),
        ([], Budget(), Decision.START),  # no budget here: a timeout ends the sweep
    ],
)
def test_one_worker(states: list[TrialState], budget: Budget, expected: Decision) -> None:
    assert decide(states, budget) is expected


def test_workers_wait_while_running_trials_may_still_meet_the_budget() -> None:
    # Budget 4, two complete, two running on other workers: a fifth would overshoot if both complete.
    assert decide([C, C, R, R], Budget(n_trials=4)) is Decision.WAIT
    # One of them was pruned: there is room again.
    assert decide([C, C, R, P], Budget(n_trials=4)) is Decision.START
    # Both completed while this worker waited.
    assert decide([C, C, C, C], Budget(n_trials=4)) is Decision.DONE


def test_a_waiting_retry_is_started_when_there_is_room() -> None:
    # A dead worker's trial failed and its retry waits; the budget is not met, so a worker asks (and gets the retry).
    assert decide([C, F, W], Budget(n_trials=3)) is Decision.START
    assert decide([C, C, R, W], Budget(n_trials=3)) is Decision.WAIT


def test_max_trials_counts_every_started_trial_whatever_its_outcome() -> None:
    assert decide([C, P, P], Budget(n_trials=50, max_trials=3)) is Decision.DONE
    assert decide([C, P, R], Budget(n_trials=50, max_trials=3)) is Decision.DONE  # running ones count too
    assert decide([C, P, W], Budget(n_trials=50, max_trials=3)) is Decision.START  # waiting ones have not started
    assert decide([P, P, F], Budget(max_trials=3)) is Decision.DONE


def test_an_exhausted_grid_is_done() -> None:
    assert decide([C], Budget(n_trials=10), grid_exhausted=True) is Decision.DONE
