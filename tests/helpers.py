"""Helpers for tests that run the real ``ftlab`` CLI on the tiny demo model. The small sweep file lives in
:mod:`tests.support.sweeps`, which the benchmarks share; it is re-exported here for the tests."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from tests.support.sweeps import SMALL_SWEEP as SMALL_SWEEP  # re-exported for the tests
from tests.support.sweeps import write_sweep as write_sweep


def run_ftlab(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the installed CLI's module in a subprocess, as a user would, without a terminal (plain output)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "ftlab.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def local_client(folder: Path) -> MlflowClient:
    """The MLflow client of the default store ``folder/mlruns``."""
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")


def runs_of(folder: Path, experiment: str) -> list[Any]:
    client = local_client(folder)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], max_results=1000)


@contextlib.contextmanager
def environment(changes: dict[str, str] | None) -> Iterator[None]:
    """``os.environ`` with ``changes`` (and without MLFLOW_TRACKING_URI, as ``run_ftlab`` does) for a block."""
    saved = dict(os.environ)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(changes or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def sweep_in_process(folder: Path, *, env: dict[str, str] | None = None, **options: Any) -> Any:
    """``ftlab sweep folder/sweep.yaml`` as the library call the CLI makes (``run_sweep``), in this process;
    ``options`` are :class:`~ftlab.sweep.options.SweepOptions` fields.

    Trials still run in processes of their own, forked from the trials' fork server; in this process that server
    (torch and transformers imported) starts once for the whole test session instead of once per sweep. Each trial
    takes this folder and environment with it, as from a worker.
    """
    from ftlab.sweep.orchestrate import run_sweep

    return _in_process(run_sweep, folder, env, options)


def confirm_in_process(folder: Path, *, env: dict[str, str] | None = None, **arguments: Any) -> Any:
    """``ftlab confirm folder/sweep.yaml`` as the library call the CLI makes (``run_confirm``), in this process (as
    :func:`sweep_in_process`); ``arguments`` are :class:`~ftlab.sweep.options.SweepOptions` fields and
    ``run_confirm``'s own keywords (``top``, ``seeds``, ``configurations``...)."""
    from ftlab.sweep.orchestrate import run_confirm

    return _in_process(run_confirm, folder, env, arguments)


def _in_process(command: Any, folder: Path, env: dict[str, str] | None, arguments: dict[str, Any]) -> Any:
    from rich.console import Console

    from ftlab.console import quiet_libraries
    from ftlab.sweep.forkserver import trial_process_context
    from ftlab.sweep.options import SweepOptions

    fields = {field.name for field in dataclasses.fields(SweepOptions)}
    options = SweepOptions(
        console=Console(file=io.StringIO()), live=False, **{k: v for k, v in arguments.items() if k in fields}
    )
    quiet_libraries()
    # Start the fork server (once per session) before changing the environment: it keeps the environment it starts
    # with, and test_distributed's ranks, forked from it, would inherit one test's fault injection.
    trial_process_context()
    with contextlib.chdir(folder), environment(env):
        return command(folder / "sweep.yaml", options, **{k: v for k, v in arguments.items() if k not in fields})
