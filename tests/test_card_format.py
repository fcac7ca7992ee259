"""The card ftlab exports reads back, through the same Trainer-format table, to the recipe it was written from."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from ftlab.baselines import CardBaseline, parse_card
from ftlab.baselines.trainer_format import TRAINER_LINES
from ftlab.config import SweepConfig, TrainConfig
from ftlab.export.card import CardFacts, render_card

SWEEP = SweepConfig.model_validate(
    {"name": "roundtrip", "model": {"name_or_path": "gpt2"}, "data": {"train_files": ["train.txt"]}}
)

# Every line the writer has: accumulation and its total, a warmup ratio, epochs, bf16 ...
ACCUMULATING_BF16 = TrainConfig(
    learning_rate=3e-4,
    per_device_train_batch_size=4,
    per_device_eval_batch_size=16,
    gradient_accumulation_steps=8,
    seed=7,
    optim="adamw_torch_fused",
    adam_beta1=0.85,
    adam_beta2=0.98,
    adam_epsilon=1e-6,
    lr_scheduler_type="cosine",
    warmup_ratio=0.05,
    num_train_epochs=2.5,
    weight_decay=0.01,
    max_grad_norm=0.5,
    bf16=True,
)
# ... and the other branch of each: no accumulation, warmup steps, a step budget, no mixed precision.
PLAIN_STEPS = TrainConfig(
    learning_rate=5e-05,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    seed=0,
    optim="sgd",
    lr_scheduler_type="constant_with_warmup",
    warmup_steps=20,
    max_steps=300,
    weight_decay=0.0,
    max_grad_norm=1.0,
    bf16=False,
)


def facts_for(train: TrainConfig, extra_sections: list[str] | None = None) -> CardFacts:
    return CardFacts(
        model_name="roundtrip-trial-3",
        sweep=SWEEP,
        train=train,
        eval_loss=2.5,
        perplexity=12.1825,
        train_loss=2.75,
        tokens_seen=123_456,
        trial_number=3,
        trials_run=5,
        study_name="roundtrip",
        mlflow_run_id="abc123",
        baseline={"trial": 0, "eval_loss": 2.6, "perplexity": 13.4637},
        gain=(0.1, 0.0385),
        extra_sections=extra_sections or [],
    )


def read_back(train: TrainConfig, extra_sections: list[str] | None = None) -> CardBaseline:
    return parse_card(render_card(facts_for(train, extra_sections)), "README.md")


def test_accumulation_warmup_ratio_epochs_and_bf16_round_trip() -> None:
    card = read_back(ACCUMULATING_BF16)
    assert card.learning_rate == 3e-4
    assert (card.per_device_train_batch_size, card.per_device_eval_batch_size) == (4, 16)
    assert card.seed == 7
    assert (card.gradient_accumulation_steps, card.total_train_batch_size) == (8, 32)
    assert card.optim == "adamw_torch_fused"
    assert (card.adam_beta1, card.adam_beta2, card.adam_epsilon) == (0.85, 0.98, 1e-6)
    assert card.lr_scheduler_type == "cosine"
    assert card.warmup_ratio == 0.05 and card.warmup_steps is None
    assert card.num_train_epochs == 2.5 and card.max_steps is None
    assert (card.weight_decay, card.max_grad_norm) == (0.01, 0.5)
    assert card.mixed_precision_training == "Native AMP"
    assert card.warnings == []


def test_no_accumulation_warmup_steps_and_step_budget_round_trip() -> None:
    card = read_back(PLAIN_STEPS)
    assert card.learning_rate == 5e-05
    assert (card.gradient_accumulation_steps, card.total_train_batch_size) == (1, 8)
    assert card.optim == "sgd"
    assert (card.adam_beta1, card.adam_beta2, card.adam_epsilon) == (0.9, 0.999, 1e-8)  # written for every optim
    assert card.lr_scheduler_type == "constant_with_warmup"
    assert card.warmup_steps == 20 and card.warmup_ratio is None
    assert card.max_steps == 300 and card.num_train_epochs is None
    assert (card.weight_decay, card.max_grad_norm) == (0.0, 1.0)
    assert card.mixed_precision_training is None
    assert card.warnings == []


@pytest.mark.parametrize("train", [ACCUMULATING_BF16, PLAIN_STEPS], ids=["accumulating_bf16", "plain_steps"])
def test_every_setting_the_card_states_is_the_trained_one(train: TrainConfig) -> None:
    card = read_back(train)
    settings = card.training_settings()
    assert settings == {name: getattr(train, name) for name in settings}
    assert TrainConfig(**settings).model_dump(include=set(settings)) == train.model_dump(include=set(settings))
    assert (card.base_model, card.eval_loss, card.train_loss, card.perplexity) == ("gpt2", 2.5, 2.75, 12.1825)


@pytest.mark.parametrize("train", [ACCUMULATING_BF16, PLAIN_STEPS], ids=["accumulating_bf16", "plain_steps"])
def test_each_line_reads_back_only_its_declared_fields(train: TrainConfig) -> None:
    keys = [entry.key for entry in TRAINER_LINES]
    assert len(keys) == len(set(keys))
    for entry in TRAINER_LINES:
        assert set(entry.fields) <= set(CardBaseline.model_fields), entry.key
        line = entry.write(train)
        if line is not None:
            read = entry.read(line.removeprefix(f"- {entry.key}: "), "README.md", [])
            assert read and set(read) <= set(entry.fields), entry.key


def test_front_matter_loads_with_huggingface_hub() -> None:
    metadata = ModelCard(render_card(facts_for(ACCUMULATING_BF16))).data
    assert metadata.library_name == "transformers"
    assert metadata.base_model == "gpt2"
    assert metadata.tags == ["generated_from_trainer", "ftlab"]
    assert metadata.model_name == "roundtrip-trial-3"
    assert metadata.to_dict()["model-index"] == [{"name": "roundtrip-trial-3", "results": []}]


SEEDS_SECTION = """\
### Confirmation over seeds

The winner and the baseline, re-trained with three more seeds:

| seed | Training Loss | Validation Loss | Perplexity |
|:----:|:-------------:|:---------------:|:----------:|
| 1    | 9.1           | 9.9             | 19930.4    |
| 2    | 9.2           | 9.8             | 18033.7    |

- Loss: 9.9
- learning_rate: 1.0
"""


def test_extra_section_does_not_change_what_is_read_back() -> None:
    text = render_card(facts_for(ACCUMULATING_BF16, [SEEDS_SECTION]))
    assert text.index("### Confirmation over seeds") < text.index("### Framework versions")
    assert read_back(ACCUMULATING_BF16, [SEEDS_SECTION]) == read_back(ACCUMULATING_BF16)


def test_extra_section_needs_a_heading() -> None:
    with pytest.raises(ValueError, match="heading"):
        facts_for(ACCUMULATING_BF16, ["Confirmation over seeds: none"])
