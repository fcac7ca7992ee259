"""``ftlab best --export DIR --register NAME``: the exported winner in MLflow's Model Registry, loadable as
``mlflow.pyfunc.load_model("models:/NAME@champion")`` (or ``mlflow.transformers.load_model``).

The model is logged to a run of its own, ``register-<trial run name>``, nested under the sweep's parent run and
tagged with the winning trial's run id: the trial's run is a record of what was measured and stays as it ended
(reopening it would stretch its duration, and add parameters and system metrics that training never had). The model
is registered as a new version of NAME with the alias ``champion``; the registered model and the version are
described (the objective, the gain over the baseline, the trial and its settings, the confirmation over seeds when
``ftlab confirm`` has run) with descriptions and tags. Its signature has a params schema, so
``predict(prompts, params={"max_new_tokens": N})`` works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from ftlab.sweep.summary import Comparison
from ftlab.tracking import DESCRIPTION_TAG, PARENT_RUN_TAG, TrackedRun

CHAMPION_ALIAS = "champion"
TRIAL_RUN_TAG = "ftlab.trial_run_id"  # on the register run: the trial whose model it holds
# The pipeline's default length, for pyfunc's predict(): without one, generation runs up to the model's context.
_MAX_NEW_TOKENS = 64


def register_model(
    tracking_uri: str,
    winner: Comparison,
    export_dir: Path,
    name: str,
    measured: float,
    confirmation: dict[str, Any] | None = None,
) -> str:
    """Log ``export_dir`` as an MLflow model to a new run linked to the best trial's, and register it; returns
    "NAME version N (alias …)". ``confirmation``: the sweep's confirmation as ``Confirmation.as_json()``, if any."""
    client = MlflowClient(tracking_uri=tracking_uri)
    trial_run = client.get_run(winner.best.mlflow_run_id)  # read only: the trial's run is never written to
    tags = {
        "ftlab.role": "register",
        TRIAL_RUN_TAG: trial_run.info.run_id,
        "optuna.trial.number": str(winner.best.number),
        DESCRIPTION_TAG: f"The model of trial {winner.best.number} (run {trial_run.info.run_name}), "
        f"registered as {name}.",
    }
    parent = trial_run.data.tags.get(PARENT_RUN_TAG)
    if parent:
        tags[PARENT_RUN_TAG] = parent
    run = client.create_run(trial_run.info.experiment_id, run_name=f"register-{trial_run.info.run_name}", tags=tags)
    with TrackedRun(client, run.info.run_id) as tracked:
        tracked.log_artifact(export_dir / "README.md", "export")  # the card and provenance beside the model
        tracked.log_artifact(export_dir / "ftlab.json", "export")
        version = _log_model(tracking_uri, tracked.run_id, export_dir, name)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    study = trial_run.data.tags.get("optuna.study_name", "?")
    client.update_registered_model(name, description=_model_description(winner, study))
    for key, value in _model_tags(winner, study).items():
        client.set_registered_model_tag(name, key, value)
    client.update_model_version(name, version, description=_description(winner, measured, confirmation))
    for key, value in {**_tags(winner, measured), **_confirmation_tags(winner, confirmation)}.items():
        client.set_model_version_tag(name, version, key, value)
    return f"{name} version {version} (alias {CHAMPION_ALIAS})"


def _log_model(tracking_uri: str, run_id: str, export_dir: Path, name: str) -> str:
    """Log the exported folder to run ``run_id`` as a transformers model, registered as a new version of ``name``."""
    import mlflow
    import torch
    import transformers
    from mlflow.models import infer_signature

    generator = transformers.pipeline("text-generation", model=str(export_dir))
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    # The params schema is what lets predict(..., params={"max_new_tokens": N}) through; its default is the model's.
    signature = infer_signature(["a prompt"], ["a prompt and its continuation"], params={"max_new_tokens": 64})
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # log_model logs into the fluent API's active run: this one, by id
    try:
        # No system metrics: this run loads and saves a model, which says nothing about training.
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            logged = mlflow.transformers.log_model(
                transformers_model=generator,
                name="model",
                registered_model_name=name,
                signature=signature,
                model_config={"max_new_tokens": _MAX_NEW_TOKENS},
                pip_requirements=requirements,  # known: inferring them would import the model in a subprocess
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return str(logged.registered_model_version)


def _model_description(winner: Comparison, study: str) -> str:
    return (
        f"A causal LM fine-tuned by the ftlab sweep {study}. Each version is the sweep's winning trial on "
        f"{winner.metric}, its weights re-measured before export; the alias {CHAMPION_ALIAS} is the latest. A "
        f"version's description says which trial it is, its gain over the baseline and, when `ftlab confirm` ran, "
        f"whether that gain held over new seeds."
    )


def _model_tags(winner: Comparison, study: str) -> dict[str, str]:
    return {
        "ftlab.sweep": study,
        "ftlab.objective": winner.metric,
        "ftlab.task": "text-generation",
        "ftlab.made_by": "ftlab best --register",
    }


def _description(winner: Comparison, measured: float, confirmation: dict[str, Any] | None) -> str:
    record = winner.best
    settings = ", ".join(f"{key}={value}" for key, value in record.params.items())
    figure = f"{winner.metric} {winner.best_value:.4f}"
    text = f"Trial {record.number} of an ftlab sweep: {figure} (re-measured {measured:.4f})"
    if winner.gain is not None and winner.gain.relative is not None and winner.baseline is not None:
        text += f", {winner.gain.relative:+.1%} against the baseline (trial {winner.baseline.number})"
    text += f". Settings: {settings}."
    if confirmation is not None:
        text += f"\n\nConfirmation over new seeds: {confirmation.get('sentence', '')}."
    return text


def _tags(winner: Comparison, measured: float) -> dict[str, str]:
    tags = {
        "ftlab.trial": str(winner.best.number),
        TRIAL_RUN_TAG: str(winner.best.mlflow_run_id),
        "ftlab.objective": winner.metric,
        winner.metric: f"{winner.best_value:.6g}",
        "eval_loss_measured": f"{measured:.6g}",
    }
    if winner.gain is not None and winner.gain.relative is not None:
        tags["gain_over_baseline"] = f"{winner.gain.relative:.4f}"
    if winner.baseline_value is not None:
        tags[f"baseline.{winner.metric}"] = f"{winner.baseline_value:.6g}"
    return tags


def _confirmation_tags(winner: Comparison, confirmation: dict[str, Any] | None) -> dict[str, str]:
    """The winner's confirmed figures (mean over seeds, verdict against the baseline), read from
    ``Confirmation.as_json()``; "not confirmed" when the confirmation did not include this trial."""
    if confirmation is None:
        return {}
    rows = [row for row in confirmation.get("configurations", []) if row.get("trial") == winner.best.number]
    if not rows:
        return {"confirm.verdict": f"not confirmed: ftlab confirm did not train trial {winner.best.number} again"}
    row = rows[0]
    summary, against = row.get("summary") or {}, row.get("against_baseline") or {}
    tags = {"confirm.seeds": str(len(row.get("values", []))), "confirm.verdict": str(against.get("verdict", "-"))}
    if summary.get("mean") is not None:
        tags[f"confirm.{winner.metric}.mean"] = f"{summary['mean']:.6g}"
    if summary.get("ci_low") is not None:
        tags[f"confirm.{winner.metric}.ci95"] = f"{summary['ci_low']:.6g} … {summary['ci_high']:.6g}"
    return tags
