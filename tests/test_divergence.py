"""A loss that becomes NaN or infinite is a failure of the trial's settings: recorded FAIL "diverged: …", counted by
the failure budget (a diverged baseline stops the sweep), shown as DIVERGED everywhere; `ftlab train` exits 1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest

from ftlab.record import TrialRecord
from ftlab.sweep.budget import failing
from ftlab.sweep.events import SweepFailingError
from ftlab.sweep.runs import outcome_tags
from ftlab.sweep.trial_process import record_for, run_ending
from ftlab.training.loop import NonFiniteLossError
from tests.helpers import run_ftlab, runs_of, sweep_in_process, write_sweep
from tests.support.faults import fault_env


def load_study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="small", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")


def _diverged(number: int, baseline: bool = False) -> TrialRecord:
    record = record_for(NonFiniteLossError(3, math.nan))
    record.number, record.baseline = number, baseline
    return record


def test_a_diverged_trial_is_its_own_failure_not_a_prune() -> None:
    record = _diverged(1)
    assert (record.state, record.reason) == ("FAIL", "diverged: training loss became nan at optimizer step 3")
    assert record.own_failure and record.diverged and not record.retry
    assert (record.outcome, record.detail) == ("DIVERGED", "training loss became nan at optimizer step 3")
    assert record.as_json()["outcome"] == "DIVERGED" and record.as_json()["diverged"] is True
    status, reason = run_ending(NonFiniteLossError(3, math.nan))
    assert (status, reason) == ("FAILED", record.reason), "an expected failure: no traceback in the run"
    tags = outcome_tags(record, "eval/loss", "Trial 1")
    assert tags["ftlab.outcome"] == "diverged" and tags["optuna.trial.state"] == "FAIL"
    assert tags["mlflow.note.content"].endswith("DIVERGED: training loss became nan at optimizer step 3")


def test_diverged_trials_spend_the_failure_budget() -> None:
    healthy = TrialRecord("COMPLETE", values=[1.0], number=0, baseline=True)
    assert failing([healthy, _diverged(1), _diverged(2)], max_in_a_row=3) is None
    assert failing([healthy, _diverged(1), _diverged(2), _diverged(3)], max_in_a_row=3) == (
        "3 trials in a row failed (#1, #2, #3), each with: diverged: training loss became nan at optimizer step 3"
    )
    assert failing([_diverged(0, baseline=True)], max_in_a_row=3) == (
        "the baseline trial #0 failed: diverged: training loss became nan at optimizer step 3"
    )


@pytest.mark.integration
def test_a_diverging_baseline_stops_the_sweep_and_shows_as_diverged(tmp_path: Path) -> None:
    write_sweep(tmp_path, budget={"n_trials": 5})
    with pytest.raises(SweepFailingError, match=r"^the baseline trial #0 failed: diverged: training loss became nan"):
        sweep_in_process(tmp_path, env=fault_env("nan_at_step=1"))
    study = load_study(tmp_path)
    assert [trial.state.name for trial in study.trials] == ["FAIL"], "no trial after a diverged baseline"
    assert study.trials[0].user_attrs["fail_reason"].startswith("diverged: training loss became nan")
    (run,) = [run for run in runs_of(tmp_path, "small") if run.data.tags.get("optuna.trial.number") == "0"]
    assert run.info.status == "FAILED" and run.data.tags["ftlab.end_reason"].startswith("diverged: ")
    assert run.data.tags["ftlab.outcome"] == "diverged"

    shown = run_ftlab("status", "sweep.yaml", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["trials"][0]["outcome"] == "DIVERGED" and status["counts"]["DIVERGED"] == 1
    table = run_ftlab("status", "sweep.yaml", cwd=tmp_path)
    assert "DIVERGED" in table.stdout and "PRUNED" not in table.stdout


@pytest.mark.integration
def test_train_whose_loss_diverges_exits_1_with_its_run_failed(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    result = run_ftlab("train", "sweep.yaml", cwd=tmp_path, env=fault_env("nan_at_step=1"))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "training diverged: training loss became nan at optimizer step" in result.stderr
    (run,) = runs_of(tmp_path, "small")
    assert run.info.status == "FAILED" and run.data.tags["ftlab.end_reason"].startswith("diverged: ")
