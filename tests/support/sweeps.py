"""The small sweep file the tests and the benchmarks start from: the tiny demo model on a slice of the demo text."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

# A sweep small enough for a few seconds per trial on two cores: the demo model on a slice of the demo text.
SMALL_SWEEP: dict[str, Any] = {
    "name": "small",
    "model": {"name_or_path": "demo://tiny-gpt2"},
    "data": {
        "train_files": ["demo://pydoc-topics.txt"],
        "block_size": 64,
        "validation_fraction": 0.1,
        "max_train_blocks": 256,
        "max_eval_blocks": 16,
    },
    "baseline": {
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "gradient_accumulation_steps": 2,
        "warmup_ratio": 0.1,
    },
    "train": {"num_train_epochs": 1, "eval_tokens": 4096, "logging_steps": 4, "seed": 7},
    "search": {
        "learning_rate": {"factor": [0.3, 3]},
        "total_train_batch_size": {"choices": [8, 16]},
    },
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "budget": {"n_trials": 3},
}


def write_sweep(folder: Path, **changes: Any) -> Path:
    """SMALL_SWEEP with top-level keys replaced (a None value removes the key), as ``folder/sweep.yaml``."""
    sweep = copy.deepcopy(SMALL_SWEEP)
    for key, value in changes.items():
        if value is None:
            sweep.pop(key, None)
        else:
            sweep[key] = value
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path
