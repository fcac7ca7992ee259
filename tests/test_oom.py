"""The out-of-memory retry: half the micro-batch, the same effective batch, a named error at a micro-batch of 1."""

from __future__ import annotations

import pytest
import torch

from ftlab.config import TrainConfig
from ftlab.settings import split_effective_batch
from ftlab.training.callbacks import CallbackList
from ftlab.training.loop import train
from ftlab.training.oom import OomRetry, OutOfMemoryAtBatchOneError, with_oom_retry
from tests.support.faults import fault_callbacks
from tests.test_metrics import CPU, random_blocks, tiny_model


class OutOfMemoryAbove:
    """An attempt that runs out of memory while the micro-batch is above ``limit``; records what it was called with."""

    def __init__(
        self, limit: int, message: str = "CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"
    ) -> None:
        self.limit = limit
        self.message = message
        self.calls: list[tuple[int, int]] = []

    def __call__(self, config: TrainConfig) -> str:
        self.calls.append((config.per_device_train_batch_size, config.gradient_accumulation_steps))
        if config.per_device_train_batch_size > self.limit:
            raise torch.cuda.OutOfMemoryError(self.message)
        return "trained"


@pytest.mark.parametrize(
    ("total", "max_micro", "expected"),
    [(8, 8, (8, 1)), (8, 3, (2, 4)), (12, 5, (4, 3)), (7, 4, (1, 7)), (6, 3, (3, 2)), (4, 16, (4, 1))],
)
def test_split_effective_batch_keeps_the_total(total: int, max_micro: int, expected: tuple[int, int]) -> None:
    micro, accumulation = split_effective_batch(total, max_micro)
    assert (micro, accumulation) == expected
    assert micro * accumulation == total


def test_out_of_memory_retries_with_half_the_micro_batch_and_the_same_effective_batch() -> None:
    attempt = OutOfMemoryAbove(limit=2)
    retries: list[OomRetry] = []
    config = TrainConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=3e-4)
    assert with_oom_retry(attempt, config, on_retry=retries.append) == "trained"
    assert attempt.calls == [(4, 2), (2, 4)]
    (retry,) = retries
    assert retry.history == ("4x2->2x4",)
    assert retry.error == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert retry.config.total_train_batch_size == 8
    assert retry.config.learning_rate == 3e-4, "only the split changes"


def test_history_accumulates_over_several_retries() -> None:
    attempt = OutOfMemoryAbove(limit=1)
    retries: list[OomRetry] = []
    with_oom_retry(attempt, TrainConfig(per_device_train_batch_size=6), on_retry=retries.append)
    assert attempt.calls == [(6, 1), (3, 2), (1, 6)]
    assert retries[-1].history == ("6x1->3x2", "3x2->1x6")


def test_out_of_memory_at_micro_batch_one_is_a_named_error() -> None:
    attempt = OutOfMemoryAbove(limit=0)
    with pytest.raises(OutOfMemoryAtBatchOneError) as raised:
        with_oom_retry(attempt, TrainConfig(per_device_train_batch_size=2, gradient_accumulation_steps=3))
    assert attempt.calls == [(2, 3), (1, 6)]
    assert str(raised.value) == (
        "out of memory even at per_device_train_batch_size=1: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert isinstance(raised.value, RuntimeError)


def test_an_empty_out_of_memory_message_still_says_what_happened() -> None:
    with pytest.raises(OutOfMemoryAtBatchOneError, match=r"size=1: CUDA out of memory$"):
        with_oom_retry(OutOfMemoryAbove(limit=0, message=""), TrainConfig(per_device_train_batch_size=1))


def test_other_errors_propagate_untouched_and_are_not_retried() -> None:
    error = ValueError("not memory")
    calls: list[TrainConfig] = []

    def attempt(config: TrainConfig) -> None:
        calls.append(config)
        raise error

    with pytest.raises(ValueError) as raised:
        with_oom_retry(attempt, TrainConfig(per_device_train_batch_size=4))
    assert raised.value is error and len(calls) == 1


def test_an_injected_out_of_memory_in_training_is_retried_to_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTLAB_INJECT_FAULT", "oom_at_step=2,oom_above_batch=2")
    train_blocks, validation = random_blocks(16), random_blocks(4, seed=2)

    def attempt(config: TrainConfig) -> tuple[float, int]:
        model = tiny_model()
        result = train(model, train_blocks, validation, config, CPU, CallbackList(fault_callbacks(model)))
        return result.metrics["eval/loss"], config.per_device_train_batch_size

    config = TrainConfig(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-3)
    eval_loss, micro = with_oom_retry(attempt, config)
    monkeypatch.delenv("FTLAB_INJECT_FAULT")
    expected = train(tiny_model(), train_blocks, validation, config, CPU).metrics["eval/loss"]
    assert micro == 2
    assert eval_loss == pytest.approx(expected, abs=1e-5), "2x4 trains what 4x2 would have"
