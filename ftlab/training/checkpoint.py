"""Checkpoints written whole or not at all: a crash mid-write never leaves a directory that looks complete."""

from __future__ import annotations

import io
import os
import shutil
import signal
import uuid
from pathlib import Path
from typing import Any

import torch


def save_model_atomically(model: torch.nn.Module, target: Path) -> None:
    """``save_pretrained`` into a temporary sibling folder, then swap it in with renames.

    Readers only ever see the previous complete model or the new complete one, because a rename within one
    filesystem is atomic and the temporary folder carries a name no reader looks for.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    model.save_pretrained(staging, safe_serialization=True)  # type: ignore[operator]
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def save_training_state(state: dict[str, Any], path: Path, kill_midway: bool = False) -> None:
    """Write a resumable training state whole or not at all: a temporary file first, then an atomic rename.

    ``kill_midway`` is a test hook: the process SIGKILLs itself after writing half the bytes, as a machine that dies
    mid-write would, to prove that a half-written checkpoint is never loaded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    if kill_midway:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        staging.write_bytes(buffer.getvalue()[: buffer.tell() // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save(state, staging)
    os.replace(staging, path)


def load_training_state(path: Path | None) -> dict[str, Any] | None:
    """The state saved at ``path``, or None when there is none (temporary files are never looked at)."""
    if path is None or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
