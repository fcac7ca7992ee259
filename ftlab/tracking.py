"""MLflow tracking with explicit run ids.

Every call names its run: the sweep runs many trials, nested under a parent run, in several processes, and MLflow's
fluent API keeps one hidden "active run" per thread that would cross them. Metrics are sent asynchronously so
logging never stalls a training step.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.async_logging.run_operations import RunOperations
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ftlab.training.callbacks import TrainingCallback, TrainPlan

logger = logging.getLogger(__name__)

DEFAULT_STORE_DIR = "mlruns"
_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length
_BATCH_LIMIT = 100  # MLflow's limit on params per log_batch call


def default_tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in ``./mlruns`` (MLflow's file store is retired)."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    store = (root or Path.cwd()) / DEFAULT_STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def redact_url(url: str) -> str:
    """Hide the password in ``scheme://user:password@host/...`` URLs, for anything a person or a log will read."""
    return re.sub(r"(?<=://)([^:/@]+):[^@/]*@", r"\1:***@", url)


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``dotted.key -> str`` params; lists and None become their text form."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_PARAM_VALUE_LIMIT]
    return flat


def _local_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go beside it; a server decides for itself."""
    if tracking_uri.startswith("sqlite:///"):
        return str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts")
    return None


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created on first use; safe when several workers race to create it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_local_artifact_root(client.tracking_uri))
    except Exception:  # another worker created it between our two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# MLflow's async logging thread otherwise polls its queue with a 1 s timeout, and ending a run waits for that poll:
# a second lost per trial. With buffering it sleeps on an event that ending the run sets, and sends what accumulated
# as one batch. 5 s rather than 1 s: each write to a SQLite store costs CPU that training on a small machine misses
# (benchmarks/trial_cpu on 2 cores: CPU overhead of tracking 6 % at 1 s, 1.4 % at 5 s); the UI lags by at most 5 s,
# and ending a run still sends everything at once. A user's own setting wins.
_ASYNC_BUFFERING = ("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "5")


class RunTracker:
    """One MLflow run, addressed by id in every call."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        os.environ.setdefault(*_ASYNC_BUFFERING)
        self.client = client
        self.run_id = run_id
        self._pending: list[RunOperations] = []

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> RunTracker:
        """Create a new run (nested under ``parent_run_id`` if given) and return its tracker."""
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = get_or_create_experiment(client, experiment)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id)

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[start : start + _BATCH_LIMIT])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics for sending in the background; training does not wait for the server."""
        timestamp = int(time.time() * 1000)
        batch = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        operation = self.client.log_batch(self.run_id, metrics=batch, synchronous=False)
        if operation is not None:
            self._pending.append(operation)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_file), artifact_path)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Close the run with ``status`` (FINISHED, KILLED or FAILED) once every queued metric is stored.

        ``set_terminated`` drains MLflow's queue and waits for it before it writes the status; waiting on each
        operation first would wait for the next buffering tick as well. A metric that could not be sent raises here.
        """
        if reason:
            self.set_tags({"ftlab.end_reason": reason[:5000]})
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))
        self.flush()

    def flush(self) -> None:
        """Wait until every queued metric reached the store."""
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()


class MlflowCallback(TrainingCallback):
    """Sends the loop's metrics to one run; x-axis is the optimizer step, ``train/tokens_seen`` rides along."""

    def __init__(self, tracker: RunTracker) -> None:
        self.tracker = tracker

    def on_train_begin(self, plan: TrainPlan) -> None:
        self.tracker.log_params(
            {
                "plan.total_steps": str(plan.total_steps),
                "plan.warmup_steps": str(plan.warmup_steps),
                "plan.tokens_per_step": str(plan.tokens_per_step),
                "plan.total_tokens": str(plan.total_tokens),
                "plan.train_blocks": str(plan.train_blocks),
                "plan.validation_blocks": str(plan.validation_blocks),
            }
        )
        self.tracker.set_tags({"device": plan.device, "bf16": str(plan.bf16)})
        if plan.start_step:
            self.tracker.set_tags({"ftlab.resumed_from_step": str(plan.start_step)})

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step)

    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics({**metrics, "train/tokens_seen": float(tokens_seen)}, step)
