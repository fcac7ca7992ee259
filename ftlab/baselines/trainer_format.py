"""The "Training hyperparameters" list of a Trainer model card: one table that ftlab both reads and writes it by.

transformers' Trainer writes a run's settings as ``- key: value`` lines in a fixed order, leaving some out (the
accumulation lines while accumulation is 1, the warmup line that does not apply). ``TRAINER_LINES`` has one entry per
key, in that order: the ``TrainingArguments`` names it maps to, how to read every shape a transformers version wrote,
and how ftlab writes it. ``ftlab.baselines.card`` parses cards through it and ``ftlab.export.card`` writes the exported
model's list through it, so what ftlab writes reads back to the same recipe.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from ftlab.config import OptimizerName, SchedulerName, TrainConfig
from ftlab.errors import CardError

BAD_VALUE_FIX = "correct the value in the card, or write the settings inline under `baseline:` in the sweep file"

_OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
_SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)

Converter = Callable[[str, str, str], Any]
"""(key, value as written, source) → the value; raises ``CardError`` for a value Trainer would not have written."""
Reader = Callable[[str, str, str, list[str]], dict[str, Any]]
"""(key, value as written, source, warnings) → ``CardBaseline`` fields; what ftlab cannot use becomes a warning."""
Writer = Callable[[TrainConfig], object]
"""A run's settings → the value to write, or ``None`` where Trainer leaves the line out."""
Condition = Callable[[TrainConfig], bool]


@dataclass(frozen=True)
class TrainerLine:
    """One ``- key: value`` line of Trainer's ``### Training hyperparameters`` list."""

    key: str
    """The key as Trainer writes it (``train_batch_size``)."""
    fields: tuple[str, ...]
    """The ``CardBaseline`` fields the line sets, named as in ``TrainingArguments`` (and ``TrainConfig``)."""
    reader: Reader
    writer: Writer | None
    """``None``: ftlab reads the line but never writes it (it trains on one device)."""

    def read(self, raw: str, source: str, warnings: list[str]) -> dict[str, Any]:
        """The fields this line sets, from its value as written in the card at ``source``.

        Raises:
            CardError: the value is not one Trainer writes (``learning_rate: abc``).
        """
        return self.reader(self.key, raw, source, warnings)

    def write(self, train: TrainConfig) -> str | None:
        """The line as Trainer would write it for ``train``, or ``None`` where Trainer leaves it out."""
        value = None if self.writer is None else self.writer(train)
        return None if value is None else f"- {self.key}: {value}"


# --- values ----------------------------------------------------------------------------------------------------


def _bad_value(key: str, raw: str, source: str, expected: str) -> CardError:
    return CardError.single(f"`{key}` is not {expected}", where=f"{source}:{key}", value=raw, fix=BAD_VALUE_FIX)


def number(key: str, raw: str, source: str) -> float:
    """A finite number as written in the card.

    Raises:
        CardError: ``raw`` is not a finite number.
    """
    try:
        value = float(raw)
    except ValueError:
        raise _bad_value(key, raw, source, "a number") from None
    if not math.isfinite(value):
        raise _bad_value(key, raw, source, "a finite number")
    return value


def _positive_number(key: str, raw: str, source: str) -> float:
    value = number(key, raw, source)
    if value <= 0:
        raise _bad_value(key, raw, source, "a positive number")
    return value


def _whole_number(key: str, raw: str, source: str) -> int:
    value = number(key, raw, source)
    if not value.is_integer():
        raise _bad_value(key, raw, source, "a whole number")
    return int(value)


def _positive_whole_number(key: str, raw: str, source: str) -> int:
    value = _whole_number(key, raw, source)
    if value < 1:
        raise _bad_value(key, raw, source, "a whole number of at least 1")
    return value


# --- lines that hold one setting -------------------------------------------------------------------------------


def _always(train: TrainConfig) -> bool:
    return True


def _accumulating(train: TrainConfig) -> bool:
    return train.gradient_accumulation_steps > 1


def _setting(key: str, field: str, convert: Converter, written_if: Condition | None = _always) -> TrainerLine:
    """A line that holds one setting: read into ``field``, written from ``TrainConfig``'s attribute of that name.

    Args:
        written_if: when Trainer writes the line; ``None`` for a line ftlab only reads.
    """

    def read(key: str, raw: str, source: str, warnings: list[str]) -> dict[str, Any]:
        return {field: convert(key, raw, source)}

    def write(train: TrainConfig) -> object:
        return getattr(train, field) if written_if is not None and written_if(train) else None

    return TrainerLine(key, (field,), read, None if written_if is None else write)


# --- the lines with more than one shape ------------------------------------------------------------------------


def _read_nothing(key: str, raw: str, source: str, warnings: list[str]) -> dict[str, Any]:
    return {}


def _read_scheduler(key: str, raw: str, source: str, warnings: list[str]) -> dict[str, Any]:
    # Some transformers versions printed the enum itself ("SchedulerType.LINEAR").
    name = raw.removeprefix("SchedulerType.").strip().lower()
    if name in _SCHEDULERS:
        return {"lr_scheduler_type": name}
    warnings.append(
        f"The card's lr_scheduler_type {raw!r} is not one ftlab can run ({', '.join(_SCHEDULERS)}); "
        "it was left unset, so ftlab's default applies."
    )
    return {"lr_scheduler_type": None}


def _read_warmup_steps(key: str, raw: str, source: str, warnings: list[str]) -> dict[str, Any]:
    """transformers 5 folded warmup_ratio into warmup_steps: a value below 1 is a share of the training steps."""
    value = number(key, raw, source)
    if value < 0:
        raise _bad_value(key, raw, source, "a non-negative number")
    if 0 < value < 1:
        return {"warmup_ratio": value}
    if not value.is_integer():
        raise _bad_value(key, raw, source, "a whole number of steps or a ratio below 1")
    return {"warmup_steps": int(value)}


def _read_mixed_precision(key: str, raw: str, source: str, warnings: list[str]) -> dict[str, Any]:
    return {"mixed_precision_training": raw}


def _write_mixed_precision(train: TrainConfig) -> str | None:
    return "Native AMP" if train.bf16 else None  # Trainer's words for torch autocast, fp16 or bf16


# --- the optimizer line: several shapes to read, one to write --------------------------------------------------

_NO_OPTIMIZER_ARGS = "No additional optimizer arguments"


def _write_optimizer(train: TrainConfig) -> str:
    """The shape of transformers ≥ 4.38, which names the optimizer as ``TrainingArguments.optim`` does."""
    return (
        f"Use {train.optim} with betas=({train.adam_beta1},{train.adam_beta2}) and epsilon={train.adam_epsilon} "
        f"and optimizer_args={_NO_OPTIMIZER_ARGS}"
    )


def _read_optimizer(key: str, raw: str, source: str, warnings: list[str]) -> dict[str, Any]:
    """The optimizer line in all the shapes Trainer wrote it.

    - ``Adam with betas=(0.9,0.999) and epsilon=1e-08`` (before transformers 4.38): Trainer's "Adam" was AdamW.
    - ``Adafactor`` (the same era, with ``--adafactor``).
    - ``Use OptimizerNames.ADAMW_TORCH with betas=... and epsilon=... and optimizer_args=...`` (the enum printed).
    - ``Use adamw_torch_fused with betas=...`` or ``Use sgd and the args are:`` (the name printed).
    """
    fields: dict[str, Any] = {}
    betas = re.search(r"betas=\(\s*([^,\s)]+)\s*,\s*([^,\s)]+)\s*\)", raw)
    if betas:
        fields["adam_beta1"] = number(key, betas.group(1), source)
        fields["adam_beta2"] = number(key, betas.group(2), source)
    epsilon = re.search(r"epsilon=([^\s,)]+)", raw)
    if epsilon:
        fields["adam_epsilon"] = _positive_number(key, epsilon.group(1), source)
    extra = re.search(r"optimizer_args=(.*)$", raw)
    if extra and extra.group(1).strip() != _NO_OPTIMIZER_ARGS:
        warnings.append(
            f"The card's optimizer has extra arguments ({extra.group(1).strip()}), which ftlab does not carry over."
        )
    fields["optim"] = _optimizer_name(raw, warnings)
    return fields


def _optimizer_name(raw: str, warnings: list[str]) -> str | None:
    if raw.startswith("Adam with"):
        return "adamw_torch"  # old Trainer built AdamW for "Adam"; torch's AdamW is the same algorithm
    if raw.strip() == "Adafactor":
        return "adafactor"
    named = re.match(r"Use\s+(\S+)", raw)
    name = named.group(1).removeprefix("OptimizerNames.").lower() if named else raw
    if name in _OPTIMIZERS:
        return name
    warnings.append(
        f"The card's optimizer {name!r} is not one ftlab can run ({', '.join(_OPTIMIZERS)}); "
        "optim was left unset, so ftlab's default applies."
    )
    return None


# --- the table -------------------------------------------------------------------------------------------------

# In the order Trainer writes them. In DDP runs `train_batch_size` is the per-device size; the totals include
# every device.
TRAINER_LINES: tuple[TrainerLine, ...] = (
    _setting("learning_rate", "learning_rate", _positive_number),
    _setting("train_batch_size", "per_device_train_batch_size", _positive_whole_number),
    _setting("eval_batch_size", "per_device_eval_batch_size", _positive_whole_number),
    _setting("seed", "seed", _whole_number),
    TrainerLine("distributed_type", (), _read_nothing, None),  # says no more than num_devices
    _setting("num_devices", "num_devices", _positive_whole_number, written_if=None),
    _setting("gradient_accumulation_steps", "gradient_accumulation_steps", _positive_whole_number, _accumulating),
    _setting("total_train_batch_size", "total_train_batch_size", _positive_whole_number, _accumulating),
    _setting("total_eval_batch_size", "total_eval_batch_size", _positive_whole_number, written_if=None),
    TrainerLine("optimizer", ("optim", "adam_beta1", "adam_beta2", "adam_epsilon"), _read_optimizer, _write_optimizer),
    TrainerLine("lr_scheduler_type", ("lr_scheduler_type",), _read_scheduler, lambda train: train.lr_scheduler_type),
    _setting("lr_scheduler_warmup_ratio", "warmup_ratio", number, lambda train: train.warmup_ratio > 0),
    TrainerLine(
        "lr_scheduler_warmup_steps",
        ("warmup_steps", "warmup_ratio"),
        _read_warmup_steps,
        lambda train: train.warmup_steps if train.warmup_steps > 0 else None,
    ),
    _setting("training_steps", "max_steps", _positive_whole_number, lambda train: train.max_steps > 0),
    _setting("num_epochs", "num_train_epochs", _positive_number, lambda train: train.max_steps <= 0),
    # Not in Trainer's list: ftlab's own cards add them, since a sweep may have searched them.
    _setting("weight_decay", "weight_decay", number),
    _setting("max_grad_norm", "max_grad_norm", number),
    TrainerLine(
        "mixed_precision_training", ("mixed_precision_training",), _read_mixed_precision, _write_mixed_precision
    ),
)
