"""Optimizer and learning-rate schedule from TrainingArguments-named settings, as transformers' Trainer builds them."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler
from transformers.optimization import Adafactor

from ftlab.config import TrainConfig


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Weight decay on matrices only; biases and norm weights (1-D) are not decayed, as in Trainer."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optim`` with the config's learning rate, betas, epsilon and weight decay."""
    groups = _decay_groups(model, config.weight_decay)
    betas = (config.adam_beta1, config.adam_beta2)
    if config.optim in {"adamw_torch", "adamw_torch_fused", "adamw_hf"}:
        # fused AdamW runs the whole update in a few kernels on CUDA; on CPU the foreach path is the fast one.
        fused = device.type == "cuda" and config.optim != "adamw_hf"
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=betas, eps=config.adam_epsilon, fused=fused)
    if config.optim == "adam":
        return torch.optim.Adam(groups, lr=config.learning_rate, betas=betas, eps=config.adam_epsilon)
    if config.optim == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate)
    return Adafactor(groups, lr=config.learning_rate, scale_parameter=False, relative_step=False)


def warmup_steps_for(config: TrainConfig, total_steps: int) -> int:
    """Warmup in optimizer steps: ``warmup_steps`` if set, else ``ceil(warmup_ratio × total_steps)`` as in Trainer."""
    return config.warmup_steps if config.warmup_steps > 0 else math.ceil(config.warmup_ratio * total_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' own scheduler for ``lr_scheduler_type``, so schedules match Trainer's step for step."""
    return get_scheduler(
        config.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps_for(config, total_steps),
        num_training_steps=total_steps,
    )
