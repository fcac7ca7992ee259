"""Reading model cards written by transformers' Trainer, in the shapes that different versions wrote."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ftlab.baselines import (
    CardBaseline,
    builtin_baselines,
    load_builtin,
    load_card,
    parse_card,
    resolve_baseline,
)
from ftlab.config import TrainConfig
from ftlab.errors import CardError

# transformers ~4.20: "Adam with betas", no accumulation line, warmup ratio, fp16, a results table whose first
# rows say "No log", an extra metric column, and no base_model in the front matter.
CARD_OLD_ADAM = """\
---
license: mit
tags:
- generated_from_trainer
metrics:
- accuracy
model-index:
- name: distilgpt2-wikitext2
  results: []
---

<!-- This model card has been generated automatically according to the information the Trainer had access to. You
should probably proofread and complete it, then remove this comment. -->

# distilgpt2-wikitext2

This model is a fine-tuned version of [distilgpt2](https://huggingface.co/distilgpt2) on the wikitext dataset.
It achieves the following results on the evaluation set:
- Loss: 3.6413
- Accuracy: 0.3712

## Model description

More information needed

## Intended uses & limitations

More information needed

## Training and evaluation data

More information needed

## Training procedure

### Training hyperparameters

The following hyperparameters were used during training:
- learning_rate: 2e-05
- train_batch_size: 8
- eval_batch_size: 8
- seed: 42
- optimizer: Adam with betas=(0.9,0.999) and epsilon=1e-08
- lr_scheduler_type: linear
- lr_scheduler_warmup_ratio: 0.1
- num_epochs: 3.0
- mixed_precision_training: Native AMP

### Training results

| Training Loss | Epoch | Step | Validation Loss | Accuracy |
|:-------------:|:-----:|:----:|:---------------:|:--------:|
| No log        | 1.0   | 277  | 3.6854          | 0.3660   |
| 3.9174        | 2.0   | 554  | 3.6515          | 0.3701   |
| 3.7508        | 3.0   | 831  | 3.6413          | 0.3712   |


### Framework versions

- Transformers 4.20.1
- Pytorch 1.11.0+cu113
- Datasets 2.3.2
- Tokenizers 0.12.1
"""

# transformers ~4.36: the OptimizerNames enum printed, a 4-GPU DDP run, a step budget, warmup steps, and an
# evaluation list with a perplexity that matches exp(loss).
CARD_ENUM_MULTI_GPU = """\
---
license: apache-2.0
base_model: EleutherAI/pythia-160m
tags:
- generated_from_trainer
model-index:
- name: pythia-160m-clm
  results: []
---

<!-- This model card has been generated automatically according to the information the Trainer had access to. You
should probably proofread and complete it, then remove this comment. -->

# pythia-160m-clm

This model is a fine-tuned version of [EleutherAI/pythia-160m](https://huggingface.co/EleutherAI/pythia-160m) on an unknown dataset.
It achieves the following results on the evaluation set:
- Loss: 2.5
- Perplexity: 12.1825

## Model description

More information needed

## Intended uses & limitations

More information needed

## Training and evaluation data

More information needed

## Training procedure

### Training hyperparameters

The following hyperparameters were used during training:
- learning_rate: 0.0003
- train_batch_size: 16
- eval_batch_size: 8
- seed: 1234
- distributed_type: multi-GPU
- num_devices: 4
- gradient_accumulation_steps: 2
- total_train_batch_size: 128
- total_eval_batch_size: 32
- optimizer: Use OptimizerNames.ADAMW_TORCH with betas=(0.9,0.95) and epsilon=1e-08 and optimizer_args=No additional optimizer arguments
- lr_scheduler_type: cosine
- lr_scheduler_warmup_steps: 50
- training_steps: 500

### Training results

| Training Loss | Epoch  | Step | Validation Loss |
|:-------------:|:------:|:----:|:---------------:|
| 2.9123        | 0.4    | 250  | 2.6871          |
| 2.6012        | 0.8    | 500  | 2.5             |


### Framework versions

- Transformers 4.36.2
- Pytorch 2.1.2+cu121
- Datasets 2.16.1
- Tokenizers 0.15.0
"""  # noqa: E501 (cards are copied as Trainer writes them)

# transformers ~4.45: the optimizer name printed, fused AdamW, a ratio warmup, results only in the table, whose
# last row has no training loss logged.
CARD_NAMED_FUSED = """\
---
library_name: transformers
license: mit
base_model: gpt2
tags:
- generated_from_trainer
model-index:
- name: gpt2-tinystories
  results: []
---

<!-- This model card has been generated automatically according to the information the Trainer had access to. You
should probably proofread and complete it, then remove this comment. -->

# gpt2-tinystories

This model is a fine-tuned version of [gpt2](https://huggingface.co/gpt2) on an unknown dataset.

## Model description

More information needed

## Intended uses & limitations

More information needed

## Training and evaluation data

More information needed

## Training procedure

### Training hyperparameters

The following hyperparameters were used during training:
- learning_rate: 6e-05
- train_batch_size: 32
- eval_batch_size: 64
- seed: 0
- gradient_accumulation_steps: 4
- total_train_batch_size: 128
- optimizer: Use adamw_torch_fused with betas=(0.9,0.98) and epsilon=1e-06 and optimizer_args=No additional optimizer arguments
- lr_scheduler_type: cosine_with_restarts
- lr_scheduler_warmup_ratio: 0.05
- num_epochs: 2

### Training results

| Training Loss | Epoch | Step | Validation Loss | Model Preparation Time |
|:-------------:|:-----:|:----:|:---------------:|:----------------------:|
| 1.8431        | 1.0   | 100  | 1.7012          | 0.0021                 |
| No log        | 2.0   | 200  | 1.6554          | 0.0021                 |


### Framework versions

- Transformers 4.45.2
- Pytorch 2.4.1+cu121
- Datasets 3.0.1
- Tokenizers 0.20.0
"""  # noqa: E501 (cards are copied as Trainer writes them)

# transformers ~4.45 with SGD: the optimizer line wraps onto a second line, and no results were recorded.
CARD_SGD_NO_RESULTS = """\
---
library_name: transformers
base_model: gpt2-medium
tags:
- generated_from_trainer
model-index:
- name: gpt2-medium-sgd
  results: []
---

<!-- This model card has been generated automatically according to the information the Trainer had access to. You
should probably proofread and complete it, then remove this comment. -->

# gpt2-medium-sgd

This model is a fine-tuned version of [gpt2-medium](https://huggingface.co/gpt2-medium) on an unknown dataset.

## Model description

More information needed

## Intended uses & limitations

More information needed

## Training and evaluation data

More information needed

## Training procedure

### Training hyperparameters

The following hyperparameters were used during training:
- learning_rate: 0.01
- train_batch_size: 8
- eval_batch_size: 8
- seed: 7
- optimizer: Use sgd and the args are:
No additional optimizer arguments
- lr_scheduler_type: constant
- num_epochs: 1

### Framework versions

- Transformers 4.46.0
- Pytorch 2.5.0
- Datasets 3.1.0
- Tokenizers 0.20.1
"""

# transformers ~4.25 with --adafactor, fp16 and a label smoothing factor ftlab does not carry.
CARD_OLD_ADAFACTOR = """\
---
license: apache-2.0
tags:
- generated_from_trainer
model-index:
- name: opt-125m-finetuned
  results: []
---

<!-- This model card has been generated automatically according to the information the Trainer had access to. You
should probably proofread and complete it, then remove this comment. -->

# opt-125m-finetuned

This model is a fine-tuned version of [facebook/opt-125m](https://huggingface.co/facebook/opt-125m) on an unknown dataset.
It achieves the following results on the evaluation set:
- Loss: 3.0021

## Model description

More information needed

## Intended uses & limitations

More information needed

## Training and evaluation data

More information needed

## Training procedure

### Training hyperparameters

The following hyperparameters were used during training:
- learning_rate: 0.001
- train_batch_size: 4
- eval_batch_size: 4
- seed: 42
- gradient_accumulation_steps: 8
- total_train_batch_size: 32
- optimizer: Adafactor
- lr_scheduler_type: constant_with_warmup
- lr_scheduler_warmup_steps: 100
- training_steps: 2000
- mixed_precision_training: Native AMP
- label_smoothing_factor: 0.1

### Training results



### Framework versions

- Transformers 4.25.1
- Pytorch 1.13.0+cu117
- Datasets 2.7.1
- Tokenizers 0.13.2
"""  # noqa: E501 (cards are copied as Trainer writes them)

# transformers 5: warmup given as a fraction through warmup_steps, and an optimizer ftlab cannot run.
CARD_V5_PAGED = """\
---
library_name: transformers
license: apache-2.0
base_model: Qwen/Qwen2.5-0.5B
tags:
- generated_from_trainer
model-index:
- name: qwen-0.5b-sft
  results: []
---

<!-- This model card has been generated automatically according to the information the Trainer had access to. You
should probably proofread and complete it, then remove this comment. -->

# qwen-0.5b-sft

This model is a fine-tuned version of [Qwen/Qwen2.5-0.5B](https://huggingface.co/Qwen/Qwen2.5-0.5B) on an unknown dataset.
It achieves the following results on the evaluation set:
- Loss: 1.2345

## Model description

More information needed

## Intended uses & limitations

More information needed

## Training and evaluation data

More information needed

## Training procedure

### Training hyperparameters

The following hyperparameters were used during training:
- learning_rate: 1e-05
- train_batch_size: 2
- eval_batch_size: 2
- seed: 3
- gradient_accumulation_steps: 16
- total_train_batch_size: 32
- optimizer: Use paged_adamw_8bit with betas=(0.9,0.999) and epsilon=1e-08 and optimizer_args=No additional optimizer arguments
- lr_scheduler_type: reduce_lr_on_plateau
- lr_scheduler_warmup_steps: 0.1
- num_epochs: 1

### Training results

| Training Loss | Epoch | Step | Validation Loss |
|:-------------:|:-----:|:----:|:---------------:|
| 1.3001        | 1.0   | 40   | 1.2345          |


### Framework versions

- Transformers 5.0.0
- Pytorch 2.8.0
- Datasets 4.0.0
- Tokenizers 0.22.0
"""  # noqa: E501 (cards are copied as Trainer writes them)

ALL_CARDS = {
    "old_adam": CARD_OLD_ADAM,
    "enum_multi_gpu": CARD_ENUM_MULTI_GPU,
    "named_fused": CARD_NAMED_FUSED,
    "sgd_no_results": CARD_SGD_NO_RESULTS,
    "old_adafactor": CARD_OLD_ADAFACTOR,
    "v5_paged": CARD_V5_PAGED,
}

SHIPPED = "gpt2-xl_ft_logits_25k"
SHIPPED_CARD = Path(__file__).parents[1] / "ftlab" / "baselines" / "cards" / f"{SHIPPED}.md"


def test_old_adam_card() -> None:
    card = parse_card(CARD_OLD_ADAM, "old.md")
    assert card.base_model == "distilgpt2"  # from the sentence: old front matter has no base_model
    assert card.learning_rate == 2e-05
    assert (card.per_device_train_batch_size, card.per_device_eval_batch_size) == (8, 8)
    assert card.gradient_accumulation_steps == 1
    assert card.total_train_batch_size == 8  # Trainer leaves it out when it equals the per-device size
    assert card.seed == 42
    assert card.optim == "adamw_torch"
    assert (card.adam_beta1, card.adam_beta2, card.adam_epsilon) == (0.9, 0.999, 1e-08)
    assert card.lr_scheduler_type == "linear"
    assert card.warmup_ratio == 0.1 and card.warmup_steps is None
    assert card.num_train_epochs == 3.0 and card.max_steps is None
    assert card.mixed_precision_training == "Native AMP"
    assert card.eval_loss == 3.6413
    assert card.train_loss == 3.7508  # the table's last row
    assert card.perplexity is None
    assert card.warnings == []


def test_enum_multi_gpu_card() -> None:
    card = parse_card(CARD_ENUM_MULTI_GPU, "ddp.md")
    assert card.base_model == "EleutherAI/pythia-160m"
    assert card.learning_rate == 0.0003
    assert card.num_devices == 4
    assert card.gradient_accumulation_steps == 2
    assert card.total_train_batch_size == 128
    assert card.total_eval_batch_size == 32
    assert card.optim == "adamw_torch"
    assert (card.adam_beta1, card.adam_beta2) == (0.9, 0.95)
    assert card.lr_scheduler_type == "cosine"
    assert card.warmup_steps == 50 and card.warmup_ratio is None
    assert card.max_steps == 500 and card.num_train_epochs is None
    assert (card.eval_loss, card.train_loss, card.perplexity) == (2.5, 2.6012, 12.1825)
    # Consistent batch sizes and perplexity; the only warning is how to keep the batch on one device.
    assert len(card.warnings) == 1
    assert "4 devices" in card.warnings[0] and "gradient_accumulation_steps to 8" in card.warnings[0]


def test_named_fused_card() -> None:
    card = parse_card(CARD_NAMED_FUSED, "fused.md")
    assert card.base_model == "gpt2"
    assert card.optim == "adamw_torch_fused"
    assert (card.adam_beta1, card.adam_beta2, card.adam_epsilon) == (0.9, 0.98, 1e-06)
    assert card.lr_scheduler_type == "cosine_with_restarts"
    assert card.warmup_ratio == 0.05
    assert card.num_train_epochs == 2.0
    assert (card.gradient_accumulation_steps, card.total_train_batch_size) == (4, 128)
    assert card.eval_loss == 1.6554  # no evaluation list: the table's last row
    assert card.train_loss is None  # "No log"
    assert card.perplexity is None
    assert card.warnings == []


def test_sgd_card_without_results() -> None:
    card = parse_card(CARD_SGD_NO_RESULTS, "sgd.md")
    assert card.optim == "sgd"
    assert card.adam_beta1 is card.adam_beta2 is card.adam_epsilon is None
    assert card.lr_scheduler_type == "constant"
    assert card.num_train_epochs == 1.0
    assert card.eval_loss is card.train_loss is card.perplexity is None
    assert card.warnings == []


def test_old_adafactor_card() -> None:
    card = parse_card(CARD_OLD_ADAFACTOR, "adafactor.md")
    assert card.base_model == "facebook/opt-125m"
    assert card.optim == "adafactor"
    assert card.lr_scheduler_type == "constant_with_warmup"
    assert card.warmup_steps == 100
    assert card.max_steps == 2000
    assert card.eval_loss == 3.0021 and card.train_loss is None
    assert any("label_smoothing_factor: 0.1" in warning for warning in card.warnings)


def test_v5_card_with_unknown_optimizer_and_scheduler() -> None:
    card = parse_card(CARD_V5_PAGED, "v5.md")
    assert card.warmup_ratio == 0.1 and card.warmup_steps is None  # transformers 5: warmup_steps < 1 is a ratio
    assert card.optim is None  # ftlab cannot run paged_adamw_8bit; its betas still describe the run
    assert (card.adam_beta1, card.adam_beta2) == (0.9, 0.999)
    assert card.lr_scheduler_type is None
    assert any("paged_adamw_8bit" in warning for warning in card.warnings)
    assert any("reduce_lr_on_plateau" in warning for warning in card.warnings)
    assert (card.eval_loss, card.train_loss) == (1.2345, 1.3001)


@pytest.mark.parametrize("name", [*ALL_CARDS, SHIPPED])
def test_training_settings_are_accepted_by_train_config(name: str) -> None:
    card = load_builtin(name) if name == SHIPPED else parse_card(ALL_CARDS[name], f"{name}.md")
    settings = card.training_settings()
    assert None not in settings.values()
    config = TrainConfig(**settings)
    assert config.learning_rate == card.learning_rate


def test_shipped_card() -> None:
    card = load_builtin(SHIPPED)
    assert card.source == f"builtin:{SHIPPED}"
    assert card.base_model == "gpt2-xl"
    assert card.learning_rate == 5e-07
    assert (card.per_device_train_batch_size, card.per_device_eval_batch_size) == (4, 4)
    assert (card.gradient_accumulation_steps, card.total_train_batch_size) == (32, 128)
    assert (card.adam_beta1, card.adam_beta2, card.adam_epsilon) == (0.9, 0.999, 1e-08)
    assert card.optim == "adamw_torch"
    assert card.lr_scheduler_type == "linear"
    assert card.num_train_epochs == 1.0
    assert card.seed is None
    assert (card.train_loss, card.eval_loss, card.perplexity) == (0.99, 6.2712, 17.583)
    assert len(card.warnings) == 1
    warning = card.warnings[0]
    assert "17.583" in warning and "6.2712" in warning
    assert f"{math.exp(6.2712):.1f}" in warning and warning.split("≈ ")[1].startswith("529")
    assert f"{math.log(17.583):.3f}" in warning  # 2.867, the loss that perplexity would mean


def test_shipped_card_matches_the_shared_copy_and_as_json() -> None:
    assert builtin_baselines() == [SHIPPED]
    data = load_card(SHIPPED_CARD).as_json()
    assert data["source"] == str(SHIPPED_CARD)
    assert set(data) == {
        "source",
        "base_model",
        "learning_rate",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "seed",
        "lr_scheduler_type",
        "num_train_epochs",
        "optim",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "num_devices",
        "total_train_batch_size",
        "eval_loss",
        "train_loss",
        "perplexity",
        "warnings",
    }
    assert data["num_devices"] == 1 and data["seed"] is None


def test_as_json_shows_the_step_budget_and_null_results() -> None:
    data = parse_card(CARD_SGD_NO_RESULTS, "sgd.md").as_json()
    assert data["num_train_epochs"] == 1.0 and "max_steps" not in data
    assert "warmup_ratio" not in data and "warmup_steps" not in data
    assert data["eval_loss"] is data["train_loss"] is data["perplexity"] is None
    steps = parse_card(CARD_ENUM_MULTI_GPU, "ddp.md").as_json()
    assert steps["max_steps"] == 500 and "num_train_epochs" not in steps
    assert steps["warmup_steps"] == 50 and "warmup_ratio" not in steps


def test_total_batch_mismatch_is_a_warning() -> None:
    card = parse_card(CARD_NAMED_FUSED.replace("total_train_batch_size: 128", "total_train_batch_size: 96"), "x.md")
    assert card.total_train_batch_size == 96
    assert len(card.warnings) == 1
    assert "96" in card.warnings[0] and "32 × gradient_accumulation_steps 4 × num_devices 1 = 128" in card.warnings[0]


def test_perplexity_check_survives_a_huge_loss() -> None:
    text = CARD_OLD_ADAFACTOR.replace("- Loss: 3.0021", "- Loss: 1000.0\n- Perplexity: 20.1")
    card = parse_card(text, "huge.md")
    assert card.eval_loss == 1000.0
    assert any("not exp(eval loss 1000)" in warning for warning in card.warnings)


def test_windows_line_endings() -> None:
    card = parse_card(CARD_OLD_ADAM.replace("\n", "\r\n"), "crlf.md")
    assert card.learning_rate == 2e-05 and card.train_loss == 3.7508


def test_bad_value_names_the_key_and_value() -> None:
    with pytest.raises(CardError) as error:
        parse_card(CARD_OLD_ADAM.replace("learning_rate: 2e-05", "learning_rate: abc"), "bad.md")
    problem = error.value.problems[0]
    assert problem.where == "bad.md:learning_rate"
    assert problem.value == "abc"
    assert "learning_rate" in str(error.value) and "'abc'" in str(error.value)


def test_plain_markdown_is_not_a_card(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# My project\n\nSome notes.\n\n## Usage\n\n- run it\n", encoding="utf-8")
    with pytest.raises(CardError) as error:
        load_card(readme)
    problem = error.value.problems[0]
    assert problem.where == str(readme)
    assert "Training hyperparameters" in problem.message
    assert problem.fix is not None and "transformers' Trainer" in problem.fix


def test_card_without_hyperparameters_is_not_a_card() -> None:
    start, end = CARD_OLD_ADAM.index("The following hyperparameters"), CARD_OLD_ADAM.index("### Training results")
    text = CARD_OLD_ADAM[:start] + "More information needed\n\n" + CARD_OLD_ADAM[end:]
    with pytest.raises(CardError, match="learning_rate"):
        parse_card(text, "empty.md")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="not found"):
        load_card(tmp_path / "nope.md")


def test_model_folder_reads_its_readme(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(CARD_NAMED_FUSED, encoding="utf-8")
    assert load_card(tmp_path).optim == "adamw_torch_fused"


def test_resolve_builtin_name() -> None:
    assert resolve_baseline(SHIPPED).source == f"builtin:{SHIPPED}"
    assert resolve_baseline(f"builtin:{SHIPPED}").learning_rate == 5e-07


def test_resolve_relative_path(tmp_path: Path) -> None:
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "run.md").write_text(CARD_ENUM_MULTI_GPU, encoding="utf-8")
    card = resolve_baseline("cards/run.md", relative_to=tmp_path)
    assert isinstance(card, CardBaseline)
    assert card.source == str(tmp_path / "cards" / "run.md")
    assert card.max_steps == 500


def test_resolve_unknown_name_lists_builtins() -> None:
    with pytest.raises(CardError) as error:
        resolve_baseline("gpt2-xl_typo")
    assert SHIPPED in str(error.value)
    with pytest.raises(CardError, match=SHIPPED):
        load_builtin("nope")


def test_broken_front_matter_is_a_warning_that_costs_only_the_declared_base_model() -> None:
    text = CARD_ENUM_MULTI_GPU.replace("base_model: EleutherAI/pythia-160m", "base_model: [EleutherAI/pythia-160m")
    card = parse_card(text, "broken.md")
    assert card.warnings[0] == "The card's YAML front matter is not valid YAML; it was ignored."
    assert card.base_model == "EleutherAI/pythia-160m"  # from the "fine-tuned version of" sentence
    assert card.learning_rate == 0.0003 and card.max_steps == 500


def test_front_matter_that_is_no_metadata_is_a_warning() -> None:
    text = "---\n- a list\n- not a mapping\n---\n\n" + CARD_NAMED_FUSED[CARD_NAMED_FUSED.index("<!--") :]
    card = parse_card(text, "list.md")
    assert len(card.warnings) == 1 and "not model card metadata" in card.warnings[0]
    assert card.base_model == "gpt2" and card.optim == "adamw_torch_fused"


def test_card_without_front_matter() -> None:
    card = parse_card(CARD_NAMED_FUSED[CARD_NAMED_FUSED.index("<!--") :], "bare.md")
    assert card.warnings == []
    assert card.base_model == "gpt2" and card.learning_rate == 6e-05


def test_base_model_list_takes_the_first_and_a_bad_model_index_costs_nothing() -> None:
    text = CARD_NAMED_FUSED.replace("base_model: gpt2", "base_model:\n- gpt2-medium\n- gpt2").replace(
        "model-index:\n- name: gpt2-tinystories\n  results: []", "model-index: 5"
    )
    card = parse_card(text, "merge.md")
    assert card.base_model == "gpt2-medium"
    assert card.warnings == []
