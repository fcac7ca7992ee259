"""Many workers on one study: real PostgreSQL (study) and a real MLflow server (tracking), no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.helpers import SMALL_SWEEP, write_sweep

pytest_plugins = ["tests.services"]
pytestmark = [pytest.mark.integration, pytest.mark.services]

TINY_DATA = {**SMALL_SWEEP["data"], "max_train_blocks": 96}


def start_worker(
    folder: Path, storage: str, tracking: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {key: value for key, value in {**os.environ, **(env or {})}.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen(
        [sys.executable, "-m", "ftlab.cli", "worker", "sweep.yaml", "--storage", storage, "--tracking-uri", tracking,
         *args],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def runs_by_trial(tracking: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=tracking)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return client.search_runs([found.experiment_id], max_results=1000)


def test_four_workers_meet_the_budget_exactly(tmp_path: Path, postgres_url: str, mlflow_server) -> None:
    write_sweep(tmp_path, name="four", data=TINY_DATA, budget={"n_trials": 8})
    workers = [start_worker(tmp_path, postgres_url, mlflow_server.uri) for _ in range(4)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, out + err
    study = optuna.load_study(study_name="four", storage=postgres_url)
    states = Counter(trial.state.name for trial in study.trials)
    assert states["COMPLETE"] == 8, states
    assert states["RUNNING"] == 0 and states["WAITING"] == 0
    assert len({trial.number for trial in study.trials}) == len(study.trials)
    assert sum(bool(trial.user_attrs.get("baseline")) for trial in study.trials) == 1

    runs = runs_by_trial(mlflow_server.uri, "four")
    assert not [run for run in runs if run.info.status == "RUNNING"]
    finished_children = [
        run for run in runs if run.info.status == "FINISHED" and "optuna.trial.number" in run.data.tags
    ]
    complete_run_ids = {trial.user_attrs["mlflow_run_id"] for trial in study.trials if trial.state.name == "COMPLETE"}
    assert {run.info.run_id for run in finished_children} == complete_run_ids
    parents = [run for run in runs if run.data.tags.get("ftlab.role") == "sweep"]
    assert len(parents) == 1, "workers agree on one parent run"


@pytest.mark.slow
def test_a_killed_worker_s_trial_is_retried_with_the_same_params(
    tmp_path: Path, postgres_url: str, mlflow_server
) -> None:
    write_sweep(
        tmp_path,
        name="killed",
        data=TINY_DATA,
        train={**SMALL_SWEEP["train"], "num_train_epochs": 6},
        budget={"n_trials": 2},
        storage={"heartbeat_interval": 1, "grace_period": 4},
    )
    first = start_worker(tmp_path, postgres_url, mlflow_server.uri)
    progress = tmp_path / ".ftlab" / "trials" / "killed" / "trial-000" / "progress.json"
    deadline = time.monotonic() + 180
    while not (progress.exists() and json.loads(progress.read_text() or "{}").get("step", 0) >= 20):
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.2)
    killed_at = json.loads(progress.read_text())["step"]  # written at logging steps: may lag the real step
    os.kill(first.pid, signal.SIGKILL)  # the worker's machine is gone; its trial process dies with it
    first.wait()
    time.sleep(5)  # past the grace period: the next worker reaps the trial

    second = start_worker(tmp_path, postgres_url, mlflow_server.uri)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, out + err
    study = optuna.load_study(study_name="killed", storage=postgres_url)
    trials = study.trials
    assert trials[0].state.name == "FAIL"
    retries = [trial for trial in trials if trial.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params
    assert Counter(trial.state.name for trial in trials)["COMPLETE"] == 2
    assert not [trial for trial in trials if trial.state.name == "RUNNING"]

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    dead = client.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert dead.info.status == "KILLED" and "heartbeats" in dead.data.tags["ftlab.end_reason"]
    retry_run = client.get_run(retries[0].user_attrs["mlflow_run_id"])
    assert retry_run.data.tags["ftlab.retry_of_trial"] == "0"
    # Resumed from the last complete checkpoint (one per evaluation, every 8 steps here), not from scratch.
    resumed_from = int(retry_run.data.tags["ftlab.resumed_from_step"])
    assert 8 <= resumed_from <= killed_at + 4 and resumed_from % 8 == 0
    first_logged = min(m.step for m in client.get_metric_history(retry_run.info.run_id, "train/loss"))
    assert first_logged > resumed_from
    last_reached = max(m.step for m in client.get_metric_history(dead.info.run_id, "train/loss"))
    print(f"killed after step {last_reached}, resumed from step {resumed_from}: {last_reached - resumed_from} redone")
    assert not [run for run in runs_by_trial(mlflow_server.uri, "killed") if run.info.status == "RUNNING"]


def test_a_storage_password_appears_nowhere(tmp_path: Path, postgres_url: str, mlflow_server) -> None:
    secret = "s3cret-Pw-4711"
    # Trust authentication accepts any password, so the URL works and the password is still in it.
    with_password = postgres_url.replace("postgres@", f"postgres:{secret}@")
    write_sweep(tmp_path, name="secret", data=TINY_DATA, budget={"n_trials": 1})
    worker = start_worker(tmp_path, with_password, mlflow_server.uri)
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, out + err
    assert secret not in out + err

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    runs = runs_by_trial(mlflow_server.uri, "secret")
    assert runs
    download = tmp_path / "downloaded"
    for run in runs:
        assert secret not in json.dumps(run.data.params) + json.dumps(run.data.tags)
        client.download_artifacts(run.info.run_id, "", str(download / run.info.run_id))
    for path in [*download.rglob("*"), *(tmp_path / ".ftlab").rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert "***" in next(run for run in runs if run.data.tags.get("ftlab.role") == "sweep").data.tags["optuna.storage"]


@pytest.mark.slow
def test_workers_survive_dropped_database_connections(tmp_path: Path, postgres_url: str, mlflow_server) -> None:
    import sqlalchemy

    write_sweep(tmp_path, name="dropped", data=TINY_DATA, budget={"n_trials": 3})
    database = postgres_url.rsplit("/", 1)[1]
    admin = sqlalchemy.create_engine(postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    workers = [start_worker(tmp_path, postgres_url, mlflow_server.uri) for _ in range(2)]
    terminated = 0
    deadline = time.monotonic() + 600
    while any(worker.poll() is None for worker in workers) and time.monotonic() < deadline:
        time.sleep(3)
        with admin.connect() as connection:  # what a database restart does to every open connection
            terminated += len(
                connection.execute(
                    sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                ).all()
            )
    admin.dispose()
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, out + err
    assert terminated > 0
    study = optuna.load_study(study_name="dropped", storage=postgres_url)
    assert Counter(trial.state.name for trial in study.trials)["COMPLETE"] == 3
    assert not [trial for trial in study.trials if trial.state.name == "RUNNING"]


@pytest.mark.slow
def test_mlflow_server_outage_mid_trial_loses_no_metric(tmp_path: Path, postgres_url: str, mlflow_server) -> None:
    write_sweep(
        tmp_path,
        name="outage",
        data=TINY_DATA,
        train={**SMALL_SWEEP["train"], "num_train_epochs": 40, "eval_tokens": 8192},
        budget={"n_trials": 1},
    )
    worker = start_worker(tmp_path, postgres_url, mlflow_server.uri)
    progress = tmp_path / ".ftlab" / "trials" / "outage" / "trial-000" / "progress.json"
    deadline = time.monotonic() + 180
    while not (progress.exists() and json.loads(progress.read_text() or "{}").get("step", 0) > 0):
        assert time.monotonic() < deadline and worker.poll() is None, worker.communicate()
        time.sleep(0.2)
    mlflow_server.stop()
    time.sleep(8)
    mlflow_server.start()
    assert worker.poll() is None, "the trial outlived the outage"
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, out + err

    study = optuna.load_study(study_name="outage", storage=postgres_url)
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE"
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    evals = client.get_metric_history(run.info.run_id, "eval/loss")
    tokens = trial.user_attrs["tokens_seen"]
    assert len(evals) == -(-tokens // 8192), "one eval/loss per fidelity point, none lost"
    assert evals[-1].value == pytest.approx(trial.user_attrs["eval_loss"])
    assert not [run for run in runs_by_trial(mlflow_server.uri, "outage") if run.info.status == "RUNNING"]


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_resumes_from_the_previous_one(
    tmp_path: Path, postgres_url: str, mlflow_server
) -> None:
    write_sweep(
        tmp_path,
        name="torn",
        data=TINY_DATA,
        train={**SMALL_SWEEP["train"], "num_train_epochs": 3},
        budget={"n_trials": 1},
    )
    # Trial 0 is SIGKILLed halfway through writing its step-16 checkpoint; step 8's is the last complete one.
    worker = start_worker(
        tmp_path, postgres_url, mlflow_server.uri, env={"FTLAB_INJECT_FAULT": "kill_in_checkpoint_at_step=16,trial=0"}
    )
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, out + err
    study = optuna.load_study(study_name="torn", storage=postgres_url)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE"]
    assert "SIGKILL" in study.trials[0].user_attrs["fail_reason"]
    retry_run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert retry_run.data.tags["ftlab.resumed_from_step"] == "8"
