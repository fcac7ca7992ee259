"""Whether a model that can be found can also be trained: the checks behind ``ftlab validate`` for what is inside it.

A model folder without tokenizer files loads a tokenizer of one token, which turns every text into nothing: the
sweep trained on end-of-text tokens and reported success. A ``data.block_size`` longer than the model's position
table failed in the first forward pass (IndexError); missing weights or a broken ``config.json`` with a traceback.
Each is found here with transformers' own loaders, as the trials will load the model, and named as the key to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftlab.config import SweepConfig
from ftlab.errors import Problem, first_line

# A tokenizer with fewer tokens than this is a placeholder (transformers builds one from a config alone), not a
# vocabulary: byte-level tokenizers have 256 and more.
MIN_VOCABULARY = 32
# Text every tokenizer of a language model turns into tokens.
SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog. def main(): return 0"
# The files from_pretrained reads weights from (transformers.utils' names), single or sharded.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def model_content_problems(sweep: SweepConfig, source: str) -> list[Problem]:
    """The model's config, weights and position table, and the tokenizer; for a model that was found."""
    problems, config = _config_problems(sweep, source)
    if config is None and sweep.model.tokenizer is None:
        return problems  # the tokenizer would fail on the same config.json: one problem, with its own fix
    limit = None if config is None else max_positions(config)
    if limit is not None and sweep.data.block_size > limit:
        problems.append(
            Problem(
                f"longer than the model's {limit} positions ({sweep.model.name_or_path}): the first training step "
                "would fail",
                f"{source}:data.block_size",
                sweep.data.block_size,
                f"set data.block_size to {limit} or less",
            )
        )
    return problems + tokenizer_problems(sweep, source)


def _config_problems(sweep: SweepConfig, source: str) -> tuple[list[Problem], Any]:
    import transformers

    name = sweep.model.name_or_path
    where = f"{source}:model.name_or_path"
    try:
        config = transformers.AutoConfig.from_pretrained(name, revision=sweep.model.revision)
    except (OSError, ValueError, KeyError) as error:
        fix = "restore the folder's config.json (save_pretrained writes it), or point model.name_or_path elsewhere"
        return [Problem(f"the model's config.json cannot be read: {first_line(error)}", where, name, fix)], None
    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / file).is_file() for file in _WEIGHT_FILES):
        return [
            Problem(
                f"the model folder has no weights (none of {', '.join(_WEIGHT_FILES)})",
                where,
                name,
                "copy the weights into the folder (save_pretrained writes them), or point model.name_or_path at "
                "a complete model",
            )
        ], config
    return [], config


def max_positions(config: Any) -> int | None:
    """The longest sequence the model's position table holds, if its config says."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenizer_problems(sweep: SweepConfig, source: str) -> list[Problem]:
    """Whether the tokenizer loads, has a real vocabulary and turns text into tokens."""
    import transformers

    where = f"{source}:model.tokenizer" if sweep.model.tokenizer else f"{source}:model.name_or_path"
    name = sweep.model.tokenizer or sweep.model.name_or_path
    fix = (
        "copy the tokenizer files (tokenizer.json, or vocab.json and merges.txt, with tokenizer_config.json) into "
        "the model folder, or name a tokenizer with model.tokenizer"
    )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, revision=sweep.model.revision)
    except Exception as error:  # a missing file, a broken JSON, an unknown class: transformers raises many kinds
        return [Problem(f"the tokenizer cannot be loaded: {first_line(error)}", where, name, fix)]
    size = len(tokenizer)
    if size < MIN_VOCABULARY:
        return [Problem(f"the tokenizer has {size} token(s), no vocabulary: are its files missing?", where, name, fix)]
    if not tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]:
        return [Problem(f"the tokenizer turns the text {SAMPLE_TEXT!r} into no tokens", where, name, fix)]
    return []


def data_token_problems(sweep: SweepConfig, token_ids: list[int], source: str) -> list[Problem]:
    """A sample of the training blocks (``token_ids``) with one or two distinct tokens is text the tokenizer could not
    read (all unknown or end-of-text tokens), not data to learn from."""
    distinct = len(set(token_ids))
    if distinct > 2:
        return []
    return [
        Problem(
            f"the training data tokenizes to only {distinct} distinct token(s): the tokenizer cannot read this text",
            f"{source}:model.tokenizer" if sweep.model.tokenizer else f"{source}:model.name_or_path",
            sweep.model.tokenizer or sweep.model.name_or_path,
            "use the tokenizer the model was trained with, and check that data.text_column names the text",
        )
    ]
