"""Metric math: perplexity, token-weighted eval loss, and a train loss independent of how the batch is split."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ftlab.config import TrainConfig
from ftlab.training.callbacks import CallbackList, TrainingCallback
from ftlab.training.loop import NonFiniteLossError, NotEnoughDataError, train
from ftlab.training.metrics import IGNORE_INDEX, evaluate, perplexity, sum_token_nll
from ftlab.training.runtime import Runtime
from tests.support.faults import fault_callbacks

CPU = Runtime(device=torch.device("cpu"), bf16=False)


def tiny_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    )
    return GPT2LMHeadModel(config)


def random_blocks(n: int, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (n, length), generator=torch.Generator().manual_seed(seed))


class Recorder(TrainingCallback):
    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []
        self.evals: list[tuple[int, int, dict[str, float]]] = []

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.logs.append(metrics)

    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, tokens_seen, metrics))


def test_perplexity_is_exp_of_loss_and_overflow_safe() -> None:
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(6.2712) == pytest.approx(529.0, rel=1e-3)
    assert perplexity(1e6) == math.inf
    assert math.isnan(perplexity(math.nan))


def test_eval_loss_matches_an_independent_token_by_token_computation() -> None:
    model = tiny_model().eval()
    blocks = random_blocks(7)  # 7 blocks in batches of 3: the last batch is smaller, which a mean of means gets wrong
    loss, tokens = evaluate(model, blocks, batch_size=3, device=torch.device("cpu"), autocast=contextlib.nullcontext())

    nll = []
    with torch.no_grad():
        for block in blocks:
            log_probs = torch.log_softmax(model(block[None]).logits[0].double(), dim=-1)
            nll += [-log_probs[position, block[position + 1]].item() for position in range(len(block) - 1)]
    assert tokens == len(nll) == 7 * 15
    assert loss == pytest.approx(sum(nll) / len(nll), rel=1e-5)


def test_ignored_labels_never_count() -> None:
    logits = torch.randn(1, 5, 11)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 4, IGNORE_INDEX]])
    full = sum_token_nll(logits, torch.tensor([[1, 2, 3, 4, 5]]))
    masked = sum_token_nll(logits, labels)
    expected = sum(
        -torch.log_softmax(logits[0, position], -1)[labels[0, position + 1]] for position in (0, 2)
    )  # only positions whose next label is real
    assert masked.item() == pytest.approx(float(expected), rel=1e-5)
    assert masked.item() < full.item()


def _train_once(micro: int, accumulation: int) -> tuple[Recorder, GPT2LMHeadModel]:
    model = tiny_model()
    recorder = Recorder()
    config = TrainConfig(
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        seed=3,
    )
    train(model, random_blocks(16), random_blocks(4, seed=2), config, CPU, recorder)
    return recorder, model


def test_gradient_accumulation_reports_the_same_loss_as_one_big_batch() -> None:
    split, split_model = _train_once(micro=2, accumulation=4)
    whole, whole_model = _train_once(micro=8, accumulation=1)
    for split_log, whole_log in zip(split.logs, whole.logs, strict=True):
        assert split_log["train/loss"] == pytest.approx(whole_log["train/loss"], abs=1e-4)
        assert split_log["train/tokens_seen"] == whole_log["train/tokens_seen"]
    # Same updates too: the weights after two optimizer steps agree.
    for a, b in zip(split_model.parameters(), whole_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_eval_tokens_aligns_fidelity_points_across_batch_sizes() -> None:
    points = []
    for micro in (2, 4):
        recorder = Recorder()
        config = TrainConfig(per_device_train_batch_size=micro, max_steps=32 // micro, eval_tokens=64, logging_steps=1)
        train(tiny_model(), random_blocks(64), random_blocks(4, seed=2), config, CPU, recorder)
        points.append([tokens for _, tokens, _ in recorder.evals])
    assert points[0] == points[1] == [64, 128, 192, 256, 320, 384, 448, 512]


def test_final_eval_loss_and_perplexity_are_reported() -> None:
    recorder = Recorder()
    config = TrainConfig(per_device_train_batch_size=4, max_steps=3, logging_steps=1)
    result = train(tiny_model(), random_blocks(12), random_blocks(4, seed=2), config, CPU, recorder)
    assert result.metrics["eval/perplexity"] == pytest.approx(math.exp(result.metrics["eval/loss"]))
    assert recorder.evals[-1][2]["eval/loss"] == result.metrics["eval/loss"]
    assert result.metrics["train/tokens_seen"] == 3 * 4 * 16


def test_nan_loss_stops_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTLAB_INJECT_FAULT", "nan_at_step=2")
    model = tiny_model()
    config = TrainConfig(per_device_train_batch_size=4, max_steps=5, logging_steps=1)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        train(model, random_blocks(12), random_blocks(4, seed=2), config, CPU, CallbackList(fault_callbacks(model)))


def test_too_little_data_for_one_step_is_a_clear_error() -> None:
    config = TrainConfig(per_device_train_batch_size=8, gradient_accumulation_steps=4)
    with pytest.raises(NotEnoughDataError, match="needs 32"):
        train(tiny_model(), random_blocks(10), random_blocks(4), config, CPU)


def test_every_final_metric_the_loop_computes_is_a_valid_objective() -> None:
    from ftlab.config import ObjectiveConfig
    from ftlab.figures import FINAL_METRICS, Measured, final_figures

    figures = final_figures(Measured(4, 2048, 4.5, 4.25, 4.2, 36.0, 512.0))
    assert list(figures) == list(FINAL_METRICS)
    assert figures["cost/device_hours"] == pytest.approx(0.01)
    assert figures["eval/perplexity"] == pytest.approx(70.105, rel=1e-4)
    for name in figures:
        assert ObjectiveConfig(metric=name).metric == name


def test_holdout_blocks_are_scored_once_on_the_final_model_and_no_hook_hears_of_them() -> None:
    from ftlab.figures import FINAL_METRICS, HOLDOUT_FIGURES, on_holdout

    config = TrainConfig(per_device_train_batch_size=4, max_steps=3, logging_steps=1)
    recorder, model, holdout = Recorder(), tiny_model(), random_blocks(5, seed=7)

    result = train(model, random_blocks(12), random_blocks(4, seed=2), config, CPU, recorder, holdout_blocks=holdout)

    expected, _ = evaluate(model, holdout, batch_size=8, device=torch.device("cpu"), autocast=contextlib.nullcontext())
    assert result.metrics["holdout/loss"] == pytest.approx(expected, rel=1e-6)
    assert result.metrics["holdout/perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    # Nothing that could prune or choose hears of it; without holdout blocks (a sweep trial) there is none at all.
    heard = [name for _, _, metrics in recorder.evals for name in metrics] + [n for log in recorder.logs for n in log]
    assert not [name for name in heard if name.startswith("holdout/")]
    without = train(tiny_model(), random_blocks(12), random_blocks(4, seed=2), config, CPU)
    assert not [name for name in without.metrics if name.startswith("holdout/")]
    assert without.metrics["eval/loss"] == pytest.approx(result.metrics["eval/loss"], rel=1e-6)
    # A sweep file cannot name a holdout figure as its objective; a confirmation maps eval figures onto them.
    assert not set(HOLDOUT_FIGURES.values()) & set(FINAL_METRICS)
    assert [on_holdout(name) for name in ("eval/loss", "eval/perplexity", "eval/best_loss", "train/loss")] == [
        "holdout/loss",
        "holdout/perplexity",
        "eval/best_loss",
        "train/loss",
    ]
