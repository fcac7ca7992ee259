"""Trials stopped from outside are always retried, the baseline above all; the same settings dying again and again
is their own failure (a clear stop, never a silent loss); a trial that had finished when its worker died is told
COMPLETE, never relabelled KILLED. Real Optuna studies on SQLite and a real MLflow store; no mocks."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from ftlab.config import StorageConfig
from ftlab.record import BASELINE_ATTR, HOLDOUT_ATTR, RUN_ID_ATTR, TRIAL_DIR_ATTR, TrialRecord
from ftlab.storage import open_storage
from ftlab.sweep import compat, reaper
from ftlab.sweep import study as studies
from ftlab.sweep.budget import Budget, Decision, decide, failing
from ftlab.tracking import TrackedRun
from tests.support.clock import StudyClock

FAST = StorageConfig(heartbeat_interval=1, grace_period=2)
LR = {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)}


@pytest.fixture
def tracking(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _study(tmp_path: Path, tracking: str) -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", FAST, reaper.stale_trial_callback(tracking))
    study = optuna.create_study(study_name="retries", storage=storage)
    study.set_metric_names(["eval/loss"])
    return study


def _start_next(study: optuna.Study, tracking: str) -> tuple[optuna.Trial, TrackedRun]:
    """Ask for the next trial (the enqueued one first) as a worker does, with its first beat and its MLflow run."""
    trial = studies.ask(study)
    trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
    run = TrackedRun.start(tracking, "retries", f"trial-{trial.number:03d}")
    trial.set_user_attr(RUN_ID_ATTR, run.run_id)
    return trial, run


def _reap_after_grace(study: optuna.Study, clock: StudyClock, tracking: str) -> None:
    clock.advance(FAST.grace_period + 1)
    reaper._last_reaped.clear()  # reap() looks at most once per heartbeat interval in a process
    reaper.reap(study, tracking)


def test_the_baseline_is_retried_after_ctrl_c_and_kills_until_its_settings_kill_it_three_times(
    tmp_path: Path, tracking: str
) -> None:
    study = _study(tmp_path, tracking)
    clock = StudyClock(study)
    study.enqueue_trial({"learning_rate": 1e-3}, user_attrs={BASELINE_ATTR: True})
    # Ctrl-C during the baseline: told FAIL (stopped from outside) and retried, as the launcher does.
    first, _ = _start_next(study, tracking)
    studies.tell(study, first._trial_id, TrialRecord("FAIL", "stopped by Ctrl-C", retry=True))
    reaper.retry_trial(study, first._trial_id)
    # Its retry's worker is SIGKILLed, twice: reaped and retried each time (no retry limit counted the Ctrl-C).
    runs = []
    for _ in range(3):
        trial, run = _start_next(study, tracking)
        assert trial.user_attrs.get(BASELINE_ATTR) is True and trial.params == first.params
        runs.append(run)
        _reap_after_grace(study, clock, tracking)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL] * 4, "the third death in a row is not retried"
    assert reaper.retry_series(study, trials[3]._trial_id) == [0, 1, 2]

    records = [TrialRecord.from_trial(t) for t in trials]
    assert [r.retry for r in records] == [True, True, True, False]
    assert not any(r.own_failure for r in records[:3]), "Ctrl-C and the first deaths do not spend the budget"
    assert records[3].own_failure and "died 3 times in a row" in (records[3].reason or "")
    # The sweep stops on it with a clear line (exit 1), never 0 with the baseline silently gone.
    assert (failing(records, max_in_a_row=3) or "").startswith("the baseline trial #3 failed: its process or worker")
    client = MlflowClient(tracking_uri=tracking)
    assert [client.get_run(run.run_id).info.status for run in runs] == ["KILLED", "KILLED", "FAILED"]
    # Run again (the cause fixed): the baseline is queued anew, with a fresh count.
    assert studies.baseline_needed(study, trials)
    studies.enqueue_baseline(study, {"learning_rate": 1e-3})
    assert studies.baseline_waiting(study.get_trials(deepcopy=False))


def test_ctrl_c_and_preemption_neither_count_nor_break_a_row_of_deaths(tmp_path: Path, tracking: str) -> None:
    study = _study(tmp_path, tracking)
    clock = StudyClock(study)
    study.enqueue_trial({"learning_rate": 1e-3})
    for stop in ("lost", "ctrl-c", "lost", "preempted", "ctrl-c"):
        trial, _ = _start_next(study, tracking)
        if stop == "lost":
            _reap_after_grace(study, clock, tracking)
        else:
            studies.tell(study, trial._trial_id, TrialRecord("FAIL", stop, retry=True))
            reaper.retry_trial(study, trial._trial_id)
    *_, waiting = study.get_trials(deepcopy=False)
    assert waiting.state == TrialState.WAITING and waiting.user_attrs[reaper.LOST_IN_A_ROW_ATTR] == 2


def test_a_trial_that_had_finished_when_its_worker_died_is_told_complete(tmp_path: Path, tracking: str) -> None:
    study = _study(tmp_path, tracking)
    clock = StudyClock(study)
    # From its result file: the trial process logged its figures, ended its run and wrote it; then the worker died.
    trial, run = _start_next(study, tracking)
    trial.set_user_attr(TRIAL_DIR_ATTR, str(tmp_path / "trial-000"))
    (tmp_path / "trial-000").mkdir()
    TrialRecord("COMPLETE", values=[2.5], metrics={"eval/loss": 2.5}).write(tmp_path / "trial-000" / "result.json")
    run.end("FINISHED")
    # From its MLflow run alone (the result file was on the dead machine): FINISHED with its final figures.
    _, other_run = _start_next(study, tracking)
    other_run.log_metrics({"final/eval/loss": 3.5}, step=0)
    other_run.end("FINISHED")
    # A third one died mid-training: failed and retried as before.
    dying, dying_run = _start_next(study, tracking)
    _reap_after_grace(study, clock, tracking)

    trials = study.get_trials(deepcopy=False)
    assert [(t.state, t.values) for t in trials[:3]] == [
        (TrialState.COMPLETE, [2.5]),
        (TrialState.COMPLETE, [3.5]),
        (TrialState.FAIL, None),
    ]
    assert TrialRecord.from_trial(trials[0]).eval_loss == 2.5
    assert [t.number for t in trials if t.state == TrialState.WAITING] == [3], "only the dying one is retried"
    client = MlflowClient(tracking_uri=tracking)
    assert client.get_run(run.run_id).info.status == "FINISHED", "never relabelled KILLED"
    assert client.get_run(other_run.run_id).info.status == "FINISHED"
    assert client.get_run(dying_run.run_id).info.status == "KILLED"
    assert compat.storage_of(study).get_trial(dying._trial_id).user_attrs["fail_reason"] == reaper.DEAD_WORKER_REASON


def test_a_finished_confirmation_run_on_the_holdout_is_told_complete_with_its_holdout_loss(
    tmp_path: Path, tracking: str
) -> None:
    study = _study(tmp_path, tracking)
    clock = StudyClock(study)
    trial, run = _start_next(study, tracking)
    trial.set_user_attr(HOLDOUT_ATTR, True)
    # From its MLflow run alone: judged by its holdout figure, logged beside the validation one under its own name.
    run.log_metrics({"final/eval/loss": 3.5, "final/holdout/loss": 3.75}, step=0)
    run.end("FINISHED")

    _reap_after_grace(study, clock, tracking)

    (told,) = study.get_trials(deepcopy=False)
    assert (told.state, told.values) == (TrialState.COMPLETE, [3.75])


def test_a_waiting_baseline_runs_whatever_the_budget_says() -> None:
    states = [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    budget = Budget(n_trials=2, max_trials=3)
    assert decide(states, budget) is Decision.DONE
    assert decide(states, budget, baseline_waiting=True) is Decision.START
    assert decide(states, Budget(fixed=True), baseline_waiting=False) is Decision.START, "a plan runs its retries"
