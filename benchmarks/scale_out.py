"""Many workers on one study, measured: W ``ftlab worker`` processes × T trials against a real PostgreSQL and a real
``mlflow server``, with trials that barely train (the tiny demo model, one or two optimizer steps), so that what a
trial costs is mostly coordination. Then the same harness under chaos.

Run from the repo root (on two cores: about 3 minutes for the default plan, 11 for the issue's full size):

    python -m benchmarks.scale_out                                      # load: W = 1, 4, 8 × T = 24, on PostgreSQL
    python -m benchmarks.scale_out --workers 1,16 --trials 200          # the issue's full size
    python -m benchmarks.scale_out --workers 4 --trials 16 --chaos pg_restart,sigkill --pg-cluster "15 bench"
    python -m benchmarks.scale_out --workers 4 --trials 16 --chaos-only --chaos disk_full    # as root: mounts a tmpfs
    python -m benchmarks.scale_out --workers 1,4 --storage-kinds postgresql,grpc,journal

PostgreSQL: ``--postgres`` (default ``FTLAB_TEST_POSTGRES``, else ``postgresql://postgres@127.0.0.1:5432``); each case
gets a fresh database for its study, and one MLflow server on a database of its own serves every case (the services
of ``tests/support/services.py``, reused). ``pg_restart`` restarts the whole server with ``pg_ctlcluster --pg-cluster
restart``: give it a cluster of its own (``pg_createcluster 15 bench --port 5433 --start -- --auth-host=trust``), not
one that other work uses.

Checked for every case, as a list of failed checks (empty when all hold): every worker exited 0 (one that chaos set
up to fail, the full-disk worker: with exit 1 and its log naming the fault); the study has exactly
T COMPLETE trials; no trial is RUNNING or WAITING; no MLflow run is RUNNING; no parameter point ran twice unless the
later one is a recorded retry (Optuna's ``failed_trial`` system attribute); one child run per trial, and none
without a trial.

Measured, per COMPLETE trial, from probes this script installs around ftlab's functions (in the worker process, and
in the trials' fork server, so in every trial process): the coordination time, i.e. the seconds a trial costs
outside training and outside the model and data setup, split into

- worker side: ``next_trial`` (the study lock's wait, reaping dead workers' trials, reading the trials for the budget,
  ``ask`` and its first heartbeat), ``prepare`` (sampling the parameters), ``mlflow_create_run``, every ``heartbeat``
  while the trial runs, ``tell``, and ``show`` (the run's outcome tags and the sweep's best, under the study lock);
- trial side: ``load_study``, pruning ``report`` / ``should_prune``, MLflow ``log_params`` / ``set_tags`` /
  ``log_metrics`` (queueing) / ``end`` (which waits for the queue), and the system-metrics monitor's start and end.

Besides: the trial process's wall time minus its training seconds (fork, model and data setup, all of the trial side);
the workers' idle polls (budget reached by running trials: they wait); the peak number of database connections to the
study's and to MLflow's database (``pg_stat_activity``, polled every 0.2 s); wall time and trials per minute. The
reference is W = 1 measured in the same run: ``coordination_ratio_vs_w1`` is the mean coordination per trial at W
divided by that at W = 1.

Prints one JSON line on stdout (progress on stderr), writes it to ``benchmarks/results/scale_out.json`` (or
``--output``), and to ``$OUT`` when set.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME = "scale_out"
REPO_ROOT = Path(__file__).resolve().parent.parent
PROBE_ENV = "FTLAB_BENCH_PROBE_DIR"  # set in workers: where every probed process appends its timings
WORKER_FLAG = "--as-worker"

# What counts as coordination (see the module docstring); everything else a probe records is a breakdown.
WORKER_COORDINATION = ("next_trial", "prepare", "mlflow_create_run", "heartbeat", "tell", "show")
TRIAL_COORDINATION = (
    "t_load_study",
    "t_report",
    "t_should_prune",
    "t_mlflow_params",
    "t_mlflow_tags",
    "t_mlflow_metrics",
    "t_mlflow_end",
    "t_system_metrics",
)


# --- probes: installed in the worker and in the trials' fork server -------------------------------------------------

_current_trial: dict[str, int | None] = {"id": None}


def _emit(op: str, seconds: float, trial_id: int | None = None, **extra: Any) -> None:
    """Append one timing to this process's file (opened per line: a SIGKILLed process loses nothing written)."""
    folder = os.environ.get(PROBE_ENV)
    if not folder:
        return
    trial = trial_id if trial_id is not None else _current_trial["id"]
    line = json.dumps({"pid": os.getpid(), "op": op, "s": seconds, "trial": trial, "t": time.time(), **extra})
    with open(Path(folder) / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as out:
        out.write(line + "\n")


def _timed(owner: Any, attr: str, op: str, trial_arg: int | None = None) -> None:
    """Replace ``owner.attr`` by a wrapper that times each call as ``op``; ``trial_arg``: the positional argument
    that holds the trial's id, if any."""
    original = getattr(owner, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            trial = args[trial_arg] if trial_arg is not None and len(args) > trial_arg else None
            _emit(op, time.perf_counter() - started, trial if isinstance(trial, int) else None)

    setattr(owner, attr, wrapper)


def _install_lock_probe() -> None:
    from ftlab.storage import StudyLock

    original = StudyLock.held

    @contextlib.contextmanager
    def held(self: Any) -> Iterator[None]:
        prefix = "" if self.purpose == "study" else f"{self.purpose}_"  # the study lock, or the best trial's
        started = time.perf_counter()
        with original(self):
            acquired = time.perf_counter()
            _emit(f"{prefix}lock_wait", acquired - started)
            try:
                yield
            finally:
                _emit(f"{prefix}lock_hold", time.perf_counter() - acquired)

    StudyLock.held = held  # type: ignore[method-assign]


def _install_scheduler_probes() -> None:
    from ftlab.sweep import scheduler
    from ftlab.sweep.launcher import TrialLauncher
    from ftlab.sweep.process import TrialProcess

    next_trial = scheduler.Scheduler._next_trial

    def timed_next_trial(self: Any, budget: Any) -> Any:
        started = time.perf_counter()
        decision, trial_id = next_trial(self, budget)
        _current_trial["id"] = trial_id if trial_id is not None else _current_trial["id"]
        if trial_id is None:  # the budget is reached by running trials, or spent: an idle poll, no trial's
            _emit(f"poll_{decision.value}", time.perf_counter() - started, -1)
        else:
            _emit("next_trial", time.perf_counter() - started, trial_id)
        return decision, trial_id

    run_process = TrialProcess.run

    def timed_run(self: Any) -> Any:
        started = time.perf_counter()
        record, exitcode = run_process(self)
        _emit("trial_process", time.perf_counter() - started, self.job.trial_id)
        if record is not None and record.seconds is not None:
            _emit("training", float(record.seconds), self.job.trial_id)
        return record, exitcode

    run_sweep = scheduler.Scheduler.run

    def run_reporting_errors(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            run_sweep(self, *args, **kwargs)
        except BaseException as error:  # what ended the worker, with its whole chain, for the case's log
            _emit("worker_error", 0.0, -1, error="".join(traceback.format_exception(error))[-6000:])
            raise

    scheduler.Scheduler.run = run_reporting_errors  # type: ignore[method-assign]
    scheduler.Scheduler._next_trial = timed_next_trial  # type: ignore[method-assign]
    TrialProcess.run = timed_run  # type: ignore[method-assign]
    _timed(TrialLauncher, "_prepare", "prepare", trial_arg=1)
    _timed(TrialLauncher, "_show", "show")
    _timed(scheduler, "reap", "reap")


def install_worker_probes() -> None:
    """Time the worker's side of every trial (see the module docstring)."""
    import optuna

    from ftlab.sweep import compat
    from ftlab.sweep import study as studies
    from ftlab.tracking import TrackedRun

    _install_lock_probe()
    _install_scheduler_probes()
    _timed(compat, "record_heartbeat", "heartbeat", trial_arg=1)
    _timed(studies, "ask", "ask")
    _timed(studies, "tell", "tell", trial_arg=1)
    _timed(optuna.Study, "get_trials", "get_trials")
    original_start = TrackedRun.start.__func__  # type: ignore[attr-defined]

    def start(cls: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original_start(cls, *args, **kwargs)
        finally:
            _emit("mlflow_create_run", time.perf_counter() - started)

    TrackedRun.start = classmethod(start)  # type: ignore[method-assign, assignment]


def install_trial_probes() -> None:
    """Time the trial process's coordination; runs in the fork server, so every trial process inherits it."""
    import optuna

    from ftlab.sweep import compat, trial_process
    from ftlab.tracking import TrackedRun

    if getattr(trial_process, "_bench_probed", False):
        return  # multiprocessing imports this module again in each trial process, as __mp_main__
    trial_process._bench_probed = True  # type: ignore[attr-defined]
    run_job = trial_process.run_trial_job

    def timed_run_job(job: Any) -> None:
        _current_trial["id"] = job.trial_id
        run_job(job)

    trial_process.run_trial_job = timed_run_job
    _timed(optuna, "load_study", "t_load_study")
    _timed(optuna.Trial, "report", "t_report")
    _timed(optuna.Trial, "should_prune", "t_should_prune")
    for attr, op in (("log_params", "t_mlflow_params"), ("set_tags", "t_mlflow_tags"),
                     ("log_metrics", "t_mlflow_metrics"), ("end", "t_mlflow_end")):  # fmt: skip
        _timed(TrackedRun, attr, op)
    original_monitor = compat.system_metrics

    @contextlib.contextmanager
    def system_metrics(run_id: str, tracking_uri: str) -> Iterator[None]:
        # Only its start and its end are coordination; the monitor samples in a thread of its own meanwhile.
        monitor = original_monitor(run_id, tracking_uri)
        started = time.perf_counter()
        monitor.__enter__()
        entering = time.perf_counter() - started
        try:
            yield
        finally:
            ending = time.perf_counter()
            monitor.__exit__(None, None, None)
            _emit("t_system_metrics", entering + time.perf_counter() - ending)

    compat.system_metrics = system_metrics  # type: ignore[assignment]


def run_probed_worker(cli_args: list[str]) -> None:
    """``ftlab CLI_ARGS`` with the probes installed, here and (through its preload list) in the fork server."""
    install_worker_probes()
    from ftlab.sweep import forkserver

    forkserver.PRELOAD.append(__spec__.name if __spec__ else "benchmarks.scale_out")
    sys.argv = ["ftlab", *cli_args]
    from ftlab.cli import main

    main()


if __name__ != "__main__" and os.environ.get(PROBE_ENV):
    install_trial_probes()  # imported by the fork server's preload, in a probed worker only


# --- one case: W workers × T trials, maybe with chaos ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    workers: int
    trials: int
    storage_kind: str = "postgresql"  # postgresql, grpc (Optuna's proxy in front of PostgreSQL), journal (a file)
    chaos: str = "none"
    repeat: int = 0  # a chaos case run again (--chaos-repeat): a study and folder of its own

    @property
    def label(self) -> str:
        again = f"-{self.repeat + 1}" if self.repeat else ""
        return f"{self.storage_kind}-w{self.workers}-t{self.trials}-{self.chaos}{again}"

    @property
    def study(self) -> str:
        return f"bench-{self.label}"


@dataclass
class Services:
    postgres: str  # the server, no database
    tracking_uri: str
    mlflow: Any  # tests.support.services.MlflowServer
    mlflow_database: str
    pg_cluster: str | None


# Trials that barely train: 16 blocks of 64 tokens at an effective batch of 8 or 16 are one or two optimizer steps,
# and one evaluation of 4 blocks.
BENCH_DATA = {"max_train_blocks": 16, "max_eval_blocks": 4}
CHAOS_STORAGE = {"heartbeat_interval": 1, "grace_period": 5}  # reaping within seconds, so chaos costs seconds


def write_case_sweep(folder: Path, case: Case) -> Path:
    from tests.support.sweeps import SMALL_SWEEP, write_sweep

    folder.mkdir(parents=True, exist_ok=True)
    storage = CHAOS_STORAGE if case.chaos != "none" else {"heartbeat_interval": 2, "grace_period": 20}
    return write_sweep(
        folder,
        name=case.study,
        data={**SMALL_SWEEP["data"], **BENCH_DATA},
        train={**SMALL_SWEEP["train"], "eval_tokens": 256, "logging_steps": 1},
        budget={"n_trials": case.trials, "max_failures_in_a_row": 50},
        storage=storage,
    )


class ConnectionPoller:
    """Counts the connections to the study's and MLflow's databases every ``interval`` s; keeps the peaks."""

    def __init__(self, server: str, databases: dict[str, str], interval: float = 0.2) -> None:
        import sqlalchemy

        self._engine = sqlalchemy.create_engine(
            f"{server}/postgres", poolclass=sqlalchemy.NullPool, connect_args={"connect_timeout": 2}
        )
        self._query = sqlalchemy.text("SELECT datname, count(*) FROM pg_stat_activity GROUP BY datname")
        self.databases = databases  # label → database name
        self.peaks: dict[str, int] = dict.fromkeys(databases, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:  # the server may be restarting (chaos): skip the sample
                with self._engine.connect() as connection:
                    counts = dict(connection.execute(self._query).all())
            except Exception:
                continue
            self.samples += 1
            for label, database in self.databases.items():
                self.peaks[label] = max(self.peaks[label], int(counts.get(database, 0)))

    def __enter__(self) -> ConnectionPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()


@dataclass
class Fleet:
    """The workers of one case; chaos may kill some, and starts a replacement for each (as a scheduler would)."""

    folder: Path
    command: list[str]
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)  # of every worker that chaos did not kill
    killed_pids: set[int] = field(default_factory=set)
    # Workers that chaos set up to fail (a full disk): pid → (the exit code expected, text its log must hold).
    expected_failures: dict[int, tuple[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # expected failures that did not come as expected

    def start(self, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = self.log_of(len(self.processes)).open("wb")
        process = subprocess.Popen(
            self.command, cwd=cwd or self.folder, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,  # its own group: chaos can pause it with its trials
        )  # fmt: skip
        self.processes.append(process)
        return process

    def log_of(self, index: int) -> Path:
        return self.folder / f"worker-{index}.log"

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [process for process in self.processes if process.poll() is None]

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker process alone (its machine is gone); its trial process notices and dies too."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.killed_pids.add(process.pid)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        for process in self.alive():  # ran out of time: the case fails its checks (exit -9)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.exits = [
            process.returncode
            for process in self.processes
            if process.pid not in self.killed_pids and process.pid not in self.expected_failures
        ]
        for index, process in enumerate(self.processes):
            if process.pid in self.expected_failures:
                code, text = self.expected_failures[process.pid]
                log = self.log_of(index).read_text(encoding="utf-8", errors="replace")
                if process.returncode != code or text not in log:
                    self.problems.append(f"worker {index} exited {process.returncode} (expected {code} and {text!r})")


@functools.cache
def _reader(storage_url: str) -> Any:
    """One storage for the harness's reads. On PostgreSQL without a pool: it must not hold a connection that the
    peak count would take for a worker's."""
    import sqlalchemy
    from optuna.storages import RDBStorage

    from ftlab.storage import open_storage

    if storage_url.startswith("postgresql"):
        return RDBStorage(storage_url, engine_kwargs={"poolclass": sqlalchemy.NullPool})
    return open_storage(storage_url)


def complete_count(storage_url: str, study: str) -> int:
    """COMPLETE trials so far (0 while the study does not exist or the storage does not answer)."""
    try:
        storage = _reader(storage_url)
        study_id = storage.get_study_id_from_name(study)
        return sum(trial.state.name == "COMPLETE" for trial in storage.get_all_trials(study_id, deepcopy=False))
    except Exception:
        return 0


def wait_for_complete(storage_url: str, study: str, at_least: int, fleet: Fleet, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while complete_count(storage_url, study) < at_least and fleet.alive() and time.monotonic() < deadline:
        time.sleep(0.5)


def _log(message: str) -> None:
    print(f"[{NAME} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- chaos ------------------------------------------------------------------------------------------------------------


def chaos_pg_restart(case: Case, services: Services, fleet: Fleet, storage_url: str, events: list[str]) -> None:
    if not services.pg_cluster:
        raise SystemExit("--chaos pg_restart needs --pg-cluster (e.g. '15 bench'), a cluster no other work uses")
    wait_for_complete(storage_url, case.study, max(1, case.trials // 4), fleet)
    started = time.monotonic()
    subprocess.run(["pg_ctlcluster", *services.pg_cluster.split(), "restart"], check=True, capture_output=True)
    events.append(f"PostgreSQL restarted at {complete_count(storage_url, case.study)} COMPLETE trials, "
                  f"{time.monotonic() - started:.1f} s down")  # fmt: skip


def chaos_mlflow_restart(case: Case, services: Services, fleet: Fleet, storage_url: str, events: list[str]) -> None:
    wait_for_complete(storage_url, case.study, max(1, case.trials // 4), fleet)
    started = time.monotonic()
    services.mlflow.stop()
    time.sleep(5)
    services.mlflow.start()
    events.append(f"MLflow server down for {time.monotonic() - started:.1f} s")


def chaos_sigkill(case: Case, services: Services, fleet: Fleet, storage_url: str, events: list[str]) -> None:
    """A random worker SIGKILLed every 8 s, and a replacement started, until 3/4 of the budget is COMPLETE."""
    rng = random.Random(0)
    wait_for_complete(storage_url, case.study, 1, fleet)
    while complete_count(storage_url, case.study) < case.trials * 3 // 4 and fleet.alive():
        time.sleep(8)
        alive = fleet.alive()
        if not alive:
            return
        fleet.kill(rng.choice(alive))
        fleet.start()
        events.append(f"SIGKILL a worker at {complete_count(storage_url, case.study)} COMPLETE; replacement started")


def chaos_sigstop(case: Case, services: Services, fleet: Fleet, storage_url: str, events: list[str]) -> None:
    """One worker (its whole process group: fork server and trial too, as a paused VM) stopped past the grace period."""
    wait_for_complete(storage_url, case.study, max(1, case.trials // 4), fleet)
    paused = fleet.alive()[0]
    os.killpg(paused.pid, signal.SIGSTOP)
    time.sleep(CHAOS_STORAGE["grace_period"] * 3)
    os.killpg(paused.pid, signal.SIGCONT)
    events.append(f"worker stopped for {CHAOS_STORAGE['grace_period'] * 3} s (grace {CHAOS_STORAGE['grace_period']} s)")


FULL_DISK_FREE_MB = 2  # less than a trial's model (3.8 MB): the first trial cannot save it


def chaos_disk_full(case: Case, services: Services, fleet: Fleet, storage_url: str, events: list[str]) -> None:
    """One more worker, started with the others, from a machine whose disk is nearly full: its own folder is a 32 MB
    tmpfs filled up to 2 MB. Its first trial cannot save the model; expected: that worker stops (exit 1) naming the
    disk, the trial is queued for a retry that another worker runs, and the rest of the sweep does not notice."""
    disk = fleet.folder / "full-disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], check=True, capture_output=True)
    try:
        shutil.copy(fleet.folder / "sweep.yaml", disk / "sweep.yaml")
        with (disk / "filler").open("wb") as filler:
            filler.write(b"\0" * (shutil.disk_usage(disk).free - FULL_DISK_FREE_MB * 2**20))
        worker = fleet.start(cwd=disk)
        fleet.expected_failures[worker.pid] = (1, "this machine cannot run trials: trial #")
        started = time.monotonic()
        try:
            worker.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        events.append(f"a worker joined with {FULL_DISK_FREE_MB} MB free; it exited {worker.returncode} after "
                      f"{time.monotonic() - started:.0f} s")  # fmt: skip
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False, capture_output=True)


CHAOS: dict[str, Callable[[Case, Services, Fleet, str, list[str]], None]] = {
    "pg_restart": chaos_pg_restart,
    "mlflow_restart": chaos_mlflow_restart,
    "sigkill": chaos_sigkill,
    "sigstop": chaos_sigstop,
    "disk_full": chaos_disk_full,
}


# --- storages ---------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def case_storage(
    case: Case, services: Services, folder: Path, proxy_pids: list[int]
) -> Iterator[tuple[str, str | None, str | None]]:
    """The ``--storage`` URL for the case; the PostgreSQL database behind it (None for a journal file); and the
    URL for reading the study back afterwards (RDB directly, not through the proxy)."""
    from tests.support.services import grpc_proxy, postgres_database

    if case.storage_kind == "journal":
        url = f"journal:///{folder / 'study.journal'}"
        yield url, None, url
        return
    with postgres_database("ftlab_bench", services.postgres) as database_url:
        if case.storage_kind == "postgresql":
            yield database_url, database_url.rsplit("/", 1)[1], database_url
            return
        with grpc_proxy(database_url, folder, proxy_pids) as proxy_url:
            yield proxy_url, database_url.rsplit("/", 1)[1], database_url


# --- the services' CPU time -------------------------------------------------------------------------------------------


def tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) of a process, its live descendants, and the children it has reaped."""
    import psutil

    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def postmaster_pid(server: str) -> int | None:
    """The PostgreSQL server's main process on this machine (its backends are its children), or None."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{server}/postgres", poolclass=sqlalchemy.NullPool)
    try:
        with engine.connect() as connection:
            data = connection.execute(sqlalchemy.text("SHOW data_directory")).scalar_one()
        return int((Path(data) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, sqlalchemy.exc.SQLAlchemyError):
        return None  # another machine, or no right to read it
    finally:
        engine.dispose()


def services_cpu(services: Services, proxy_pids: list[int]) -> dict[str, float | None]:
    running = services.mlflow._process  # MlflowServer keeps its Popen private
    return {
        "postgres": tree_cpu_s(postmaster_pid(services.postgres)),
        "mlflow_server": tree_cpu_s(running.pid if running else None),
        "grpc_proxy": tree_cpu_s(proxy_pids[0]) if proxy_pids else None,
    }


def cpu_used(before: dict[str, float | None], after: dict[str, float | None], trials: int) -> dict[str, Any]:
    """Each service's CPU seconds over the case, and per trial started (None where not measured)."""
    used = {
        name: round(after[name] - start, 2) if start is not None and after[name] is not None else None
        for name, start in before.items()
    }
    return {"total_s": used, "per_trial_s": {k: round(v / max(1, trials), 4) if v else None for k, v in used.items()}}


# --- checks and figures ----------------------------------------------------------------------------------------------


def read_back(read_url: str, case: Case, tracking_uri: str) -> tuple[list[Any], list[Any]]:
    import optuna
    from mlflow import MlflowClient

    from ftlab.storage import open_storage

    study = optuna.load_study(study_name=case.study, storage=open_storage(read_url))
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(case.study)
    runs = client.search_runs([experiment.experiment_id], max_results=5000) if experiment else []
    return study.trials, runs


def repeated_points(trials: list[Any]) -> list[list[int]]:
    """Groups of trials with the same parameters where a later one is not a recorded retry of an earlier one."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for trial in trials:
        if trial.params:
            groups[json.dumps(trial.params, sort_keys=True)].append(trial)
    repeated = []
    for group in groups.values():
        numbers = {trial.number for trial in group}
        later = sorted(group, key=lambda trial: trial.number)[1:]
        if any(trial.system_attrs.get("failed_trial") not in numbers for trial in later):
            repeated.append(sorted(numbers))
    return repeated


def check(case: Case, trials: list[Any], runs: list[Any], fleet: Fleet) -> tuple[list[str], dict[str, Any]]:
    """The failed checks (empty: all hold) and the counts behind them."""
    states = Counter(trial.state.name for trial in trials)
    children = [run for run in runs if "optuna.trial.number" in run.data.tags]
    trial_runs = [trial.user_attrs.get("mlflow_run_id") for trial in trials if trial.user_attrs.get("mlflow_run_id")]
    counts = {
        "trial_states": dict(states),
        "retries": sum("failed_trial" in trial.system_attrs for trial in trials),
        "child_runs": len(children),
        "run_states": dict(Counter(run.info.status for run in runs)),
        "worker_exit_codes": dict(Counter(str(code) for code in fleet.exits)),
    }
    failed = list(fleet.problems)
    if any(code != 0 for code in fleet.exits):
        failed.append(f"a worker exited non-zero: {counts['worker_exit_codes']}")
    if states["COMPLETE"] != case.trials:
        failed.append(f"budget: {states['COMPLETE']} COMPLETE trials, not {case.trials}")
    if states["RUNNING"] or states["WAITING"]:
        failed.append(f"trials left RUNNING/WAITING: {states['RUNNING']}/{states['WAITING']}")
    if running := [run.info.run_name for run in runs if run.info.status == "RUNNING"]:
        failed.append(f"MLflow runs left RUNNING: {running}")
    if repeated := repeated_points(trials):
        failed.append(f"parameter points run twice without a recorded retry: {repeated}")
    if len(set(trial_runs)) != len(trial_runs) or set(trial_runs) != {run.info.run_id for run in children}:
        failed.append(f"not one child run per trial: {len(set(trial_runs))} trials with runs, {len(children)} runs")
    return failed, counts


def read_probes(folder: Path) -> list[dict[str, Any]]:
    events = []
    for path in folder.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a SIGKILL
                events.append(json.loads(line))
    return events


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 4),
        "p50": round(ordered[len(ordered) // 2], 4),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 4),
        "max": round(ordered[-1], 4),
    }


def coordination(events: list[dict[str, Any]], complete_ids: set[int]) -> dict[str, Any]:
    """Per COMPLETE trial: coordination seconds (worker side, trial side), training, the trial process's overhead;
    and each probed operation's mean seconds per trial, to find what grows."""
    per_trial: dict[int, Counter[str]] = defaultdict(Counter)
    for event in events:
        if event["trial"] in complete_ids:
            per_trial[event["trial"]][event["op"]] += event["s"]
    worker = [sum(ops[op] for op in WORKER_COORDINATION) for ops in per_trial.values()]
    trial = [sum(ops[op] for op in TRIAL_COORDINATION) for ops in per_trial.values()]
    overhead = [ops["trial_process"] - ops["training"] for ops in per_trial.values() if ops["trial_process"]]
    all_ops = sorted({op for ops in per_trial.values() for op in ops})
    n = max(1, len(per_trial))
    polls = Counter(event["op"] for event in events if event["op"].startswith("poll_"))
    return {
        "trials_measured": len(per_trial),
        "coordination_s": _summary([a + b for a, b in zip(worker, trial, strict=True)]),
        "worker_side_s": _summary(worker),
        "trial_side_s": _summary(trial),
        "training_s": _summary([ops["training"] for ops in per_trial.values()]),
        "trial_process_minus_training_s": _summary(overhead),
        "per_op_mean_s": {op: round(sum(ops[op] for ops in per_trial.values()) / n, 4) for op in all_ops},
        "lock_wait_s": _summary([event["s"] for event in events if event["op"] == "lock_wait"]),
        "lock_hold_s": _summary([event["s"] for event in events if event["op"] == "lock_hold"]),
        "best_lock_wait_s": _summary([event["s"] for event in events if event["op"] == "best_lock_wait"]),
        "idle_polls": dict(polls),
    }


# --- running a case --------------------------------------------------------------------------------------------------


def run_case(case: Case, services: Services, work: Path) -> dict[str, Any]:
    from ftlab.sweep import compat

    folder = work / case.label
    write_case_sweep(folder, case)
    probes = folder / "probes"
    probes.mkdir()
    proxy_pids: list[int] = []
    with case_storage(case, services, folder, proxy_pids) as (storage_url, database, read_url):
        env = {**os.environ, PROBE_ENV: str(probes), "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        command = [sys.executable, "-m", "benchmarks.scale_out", WORKER_FLAG, "worker", "sweep.yaml",
                   "--storage", storage_url, "--tracking-uri", services.tracking_uri]  # fmt: skip
        fleet = Fleet(folder, command, env)
        watched = {"mlflow": services.mlflow_database, **({"study": database} if database else {})}
        events: list[str] = []
        _log(f"{case.label}: starting {case.workers} workers")
        started = time.monotonic()
        cpu_before = services_cpu(services, proxy_pids)
        with ConnectionPoller(services.postgres, watched) as poller:
            for _ in range(case.workers):
                fleet.start()
            if case.chaos != "none":
                CHAOS[case.chaos](case, services, fleet, read_url or storage_url, events)
            fleet.wait(timeout=1800)
        wall = time.monotonic() - started
        cpu_after = services_cpu(services, proxy_pids)
        trials, runs = read_back(read_url or storage_url, case, services.tracking_uri)
    failed, counts = check(case, trials, runs, fleet)
    complete_ids = {compat.trial_id_of(trial) for trial in trials if trial.state.name == "COMPLETE"}
    probe_events = read_probes(probes)
    figures = coordination(probe_events, complete_ids)
    worker_errors = [event["error"] for event in probe_events if event["op"] == "worker_error"]
    for error in worker_errors:
        _log(f"{case.label}: a worker failed:\n{error}")
    _log(f"{case.label}: {wall:.0f} s, failed checks: {failed or 'none'}; "
         f"coordination mean {figures['coordination_s'].get('mean')} s")  # fmt: skip
    return {
        "case": case.__dict__ | {"label": case.label},
        "ok": not failed,
        "failed_checks": failed,
        **counts,
        "workers_started": len(fleet.processes),
        "workers_killed": len(fleet.killed_pids),
        "chaos_events": events,
        "worker_errors": [error.strip().splitlines()[-1] for error in worker_errors],
        "wall_s": round(wall, 1),
        "trials_per_minute": round(len(trials) / wall * 60, 2),
        # A restarted PostgreSQL or MLflow server is a new process, whose CPU time starts again: not under chaos.
        "services_cpu": cpu_used(cpu_before, cpu_after, len(trials)) if case.chaos == "none" else None,
        "peak_connections": poller.peaks,
        "connection_samples": poller.samples,
        **figures,
    }


@contextlib.contextmanager
def services_for(postgres: str, pg_cluster: str | None, work: Path) -> Iterator[Services]:
    from tests.support.services import MlflowServer, postgres_database

    with (
        postgres_database("ftlab_bench_mlflow", postgres) as backend,
        MlflowServer(backend, work / "artifacts", log_dir=work) as server,
    ):
        yield Services(postgres, server.uri, server, backend.rsplit("/", 1)[1], pg_cluster)


def ratios(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Coordination per trial and peak study connections at each W, as a ratio of W = 1 on the same storage."""
    reference = {
        result["case"]["storage_kind"]: result
        for result in cases
        if result["case"]["workers"] == 1 and result["case"]["chaos"] == "none"
    }
    out = {}
    for result in cases:
        base = reference.get(result["case"]["storage_kind"])
        if base is None or result["case"]["chaos"] != "none" or not base["coordination_s"]:
            continue
        # On a machine with fewer cores than processes, everything slows down alike, training too: coordination per
        # training second separates what grows with W from what the CPU contention stretches.
        share, base_share = (r["coordination_s"]["mean"] / r["training_s"]["mean"] for r in (result, base))
        out[result["case"]["label"]] = {
            "coordination_ratio_vs_w1": round(result["coordination_s"]["mean"] / base["coordination_s"]["mean"], 2),
            "training_ratio_vs_w1": round(result["training_s"]["mean"] / base["training_s"]["mean"], 2),
            "coordination_per_training_s": round(share, 3),
            "coordination_per_training_s_ratio_vs_w1": round(share / base_share, 2),
            "lock_wait_mean_s": result["lock_wait_s"].get("mean"),
            "peak_study_connections": result["peak_connections"].get("study"),
        }
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    from tests.support.services import POSTGRES_SERVER_URL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,4,8", help="comma-separated W values (default 1,4,8)")
    parser.add_argument("--trials", type=int, default=24, help="T, the budget of COMPLETE trials per case")
    parser.add_argument("--storage-kinds", default="postgresql", help="postgresql, grpc, journal (comma-separated)")
    parser.add_argument("--chaos", default="", help=f"chaos cases at the largest W: {', '.join(CHAOS)}")
    parser.add_argument("--chaos-workers", type=int, default=None, help="W of the chaos cases (default: largest)")
    parser.add_argument("--chaos-only", action="store_true", help="run the chaos cases only")
    parser.add_argument("--chaos-repeat", type=int, default=1, help="run each chaos case this many times")
    parser.add_argument("--postgres", default=POSTGRES_SERVER_URL, help="the PostgreSQL server, no database")
    parser.add_argument("--pg-cluster", default=None, help="'VERSION NAME' for pg_ctlcluster (pg_restart only)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / f"{NAME}.json")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep every case's logs here (default: deleted)")
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> list[Case]:
    widths = [int(value) for value in args.workers.split(",")]
    kinds = [kind for kind in args.storage_kinds.split(",") if kind]
    cases = [] if args.chaos_only else [Case(w, args.trials, kind) for kind in kinds for w in widths]
    chaos_w = args.chaos_workers or max(widths)
    for chaos in filter(None, args.chaos.split(",")):
        if chaos not in CHAOS:
            raise SystemExit(f"--chaos: unknown case {chaos!r}; choose from {', '.join(CHAOS)}")
        cases.extend(Case(chaos_w, args.trials, kinds[0], chaos, repeat) for repeat in range(args.chaos_repeat))
    return cases


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    from benchmarks._common import write_result

    cases = plan(args)
    results = []
    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ftlab-scale-out-")))
        else:
            work = args.work_dir.resolve()
            work.mkdir(parents=True, exist_ok=True)
        with services_for(args.postgres, args.pg_cluster, work) as services:
            for case in cases:
                results.append(run_case(case, services, work))
    result = {
        "benchmark": NAME,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"trials": args.trials, "workers": args.workers, "data": BENCH_DATA, "chaos": CHAOS_STORAGE},
        "all_checks_hold": all(result["ok"] for result in results),
        "vs_w1": ratios(results),
        "cases": results,
    }
    write_result(result, args.output)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        run_probed_worker(sys.argv[2:])
    else:
        main(sys.argv[1:])
