"""Out of GPU memory: train again with half the micro-batch and the accumulation that keeps the effective batch.

One implementation for ``ftlab train`` and the sweep's trial processes. Halving the micro-batch trades speed for
memory without changing what is trained: micro-batch × accumulation, the sequences per optimizer step, stays the same,
and so do the loss and the updates (the loop's loss is token-weighted across accumulation).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from ftlab.config import TrainConfig
from ftlab.settings import split_effective_batch

T = TypeVar("T")


@dataclass(frozen=True)
class OomRetry:
    """One retry after running out of memory: what changed so far, and the settings the next attempt runs with."""

    # every change so far, oldest first, as "micro×accumulation->micro×accumulation": "4x2->2x4"
    history: tuple[str, ...]
    config: TrainConfig
    error: str  # the first line of the out-of-memory error


class OutOfMemoryAtBatchOneError(RuntimeError):
    """Training ran out of memory with a micro-batch of one sequence: no smaller split is left to try."""

    def __init__(self, error: str) -> None:
        super().__init__(f"out of memory even at per_device_train_batch_size=1: {error}")


def with_oom_retry(
    attempt: Callable[[TrainConfig], T],
    config: TrainConfig,
    on_retry: Callable[[OomRetry], None] | None = None,
) -> T:
    """``attempt(config)``; on CUDA out-of-memory, again with half the micro-batch and the same effective batch.

    Args:
        attempt: trains with the settings it is given (from scratch: each call should build its own model).
        config: the settings of the first attempt.
        on_retry: told before each retry what changed (to record it, e.g. as run tags).

    Returns:
        What the first attempt that did not run out of memory returned.

    Raises:
        OutOfMemoryAtBatchOneError: out of memory with ``per_device_train_batch_size=1``.
        Exception: whatever else ``attempt`` raises, unchanged.
    """
    history: list[str] = []
    while True:
        try:
            return attempt(config)
        except torch.cuda.OutOfMemoryError as error:
            message = str(error).splitlines()[0] if str(error) else "CUDA out of memory"
        # Free the failed attempt here, outside the except block, whose traceback pins its tensors.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        micro, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
        if micro == 1:
            raise OutOfMemoryAtBatchOneError(message)
        # Per process: with several, each keeps its share of the effective batch.
        new_micro, new_accumulation = split_effective_batch(micro * accumulation, micro // 2)
        history.append(f"{micro}x{accumulation}->{new_micro}x{new_accumulation}")
        config = config.model_copy(
            update={"per_device_train_batch_size": new_micro, "gradient_accumulation_steps": new_accumulation}
        )
        if on_retry is not None:
            on_retry(OomRetry(tuple(history), config, message))
