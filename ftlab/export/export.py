"""``ftlab best --export``: the winning trial as a standard Hugging Face model directory, verified before it is written.

The weights come from the trial's local model, else from the MLflow artifact store, else (``tracking.artifacts:
none``) from re-training the winner's configuration with its seed. Either way they are evaluated on the validation
split first, and the export is refused unless that matches the recorded eval loss: the exported model is the one that
was measured.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import transformers
from mlflow import MlflowClient

from ftlab.config import SweepConfig, TrainConfig
from ftlab.data import prepare_data
from ftlab.errors import UserError
from ftlab.export.best import BestTrial, select_best
from ftlab.export.card import CardFacts, confirmation_section, render_card
from ftlab.export.registry import register_model
from ftlab.fileio import atomic_path, atomic_write_json
from ftlab.settings import resolve_train_config
from ftlab.sweep.confirm import load_confirmation
from ftlab.sweep.orchestrate import open_sweep_study, tracking_uri_for
from ftlab.sweep.record import TrialRecord
from ftlab.sweep.space import params_to_overrides
from ftlab.tracking import TrackedRun, experiment_name
from ftlab.training.metrics import evaluate, perplexity
from ftlab.training.runtime import Runtime
from ftlab.trial import load_tokenizer, run_trial

RELATIVE_TOLERANCE = 1e-3
# What a Hugging Face model directory holds; anything else in a trial's folder (checkpoints, progress) stays behind.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


class ExportRefusedError(UserError):
    """The export would not be trustworthy (weights that do not reproduce the recorded metric, a non-empty folder)."""


@dataclass
class ExportResult:
    out_dir: Path
    trial_number: int
    recorded_eval_loss: float
    measured_eval_loss: float
    weights_from: str
    registered: str | None  # "NAME version N (alias champion)"


def trial_train_config(sweep: SweepConfig, sweep_dir: Path, record: TrialRecord) -> TrainConfig:
    """The exact settings the trial trained with, including a micro-batch an out-of-memory retry changed."""
    baseline = resolve_train_config(sweep, sweep_dir)
    overrides = params_to_overrides(record.params, baseline)
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(record, key) is not None:
            overrides[key] = getattr(record, key)
    return resolve_train_config(sweep, sweep_dir, overrides)


def _check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportRefusedError.single("the export target is a file", where=str(out_dir), fix="choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ExportRefusedError.single(
            "the export folder is not empty", where=str(out_dir), fix="choose an empty folder or pass --force"
        )


def _fetch_weights(
    best: BestTrial, sweep: SweepConfig, sweep_dir: Path, train: TrainConfig, tracking_uri: str, staging: Path
) -> tuple[Path, str]:
    """A folder holding the winner's model; and where it came from."""
    local = best.record.model_dir
    if local and (Path(local) / "config.json").is_file():
        return Path(local), f"local trial folder {local}"
    run_id = best.record.mlflow_run_id
    client = MlflowClient(tracking_uri=tracking_uri)
    if run_id and any(artifact.path == "model" for artifact in client.list_artifacts(run_id)):
        return Path(client.download_artifacts(run_id, "model", str(staging))), f"MLflow artifact runs:/{run_id}/model"
    # No stored weights (tracking.artifacts: none, and the local folder is gone): re-train with the trial's own seed.
    name = f"retrain-trial-{best.record.number:03d}"
    tags = {"ftlab.retrain_of_trial": str(best.record.number), "ftlab.retrain_of_run": str(run_id)}
    with TrackedRun.start(tracking_uri, experiment_name(sweep), name, tags=tags) as run:
        trial_dir = Path(train.output_dir) / sweep.name / f"{name}-{run.run_id[:8]}"
        record = run_trial(sweep, train, run, trial_dir, sweep_dir=sweep_dir)
    assert record.model_dir is not None
    return Path(record.model_dir), f"re-trained (seed {train.seed}, MLflow run {run.run_id})"


def measure_eval_loss(model_dir: Path, sweep: SweepConfig, sweep_dir: Path, train: TrainConfig) -> tuple[float, str]:
    """Eval loss of the weights in ``model_dir`` on the sweep's validation split, as training measured it."""
    runtime = Runtime.for_config(train)
    tokenizer = load_tokenizer(sweep)
    data = prepare_data(sweep.data, tokenizer, base_dir=sweep_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation=sweep.model.attn_implementation
    ).to(runtime.device)
    loss, _ = evaluate(
        model, data.validation_tensor(), train.per_device_eval_batch_size, runtime.device, runtime.autocast()
    )
    return loss, data.fingerprint


def _copy_model(source: Path, target: Path, sweep: SweepConfig) -> None:
    target.mkdir(parents=True, exist_ok=True)
    # copyfile, not copy2: the files get this user's usual permissions (safetensors writes its own 0600).
    for name in _MODEL_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    for shard in source.glob("model-*.safetensors"):
        shutil.copyfile(shard, target / shard.name)
    # The tokenizer as ftlab loaded it for training: the same object users get from AutoTokenizer.
    load_tokenizer(sweep).save_pretrained(target)


def _provenance(best: BestTrial, train: TrainConfig, study: optuna.Study, fingerprint: str, measured: float,
                weights_from: str, tracking_uri: str) -> dict[str, Any]:  # fmt: skip
    run_id = best.record.mlflow_run_id
    commit = None
    if run_id:
        commit = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.tags.get("mlflow.source.git.commit")
    return {
        "study": study.study_name,
        "trial": best.record.number,
        "mlflow_run_id": run_id,
        "data_fingerprint": fingerprint,
        "git_commit": commit,
        "seed": train.seed,
        "params": best.record.params,
        "train": train.model_dump(),
        "eval_loss_recorded": best.record.eval_loss,
        "eval_loss_measured": measured,
        "weights_from": weights_from,
    }


def export_best(
    sweep_file: Path,
    out_dir: Path,
    *,
    register: str | None = None,
    force: bool = False,
    storage_url: str | None = None,
    tracking_uri: str | None = None,
) -> ExportResult:
    """Export the sweep's best trial to ``out_dir`` (see the module docstring).

    Raises:
        UserError: no completed trial, a non-empty ``out_dir`` without ``force``, or weights whose eval loss does not
            reproduce the recorded one within 1e-3 relative.
    """
    sweep, study = open_sweep_study(sweep_file, storage_url)
    sweep_dir = sweep_file.parent
    uri = tracking_uri_for(sweep, tracking_uri)
    best = select_best(study, sweep, str(sweep_file))
    confirmed = load_confirmation(sweep, storage_url)
    _check_target(out_dir, force)
    train = trial_train_config(sweep, sweep_dir, best.record)
    recorded = best.record.eval_loss
    if recorded is None:
        raise ExportRefusedError.single(
            "the best trial has no recorded eval loss to check the weights against",
            where=f"trial {best.record.number}",
            fix="re-run the sweep with this version of ftlab",
        )

    with tempfile.TemporaryDirectory(prefix="ftlab-export-") as download, atomic_path(out_dir) as build:
        weights, weights_from = _fetch_weights(best, sweep, sweep_dir, train, uri, Path(download))
        measured, fingerprint = measure_eval_loss(weights, sweep, sweep_dir, train)
        if abs(measured - recorded) > RELATIVE_TOLERANCE * abs(recorded):
            raise ExportRefusedError.single(
                f"the weights evaluate to eval loss {measured:.6f}, but trial {best.record.number} recorded "
                f"{recorded:.6f} (more than {RELATIVE_TOLERANCE:g} relative apart): they are not the measured model",
                where=weights_from,
                fix="check that the data and model files did not change since the sweep, or re-run the trial",
            )
        _copy_model(weights, build, sweep)
        facts = CardFacts(
            model_name=f"{sweep.name}-trial-{best.record.number}",
            sweep=sweep,
            train=train,
            eval_loss=measured,
            perplexity=perplexity(measured),
            train_loss=best.record.train_loss,
            tokens_seen=best.record.tokens_seen,
            trial_number=best.record.number,
            trials_run=len(study.trials),
            study_name=study.study_name,
            mlflow_run_id=best.record.mlflow_run_id,
            baseline=best.as_json(uri)["baseline"],
            gain=(best.gain.absolute, best.gain.relative) if best.gain else (None, None),
            extra_sections=[confirmation_section(confirmed, best.record.number)] if confirmed else [],
        )
        (build / "README.md").write_text(render_card(facts))
        provenance = _provenance(best, train, study, fingerprint, measured, weights_from, uri)
        provenance["confirmation"] = confirmed.as_json() if confirmed else None
        atomic_write_json(build / "ftlab.json", provenance, indent=2)

    registered = None
    if register:
        registered = register_model(uri, best, out_dir, register, measured)
    return ExportResult(out_dir, best.record.number, recorded, measured, weights_from, registered)
