"""The one trial record: a trial's outcome and figures, in the single shape every part of ftlab passes around.

A trial process writes it to its result file; the launcher tells the study from it (as Optuna user attributes);
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
LOST_ATTR = "ftlab.worker_lost"  # trial: failed because its process or worker died (SIGKILL, a reaped dead worker)
TRIAL_DIR_ATTR = "ftlab.trial_dir"  # trial: its folder (progress, result file), for the reaper of a dead worker
# A FAIL reason that starts with this: the loss became NaN or infinite, a failure of the trial's own settings.
DIVERGED_PREFIX = "diverged: "
# An enqueued trial may fix more than its params (a confirmation's seed), and name its run and add tags to it.
OVERRIDES_ATTR = "ftlab.overrides"
RUN_NAME_ATTR = "ftlab.run_name"
RUN_TAGS_ATTR = "ftlab.run_tags"
# An enqueued confirmation run judged on the holdout split: its objective values are its holdout figures.
HOLDOUT_ATTR = "ftlab.holdout"

State = Literal["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]

# What a COMPLETE trial stored besides its final metrics, as user attributes under these very names.
_FACTS = (
    "device",
    "model_dir",
    "data_fingerprint",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
)
# The final metrics earlier versions stored, under the attribute names they used: studies they wrote still read (and
# they still read ours). Every other final metric is stored as ``final/<name>``.
_STORED_AS = {
    "eval/loss": "eval_loss",
    "eval/perplexity": "perplexity",
    "train/loss": "train_loss",
    "train/tokens_seen": "tokens_seen",
    "perf/train_seconds": "seconds",
}
_METRIC_OF = {attr: name for name, attr in _STORED_AS.items()}
_FINAL_PREFIX = "final/"


def _metrics_in(attrs: dict[str, Any]) -> dict[str, float]:
    """The final metrics among a trial's user attributes, by metric name."""
    found = {}
    for key, value in attrs.items():
        if key in _METRIC_OF and value is not None:
            found[_METRIC_OF[key]] = value
        elif key.startswith(_FINAL_PREFIX):
            found[key.removeprefix(_FINAL_PREFIX)] = value
    return found


@dataclass
class TrialRecord:
    """What one trial came to. ``state`` uses Optuna's names; the figures are set for COMPLETE trials."""

    state: State
    reason: str | None = None  # why it was pruned or failed
    values: list[float] | None = None  # the objective values, in the sweep's objective order
    # The final metrics by name (``eval/loss``, ``train/tokens_seen``…: see ftlab.figures); COMPLETE only.
    metrics: dict[str, float] = field(default_factory=dict)
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
    # Its process or worker died without a word (SIGKILL, a dead worker reaped): retried, but the same settings
    # killing their machine again and again count as their own failure (see ftlab.sweep.reaper).
    lost: bool = False
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
            # LOST_ATTR only where set: a FAIL's attributes stay those earlier versions wrote.
            return {FAIL_REASON_ATTR: self.reason, STOPPED_ATTR: self.retry} | ({LOST_ATTR: True} if self.lost else {})
        stored = {_STORED_AS.get(name, _FINAL_PREFIX + name): value for name, value in self.metrics.items()}
        return stored | {name: getattr(self, name) for name in _FACTS}

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
            lost=bool(attrs.get(LOST_ATTR)) and trial.state.name == "FAIL",
            values=list(trial.values) if trial.values else None,
            metrics=_metrics_in(attrs),
            **{name: attrs.get(name) for name in _FACTS},
            number=trial.number,
            params=dict(trial.params),
            baseline=bool(attrs.get(BASELINE_ATTR)),
            mlflow_run_id=attrs.get(RUN_ID_ATTR),
            duration_s=trial.duration.total_seconds() if trial.duration else None,
        )

    # The figures that fixed readers (the CLI's tables, the card, the export's check) name; None where not recorded.

    @property
    def eval_loss(self) -> float | None:
        return self.metrics.get("eval/loss")

    @property
    def perplexity(self) -> float | None:
        return self.metrics.get("eval/perplexity")

    @property
    def train_loss(self) -> float | None:
        return self.metrics.get("train/loss")

    @property
    def tokens_seen(self) -> int | None:
        value = self.metrics.get("train/tokens_seen")
        return None if value is None else int(value)

    @property
    def seconds(self) -> float | None:
        return self.metrics.get("perf/train_seconds")

    @property
    def own_failure(self) -> bool:
        """Whether the trial failed by an error of its own: a reason to stop a sweep that keeps failing.

        A trial failed from outside (a lost worker, preemption, Ctrl-C, a reaped trial: no reason recorded) is not.
        """
        return self.state == "FAIL" and self.reason is not None and not self.retry

    @property
    def diverged(self) -> bool:
        """Whether the trial failed because its loss became NaN or infinite (its settings' failure, not a prune)."""
        return self.state == "FAIL" and (self.reason or "").startswith(DIVERGED_PREFIX)

    @property
    def outcome(self) -> str:
        """What to call the trial's state when showing it: Optuna's state name, or DIVERGED for a diverged FAIL."""
        return "DIVERGED" if self.diverged else self.state

    @property
    def detail(self) -> str:
        """The reason to show next to :attr:`outcome` (without the "diverged: " that the outcome says already)."""
        return (self.reason or "").removeprefix(DIVERGED_PREFIX) if self.diverged else self.reason or ""

    def as_json(self) -> dict[str, Any]:
        """Everything, JSON-ready (``ftlab status --json``, the report): the fields, ``outcome`` and ``diverged``,
        and the metrics that earlier versions stored also under their attribute names (``eval_loss``…)."""
        flat = {attr: self.metrics.get(name) for name, attr in _STORED_AS.items()}
        return asdict(self) | flat | {"outcome": self.outcome, "diverged": self.diverged}
