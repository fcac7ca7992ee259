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
from ftlab.export.best import select_best
from ftlab.export.card import CardFacts, confirmation_section, render_card
from ftlab.export.registry import register_model
from ftlab.export.target import ExportRefusedError, check_export_target, local_store_paths
from ftlab.fileio import atomic_path, atomic_write_json
from ftlab.folders import naming_write_errors
from ftlab.record import TrialRecord
from ftlab.settings import resolve_train_config
from ftlab.storage import storage_url_for
from ftlab.sweep.confirm import load_confirmation
from ftlab.sweep.space import params_to_overrides
from ftlab.sweep.study import open_sweep_study
from ftlab.sweep.summary import Comparison
from ftlab.tracking import TrackedRun, experiment_name, tracking_uri_for
from ftlab.training.metrics import evaluate, perplexity
from ftlab.training.runtime import Runtime
from ftlab.trial import load_tokenizer, run_trial

RELATIVE_TOLERANCE = 1e-3
# What a Hugging Face model directory holds; anything else in a trial's folder (checkpoints, progress) stays behind.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json")


@dataclass
class ExportResult:
    out_dir: Path
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


def _protected(sweep_file: Path, storage_url: str, tracking_uri: str) -> dict[str, Path]:
    """What an export must never delete: the results it is made from, the sweep file, the current folder."""
    protected = {"the sweep file": sweep_file, "the current folder": Path.cwd()}
    for path in local_store_paths(storage_url)[:1]:  # the database; an artifacts folder beside it is MLflow's
        protected[f"the study storage {path.name}"] = path
    for path in local_store_paths(tracking_uri):
        protected[f"the MLflow store {path.name}"] = path
    return protected


def _fetch_weights(
    winner: Comparison, sweep: SweepConfig, sweep_dir: Path, train: TrainConfig, tracking_uri: str, staging: Path
) -> tuple[Path, str]:
    """A folder holding the winner's model; and where it came from."""
    local = winner.best.model_dir
    if local and (Path(local) / "config.json").is_file():
        return Path(local), f"local trial folder {local}"
    run_id = winner.best.mlflow_run_id
    client = MlflowClient(tracking_uri=tracking_uri)
    if run_id and any(artifact.path == "model" for artifact in client.list_artifacts(run_id)):
        return Path(client.download_artifacts(run_id, "model", str(staging))), f"MLflow artifact runs:/{run_id}/model"
    # No stored weights (tracking.artifacts: none, and the local folder is gone): re-train with the trial's own seed.
    name = f"retrain-trial-{winner.best.number:03d}"
    tags = {"ftlab.retrain_of_trial": str(winner.best.number), "ftlab.retrain_of_run": str(run_id)}
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
    for file in [*(source / name for name in _MODEL_FILES), *source.glob("model-*.safetensors")]:
        if file.is_file():
            shutil.copyfile(file, target / file.name)
    # The tokenizer as ftlab loaded it for training: the same object users get from AutoTokenizer.
    load_tokenizer(sweep).save_pretrained(target)


def _provenance(winner: Comparison, train: TrainConfig, study: optuna.Study, fingerprint: str, measured: float,
                weights_from: str, tracking_uri: str) -> dict[str, Any]:  # fmt: skip
    run_id = winner.best.mlflow_run_id
    commit = None
    if run_id:
        commit = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.tags.get("mlflow.source.git.commit")
    return {
        "study": study.study_name,
        "trial": winner.best.number,
        "mlflow_run_id": run_id,
        "data_fingerprint": fingerprint,
        "git_commit": commit,
        "seed": train.seed,
        "params": winner.best.params,
        "train": train.model_dump(),
        "eval_loss_recorded": winner.best.eval_loss,
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
        UserError: no completed trial, an ``out_dir`` that is not new, empty or (with ``force``) an earlier export,
            or that holds the study, the MLflow store, the sweep file or the current folder (see
            :mod:`ftlab.export.target`); or weights whose eval loss does not reproduce the recorded one within 1e-3
            relative. A failure leaves an earlier export in ``out_dir`` as it was.
    """
    sweep, study = open_sweep_study(sweep_file, storage_url)
    sweep_dir = sweep_file.parent
    uri = tracking_uri_for(sweep, tracking_uri)
    winner = select_best(study, sweep, str(sweep_file))
    confirmed = load_confirmation(sweep, storage_url)
    confirmation = confirmed.as_json() if confirmed else None
    check_export_target(out_dir, force, _protected(sweep_file, storage_url_for(sweep, storage_url), uri))
    train = trial_train_config(sweep, sweep_dir, winner.best)
    recorded = winner.best.eval_loss
    if recorded is None:
        raise ExportRefusedError.single(
            "the best trial has no recorded eval loss to check the weights against",
            where=f"trial {winner.best.number}",
            fix="re-run the sweep with this version of ftlab",
        )

    # A folder that turns read-only, or a file put in the way, after the check: one line, no half-made export.
    writes = naming_write_errors(f"--export {out_dir}", "choose a folder you can write in")
    with writes, tempfile.TemporaryDirectory(prefix="ftlab-export-") as download, atomic_path(out_dir) as build:
        weights, weights_from = _fetch_weights(winner, sweep, sweep_dir, train, uri, Path(download))
        measured, fingerprint = measure_eval_loss(weights, sweep, sweep_dir, train)
        if abs(measured - recorded) > RELATIVE_TOLERANCE * abs(recorded):
            raise ExportRefusedError.single(
                f"the weights evaluate to eval loss {measured:.6f}, but trial {winner.best.number} recorded "
                f"{recorded:.6f} (more than {RELATIVE_TOLERANCE:g} relative apart): they are not the measured model",
                where=weights_from,
                fix="check that the data and model files did not change since the sweep, or re-run the trial",
            )
        _copy_model(weights, build, sweep)
        facts = CardFacts(
            model_name=f"{sweep.name}-trial-{winner.best.number}",
            sweep=sweep,
            train=train,
            eval_loss=measured,
            perplexity=perplexity(measured),
            train_loss=winner.best.train_loss,
            tokens_seen=winner.best.tokens_seen,
            trial_number=winner.best.number,
            trials_run=len(study.trials),
            study_name=study.study_name,
            mlflow_run_id=winner.best.mlflow_run_id,
            baseline=winner.as_json()["baseline"],
            gain=(winner.gain.absolute, winner.gain.relative) if winner.gain else (None, None),
            extra_sections=[confirmation_section(confirmed, winner.best.number)] if confirmed else [],
        )
        (build / "README.md").write_text(render_card(facts))
        provenance = _provenance(winner, train, study, fingerprint, measured, weights_from, uri)
        provenance["confirmation"] = confirmation
        atomic_write_json(build / "ftlab.json", provenance, indent=2)

    registered = register_model(uri, winner, out_dir, register, measured, confirmation) if register else None
    return ExportResult(out_dir, measured, weights_from, registered)
