"""Training data: load text, tokenize it, pack it into fixed-size blocks, hold out validation, and cache the result.

Every trial of a sweep needs the same tokenized blocks, so the first trial prepares them and stores them under
``data.cache_dir/<fingerprint>/``; later trials (in this process or in parallel worker processes) load them from there
without tokenizing anything. The fingerprint covers everything that changes the blocks: the text itself (file contents,
or the hub dataset's name and configuration), the tokenizer, the block size, the split settings and
:data:`FORMAT_VERSION`.

Problems with the user's data raise :class:`ftlab.errors.DataError` before any training starts.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import filelock
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets.exceptions import DatasetGenerationError
from transformers import PreTrainedTokenizerBase

from ftlab.config import DataConfig
from ftlab.errors import DataError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the layout or content of cached splits changes, so that old caches are not reused."""

BUILDERS: dict[str, str] = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""File extension → the ``datasets`` packaged builder that reads it."""

_UTF8_FORMATS = frozenset({".txt", ".json", ".jsonl", ".csv"})  # text formats the builders decode as UTF-8
_META_FILE = "ftlab-data.json"  # written last into the cache folder; its presence marks a complete cache entry
_PACK_BATCH_DOCS = 10_000  # documents packed together; the remainder (< block_size tokens) of each batch is dropped
_READ_CHUNK = 1 << 20  # bytes per read when hashing and checking files
_FINGERPRINT_CHARS = 32  # 128 bits of sha256: collisions are not a concern, and folder names stay short


@dataclass(frozen=True)
class PreparedData:
    """Tokenized, packed training and validation blocks, ready for a causal-LM trainer."""

    train: datasets.Dataset
    """One column ``input_ids``: exactly ``block_size`` token ids per row, no padding."""
    validation: datasets.Dataset
    """Same layout as ``train``."""
    fingerprint: str
    """Hex digest of source, tokenizer, block size, split settings and format version; names the cache folder."""
    train_tokens: int
    validation_tokens: int
    from_cache: bool
    """True when the splits were loaded from an earlier preparation and nothing was tokenized."""

    def train_tensor(self) -> torch.Tensor:
        """The training blocks as an int64 tensor of shape ``[n_blocks, block_size]``."""
        return _as_tensor(self.train)

    def validation_tensor(self) -> torch.Tensor:
        """The validation blocks as an int64 tensor of shape ``[n_blocks, block_size]``."""
        return _as_tensor(self.validation)


def _as_tensor(blocks: datasets.Dataset) -> torch.Tensor:
    # Fixed-size list column + numpy format → one contiguous 2-D array straight from Arrow, no per-row Python objects.
    array = blocks.with_format("numpy")[:]["input_ids"]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


@dataclass(frozen=True)
class _Source:
    """The resolved data source: a hub dataset, or local files of one format grouped by split."""

    dataset: str | None = None
    dataset_config: str | None = None
    files: dict[str, list[Path]] | None = None  # "train" and optionally "validation"
    suffix: str | None = None  # the files' extension, lower case

    @property
    def builder(self) -> str:
        assert self.suffix is not None
        return BUILDERS[self.suffix]

    def describe(self) -> str:
        if self.dataset is not None:
            return self.dataset + (f" ({self.dataset_config})" if self.dataset_config else "")
        assert self.files is not None
        return ", ".join(str(path) for paths in self.files.values() for path in paths)


def data_fingerprint(config: DataConfig, tokenizer: PreTrainedTokenizerBase, *, base_dir: Path | None = None) -> str:
    """The fingerprint that names the cache entry of this data, tokenizer and settings, without preparing anything.

    Args:
        config: the sweep's ``data`` block.
        tokenizer: the tokenizer the blocks are made with.
        base_dir: folder that relative paths in ``config`` are resolved against (the sweep file's folder);
            the current directory when unset.

    Returns:
        A hex digest; equal fingerprints mean identical prepared blocks.

    Raises:
        DataError: a local file is missing or has an unsupported extension.
    """
    return _fingerprint(config, _resolve_source(config, base_dir), tokenizer)


def prepare_data(
    config: DataConfig, tokenizer: PreTrainedTokenizerBase, *, base_dir: Path | None = None
) -> PreparedData:
    """Load, tokenize, pack and split the training text, or load the result of an earlier call from the cache.

    Each document gets the tokenizer's EOS token appended; documents are then concatenated and cut into blocks of
    ``config.block_size`` tokens (the remainder is dropped). Without a validation split in the data, a deterministic
    ``config.validation_fraction`` of the documents is held out with ``config.split_seed``. The result is cached under
    ``config.cache_dir`` (relative to the current directory); parallel processes wait for each other on a file lock.

    Args:
        config: the sweep's ``data`` block.
        tokenizer: the model's tokenizer; it must have an EOS token.
        base_dir: folder that relative paths in ``config`` are resolved against (the sweep file's folder);
            the current directory when unset.

    Returns:
        The packed splits, their token counts and the fingerprint that names their cache entry.

    Raises:
        DataError: missing, empty, undecodable or too short data, a missing text column, an unsupported file
            extension, or a hub dataset that cannot be loaded.
    """
    source = _resolve_source(config, base_dir)
    fingerprint = _fingerprint(config, source, tokenizer)
    root = Path(config.cache_dir).expanduser()
    final = root / fingerprint
    with _progress_bars_off():
        # The cache entry appears by an atomic rename with its meta file inside, so no lock is needed to read it.
        if (final / _META_FILE).is_file():
            logger.info("Using cached data %s from %s", fingerprint, final)
            return _load_prepared(final, fingerprint, from_cache=True)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError.single(
                f"cannot create the data cache folder: {error}",
                where="data.cache_dir",
                value=config.cache_dir,
                fix="point `data.cache_dir` at a writable folder",
            ) from None
        lock = filelock.FileLock(str(root / f"{fingerprint}.lock"))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            logger.info("Waiting for another process that is preparing data %s", fingerprint)
            lock.acquire()
        try:
            if (final / _META_FILE).is_file():  # another process built it while we waited
                return _load_prepared(final, fingerprint, from_cache=True)
            _remove_leftovers(root, fingerprint)
            work = Path(tempfile.mkdtemp(prefix=f"{fingerprint}.tmp-", dir=root))
            try:
                started = time.perf_counter()
                logger.info("Preparing data from %s (fingerprint %s)", source.describe(), fingerprint)
                _build(config, source, tokenizer, fingerprint, work)
                os.replace(work / "out", final)
                logger.info("Prepared data in %.1f s, cached in %s", time.perf_counter() - started, final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            lock.release()
        return _load_prepared(final, fingerprint, from_cache=False)


# --- source and fingerprint ---------------------------------------------------------------------------------------


def _resolve_source(config: DataConfig, base_dir: Path | None) -> _Source:
    if config.dataset is not None:
        return _Source(dataset=config.dataset, dataset_config=config.dataset_config)
    assert config.train_files is not None  # the schema requires one of the two
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    files = {"train": _resolve_files(config.train_files, "data.train_files", base)}
    if config.validation_files is not None:
        files["validation"] = _resolve_files(config.validation_files, "data.validation_files", base)
    suffixes = {path.suffix.lower() for paths in files.values() for path in paths}
    # One builder reads all files, and json/jsonl share one; mixing formats would mix column layouts.
    if len({BUILDERS[suffix] for suffix in suffixes}) > 1:
        raise DataError.single(
            "all data files must have one format",
            where="data.train_files",
            value=sorted(suffixes),
            fix="convert the files to one format, or list only files of one format",
        )
    return _Source(files=files, suffix=min(suffixes))


def _resolve_files(values: list[str], key: str, base: Path) -> list[Path]:
    if not values:
        raise DataError.single("the list of files is empty", where=key, value=values, fix="list at least one file")
    paths: list[Path] = []
    for index, value in enumerate(values):
        where = f"{key}[{index}]"
        if value.startswith("demo://"):
            from ftlab.demo import resolve  # lazily: the demo assets are built on first use

            value = resolve(value)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = base / path
        if glob.has_magic(str(path)):
            matches = sorted(Path(match) for match in glob.glob(str(path)) if Path(match).is_file())
            if not matches:
                raise DataError.single(
                    "no file matches this pattern",
                    where=where,
                    value=str(path),
                    fix="check the pattern and the folder it is relative to",
                )
        elif not path.is_file():
            raise DataError.single(
                "file not found",
                where=where,
                value=str(path),
                fix="check the path; relative paths are resolved against the sweep file's folder",
            )
        else:
            matches = [path]
        for match in matches:
            if match.suffix.lower() not in BUILDERS:
                raise DataError.single(
                    f"unsupported file extension {match.suffix or '(none)'!r} of {match}",
                    where=where,
                    value=match.name,
                    fix=f"use one of {', '.join(BUILDERS)}",
                )
            if match.stat().st_size == 0:
                raise DataError.single(
                    f"the file {match} is empty",
                    where=where,
                    value=str(match),
                    fix="fill it with text or remove it from the list",
                )
        paths += matches
    return paths


def _fingerprint(config: DataConfig, source: _Source, tokenizer: PreTrainedTokenizerBase) -> str:
    if source.files is not None:
        # Content, not paths: moving or renaming a file keeps its cache entry, editing it makes a new one.
        origin: Any = {
            split: [[path.suffix.lower(), _file_digest(path)] for path in paths]
            for split, paths in source.files.items()
        }
    else:
        # The hub dataset's own fingerprint would need a load_dataset call (a network round trip, or seconds)
        # on every trial; name and configuration are what users pin.
        origin = {"dataset": source.dataset, "config": source.dataset_config}
    payload = {
        "format_version": FORMAT_VERSION,
        "source": origin,
        "tokenizer": _tokenizer_digest(tokenizer),
        "text_column": config.text_column,
        "block_size": config.block_size,
        "validation_fraction": config.validation_fraction,
        "split_seed": config.split_seed,
        "max_train_blocks": config.max_train_blocks,
        "max_eval_blocks": config.max_eval_blocks,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:_FINGERPRINT_CHARS]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The full tokenizer.json: vocabulary, merges, normalizer, pre-tokenizer and post-processor (BOS/EOS adding).
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([tokenizer.eos_token, tokenizer.eos_token_id], default=str).encode())
    return digest.hexdigest()


# --- the cache ----------------------------------------------------------------------------------------------------


def _load_prepared(folder: Path, fingerprint: str, *, from_cache: bool) -> PreparedData:
    train = datasets.load_from_disk(str(folder / "train"))
    validation = datasets.load_from_disk(str(folder / "validation"))
    block_size = train.features["input_ids"].length
    return PreparedData(
        train=train,
        validation=validation,
        fingerprint=fingerprint,
        train_tokens=len(train) * block_size,
        validation_tokens=len(validation) * block_size,
        from_cache=from_cache,
    )


def _remove_leftovers(root: Path, fingerprint: str) -> None:
    """Delete what crashed preparations of this fingerprint left; only the lock holder writes these, so it's safe."""
    for leftover in root.glob(f"{fingerprint}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    final = root / fingerprint
    if final.exists() and not (final / _META_FILE).is_file():
        shutil.rmtree(final, ignore_errors=True)


@contextmanager
def _progress_bars_off() -> Iterator[None]:
    """Silence datasets' progress bars (ftlab shows its own progress), then restore the caller's setting."""
    # HF_DATASETS_DISABLE_PROGRESS_BARS=0 is the user asking for them, and datasets warns if we try to override it.
    if datasets.utils.are_progress_bars_disabled() or datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is False:
        yield
        return
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        datasets.utils.enable_progress_bars()


# --- building a cache entry ---------------------------------------------------------------------------------------


def _build(
    config: DataConfig, source: _Source, tokenizer: PreTrainedTokenizerBase, fingerprint: str, work: Path
) -> None:
    """Prepare both splits into ``work/out``, which the caller renames into place."""
    if tokenizer.eos_token_id is None:
        raise DataError.single(
            f"the tokenizer ({type(tokenizer).__name__}) has no EOS token to separate documents",
            where="model.tokenizer",
            fix="use a causal-LM tokenizer that defines `eos_token`",
        )
    documents = _load_documents(config, source, work)
    out = work / "out"
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "source": source.describe(),
        "block_size": config.block_size,
    }
    for split, part in documents.items():
        limit = config.max_train_blocks if split == "train" else config.max_eval_blocks
        tokens = _tokenize(
            part.docs,
            tokenizer,
            work / f"{split}-tokens.arrow",
            f"{fingerprint[:16]}-{split}-tokens",
            # Paragraph splitting leaves the file's final newline, or extra blank lines, at a paragraph's edges.
            strip_newlines=source.files is not None and source.builder == "text",
        )
        total = pc.sum(pc.list_value_length(tokens.data.column("input_ids"))).as_py() or 0
        if total < config.block_size:
            more = "a larger `data.validation_fraction`" if part.held_out else "more text"
            raise DataError.single(
                f"the {split} split has {total} tokens from {len(part.docs)} document(s) ({part.label}), fewer than "
                f"one block of {config.block_size} tokens",
                where="data.block_size",
                value=config.block_size,
                fix=f"set `data.block_size` to at most {max(total, 2)} or use {more}",
            )
        blocks = _pack(tokens, config.block_size, work / f"{split}-blocks.arrow", f"{fingerprint[:16]}-{split}-blocks")
        if limit is not None and limit < len(blocks):
            blocks = blocks.select(range(limit))  # a contiguous range: a slice of the table, no indices mapping
        blocks.save_to_disk(str(out / split))
        meta[split] = {"documents": len(part.docs), "tokens_before_packing": total, "blocks": len(blocks)}
    (out / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class _Documents:
    """The non-blank documents of one split and where they came from, for error messages."""

    docs: datasets.Dataset
    label: str  # that key with the files or dataset split, e.g. "data.train_files a.txt, b.txt"
    held_out: bool = False  # cut from the training documents by the validation split


def _load_documents(config: DataConfig, source: _Source, work: Path) -> dict[str, _Documents]:
    """Non-blank documents of the train and validation splits."""
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
        split: _Documents(_text_documents(raw[split], text_column, keys[split], labels[split]), labels[split])
        for split in ("train", "validation")
        if split in raw
    }
    if "validation" in documents:
        return documents
    train = documents["train"]
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
    return {
        "train": _Documents(halves["train"], train.label),
        "validation": _Documents(halves["test"], f"{train.label}, held out", held_out=True),
    }


def _load_hub(source: _Source) -> datasets.DatasetDict:
    try:
        raw = datasets.load_dataset(source.dataset, source.dataset_config)
    except Exception as error:  # anything the hub client raises here is about the name, config or network
        offline = datasets.config.HF_HUB_OFFLINE
        fix = (
            "offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE): run once online to cache the dataset, "
            "or use local `data.train_files`"
            if offline
            else "check `data.dataset` and `data.dataset_config` on huggingface.co/datasets and your network; "
            "set HF_DATASETS_OFFLINE=1 to use an already cached copy, or use local `data.train_files`"
        )
        raise DataError.single(
            f"cannot load the hub dataset ({type(error).__name__}: {error})",
            where="data.dataset",
            value=source.describe(),
            fix=fix,
        ) from error
    if not isinstance(raw, datasets.DatasetDict):  # defensive: load_dataset without split returns a DatasetDict
        raw = datasets.DatasetDict({"train": raw})
    return raw


def _load_files(source: _Source, hf_cache: Path) -> datasets.DatasetDict:
    assert source.files is not None and source.suffix is not None
    if source.suffix in _UTF8_FORMATS:
        # The builders decode lazily and wrap the error without the file's name or a usable offset; check first.
        for split, paths in source.files.items():
            for path in paths:
                _check_utf8(path, f"data.{split}_files")
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


def _check_utf8(path: Path, key: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes fed to the decoder before the current chunk
    with path.open("rb") as file:
        while True:
            chunk = file.read(_READ_CHUNK)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character carried from the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                position = offset - pending + error.start
                raise DataError.single(
                    f"{path} is not UTF-8 text: {error.reason} at byte offset {position}",
                    where=key,
                    value=str(path),
                    fix="re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
                ) from None
            if not chunk:
                return
            offset += len(chunk)


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


def _tokenize(
    docs: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    cache_file: Path,
    fingerprint: str,
    *,
    strip_newlines: bool,
) -> datasets.Dataset:
    eos = tokenizer.eos_token_id
    text_column = docs.column_names[0]

    def tokenize(texts: list[str]) -> dict[str, list[list[int]]]:
        if strip_newlines:
            texts = [text.strip("\n") for text in texts]
        # verbose=False: documents longer than the model's context are expected here; packing cuts them.
        ids = tokenizer(texts, return_attention_mask=False, verbose=False)["input_ids"]
        return {"input_ids": [[*seq, eos] for seq in ids]}

    # Results go to a file in the work folder, deleted after the splits are saved: memory stays bounded for large
    # data (unlike keep_in_memory=True) and nothing lands in datasets' own cache. An explicit fingerprint spares
    # datasets from hashing the tokenizer closure.
    return docs.map(
        tokenize,
        input_columns=[text_column],
        batched=True,
        remove_columns=docs.column_names,
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
        cache_file_name=str(cache_file),
        new_fingerprint=fingerprint,
        load_from_cache_file=False,
    )


def _pack(tokens: datasets.Dataset, block_size: int, cache_file: Path, fingerprint: str) -> datasets.Dataset:
    def pack(batch: pa.Table) -> pa.Table:
        # Concatenate the batch's documents and cut into blocks, in Arrow (no Python lists of ints); like run_clm's
        # group_texts, the tail shorter than a block is dropped.
        stream = pc.list_flatten(batch.column("input_ids"))
        usable = len(stream) // block_size * block_size
        values = stream.slice(0, usable).combine_chunks() if usable else pa.array([], pa.int32())
        return pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, block_size)})

    blocks = tokens.with_format("arrow").map(
        pack,
        batched=True,
        batch_size=_PACK_BATCH_DOCS,
        remove_columns=["input_ids"],
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"), length=block_size)}),
        cache_file_name=str(cache_file),
        new_fingerprint=fingerprint,
        load_from_cache_file=False,
    )
    return blocks.with_format(None)  # save_to_disk stores the format; readers expect plain rows
