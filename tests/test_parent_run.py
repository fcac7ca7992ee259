"""What the sweep's parent run, ``ftlab ui`` and optuna-dashboard's notes tell a user: the budget actually used, the
charts' x axis and units said, a sorted runs page, and each trial's note linking its MLflow run (real MLflow and
Optuna stores)."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from ftlab.demo import load_sweep_with_assets
from ftlab.record import BASELINE_ATTR, RUN_ID_ATTR, TrialRecord
from ftlab.settings import resolve_train_config
from ftlab.storage import StudyLock
from ftlab.sweep.budget import Budget
from ftlab.sweep.launcher import TrialLauncher
from ftlab.sweep.runs import note_trial, parent_run_params, parent_run_tags, show_best
from ftlab.tracking import DESCRIPTION_TAG, TrackedRun, run_page, runs_page
from tests.helpers import write_sweep


def test_the_parent_runs_budget_param_is_the_budget_the_sweep_ran_with(tmp_path: Path) -> None:
    write_sweep(tmp_path, budget={"n_trials": 10})
    sweep = load_sweep_with_assets(tmp_path / "sweep.yaml")
    assert parent_run_params(sweep)["budget.n_trials"] == "10"
    assert parent_run_params(sweep, Budget(n_trials=6))["budget.n_trials"] == "6"  # --n-trials 6
    assert parent_run_params(sweep, Budget(fixed=True))["budget.n_trials"] == "a fixed plan"  # a confirmation


def test_the_parent_run_says_its_step_counts_complete_trials_and_its_gain_is_in_percent(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    sweep = load_sweep_with_assets(tmp_path / "sweep.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = TrackedRun.start(uri, "small", "small-sweep", tags=parent_run_tags(sweep, tmp_path, "sqlite:///x.db"))
    study = optuna.create_study()
    for value, baseline in ((5.0, True), (4.0, False)):
        trial_run = TrackedRun.start(uri, "small", "trial", parent_run_id=parent.run_id)
        study.add_trial(
            create_trial(
                value=value,
                params={"learning_rate": 1e-3},
                distributions={"learning_rate": FloatDistribution(1e-6, 1e-1, log=True)},
                user_attrs={BASELINE_ATTR: baseline, RUN_ID_ATTR: trial_run.run_id},
            )
        )

    show_best(study, sweep, uri, parent.run_id)

    client = MlflowClient(tracking_uri=uri)
    shown = client.get_run(parent.run_id)
    assert "x axis (Step) counts complete trials" in shown.data.tags[DESCRIPTION_TAG]
    assert shown.data.metrics["best/gain_over_baseline_pct"] == pytest.approx(20.0)  # (5 - 4) / 5, as "+20.0 %"
    assert "best/gain_over_baseline" not in shown.data.metrics
    (point,) = client.get_metric_history(parent.run_id, "best/gain_over_baseline_pct")
    assert point.step == 2  # two complete trials


def test_the_runs_page_is_sorted_by_the_objective_and_a_run_page_finds_its_run() -> None:
    page = runs_page("sqlite:///mlruns/mlflow.db", "7", "http://127.0.0.1:5001", order_by_metric="final/eval/loss")
    base, fragment = page.split("#", 1)
    assert base == "http://127.0.0.1:5001/"
    query = parse_qs(urlsplit(fragment).query)
    assert query["orderByKey"] == ["metrics.`final/eval/loss`"] and query["orderByAsc"] == ["true"]
    assert query["workflowType"] == ["machine_learning"]
    assert "orderByAsc=false" in runs_page("http://server:5000", "7", order_by_metric="m", ascending=False)
    assert unquote(run_page("sqlite:///x.db", "abc")) == "http://127.0.0.1:5000/#/runs/abc"


def test_a_trials_note_in_optuna_dashboard_says_baseline_and_links_its_run(tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="small")
    baseline, other = study.ask(), study.ask()

    note_trial(baseline, True, "sqlite:///mlruns/mlflow.db", "run0")
    note_trial(other, False, "sqlite:///mlruns/mlflow.db", "run1")

    from optuna_dashboard import get_note  # what the dashboard shows as the trial's note

    baseline_note, other_note = get_note(baseline), get_note(other)
    assert baseline_note.startswith("**Baseline**") and "**Baseline**" not in other_note
    assert (
        "(http://127.0.0.1:5000/#/runs/run0)" in baseline_note and "(http://127.0.0.1:5000/#/runs/run1)" in other_note
    )


class _UnreachableRun:
    """A trial's run while the tracking server is down."""

    def set_tags(self, tags: dict[str, str]) -> None:
        raise ConnectionError("tracking server down")


def test_a_run_mlflow_cannot_describe_is_named_by_its_trial_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The record a trial process writes does not know its trial's number (only one read back from the study does).
    sweep = load_sweep_with_assets(write_sweep(tmp_path))
    launcher = TrialLauncher(
        sweep=sweep,
        sweep_file=tmp_path / "sweep.yaml",
        storage_url="sqlite://",
        tracking_uri="sqlite://",
        study=optuna.create_study(),
        baseline_config=resolve_train_config(sweep, tmp_path),
        baseline_point={},
        workers=1,
        context=multiprocessing.get_context("spawn"),
        best_lock=StudyLock("sqlite://", "small", "best"),
        show_parent=lambda *arguments: None,
    )
    record = TrialRecord("FAIL", "diverged: training loss became nan at optimizer step 3")
    assert record.number is None
    with caplog.at_level(logging.WARNING, logger="ftlab.sweep.launcher"):
        launcher._show(_UnreachableRun(), record, 7, "Trial 7")  # type: ignore[arg-type]
    assert "could not describe trial 7's run in MLflow: tracking server down" in caplog.text
