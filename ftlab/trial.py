"""One fine-tuning trial, end to end: load model, tokenizer and data, train, evaluate, save, record in MLflow.

``ftlab train`` runs it in-process and every sweep trial runs it in a process of its own. The caller owns the MLflow
run (a :class:`~ftlab.tracking.TrackedRun`, which ends it FINISHED, KILLED or FAILED); this module fills it.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
import yaml

import ftlab
from ftlab import paths
from ftlab.config import SweepConfig, TrainConfig
from ftlab.data import prepare_data
from ftlab.errors import DataError
from ftlab.fileio import atomic_path
from ftlab.record import TrialRecord
from ftlab.tracking import MlflowCallback, TrackedRun, flatten
from ftlab.training.callbacks import CallbackList, TrainingCallback, TrainResult
from ftlab.training.group import GroupTraining, train_in_group
from ftlab.training.loop import NotEnoughDataError, train
from ftlab.training.oom import OomRetry, with_oom_retry
from ftlab.training.plugins import extra_callbacks_from_env
from ftlab.training.runtime import Runtime


def load_tokenizer(sweep: SweepConfig) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer of ``model.tokenizer`` or of the model itself, exactly as a hub model loads it."""
    name = sweep.model.tokenizer or sweep.model.name_or_path
    return transformers.AutoTokenizer.from_pretrained(name, revision=sweep.model.revision)


def load_model(sweep: SweepConfig, runtime: Runtime) -> torch.nn.Module:
    """The pretrained causal LM in fp32 master weights (bf16 runs use autocast), on the runtime's device."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        sweep.model.name_or_path,
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


def trial_params(sweep: SweepConfig, train_config: TrainConfig, with_sweep_settings: bool = True) -> dict[str, str]:
    """MLflow params: the training settings in effect under their TrainingArguments names, plus (unless the sweep's
    parent run holds them already) the model and data settings, prefixed.

    Unset values and the unused half of an either-or pair are left out: ``warmup_steps=0`` beside
    ``warmup_ratio=0.1`` reads as a contradiction in the runs table.
    """
    unused = {"warmup_ratio" if train_config.warmup_steps > 0 else "warmup_steps"}
    unused.add("num_train_epochs" if train_config.max_steps > 0 else "max_steps")
    params = flatten(train_config.model_dump(exclude=unused, exclude_none=True))
    params["total_train_batch_size"] = str(train_config.total_train_batch_size)
    if with_sweep_settings:
        params.update(flatten(sweep.model.model_dump(), "model."))
        params.update(flatten(sweep.data.model_dump(), "data."))
    return params


def run_trial(
    sweep: SweepConfig,
    train_config: TrainConfig,
    run: TrackedRun,
    trial_dir: Path,
    *,
    sweep_dir: Path,
    callbacks: Sequence[TrainingCallback] = (),
    resume_from: Path | None = None,
    stop_requested: threading.Event | None = None,
    nested: bool = False,
    holdout: bool = False,
) -> TrialRecord:
    """Run one fine-tuning trial into ``run`` and ``trial_dir``; its COMPLETE record (objective values unset).

    Out of GPU memory, training is retried with half the micro-batch and twice the accumulation (the effective batch
    is kept), down to a micro-batch of 1; the run's tags say so. Errors propagate: ``run`` decides how they end it.

    ``nested``: the run is a sweep's trial, whose parent run holds the model and data settings.
    ``holdout``: the run is one of ``ftlab confirm``'s on data with a holdout split; its final model is evaluated
    there too (``holdout/loss`` and ``holdout/perplexity`` in the record's metrics). Sweep trials never are.

    Raises:
        DataError: the data cannot be used (before any training starts), or has no holdout split to evaluate on.
    """
    runtime = Runtime.for_config(train_config)
    tokenizer = load_tokenizer(sweep)
    data = prepare_data(sweep.data, tokenizer, base_dir=sweep_dir)
    holdout_blocks = data.holdout_tensor() if holdout else None
    if holdout and holdout_blocks is None:
        raise DataError.single(
            "this confirmation run is to be evaluated on the holdout split, but the data has none",
            where="data.holdout_fraction",
            value=sweep.data.holdout_fraction,
            fix="put `data.holdout_fraction` back as the confirmation started with",
        )
    trial_dir.mkdir(parents=True, exist_ok=True)
    # MLflow params are immutable: the sampled settings are logged once; what an OOM retry changed becomes tags.
    run.log_params(trial_params(sweep, train_config, with_sweep_settings=not nested))
    commit = git_commit(Path.cwd())
    run.set_tags(
        {
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
    run.log_artifact(config_file)
    extra_callbacks = extra_callbacks_from_env()  # test-only fault injection, when FTLAB_TRAINING_CALLBACKS names it

    def attempt(config: TrainConfig) -> tuple[torch.nn.Module | None, TrainResult, TrainConfig]:
        if config.nproc_per_node > 1:
            job = GroupTraining(
                load_model=functools.partial(load_model, sweep),
                train_blocks=data.train_tensor(),
                validation_blocks=data.validation_tensor(),
                config=config,
                runtime=runtime,
                best_model_dir=trial_dir / "best",
                checkpoint_path=trial_dir / paths.SHARDED_CHECKPOINT_DIR,
                # A retried trial's predecessor's sharded checkpoint, beside where its single-process one would be.
                resume_from=resume_from.with_name(paths.SHARDED_CHECKPOINT_DIR) if resume_from else None,
                final_model_dir=trial_dir / "final",
                cpu_threads=torch.get_num_threads(),
                holdout_blocks=holdout_blocks,
            )
            # Rank 0's hooks run here, relayed; rank 0 writes the model.
            hooks = CallbackList([MlflowCallback(run), *callbacks])
            return None, train_in_group(job, hooks, stop_requested), config
        transformers.set_seed(config.seed)
        model = load_model(sweep, runtime)
        hooks = CallbackList([MlflowCallback(run), *callbacks, *extra_callbacks(model)])
        result = train(
            model,
            data.train_tensor(),
            data.validation_tensor(),
            config,
            runtime,
            hooks,
            best_model_dir=trial_dir / "best",
            checkpoint_path=trial_dir / paths.CHECKPOINT_FILE,
            resume_from=resume_from,
            stop_requested=stop_requested,
            holdout_blocks=holdout_blocks,
        )
        return model, result, config

    def on_oom_retry(retry: OomRetry) -> None:
        run.set_tags(
            {
                "ftlab.oom_retries": ", ".join(retry.history),
                "ftlab.applied.per_device_train_batch_size": str(retry.config.per_device_train_batch_size),
                "ftlab.applied.gradient_accumulation_steps": str(retry.config.gradient_accumulation_steps),
            }
        )

    try:
        model, result, applied = with_oom_retry(attempt, train_config, on_retry=on_oom_retry)
    except NotEnoughDataError as error:  # from train, or a group's rank 0
        raise DataError.single(str(error), where="data", fix="see the message") from None
    model_dir = trial_dir / "final"
    if model is None:  # a group's rank 0 wrote the whole model there
        tokenizer.save_pretrained(model_dir)
    else:
        with atomic_path(model_dir) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
    if sweep.tracking.artifacts != "none":
        run.log_artifacts(model_dir, "model")
    if sweep.tracking.artifacts == "all" and (trial_dir / "best").is_dir():
        run.log_artifacts(trial_dir / "best", "checkpoints/best")
    (trial_dir / paths.CHECKPOINT_FILE).unlink(missing_ok=True)  # finished: nothing left to resume
    shutil.rmtree(trial_dir / paths.SHARDED_CHECKPOINT_DIR, ignore_errors=True)
    figures = result.metrics
    run.log_metrics({"train/loss_mean": figures["train/loss"], "perf/train_seconds": figures["perf/train_seconds"]},
                    result.steps)  # fmt: skip
    return TrialRecord(
        state="COMPLETE",
        metrics=dict(figures),
        device=runtime.describe(),
        model_dir=str(model_dir),
        data_fingerprint=data.fingerprint,
        per_device_train_batch_size=applied.per_device_train_batch_size,
        gradient_accumulation_steps=applied.gradient_accumulation_steps,
    )
