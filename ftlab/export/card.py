"""The exported model's README.md: the layout transformers' Trainer writes, plus how the sweep found it.

The hyperparameter list is written by the table ``ftlab baseline from-card`` reads cards with
(``ftlab.baselines.trainer_format``), in Trainer's own keys and formats, so ftlab (and anyone's tooling for Trainer
cards) reads the winner's recipe back exactly. The front matter is written by huggingface_hub's ``ModelCardData``.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import tokenizers
import torch
import transformers
from huggingface_hub import ModelCardData

import ftlab
from ftlab.baselines.trainer_format import TRAINER_LINES
from ftlab.config import SweepConfig, TrainConfig
from ftlab.sweep.confirm import Confirmation


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
    extra_sections: list[str] = field(default_factory=list)
    """Markdown sections, each starting with a ``## `` or ``### `` heading, placed before "Framework versions"."""

    def __post_init__(self) -> None:
        for section in self.extra_sections:
            if not section.startswith(("## ", "### ")):
                # Without its own heading the text would run on in the section before it.
                raise ValueError(f"an extra card section must start with a '## ' or '### ' heading, got {section!r}")


def _dataset_phrase(sweep: SweepConfig) -> str:
    data = sweep.data
    if data.dataset:
        name = f"{data.dataset} ({data.dataset_config})" if data.dataset_config else data.dataset
        return f"the {name} dataset"
    return "local files (" + ", ".join(data.train_files or []) + ")"


def render_card(facts: CardFacts) -> str:
    """The README.md text."""
    sweep, train = facts.sweep, facts.train
    base = sweep.model.name_or_path
    # The YAML metadata block, with Trainer's keys; ``model-index`` names the model, with no eval results.
    metadata = ModelCardData(
        library_name="transformers",
        base_model=base,
        tags=["generated_from_trainer", "ftlab"],
        model_name=facts.model_name,
        # An empty list, not None, is what makes ModelCardData write `model-index: [{name, results: []}]` as Trainer
        # does; an EvalResult would need a hub dataset id and task, which local files do not have.
        eval_results=[],
    )
    # A hub id links to its page; a local folder (the demo model, a model of your own) is named as it is.
    base_link = base if Path(base).exists() else f"[{base}](https://huggingface.co/{base})"
    absolute, relative = facts.gain
    lines = [
        f"---\n{metadata.to_yaml()}\n---\n",
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
        *(line for entry in TRAINER_LINES if (line := entry.write(train)) is not None),
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
    for section in facts.extra_sections:
        lines += ["", section.rstrip("\n")]
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


def confirmation_section(found: Confirmation, exported_trial: int) -> str:
    """The card section for ``ftlab confirm``'s verdict. Its heading is not one the Trainer layout knows, so
    ``ftlab baseline from-card`` reads past it."""
    winner = found.winner
    lines = [
        "### Confirmation over seeds",
        "",
        f"`ftlab confirm` trained the baseline and the sweep's best configurations again with the training seeds "
        f"{', '.join(map(str, found.seeds))} (data order and dropout change; the validation split does not) and "
        f"compared each with the baseline on {', '.join(found.metrics)} by {found.method()}. Confirmed: "
        f"{found.selection or 'the configurations listed'}.",
        "",
        found.table(),
        "",
        found.sentence() + ".",
    ]
    if winner is not None and winner.candidate.trial != exported_trial:
        lines += [
            "",
            f"These weights are trial {exported_trial}'s, the sweep's best single run; by mean over seeds the best "
            f"configuration is trial {winner.candidate.trial}'s.",
        ]
    return "\n".join(lines)
