"""Read the model card (README.md) that transformers' Trainer writes, as a baseline for a sweep.

Trainer's ``create_model_card`` writes the training settings as a markdown list under
``### Training hyperparameters`` and the results as an "It achieves the following results on the evaluation set:"
list and/or a ``### Training results`` table. The wording changed between transformers versions. The layout and the
results are read here; each hyperparameter line, in every shape known to ftlab, through the table in
``ftlab.baselines.trainer_format`` (the one ftlab's export writes by); the front matter by huggingface_hub.
Settings are turned into ``TrainingArguments`` names; what does not add up (batch sizes, perplexity against loss)
becomes a sentence in ``warnings``, never an exception, because a card is a record of someone else's run and the
user still wants to see what it says.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from pydantic import BaseModel, ConfigDict

from ftlab.baselines.trainer_format import TRAINER_LINES, number
from ftlab.config import TRAIN_KEYS
from ftlab.errors import CardError
from ftlab.figures import perplexity as safe_exp  # exp, inf where it would overflow
from ftlab.filekind import not_a_file_message

NOT_A_CARD_FIX = "pass a README.md written by transformers' Trainer (it has a '### Training hyperparameters' list)"

_RELATIVE_TOLERANCE = 0.01  # reported perplexity may differ from exp(loss) by rounding, not more


# Left out of a baseline's JSON shape; and shown there only where the card states them (of each either-or pair it
# states one, as Trainer writes one; only ftlab's own cards state weight_decay and max_grad_norm).
_NOT_IN_JSON = frozenset({"total_eval_batch_size", "mixed_precision_training"})
_JSON_IF_STATED = frozenset(
    {"warmup_ratio", "warmup_steps", "num_train_epochs", "max_steps", "weight_decay", "max_grad_norm"}
)


class CardBaseline(BaseModel):
    """What a Trainer model card says about its run, in ``TrainingArguments`` names.

    Settings that the card does not state are ``None`` (ftlab's defaults apply), except the two that Trainer leaves
    out when they are 1: ``gradient_accumulation_steps`` and ``num_devices``. ``total_train_batch_size`` and
    ``total_eval_batch_size`` are computed when the card leaves them out, since Trainer only writes them when they
    differ from the per-device sizes.
    """

    model_config = ConfigDict(extra="forbid")

    source: str
    base_model: str | None = None
    learning_rate: float | None = None
    per_device_train_batch_size: int | None = None
    per_device_eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    seed: int | None = None
    lr_scheduler_type: str | None = None
    warmup_ratio: float | None = None
    warmup_steps: int | None = None
    num_train_epochs: float | None = None
    max_steps: int | None = None
    optim: str | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    adam_epsilon: float | None = None
    num_devices: int = 1
    total_train_batch_size: int | None = None
    total_eval_batch_size: int | None = None
    mixed_precision_training: str | None = None
    eval_loss: float | None = None
    train_loss: float | None = None
    perplexity: float | None = None
    # After the results: the JSON shape follows this order (training_settings keeps TrainingArguments' own).
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    warnings: list[str] = []

    def training_settings(self) -> dict[str, Any]:
        """The card's settings that ``TrainConfig`` knows, leaving out the ones the card does not state.

        Returns:
            A mapping ready for ``TrainConfig(**settings)``.
        """
        return self.model_dump(include=set(TRAIN_KEYS), exclude_none=True)

    def as_json(self) -> dict[str, Any]:
        """The baseline as a JSON-ready mapping: settings, effective batch, base model, results, warnings, source.

        Of ``warmup_ratio``/``warmup_steps`` and of ``num_train_epochs``/``max_steps`` only the one the card states
        appears; the results are ``null`` where the card reports none.
        """
        shown = self.model_dump(exclude=set(_NOT_IN_JSON))  # new containers: the caller may change them
        return {name: value for name, value in shown.items() if value is not None or name not in _JSON_IF_STATED}


def load_card(path: str | Path) -> CardBaseline:
    """Read a model card file (or the README.md of a model folder) and parse it.

    Raises:
        CardError: the file is missing, unreadable, not UTF-8, or not a card written by transformers' Trainer.
    """
    path = Path(path)
    if path.is_dir() and (path / "README.md").is_file():
        path = path / "README.md"
    if not path.is_file():
        raise CardError.single(
            not_a_file_message(path, "model card"),
            where=str(path),
            fix="name a README.md file (or a model folder holding one), or use a built-in baseline name",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CardError.single(f"cannot read the model card: {error}", where=str(path), fix=NOT_A_CARD_FIX) from None
    return parse_card(text, str(path))


def parse_card(text: str, source: str) -> CardBaseline:
    """Parse the text of a model card written by transformers' Trainer.

    Args:
        text: the card's markdown, front matter included.
        source: where it came from (a path or ``builtin:<name>``), used in errors and kept in the result.

    Raises:
        CardError: the text has no ``### Training hyperparameters`` list with a ``learning_rate`` line, or a value
            in it is not what Trainer writes (``learning_rate: abc``).
    """
    text = text.replace("\r\n", "\n")
    metadata, body, warnings = _front_matter(text)
    items = _hyperparameter_items(body, source)
    fields: dict[str, Any] = {"source": source, "base_model": _base_model(metadata, body)}
    fields |= _hyperparameters(items, source, warnings)
    fields |= _results(body, source)
    warnings += _batch_warnings(fields)
    if mismatch := _perplexity_warning(fields):
        warnings.append(mismatch)
    return CardBaseline(**fields, warnings=warnings)


# --- card layout -----------------------------------------------------------------------------------------------


def _front_matter(text: str) -> tuple[ModelCardData, str, list[str]]:
    """The card's metadata as huggingface_hub reads it, and the markdown after it.

    A broken front matter only costs the base model (the "fine-tuned version of" sentence names it too), so it is
    a warning; a card without one is fine.
    """
    block = REGEX_YAML_BLOCK.search(text)
    if block is None:
        return ModelCardData(), text, []  # asking ModelCard would only log that it found no metadata
    try:
        # Tolerant of a model-index the hub cannot parse: the card is a record of someone else's run.
        card = ModelCard(text, ignore_metadata_errors=True)
    except yaml.YAMLError:
        problem = "is not valid YAML"
    except (ValueError, TypeError) as error:
        problem = f"is not model card metadata ({error})"  # valid YAML, but a list, or `tags: 5`
    else:
        return card.data, card.text, []
    return ModelCardData(), text[block.end() :], [f"The card's YAML front matter {problem}; it was ignored."]


def _section(body: str, title: str) -> str | None:
    """The text under a markdown heading called ``title`` (any level), up to the next heading."""
    heading = re.search(rf"^#+[ \t]*{re.escape(title)}[ \t]*$", body, re.MULTILINE | re.IGNORECASE)
    if heading is None:
        return None
    return re.split(r"^#", body[heading.end() :], maxsplit=1, flags=re.MULTILINE)[0]


def _list_items(block: str) -> dict[str, str]:
    """``- key: value`` lines of a markdown list, in order; other lines (wrapped optimizer args) are skipped."""
    return {
        match.group(1).strip(): match.group(2).strip()
        for match in re.finditer(r"^[-*][ \t]+([^:\n]+?):[ \t]*(.*)$", block, re.MULTILINE)
    }


def _hyperparameter_items(body: str, source: str) -> dict[str, str]:
    section = _section(body, "Training hyperparameters")
    if section is None:
        raise CardError.single(
            "not a model card written by transformers' Trainer: no '### Training hyperparameters' section",
            where=source,
            fix=NOT_A_CARD_FIX,
        )
    items = _list_items(section)
    if "learning_rate" not in items:
        raise CardError.single(
            "not a model card written by transformers' Trainer: its 'Training hyperparameters' "
            "section has no `learning_rate` line",
            where=source,
            fix=NOT_A_CARD_FIX,
        )
    return items


def _base_model(metadata: ModelCardData, body: str) -> str | None:
    """The base model from ``base_model:`` in the front matter, else from the "fine-tuned version of" sentence."""
    declared = metadata.base_model
    if isinstance(declared, list) and declared:
        declared = declared[0]  # the hub allows a list (merges); the first is the one fine-tuned
    if isinstance(declared, str) and declared.strip():
        return declared.strip()
    sentence = re.search(r"fine-tuned version of \[([^\]]+)\]", body)
    return sentence.group(1).strip() if sentence else None


# --- training hyperparameters ----------------------------------------------------------------------------------

_LINES = {line.key: line for line in TRAINER_LINES}


def _hyperparameters(items: dict[str, str], source: str, warnings: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, raw in items.items():
        line = _LINES.get(key)
        if line is None:
            warnings.append(f"The card sets {key}: {raw}, which ftlab does not carry over.")
        else:
            fields |= line.read(raw, source, warnings)
    if fields.get("warmup_steps") and fields.get("warmup_ratio"):
        # TrainingArguments lets warmup_steps win; ftlab refuses both, so keep the one that was in effect.
        warnings.append(
            f"The card sets both warmup_steps {fields['warmup_steps']} and warmup_ratio "
            f"{fields['warmup_ratio']}; Trainer used the steps, so the ratio was dropped."
        )
        fields["warmup_ratio"] = None
    return fields


# --- results ---------------------------------------------------------------------------------------------------

# Metric names as Trainer writes them (lower-cased) → CardBaseline field.
_EVAL_LIST_KEYS = {"loss": "eval_loss", "perplexity": "perplexity"}
_RESULTS_KEYS = {"training loss": "train_loss", "validation loss": "eval_loss", "perplexity": "perplexity"}


def _results(body: str, source: str) -> dict[str, float | None]:
    """Reported results: the evaluation list wins for eval loss and perplexity, being the final evaluation."""
    section = _section(body, "Training results") or ""
    results = _results_table(section, source) if re.search(r"^\|", section, re.MULTILINE) else {}
    results |= _named_results(_list_items(section), _RESULTS_KEYS, source)
    results |= _named_results(_evaluation_list(body), _EVAL_LIST_KEYS, source)
    return results


def _evaluation_list(body: str) -> dict[str, str]:
    found = re.search(r"It achieves the following results on the evaluation set:[ \t]*\n((?:[-*][^\n]*\n?)*)", body)
    return _list_items(found.group(1)) if found else {}


def _named_results(items: dict[str, str], names: dict[str, str], source: str) -> dict[str, float | None]:
    return {
        # Trainer writes "No log" when nothing was logged yet.
        names[key.lower()]: None if raw.strip().lower() == "no log" else number(key, raw, source)
        for key, raw in items.items()
        if key.lower() in names
    }


def _results_table(section: str, source: str) -> dict[str, float | None]:
    """The last row of the ``| Training Loss | Epoch | Step | Validation Loss | ... |`` table."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.strip().startswith("|")
    ]
    rows = [row for row in rows if not all(re.fullmatch(r":?-+:?", cell) for cell in row)]  # drop |:---:| lines
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return _named_results(dict(zip(header, last, strict=False)), _RESULTS_KEYS, source)


# --- derived values and checks ---------------------------------------------------------------------------------


def _batch_warnings(fields: dict[str, Any]) -> list[str]:
    """Put back the totals that Trainer leaves out when they equal the per-device sizes, and say where the card's
    batch sizes do not add up; ftlab trains on one device, so a card's batch over several needs more accumulation."""
    devices = fields.get("num_devices", 1)
    accumulation = fields.get("gradient_accumulation_steps", 1)
    warnings = []
    if (train := fields.get("per_device_train_batch_size")) is not None:
        expected = train * accumulation * devices
        if (total := fields.setdefault("total_train_batch_size", expected)) != expected:
            warnings.append(
                f"The card's total_train_batch_size {total} is not train_batch_size {train} × "
                f"gradient_accumulation_steps {accumulation} × num_devices {devices} = {expected}; "
                "ftlab uses the per-device batch size and accumulation as written."
            )
    if (evaluation := fields.get("per_device_eval_batch_size")) is not None:
        expected = evaluation * devices
        if (total := fields.setdefault("total_eval_batch_size", expected)) != expected:
            warnings.append(
                f"The card's total_eval_batch_size {total} is not eval_batch_size {evaluation} × num_devices "
                f"{devices} = {expected}."
            )
    if train is not None and devices != 1:
        warnings.append(
            f"The card trained on {devices} devices and ftlab trains on one: to keep its effective batch of "
            f"{train * accumulation * devices}, set gradient_accumulation_steps to {accumulation * devices} "
            f"(the card's {accumulation} is per device)."
        )
    return warnings


def _perplexity_warning(fields: dict[str, Any]) -> str | None:
    perplexity, loss = fields.get("perplexity"), fields.get("eval_loss")
    if perplexity is None or loss is None:
        return None
    if perplexity <= 0:
        return f"The card's perplexity {perplexity:g} is not a perplexity (it must be positive)."
    # Compare in log space so that a huge loss cannot overflow: |ppl / exp(loss) - 1| is the relative difference.
    if abs(safe_exp(math.log(perplexity) - loss) - 1) <= _RELATIVE_TOLERANCE:
        return None
    expected = safe_exp(loss)
    shown = f"{expected:.1f}" if expected < 1e6 else f"{expected:.4g}"
    return (
        f"The card's perplexity {perplexity:g} is not exp(eval loss {loss:g}) ≈ {shown}; a perplexity of "
        f"{perplexity:g} would mean an eval loss of {math.log(perplexity):.3f}. "
        "Trust neither without re-measuring."
    )
