"""Checkpoints written whole or not at all: a crash mid-write never leaves a file or folder that looks complete.

Both kinds go through :func:`ftlab.fileio.atomic_path`: written under a temporary sibling name that no reader looks
for, then renamed into place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ftlab.fileio import atomic_path


def save_model_atomically(model: torch.nn.Module, target: Path) -> None:
    """``save_pretrained`` into a temporary sibling folder, then rename it to ``target``.

    A reader finds the previous complete model or the new complete one, never a partial one. A folder cannot be
    renamed over a non-empty folder, so the previous one is first moved aside: for the instant between those two
    renames ``target`` does not exist.
    """
    with atomic_path(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)  # type: ignore[operator]


def save_training_state(state: dict[str, Any], path: Path) -> None:
    """Write a resumable training state (a ``TrainState.state_dict()``) to ``path``, replacing the previous one.

    The file is renamed over the previous one in one step, so ``path`` always holds a complete state once one exists.
    """
    with atomic_path(path) as staging, staging.open("wb") as file:
        # Through a Python file, so that a full disk surfaces as the OSError it is (torch's own writer only says
        # "unexpected pos"), which atomic_path names.
        torch.save(state, file)


def load_training_state(path: Path | None) -> dict[str, Any] | None:
    """The state saved at ``path``, or None when there is none (temporary files are never looked at)."""
    if path is None or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
