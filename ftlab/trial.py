"""One fine-tuning trial, end to end: load model, tokenizer and data, train, evaluate, save, track.

This is what ``ftlab train`` runs in-process and what each sweep trial runs in a child process of its own.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml

import ftlab
from ftlab.config import SweepConfig, TrainConfig
from ftlab.data import PreparedData, prepare_data
from ftlab.demo import resolve
from ftlab.errors import DataError
from ftlab.tracking import MlflowCallback, RunTracker, flatten
from ftlab.training.callbacks import CallbackList, TrainingCallback, TrainResult
from ftlab.training.loop import NotEnoughDataError, train
from ftlab.training.runtime import Runtime

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"  # the resumable training state inside a trial's folder


@dataclass
class TrialOutcome:
    result: TrainResult
    run_id: str
    model_dir: Path
    data_fingerprint: str
    device: str


def load_tokenizer(sweep: SweepConfig) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer of ``model.tokenizer`` or of the model itself, exactly as a hub model loads it."""
    name = resolve(sweep.model.tokenizer or sweep.model.name_or_path)
    return transformers.AutoTokenizer.from_pretrained(name, revision=sweep.model.revision)


def load_model(sweep: SweepConfig, runtime: Runtime) -> torch.nn.Module:
    """The pretrained causal LM in fp32 master weights (bf16 runs use autocast), on the runtime's device."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        resolve(sweep.model.name_or_path),
        revision=sweep.model.revision,
        attn_implementation=sweep.model.attn_implementation,
        dtype=torch.float32,
    )
    return model.to(runtime.device)


def git_commit(cwd: Path) -> str | None:
    """The commit of the repository the user runs ftlab in, if any, for reproducibility tags."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def resolved_config(sweep: SweepConfig, train_config: TrainConfig) -> dict[str, Any]:
    """The full configuration this trial ran with, enough to replay it."""
    return {
        "name": sweep.name,
        "model": sweep.model.model_dump(),
        "data": sweep.data.model_dump(),
        "train": train_config.model_dump(),
    }


def trial_params(sweep: SweepConfig, train_config: TrainConfig) -> dict[str, str]:
    """MLflow params: training keys under their TrainingArguments names, model and data keys prefixed."""
    params = flatten(train_config.model_dump())
    params["total_train_batch_size"] = str(train_config.total_train_batch_size)
    params.update(flatten(sweep.model.model_dump(), "model."))
    params.update(flatten(sweep.data.model_dump(), "data."))
    return params


def run_trial(
    sweep: SweepConfig,
    train_config: TrainConfig,
    *,
    sweep_dir: Path,
    tracking_uri: str,
    run_name: str,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks: Sequence[TrainingCallback] = (),
    tracker: RunTracker | None = None,
    log_params: bool = True,
    trial_dir: Path | None = None,
    resume_from: Path | None = None,
    stop_requested: threading.Event | None = None,
) -> TrialOutcome:
    """Run one fine-tuning trial and record it as one MLflow run.

    The run ends FINISHED on success and FAILED on any exception (which is re-raised); a caller that stops the trial
    on purpose (pruning, Ctrl-C) passes its own ``tracker`` and ends the run itself with the state it chose.

    Raises:
        DataError: the data cannot be used (before any training starts).
    """
    transformers.set_seed(train_config.seed)
    runtime = Runtime.for_config(train_config)
    tokenizer = load_tokenizer(sweep)
    data: PreparedData = prepare_data(sweep.data, tokenizer, base_dir=sweep_dir)

    experiment = sweep.tracking.experiment or sweep.name
    own_tracker = tracker is None
    tracker = tracker or RunTracker.start(tracking_uri, experiment, run_name, parent_run_id=parent_run_id)
    trial_dir = trial_dir or Path(train_config.output_dir) / sweep.name / f"{run_name}-{tracker.run_id[:8]}"
    trial_dir.mkdir(parents=True, exist_ok=True)
    try:
        if log_params:
            tracker.log_params(trial_params(sweep, train_config))
        commit = git_commit(Path.cwd())
        tracker.set_tags(
            {
                **(tags or {}),
                "data.fingerprint": data.fingerprint,
                "ftlab.version": ftlab.__version__,
                "torch.version": torch.__version__,
                "transformers.version": transformers.__version__,
                "python.version": platform.python_version(),
                "device": runtime.describe(),
                "ftlab.trial_dir": str(trial_dir.resolve()),
                **({"mlflow.source.git.commit": commit} if commit else {}),
            }
        )
        config_file = trial_dir / "config.yaml"
        config_file.write_text(yaml.safe_dump(resolved_config(sweep, train_config), sort_keys=False))
        tracker.log_artifact(config_file)

        model = load_model(sweep, runtime)
        try:
            result = train(
                model,
                data.train_tensor(),
                data.validation_tensor(),
                train_config,
                runtime,
                CallbackList([MlflowCallback(tracker), *callbacks]),
                best_model_dir=trial_dir / "best",
                checkpoint_path=trial_dir / CHECKPOINT_FILE,
                resume_from=resume_from,
                stop_requested=stop_requested,
            )
        except NotEnoughDataError as error:
            raise DataError.single(str(error), where="data", fix="see the message") from None

        model_dir = trial_dir / "final"
        model.save_pretrained(model_dir, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
        if sweep.tracking.artifacts != "none":
            tracker.log_artifacts(model_dir, "model")
        if sweep.tracking.artifacts == "all" and (trial_dir / "best").is_dir():
            tracker.log_artifacts(trial_dir / "best", "checkpoints/best")
        (trial_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # finished: nothing left to resume
        tracker.log_metrics({"train/loss_mean": result.train_loss, "perf/train_seconds": result.seconds}, result.steps)
        if own_tracker:
            tracker.end("FINISHED")
    except KeyboardInterrupt:
        if own_tracker:
            tracker.end("KILLED", reason="stopped by Ctrl-C")
        raise
    except BaseException as error:
        if own_tracker:
            tracker.end("FAILED", reason=f"{type(error).__name__}: {error}")
        raise
    return TrialOutcome(result, tracker.run_id, model_dir, data.fingerprint, runtime.describe())
