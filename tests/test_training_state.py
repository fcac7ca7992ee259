"""TrainState and checkpoints: the loop's figures in one object, saved whole or not at all, resumed exactly."""

from __future__ import annotations

import errno
import inspect
import math
import threading
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import torch

from ftlab.config import TrainConfig
from ftlab.fileio import NoSpaceError
from ftlab.training.callbacks import CallbackList, TrainingCallback
from ftlab.training.checkpoint import load_training_state, save_model_atomically, save_training_state
from ftlab.training.loop import TrainingPreemptedError, train
from ftlab.training.optim import build_optimizer, build_scheduler
from ftlab.training.state import TrainState
from tests.test_metrics import CPU, random_blocks, tiny_model

STATE_KEYS = {
    "step",
    "model",
    "optimizer",
    "scheduler",
    "cpu_rng",
    "cuda_rng",
    "run_loss_sum",
    "best_eval_loss",
    "eval_loss",
    "history",
}


def fresh_state(seed: int = 0) -> TrainState:
    model = tiny_model(seed)
    config = TrainConfig(learning_rate=1e-3, warmup_steps=2)
    optimizer = build_optimizer(model, config, CPU.device)
    return TrainState(model, optimizer, build_scheduler(optimizer, config, 10), CPU.device)


def test_the_logging_window_is_read_once_and_counted_once() -> None:
    state = fresh_state()
    for loss in (1.0, 2.0, 3.0):
        state.add_step_loss(torch.tensor(loss, dtype=torch.float64))
    assert state.close_window() == 2.0
    assert (state.run_loss_sum, state.window_steps, state.window_loss.item()) == (6.0, 0, 0.0)

    state.add_step_loss(torch.tensor(4.0, dtype=torch.float64))
    assert state.state_dict()["run_loss_sum"] == 10.0, "an open window is counted in a checkpoint"
    assert state.run_loss_sum == 6.0, "state_dict() changes nothing"
    state.fold_window()
    assert (state.run_loss_sum, state.window_steps) == (10.0, 0)


def test_evaluations_are_recorded_and_the_best_is_kept() -> None:
    state = fresh_state()
    assert state.record_evaluation(1, 64, 64, {"eval/loss": 3.0})
    assert not state.record_evaluation(2, 128, 128, {"eval/loss": 3.5})
    assert state.record_evaluation(3, 192, 192, {"eval/loss": 2.5})
    assert (state.eval_loss, state.best_eval_loss) == (2.5, 2.5)
    assert state.history[1] == {"step": 2, "tokens_seen": 128, "fidelity_tokens": 128, "eval/loss": 3.5}


def test_load_state_dict_restores_weights_optimizer_schedule_rng_and_figures(tmp_path: Path) -> None:
    saved = fresh_state()
    saved.model(input_ids=random_blocks(2), labels=random_blocks(2)).loss.backward()
    saved.optimizer.step()
    saved.scheduler.step()
    saved.step, saved.run_loss_sum, saved.best_eval_loss, saved.eval_loss = 1, 4.5, 4.4, 4.4
    saved.history.append({"step": 1, "eval/loss": 4.4})
    torch.manual_seed(5)
    save_training_state(saved.state_dict(), tmp_path / "checkpoint.pt")
    expected_draw = torch.rand(3)

    loaded = load_training_state(tmp_path / "checkpoint.pt")
    assert loaded is not None and set(loaded) == STATE_KEYS
    resumed = fresh_state(seed=9)
    resumed.load_state_dict(loaded)
    torch.testing.assert_close(torch.rand(3), expected_draw)  # the random numbers continue where they were saved
    for a, b in zip(resumed.model.parameters(), saved.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 1
    assert resumed.scheduler.get_last_lr() == saved.scheduler.get_last_lr()
    assert (resumed.step, resumed.run_loss_sum, resumed.best_eval_loss, resumed.eval_loss) == (1, 4.5, 4.4, 4.4)
    assert resumed.history == saved.history


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pt"
    save_training_state({"step": 1}, path)

    def torn_save(obj: Any, file: BinaryIO) -> None:
        file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    # The disk is named, with what was being written and the room left.
    with pytest.raises(NoSpaceError, match=r"no space left on /.* while writing .*checkpoint\.pt \(.* MB free\)"):
        save_training_state({"step": 2}, path)
    assert load_training_state(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_no_checkpoint_to_resume_from_is_none(tmp_path: Path) -> None:
    assert load_training_state(None) is None
    assert load_training_state(tmp_path / "missing.pt") is None


def test_the_best_model_folder_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "best"
    save_model_atomically(tiny_model(), target)
    save_model_atomically(tiny_model(seed=1), target)
    assert [p.name for p in tmp_path.iterdir()] == ["best"], "no staging or retired folder is left"
    assert (target / "model.safetensors").is_file()


def test_a_run_resumed_from_a_checkpoint_between_logs_logs_what_the_uninterrupted_run_logs(tmp_path: Path) -> None:
    # Checkpoints every 2 steps, logs every 3: the checkpoint at step 4 falls inside a logging window.
    config = TrainConfig(
        per_device_train_batch_size=2, max_steps=9, logging_steps=3, save_steps=2, learning_rate=1e-3, seed=4
    )
    train_blocks, validation = random_blocks(24), random_blocks(4, seed=2)

    class Logs(TrainingCallback):
        def __init__(self, stop_at: int = 0, event: threading.Event | None = None) -> None:
            self.losses: dict[int, float] = {}
            self.stop_at, self.event = stop_at, event

        def on_log(self, step: int, metrics: dict[str, float]) -> None:
            self.losses[step] = metrics["train/loss"]

        def on_checkpoint(self, step: int, path: str) -> None:
            if step == self.stop_at and self.event is not None:
                self.event.set()

    uninterrupted = Logs()
    whole = train(tiny_model(), train_blocks, validation, config, CPU, uninterrupted, checkpoint_path=tmp_path / "a.pt")

    checkpoint, stop = tmp_path / "b.pt", threading.Event()
    first = Logs(stop_at=4, event=stop)
    with pytest.raises(TrainingPreemptedError):
        train(
            tiny_model(), train_blocks, validation, config, CPU, first, checkpoint_path=checkpoint, stop_requested=stop
        )
    second = Logs()
    resumed = train(
        tiny_model(seed=7),
        train_blocks,
        validation,
        config,
        CPU,
        second,
        checkpoint_path=checkpoint,
        resume_from=checkpoint,
    )

    assert {**first.losses, **second.losses} == pytest.approx(uninterrupted.losses, rel=1e-6)
    assert resumed.metrics["train/loss"] == pytest.approx(whole.metrics["train/loss"], rel=1e-6)
    assert math.isfinite(resumed.metrics["train/loss"])


def test_the_callback_list_fans_out_every_hook() -> None:
    hooks = [name for name, _ in inspect.getmembers(TrainingCallback, inspect.isfunction) if name.startswith("on_")]
    assert {"on_step_begin", "on_checkpoint_begin"} <= set(hooks)
    calls: list[tuple[int, str]] = []

    class Spy(TrainingCallback):
        def __init__(self, index: int) -> None:
            for hook in hooks:
                setattr(self, hook, lambda *args, hook=hook: calls.append((index, hook)))

    fan_out = CallbackList([Spy(0), Spy(1)])
    for hook in hooks:
        arity = len(inspect.signature(getattr(TrainingCallback, hook)).parameters) - 1
        getattr(fan_out, hook)(*[None] * arity)
    assert calls == [(index, hook) for hook in hooks for index in (0, 1)]
