"""Fail fast, never loop, never hang: bad input stops `ftlab` before any trial starts, a sweep whose trials keep
failing stops, a full disk is named, and a trial reaped while it ran changes nothing afterwards."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from ftlab.record import TrialRecord
from ftlab.sweep.events import SweepFailingError
from ftlab.sweep.study import tell
from ftlab.sweep.trial_process import PruningCallback, TrialReapedError, record_for, run_ending
from ftlab.tracking import TrackedRun
from tests.helpers import SMALL_SWEEP, run_ftlab, runs_of, sweep_in_process, write_sweep
from tests.support.faults import fault_env

# --- before any trial ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_validate_names_every_problem_of_a_sweep_that_could_not_start(tmp_path: Path) -> None:
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 64)
    sweep = write_sweep(
        tmp_path,
        data={**SMALL_SWEEP["data"], "train_files": ["binary.txt"]},
        search={
            "learning_rate": {"type": "float", "low": 0.0, "high": 1e-3},
            "total_train_batch_size": {"choices": [8, 0]},
        },
        tracking={"uri": "http://127.0.0.1:9"},
    )
    result = run_ftlab("validate", str(sweep), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for expected in ("search.learning_rate.low", "search.total_train_batch_size.choices[1]", "tracking.uri"):
        assert expected in result.stderr, (expected, result.stderr)
    # The model and data are checked once the settings are sound: fix them, and the data is next.
    fixed = write_sweep(tmp_path, data={**SMALL_SWEEP["data"], "train_files": ["binary.txt"]})
    result = run_ftlab("validate", str(fixed), cwd=tmp_path)
    assert result.returncode == 2 and "binary.txt" in result.stderr and "UTF-8" in result.stderr, result.stderr


@pytest.mark.integration
def test_an_unreachable_tracking_server_stops_the_sweep_before_it_starts(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_ftlab("sweep", str(write_sweep(tmp_path)), "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--tracking-uri: cannot reach the MLflow tracking server" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 90  # seconds, not a silent hang
    assert not (tmp_path / "mlruns" / "optuna.db").exists() or not optuna.get_all_study_names(
        f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    ), "no study was started"


@pytest.mark.integration
def test_user_text_is_printed_as_it_is_not_as_markup(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, search={"learning_rate": {"factor": [0, 1]}})
    result = run_ftlab("validate", "--schema-only", str(sweep), cwd=tmp_path)
    assert result.returncode == 2
    assert "factor must be [low, high] with 0 < low < high" in result.stderr, result.stderr


# --- trials that keep failing ----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_full_disk_is_named_stops_this_machine_and_loses_nothing(tmp_path: Path) -> None:
    # No file past 2 MB in the baseline's process: its model (3.8 MB) cannot be saved, as on a full disk.
    sweep = write_sweep(tmp_path, budget={"n_trials": 1})
    result = run_ftlab("sweep", str(sweep), cwd=tmp_path, env=fault_env("file_size_limit=2000000,trial=0"))
    assert result.returncode == 1, result.stderr
    assert "this machine cannot run trials: trial #0 failed: file too large while writing" in result.stderr
    assert "the file-size limit (ulimit -f) is 2,000,000 bytes" in result.stderr
    assert "queued for a retry" in result.stderr
    assert "Traceback" not in result.stderr

    # The machine's fault, not the recipe's: the baseline waits for its retry, and no other trial started here.
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert [trial.state.name for trial in study.trials] == ["FAIL", "WAITING"]
    trial_dir = tmp_path / ".ftlab" / "trials" / "small" / "trial-000"
    assert not [path.name for path in trial_dir.rglob(".*tmp-*")], "no temporary file is left behind"
    runs = {run.info.run_name: run for run in runs_of(tmp_path, "small")}
    assert runs["small-sweep"].info.status == "KILLED"
    assert "this machine cannot run trials" in runs["small-sweep"].data.tags["ftlab.end_reason"]
    assert runs["trial-000-baseline"].info.status == "KILLED"
    assert "file too large" in runs["trial-000-baseline"].data.tags["ftlab.end_reason"]

    # Room made (the fault gone): the same command runs the baseline's retry, and the sweep ends.
    result = run_ftlab("sweep", str(sweep), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].user_attrs["baseline"] and study.trials[1].params == study.trials[0].params


@pytest.mark.integration
def test_trials_failing_in_a_row_stop_the_sweep_with_the_repeated_error(tmp_path: Path) -> None:
    write_sweep(tmp_path, budget={"n_trials": 10, "max_failures_in_a_row": 2})
    faults = "segfault_at_step=1,trial=1;segfault_at_step=1,trial=2"
    with pytest.raises(SweepFailingError) as stopped:
        sweep_in_process(tmp_path, env=fault_env(faults))
    assert str(stopped.value) == "2 trials in a row failed (#1, #2), each with: trial process killed by signal SIGSEGV"
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL", "FAIL"]
    parent = next(run for run in runs_of(tmp_path, "small") if run.info.run_name == "small-sweep")
    assert parent.info.status == "FAILED" and parent.data.tags["ftlab.end_reason"] == str(stopped.value)


# --- a trial reaped while it ran ----------------------------------------------------------------------------------


def test_a_late_result_from_a_reaped_trial_changes_nothing(tmp_path: Path) -> None:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = study.ask()
    run = TrackedRun.start(tracking, "reaped", "trial-000")
    # Another worker reaped the trial (its worker was paused past the grace period) and ended its run KILLED.
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    run.end("KILLED", "the worker running this trial stopped sending heartbeats")

    # The paused process resumes: its next report finds the trial finished.
    callback = PruningCallback(trial, "eval/loss", {}, can_prune=True)
    with pytest.raises(TrialReapedError), TrackedRun(run.client, run.run_id, ending=run_ending):
        callback.on_evaluate(8, 4096, {"eval/loss": 5.0})
    record = record_for(TrialReapedError())
    assert record.state == "FAIL" and not record.retry  # its retry runs elsewhere already
    tell(study, trial._trial_id, record)  # and telling it changes nothing
    (frozen,) = study.trials
    assert frozen.state.name == "FAIL" and "fail_reason" not in frozen.user_attrs
    ended = MlflowClient(tracking_uri=tracking).get_run(run.run_id)
    assert ended.info.status == "KILLED"
    assert "heartbeats" in ended.data.tags["ftlab.end_reason"], "the reaper's reason stays"
    assert TrialRecord.from_trial(frozen).own_failure is False


@pytest.mark.integration
def test_commands_that_only_read_create_no_store(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path)
    for command in (["status", str(sweep)], ["best", str(sweep)], ["ui", str(sweep)]):
        result = run_ftlab(*command, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (command, result.stderr)
    assert not (tmp_path / "mlruns").exists() or not any((tmp_path / "mlruns").iterdir())
