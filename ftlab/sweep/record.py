"""The one trial record: a trial's outcome and figures, in the single shape every part of ftlab passes around.

A trial process writes it to its result file; the runner tells the study from it (as Optuna user attributes);
``ftlab status``, the report, ``ftlab best`` and the export read it back from the study. The attribute names are
the ones ftlab has always stored, so studies written by earlier versions still read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ftlab.fileio import atomic_write_json

# Optuna user attributes ftlab stores on a study or a trial besides the figures below.
BASELINE_ATTR = "baseline"  # trial: the enqueued baseline recipe
RUN_ID_ATTR = "mlflow_run_id"  # trial: its MLflow child run
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study: the sweep's MLflow parent run
REPORTED_ATTR = "reported_finished_trials"  # study: finished trials when the last report was written
SWEEP_ATTR = "ftlab.sweep"  # study: the search space, objective and baseline it was started with
SWEEP_CHANGES_ATTR = "ftlab.sweep_changes"  # study: changes accepted since (--accept-changes)
FAIL_REASON_ATTR = "fail_reason"
PRUNE_REASON_ATTR = "prune_reason"
STOPPED_ATTR = "stopped_from_outside"  # trial: failed by a lost worker, preemption or Ctrl-C, not by its own error
# An enqueued trial may fix more than its params (a confirmation's seed), and name its run and add tags to it.
OVERRIDES_ATTR = "ftlab.overrides"
RUN_NAME_ATTR = "ftlab.run_name"
RUN_TAGS_ATTR = "ftlab.run_tags"

State = Literal["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]

# The figures of a COMPLETE trial, stored as user attributes under these very names.
_FIGURES = (
    "eval_loss",
    "perplexity",
    "train_loss",
    "tokens_seen",
    "seconds",
    "device",
    "model_dir",
    "data_fingerprint",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
)


@dataclass
class TrialRecord:
    """What one trial came to. ``state`` uses Optuna's names; the figures are set for COMPLETE trials."""

    state: State
    reason: str | None = None  # why it was pruned or failed
    values: list[float] | None = None  # the objective values, in the sweep's objective order
    eval_loss: float | None = None
    perplexity: float | None = None
    train_loss: float | None = None
    tokens_seen: int | None = None
    seconds: float | None = None
    device: str | None = None
    model_dir: str | None = None
    data_fingerprint: str | None = None
    # As applied: an out-of-memory retry may have split the sampled effective batch differently.
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    retry: bool = False  # stopped from outside (SIGKILL, preemption, Ctrl-C): run it again; not the trial's own failure
    # This machine cannot run trials (its disk is full): the worker stops taking them; the retry runs elsewhere or
    # once room is made. Only in the result file: the study keeps the reason and ``retry``.
    machine_fault: bool = False
    # Known once the record is read back from the study.
    number: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    baseline: bool = False
    mlflow_run_id: str | None = None
    duration_s: float | None = None

    # --- the trial process's result file ---------------------------------------------------------------------------

    def write(self, path: Path) -> None:
        """Write the record as the trial's result file, whole or not at all."""
        atomic_write_json(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> TrialRecord | None:
        """The record in a result file, or None when the trial process ended without writing one."""
        if not path.exists():
            return None
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in json.loads(path.read_text()).items() if key in known})

    # --- Optuna user attributes ------------------------------------------------------------------------------------

    def to_user_attrs(self) -> dict[str, Any]:
        """The user attributes that store this outcome on its Optuna trial."""
        if self.state == "PRUNED":
            return {PRUNE_REASON_ATTR: self.reason}
        if self.state == "FAIL":
            return {FAIL_REASON_ATTR: self.reason, STOPPED_ATTR: self.retry}
        return {name: getattr(self, name) for name in _FIGURES}

    @classmethod
    def from_trial(cls, trial: Any) -> TrialRecord:
        """The record of an Optuna ``FrozenTrial``, figures and identity included."""
        attrs = trial.user_attrs
        # A retry starts with a copy of the failed trial's attributes: read a reason only where the state has one.
        reason = {"FAIL": attrs.get(FAIL_REASON_ATTR), "PRUNED": attrs.get(PRUNE_REASON_ATTR)}.get(trial.state.name)
        return cls(
            state=trial.state.name,
            reason=reason,
            retry=bool(attrs.get(STOPPED_ATTR)) and trial.state.name == "FAIL",
            values=list(trial.values) if trial.values else None,
            **{name: attrs.get(name) for name in _FIGURES},
            number=trial.number,
            params=dict(trial.params),
            baseline=bool(attrs.get(BASELINE_ATTR)),
            mlflow_run_id=attrs.get(RUN_ID_ATTR),
            duration_s=trial.duration.total_seconds() if trial.duration else None,
        )

    @property
    def own_failure(self) -> bool:
        """Whether the trial failed by an error of its own: a reason to stop a sweep that keeps failing.

        A trial failed from outside (a lost worker, preemption, Ctrl-C, a reaped trial: no reason recorded) is not.
        """
        return self.state == "FAIL" and self.reason is not None and not self.retry

    def as_json(self) -> dict[str, Any]:
        """Everything, JSON-ready (``ftlab status --json``, the report, ``ftlab best --json``)."""
        return asdict(self)
