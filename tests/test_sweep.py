"""`ftlab sweep` end to end on CPU: trial 0 is the baseline, runs nest and match states, faults stay inside trials.

Most sweeps here run through ``run_sweep``, the library call behind the CLI, in this process (trials still run in
processes of their own): the trials' fork server then starts once for the module, not once per sweep. What only the
command line shows (exit codes, Ctrl-C, resuming with the same command, status output) runs the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import SMALL_SWEEP, local_client, run_ftlab, runs_of, sweep_in_process, write_sweep
from tests.support.faults import fault_env

pytestmark = pytest.mark.integration

STATE_TO_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def load_study(folder: Path, name: str = "small") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")


def assert_runs_match_trials(folder: Path, study: optuna.Study, experiment: str = "small") -> None:
    """One parent run; one child per trial, nested, with the matching state; none left RUNNING."""
    runs = runs_of(folder, experiment)
    parents = [run for run in runs if run.data.tags.get("ftlab.role") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status != "RUNNING"
    children = {run.info.run_id: run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    trials = study.get_trials(deepcopy=False)
    assert len(children) == len(trials) == len(runs) - 1
    for trial in trials:
        run = children[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.trial.number"] == str(trial.number)
        assert run.info.status == STATE_TO_RUN_STATUS[trial.state.name], (trial.number, trial.state, run.info.status)
        if trial.state.name != "COMPLETE":
            assert run.data.tags.get("ftlab.end_reason"), "pruned and failed runs say why"


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    write_sweep(folder)
    # System metrics every second: the tiny trials here last a few seconds (MLflow samples every 10 s by default).
    sweep_in_process(folder, env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    return folder


def test_baseline_is_trial_zero_and_budget_counts_complete_trials(finished_sweep: Path) -> None:
    study = load_study(finished_sweep)
    trials = study.get_trials(deepcopy=False)
    assert trials[0].user_attrs["baseline"] is True
    assert trials[0].params["learning_rate"] == pytest.approx(SMALL_SWEEP["baseline"]["learning_rate"])
    assert trials[0].params["total_train_batch_size"] == 8
    assert sum(trial.user_attrs.get("baseline", False) for trial in trials) == 1
    assert [trial.state.name for trial in trials].count("COMPLETE") == 3


def test_each_trial_is_a_nested_run_with_matching_state(finished_sweep: Path) -> None:
    assert_runs_match_trials(finished_sweep, load_study(finished_sweep))


def test_the_runs_table_marks_the_best_and_what_was_searched(finished_sweep: Path) -> None:
    study = load_study(finished_sweep)
    runs = runs_of(finished_sweep, "small")
    (parent,) = [run for run in runs if run.data.tags.get("ftlab.role") == "sweep"]
    children = {run.data.tags["optuna.trial.number"]: run for run in runs if run is not parent}
    best = study.best_trial
    # The parent's row: the best so far against the baseline, as metrics; the best run named.
    assert parent.info.run_name == "small-sweep" and parent.data.tags["mlflow.source.name"].startswith("ftlab sweep")
    assert parent.data.metrics["best/eval/loss"] == pytest.approx(best.value)
    assert parent.data.metrics["baseline/eval/loss"] == pytest.approx(study.trials[0].value)
    assert parent.data.metrics["trials/complete"] == 3
    assert parent.data.tags["ftlab.best_run_id"] == best.user_attrs["mlflow_run_id"]
    assert {number for number, run in children.items() if run.data.tags.get("ftlab.best") == "true"} == {
        str(best.number)
    }
    for number, run in children.items():
        trial = study.trials[int(number)]
        # Searched settings apart from fixed ones, rounded; the sweep-wide settings on the parent only.
        assert run.data.tags["ftlab.searched"] == "learning_rate, total_train_batch_size"
        assert run.data.params["search.learning_rate"] == f"{trial.params['learning_rate']:.6g}"
        assert not [key for key in run.data.params if key.startswith(("data.", "model."))]
        assert "warmup_steps" not in run.data.params and run.data.params["warmup_ratio"] == "0.1"
        # What the trial came to, in words; the final objective only where the trial finished.
        assert run.data.tags["optuna.trial.state"] == "COMPLETE"
        assert f"COMPLETE: eval/loss {trial.value:.4f}" in run.data.tags["mlflow.note.content"]
        assert run.data.metrics["final/eval/loss"] == pytest.approx(trial.value)
        # MLflow's system metrics, sampled while the trial ran.
        assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics), sorted(run.data.metrics)
    assert study.metric_names == ["eval/loss"]  # Optuna's plots and optuna-dashboard name the objective


def test_report_is_logged_to_the_parent_run(finished_sweep: Path) -> None:
    client = local_client(finished_sweep)
    (parent,) = [run for run in runs_of(finished_sweep, "small") if run.data.tags.get("ftlab.role") == "sweep"]
    files = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}
    for name in ("optimization_history", "parallel_coordinate", "slice", "intermediate_values", "param_importances"):
        assert f"report/{name}.png" in files
    assert {"report/report.html", "report/best_vs_baseline.md"} <= files
    assert parent.data.params["search.learning_rate.factor"] == "[0.3, 3.0]"
    assert parent.data.tags["optuna.study_name"] == "small"


def test_status_json_shows_best_against_baseline(finished_sweep: Path) -> None:
    result = run_ftlab("status", str(finished_sweep / "sweep.yaml"), "--json", cwd=finished_sweep)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["counts"]["COMPLETE"] == 3
    best = status["best"]
    assert best["baseline_trial"] == 0
    values = [trial["values"][0] for trial in status["trials"] if trial["state"] == "COMPLETE"]
    assert best["best_value"] == min(values)
    plain = run_ftlab("status", str(finished_sweep / "sweep.yaml"), cwd=finished_sweep)
    assert "baseline" in plain.stdout


def test_resumed_sweep_adds_trials_without_repeating(finished_sweep: Path, tmp_path: Path) -> None:
    # A copy of the finished sweep, so that the trial added here does not change what the other tests read.
    folder = Path(shutil.copytree(finished_sweep, tmp_path / "copy"))
    sweep = str(folder / "sweep.yaml")
    sweep_in_process(folder)  # budget already met: nothing new
    assert len(load_study(folder).trials) == 3
    storage = f"sqlite:///{folder / 'mlruns' / 'optuna.db'}"
    more = run_ftlab("sweep", sweep, "--n-trials", "4", "--storage", storage, cwd=folder)
    assert more.returncode == 0, more.stderr
    assert "leaked semaphore" not in more.stderr
    # The closing hints work as printed: they carry the storage this sweep used.
    (hint,) = [line for line in more.stdout.splitlines() if line.startswith("status: ")]
    assert hint == f"status: ftlab status {sweep} --storage {storage}"
    assert "#/experiments/1/runs?workflowType=machine_learning" in more.stdout
    study = load_study(folder)
    assert [trial.number for trial in study.trials] == [0, 1, 2, 3]
    points = [tuple(sorted(trial.params.items())) for trial in study.trials]
    assert len(set(points)) == len(points)
    assert_runs_match_trials(folder, study)  # still one parent run


def test_a_pruner_that_must_prune_does(tmp_path: Path) -> None:
    # Every sampled learning rate is ~1e5 times too small to learn anything, so after the baseline completes the median
    # pruner must stop each sampled trial at its first fidelity point. budget.max_trials ends the sweep.
    sweep = write_sweep(
        tmp_path,
        search={"learning_rate": {"factor": [1e-5, 2e-5]}},
        pruner={"name": "median", "n_startup_trials": 1},
        budget={"n_trials": 50, "max_trials": 3},
    )
    sweep_in_process(sweep.parent)
    study = load_study(tmp_path)
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "PRUNED", "PRUNED"], states
    assert all(len(trial.intermediate_values) == 1 for trial in study.trials[1:]), "pruned at the first point"
    assert "pruned after 4,096 tokens" in study.trials[1].user_attrs["prune_reason"]
    assert_runs_match_trials(tmp_path, study)
    for run in runs_of(tmp_path, "small"):
        if run.data.tags.get("optuna.trial.number") in ("1", "2"):  # MLflow has no "pruned": the run says so itself
            assert run.data.tags["optuna.trial.state"] == "PRUNED"
            assert "PRUNED: pruned after 4,096 tokens" in run.data.tags["mlflow.note.content"]
            assert "final/eval/loss" not in run.data.metrics and "eval/loss" in run.data.metrics


def test_faults_stay_inside_their_trials_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # Trial 0 runs out of memory once (simulated), trial 1's loss turns NaN, trial 2 segfaults; trial 3 is healthy.
    faults = "oom_at_step=2,oom_above_batch=2,trial=0;nan_at_step=3,trial=1;segfault_at_step=2,trial=2"
    write_sweep(tmp_path, budget={"n_trials": 2})
    sweep_in_process(tmp_path, env=fault_env(faults))
    study = load_study(tmp_path)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]

    # Out of memory: retried with half the micro-batch and twice the accumulation, the effective batch kept.
    oom = study.trials[0]
    assert (oom.user_attrs["per_device_train_batch_size"], oom.user_attrs["gradient_accumulation_steps"]) == (2, 4)
    (run,) = [run for run in runs_of(tmp_path, "small") if run.data.tags.get("optuna.trial.number") == "0"]
    assert run.data.tags["ftlab.oom_retries"] == "4x2->2x4"
    assert run.data.params["total_train_batch_size"] == "8"
    # NaN loss: diverged (its settings' failure), with the reason. Segfault: only that trial failed, the signal named.
    assert study.trials[1].user_attrs["fail_reason"].startswith("diverged: training loss became nan")
    assert "SIGSEGV" in study.trials[2].user_attrs["fail_reason"]
    assert_runs_match_trials(tmp_path, study)


def test_grid_sampler_runs_the_baseline_point_once_and_stops_when_the_grid_is_done(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path,
        search={"learning_rate": {"choices": [1e-3, 2e-3]}, "total_train_batch_size": {"choices": [8]}},
        sampler={"name": "grid", "seed": 0},
        budget={"n_trials": 5},
    )
    sweep_in_process(sweep.parent)
    study = load_study(tmp_path)
    assert sorted(trial.params["learning_rate"] for trial in study.trials) == [1e-3, 2e-3]
    assert [trial.params["learning_rate"] for trial in study.trials if trial.user_attrs.get("baseline")] == [1e-3]


def test_two_workers_on_the_default_storage_finish_every_trial(tmp_path: Path) -> None:
    write_sweep(tmp_path, budget={"n_trials": 4})
    sweep_in_process(tmp_path, workers=2)
    study = load_study(tmp_path)
    assert [trial.state.name for trial in study.trials].count("COMPLETE") == 4
    assert all(trial.state.name == "COMPLETE" for trial in study.trials)
    assert_runs_match_trials(tmp_path, study)


def test_ctrl_c_ends_runs_killed_and_the_study_resumes(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, budget={"n_trials": 2}, train={**SMALL_SWEEP["train"], "num_train_epochs": 20})
    process = subprocess.Popen(
        [sys.executable, "-m", "ftlab.cli", "sweep", str(sweep)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal: a test run started in the background by a non-interactive shell inherits SIGINT
        # ignored, and Python then never turns it into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    progress = tmp_path / ".ftlab" / "trials" / "small" / "trial-000" / "progress.json"
    deadline = time.monotonic() + 120
    while not (progress.exists() and json.loads(progress.read_text() or "{}").get("step", 0) > 0):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group gets it
    __, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    study = load_study(tmp_path)
    # The interrupted trial is queued again with the same params: stopped from outside, it is not its own failure.
    outcome = [(trial.state.name, trial.user_attrs.get("fail_reason")) for trial in study.trials]
    assert [trial.state.name for trial in study.trials] == ["FAIL", "WAITING"], (outcome, stderr)
    assert study.trials[0].user_attrs["fail_reason"] == "stopped by Ctrl-C"
    runs = runs_of(tmp_path, "small")
    assert len(runs) == 2
    assert all(run.info.status == "KILLED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]

    # Resumable: run again, the interrupted baseline runs again and the budget is met. Here the run is also made
    # shorter, a change of the sweep's baseline settings that has to be accepted (and is recorded in the study).
    shorter = write_sweep(tmp_path, budget={"n_trials": 1})
    refused = run_ftlab("sweep", str(shorter), cwd=tmp_path)
    assert refused.returncode == 2 and "baseline.num_train_epochs: 20 → 1" in refused.stderr, refused.stderr
    resumed = run_ftlab("sweep", str(shorter), "--accept-changes", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    study = load_study(tmp_path)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].params == study.trials[0].params and study.trials[1].user_attrs["baseline"] is True
    (change,) = study.user_attrs["ftlab.sweep_changes"]
    assert change["changes"] == ["baseline.num_train_epochs: 20 → 1"]
