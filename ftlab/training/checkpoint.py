"""Checkpoints written whole or not at all: a crash mid-write never leaves a file or folder that looks complete.

Every kind goes through :func:`ftlab.fileio.atomic_path`: written under a temporary sibling name that no reader looks
for, then renamed into place. A trial of several processes writes a sharded checkpoint, a folder: each rank's share
of weights and optimizer state through ``torch.distributed.checkpoint`` (DCP), and beside it each rank's
schedule, random numbers and figures (``rank<r>.pt``); see :func:`save_sharded_training_state`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ftlab.fileio import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from ftlab.training.distributed import Parallel
    from ftlab.training.state import TrainState


def save_model_atomically(
    model: torch.nn.Module, target: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """``save_pretrained`` into a temporary sibling folder, then rename it to ``target``.

    A reader finds the previous complete model or the new complete one, never a partial one. A folder cannot be
    renamed over a non-empty folder, so the previous one is first moved aside: for the instant between those two
    renames ``target`` does not exist.
    """
    with atomic_path(target) as staging:
        model.save_pretrained(staging, safe_serialization=True, state_dict=state_dict)  # type: ignore[operator]


def save_model(model: torch.nn.Module, target: Path, parallel: Parallel) -> None:
    """``save_model_atomically`` from any rank layout: with several processes every rank must call it (FSDP gathers
    the shards), and rank 0 writes the whole model."""
    state_dict = parallel.full_state_dict(model)
    if parallel.is_main:
        save_model_atomically(parallel.unwrap(model), target, state_dict)
    parallel.barrier()  # the folder is whole before any rank goes on (a caller may read it)


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
    if path is None or not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


_LATEST = "latest"  # names the complete checkpoint folder inside a sharded checkpoint


def _rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.pt"


def latest_sharded_checkpoint(path: Path | None) -> Path | None:
    """The complete checkpoint folder that the sharded checkpoint ``path`` holds, or None when there is none."""
    if path is None or not (path / _LATEST).is_file():
        return None
    folder = path / (path / _LATEST).read_text().strip()
    return folder if folder.is_dir() else None


def _sharded_state(state: TrainState, parallel: Parallel) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(parallel.unwrap(state.model), state.optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def _write_shards(state: TrainState, folder: Path, parallel: Parallel) -> None:
    import torch.distributed.checkpoint as dcp

    shards = _sharded_state(state, parallel)
    folder.mkdir(parents=True, exist_ok=True)
    with _rank_file(folder, parallel.rank).open("wb") as file:
        torch.save(state.progress_dict(), file)
    dcp.save(shards, checkpoint_id=folder)  # a collective: when it returns, every rank's shard is written


def save_sharded_training_state(state: TrainState, path: Path, parallel: Parallel) -> None:
    """Write a resumable training state from every rank into the folder ``path``, replacing the previous one.

    Every rank calls it. Each checkpoint is a folder of its own, ``path/step-N``: rank 0 stages it under a temporary
    name (the others learn it by broadcast), renames it into place once every rank wrote its shard, then points
    ``path/latest`` at it (a file replaced in one rename) and removes the older ones. So ``latest`` always names a
    complete checkpoint once one exists, whichever rank is killed at whichever moment.
    """
    folder = path / f"step-{state.step:08d}"
    if parallel.is_main:
        with atomic_path(folder) as staging:
            _write_shards(state, Path(parallel.broadcast(str(staging))), parallel)
        atomic_write_text(path / _LATEST, folder.name)
        for entry in path.iterdir():  # the older checkpoints and whatever a killed writer left
            if entry.name not in {folder.name, _LATEST}:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    else:
        _write_shards(state, Path(parallel.broadcast(None)), parallel)
    parallel.barrier()  # ``latest`` names this checkpoint before any rank goes on


def load_sharded_training_state(state: TrainState, path: Path | None, parallel: Parallel) -> None:
    """Continue ``state`` from the sharded checkpoint ``path`` (every rank calls it); as it was if there is none.

    Raises:
        ValueError: the checkpoint was written by a group of another size.
    """
    folder = latest_sharded_checkpoint(path)
    if folder is None:
        return
    progress_file = _rank_file(folder, parallel.rank)
    if not progress_file.is_file() or _rank_file(folder, parallel.world_size).is_file():
        raise ValueError(
            f"{folder} is not a checkpoint of {parallel.world_size} processes; resume with the nproc_per_node it "
            f"was written with, or remove {path} to start over"
        )
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    shards = _sharded_state(state, parallel)
    dcp.load(shards, checkpoint_id=folder)
    set_state_dict(
        parallel.unwrap(state.model),
        state.optimizer,
        model_state_dict=shards["model"],
        optim_state_dict=shards["optimizer"],
    )
    state.load_progress_dict(torch.load(progress_file, map_location="cpu", weights_only=False))
