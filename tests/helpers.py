"""Helpers for tests that run the real ``ftlab`` CLI on the tiny demo model."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient

# A sweep small enough for a few seconds per trial on two cores: the demo model on a slice of the demo text.
SMALL_SWEEP: dict[str, Any] = {
    "name": "small",
    "model": {"name_or_path": "demo://tiny-gpt2"},
    "data": {
        "train_files": ["demo://pydoc-topics.txt"],
        "block_size": 64,
        "validation_fraction": 0.1,
        "max_train_blocks": 256,
        "max_eval_blocks": 16,
    },
    "baseline": {
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "gradient_accumulation_steps": 2,
        "warmup_ratio": 0.1,
    },
    "train": {"num_train_epochs": 1, "eval_tokens": 4096, "logging_steps": 4, "seed": 7},
    "search": {
        "learning_rate": {"factor": [0.3, 3]},
        "total_train_batch_size": {"choices": [8, 16]},
    },
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "budget": {"n_trials": 3},
}


def write_sweep(folder: Path, **changes: Any) -> Path:
    """SMALL_SWEEP with top-level keys replaced (a None value removes the key), as ``folder/sweep.yaml``."""
    sweep = copy.deepcopy(SMALL_SWEEP)
    for key, value in changes.items():
        if value is None:
            sweep.pop(key, None)
        else:
            sweep[key] = value
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


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
    """``ftlab sweep folder/sweep.yaml`` as the library call the CLI makes (``run_sweep``), in this process.

    Trials still run in processes of their own, forked from the trials' fork server; in this process that server
    (torch and transformers imported) starts once for the whole test session instead of once per sweep. Each trial
    takes this folder and environment with it, as from a worker.
    """
    from ftlab.sweep.orchestrate import run_sweep

    return _in_process(run_sweep, folder, env, options)


def confirm_in_process(folder: Path, *, env: dict[str, str] | None = None, **options: Any) -> Any:
    """``ftlab confirm folder/sweep.yaml`` as the library call the CLI makes (``run_confirm``), in this process (as
    :func:`sweep_in_process`)."""
    from ftlab.sweep.orchestrate import run_confirm

    return _in_process(run_confirm, folder, env, options)


def _in_process(command: Any, folder: Path, env: dict[str, str] | None, options: dict[str, Any]) -> Any:
    from rich.console import Console

    from ftlab.console import quiet_libraries

    quiet_libraries()
    with contextlib.chdir(folder), environment(env):
        return command(folder / "sweep.yaml", console=Console(file=io.StringIO()), live=False, **options)
