"""How the training loop reports to the outside world without importing Optuna or MLflow.

The loop calls these hooks; the sweep (Optuna pruning), the tracker (MLflow), the live view and the tests' fault
injection (``tests/support/faults.py``, through :mod:`ftlab.training.plugins`) implement them.
A hook may raise to stop training (for example the sweep's pruning decision); the loop lets it propagate.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainPlan:
    """What the loop is about to do, as actually applied: the sweep checks it against the sampled values."""

    total_steps: int
    warmup_steps: int
    tokens_per_step: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float  # the optimizer's peak learning rate, read back from the optimizer
    bf16: bool
    train_blocks: int
    validation_blocks: int
    start_step: int = 0  # > 0 when resuming from a checkpoint: steps 1..start_step are not run again
    world_size: int = 1  # the trial's processes, each running micro-batch × accumulation sequences per step

    @property
    def total_train_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size

    @property
    def total_tokens(self) -> int:
        return self.total_steps * self.tokens_per_step


@dataclass
class TrainResult:
    """What a finished training run ends with: its final figures by name (see :mod:`ftlab.figures`)."""

    steps: int
    metrics: dict[str, float]  # eval/loss, eval/perplexity, train/loss, train/tokens_seen, perf/train_seconds…
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation


class TrainingCallback:
    """No-op hooks; subclass and override what you need."""

    def on_train_begin(self, plan: TrainPlan) -> None:
        """Called once the optimizer and schedule exist, before the first step."""

    def on_step_begin(self, step: int) -> None:
        """Called before optimizer step ``step`` (counted from 1) runs its first micro-batch."""

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        """Called every ``logging_steps`` optimizer steps with ``train/*`` and ``perf/*`` metrics."""

    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        """Called after each evaluation with ``eval/*`` metrics; raise to stop (e.g. pruning)."""

    def on_checkpoint_begin(self, step: int, path: str) -> None:
        """Called before the resumable training state of ``step`` is written to ``path``."""

    def on_checkpoint(self, step: int, path: str) -> None:
        """Called after a checkpoint (the resumable state, or the best model so far) was written completely."""

    def on_train_end(self, result: TrainResult) -> None:
        """Called once training finished normally."""


HOOKS = frozenset(name for name in vars(TrainingCallback) if name.startswith("on_"))
"""The names of :class:`TrainingCallback`'s hooks."""


class ForwardingCallback(TrainingCallback, abc.ABC):
    """A callback that hands every hook call, by name, to :meth:`forward`."""

    def __getattribute__(self, name: str) -> Any:
        if name in HOOKS:
            return functools.partial(object.__getattribute__(self, "forward"), name)
        return object.__getattribute__(self, name)

    @abc.abstractmethod
    def forward(self, hook: str, *args: Any) -> None:
        """Handle the call ``hook(*args)`` (``hook`` is one of :data:`HOOKS`)."""


class CallbackList(ForwardingCallback):
    """Fans each hook out to several callbacks, in order."""

    def __init__(self, callbacks: list[TrainingCallback]) -> None:
        self.callbacks = callbacks

    def forward(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)
