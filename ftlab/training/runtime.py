"""Where training runs and in which precision: CUDA with bf16 autocast when present, else CPU in fp32."""

from __future__ import annotations

import contextlib
import resource
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from ftlab.config import TrainConfig


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool

    @classmethod
    def for_config(cls, config: TrainConfig) -> Runtime:
        """Pick the device and precision a trial runs with.

        ``bf16`` unset means: on where the GPU supports it, off on the CPU (bf16 matmuls are slow on most CPUs).
        """
        use_cuda = torch.cuda.is_available() and not config.use_cpu
        device = torch.device("cuda") if use_cuda else torch.device("cpu")
        bf16 = config.bf16 if config.bf16 is not None else (use_cuda and torch.cuda.is_bf16_supported())
        if use_cuda:
            # TF32 matmuls for whatever stays in fp32: the same speed/precision trade Trainer's tf32 flag makes.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return cls(device=device, bf16=bf16)

    def autocast(self) -> AbstractContextManager[object]:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def describe(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return "cpu"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max_rss / 2**20 if sys.platform == "darwin" else max_rss / 2**10  # bytes on macOS, KiB on Linux
