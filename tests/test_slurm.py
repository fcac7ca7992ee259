"""``ftlab launch slurm`` on a real SLURM: a one-node cluster (slurmctld + slurmd on 127.0.0.1, partition ``cpu``,
8 slots) that ``tests/support/slurm_cluster.sh`` installs and starts, as ``.ci/run`` does before the tests. No mock of
sbatch, squeue or scontrol. The study is in a real PostgreSQL database, shared by the tasks.

The tasks are real ``ftlab worker`` processes; their trials train the tiny demo model. Trials that must still be
running when the test cancels, requeues or times out their task are slowed with the test fault ``step_delay_ms``
(tests/support/faults.py; sleeping, not computing), which only that trial number gets: its retry runs at full speed.

All are in the slow tier (``make test-slow``, run by CI after ``make test``): each starts real workers, which takes
minutes on two shared cores (the figures are in docs/scale-out.md, section 7). The launcher's pure parts (the script,
time limits, reading scontrol and sacct) are tested in the everyday tier, in tests/test_launch.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import optuna
import pytest
from mlflow import MlflowClient

from ftlab.launch.slurm_tasks import SlurmTask, read_tasks
from ftlab.sweep.cluster_task import SLURM_TASK_ATTR
from tests.helpers import SMALL_SWEEP, run_ftlab, write_sweep
from tests.support.faults import fault_env

pytest_plugins = ["tests.support.services"]
pytestmark = [pytest.mark.integration, pytest.mark.services]

CLUSTER_SCRIPT = Path(__file__).parent / "support" / "slurm_cluster.sh"
TINY_DATA = {**SMALL_SWEEP["data"], "max_train_blocks": 96}  # 10 optimizer steps per epoch at the baseline's batch 8
JOB_TIMEOUT_S = 900


def _node_ready() -> bool:
    if shutil.which("sinfo") is None:
        return False
    shown = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return shown.returncode == 0 and any(s in {"idle", "mixed", "allocated"} for s in shown.stdout.split())


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The one-node cluster, started by tests/support/slurm_cluster.sh unless it is up; skips only where slurm cannot
    be installed (no root, no apt); a cluster that is installed but does not start fails the test."""
    if _node_ready():
        return
    installed = shutil.which("slurmctld") is not None
    if not installed and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        pytest.skip("slurm is not installed and cannot be here (needs root and apt-get): run "
                    "tests/support/slurm_cluster.sh as root on a Debian machine")  # fmt: skip
    started = subprocess.run(["bash", str(CLUSTER_SCRIPT)], capture_output=True, text=True, timeout=900)
    output = (started.stdout + started.stderr)[-3000:]
    if started.returncode != 0 and not installed and shutil.which("slurmctld") is None:
        pytest.skip(f"slurm could not be installed: {output}")
    assert started.returncode == 0, f"slurm is installed but did not start:\n{output}"


@pytest.fixture(scope="session")
def demo_assets() -> None:
    """The demo model and text, built here once rather than by the first tasks at once (not what is measured)."""
    from ftlab.demo import ensure_demo_assets

    ensure_demo_assets()


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    """Job ids a test submitted: cancelled at its end, so a failed test leaves no task running."""
    submitted: list[str] = []
    yield submitted
    for job in submitted:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)


def launch(folder: Path, storage: str, tracking: str, jobs: list[str], *args: str) -> tuple[str, str]:
    """``ftlab launch slurm sweep.yaml --cpus-per-worker 1 ARGS`` with the URLs in the environment; the job id and
    what it printed."""
    env = {"FTLAB_STORAGE": storage, "FTLAB_TRACKING_URI": tracking}
    done = run_ftlab("launch", "slurm", "sweep.yaml", "--cpus-per-worker", "1", *args, cwd=folder, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"submitted SLURM job (\d+)", done.stdout)
    assert found, done.stdout
    jobs.append(found[1])
    return found[1], done.stdout


def status(folder: Path, storage: str, *args: str) -> str:
    """``ftlab status sweep.yaml`` (stdout and stderr), as a user would run it."""
    done = run_ftlab("status", "sweep.yaml", *args, cwd=folder, env={"FTLAB_STORAGE": storage})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def wait_for_job(job: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, SlurmTask]:
    """Wait until every task of the job has ended; its tasks by id."""
    deadline = time.monotonic() + timeout
    while True:
        tasks, _ = read_tasks(job)
        if tasks and all(task.ended for task in tasks):
            return {task.task: task for task in tasks}
        assert time.monotonic() < deadline, f"job {job} still running after {timeout} s: {tasks}"
        time.sleep(2)


def wait_for_step(folder: Path, sweep: str, trial: int, step: int, timeout: float = JOB_TIMEOUT_S) -> int:
    """Wait until trial ``trial``'s progress file (written at logging steps) shows ``step`` or later."""
    progress = folder / ".ftlab" / "trials" / sweep / f"trial-{trial:03d}" / "progress.json"
    deadline = time.monotonic() + timeout
    while not (progress.exists() and json.loads(progress.read_text() or "{}").get("step", 0) >= step):
        assert time.monotonic() < deadline, f"trial {trial} did not reach step {step} within {timeout} s"
        time.sleep(0.5)
    return int(json.loads(progress.read_text())["step"])


def task_of(trial: optuna.trial.FrozenTrial) -> dict:
    return trial.user_attrs[SLURM_TASK_ATTR]


def assert_nothing_left(study: optuna.Study, tracking: str, experiment: str) -> None:
    assert not [trial.number for trial in study.trials if trial.state.name in ("RUNNING", "WAITING")]
    client = MlflowClient(tracking_uri=tracking)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id], max_results=1000)
    assert not [run.info.run_name for run in runs if run.info.status == "RUNNING"]


def checkpoint_step(trial: optuna.trial.FrozenTrial) -> int:
    reason = trial.user_attrs["fail_reason"]
    assert "preempted (SIGTERM)" in reason, reason
    found = re.search(r"checkpoint saved at step (\d+)", reason)
    assert found, reason
    return int(found[1])


def resumed_from(tracking: str, trial: optuna.trial.FrozenTrial) -> int:
    run = MlflowClient(tracking_uri=tracking).get_run(trial.user_attrs["mlflow_run_id"])
    return int(run.data.tags["ftlab.resumed_from_step"])


@pytest.fixture
def stores(tmp_path: Path, postgres_url: str) -> tuple[str, str]:
    """The study in PostgreSQL (the URL with a password: trust authentication accepts any), MLflow in SQLite."""
    (tmp_path / "mlruns").mkdir()
    return postgres_url.replace("postgres@", "postgres:Slurm-s3cret@"), f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


# --- all in the slow tier (`make test-slow`, run by CI): each starts real workers, minutes on two shared cores ------


@pytest.mark.slow
def test_launched_workers_meet_the_budget_exactly(
    tmp_path: Path, slurm_cluster: None, demo_assets: None, stores: tuple[str, str], jobs: list[str]
) -> None:
    storage, tracking = stores
    write_sweep(tmp_path, name="slurm-budget", data={**TINY_DATA, "max_train_blocks": 32}, budget={"n_trials": 3})
    started = time.monotonic()
    job, printed = launch(tmp_path, storage, tracking, jobs, "--workers", "3")
    tasks = wait_for_job(job)
    took = time.monotonic() - started

    assert sorted(tasks) == [f"{job}_{n}" for n in range(3)]
    assert {task.state for task in tasks.values()} == {"COMPLETED"}, tasks
    study = optuna.load_study(study_name="slurm-budget", storage=storage)
    assert Counter(trial.state.name for trial in study.trials) == {"COMPLETE": 3}
    assert {task_of(trial)["task"] for trial in study.trials} <= set(tasks)
    assert study.user_attrs["slurm_jobs"][0]["job"] == job
    assert_nothing_left(study, tracking, "slurm-budget")

    shown = status(tmp_path, storage)
    for task in tasks:
        assert re.search(rf"│ {task}\s+│ COMPLETED", shown), shown
    assert "warning" not in shown
    # The password is in the job's environment only: not in the script, the job's record, the logs or any output.
    scontrol = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    script = Path(re.search(r"script: (\S+)", printed)[1]).read_text()
    logs = "".join(path.read_text() for path in (tmp_path / ".ftlab" / "slurm").glob("*.log"))
    for text in (printed, shown, scontrol, script, logs):
        assert "Slurm-s3cret" not in text
    print(f"{printed}\n{shown}\n3 workers, 3 trials: {took:.0f} s from launch to the last task's end")


@pytest.mark.slow  # `make test-slow`, run by CI after `make test`
def test_a_cancelled_task_s_trial_is_retried_by_another_task_and_the_budget_is_still_met(
    tmp_path: Path, slurm_cluster: None, demo_assets: None, stores: tuple[str, str], jobs: list[str]
) -> None:
    storage, tracking = stores
    train = {**SMALL_SWEEP["train"], "num_train_epochs": 2}
    write_sweep(tmp_path, name="slurm-cancel", data=TINY_DATA, train=train, budget={"n_trials": 4})
    # trial 1 is still running when its task is cancelled
    with mock.patch.dict(os.environ, fault_env("step_delay_ms=2000,trial=1")):
        job, _ = launch(tmp_path, storage, tracking, jobs, "--workers", "3")
    wait_for_step(tmp_path, "slurm-cancel", 1, 4)
    study = optuna.load_study(study_name="slurm-cancel", storage=storage)
    victim = task_of(study.trials[1])["task"]
    subprocess.run(["scancel", victim], check=True)  # SIGTERM to every process of the task, KillWait before SIGKILL
    cancelled_at = time.monotonic()
    tasks = wait_for_job(job)

    assert tasks[victim].state == "CANCELLED", tasks
    assert all(task.state == "COMPLETED" for name, task in tasks.items() if name != victim), tasks
    study = optuna.load_study(study_name="slurm-cancel", storage=storage)
    stopped = study.trials[1]
    assert stopped.state.name == "FAIL"
    saved_at = checkpoint_step(stopped)
    (retry,) = [trial for trial in study.trials if trial.system_attrs.get("failed_trial") == 1]
    assert retry.state.name == "COMPLETE" and retry.params == stopped.params
    assert task_of(retry)["task"] != victim, "retried by another task"
    assert resumed_from(tracking, retry) == saved_at
    assert Counter(trial.state.name for trial in study.trials)["COMPLETE"] == 4, "the budget is met exactly"
    assert_nothing_left(study, tracking, "slurm-cancel")
    shown = status(tmp_path, storage)
    assert re.search(rf"│ {victim}\s+│ CANCELLED", shown), shown
    print(f"{shown}\ncancelled {victim} at step {saved_at}; its trial resumed on {task_of(retry)['task']}; "
          f"{time.monotonic() - cancelled_at:.0f} s from the cancel to the job's end")  # fmt: skip


@pytest.mark.slow  # `make test-slow`, run by CI after `make test`
def test_a_requeued_task_resumes_its_trial_from_the_checkpoint(
    tmp_path: Path, slurm_cluster: None, demo_assets: None, stores: tuple[str, str], jobs: list[str]
) -> None:
    storage, tracking = stores
    train = {**SMALL_SWEEP["train"], "num_train_epochs": 2}
    write_sweep(tmp_path, name="slurm-requeue", data=TINY_DATA, train=train, budget={"n_trials": 1})
    with mock.patch.dict(os.environ, fault_env("step_delay_ms=1500,trial=0")):
        job, printed = launch(tmp_path, storage, tracking, jobs, "--workers", "1")
    wait_for_step(tmp_path, "slurm-requeue", 0, 4)
    # Preemption with PreemptMode=REQUEUE, by hand: SIGTERM, KillWait, SIGKILL, and the task queued again.
    subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True)
    requeued_at = time.monotonic()
    mid = ""
    deadline = time.monotonic() + 120
    while "(start 2)" not in mid and time.monotonic() < deadline:  # the status while the requeued task waits or runs
        mid = status(tmp_path, storage)
        time.sleep(3)
    tasks = wait_for_job(job)

    (task,) = tasks.values()
    assert task.state == "COMPLETED" and task.starts == 2, task
    study = optuna.load_study(study_name="slurm-requeue", storage=storage)
    stopped, retry = study.trials
    assert stopped.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.system_attrs.get("failed_trial") == 0 and retry.params == stopped.params
    assert task_of(stopped) | {"host": None} == {"task": f"{job}_0", "start": 1, "host": None}
    assert task_of(retry) | {"host": None} == {"task": f"{job}_0", "start": 2, "host": None}, "in the requeued task"
    saved_at = checkpoint_step(stopped)
    assert saved_at >= 4 and resumed_from(tracking, retry) == saved_at, "no step trained twice"
    log = (tmp_path / ".ftlab" / "slurm" / f"slurm-requeue-{job}_0.log").read_text()
    assert "(start 1)" in log and "(start 2)" in log and "DUE TO JOB REQUEUE" in log, log
    assert_nothing_left(study, tracking, "slurm-requeue")
    shown = status(tmp_path, storage)
    print(f"{printed}\n--- while requeued:\n{mid}\n--- at the end:\n{shown}\n--- the task's log:\n{log}\n"
          f"requeued at step {saved_at}, resumed from {resumed_from(tracking, retry)}; "
          f"{time.monotonic() - requeued_at:.0f} s from the requeue to the job's end")  # fmt: skip


@pytest.mark.slow  # `make test-slow`, run by CI after `make test`
def test_a_task_over_its_time_limit_checkpoints_and_the_next_launch_resumes(
    tmp_path: Path, slurm_cluster: None, demo_assets: None, stores: tuple[str, str], jobs: list[str]
) -> None:
    storage, tracking = stores
    train = {**SMALL_SWEEP["train"], "num_train_epochs": 4}  # 43 steps × 4 s: longer than the 2 minutes
    write_sweep(tmp_path, name="slurm-time", data=TINY_DATA, train=train, budget={"n_trials": 1})
    with mock.patch.dict(os.environ, fault_env("step_delay_ms=4000,trial=0")):
        job, printed = launch(tmp_path, storage, tracking, jobs, "--workers", "1", "--time", "2")
    script = Path(re.search(r"script: (\S+)", printed)[1]).read_text()
    assert "#SBATCH --time=2" in script
    assert "#SBATCH --signal" not in script, "a 2-minute limit: the limit's own SIGTERM is the warning"
    (task,) = wait_for_job(job).values()
    assert task.state == "TIMEOUT", task
    study = optuna.load_study(study_name="slurm-time", storage=storage)
    saved_at = checkpoint_step(study.trials[0])
    assert [trial.state.name for trial in study.trials] == ["FAIL", "WAITING"]
    timed_out = status(tmp_path, storage)
    assert re.search(rf"│ {job}_0\s+│ TIMEOUT", timed_out), timed_out

    again, _ = launch(tmp_path, storage, tracking, jobs, "--workers", "1")
    wait_for_job(again)
    study = optuna.load_study(study_name="slurm-time", storage=storage)
    retry = study.trials[1]
    assert retry.state.name == "COMPLETE" and task_of(retry)["task"] == f"{again}_0"
    assert resumed_from(tracking, retry) == saved_at
    assert_nothing_left(study, tracking, "slurm-time")
    shown = status(tmp_path, storage)
    print(f"--- after the time limit:\n{timed_out}\n--- after the second launch:\n{shown}\n"
          f"timed out at step {saved_at}, resumed from {resumed_from(tracking, retry)}")  # fmt: skip


@pytest.mark.slow  # `make test-slow`, run by CI after `make test`
def test_status_names_the_trial_of_a_task_killed_outright_until_it_is_reaped(
    tmp_path: Path, slurm_cluster: None, demo_assets: None, stores: tuple[str, str], jobs: list[str]
) -> None:
    storage, tracking = stores
    train = {**SMALL_SWEEP["train"], "num_train_epochs": 2}
    write_sweep(tmp_path, name="slurm-kill", data=TINY_DATA, train=train, budget={"n_trials": 1},
                storage={"heartbeat_interval": 2, "grace_period": 20})  # fmt: skip
    with mock.patch.dict(os.environ, fault_env("step_delay_ms=1500,trial=0")):
        job, _ = launch(tmp_path, storage, tracking, jobs, "--workers", "1")
    wait_for_step(tmp_path, "slurm-kill", 0, 12)  # past the step-8 checkpoint (one per evaluation)
    # SIGKILL to every process of the task, no SIGTERM first, as when a node dies: the worker cannot tell the study.
    # (Not `scancel --signal=KILL`: SLURM takes that for a cancel, which sends SIGTERM first.)
    shown = subprocess.run(["scontrol", "show", "job", f"{job}_0", "--oneliner"], capture_output=True, text=True)
    listed = subprocess.run(["scontrol", "listpids", re.search(r"JobId=(\d+)", shown.stdout)[1]],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    pids = [int(line.split()[0]) for line in listed.splitlines()[1:] if line.split() and line.split()[0].isdigit()]
    assert pids, listed
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    (task,) = wait_for_job(job).values()
    unreaped = status(tmp_path, storage)
    assert f"trial #0 is RUNNING but its task {job}_0 ended {task.state}: not reaped yet" in unreaped, unreaped

    time.sleep(22)  # past the grace period
    reaped = status(tmp_path, storage, "--reap", "--tracking-uri", tracking)
    assert "not reaped yet" not in reaped, reaped
    study = optuna.load_study(study_name="slurm-kill", storage=storage)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "WAITING"]

    again, _ = launch(tmp_path, storage, tracking, jobs, "--workers", "1")
    wait_for_job(again)
    study = optuna.load_study(study_name="slurm-kill", storage=storage)
    retry = study.trials[1]
    assert retry.state.name == "COMPLETE" and resumed_from(tracking, retry) == 8
    assert_nothing_left(study, tracking, "slurm-kill")
    print(f"--- after the SIGKILL:\n{unreaped}\n--- after --reap:\n{reaped}")
