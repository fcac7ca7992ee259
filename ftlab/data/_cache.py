"""The data cache: prepare a source's blocks once, under ``data.cache_dir/<fingerprint>/``, and load them from there.

Every trial of a sweep needs the same blocks, so the first trial prepares them; later trials (in this process or in
parallel worker processes) load them without tokenizing anything. An entry is built with
:func:`ftlab.fileio.build_once`: under the lock file ``<fingerprint>.lock`` beside it, in a staging folder renamed into
place, with the meta file written last as the mark of a complete entry; readers of a complete entry take no lock.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from ftlab.config import DataConfig
from ftlab.data._blocks import build_splits
from ftlab.data._source import fingerprint, resolve_source
from ftlab.errors import DataError
from ftlab.fileio import NoSpaceError, atomic_write_json, build_once

logger = logging.getLogger(__name__)

_META_FILE = "ftlab-data.json"  # written last into the cache folder; its presence marks a complete cache entry


@dataclass(frozen=True)
class PreparedData:
    """Tokenized, packed training, validation and (optionally) holdout blocks, ready for a causal-LM trainer."""

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
    holdout: datasets.Dataset | None = None
    """With ``data.holdout_fraction`` set: same layout as ``train``, from documents of neither other split. Only
    ``ftlab confirm``'s runs evaluate on it; sweep trials never do."""

    @property
    def holdout_tokens(self) -> int:
        return 0 if self.holdout is None else len(self.holdout) * self.holdout.features["input_ids"].length

    def train_tensor(self) -> torch.Tensor:
        """The training blocks as an int64 tensor of shape ``[n_blocks, block_size]``."""
        return _as_tensor(self.train)

    def validation_tensor(self) -> torch.Tensor:
        """The validation blocks as an int64 tensor of shape ``[n_blocks, block_size]``."""
        return _as_tensor(self.validation)

    def holdout_tensor(self) -> torch.Tensor | None:
        """The holdout blocks as an int64 tensor of shape ``[n_blocks, block_size]``; None without a holdout."""
        return None if self.holdout is None else _as_tensor(self.holdout)


def _as_tensor(blocks: datasets.Dataset) -> torch.Tensor:
    # Fixed-size list column + numpy format → one contiguous 2-D array straight from Arrow, no per-row Python objects.
    array = blocks.with_format("numpy")[:]["input_ids"]
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


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
    return fingerprint(config, resolve_source(config, base_dir), tokenizer)


def prepare_data(
    config: DataConfig, tokenizer: PreTrainedTokenizerBase, *, base_dir: Path | None = None
) -> PreparedData:
    """Load, tokenize, pack and split the training text, or load the result of an earlier call from the cache.

    Each document gets the tokenizer's EOS token appended; documents are then concatenated and cut into blocks of
    ``config.block_size`` tokens (the remainder is dropped). Without a validation split in the data, a deterministic
    ``config.validation_fraction`` of the documents is held out with ``config.split_seed``; with
    ``config.holdout_fraction`` set, another share of the training documents becomes the holdout split the same way.
    The result is cached under ``config.cache_dir`` (relative to the current directory); parallel processes wait for
    each other on a file lock.

    Args:
        config: the sweep's ``data`` block; ``demo://`` names must already be resolved (``load_sweep`` does it).
        tokenizer: the model's tokenizer; it must have an EOS token.
        base_dir: folder that relative paths in ``config`` are resolved against (the sweep file's folder);
            the current directory when unset.

    Returns:
        The packed splits, their token counts and the fingerprint that names their cache entry.

    Raises:
        DataError: missing, unreadable, empty, undecodable or too short data, a missing text column, an unsupported
            file extension, an unwritable cache folder (or no room in it), or a hub dataset that cannot be loaded.
    """
    source = resolve_source(config, base_dir)
    key = fingerprint(config, source, tokenizer)
    root = Path(config.cache_dir).expanduser()
    entry = root / key
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError.single(
            f"cannot create the data cache folder: {error}",
            where="data.cache_dir",
            value=config.cache_dir,
            fix="point `data.cache_dir` at a writable folder",
        ) from None

    def build(staging: Path) -> None:
        logger.info("Preparing data from %s (fingerprint %s)", source.describe(), key)
        # The intermediate files go inside the staging folder, so a crashed build's are removed along with it.
        with tempfile.TemporaryDirectory(prefix="work-", dir=staging) as work:
            meta = build_splits(config, source, tokenizer, key, staging, Path(work))
        atomic_write_json(staging / _META_FILE, meta, indent=2)

    started = time.perf_counter()
    with _progress_bars_off():
        try:
            built = build_once(entry, build, lambda folder: (folder / _META_FILE).is_file())
        except OSError as error:
            # A failed write (full disk, file-size limit, read-only folder); build_once removed the half-built entry.
            reason = str(error) if isinstance(error, NoSpaceError) else f"{error.strerror or error} ({entry})"
            raise DataError.single(
                f"cannot write the prepared data: {reason}",
                where="data.cache_dir",
                value=config.cache_dir,
                fix="make room (or raise `ulimit -f`), or point `data.cache_dir` at a writable folder with space",
            ) from None
        if built:
            logger.info("Prepared data in %.1f s, cached in %s", time.perf_counter() - started, entry)
        else:
            logger.info("Using cached data %s from %s", key, entry)
        return _load_prepared(entry, key, from_cache=not built)


def _load_prepared(folder: Path, fingerprint: str, *, from_cache: bool) -> PreparedData:
    train = datasets.load_from_disk(str(folder / "train"))
    validation = datasets.load_from_disk(str(folder / "validation"))
    # Only an entry of data with a holdout has one (its fingerprint says so).
    holdout = datasets.load_from_disk(str(folder / "holdout")) if (folder / "holdout").is_dir() else None
    block_size = train.features["input_ids"].length
    return PreparedData(
        train=train,
        validation=validation,
        fingerprint=fingerprint,
        train_tokens=len(train) * block_size,
        validation_tokens=len(validation) * block_size,
        from_cache=from_cache,
        holdout=holdout,
    )


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
