"""Where the training text comes from, and the fingerprint that names its cache entry.

The fingerprint covers everything that changes the prepared blocks: the text itself (file contents, or the hub
dataset's name and configuration), the tokenizer, the block size, the split settings and :data:`FORMAT_VERSION`.
Local files are checked here (present, of a supported format, not empty, UTF-8 text) before anything is tokenized.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ftlab.config import DataConfig
from ftlab.errors import DataError
from ftlab.filekind import not_a_file_message

FORMAT_VERSION = 1
"""Bump when the layout or content of cached splits changes, so that old caches are not reused."""

BUILDERS: dict[str, str] = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""File extension → the ``datasets`` packaged builder that reads it."""

READ_CHUNK = 1 << 20  # bytes per read when hashing and checking files
_FINGERPRINT_CHARS = 32  # 128 bits of sha256: collisions are not a concern, and folder names stay short


@dataclass(frozen=True)
class Source:
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


def resolve_source(config: DataConfig, base_dir: Path | None) -> Source:
    """The hub dataset, or the local files (relative ones against ``base_dir``, else the cwd), checked."""
    if config.dataset is not None:
        return Source(dataset=config.dataset, dataset_config=config.dataset_config)
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
    return Source(files=files, suffix=min(suffixes))


def _resolve_files(values: list[str], key: str, base: Path) -> list[Path]:
    if not values:
        raise DataError.single("the list of files is empty", where=key, value=values, fix="list at least one file")
    paths: list[Path] = []
    for index, value in enumerate(values):
        where = f"{key}[{index}]"
        path = base / Path(value).expanduser()  # an absolute path replaces base
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
            raise _not_a_file(path, where)
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
            _check_readable(match, where)
        paths += matches
    return paths


def _not_a_file(path: Path, where: str) -> DataError:
    """Say what is at ``path`` instead of a data file: nothing, a folder, or a FIFO, device or socket."""
    fix = "check the path; relative paths are resolved against the sweep file's folder"
    if path.is_dir():
        fix = f"list its files, e.g. {str(path / '*.txt')!r}, or name one file"
    elif path.exists():  # a FIFO would block the reader, a device would never end
        fix = "save the data to a regular file and name that file"
    return DataError.single(not_a_file_message(path, "data file"), where=where, value=str(path), fix=fix)


def _check_readable(path: Path, where: str) -> None:
    """Open it once here, so that a file this user may not read is named, not a traceback from deep in a reader."""
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise DataError.single(
            f"cannot read the file {path}: {error.strerror or error}",
            where=where,
            value=str(path),
            fix="make it readable for this user (chmod / chown), or list a copy that is",
        ) from None


def fingerprint(config: DataConfig, source: Source, tokenizer: PreTrainedTokenizerBase) -> str:
    """A hex digest of everything that decides the prepared blocks; equal digests mean identical blocks."""
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
    if config.holdout_fraction:
        # Only when set: data without a holdout keeps the fingerprint (and cache entry) it had before holdouts existed.
        payload["holdout_fraction"] = config.holdout_fraction
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:_FINGERPRINT_CHARS]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(READ_CHUNK):
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


def check_utf8(path: Path, key: str) -> None:
    """Raise a :class:`DataError` naming ``key``, the file and the byte offset if ``path`` is not UTF-8 text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes fed to the decoder before the current chunk
    with path.open("rb") as file:
        while True:
            chunk = file.read(READ_CHUNK)
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
