"""A sweep that ends without a completed trial writes its report without Optuna's "no completed trials" warnings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from ftlab.config import load_sweep
from ftlab.sweep.report import write_report
from tests.support.sweeps import write_sweep


@pytest.fixture
def optuna_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    optuna.logging.enable_propagation()  # Optuna's logger writes to its own handler only, by default
    try:
        with caplog.at_level(logging.WARNING, logger="optuna"):
            yield caplog
    finally:
        optuna.logging.disable_propagation()


def a_study(states: list[optuna.trial.TrialState], intermediate: bool = False) -> optuna.Study:
    study = optuna.create_study(study_name="small")
    for state in states:
        trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        if intermediate:
            trial.report(3.0, step=64)
        study.tell(trial, 2.5 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return study


def test_no_completed_trial_no_warnings(tmp_path: Path, optuna_logs: pytest.LogCaptureFixture) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    failed = [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.FAIL]
    written = write_report(a_study(failed), sweep, tmp_path / "report")
    assert [path.name for path in written] == ["best_vs_baseline.md", "status.json", "report.html"]
    assert not [record.getMessage() for record in optuna_logs.records], "Optuna warned"


def test_pruned_trials_still_get_their_learning_curves(tmp_path: Path, optuna_logs: pytest.LogCaptureFixture) -> None:
    sweep = load_sweep(write_sweep(tmp_path))
    pruned = [optuna.trial.TrialState.PRUNED]
    written = write_report(a_study(pruned, intermediate=True), sweep, tmp_path / "report")
    assert "intermediate_values.png" in [path.name for path in written]
    assert not [record.getMessage() for record in optuna_logs.records], "Optuna warned"


def test_a_trial_stopped_after_its_first_evaluation_draws_no_curve_and_no_warning(
    tmp_path: Path, optuna_logs: pytest.LogCaptureFixture
) -> None:
    # Ctrl-C after the baseline's first evaluation: it is FAIL with an intermediate value, its retry WAITING.
    study = a_study([optuna.trial.TrialState.FAIL], intermediate=True)
    study.enqueue_trial({"learning_rate": 1e-3})
    written = write_report(study, load_sweep(write_sweep(tmp_path)), tmp_path / "report")
    assert "intermediate_values.png" not in [path.name for path in written]
    assert not [record.getMessage() for record in optuna_logs.records], "Optuna warned"
