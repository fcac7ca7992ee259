"""One contract for every study storage ftlab accepts: SQLite, PostgreSQL, Optuna's gRPC storage proxy in front of
PostgreSQL (``grpc://HOST:PORT``), and Optuna's JournalStorage on a file (``journal:///PATH``). No mocks.

The contract: heartbeats are recorded, a trial silent past the grace period is failed and retried once with the same
parameters, a trial that never beat is failed once it is older than the grace period, a beat for a finished trial is
harmless, and the study lock lets one holder in at a time. Then the real CLI: workers meet the budget exactly, and a
SIGKILLed worker's trial is reaped and retried, on the two new storages.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ftlab.config import StorageConfig
from ftlab.storage import StudyLock, open_storage, storage_problem
from ftlab.sweep import compat, reaper
from tests.helpers import SMALL_SWEEP, write_sweep
from tests.support.clock import StudyClock

pytest_plugins = ["tests.support.services"]

REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ["sqlite", "postgresql", "journal", "grpc"]
FAST = StorageConfig(heartbeat_interval=1, grace_period=2)


@pytest.fixture
def grpc_url(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    """Optuna's gRPC storage proxy, in a process of its own, in front of a fresh PostgreSQL database."""
    pytest.importorskip("grpc", reason="the gRPC storage proxy needs grpcio")
    from tests.support.services import grpc_proxy

    with grpc_proxy(postgres_url, tmp_path) as url:
        yield url


@pytest.fixture(params=KINDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    if request.param == "journal":
        return f"journal:///{tmp_path / 'study.journal'}"
    if request.param == "postgresql":
        request.applymarker(pytest.mark.services)
        return request.getfixturevalue("postgres_url")
    request.applymarker(pytest.mark.services)
    return request.getfixturevalue("grpc_url")


def new_study(url: str, name: str = "contract", retried: list[int] | None = None) -> optuna.Study:
    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        (retried if retried is not None else []).append(trial.number)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)

    storage = open_storage(url, FAST, on_stale)
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True)


# --- the contract ---------------------------------------------------------------------------------------------------


def test_a_silent_trial_is_failed_and_retried_once_with_its_params(storage_url: str) -> None:
    retried: list[int] = []
    study = new_study(storage_url, retried=retried)
    clock = StudyClock(study)
    trial = study.ask()
    trial.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
    compat.record_heartbeat(study, compat.trial_id_of(trial))
    alive = study.ask()
    compat.record_heartbeat(study, compat.trial_id_of(alive))

    for _ in range(4):  # 4 s: past the grace period for `trial`; `alive` keeps beating
        clock.advance(1)
        compat.record_heartbeat(study, compat.trial_id_of(alive))
    reaper.reap(study)

    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL and retried == [0]
    assert trials[1].state == TrialState.RUNNING, "a beating trial is left alone"
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.WAITING and retry.params == trials[0].params
    reaper.reap(study)
    assert retried == [0], "failed once, retried once"


def test_a_trial_that_never_beat_is_failed_after_the_grace_period(storage_url: str) -> None:
    study = new_study(storage_url)
    clock = StudyClock(study)
    study.ask()  # as an attempt whose connection dropped before its first heartbeat leaves it
    assert reaper.fail_orphaned_trials(study, clock) == [], "younger than the grace period: its worker is about to beat"
    clock.advance(2.5)
    assert reaper.fail_orphaned_trials(study, clock) == [0]
    assert study.get_trials(deepcopy=False)[0].state == TrialState.FAIL


def test_a_beat_for_a_finished_trial_is_harmless(storage_url: str) -> None:
    study = new_study(storage_url)
    trial = study.ask()
    study.tell(trial, 1.0)
    compat.record_heartbeat(study, compat.trial_id_of(trial))  # the worker's last beat can cross the tell
    assert compat.grace_period_of(study) == 2.0


def test_the_study_lock_admits_one_holder_at_a_time(storage_url: str) -> None:
    new_study(storage_url)  # the schema exists, as it does once a worker has started
    inside: list[int] = []
    overlaps: list[int] = []

    def hold(index: int) -> None:
        lock = StudyLock(storage_url, "contract")  # one per worker, as each worker process has its own
        for _ in range(5):
            with lock.held():
                inside.append(index)
                if len(inside) > 1:
                    overlaps.append(index)
                time.sleep(0.01)
                inside.remove(index)

    threads = [threading.Thread(target=hold, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not overlaps


def test_marking_the_best_has_a_lock_of_its_own(storage_url: str) -> None:
    new_study(storage_url)
    best = StudyLock(storage_url, "contract", purpose="best")
    with best.held():
        started = time.monotonic()
        with StudyLock(storage_url, "contract").held():  # a worker starting a trial does not wait for it
            pass
        assert time.monotonic() - started < 5
        taken = threading.Event()

        def other_worker() -> None:
            with StudyLock(storage_url, "contract", purpose="best").held():
                taken.set()

        thread = threading.Thread(target=other_worker)
        thread.start()
        assert not taken.wait(timeout=1.5), "two workers held the best trial's lock at once"
    assert taken.wait(timeout=30)
    thread.join()


def test_a_worker_with_nothing_to_start_does_not_queue_for_the_study_lock(postgres_url: str, tmp_path: Path) -> None:
    from ftlab.demo import load_sweep_with_assets
    from ftlab.sweep.budget import Budget, Decision
    from ftlab.sweep.scheduler import Scheduler

    sweep_file = write_sweep(tmp_path, budget={"n_trials": 1})
    scheduler = Scheduler.open(
        load_sweep_with_assets(sweep_file), sweep_file, postgres_url, f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    budget = Budget(n_trials=1)
    assert scheduler._next_trial(budget)[0] is Decision.START  # trial 0 runs now; it may meet the budget
    pool = concurrent.futures.ThreadPoolExecutor(1)
    with StudyLock(postgres_url, "small").held():  # another worker is starting a trial
        look = pool.submit(scheduler._next_trial, budget)
        try:
            decision: object = look.result(timeout=10)
        except concurrent.futures.TimeoutError:
            decision = "it waited for the study lock"
    pool.shutdown()
    assert decision == (Decision.WAIT, None)
    scheduler.study.tell(scheduler.study.trials[0].number, 1.0)
    assert scheduler._next_trial(budget) == (Decision.DONE, None)


def test_a_storage_url_that_cannot_work_is_named(tmp_path: Path) -> None:
    assert storage_problem(f"journal:///{tmp_path / 'new' / 'study.journal'}") is None
    assert "grpc://HOST:PORT" in (storage_problem("grpc://no-port") or "")
    pytest.importorskip("grpc")
    assert "no gRPC storage proxy answers" in (storage_problem("grpc://127.0.0.1:9", timeout_s=1) or "")


@pytest.mark.slow  # a restart: the chaos tier (`make test-slow`, run by CI)
def test_a_restarted_grpc_proxy_is_waited_for(postgres_url: str, tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="the gRPC storage proxy needs grpcio")
    from tests.support.services import free_port, grpc_proxy

    port = free_port()
    with grpc_proxy(postgres_url, tmp_path, port=port) as url:
        study = new_study(url)
        trial = study.ask()
    down_s = 3.0
    done = threading.Event()

    def restart_later() -> None:  # the proxy is down for 3 s, then back on the same port until the test is done
        time.sleep(down_s)
        with grpc_proxy(postgres_url, tmp_path, port=port):
            done.wait(timeout=120)

    restarter = threading.Thread(target=restart_later)
    restarter.start()
    try:
        # Waits for the proxy instead of failing. (Not "after the restarter saw the proxy ready": the heartbeat's own
        # retry may reach the new proxy before the restarter's readiness check does.)
        started = time.monotonic()
        compat.record_heartbeat(study, compat.trial_id_of(trial))
        assert time.monotonic() - started >= down_s * 0.9
        study.tell(trial, 1.0)
        assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE]
    finally:
        done.set()
        restarter.join()


# --- the real CLI on the two new storages ----------------------------------------------------------------------------


def start_worker(folder: Path, storage: str, *args: str) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    command = [sys.executable, "-m", "ftlab.cli"]
    tracking = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    return subprocess.Popen(
        [*command, "worker", "sweep.yaml", "--storage", storage, "--tracking-uri", tracking, *args],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


@pytest.fixture(params=["journal", "grpc"])
def new_storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "journal":
        return f"journal:///{tmp_path / 'shared' / 'study.journal'}"
    request.applymarker(pytest.mark.services)
    return request.getfixturevalue("grpc_url")


TINY_DATA = {**SMALL_SWEEP["data"], "max_train_blocks": 32}


@pytest.mark.integration
# Through the proxy in the chaos tier (`make test-slow`, run by CI): `make test` keeps to 8 minutes.
@pytest.mark.parametrize("new_storage", ["journal", pytest.param("grpc", marks=pytest.mark.slow)], indirect=True)
def test_workers_meet_the_budget_exactly(tmp_path: Path, new_storage: str) -> None:
    write_sweep(tmp_path, name="budget", data=TINY_DATA, budget={"n_trials": 3})
    workers = [start_worker(tmp_path, new_storage) for _ in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, out + err
    study = optuna.load_study(study_name="budget", storage=open_storage(new_storage))
    states = Counter(trial.state.name for trial in study.trials)
    assert states == {"COMPLETE": 3}, states
    points = [tuple(sorted(trial.params.items())) for trial in study.trials]
    assert len(set(points)) == len(points)
    assert optuna.get_all_study_names(storage=open_storage(new_storage)) == ["budget"], "no lock study left behind"


@pytest.mark.integration
@pytest.mark.slow  # a chaos test, as test_scale_out's: `make test-slow`
def test_a_killed_worker_s_trial_is_reaped_and_retried(tmp_path: Path, new_storage: str) -> None:
    write_sweep(
        tmp_path,
        name="killed",
        data={**SMALL_SWEEP["data"], "max_train_blocks": 96},
        train={**SMALL_SWEEP["train"], "num_train_epochs": 4},
        budget={"n_trials": 1},
        storage={"heartbeat_interval": 1, "grace_period": 3},
    )
    first = start_worker(tmp_path, new_storage)
    progress = tmp_path / ".ftlab" / "trials" / "killed" / "trial-000" / "progress.json"
    deadline = time.monotonic() + 180
    while not progress.exists():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.2)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(4)  # past the grace period

    second = start_worker(tmp_path, new_storage)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, out + err
    trials = optuna.load_study(study_name="killed", storage=open_storage(new_storage)).trials
    assert [trial.state.name for trial in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].system_attrs.get("failed_trial") == 0 and trials[1].params == trials[0].params
