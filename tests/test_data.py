"""ftlab.data: loading, tokenizing, packing, splitting and caching training text, offline, with a tiny BPE tokenizer."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import random
import sys
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ftlab.config import DataConfig
from ftlab.data import PreparedData, _cache, _documents, _source, data_fingerprint, prepare_data
from ftlab.errors import DataError

EOS = "<|endoftext|>"
WORDS = [
    "the",
    "a",
    "model",
    "learns",
    "from",
    "text",
    "while",
    "tokens",
    "flow",
    "through",
    "layers",
    "of",
    "attention",
    "and",
    "every",
    "sweep",
    "tries",
    "another",
    "learning",
    "rate",
    "with",
    "warmup",
    "steps",
    "before",
    "the",
    "loss",
    "falls",
    "slowly",
    "or",
    "quickly",
    "on",
    "small",
    "data",
    "sets",
]


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Deterministic, varied documents of 5-40 words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a few KB, so no download is needed."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(make_docs(300, seed=99), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS)


def doc_tokens(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> list[int]:
    """The token stream ftlab should pack: each document's ids followed by EOS."""
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    return stream


def write_txt(path: Path, docs: list[str]) -> Path:
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def config(tmp_path: Path, files: list[Path | str], **overrides: object) -> DataConfig:
    settings: dict[str, object] = {
        "train_files": [str(f) for f in files],
        "block_size": 16,
        "cache_dir": str(tmp_path / "cache"),
    }
    settings.update(overrides)
    return DataConfig(**settings)  # type: ignore[arg-type]


def assert_blocks(data: PreparedData, block_size: int) -> None:
    for tensor, tokens in (
        (data.train_tensor(), data.train_tokens),
        (data.validation_tensor(), data.validation_tokens),
    ):
        assert tensor.dtype == torch.int64
        assert tensor.ndim == 2 and tensor.shape[1] == block_size and tensor.shape[0] >= 1
        assert tensor.numel() == tokens
    assert data.train.column_names == ["input_ids"]
    assert all(len(row) == block_size for row in data.train["input_ids"])


# --- formats, packing and splitting -------------------------------------------------------------------------------


def test_txt_blocks_have_exact_length_and_tokens_are_conserved(tmp_path: Path, tokenizer) -> None:
    docs = make_docs(200)
    data = prepare_data(config(tmp_path, [write_txt(tmp_path / "a.txt", docs)]), tokenizer)
    assert_blocks(data, 16)
    assert not data.from_cache
    # No padding: the tokenizer has no pad token, and every id is a real token of the text or EOS.
    assert tokenizer.pad_token_id is None
    total = len(doc_tokens(tokenizer, docs))
    packed = data.train_tokens + data.validation_tokens
    assert packed == (len(data.train) + len(data.validation)) * 16
    assert packed <= total
    assert total - packed < 2 * 16  # only each split's tail shorter than a block is dropped
    eos = tokenizer.eos_token_id
    eos_count = int((data.train_tensor() == eos).sum() + (data.validation_tensor() == eos).sum())
    assert 150 <= eos_count <= 200  # one EOS per document, a few lost with the dropped tails


def test_txt_paragraphs_are_documents_and_keep_their_newlines(tmp_path: Path, tokenizer) -> None:
    train = write_txt(tmp_path / "train.txt", make_docs(50))
    val = tmp_path / "val.txt"
    val.write_text("line one\nline two\n\n\n\nsecond para\n\n" + "\n\n".join(make_docs(10, seed=3)), encoding="utf-8")
    data = prepare_data(config(tmp_path, [train], validation_files=[str(val)], block_size=8), tokenizer)
    text = tokenizer.decode(data.validation_tensor().flatten().tolist())
    assert text.startswith(f"line one\nline two{EOS}second para{EOS}")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_formats_with_a_custom_text_column(tmp_path: Path, tokenizer, suffix: str) -> None:
    docs = make_docs(120)
    rows = [{"id": i, "body": doc} for i, doc in enumerate(docs)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=["id", "body"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        datasets.Dataset.from_dict({"id": list(range(len(docs))), "body": docs}).to_parquet(str(path))
    data = prepare_data(config(tmp_path, [path], text_column="body"), tokenizer)
    assert_blocks(data, 16)
    total = len(doc_tokens(tokenizer, docs))
    assert total - 2 * 16 < data.train_tokens + data.validation_tokens <= total


def test_split_is_deterministic_and_follows_split_seed(tmp_path: Path, tokenizer) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(200))
    first = prepare_data(config(tmp_path, [path], cache_dir=str(tmp_path / "c1"), validation_fraction=0.2), tokenizer)
    again = prepare_data(config(tmp_path, [path], cache_dir=str(tmp_path / "c2"), validation_fraction=0.2), tokenizer)
    assert not first.from_cache and not again.from_cache
    assert first.fingerprint == again.fingerprint
    assert torch.equal(first.train_tensor(), again.train_tensor())
    assert torch.equal(first.validation_tensor(), again.validation_tensor())
    other = prepare_data(
        config(tmp_path, [path], cache_dir=str(tmp_path / "c3"), validation_fraction=0.2, split_seed=1), tokenizer
    )
    assert other.fingerprint != first.fingerprint
    assert not torch.equal(other.validation_tensor()[:5], first.validation_tensor()[:5])


def test_validation_files_are_used_as_the_validation_split(tmp_path: Path, tokenizer) -> None:
    train_docs, val_docs = make_docs(100, seed=1), make_docs(30, seed=2)
    train = write_txt(tmp_path / "train.txt", train_docs)
    val = write_txt(tmp_path / "val.txt", val_docs)
    data = prepare_data(config(tmp_path, [train], validation_files=[str(val)]), tokenizer)
    # No split, no shuffle: the blocks are exactly the documents' token streams, in order, cut into blocks.
    for tensor, docs in ((data.validation_tensor(), val_docs), (data.train_tensor(), train_docs)):
        stream = doc_tokens(tokenizer, docs)
        usable = len(stream) // 16 * 16
        assert tensor.flatten().tolist() == stream[:usable]


def test_max_blocks_keep_the_first_blocks(tmp_path: Path, tokenizer) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(200))
    full = prepare_data(config(tmp_path, [path]), tokenizer)
    limited = prepare_data(config(tmp_path, [path], max_train_blocks=5, max_eval_blocks=2), tokenizer)
    assert limited.fingerprint != full.fingerprint
    assert limited.train_tokens == 5 * 16 and limited.validation_tokens == 2 * 16
    assert torch.equal(limited.train_tensor(), full.train_tensor()[:5])
    assert torch.equal(limited.validation_tensor(), full.validation_tensor()[:2])


# --- the holdout split (data.holdout_fraction) ------------------------------------------------------------------


def split_texts(cfg: DataConfig, tmp_path: Path) -> dict[str, list[str]]:
    """Each split's documents as texts, in their order: the data package's own reading, before tokenizing."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    found = _documents.load_documents(cfg, _source.resolve_source(cfg, None), work)
    return {split: [text.strip("\n") for text in part.docs[part.docs.column_names[0]]] for split, part in found.items()}


def packed(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> list[int]:
    stream = doc_tokens(tokenizer, docs)
    return stream[: len(stream) // 16 * 16]


def test_without_a_holdout_blocks_and_fingerprint_are_those_of_before(tmp_path: Path, tokenizer) -> None:
    docs = make_docs(200)
    path = write_txt(tmp_path / "a.txt", docs)
    data = prepare_data(config(tmp_path, [path], validation_fraction=0.2, split_seed=3, holdout_fraction=0), tokenizer)
    assert data.holdout is None and data.holdout_tensor() is None and data.holdout_tokens == 0
    assert sorted(p.name for p in (tmp_path / "cache" / data.fingerprint).iterdir() if p.is_dir()) == [
        "train",
        "validation",
    ]
    # The rule ftlab has always split by: train_test_split of the documents with split_seed, packed in that order.
    halves = datasets.Dataset.from_dict({"text": docs}).train_test_split(test_size=0.2, seed=3)
    assert data.train_tensor().flatten().tolist() == packed(tokenizer, halves["train"]["text"])
    assert data.validation_tensor().flatten().tolist() == packed(tokenizer, halves["test"]["text"])
    # The fingerprint of before (no holdout key): existing cache entries and studies keep their names.
    payload = {
        "format_version": _source.FORMAT_VERSION,
        "source": {"train": [[".txt", _source._file_digest(path)]]},
        "tokenizer": _source._tokenizer_digest(tokenizer),
        "text_column": "text",
        "block_size": 16,
        "validation_fraction": 0.2,
        "split_seed": 3,
        "max_train_blocks": None,
        "max_eval_blocks": None,
    }
    assert data.fingerprint == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def test_the_holdout_is_cut_by_document_deterministically_apart_from_both_other_splits(
    tmp_path: Path, tokenizer
) -> None:
    docs = make_docs(200)
    assert len(set(docs)) == len(docs)
    path = write_txt(tmp_path / "a.txt", docs)
    cfg = config(tmp_path, [path], validation_fraction=0.1, holdout_fraction=0.15)

    texts = split_texts(cfg, tmp_path)

    assert [len(texts[split]) for split in ("train", "validation", "holdout")] == [150, 20, 30]
    train, validation, holdout = (set(texts[split]) for split in ("train", "validation", "holdout"))
    assert not holdout & train and not holdout & validation and not train & validation
    assert train | validation | holdout == set(docs)
    # The validation split is that of the same data without a holdout: only the training documents give way.
    assert texts["validation"] == split_texts(config(tmp_path, [path], validation_fraction=0.1), tmp_path)["validation"]

    first = prepare_data(cfg, tokenizer)
    again = prepare_data(cfg.model_copy(update={"cache_dir": str(tmp_path / "again")}), tokenizer)
    cached = prepare_data(cfg, tokenizer)
    without = prepare_data(config(tmp_path, [path], validation_fraction=0.1), tokenizer)
    assert not again.from_cache and cached.from_cache
    for other in (again, cached):
        assert other.fingerprint == first.fingerprint
        assert torch.equal(other.holdout_tensor(), first.holdout_tensor())  # type: ignore[arg-type]
        assert torch.equal(other.train_tensor(), first.train_tensor())
    assert first.fingerprint != without.fingerprint  # a sweep file whose holdout changed no longer matches its study
    assert torch.equal(first.validation_tensor(), without.validation_tensor())
    assert first.holdout_tensor().flatten().tolist() == packed(tokenizer, texts["holdout"])  # type: ignore[union-attr]
    assert first.train_tensor().flatten().tolist() == packed(tokenizer, texts["train"])
    assert first.holdout_tokens == len(first.holdout) * 16  # type: ignore[arg-type]


@pytest.mark.parametrize("source", ["files", "hub"])
def test_with_a_validation_split_in_the_data_the_holdout_is_cut_from_the_training_documents(
    tmp_path: Path, monkeypatch, source: str
) -> None:
    train_docs, val_docs = make_docs(100, seed=1), make_docs(30, seed=2)
    if source == "hub":
        # The same path as local files once loaded: a hub dataset with its own validation (and test) split.
        splits = {"train": train_docs, "validation": val_docs, "test": make_docs(10, seed=3)}
        raw = datasets.DatasetDict({name: datasets.Dataset.from_dict({"text": t}) for name, t in splits.items()})
        monkeypatch.setattr(_documents, "_load_hub", lambda source: raw)
        cfg = DataConfig(dataset="ftlab-test/text", holdout_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    else:
        train = write_txt(tmp_path / "train.txt", train_docs)
        val = write_txt(tmp_path / "val.txt", val_docs)
        cfg = config(tmp_path, [train], validation_files=[str(val)], holdout_fraction=0.2)

    texts = split_texts(cfg, tmp_path)

    assert texts["validation"] == val_docs
    assert len(texts["holdout"]) == 20 and len(texts["train"]) == 80
    assert not set(texts["holdout"]) & set(texts["train"])
    assert set(texts["holdout"]) | set(texts["train"]) == set(train_docs)


def test_too_little_data_for_a_holdout_names_the_setting(tmp_path: Path, tokenizer) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(3))
    # One document goes to validation; 2 (50 % of 3) to the holdout would leave none to train on.
    with pytest.raises(DataError, match=r"data\.holdout_fraction: cannot hold out 2 holdout document"):
        prepare_data(config(tmp_path, [path], validation_fraction=0.3, holdout_fraction=0.5), tokenizer)
    train = write_txt(tmp_path / "train.txt", make_docs(200))
    val = write_txt(tmp_path / "val.txt", make_docs(100, seed=5))
    with pytest.raises(DataError, match=r"the holdout split has \d+ tokens.*a larger `data\.holdout_fraction`"):
        prepare_data(config(tmp_path, [train], validation_files=[str(val)], holdout_fraction=0.005, block_size=256),
                     tokenizer)  # fmt: skip


# --- the cache ----------------------------------------------------------------------------------------------------


def test_second_call_is_a_cache_hit(tmp_path: Path, tokenizer, monkeypatch) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(300))
    cfg = config(tmp_path, [path])
    first = prepare_data(cfg, tokenizer)

    def no_build(*args: object) -> None:
        raise AssertionError("a cache hit tokenized the data again")

    # How fast a hit is, is measured by benchmarks/trial_cpu.py (prepare_data_cache_hit_s); here: that nothing is built.
    monkeypatch.setattr(_cache, "build_splits", no_build)
    second = prepare_data(cfg, tokenizer)
    assert second.from_cache and not first.from_cache
    assert second.fingerprint == first.fingerprint == data_fingerprint(cfg, tokenizer)
    assert torch.equal(second.train_tensor(), first.train_tensor())
    assert torch.equal(second.validation_tensor(), first.validation_tensor())
    assert (second.train_tokens, second.validation_tokens) == (first.train_tokens, first.validation_tokens)
    # The only entries in the cache folder: the prepared splits and their lock; no temporary folders are left.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.fingerprint, f"{first.fingerprint}.lock"]


def test_fingerprint_follows_settings_content_and_tokenizer(tmp_path: Path, tokenizer) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(50))
    base = data_fingerprint(config(tmp_path, [path]), tokenizer)
    assert data_fingerprint(config(tmp_path, [path], block_size=32), tokenizer) != base
    assert data_fingerprint(config(tmp_path, [path], validation_fraction=0.1), tokenizer) != base
    # Content, not the path, counts: a copy elsewhere shares the entry, an edit makes a new one.
    copy = tmp_path / "copy" / "b.txt"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    assert data_fingerprint(config(tmp_path, [copy]), tokenizer) == base
    copy.write_text("changed text\n", encoding="utf-8")
    assert data_fingerprint(config(tmp_path, [copy]), tokenizer) != base
    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), eos_token=EOS
    )
    assert data_fingerprint(config(tmp_path, [path]), other) == base
    other.backend_tokenizer.add_tokens(["sweep"])
    assert data_fingerprint(config(tmp_path, [path]), other) != base


def test_relative_paths_use_base_dir_and_cache_dir_uses_cwd(tmp_path: Path, tokenizer, monkeypatch) -> None:
    (tmp_path / "sweeps").mkdir()
    write_txt(tmp_path / "sweeps" / "a.txt", make_docs(60))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = DataConfig(train_files=["a.txt"], block_size=16, cache_dir="cache")
    data = prepare_data(cfg, tokenizer, base_dir=tmp_path / "sweeps")
    assert (work / "cache" / data.fingerprint / "train").is_dir()
    with pytest.raises(DataError, match=r"data\.train_files\[0\]"):
        prepare_data(cfg, tokenizer)  # without base_dir: relative to the cwd, where there is no a.txt


def test_demo_names_are_not_resolved_here(tmp_path: Path, tokenizer, monkeypatch) -> None:
    # load_sweep resolves demo:// once; fingerprinting or preparing data never builds the demo assets.
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "home"))
    with pytest.raises(DataError, match=r"data\.train_files\[0\]: data file not found"):
        data_fingerprint(config(tmp_path, ["demo://pydoc-topics.txt"]), tokenizer)
    assert not (tmp_path / "home").exists()


def test_crashed_preparations_are_cleaned_up(tmp_path: Path, tokenizer) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(60))
    cfg = config(tmp_path, [path])
    fingerprint = data_fingerprint(cfg, tokenizer)
    cache = tmp_path / "cache"
    (cache / f".{fingerprint}.tmp-dead" / "train").mkdir(parents=True)  # a killed process's staging folder
    (cache / f".{fingerprint}.old-dead").mkdir()  # an entry moved aside by a killed rebuild
    (cache / fingerprint / "train").mkdir(parents=True)  # a cache entry without its meta file: not complete
    data = prepare_data(cfg, tokenizer)
    assert not data.from_cache
    assert sorted(p.name for p in cache.iterdir()) == [fingerprint, f"{fingerprint}.lock"]
    assert prepare_data(cfg, tokenizer).from_cache


def test_failed_preparation_leaves_nothing_that_looks_complete(tmp_path: Path, tokenizer, monkeypatch) -> None:
    cfg = config(tmp_path, [write_txt(tmp_path / "a.txt", make_docs(60))])

    def interrupted(config: DataConfig, source: object, tokenizer: object, key: str, out: Path, work: Path) -> None:
        (out / "train").mkdir()
        raise RuntimeError("interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(_cache, "build_splits", interrupted)
        with pytest.raises(RuntimeError, match="interrupted"):
            prepare_data(cfg, tokenizer)
    fingerprint = data_fingerprint(cfg, tokenizer)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{fingerprint}.lock"]
    assert not prepare_data(cfg, tokenizer).from_cache


def _prepare_in_child(cfg: DataConfig, tokenizer: PreTrainedTokenizerFast, queue: Any) -> None:
    data = prepare_data(cfg, tokenizer)
    queue.put((data.from_cache, data.fingerprint, int(data.train_tensor().sum())))


@pytest.mark.skipif(sys.platform == "win32", reason="uses fork to share the imported libraries")
def test_parallel_processes_build_once_and_agree(tmp_path: Path, tokenizer) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(400))
    cfg = config(tmp_path, [path])
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_prepare_in_child, args=(cfg, tokenizer, queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(from_cache for from_cache, _, _ in results) == [False, True, True]  # one built, two waited
    assert len({result[1:] for result in results}) == 1


def test_progress_bars_are_silenced_then_restored(tmp_path: Path, tokenizer, capfd) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(60))
    before = datasets.utils.are_progress_bars_disabled()
    prepare_data(config(tmp_path, [path]), tokenizer)
    assert datasets.utils.are_progress_bars_disabled() == before
    captured = capfd.readouterr()
    assert "examples/s" not in captured.err + captured.out


def test_datasets_own_cache_does_not_grow(tmp_path: Path, tokenizer, monkeypatch) -> None:
    hf_cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_cache)
    path = write_txt(tmp_path / "a.txt", make_docs(60))
    prepare_data(config(tmp_path, [path]), tokenizer)
    assert not hf_cache.exists() or not any(hf_cache.iterdir())


def test_byte_order_mark_is_dropped(tmp_path: Path, tokenizer) -> None:
    train = write_txt(tmp_path / "train.txt", make_docs(50))
    val = tmp_path / "val.txt"
    val.write_text("\ufeffFirst words here.\n\n" + "\n\n".join(make_docs(10, seed=3)), encoding="utf-8")
    data = prepare_data(config(tmp_path, [train], validation_files=[str(val)], block_size=8), tokenizer)
    assert tokenizer.decode(data.validation_tensor().flatten().tolist()).startswith(f"First words here.{EOS}")


# --- bad input ----------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path, tokenizer) -> None:
    good = write_txt(tmp_path / "a.txt", make_docs(60))
    with pytest.raises(DataError, match=r"data\.validation_files\[1\]: data file not found.*nope\.txt"):
        prepare_data(config(tmp_path, [good], validation_files=[str(good), "nope.txt"]), tokenizer, base_dir=tmp_path)


def test_glob_without_matches(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(DataError, match=r"data\.train_files\[0\]: no file matches"):
        prepare_data(config(tmp_path, [tmp_path / "shards" / "*.txt"]), tokenizer)


def test_glob_matches_files_in_sorted_order(tmp_path: Path, tokenizer) -> None:
    for index in range(3):
        write_txt(tmp_path / f"part-{index}.txt", make_docs(40, seed=index))
    data = prepare_data(config(tmp_path, [tmp_path / "part-*.txt"]), tokenizer)
    assert data.train_tokens > 0


def test_unsupported_extension(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "data.xml"
    path.write_text("<doc>text</doc>", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.train_files\[0\]: unsupported file extension '\.xml'.*\.parquet"):
        prepare_data(config(tmp_path, [path]), tokenizer)


def test_mixed_formats(tmp_path: Path, tokenizer) -> None:
    txt = write_txt(tmp_path / "a.txt", make_docs(60))
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "hello"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.train_files: all data files must have one format"):
        prepare_data(config(tmp_path, [txt, jsonl]), tokenizer)


def test_empty_file(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "empty.txt"
    path.touch()
    with pytest.raises(DataError, match=r"data\.train_files\[0\]: the file .*empty\.txt is empty"):
        prepare_data(config(tmp_path, [path]), tokenizer)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_no_text(tmp_path: Path, tokenizer, suffix: str) -> None:
    path = tmp_path / f"blank{suffix}"
    path.write_text("\n\n   \n\n\n" if suffix == ".txt" else '{"text": ""}\n{"text": null}\n{"text": "  "}\n')
    with pytest.raises(DataError, match=r"data\.train_files: no text in data\.train_files blank"):
        prepare_data(config(tmp_path, [path]), tokenizer)


def test_missing_text_column_lists_the_columns(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "a.csv"
    path.write_text("id,body\n1,hello there\n2,general kenobi\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.text_column: no column 'text'.*a\.csv.*one of: id, body"):
        prepare_data(config(tmp_path, [path]), tokenizer)


def test_text_column_that_is_not_text(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "a.csv"
    path.write_text("id,body\n1,hello there\n2,general kenobi\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.text_column: column 'id'.*not text"):
        prepare_data(config(tmp_path, [path], text_column="id"), tokenizer)


def test_too_few_tokens_for_one_train_block(tmp_path: Path, tokenizer) -> None:
    train = write_txt(tmp_path / "train.txt", ["Tiny text."])
    val = write_txt(tmp_path / "val.txt", make_docs(40))
    with pytest.raises(DataError) as caught:
        prepare_data(config(tmp_path, [train], validation_files=[str(val)], block_size=64), tokenizer)
    message = str(caught.value)
    tokens = len(doc_tokens(tokenizer, ["Tiny text."]))
    assert message.startswith("data.block_size: the train split has")
    assert f"has {tokens} tokens" in message and "train.txt" in message and "fewer than one block of 64" in message
    assert "got 64" in message and f"at most {tokens}" in message


def test_too_few_tokens_for_one_validation_block(tmp_path: Path, tokenizer) -> None:
    path = write_txt(tmp_path / "a.txt", make_docs(20))
    with pytest.raises(
        DataError,
        match=r"data\.block_size: the validation split has \d+ tokens.*held out.*"
        r"validation_fraction",
    ):
        prepare_data(config(tmp_path, [path], block_size=256), tokenizer)


def test_too_few_documents_to_split(tmp_path: Path, tokenizer) -> None:
    path = write_txt(tmp_path / "a.txt", [" ".join(make_docs(30))])  # one paragraph = one document
    with pytest.raises(DataError, match=r"data\.validation_fraction: cannot hold out .* only 1 document"):
        prepare_data(config(tmp_path, [path]), tokenizer)


def test_txt_that_is_not_utf8_names_file_and_byte_offset(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("Plain words first.\n\nCaf\u00e9 au lait.\n".encode("latin-1"))  # é is byte 0xE9 at offset 23
    with pytest.raises(DataError, match=r"data\.train_files: .*latin1\.txt is not UTF-8 text.*byte offset 23"):
        prepare_data(config(tmp_path, [path]), tokenizer)


def test_utf8_check_across_read_boundaries(tmp_path: Path, monkeypatch) -> None:
    # With 3-byte reads, "é" (2 bytes at offset 2) is cut in two and must pass; 0xFF at offset 6 must be reported.
    monkeypatch.setattr(_source, "READ_CHUNK", 3)
    path = tmp_path / "a.txt"
    path.write_bytes(b"ab" + "\u00e9".encode() + b"cd\xff")
    with pytest.raises(DataError, match=r"byte offset 6"):
        _source.check_utf8(path, "data.train_files")
    path.write_bytes(b"ab" + "\u00e9".encode())
    _source.check_utf8(path, "data.train_files")
    path.write_bytes(b"ab" + "\u00e9".encode()[:1])  # a character cut off by the end of the file
    with pytest.raises(DataError, match=r"byte offset 2"):
        _source.check_utf8(path, "data.train_files")


def test_csv_that_is_not_utf8(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes("text\nna\u00efve row\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.csv is not UTF-8 text.*byte offset 7"):
        prepare_data(config(tmp_path, [path]), tokenizer)


@pytest.mark.parametrize(("name", "content"), [("bad.jsonl", "{not json\n"), ("bad.parquet", "not parquet")])
def test_unreadable_files(tmp_path: Path, tokenizer, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.train_files: cannot read the data files: .*bad\."):
        prepare_data(config(tmp_path, [path]), tokenizer)


def test_hub_dataset_offline(tmp_path: Path, tokenizer, monkeypatch) -> None:
    # datasets reads HF_DATASETS_OFFLINE at import, which may precede conftest's setting; set what it consults.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = DataConfig(dataset="ftlab-test/no-such-dataset", dataset_config="raw", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as caught:
        prepare_data(cfg, tokenizer)
    message = str(caught.value)
    assert message.startswith("data.dataset: cannot load the hub dataset")
    assert "ftlab-test/no-such-dataset (raw)" in message and "HF_DATASETS_OFFLINE" in message


def test_tokenizer_without_eos(tmp_path: Path, tokenizer) -> None:
    no_eos = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()))
    assert no_eos.eos_token_id is None
    path = write_txt(tmp_path / "a.txt", make_docs(60))
    with pytest.raises(DataError, match=r"model\.tokenizer: .*no EOS token"):
        prepare_data(config(tmp_path, [path]), no_eos)
