"""Reading a source into the non-blank documents of a train, a validation and (optionally) a holdout split.

Local ``.txt`` files give one document per blank-line-separated paragraph; json/jsonl, csv, parquet and hub datasets
give one per row of the text column. Without a validation split in the data, a deterministic share of the documents
(not of the blocks, so no document straddles the two) is held out. With ``data.holdout_fraction`` set, another share
is cut from the training documents the same way: the holdout split that only ``ftlab confirm`` evaluates on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.exceptions import DatasetGenerationError

from ftlab.config import DataConfig
from ftlab.data._source import Source, check_utf8
from ftlab.errors import DataError

_UTF8_FORMATS = frozenset({".txt", ".json", ".jsonl", ".csv"})  # text formats the builders decode as UTF-8


@dataclass(frozen=True)
class Documents:
    """The non-blank documents of one split and where they came from, for error messages."""

    docs: datasets.Dataset
    label: str  # that key with the files or dataset split, e.g. "data.train_files a.txt, b.txt"
    cut_by: str | None = None  # the setting that cut it from the training documents: data.validation_fraction…


def load_documents(config: DataConfig, source: Source, work: Path) -> dict[str, Documents]:
    """Non-blank documents of the ``train``, ``validation`` and (with ``data.holdout_fraction``) ``holdout`` splits;
    ``work`` is a scratch folder for datasets."""
    if source.dataset is not None:
        raw = _load_hub(source)
        text_column = config.text_column
        keys = {split: "data.dataset" for split in raw}
        labels = {split: f"data.dataset {source.describe()}, split {split!r}" for split in raw}
    else:
        raw = _load_files(source, work / "hf-cache")
        # The text builder always names its one column "text"; `data.text_column` is for formats with columns.
        text_column = "text" if source.builder == "text" else config.text_column
        assert source.files is not None
        keys = {split: f"data.{split}_files" for split in source.files}
        labels = {
            split: f"data.{split}_files {', '.join(path.name for path in paths)}"
            for split, paths in source.files.items()
        }
    if "train" not in raw:
        raise DataError.single(
            "the dataset has no `train` split",
            where="data.dataset",
            value=sorted(raw),
            fix="use a dataset with a train split, or local `data.train_files`",
        )
    documents = {
        split: Documents(_text_documents(raw[split], text_column, keys[split], labels[split]), labels[split])
        for split in ("train", "validation")
        if split in raw
    }
    n_docs = len(documents["train"].docs)
    if "validation" not in documents:
        documents["train"], documents["validation"] = _validation_split(config, documents["train"], work)
    if config.holdout_fraction:
        documents["train"], documents["holdout"] = _holdout_split(config, documents["train"], n_docs, work)
    return documents


def _validation_split(config: DataConfig, train: Documents, work: Path) -> tuple[Documents, Documents]:
    n_docs = len(train.docs)
    if n_docs - math.ceil(config.validation_fraction * n_docs) < 1:  # the rule train_test_split applies
        raise DataError.single(
            f"cannot hold out validation documents from only {n_docs} document(s) ({train.label})",
            where="data.validation_fraction",
            value=config.validation_fraction,
            fix="use more documents (blank-line-separated paragraphs in .txt files), or give `data.validation_files`",
        )
    # Split documents, not blocks, so no document straddles train and validation. The indices files go to the work
    # folder: datasets would otherwise write them next to a hub dataset's files in its own cache.
    halves = train.docs.train_test_split(
        test_size=config.validation_fraction,
        seed=config.split_seed,
        train_indices_cache_file_name=str(work / "split-train-indices.arrow"),
        test_indices_cache_file_name=str(work / "split-validation-indices.arrow"),
    )
    return (
        Documents(halves["train"], train.label),
        Documents(halves["test"], f"{train.label}, held out", cut_by="data.validation_fraction"),
    )


def _holdout_split(config: DataConfig, train: Documents, n_all: int, work: Path) -> tuple[Documents, Documents]:
    """Cut ``data.holdout_fraction`` of all ``n_all`` training documents from those left to train on (``train``).

    After the validation split, not before: the validation documents stay those of the same data without a holdout,
    and only the training documents shrink.
    """
    count = math.ceil(config.holdout_fraction * n_all)
    n_docs = len(train.docs)
    if n_docs - count < 1:
        raise DataError.single(
            f"cannot hold out {count} holdout document(s) and keep one to train on: {n_docs} training document(s) "
            f"({train.label})",
            where="data.holdout_fraction",
            value=config.holdout_fraction,
            fix="use more documents (blank-line-separated paragraphs in .txt files), or a smaller "
            "`data.holdout_fraction`",
        )
    # By document, as the validation split: a count, as the share is of the documents before that split.
    halves = train.docs.train_test_split(
        test_size=count,
        seed=config.split_seed,
        train_indices_cache_file_name=str(work / "holdout-train-indices.arrow"),
        test_indices_cache_file_name=str(work / "holdout-indices.arrow"),
    )
    return (
        Documents(halves["train"], train.label),
        Documents(halves["test"], f"{train.label}, holdout", cut_by="data.holdout_fraction"),
    )


def _load_hub(source: Source) -> datasets.DatasetDict:
    try:
        raw = datasets.load_dataset(source.dataset, source.dataset_config)
    except Exception as error:  # anything the hub client raises here is about the name, config or network
        fix = (
            "offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE): run once online to cache the dataset, "
            "or use local `data.train_files`"
            if datasets.config.HF_HUB_OFFLINE
            else "check `data.dataset` and `data.dataset_config` on huggingface.co/datasets and your network; "
            "set HF_DATASETS_OFFLINE=1 to use an already cached copy, or use local `data.train_files`"
        )
        raise DataError.single(
            f"cannot load the hub dataset ({type(error).__name__}: {error})",
            where="data.dataset",
            value=source.describe(),
            fix=fix,
        ) from error
    return raw  # a DatasetDict: load_dataset without split (and without streaming) returns one


def _load_files(source: Source, hf_cache: Path) -> datasets.DatasetDict:
    assert source.files is not None and source.suffix is not None
    if source.suffix in _UTF8_FORMATS:
        # The builders decode lazily and wrap the error without the file's name or a usable offset; check first.
        for split, paths in source.files.items():
            for path in paths:
                check_utf8(path, f"data.{split}_files")
    kwargs: dict[str, Any] = {}
    if source.builder == "text":
        kwargs["sample_by"] = "paragraph"  # one document per blank-line-separated paragraph, its newlines kept
        kwargs["encoding"] = "utf-8-sig"  # drops a byte-order mark that editors on Windows put first
    try:
        # A throwaway cache_dir (inside the work folder, deleted afterwards): ftlab's own cache is the one that
        # persists, and the Arrow copy of local files would otherwise pile up in ~/.cache/huggingface/datasets.
        return datasets.load_dataset(
            source.builder,
            data_files={split: [str(path) for path in paths] for split, paths in source.files.items()},
            cache_dir=str(hf_cache),
            **kwargs,
        )
    except (DatasetGenerationError, pa.ArrowException) as error:
        # Builders wrap parse errors in DatasetGenerationError; parquet's footer check raises ArrowInvalid directly.
        cause = (error.__cause__ or error.__context__ or error) if isinstance(error, DatasetGenerationError) else error
        raise DataError.single(
            f"cannot read the data files: {type(cause).__name__}: {cause}",
            where=" / ".join(f"data.{split}_files" for split in source.files),
            value=source.describe(),
            fix=f"check that the files are valid {source.suffix} files",
        ) from error


def _text_documents(raw: datasets.Dataset, text_column: str, key: str, where: str) -> datasets.Dataset:
    if text_column not in raw.column_names:
        raise DataError.single(
            f"no column {text_column!r} in {where}",
            where="data.text_column",
            value=text_column,
            fix=f"set `data.text_column` to one of: {', '.join(raw.column_names)}",
        )
    feature = raw.features[text_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in {"string", "large_string"}):
        raise DataError.single(
            f"column {text_column!r} in {where} holds {feature}, not text",
            where="data.text_column",
            value=text_column,
            fix=f"set `data.text_column` to a text column of: {', '.join(raw.column_names)}",
        )
    docs = raw.select_columns([text_column])
    # Blank documents (empty rows, nulls, whitespace-only paragraphs) would only add stray EOS tokens.
    docs = docs.filter(
        lambda texts: [bool(text and not text.isspace()) for text in texts],
        input_columns=[text_column],
        batched=True,
        keep_in_memory=True,  # only an indices mapping: small, and kept out of datasets' cache folders
    )
    if len(docs) == 0:
        raise DataError.single(
            f"no text in {where}: all {len(raw)} rows of column {text_column!r} are empty",
            where=key,
            value=len(raw),
            fix="check that the files hold text (and `data.text_column` names the text column)",
        )
    return docs
