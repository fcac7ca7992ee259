"""What a training run changes as it goes, in one object, and the resumable checkpoint made from it.

The loop's running figures (step, loss sums, eval losses, history) live in :class:`TrainState` next to the model,
optimizer and schedule they describe, so that ``state_dict()`` is everything a resumed run needs to continue exactly
as an uninterrupted one would: the same weights, optimizer moments, learning rate, random numbers and loss sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TrainState:
    """The model, its optimizer and schedule, and the figures the loop accumulates, as of optimizer step ``step``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    step: int = 0  # optimizer steps completed
    run_loss_sum: float = 0.0  # the sum of every completed step's loss, read to the host at logs and checkpoints
    best_eval_loss: float = math.inf
    eval_loss: float = math.nan  # the latest evaluation's
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation
    # The logging window (steps since the last log) is summed on the device and read only when it closes: no
    # per-step host synchronisation.
    window_loss: torch.Tensor = field(init=False)
    window_steps: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.window_loss = torch.zeros((), dtype=torch.float64, device=self.device)

    def add_step_loss(self, loss: torch.Tensor) -> None:
        """Count one optimizer step's loss (a device tensor) in the logging window."""
        self.window_loss += loss
        self.window_steps += 1

    def close_window(self) -> float:
        """The mean loss of the steps since the last log (a host sync); counts them in ``run_loss_sum``."""
        mean_loss = self.window_loss.item() / self.window_steps
        self.run_loss_sum += mean_loss * self.window_steps
        self.window_loss.zero_()
        self.window_steps = 0
        return mean_loss

    def fold_window(self) -> None:
        """Count the open logging window in ``run_loss_sum`` without logging it; the next log covers later steps."""
        self.run_loss_sum += self.window_loss.item()
        self.window_loss.zero_()
        self.window_steps = 0

    def record_evaluation(self, step: int, tokens_seen: int, fidelity_tokens: int, metrics: dict[str, float]) -> bool:
        """Record an evaluation's ``eval/*`` metrics in the history; whether its loss is the best so far."""
        self.eval_loss = metrics["eval/loss"]
        self.history.append({"step": step, "tokens_seen": tokens_seen, "fidelity_tokens": fidelity_tokens, **metrics})
        if self.eval_loss < self.best_eval_loss:
            self.best_eval_loss = self.eval_loss
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as plain tensors and numbers (``torch.save``-able).

        An open logging window is counted in the saved ``run_loss_sum``, so a resumed run counts every step's loss
        once; the loop folds the window before saving, so that its own next log matches the resumed run's.
        """
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **self.progress_dict()}

    def progress_dict(self) -> dict[str, Any]:
        """The resumable state apart from weights and optimizer: schedule, step, random numbers and figures (what a
        sharded checkpoint keeps per rank beside the shards)."""
        return {
            "step": self.step,
            "scheduler": self.scheduler.state_dict(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            "run_loss_sum": self.run_loss_sum + self.window_loss.item(),
            "best_eval_loss": self.best_eval_loss,
            "eval_loss": self.eval_loss,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a ``state_dict()``): weights, optimizer, schedule, random numbers and figures."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_progress_dict(state)

    def load_progress_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`progress_dict` (the weights and optimizer are restored by the caller)."""
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["cpu_rng"])
        if self.device.type == "cuda" and state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.step = state["step"]
        self.run_loss_sum = state["run_loss_sum"]
        self.best_eval_loss = state["best_eval_loss"]
        self.eval_loss = state["eval_loss"]
        self.history = list(state["history"])
        self.window_loss.zero_()
        self.window_steps = 0
