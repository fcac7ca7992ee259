"""Stores and folders that fail, as a user meets them on the command line: one exit-2 line naming the path, what is
wrong and the fix, nothing half made; a folder that turns read-only during the sweep fails its trial for a retry and
leaves no run RUNNING. Read-only and unreadable are made real for root (a read-only mount, an unprivileged user)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest

from ftlab.demo import load_sweep_with_assets
from tests.helpers import SMALL_SWEEP, run_ftlab, runs_of, write_sweep
from tests.support.readonly import read_only_folder


def _demo_text(tmp_path: Path, size: int = 200_000) -> str:
    files = load_sweep_with_assets(write_sweep(tmp_path)).data.train_files  # the demo text, as a local path
    assert files is not None
    return Path(files[0]).read_text()[:size]


@contextmanager
def _shared_folder() -> Iterator[Path]:
    """A folder outside pytest's (which only root may enter), open to every user, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="ftlab-shared-", dir="/tmp"))
    try:
        folder.chmod(0o777)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _as_nobody(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run ftlab as an unprivileged user")
    env = {
        **os.environ,
        "HOME": str(cwd),
        "FTLAB_HOME": str(cwd / "home"),
        "HF_HOME": str(cwd / "hf"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m", "ftlab.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.integration
def test_a_data_file_this_user_cannot_read_is_named(tmp_path: Path) -> None:
    model = load_sweep_with_assets(write_sweep(tmp_path)).model.name_or_path
    with _shared_folder() as shared:
        shutil.copytree(model, shared / "model")
        for path in [shared / "model", *(shared / "model").iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        text = shared / "text.txt"
        text.write_text(_demo_text(tmp_path))
        text.chmod(0o600)  # root's own: nobody may read it
        data = {**SMALL_SWEEP["data"], "train_files": ["text.txt"], "cache_dir": "cache"}
        sweep = write_sweep(shared, model={"name_or_path": str(shared / "model")}, data=data)
        sweep.chmod(0o644)
        result = _as_nobody(["validate", str(sweep)], shared)
        assert result.returncode == 2, result.stderr
        assert "cannot read the file" in result.stderr and "Permission denied" in result.stderr, result.stderr
        assert "data.train_files[0]" in result.stderr and "Traceback" not in result.stderr
        assert not (shared / "mlruns").exists() and not list((shared / "cache").glob("*"))


@pytest.mark.integration
def test_a_file_size_limit_while_preparing_the_data_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text(_demo_text(tmp_path))
    data = {**SMALL_SWEEP["data"], "train_files": ["text.txt"], "cache_dir": "cache"}
    sweep = write_sweep(tmp_path, data=data)
    limit = 20_000  # below one split's Arrow file

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [sys.executable, "-m", "ftlab.cli", "validate", str(sweep)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=limited,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot write the prepared data: file too large" in result.stderr, result.stderr
    assert "ulimit -f" in result.stderr and "data.cache_dir" in result.stderr and "Traceback" not in result.stderr
    leftovers = [path.name for path in (tmp_path / "cache").iterdir() if not path.name.endswith(".lock")]
    assert leftovers == [], "no half-prepared cache entry is left"


@pytest.mark.slow
def test_a_trials_folder_turned_read_only_fails_the_trial_for_a_retry_and_ends_every_run(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, budget={"n_trials": 1})
    # The trials' root stays writable (the preflight passes); the sweep's own folder in it is read-only, as if it
    # turned so after the sweep started.
    with read_only_folder(tmp_path / ".ftlab" / "trials" / "small"):
        env = {**os.environ}
        env.pop("MLFLOW_TRACKING_URI", None)
        result = subprocess.run(
            [sys.executable, "-m", "ftlab.cli", "sweep", str(sweep)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 1, result.stderr
    assert "cannot make the trial's folder" in result.stderr and "read-only" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    assert [trial.state.name for trial in study.trials] == ["FAIL", "WAITING"]
    statuses = {run.info.run_name: run.info.status for run in runs_of(tmp_path, "small")}
    assert statuses == {"small-sweep": "KILLED", "trial-000-baseline": "KILLED"}, statuses


@pytest.mark.slow
def test_a_report_folder_that_cannot_be_written_ends_the_parent_run_failed(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, budget={"n_trials": 1}, search={"learning_rate": {"factor": [0.3, 3]}})
    with read_only_folder(tmp_path / ".ftlab" / "reports"):
        result = run_ftlab("sweep", str(sweep), cwd=tmp_path)
        # `ftlab report` (what the message offers) meets the same folder: one line too.
        report = run_ftlab("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 2 and "read-only" in report.stderr, report.stderr
    assert "Traceback" not in report.stderr
    assert result.returncode == 2, result.stderr
    assert "the sweep's report could not be written" in result.stderr and "Traceback" not in result.stderr
    statuses = {run.info.run_name: run.info.status for run in runs_of(tmp_path, "small")}
    assert statuses == {"small-sweep": "FAILED", "trial-000-baseline": "FINISHED"}, statuses
