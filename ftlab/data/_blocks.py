"""Tokenizing documents and packing them into fixed-size blocks: the content of one cache entry.

Each document gets the tokenizer's EOS token appended; documents are then concatenated and cut into blocks of
``block_size`` tokens, with no padding (the remainder is dropped). Both steps run in Arrow through ``datasets.map``
into files of a scratch folder, so memory stays bounded for large data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from transformers import PreTrainedTokenizerBase

from ftlab.config import DataConfig
from ftlab.data._documents import load_documents
from ftlab.data._source import FORMAT_VERSION, Source
from ftlab.errors import DataError

# Longer documents are tokenized in pieces of about this many characters: memory stays bounded (see _tokenize_long).
_LONG_DOCUMENT_CHARS = 1 << 20
_PACK_BATCH_DOCS = 10_000  # documents packed together; the remainder (< block_size tokens) of each batch is dropped


def build_splits(
    config: DataConfig, source: Source, tokenizer: PreTrainedTokenizerBase, fingerprint: str, out: Path, work: Path
) -> dict[str, Any]:
    """Save the packed ``train``, ``validation`` and (with ``data.holdout_fraction``) ``holdout`` splits under ``out``;
    returns what the entry's meta file holds.

    ``work`` is a scratch folder for intermediate files, which the caller deletes afterwards.
    """
    if tokenizer.eos_token_id is None:
        raise DataError.single(
            f"the tokenizer ({type(tokenizer).__name__}) has no EOS token to separate documents",
            where="model.tokenizer",
            fix="use a causal-LM tokenizer that defines `eos_token`",
        )
    documents = load_documents(config, source, work)
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
            more = f"a larger `{part.cut_by}`" if part.cut_by else "more text"
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
    return meta


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

    def tokenize(texts: list[str]) -> dict[str, list[Any]]:
        if strip_newlines:
            texts = [text.strip("\n") for text in texts]
        short = [index for index, text in enumerate(texts) if len(text) <= _LONG_DOCUMENT_CHARS]
        # verbose=False: documents longer than the model's context are expected here; packing cuts them.
        ids = []
        if short:  # a batch of long documents only: the tokenizer fails on an empty list
            ids = tokenizer([texts[i] for i in short], return_attention_mask=False, verbose=False)["input_ids"]
        out: list[Any] = [None] * len(texts)
        for index, seq in zip(short, ids, strict=True):
            out[index] = [*seq, eos]
        for index, text in enumerate(texts):
            if out[index] is None:
                out[index] = _tokenize_long(text, tokenizer, eos)
        return {"input_ids": out}

    # Results go to a file in the scratch folder, deleted after the splits are saved: memory stays bounded for large
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


def _tokenize_long(text: str, tokenizer: PreTrainedTokenizerBase, eos: int) -> np.ndarray:
    """A long document's tokens (and EOS), tokenized piece by piece.

    Whole, a 50 MB one-line file took the tokenizer 87 s and 7 GB (its per-token offsets and strings, then a Python
    list of ten million ints). Pieces end before a space, where byte-level BPE tokenizers start a new word anyway, so
    the tokens are those of the whole text for ordinary prose; a piece without a space is cut where it is.
    """
    pieces = []
    start = 0
    while start < len(text):
        end = min(start + _LONG_DOCUMENT_CHARS, len(text))
        if end < len(text):
            space = text.rfind(" ", start + _LONG_DOCUMENT_CHARS // 2, end)
            end = space if space > start else end
        ids = tokenizer(text[start:end], return_attention_mask=False, verbose=False)["input_ids"]
        pieces.append(np.asarray(ids, dtype=np.int32))
        start = end
    pieces.append(np.asarray([eos], dtype=np.int32))
    return np.concatenate(pieces)


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
