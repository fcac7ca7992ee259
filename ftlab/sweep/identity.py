"""What a study remembers of the model and the data its trials were trained on, so that a resumed sweep, a worker
or ``ftlab confirm`` that would train on something else is refused instead of ranked against the old trials.

The data is remembered by the prepared data's fingerprint (:func:`ftlab.data.data_fingerprint`: the files' contents,
the tokenizer and the data settings), so an edited file under the same name is caught too; the data settings are kept
beside it in words, so that the refusal can say what changed. File locations and folders are left out: they differ
between machines, and the fingerprint covers what is in them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ftlab.config import SweepConfig

MODEL_KEY = "model"
DATA_KEY = "data"
FINGERPRINT_KEY = "data_fingerprint"
IDENTITY_KEYS = (MODEL_KEY, DATA_KEY, FINGERPRINT_KEY)
"""Keys a study written before ftlab remembered model and data lacks: recorded on its first resume, not compared."""

_DATA_LOCATIONS = {"train_files", "validation_files", "cache_dir"}


def model_identity(sweep: SweepConfig) -> dict[str, Any]:
    """The model and tokenizer as names that are the same on every machine: a hub id as written, a local folder by
    its name and its config.json's digest (the demo model's folder lies under each machine's own FTLAB_HOME)."""
    model = sweep.model.model_dump(mode="json")
    for key in ("name_or_path", "tokenizer"):
        if model.get(key) is not None:
            model[key] = _name_of(model[key])
    return model


def _name_of(name: str) -> str:
    folder = Path(name).expanduser()
    config = folder / "config.json"
    if not folder.is_dir():
        return name
    digest = hashlib.sha256(config.read_bytes()).hexdigest()[:12] if config.is_file() else "no config.json"
    return f"{folder.name} (local folder, config.json {digest})"


def data_identity(sweep: SweepConfig, fingerprint: str | None) -> dict[str, Any]:
    """The data settings (without file locations) and the prepared data's fingerprint (None where unknown)."""
    data = sweep.data.model_dump(mode="json", exclude=_DATA_LOCATIONS)
    if not data["holdout_fraction"]:
        # Left out unless set, as from the fingerprint: a study from before there was a holdout still matches.
        del data["holdout_fraction"]
    return {DATA_KEY: data, FINGERPRINT_KEY: fingerprint}


def comparable(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The remembered and the current signature as they compare: identity keys an older ftlab did not record take
    the current values (there is nothing to compare them with), and a fingerprint not known now keeps the one
    remembered (it is not forgotten by a command that did not prepare the data)."""
    old, new = dict(old), dict(new)
    for key in IDENTITY_KEYS:
        if old.get(key) is None and key in new:
            old[key] = new[key]
    if new.get(FINGERPRINT_KEY) is None:
        if FINGERPRINT_KEY in old:
            new[FINGERPRINT_KEY] = old[FINGERPRINT_KEY]
        else:
            new.pop(FINGERPRINT_KEY, None)
    return old, new
