"""Preemption inside the training loop: stop at a step boundary with a checkpoint, resume to the same result."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from ftlab.config import TrainConfig
from ftlab.training.callbacks import TrainingCallback
from ftlab.training.loop import TrainingPreemptedError, train
from tests.test_metrics import CPU, random_blocks, tiny_model

CONFIG = TrainConfig(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=8, logging_steps=1)


class StopAt(TrainingCallback):
    """Sets the stop request at ``step``, as the trial's SIGTERM handler would mid-step."""

    def __init__(self, step: int, event: threading.Event) -> None:
        self.step, self.event = step, event

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if step == self.step:
            self.event.set()


def test_a_stop_request_saves_a_checkpoint_at_that_step_and_the_resume_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    train_blocks, validation = random_blocks(32), random_blocks(4, seed=2)
    uninterrupted_model = tiny_model()
    uninterrupted = train(uninterrupted_model, train_blocks, validation, CONFIG, CPU)

    checkpoint = tmp_path / "checkpoint.pt"
    stop = threading.Event()
    with pytest.raises(TrainingPreemptedError, match="after optimizer step 3; checkpoint saved") as stopped:
        train(tiny_model(), train_blocks, validation, CONFIG, CPU, StopAt(3, stop), checkpoint_path=checkpoint,
              stop_requested=stop)  # fmt: skip
    assert stopped.value.step == 3 and checkpoint.is_file()

    resumed_model = tiny_model(seed=99)  # different initial weights: everything must come from the checkpoint
    resumed = train(resumed_model, train_blocks, validation, CONFIG, CPU, resume_from=checkpoint)
    assert resumed.metrics["eval/loss"] == pytest.approx(uninterrupted.metrics["eval/loss"], rel=1e-6)
    assert resumed.metrics["train/loss"] == pytest.approx(uninterrupted.metrics["train/loss"], rel=1e-6)
    for a, b in zip(resumed_model.parameters(), uninterrupted_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_no_checkpoint_path_still_stops_and_says_so() -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingPreemptedError, match="after optimizer step 1; no checkpoint kept"):
        train(tiny_model(), random_blocks(32), random_blocks(4, seed=2), CONFIG, CPU, stop_requested=stop)
