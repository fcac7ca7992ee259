"""``ftlab best --export DIR --register NAME``: the exported winner in MLflow's Model Registry, loadable as
``mlflow.pyfunc.load_model("models:/NAME@champion")`` (or ``mlflow.transformers.load_model``).

The model is logged to the winning trial's run as an MLflow transformers model (so the run shows it in the UI's
Models column), registered as a new version of NAME with the alias ``champion``, and described: the objective, the
gain over the baseline, the trial and its settings, as description and tags.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from ftlab.export.best import BestTrial

CHAMPION_ALIAS = "champion"
# The pipeline's default length, for pyfunc's predict(): without one, generation runs up to the model's context.
_MAX_NEW_TOKENS = 64


def register_model(tracking_uri: str, best: BestTrial, export_dir: Path, name: str, measured: float) -> str:
    """Log ``export_dir`` to the best trial's run as an MLflow model and register it; "NAME version N (alias …)"."""
    import mlflow
    import torch
    import transformers

    run_id = best.record.mlflow_run_id
    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_artifact(run_id, str(export_dir / "README.md"), "export")  # the card and provenance beside the model
    client.log_artifact(run_id, str(export_dir / "ftlab.json"), "export")
    generator = transformers.pipeline("text-generation", model=str(export_dir))
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"]
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # log_model logs into the fluent API's active run: the trial's, by id
    try:
        with mlflow.start_run(run_id=run_id):
            logged = mlflow.transformers.log_model(
                transformers_model=generator,
                name="model",
                registered_model_name=name,
                model_config={"max_new_tokens": _MAX_NEW_TOKENS},
                pip_requirements=requirements,  # known: inferring them would import the model in a subprocess
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    version = str(logged.registered_model_version)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    client.update_model_version(name, version, description=_description(best, measured))
    for key, value in _tags(best, measured).items():
        client.set_model_version_tag(name, version, key, value)
    return f"{name} version {version} (alias {CHAMPION_ALIAS})"


def _description(best: BestTrial, measured: float) -> str:
    record = best.record
    settings = ", ".join(f"{key}={value}" for key, value in record.params.items())
    text = f"Trial {record.number} of an ftlab sweep: {best.metric} {best.value:.4f} (re-measured {measured:.4f})"
    if best.gain is not None and best.gain.relative is not None and best.baseline is not None:
        text += f", {best.gain.relative:+.1%} against the baseline (trial {best.baseline.number})"
    return f"{text}. Settings: {settings}."


def _tags(best: BestTrial, measured: float) -> dict[str, str]:
    tags = {
        "ftlab.trial": str(best.record.number),
        "ftlab.objective": best.metric,
        best.metric: f"{best.value:.6g}",
        "eval_loss_measured": f"{measured:.6g}",
    }
    if best.gain is not None and best.gain.relative is not None:
        tags["gain_over_baseline"] = f"{best.gain.relative:.4f}"
    if best.baseline is not None and best.baseline.values:
        tags[f"baseline.{best.metric}"] = f"{best.baseline.values[0]:.6g}"
    return tags
