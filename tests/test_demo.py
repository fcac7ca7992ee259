"""The offline demo assets and ``demo://`` names: built once per test session (conftest points FTLAB_HOME at a
temporary folder); tests of locking and failures use a stand-in build in a home of their own."""

from __future__ import annotations

import json
import json.decoder
import math
import queue
import shlex
import threading
import time
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
import yaml
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, pipeline

from ftlab import demo, paths
from ftlab.config import parse_sweep
from ftlab.errors import UserError


@pytest.fixture(scope="module")
def assets(ftlab_home: Path) -> demo.DemoAssets:
    return demo.ensure_demo_assets()


@pytest.fixture(scope="module")
def model_and_tokenizer(assets: demo.DemoAssets):
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    return model.eval(), tokenizer


def test_assets_live_under_ftlab_home(assets: demo.DemoAssets, ftlab_home: Path) -> None:
    assert assets.model_dir == ftlab_home / "demo" / "tiny-gpt2"
    assert assets.text_file == ftlab_home / "demo" / "pydoc-topics.txt"
    assert (ftlab_home / "demo" / demo.MARKER_FILENAME).is_file()
    assert not list(ftlab_home.glob(".demo.*"))  # staging folders never outlive a build


def test_model_dir_is_a_normal_hugging_face_model_dir(assets: demo.DemoAssets, model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    names = {path.name for path in assets.model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.vocab_size == len(tokenizer) == demo.RECIPE.vocab_size
    assert model.config.n_positions == tokenizer.model_max_length == demo.RECIPE.n_positions
    eos_id = tokenizer.convert_tokens_to_ids(demo.EOS_TOKEN)
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == eos_id
    assert model.config.eos_token_id == model.config.bos_token_id == eos_id
    assert model.generation_config.eos_token_id == model.generation_config.pad_token_id == eos_id


def test_tokenizer_round_trips_pydoc_text(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    sentence = topics["assert"].split("\n\n")[1] + "\n\n   naïve café: ∑ 日本\n"  # non-ASCII survives byte-level BPE
    ids = tokenizer(sentence)["input_ids"]
    assert tokenizer.decode(ids) == sentence
    assert len(ids) < len(sentence) / 2  # the BPE learned real merges, not just bytes


def test_text_generation_pipeline_generates(assets: demo.DemoAssets) -> None:
    generator = pipeline("text-generation", model=str(assets.model_dir), device="cpu")
    prompt = "The assert statement"
    out = generator(prompt, min_new_tokens=5, max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert out.startswith(prompt) and len(out) > len(prompt)


def _mean_loss(model, tokenizer, text: str, max_blocks: int = 16) -> float:
    """Mean next-token loss over the text's full-length blocks."""
    size = model.config.n_positions
    ids = tokenizer(text)["input_ids"][: max_blocks * size]
    blocks = torch.tensor(ids[: len(ids) // size * size]).view(-1, size)
    with torch.no_grad():
        return model(input_ids=blocks, labels=blocks).loss.item()


def test_model_is_pretrained_on_python_source(assets: demo.DemoAssets, model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    # Modules past the alphabetical end of the pre-training text, so this measures learning, not memory.
    unseen = "\n".join(Path(module.__file__).read_text(encoding="utf-8") for module in (json.decoder, queue, shlex))
    code_loss = _mean_loss(model, tokenizer, unseen)
    uniform = math.log(model.config.vocab_size)
    assert code_loss < uniform - 1.5, (
        f"loss {code_loss:.2f} on unseen source is not clearly below uniform {uniform:.2f}"
    )
    # The demo fine-tune is a real domain shift: the help topics' prose is harder for it than Python code.
    assert _mean_loss(model, tokenizer, demo.topics_text()) > code_loss + 0.5

    report = json.loads((assets.model_dir / demo.PRETRAINING_FILENAME).read_text(encoding="utf-8"))
    assert report["steps"] == demo.RECIPE.steps
    assert report["tokens"] == demo.RECIPE.steps * demo.RECIPE.batch_size * demo.RECIPE.n_positions
    assert report["seconds"] > 0
    assert report["loss"] < uniform - 2.0


def test_second_call_does_not_build(assets: demo.DemoAssets, monkeypatch: pytest.MonkeyPatch) -> None:
    # How fast this is, is measured by benchmarks/trial_cpu.py (demo_assets_hit_s); here: that nothing is built.
    monkeypatch.setattr(demo, "_build_assets", _fake_build([], fail=True))
    again = demo.ensure_demo_assets()
    assert not again.built
    assert (again.model_dir, again.text_file) == (assets.model_dir, assets.text_file)


def test_text_file_holds_the_help_topics_sorted(assets: demo.DemoAssets) -> None:
    text = assets.text_file.read_text(encoding="utf-8")
    assert topics["assert"].rstrip("\n") in text
    first = min(topics)
    assert text.startswith(topics[first].rstrip("\n") + "\n\n")
    assert text == demo.topics_text()


def test_resolve_maps_demo_names_to_paths(assets: demo.DemoAssets) -> None:
    assert demo.resolve(demo.DEMO_MODEL) == str(assets.model_dir)
    assert demo.resolve(demo.DEMO_TEXT) == str(assets.text_file)


@pytest.mark.parametrize("value", ["gpt2", "openai-community/gpt2", "/tmp/model", "data/train.txt", "", "demo:/x"])
def test_resolve_leaves_other_values_unchanged(value: str) -> None:
    assert not demo.is_demo_uri(value)
    assert demo.resolve(value) == value


def test_resolve_rejects_unknown_demo_names() -> None:
    with pytest.raises(UserError) as caught:
        demo.resolve("demo://tiny-gpt3")
    message = str(caught.value)
    assert "demo://tiny-gpt3" in message
    assert demo.DEMO_MODEL in message and demo.DEMO_TEXT in message


def _fake_build(calls: list[int], *, fail: bool = False):
    """A stand-in for the real build that is slow enough for callers to overlap, and counts its runs."""

    def build(staging: Path) -> None:
        calls.append(1)
        if fail:
            (staging / demo.TEXT_FILENAME).write_text("half", encoding="utf-8")
            raise RuntimeError("interrupted")
        time.sleep(0.3)
        (staging / demo.MODEL_DIRNAME).mkdir()
        (staging / demo.MODEL_DIRNAME / "model.safetensors").write_bytes(b"fake")
        (staging / demo.TEXT_FILENAME).write_text("fake", encoding="utf-8")

    return build


def test_assets_follow_ftlab_home_with_the_lock_beside_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    monkeypatch.setattr(demo, "_build_assets", _fake_build([]))
    assets = demo.ensure_demo_assets()
    assert assets.model_dir == paths.demo_dir() / demo.MODEL_DIRNAME == tmp_path / "demo" / "tiny-gpt2"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo", "demo.lock"]
    monkeypatch.delenv("FTLAB_HOME")
    assert paths.ftlab_home() == Path.home() / ".cache" / "ftlab"


def test_concurrent_callers_build_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    calls: list[int] = []
    monkeypatch.setattr(demo, "_build_assets", _fake_build(calls))
    results: list[demo.DemoAssets] = []
    threads = [threading.Thread(target=lambda: results.append(demo.ensure_demo_assets())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(result.built for result in results) == [False, False, False, True]
    assert all(result.text_file.read_text(encoding="utf-8") == "fake" for result in results)

    results[0].text_file.write_text("edited", encoding="utf-8")
    rebuilt = demo.ensure_demo_assets(force=True)  # replaces the existing folder
    assert rebuilt.built and len(calls) == 2
    assert rebuilt.text_file.read_text(encoding="utf-8") == "fake"
    assert not list(tmp_path.glob(".demo.*"))


def test_failed_build_leaves_nothing_that_looks_complete(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    calls: list[int] = []
    monkeypatch.setattr(demo, "_build_assets", _fake_build(calls, fail=True))
    with pytest.raises(RuntimeError, match="interrupted"):
        demo.ensure_demo_assets()
    assert not (tmp_path / "demo").exists()
    assert not list(tmp_path.glob(".demo.*"))

    (tmp_path / ".demo.tmp-killed").mkdir()  # what a build killed outright leaves
    monkeypatch.setattr(demo, "_build_assets", _fake_build(calls))
    assert demo.ensure_demo_assets().built
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo", "demo.lock"]


def test_lock_held_too_long_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    monkeypatch.setattr(demo, "_LOCK_TIMEOUT_S", 0.1)
    monkeypatch.setattr(demo, "_build_assets", _fake_build([], fail=True))
    with FileLock(tmp_path / "demo.lock"), pytest.raises(UserError) as caught:  # a stuck process holds the lock
        demo.ensure_demo_assets()
    assert str(tmp_path / "demo.lock") in str(caught.value)


# --- demo:// names in a sweep ---------------------------------------------------------------------------------------


def _sweep_data(**data: object) -> dict[str, object]:
    return {"name": "t", "model": {"name_or_path": demo.DEMO_MODEL}, "data": {"train_files": [demo.DEMO_TEXT], **data}}


def test_resolve_demo_uris_replaces_every_demo_name(assets: demo.DemoAssets) -> None:
    raw = _sweep_data(validation_files=[demo.DEMO_TEXT, "held-out.txt"])
    raw["model"] = {"name_or_path": demo.DEMO_MODEL, "tokenizer": demo.DEMO_MODEL}
    sweep = parse_sweep(raw)
    resolved = demo.resolve_demo_uris(sweep)
    assert resolved.model.name_or_path == resolved.model.tokenizer == str(assets.model_dir)
    assert resolved.data.train_files == [str(assets.text_file)]
    assert resolved.data.validation_files == [str(assets.text_file), "held-out.txt"]
    assert sweep.model.name_or_path == demo.DEMO_MODEL  # a copy: the parsed sweep is left as it was


def test_resolve_demo_uris_without_demo_names_builds_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    sweep = parse_sweep({"name": "t", "model": {"name_or_path": "gpt2"}, "data": {"train_files": ["a.txt"]}})
    assert demo.resolve_demo_uris(sweep) is sweep
    assert not any(tmp_path.iterdir())


def test_unknown_demo_name_is_an_error_before_any_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path))
    calls: list[int] = []
    monkeypatch.setattr(demo, "_build_assets", _fake_build(calls))
    sweep = parse_sweep(_sweep_data(validation_files=["demo://pydoc-topic.txt"]))
    with pytest.raises(UserError, match=r"^sweep\.yaml:data\.validation_files\[0\]: unknown demo asset") as caught:
        demo.resolve_demo_uris(sweep, source="sweep.yaml")
    assert "demo://pydoc-topic.txt" in str(caught.value) and demo.DEMO_TEXT in str(caught.value)
    assert calls == []


def test_load_sweep_with_assets_resolves_demo_names(assets: demo.DemoAssets, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_sweep_data()), encoding="utf-8")
    sweep = demo.load_sweep_with_assets(path)
    assert (sweep.model.name_or_path, sweep.data.train_files) == (str(assets.model_dir), [str(assets.text_file)])
