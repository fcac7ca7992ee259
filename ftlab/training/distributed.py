"""One trial on several processes: the data-parallel (DDP) or sharded (FSDP) side of the training loop.

A trial with ``nproc_per_node`` G > 1 runs as a ``torch.distributed`` group of G ranks (started by
:mod:`ftlab.training.launch`, torchrun's elastic launcher). Every rank runs the same loop on its share of each
optimizer step's sequences; :class:`Parallel` is everything the loop does differently because of that. With one
process it is :data:`SINGLE`, whose every method is a no-op, so the single-process path is exactly what it was.

What stays the same at any G, so that trials compare:
- an optimizer step consumes the same ``total_train_batch_size`` sequences, the same ones in the same order:
  rank r takes the r-th contiguous part of the step's blocks (micro-batch × accumulation of them);
- each rank's loss is divided by its own tokens per step and the gradients are averaged over the ranks (DDP's
  all-reduce, FSDP's reduce-scatter), which for packed blocks (the same tokens in every block) is the token-weighted
  mean over the whole step; the reported train loss is the mean over ranks of those per-rank means, the same number;
- eval loss is summed over every validation block (each rank scores a share) and divided by the tokens scored.

Only rank 0 runs the callbacks (tracking, pruning, progress); what they decide is broadcast, so a pruned trial
stops every rank at the same point instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

from ftlab.training.speedups import decoder_blocks

Strategy = Literal["ddp", "fsdp"]


class StoppedByRankZeroError(RuntimeError):
    """Rank 0's callbacks stopped the trial (pruned, a setting not applied, …); this rank stops with it."""


@dataclass(frozen=True)
class Parallel:
    """This process's place in a trial's process group, and the loop's operations that depend on it."""

    world_size: int = 1
    rank: int = 0
    strategy: Strategy = "ddp"

    @property
    def is_main(self) -> bool:
        """Whether this rank talks to the outside world (tracking, Optuna, progress, result)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_process_group(cls, strategy: Strategy) -> Parallel:
        """The group this process belongs to (:data:`SINGLE` when none was initialised)."""
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return SINGLE
        return cls(world_size=dist.get_world_size(), rank=dist.get_rank(), strategy=strategy)

    # -- model ----------------------------------------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model as this strategy trains it: DDP around it, or FSDP2 (``fully_shard``) per block and at the root.

        FSDP shards each decoder block on its own, so at most one block's full weights exist at a time; the root
        unit holds the embeddings and the (tied) output head.
        """
        if not self.active:
            return model
        if self.strategy == "ddp":
            # "cuda" is the rank's own GPU, made current by the launcher from LOCAL_RANK.
            device_ids = [torch.cuda.current_device()] if device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (self.world_size,))
        for block in decoder_blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The transformers model inside (FSDP2 shards it in place, so it is the model itself)."""
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on the host of rank 0 (None on the other ranks); a collective under FSDP."""
        if not self.active:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.unwrap(model), options=options)
        return state if self.is_main else None

    def gradient_sync(self, model: torch.nn.Module, sync: bool) -> AbstractContextManager[object]:
        """Within it, backward passes exchange gradients only if ``sync`` (the optimizer step's last micro-batch)."""
        if self.active and self.strategy == "ddp" and not sync:
            return model.no_sync()  # type: ignore[operator]
        if self.active and self.strategy == "fsdp":
            model.set_requires_gradient_sync(sync)  # type: ignore[operator]  # FSDP2: reduce-scatter at the last one
        return contextlib.nullcontext()

    # -- data -----------------------------------------------------------------------------------------------------

    def rank_share(self, step_indices: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of an optimizer step's block indices."""
        if not self.active:
            return step_indices
        share = step_indices.size(0) // self.world_size
        return step_indices[self.rank * share : (self.rank + 1) * share]

    # -- agreement ------------------------------------------------------------------------------------------------

    def mean_(self, tensor: torch.Tensor) -> None:
        """``tensor`` replaced in place by its mean over the ranks."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is set on any rank (a stop request reaches one rank or all of them)."""
        if not self.active:
            return flag
        value = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, hook: Callable[[], None]) -> None:
        """Run a callback hook on rank 0 only; if it raises (pruning, a check), every rank stops.

        Rank 0 re-raises its own error; the others raise :class:`StoppedByRankZeroError` naming it. An error that is
        not an ``Exception`` (Ctrl-C) is not caught: the launcher ends the group.
        """
        if not self.active:
            hook()
            return
        error: Exception | None = None
        if self.is_main:
            try:
                hook()
            except Exception as raised:  # told to the other ranks, then raised here
                error = raised
        message = self.broadcast(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if message is not None:
            raise StoppedByRankZeroError(f"stopped with rank 0: {message}")

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Parallel()


def to_float(value: torch.Tensor) -> float:
    """A scalar tensor as a float; FSDP's gradient norm is a replicated DTensor."""
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)
