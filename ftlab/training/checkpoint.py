"""Checkpoints written whole or not at all: a crash mid-write never leaves a directory that looks complete."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

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
