"""The budget as pure functions of the study's trials: start, wait or done, for one worker and for many; and the
failure budget that stops a sweep whose trials keep failing."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from ftlab.record import TrialRecord
from ftlab.sweep.budget import Budget, Decision, decide, failing

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


# --- the failure budget --------------------------------------------------------------------------------------------


def record(number: int, state: str, reason: str | None = None, baseline: bool = False, stopped: bool = False):
    return TrialRecord(state, reason, number=number, baseline=baseline, retry=stopped)  # type: ignore[arg-type]


def test_a_failed_baseline_stops_the_sweep_at_once() -> None:
    assert failing([record(0, "FAIL", "DataError: empty file", baseline=True)], 3) == (
        "the baseline trial #0 failed: DataError: empty file"
    )


def test_failures_in_a_row_stop_the_sweep_and_name_the_repeated_error() -> None:
    finished = [record(0, "COMPLETE", baseline=True)] + [record(n, "FAIL", "OSError: disk\nmore") for n in (1, 2, 3)]
    assert failing(finished, 3) == "3 trials in a row failed (#1, #2, #3), each with: OSError: disk"
    assert failing(finished[:3], 3) is None  # two in a row: not yet
    mixed = [*finished[:3], record(3, "FAIL", "ValueError: other")]
    assert failing(mixed, 3) == "3 trials in a row failed (#1, #2, #3), 2 of them with: OSError: disk"


def test_a_completed_or_pruned_trial_breaks_the_run_of_failures() -> None:
    for breaker in ("COMPLETE", "PRUNED"):
        finished = [record(1, "FAIL", "x"), record(2, "FAIL", "x"), record(3, breaker), record(4, "FAIL", "x")]
        assert failing(finished, 3) is None


def test_trials_stopped_from_outside_neither_count_nor_break_the_run() -> None:
    lost = record(2, "FAIL", None)  # a dead worker's trial, reaped: no reason recorded
    preempted = record(3, "FAIL", "preempted (SIGTERM)", stopped=True)
    assert failing([lost, preempted, record(4, "FAIL", "x")], 1) == ("a trial failed (#4), each with: x")
    assert failing([lost, preempted], 1) is None
    assert failing([record(1, "FAIL", "x"), lost, preempted, record(4, "FAIL", "x")], 2) is not None
    # A baseline lost to a dead worker is retried, not a reason to stop.
    assert failing([record(0, "FAIL", None, baseline=True)], 3) is None
