"""The exported model's README.md: the layout transformers' Trainer writes, plus how the sweep found it.

The hyperparameter list uses Trainer's own keys and formats, so ``ftlab baseline from-card`` (and anyone's tooling for
Trainer cards) reads the winner's recipe back exactly.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

import datasets
import tokenizers
import torch
import transformers

import ftlab
from ftlab.config import SweepConfig, TrainConfig


@dataclass
class CardFacts:
    """Everything the card states; each number comes from the study or the verification evaluation."""

    model_name: str
    sweep: SweepConfig
    train: TrainConfig
    eval_loss: float
    perplexity: float
    train_loss: float | None
    tokens_seen: int | None
    trial_number: int
    trials_run: int
    study_name: str
    mlflow_run_id: str | None
    baseline: dict[str, Any] | None  # the baseline trial's figures (trial, eval_loss, perplexity, params)
    gain: tuple[float | None, float | None]


def _dataset_phrase(sweep: SweepConfig) -> str:
    data = sweep.data
    if data.dataset:
        name = f"{data.dataset} ({data.dataset_config})" if data.dataset_config else data.dataset
        return f"the {name} dataset"
    return "local files (" + ", ".join(data.train_files or []) + ")"


def _hyperparameter_lines(train: TrainConfig) -> list[str]:
    """Trainer's "- key: value" list, in Trainer's order and formats."""
    lines = [
        f"- learning_rate: {train.learning_rate}",
        f"- train_batch_size: {train.per_device_train_batch_size}",
        f"- eval_batch_size: {train.per_device_eval_batch_size}",
        f"- seed: {train.seed}",
    ]
    if train.gradient_accumulation_steps > 1:
        lines.append(f"- gradient_accumulation_steps: {train.gradient_accumulation_steps}")
        lines.append(f"- total_train_batch_size: {train.total_train_batch_size}")
    lines.append(
        f"- optimizer: Use {train.optim} with betas=({train.adam_beta1},{train.adam_beta2}) and "
        f"epsilon={train.adam_epsilon} and optimizer_args=No additional optimizer arguments"
    )
    lines.append(f"- lr_scheduler_type: {train.lr_scheduler_type}")
    if train.warmup_ratio > 0:
        lines.append(f"- lr_scheduler_warmup_ratio: {train.warmup_ratio}")
    if train.warmup_steps > 0:
        lines.append(f"- lr_scheduler_warmup_steps: {train.warmup_steps}")
    if train.max_steps > 0:
        lines.append(f"- training_steps: {train.max_steps}")
    else:
        lines.append(f"- num_epochs: {train.num_train_epochs}")
    # Not in Trainer's list, but part of the recipe a sweep may have searched: keep them so the card is complete.
    lines.append(f"- weight_decay: {train.weight_decay}")
    lines.append(f"- max_grad_norm: {train.max_grad_norm}")
    if train.bf16:
        lines.append("- mixed_precision_training: Native AMP")
    return lines


def render_card(facts: CardFacts) -> str:
    """The README.md text."""
    sweep, train = facts.sweep, facts.train
    base = sweep.model.name_or_path
    base_link = base if base.startswith("demo://") else f"[{base}](https://huggingface.co/{base})"
    absolute, relative = facts.gain
    lines = [
        "---",
        "library_name: transformers",
        f"base_model: {base}",
        "tags:",
        "- generated_from_trainer",
        "- ftlab",
        "model-index:",
        f"- name: {facts.model_name}",
        "  results: []",
        "---",
        "",
        f"# {facts.model_name}",
        "",
        f"This model is a fine-tuned version of {base_link} on {_dataset_phrase(sweep)}.",
        "It achieves the following results on the evaluation set:",
        f"- Loss: {facts.eval_loss:.4f}",
        f"- Perplexity: {facts.perplexity:.4f}",
        "",
        "## Model description",
        "",
        f"The best trial of the ftlab sweep `{facts.study_name}`: an Optuna study around a documented baseline recipe.",
        "",
        "## Training procedure",
        "",
        "### Training hyperparameters",
        "",
        "The following hyperparameters were used during training:",
        *_hyperparameter_lines(train),
        "",
        "### Training results",
        "",
        "- Training loss: " + (f"{facts.train_loss:.4f}" if facts.train_loss is not None else "not recorded"),
        f"- Validation loss: {facts.eval_loss:.4f}",
        f"- Perplexity: {facts.perplexity:.4f}",
        "- Tokens seen: " + (f"{facts.tokens_seen:,}" if facts.tokens_seen is not None else "not recorded"),
        "",
        "Perplexity is exp(validation loss); the validation loss is the token-weighted mean negative log-likelihood",
        "over the whole validation split, re-measured on these exact weights before export.",
        "",
        "### How the sweep found it",
        "",
        f"- Study: {facts.study_name}; trial #{facts.trial_number} of {facts.trials_run} run",
        f"- Sampler: {sweep.sampler.name} (seed {sweep.sampler.seed}); pruner: {sweep.pruner.name}",
        f"- Objective: {', '.join(f'{o.metric} ({o.direction})' for o in sweep.objectives)}",
        f"- MLflow run: {facts.mlflow_run_id}",
    ]
    if facts.baseline is not None:
        lines += [
            "",
            "| | baseline | this model |",
            "|---|---|---|",
            f"| trial | {facts.baseline['trial']} | {facts.trial_number} |",
            f"| eval loss | {facts.baseline['eval_loss']:.4f} | {facts.eval_loss:.4f} |",
            f"| perplexity | {facts.baseline['perplexity']:.4f} | {facts.perplexity:.4f} |",
        ]
        if absolute is not None and relative is not None:
            lines += ["", f"Gain over the baseline: {absolute:.4f} ({relative:+.1%}) on {sweep.objectives[0].metric}."]
    lines += [
        "",
        "### Framework versions",
        "",
        f"- ftlab {ftlab.__version__}",
        f"- Transformers {transformers.__version__}",
        f"- Pytorch {torch.__version__}",
        f"- Datasets {datasets.__version__}",
        f"- Tokenizers {tokenizers.__version__}",
        f"- Python {platform.python_version()}",
        "",
    ]
    return "\n".join(lines)
