"""A very long document (a 50 MB one-line file) is tokenized in pieces, to the same tokens as whole."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ftlab.data import _blocks

WORDS = ["alpha", "beta", "gamma,", "delta.", "the", "of", "and", "Über", "naïve", "x", "12", "(a)", "—"]


@pytest.fixture(scope="module")
def tokenizer(ftlab_home: Path):  # type: ignore[no-untyped-def]
    from ftlab.demo import ensure_demo_assets

    return AutoTokenizer.from_pretrained(ensure_demo_assets().model_dir)


def test_a_long_document_in_pieces_gives_the_tokens_of_the_whole(tokenizer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(_blocks, "_LONG_DOCUMENT_CHARS", 500)
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(5000))
    eos = tokenizer.eos_token_id
    whole = tokenizer(text, verbose=False)["input_ids"] + [eos]
    assert _blocks._tokenize_long(text, tokenizer, eos).tolist() == whole
    no_spaces = "x" * 2000  # cut where it is: every character still tokenized once
    pieces = _blocks._tokenize_long(no_spaces, tokenizer, eos).tolist()
    assert tokenizer.decode(pieces[:-1]) == no_spaces and pieces[-1] == eos


@pytest.mark.parametrize("texts", [["long"], ["short one", "long", "short two"]])
def test_batches_with_long_documents_tokenize_each_document(tokenizer, monkeypatch, tmp_path, texts) -> None:  # type: ignore[no-untyped-def]
    import datasets

    monkeypatch.setattr(_blocks, "_LONG_DOCUMENT_CHARS", 300)
    long_text = " ".join(random.Random(1).choice(WORDS) for _ in range(400))
    docs = [long_text if text == "long" else text for text in texts]
    tokens = _blocks._tokenize(
        datasets.Dataset.from_dict({"text": docs}), tokenizer, tmp_path / "t.arrow", "f", strip_newlines=False
    )
    eos = tokenizer.eos_token_id
    assert tokens["input_ids"] == [tokenizer(doc, verbose=False)["input_ids"] + [eos] for doc in docs]
