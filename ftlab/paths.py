"""Every folder ftlab uses by default, in one place.

Three roots:

- ``ftlab_home()``: per-user assets that outlive any project (the offline demo model and text);
  ``$FTLAB_HOME``, else ``~/.cache/ftlab``.
- ``STORE_DIR`` (``./mlruns``): what a local sweep records, the Optuna study (``optuna.db``) beside MLflow's store
  (``mlflow.db``, ``artifacts/``), so that one folder holds every result.
- ``WORK_DIR`` (``./.ftlab``): what can be rebuilt: the data cache, the trials' folders, the reports.

Nothing here creates a folder: whoever writes into one creates it, so commands that only read leave nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

STORE_DIR = Path("mlruns")
WORK_DIR = Path(".ftlab")
DATA_CACHE_DIR = WORK_DIR / "cache" / "data"
TRIALS_DIR = WORK_DIR / "trials"
REPORTS_DIR = WORK_DIR / "reports"

STUDY_DB = "optuna.db"
MLFLOW_DB = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
CHECKPOINT_FILE = "checkpoint.pt"  # the resumable training state inside a trial's folder
SHARDED_CHECKPOINT_DIR = "checkpoint"  # the same for a trial of several processes: one shard per process


def ftlab_home() -> Path:
    """ftlab's per-user folder for assets: ``$FTLAB_HOME`` if set, else ``~/.cache/ftlab``."""
    home = os.environ.get("FTLAB_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "ftlab"


def demo_dir() -> Path:
    """The folder that holds the offline demo assets."""
    return ftlab_home() / "demo"


def store_dir(root: Path | None = None) -> Path:
    """The local store folder (``./mlruns``) under ``root`` (the current folder when unset), as an absolute path."""
    return (root or Path.cwd()) / STORE_DIR


def default_storage_url(root: Path | None = None) -> str:
    """The Optuna storage of a local sweep: SQLite in ``./mlruns/optuna.db``."""
    return f"sqlite:///{store_dir(root) / STUDY_DB}"


def default_tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite in ``./mlruns/mlflow.db`` (MLflow's file store is retired)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_dir(root) / MLFLOW_DB}"


def trial_dir(output_dir: str | Path, sweep_name: str, number: int) -> Path:
    """A sweep trial's folder: progress, result, checkpoint, models. A retry resumes from its predecessor's folder,
    so workers on several machines resume only where ``output_dir`` is on shared storage."""
    return Path(output_dir) / sweep_name / f"trial-{number:03d}"


def report_dir(sweep_name: str) -> Path:
    """Where a sweep's report (plots, comparison) is written before it is logged to the parent run."""
    return REPORTS_DIR / sweep_name
