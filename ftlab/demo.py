"""Offline demo assets: a tiny GPT-2 pre-trained on Python source, and prose to fine-tune it on.

The demo needs no network: everything is built from the Python standard library on first use, in about 15 seconds
on two CPU cores, and kept under ``$FTLAB_HOME/demo`` (default ``~/.cache/ftlab/demo``):

- ``demo://pydoc-topics.txt``: the standard library's help topics (``pydoc_data.topics``, ~460 KB of prose).
- ``demo://tiny-gpt2``: a normal Hugging Face model directory (safetensors weights, config, generation config,
  byte-level BPE tokenizer) holding a 2-layer GPT-2 briefly pre-trained on the standard library's *source code*, so
  fine-tuning it on the help topics is a real domain shift (code to prose) that a sweep can improve on.

Sweep files use the ``demo://`` names wherever a model path or data file goes; ``load_sweep`` calls
:func:`resolve_demo_uris` right after reading the file, so the rest of ftlab only ever sees local paths. The whole
demo folder is built once with :func:`ftlab.fileio.build_once`: several processes (parallel sweep workers) may ask for
the assets at once, one builds them under ``$FTLAB_HOME/demo.lock`` into a staging folder that is renamed into place,
and a marker file written last into it says the build is complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import Timeout

from ftlab.config import SweepConfig, load_sweep
from ftlab.errors import UserError
from ftlab.fileio import atomic_write_json, build_once
from ftlab.paths import demo_dir

if TYPE_CHECKING:  # torch and transformers are imported only when building, so `import ftlab.demo` stays fast
    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel


logger = logging.getLogger(__name__)

DEMO_SCHEME = "demo://"
DEMO_MODEL = "demo://tiny-gpt2"
DEMO_TEXT = "demo://pydoc-topics.txt"

MODEL_DIRNAME = "tiny-gpt2"
TEXT_FILENAME = "pydoc-topics.txt"
MARKER_FILENAME = "build.json"  # written last: its presence (with the current recipe) means the build is complete
PRETRAINING_FILENAME = "pretraining.json"
EOS_TOKEN = "<|endoftext|>"

# Bump when the build code changes its output in a way the recipe below does not show, so old homes rebuild.
_BUILD_FORMAT = 1
_ASSET_FIELDS = {DEMO_MODEL: "model_dir", DEMO_TEXT: "text_file"}  # demo:// name → DemoAssets attribute
_LOCK_TIMEOUT_S = 600.0  # a build takes seconds; a lock held this long means a hung process, not a slow one


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo assets; recorded next to them so a build can be replayed and compared."""

    vocab_size: int = 4096
    """Byte-level BPE vocabulary, special token included; small, so the embedding and softmax stay cheap."""
    n_layer: int = 2
    """Transformer blocks; two keep a 60-step fine-tune of 8x128-token batches to a few seconds on two cores."""
    n_embd: int = 128
    """Hidden size."""
    n_head: int = 4
    """Attention heads (32 dimensions each)."""
    n_positions: int = 256
    """Longest sequence the model accepts; pre-training uses full-length blocks so every position is trained."""
    source_chars: int = 1_000_000
    """Characters of standard-library source to read, in sorted path order; more than pre-training consumes."""
    file_chars: int = 50_000
    """Characters taken from the start of each source file, so a few huge modules do not dominate."""
    steps: int = 180
    """Pre-training optimizer steps: the main cost of the build (~70 ms each on two cores)."""
    batch_size: int = 4
    """Blocks per step: 4 x 256 = 1024 tokens, the same as the demo fine-tune's 8 x 128."""
    learning_rate: float = 3e-3
    """Peak AdamW learning rate; high because the model is tiny and the run is short."""
    warmup_steps: int = 18
    """Linear warm-up steps, then cosine decay to a tenth of the peak."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    eval_blocks: int = 16
    """Held-out source blocks on which the reported pre-training loss is measured."""
    seed: int = 0
    """Seeds the model's initialisation and the block order, so a machine rebuilds the same weights."""


RECIPE = DemoRecipe()


@dataclass(frozen=True)
class DemoAssets:
    """Where the demo assets are, and what getting them cost this call."""

    model_dir: Path
    text_file: Path
    seconds: float  # spent by this call: building, waiting for another process's build, or just checking
    built: bool  # whether this call built them


def is_demo_uri(value: str) -> bool:
    """Return whether ``value`` names a demo asset (starts with ``demo://``)."""
    return isinstance(value, str) and value.startswith(DEMO_SCHEME)


def resolve(value: str) -> str:
    """Turn a ``demo://`` name into the local path of that asset, building the assets if they are missing.

    Args:
        value: a model name or path, a data file, or one of :data:`DEMO_MODEL` and :data:`DEMO_TEXT`.

    Returns:
        The path of the demo model folder or text file as a string; any value that is not ``demo://`` unchanged.

    Raises:
        UserError: ``value`` starts with ``demo://`` but names no demo asset.
    """
    if not is_demo_uri(value):
        return value
    _check_known(value)
    return str(getattr(ensure_demo_assets(), _ASSET_FIELDS[value]))


def resolve_demo_uris(sweep: SweepConfig, *, source: str | None = None) -> SweepConfig:
    """Return a copy of ``sweep`` whose ``demo://`` names are local paths, building the demo assets on first use.

    Looks at ``model.name_or_path``, ``model.tokenizer``, ``data.train_files`` and ``data.validation_files``; a sweep
    without ``demo://`` names is returned as it is, and nothing is built.

    Args:
        sweep: a validated sweep.
        source: the sweep file, named in errors before the key.

    Raises:
        UserError: a ``demo://`` name that is no demo asset, naming the key; raised before anything is built.
    """
    prefix = f"{source}:" if source else ""
    model = {"name_or_path": sweep.model.name_or_path, "tokenizer": sweep.model.tokenizer}
    data = {"train_files": sweep.data.train_files, "validation_files": sweep.data.validation_files}
    uris = {f"{prefix}model.{key}": value for key, value in model.items() if value is not None and is_demo_uri(value)}
    for key, values in data.items():
        uris |= {
            f"{prefix}data.{key}[{index}]": value for index, value in enumerate(values or []) if is_demo_uri(value)
        }
    if not uris:
        return sweep
    for where, value in uris.items():  # every name checked before the first one builds the assets
        _check_known(value, where)
    model = {key: value if value is None else resolve(value) for key, value in model.items()}
    data = {key: None if values is None else [resolve(value) for value in values] for key, values in data.items()}
    return sweep.model_copy(
        update={"model": sweep.model.model_copy(update=model), "data": sweep.data.model_copy(update=data)}
    )


def load_sweep_with_assets(path: str | Path) -> SweepConfig:
    """The sweep file (:func:`ftlab.config.load_sweep`) with its ``demo://`` names turned into local paths, for the
    commands that train or read the model and data.

    Raises:
        ConfigError: the file cannot be read or does not match the schema.
        UserError: a ``demo://`` name that is no demo asset.
    """
    return resolve_demo_uris(load_sweep(path), source=str(path))


def _check_known(value: str, where: str | None = None) -> None:
    if value not in _ASSET_FIELDS:
        raise UserError.single(
            "unknown demo asset",
            where=where,
            value=value,
            fix=f"use {DEMO_MODEL} (model) or {DEMO_TEXT} (training text)",
        )


def ensure_demo_assets(force: bool = False) -> DemoAssets:
    """Build the demo model and text once; later calls (from any process) return at once.

    Safe to call from several processes at the same time: one builds while the others wait on a file lock, and none
    sees a half-built asset.

    Args:
        force: rebuild even if complete assets exist. Processes reading the old assets at that moment may fail.

    Returns:
        The asset paths, the seconds this call spent, and whether it built them.

    Raises:
        UserError: another process has held the build lock for over ten minutes, or ``FTLAB_HOME/demo`` holds
            something ftlab did not build (it is never replaced).
    """
    start = time.perf_counter()
    root = demo_dir()
    _check_own(root)
    try:
        # A complete build is found without a lock and without importing torch: the common case.
        built = build_once(root, _build, _is_complete, force=force, lock_timeout=_LOCK_TIMEOUT_S)
    except Timeout as error:
        raise UserError.single(
            f"another process has been building the demo assets for over {_LOCK_TIMEOUT_S:.0f} s",
            where=error.lock_file,
            fix="stop the stuck ftlab process, or set FTLAB_HOME to another folder",
        ) from None
    assets = DemoAssets(
        model_dir=root / MODEL_DIRNAME,
        text_file=root / TEXT_FILENAME,
        seconds=time.perf_counter() - start,
        built=built,
    )
    if built:
        logger.info("Built the ftlab demo assets in %s in %.1f s", root, assets.seconds)
    return assets


def _check_own(root: Path) -> None:
    """A build replaces ``root``: only ever a folder an earlier build made (any recipe: its marker file is there)."""
    if not root.exists() and not root.is_symlink():
        return
    if root.is_dir() and not root.is_symlink() and ((root / MARKER_FILENAME).is_file() or not any(root.iterdir())):
        return
    raise UserError.single(
        "the demo assets' folder exists but was not built by ftlab; it is not replaced",
        where=str(root),
        fix="move it away, or set FTLAB_HOME to a folder of ftlab's own (default ~/.cache/ftlab)",
    )


def _is_complete(root: Path) -> bool:
    """Whether a finished build of the current recipe is in ``root`` (marker present, assets in place)."""
    try:
        marker = json.loads((root / MARKER_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        marker.get("format") == _BUILD_FORMAT
        and marker.get("recipe") == asdict(RECIPE)
        and (root / MODEL_DIRNAME / "model.safetensors").is_file()
        and (root / TEXT_FILENAME).is_file()
    )


def _build(staging: Path) -> None:
    """Build the assets into ``staging``, the marker last; ``build_once`` renames it into place."""
    logger.info("Building the ftlab demo assets in %s (once, about 15 s)", demo_dir())
    start = time.perf_counter()
    _build_assets(staging)
    atomic_write_json(staging / MARKER_FILENAME, _marker(time.perf_counter() - start), indent=2)


def _marker(seconds: float) -> dict[str, Any]:
    import tokenizers
    import torch
    import transformers

    return {
        "format": _BUILD_FORMAT,
        "recipe": asdict(RECIPE),
        "seconds": round(seconds, 2),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }


def _build_assets(staging: Path, recipe: DemoRecipe = RECIPE) -> None:
    """Write ``staging/pydoc-topics.txt`` and the pre-trained model folder ``staging/tiny-gpt2``."""
    from transformers import GPT2TokenizerFast

    text = topics_text()
    (staging / TEXT_FILENAME).write_text(text, encoding="utf-8", newline="\n")

    sources = stdlib_sources(recipe)
    tokenizer = _train_tokenizer([*sources, text], recipe)
    model, metrics = _pretrain(tokenizer, sources, recipe)

    model_dir = staging / MODEL_DIRNAME
    model.save_pretrained(model_dir, safe_serialization=True)
    atomic_write_json(model_dir / PRETRAINING_FILENAME, metrics, indent=2)
    # GPT-2 has no padding token; padding with end-of-text is the usual choice and keeps the vocabulary unchanged.
    GPT2TokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=recipe.n_positions,
    ).save_pretrained(model_dir)


def topics_text() -> str:
    """Return the standard library's help topics, sorted by topic and separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].rstrip("\n") for name in sorted(topics)) + "\n"


def stdlib_sources(recipe: DemoRecipe = RECIPE) -> list[str]:
    """Return the start of each standard-library ``.py`` file, in sorted path order, up to the recipe's budget.

    Tests, third-party packages and ``pydoc_data`` (the help topics, i.e. the fine-tuning text) are left out.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"}
    paths: list[Path] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in skip]  # prune: site-packages can be huge
        paths += [Path(folder, name) for name in files if name.endswith(".py")]
    sources: list[str] = []
    total = 0
    for path in sorted(paths):
        if total >= recipe.source_chars:
            break
        source = path.read_text(encoding="utf-8", errors="replace")
        source = source[: min(recipe.file_chars, recipe.source_chars - total)]
        sources.append(source)
        total += len(source)
    return sources


def _train_tokenizer(texts: list[str], recipe: DemoRecipe) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE tokenizer: every string encodes, and decoding gives it back exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=[EOS_TOKEN],  # id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is ever unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _pretrain(tokenizer: Tokenizer, sources: list[str], recipe: DemoRecipe) -> tuple[GPT2LMHeadModel, dict[str, Any]]:
    """Create the tiny GPT-2 and pre-train it on the sources; return it and its pre-training metrics."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        # No dropout: a few hundred steps on a tiny model underfit; dropout slowed pre-training to a much worse loss.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    # Encode the sources, each followed by end-of-text, and cut the stream into full blocks.
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(sources):
        ids += [*encoding.ids, eos_id]
    n_blocks = len(ids) // recipe.n_positions
    blocks = torch.tensor(ids[: n_blocks * recipe.n_positions], dtype=torch.long).view(n_blocks, recipe.n_positions)
    # fork_rng: seed our own run without disturbing the random state of the process that asked for the demo.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = GPT2LMHeadModel(config)
        generator = torch.Generator().manual_seed(recipe.seed)
        order = torch.randperm(len(blocks), generator=generator)
        held_out, train = blocks[order[: recipe.eval_blocks]], blocks[order[recipe.eval_blocks :]]
        metrics = _train_loop(model, train, held_out, recipe, generator)
    model.generation_config = GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    return model, metrics


def _train_loop(
    model: GPT2LMHeadModel, train: torch.Tensor, held_out: torch.Tensor, recipe: DemoRecipe, generator: torch.Generator
) -> dict[str, Any]:
    """Plain AdamW loop over shuffled blocks with warm-up and cosine decay; returns the pre-training metrics."""
    import torch

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.95), weight_decay=recipe.weight_decay
    )

    def lr_factor(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / recipe.warmup_steps
        progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order = torch.randperm(len(train), generator=generator)
    start = time.perf_counter()
    recent: list[float] = []
    model.train()
    for step in range(recipe.steps):
        # Walk a fixed shuffle of the blocks, wrapping around if the steps outlast one pass.
        batch = train[order[(step * recipe.batch_size + torch.arange(recipe.batch_size)) % len(train)]]
        loss = _next_token_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent[-19:], loss.item()]
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        eval_loss = _next_token_loss(model, held_out).item()
    return {
        "loss": round(eval_loss, 4),
        "loss_is": "mean next-token cross-entropy (nats) on held-out standard-library source blocks",
        "train_loss": round(sum(recent) / len(recent), 4),  # mean of the last 20 steps: one batch is noisy
        "uniform_loss": round(math.log(model.config.vocab_size), 4),
        "steps": recipe.steps,
        "tokens": recipe.steps * recipe.batch_size * recipe.n_positions,
        "seconds": round(seconds, 2),
        "recipe": asdict(recipe),
    }


def _next_token_loss(model: GPT2LMHeadModel, batch: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    logits = model(input_ids=batch).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
