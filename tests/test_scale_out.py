"""Many workers on one study, and nothing lost when one dies. No mocks.

The contract tests run on both backends a user can have: SQLite files on one machine (``sqlite``), and PostgreSQL
plus a real ``mlflow server`` on PostgreSQL, as many machines share them (``postgresql``). The tests after them need
what only the second has: a password in the URL, connections an admin can drop, a tracking server that can go down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.helpers import SMALL_SWEEP, write_sweep
from tests.support.faults import fault_env

pytest_plugins = ["tests.support.services"]
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


@dataclass(frozen=True)
class Backend:
    name: str
    storage: str
    tracking: str
    workers: int  # workers × budget of the "budget met exactly" case
    budget: int


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        store = tmp_path / "mlruns"
        store.mkdir()
        return Backend("sqlite", f"sqlite:///{store / 'optuna.db'}", f"sqlite:///{store / 'mlflow.db'}", 2, 4)
    server = request.getfixturevalue("mlflow_server")
    return Backend("postgresql", request.getfixturevalue("postgres_url"), server.uri, 4, 8)


def wait_for_step(worker: subprocess.Popen[str], progress: Path, step: int, timeout: float = 180) -> int:
    """Wait until the trial's progress file (written at logging steps) shows ``step`` or later; returns that step."""
    deadline = time.monotonic() + timeout
    while not (progress.exists() and json.loads(progress.read_text() or "{}").get("step", 0) >= step):
        assert time.monotonic() < deadline and worker.poll() is None, worker.communicate()
        time.sleep(0.1)
    return int(json.loads(progress.read_text())["step"])


def wait_until_group_is_gone(pgid: int, timeout: float = 30) -> None:
    """Wait until process group ``pgid`` (a worker started in a session of its own, and what it forked) has no live
    process left; zombies, which nobody may reap in a container, do not count."""
    deadline = time.monotonic() + timeout
    while pgid in live_process_groups():
        assert time.monotonic() < deadline, f"process group {pgid} still alive after {timeout} s"
        time.sleep(0.1)


def live_process_groups() -> set[int]:
    groups = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]  # after "pid (command)"
        except OSError:  # the process ended while we looked
            continue
        if state != "Z":
            groups.add(int(group))
    return groups


def assert_nothing_left_running(study: optuna.Study, tracking: str, experiment: str) -> None:
    assert not [trial.number for trial in study.trials if trial.state.name in ("RUNNING", "WAITING")]
    assert not [run.info.run_name for run in runs_by_trial(tracking, experiment) if run.info.status == "RUNNING"]


def runs_by_trial(tracking: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=tracking)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return client.search_runs([found.experiment_id], max_results=1000)


# --- the contract, on SQLite and on PostgreSQL + MLflow server ------------------------------------------------------


def test_workers_meet_the_budget_exactly(tmp_path: Path, backend: Backend) -> None:
    # Short trials (4 or 2 steps): this case is about who starts what, not about training.
    short = {**TINY_DATA, "max_train_blocks": 32}
    write_sweep(tmp_path, name="budget", data=short, budget={"n_trials": backend.budget})
    workers = [start_worker(tmp_path, backend.storage, backend.tracking) for _ in range(backend.workers)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, out + err
    study = optuna.load_study(study_name="budget", storage=backend.storage)
    states = Counter(trial.state.name for trial in study.trials)
    assert states["COMPLETE"] == backend.budget, states
    assert len({trial.number for trial in study.trials}) == len(study.trials)
    assert sum(bool(trial.user_attrs.get("baseline")) for trial in study.trials) == 1
    points = [tuple(sorted(trial.params.items())) for trial in study.trials if trial.state.name == "COMPLETE"]
    assert len(set(points)) == len(points), ("no trial ran twice", points)

    runs = runs_by_trial(backend.tracking, "budget")
    finished_children = [
        run for run in runs if run.info.status == "FINISHED" and "optuna.trial.number" in run.data.tags
    ]
    complete_run_ids = {trial.user_attrs["mlflow_run_id"] for trial in study.trials if trial.state.name == "COMPLETE"}
    assert {run.info.run_id for run in finished_children} == complete_run_ids
    parents = [run for run in runs if run.data.tags.get("ftlab.role") == "sweep"]
    assert len(parents) == 1, "workers agree on one parent run"
    assert_nothing_left_running(study, backend.tracking, "budget")
    print(f"{backend.name}: {backend.workers} workers x budget {backend.budget}: {dict(states)}")


# A kill: the chaos tier (`make test-slow`, run by CI), on both storages, as test_storages' killed worker on the
# journal and gRPC storages. `make test` keeps the retry logic's unit tests (test_retries, test_fail_fast).
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_a_killed_worker_s_trial_is_retried_with_the_same_params_and_resumes(tmp_path: Path, backend: Backend) -> None:
    write_sweep(
        tmp_path,
        name="killed",
        data=TINY_DATA,
        train={**SMALL_SWEEP["train"], "num_train_epochs": 4},
        budget={"n_trials": 2},
        storage={"heartbeat_interval": 1, "grace_period": 3},
    )
    # Trial 0's steps slowed to 0.15 s: the tiny trial would otherwise finish its 48 steps in the second its process
    # takes to notice that its worker died, and be told COMPLETE with nothing to retry (seen here and on CI).
    first = start_worker(tmp_path, backend.storage, backend.tracking, env=fault_env("step_delay_ms=150,trial=0"))
    progress = tmp_path / ".ftlab" / "trials" / "killed" / "trial-000" / "progress.json"
    wait_for_step(first, progress, 20)
    os.kill(first.pid, signal.SIGKILL)  # the worker's machine is gone; its trial process must die with it
    first.wait()
    wait_until_group_is_gone(first.pid)  # its trial process (which watches the worker every second) too
    died_at = json.loads(progress.read_text())["step"]  # written at logging steps (every 4): may lag by up to 3

    # The next worker joins within the grace period: it finds trial 0 RUNNING, runs a trial of its own, and reaps
    # trial 0 once its heartbeats are 3 s old (it looks twice a second while it waits), then runs the retry.

    second = start_worker(tmp_path, backend.storage, backend.tracking)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, out + err
    study = optuna.load_study(study_name="killed", storage=backend.storage)
    trials = study.trials
    assert trials[0].state.name == "FAIL"
    retries = [trial for trial in trials if trial.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params
    assert Counter(trial.state.name for trial in trials)["COMPLETE"] == 2, "the budget is still met exactly"

    client = MlflowClient(tracking_uri=backend.tracking)
    dead = client.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert dead.info.status == "KILLED" and "heartbeats" in dead.data.tags["ftlab.end_reason"]
    retry_run = client.get_run(retries[0].user_attrs["mlflow_run_id"])
    assert retry_run.data.tags["ftlab.retry_of_trial"] == "0"
    # Resumed from the last complete checkpoint (one per evaluation, every 8 steps here), not from scratch.
    resumed_from = int(retry_run.data.tags["ftlab.resumed_from_step"])
    assert 8 <= resumed_from <= died_at + 3 and resumed_from % 8 == 0
    assert died_at - resumed_from < 8 + 4, "resumed from the last checkpoint, not an earlier one"
    first_logged = min(m.step for m in client.get_metric_history(retry_run.info.run_id, "train/loss"))
    assert first_logged > resumed_from
    print(f"{backend.name}: killed at step {died_at}+, resumed from {resumed_from}: "
          f"{died_at - resumed_from} to {died_at - resumed_from + 3} of {died_at} steps redone")  # fmt: skip
    assert_nothing_left_running(study, backend.tracking, "killed")


@pytest.mark.slow  # chaos tier: `make test-slow`, run by CI after `make test`
def test_a_kill_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path: Path, backend: Backend) -> None:
    write_sweep(
        tmp_path,
        name="torn",
        data=TINY_DATA,
        train={**SMALL_SWEEP["train"], "num_train_epochs": 2},
        budget={"n_trials": 1},
    )
    # Trial 0 is SIGKILLed halfway through writing its step-16 checkpoint; step 8's is the last complete one.
    worker = start_worker(
        tmp_path, backend.storage, backend.tracking, env=fault_env("kill_in_checkpoint_at_step=16,trial=0")
    )
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, out + err
    study = optuna.load_study(study_name="torn", storage=backend.storage)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE"]
    assert "SIGKILL" in study.trials[0].user_attrs["fail_reason"]
    retry_run = MlflowClient(tracking_uri=backend.tracking).get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert retry_run.data.tags["ftlab.resumed_from_step"] == "8"
    assert_nothing_left_running(study, backend.tracking, "torn")


@pytest.mark.slow  # chaos tier: `make test-slow`, run by CI after `make test`
def test_sigterm_checkpoints_ends_the_run_killed_exits_143_and_the_retry_resumes(
    tmp_path: Path, backend: Backend
) -> None:
    write_sweep(
        tmp_path,
        name="preempted",
        data=TINY_DATA,
        train={**SMALL_SWEEP["train"], "num_train_epochs": 4},
        budget={"n_trials": 1},
    )
    worker = start_worker(tmp_path, backend.storage, backend.tracking)
    progress = tmp_path / ".ftlab" / "trials" / "preempted" / "trial-000" / "progress.json"
    wait_for_step(worker, progress, 10)
    os.killpg(worker.pid, signal.SIGTERM)  # a scheduler preempting the job signals every process in it
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 143, out + err
    assert "SIGTERM" in err

    study = optuna.load_study(study_name="preempted", storage=backend.storage)
    (stopped,) = [trial for trial in study.trials if trial.number == 0]
    assert stopped.state.name == "FAIL"
    assert "preempted (SIGTERM)" in stopped.user_attrs["fail_reason"]
    assert "checkpoint saved" in stopped.user_attrs["fail_reason"]
    client = MlflowClient(tracking_uri=backend.tracking)
    dead = client.get_run(stopped.user_attrs["mlflow_run_id"])
    assert dead.info.status == "KILLED" and "SIGTERM" in dead.data.tags["ftlab.end_reason"]
    waiting = [trial for trial in study.trials if trial.state.name == "WAITING"]
    assert len(waiting) == 1, "the preempted trial is queued again"

    again = start_worker(tmp_path, backend.storage, backend.tracking)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, out + err
    study = optuna.load_study(study_name="preempted", storage=backend.storage)
    (retry,) = [trial for trial in study.trials if trial.state.name == "COMPLETE"]
    assert retry.params == stopped.params
    retry_run = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert retry_run.data.tags["ftlab.retry_of_trial"] == "0"
    # The checkpoint was written at the step the signal arrived: nothing is trained twice.
    resumed_from = int(retry_run.data.tags["ftlab.resumed_from_step"])
    last_reached = max(m.step for m in client.get_metric_history(dead.info.run_id, "train/loss"))
    assert resumed_from >= 10 and last_reached <= resumed_from
    assert min(m.step for m in client.get_metric_history(retry_run.info.run_id, "train/loss")) > resumed_from
    print(f"{backend.name}: preempted at step {resumed_from}, 0 steps redone")
    assert_nothing_left_running(study, backend.tracking, "preempted")


# --- what only PostgreSQL and a tracking server have ---------------------------------------------------------------


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


@pytest.mark.slow  # chaos tier: `make test-slow`, run by CI after `make test`
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
    outputs = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        outputs.append(out + err)
        assert worker.returncode == 0, out + err
    assert terminated > 0
    study = optuna.load_study(study_name="dropped", storage=postgres_url)
    summary = [(trial.number, trial.state.name, trial.user_attrs.get("fail_reason")) for trial in study.trials]
    assert Counter(trial.state.name for trial in study.trials)["COMPLETE"] == 3, (summary, outputs)
    assert not [trial for trial in study.trials if trial.state.name == "RUNNING"]


@pytest.mark.slow  # chaos tier: `make test-slow`, run by CI after `make test`
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
    time.sleep(5)
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
