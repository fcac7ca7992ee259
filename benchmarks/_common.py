"""What every benchmark script shares: progress lines, device peaks, and writing the one result file."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import TrainerCallback

from ftlab.training.callbacks import TrainingCallback, TrainPlan

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name(); first match wins.
# (name substring, FLOP/s, where the figure comes from): the source goes into the results next to every MFU.
PEAK_BF16_FLOPS: list[tuple[str, float, str]] = [
    ("H100 PCIe", 756e12, "H100 PCIe datasheet, dense bf16"),
    ("H100", 989e12, "H100 SXM datasheet, dense bf16"),
    ("H200", 989e12, "H200 SXM: the H100 SXM's dense bf16 peak (same tensor cores and clocks; more memory only)"),
    ("A100", 312e12, "A100 datasheet, dense bf16"),
]


def progress(name: str, started: float, message: str) -> None:
    """One line on stderr, flushed at once, so that a killed run still shows how far it got."""
    print(f"[{name} {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def peak_bf16_flops(device_name: str) -> tuple[float, str] | None:
    """The device's dense bf16 peak in FLOP/s and where the figure comes from; None if the table does not know it."""
    for key, flops, source in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops, source
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timestamp taken next is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_device_memory() -> None:
    """Release what the previous phase left behind: cycles first, then the CUDA caching allocator's blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_result(result: dict[str, Any], path: Path) -> list[Path]:
    """Write ``result`` as JSON to ``path`` (whole or not at all), and copy it to ``$OUT`` when that is set.

    Returns:
        The files written.
    """
    return write_output(json.dumps(result, indent=2) + "\n", path)


def write_output(text: str, path: Path) -> list[Path]:
    """Write ``text`` to ``path`` (whole or not at all), and copy it to ``$OUT`` when that is set; the files written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    written = [path]
    if os.environ.get("OUT"):
        out_dir = Path(os.environ["OUT"])
        out_dir.mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copyfile(path, out_dir / path.name)))
    return written


# --- step marks for ftlab's loop and for Trainer ---------------------------------------------------------------------


class StepMarker(Protocol):
    """A clock that records the time after an optimizer step and says whether training should stop there."""

    last_step: int

    def mark(self, step: int) -> bool: ...


class BenchmarkDone(Exception):
    """Raised from an ftlab hook to end training once the timed steps are done (skipping the final evaluation)."""


class FtlabMarks(TrainingCallback):
    """Marks at ftlab's logging steps, where the loop has just read the loss (so a device sync costs nothing extra)."""

    def __init__(self, clock: StepMarker) -> None:
        self.clock = clock

    def on_train_begin(self, plan: TrainPlan) -> None:
        self.clock.mark(0)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if self.clock.mark(step):
            raise BenchmarkDone


class TrainerMarks(TrainerCallback):
    """The same marks for Trainer: every ``log_every`` optimizer steps (ftlab's logging_steps) and at the last one."""

    def __init__(self, clock: StepMarker, log_every: int) -> None:
        self.clock = clock
        self.log_every = log_every

    def on_train_begin(self, args, state, control, **kwargs):
        self.clock.mark(0)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if (step % self.log_every == 0 or step >= self.clock.last_step) and self.clock.mark(step):
            control.should_training_stop = True
        return control
