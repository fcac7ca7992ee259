"""What every benchmark script shares: progress lines, device peaks, and writing the one result file."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
]


def progress(name: str, started: float, message: str) -> None:
    """One line on stderr, flushed at once, so that a killed run still shows how far it got."""
    print(f"[{name} {time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def peak_bf16_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None if the table does not know it."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
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
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    written = [path]
    if os.environ.get("OUT"):
        out_dir = Path(os.environ["OUT"])
        out_dir.mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copyfile(path, out_dir / path.name)))
    return written
