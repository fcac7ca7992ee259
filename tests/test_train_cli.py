"""`ftlab train` end to end on the demo: the real CLI, a real MLflow store, a model that reloads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import local_client, run_ftlab, runs_of, write_sweep

pytestmark = pytest.mark.integration

METRIC_KEYS = {
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "train/tokens_seen",
    "eval/loss",
    "eval/perplexity",
    "perf/tokens_per_second",
    "perf/peak_memory_mb",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("train")
    sweep = write_sweep(folder)
    result = run_ftlab("train", str(sweep), "--set", "learning_rate=2e-3", cwd=folder)
    assert result.returncode == 0, result.stderr
    (run,) = runs_of(folder, "small")
    return folder, run


def test_run_finishes_with_every_metric_key(trained: tuple[Path, object]) -> None:
    _, run = trained
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) >= METRIC_KEYS


def test_eval_perplexity_is_exp_of_eval_loss_at_every_evaluation(trained: tuple[Path, object]) -> None:
    folder, run = trained
    client = local_client(folder)
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/loss")}
    perplexities = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/perplexity")}
    assert len(losses) >= 2 and losses.keys() == perplexities.keys()
    for step, loss in losses.items():
        assert perplexities[step] == pytest.approx(math.exp(loss), rel=1e-9)
    train_loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(train_loss) >= 4, "train/loss is logged over time"
    assert train_loss[-1].value < train_loss[0].value, "the demo fine-tune learns"


def test_one_value_per_metric_per_step_so_eval_loss_plots_against_tokens_seen(trained: tuple[Path, object]) -> None:
    # The UI's chart of eval/loss against train/tokens_seen needs exactly one tokens_seen value at every step that
    # has an eval/loss point, and those values must grow with the step over the whole run.
    folder, run = trained
    client = local_client(folder)
    tokens = client.get_metric_history(run.info.run_id, "train/tokens_seen")
    steps = [metric.step for metric in tokens]
    assert len(steps) == len(set(steps)), "train/tokens_seen logged twice at a step"
    by_step = {metric.step: metric.value for metric in tokens}
    evals = sorted(metric.step for metric in client.get_metric_history(run.info.run_id, "eval/loss"))
    assert len(evals) == len(set(evals)) >= 2 and set(evals) <= set(by_step)
    seen = [by_step[step] for step in evals]
    assert seen == sorted(set(seen)), "one eval/loss point per fidelity point, in order"
    assert seen[-1] == max(by_step.values()) == float(run.data.params["plan.total_tokens"])


def test_params_use_trainingarguments_names_and_the_override(trained: tuple[Path, object]) -> None:
    _, run = trained
    params = run.data.params
    assert params["learning_rate"] == "0.002"  # --set wins over the baseline's 1e-3
    assert params["per_device_train_batch_size"] == "4"
    assert params["gradient_accumulation_steps"] == "2"
    assert params["total_train_batch_size"] == "8"
    assert params["data.block_size"] == "64"
    tags = run.data.tags
    assert {"data.fingerprint", "ftlab.version", "torch.version", "transformers.version", "device"} <= set(tags)


def test_artifacts_hold_config_and_a_reloadable_model(trained: tuple[Path, object], tmp_path: Path) -> None:
    folder, run = trained
    client = local_client(folder)
    names = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model"} <= names
    config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
    assert config["train"]["learning_rate"] == 0.002
    model_dir = client.download_artifacts(run.info.run_id, "model", str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("The assert statement", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_bad_data_fails_before_training_with_exit_2(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, data={"train_files": ["missing.txt"], "block_size": 64})
    result = run_ftlab("train", str(sweep), cwd=tmp_path)
    assert result.returncode == 2
    assert "missing.txt" in result.stderr and "Traceback" not in result.stderr


def test_bad_set_option_is_a_user_error(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path)
    result = run_ftlab("train", str(sweep), "--set", "learning_rat=1", cwd=tmp_path)
    assert result.returncode == 2 and "learning_rat" in result.stderr and "Traceback" not in result.stderr
