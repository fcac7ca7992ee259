"""MLflow tracking with explicit run ids: one trial's run, the sweep's parent run, and the loop's metrics.

Every call names its run: the sweep runs many trials, nested under a parent run, in several processes, and MLflow's
fluent API keeps one hidden "active run" per thread that would cross them. A run is owned by a context manager that
ends it on purpose, as ``mlflow.start_run`` does: FINISHED when its block completes, KILLED on Ctrl-C, FAILED on any
other error, with the reason in the ``ftlab.end_reason`` tag. Metrics are sent asynchronously so logging never stalls
a training step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.async_logging.run_operations import RunOperations

from ftlab import paths
from ftlab.config import SweepConfig
from ftlab.errors import redact_url
from ftlab.fileio import naming_space_errors
from ftlab.interrupt import as_interrupt
from ftlab.training.callbacks import TrainingCallback, TrainPlan

# MLflow's documented system tags: the parent that nests a run, the description (the UI's "Description"), and the
# "Source" column.
PARENT_RUN_TAG = "mlflow.parentRunId"
DESCRIPTION_TAG = "mlflow.note.content"
SOURCE_TAG = "mlflow.source.name"
END_REASON_TAG = "ftlab.end_reason"
BEST_TAG = "ftlab.best"  # "true" on the best trial's run, "false" on the one it replaced
_PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value's length
_REASON_LIMIT = 5000

# MLflow's async logging thread otherwise polls its queue with a 1 s timeout, and ending a run waits for that poll:
# a second lost per trial. With buffering it sleeps on an event that ending the run sets, and sends what accumulated
# as one batch. 5 s rather than 1 s: each write to a SQLite store costs CPU that training on a small machine misses
# (benchmarks/trial_cpu on 2 cores: CPU overhead of tracking 6 % at 1 s, 1.4 % at 5 s); the UI lags by at most 5 s,
# and ending a run still sends everything at once. A user's own setting wins.
_ASYNC_BUFFERING = ("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "5")


def param_value(value: Any) -> str:
    """A setting as MLflow shows it: floats to 6 significant digits (a sampled learning rate is 0.00106440, not
    0.0010643958537253), everything else as its text."""
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text[:_PARAM_VALUE_LIMIT]


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``dotted.key -> str`` params; lists and None become their text form."""
    flat: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = param_value(value)
    return flat


def tracking_uri_for(sweep: SweepConfig, override: str | None = None) -> str:
    """``--tracking-uri``, else the sweep file's ``tracking.uri``, else ``MLFLOW_TRACKING_URI`` or ``./mlruns``."""
    return override or sweep.tracking.uri or paths.default_tracking_uri()


def tracking_store_files(tracking_uri: str) -> list[Path]:
    """The files on this machine behind an MLflow tracking URI: a SQLite store and its artifacts folder, a ``file:``
    or plain-path store; none for a tracking server."""
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        return [database, database.parent / paths.ARTIFACTS_DIR]
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "file":
        return [Path(parsed.path)]
    if not parsed.scheme or len(parsed.scheme) == 1:  # a plain path (MLflow's file store), or a Windows drive
        return [Path(tracking_uri)]
    return []


def local_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite tracking store, artifacts go beside it; a tracking server decides for itself."""
    return str(tracking_store_files(tracking_uri)[1]) if tracking_uri.startswith("sqlite:///") else None


def _ui_base(tracking_uri: str, ui: str) -> str:
    return (redact_url(tracking_uri) if tracking_uri.startswith(("http://", "https://")) else ui).rstrip("/")


def runs_page(
    tracking_uri: str,
    experiment_id: str,
    ui: str = "http://127.0.0.1:5000",
    order_by_metric: str | None = None,
    ascending: bool = True,
) -> str:
    """The address of an experiment's runs table, sorted by ``order_by_metric`` if given. MLflow 3 opens an experiment
    on its GenAI traces page; the table of runs needs ``workflowType=machine_learning``. ``ui`` is where ``mlflow ui``
    serves a local store."""
    page = f"{_ui_base(tracking_uri, ui)}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if order_by_metric:
        # The runs table reads its sort from these two query parameters (what clicking a column header writes).
        key = quote(f"metrics.`{order_by_metric}`", safe="")
        page += f"&orderByKey={key}&orderByAsc={str(ascending).lower()}"
    return page


def run_page(tracking_uri: str, run_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The address of one run's page (MLflow's ``#/runs/<id>`` finds its experiment itself)."""
    return f"{_ui_base(tracking_uri, ui)}/#/runs/{run_id}"


def experiment_name(sweep: SweepConfig) -> str:
    """The MLflow experiment of a sweep's runs: ``tracking.experiment``, else the sweep's name."""
    return sweep.tracking.experiment or sweep.name


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created on first use; safe when several workers race to create it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=local_artifact_root(client.tracking_uri))
    except Exception:  # another worker created it between our two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def end_run(tracking_uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run that no process of this one owns (a dead worker's trial, a trial process that died)."""
    TrackedRun(MlflowClient(tracking_uri=tracking_uri), run_id).end(status, reason)


Ending = Callable[[BaseException], tuple[str, str] | None]


def _ending_for(error: BaseException) -> tuple[str, str]:
    """How a run ends when its block raises: Ctrl-C is KILLED (whatever it came out as: :mod:`ftlab.interrupt`),
    anything else FAILED, with the reason."""
    if isinstance(as_interrupt(error), KeyboardInterrupt):
        return "KILLED", "stopped by Ctrl-C"
    return "FAILED", f"{type(error).__name__}: {error}"


class TrackedRun:
    """One MLflow run, addressed by id in every call; a context manager that ends it (see the module docstring).

    ``ending`` decides how an error ends the run (status, reason), or None to leave the run as someone else ended it;
    callers that know their own errors (a pruned trial ends KILLED) pass theirs. ``end()`` inside the block ends the
    run early with the caller's choice.
    """

    def __init__(self, client: MlflowClient, run_id: str, ending: Ending = _ending_for) -> None:
        os.environ.setdefault(*_ASYNC_BUFFERING)
        self.client = client
        self.run_id = run_id
        self.ending = ending
        self.ended = False
        self._pending: list[RunOperations] = []

    @classmethod
    def start(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> TrackedRun:
        """Create a new run (nested under ``parent_run_id`` if given)."""
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = get_or_create_experiment(client, experiment)
        all_tags = {**(tags or {}), **({PARENT_RUN_TAG: parent_run_id} if parent_run_id else {})}
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.ended:
            return
        if error is None:
            self.end("FINISHED")
        elif (ending := self.ending(error)) is not None:
            self.end(*ending)

    def log_params(self, params: Mapping[str, str]) -> None:
        # MlflowClient.log_batch splits what exceeds MLflow's per-request limits itself.
        self.client.log_batch(self.run_id, params=[Param(key, value) for key, value in params.items()])

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
        # A local artifact store is a copy on this machine's disk: a full one is named, not "Errno 28".
        with naming_space_errors(local_dir, "the MLflow artifacts of"):
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_file: Path, artifact_path: str | None = None) -> None:
        with naming_space_errors(local_file, "the MLflow artifact"):
            self.client.log_artifact(self.run_id, str(local_file), artifact_path)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """Close the run with ``status`` (FINISHED, KILLED or FAILED) once every queued metric is stored.

        ``set_terminated`` drains MLflow's queue and waits for it before it writes the status; waiting on each
        operation first would wait for the next buffering tick as well. A metric that could not be sent raises here.
        """
        if reason:
            self.set_tags({END_REASON_TAG: reason[:_REASON_LIMIT]})
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))
        self.ended = True
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()


def mark_best(
    tracking_uri: str,
    parent_run_id: str,
    best_run_id: str,
    metrics: Mapping[str, float],
    step: int,
    tags: Mapping[str, str],
) -> None:
    """Show the sweep's best so far where the MLflow UI shows runs: ``metrics`` and ``tags`` on the parent run (its
    row in the runs table), and the best trial's run tagged ``ftlab.best`` (the one it replaced untagged)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    previous = client.get_run(parent_run_id).data.tags.get("ftlab.best_run_id")
    if previous and previous != best_run_id:
        client.set_tag(previous, BEST_TAG, "false")
    client.set_tag(best_run_id, BEST_TAG, "true")
    timestamp = int(time.time() * 1000)
    client.log_batch(
        parent_run_id,
        metrics=[Metric(key, float(value), timestamp, step) for key, value in metrics.items()],
        tags=[RunTag(key, value) for key, value in {**tags, "ftlab.best_run_id": best_run_id}.items()],
    )


def start_or_resume_parent_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    existing_run_id: str | None,
    tags: Mapping[str, str],
    params: Mapping[str, str],
) -> str:
    """The sweep's parent run: ``existing_run_id`` set RUNNING again when a sweep resumes, else a new run.

    A parent run that the tracking store no longer has (the store was reset) is replaced by a new one.
    """
    if existing_run_id:
        with suppress(Exception):  # the tracking store was reset since; start a fresh parent run
            MlflowClient(tracking_uri=tracking_uri).update_run(existing_run_id, status="RUNNING")
            return existing_run_id
    run = TrackedRun.start(tracking_uri, experiment, run_name=run_name, tags=tags)
    run.log_params(params)
    return run.run_id


class MlflowCallback(TrainingCallback):
    """Sends the loop's metrics to one run, one value per metric per optimizer step (the x-axis)."""

    def __init__(self, run: TrackedRun) -> None:
        self.run = run

    def on_train_begin(self, plan: TrainPlan) -> None:
        counts = ("total_steps", "warmup_steps", "tokens_per_step", "total_tokens", "train_blocks", "validation_blocks")
        self.run.log_params({f"plan.{name}": str(getattr(plan, name)) for name in counts})
        self.run.set_tags({"bf16": str(plan.bf16)})
        if plan.start_step:
            self.run.set_tags({"ftlab.resumed_from_step": str(plan.start_step)})

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log_metrics(metrics, step)

    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        # The loop logs train/* (train/tokens_seen included) at every evaluation step already: logging it here too
        # would put two points at one step and garble eval/loss plotted against tokens.
        self.run.log_metrics(metrics, step)
