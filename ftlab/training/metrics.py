"""Loss and perplexity, computed the same way for every trial so that numbers compare.

Eval loss is the token-weighted mean negative log-likelihood over the *whole* validation split (never a mean of
per-batch means, which over-weights short batches), and perplexity is exp of exactly that number.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ftlab.figures import perplexity  # re-exported: the per-evaluation metrics use it too

__all__ = ["IGNORE_INDEX", "count_label_tokens", "evaluate", "perplexity", "sum_token_nll"]

IGNORE_INDEX = -100  # label value that transformers' losses skip (padding, masked prompt tokens)


def count_label_tokens(labels: torch.Tensor) -> int:
    """Tokens that a causal-LM loss scores: every label after the first position that is not ignored."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def sum_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token negative log-likelihoods in float32, ignoring ``IGNORE_INDEX`` labels."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    blocks: torch.Tensor,
    batch_size: int,
    device: torch.device,
    autocast: AbstractContextManager[object],
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, int]:
    """Token-weighted mean NLL of ``model`` over every block; returns (loss, tokens scored).

    Sums stay on the device and are read once at the end, so evaluation never waits on the host per batch.

    In a trial's process group (``world_size`` ranks, every one calls it) each rank scores a contiguous share of the
    blocks and the sums are added up over the ranks. Every rank runs the same number of forward passes (FSDP gathers
    each block's weights in each one, a collective): a rank whose share is used up scores a stand-in batch with weight
    zero.
    """
    was_training = model.training
    model.eval()
    share = math.ceil(blocks.size(0) / world_size)
    mine = blocks[rank * share : (rank + 1) * share]
    total_nll = torch.zeros((), dtype=torch.float64, device=device)
    total_tokens = 0
    for start in range(0, share, batch_size):
        host_batch = mine[start : start + batch_size]
        weight = 1 if host_batch.size(0) > 0 else 0
        if weight == 0:
            host_batch = blocks[:1]
        total_tokens += weight * count_label_tokens(host_batch)  # counted on the host: no device sync
        batch = host_batch.to(device, non_blocking=True)
        with autocast:
            logits = model(input_ids=batch, use_cache=False).logits
        total_nll += weight * sum_token_nll(logits, batch).double()
    model.train(was_training)
    if world_size > 1:
        sums = torch.stack([total_nll, torch.tensor(total_tokens, dtype=torch.float64, device=device)])
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        total_nll, total_tokens = sums[0], int(sums[1].item())
    if total_tokens == 0:
        raise ValueError("the validation split has no tokens to score")
    return float(total_nll.item()) / total_tokens, total_tokens
