"""`ftlab best` and `ftlab best --export`: the winner, verified, in the format everyone loads.

The sweeps and most exports run through the library calls behind the CLI (``run_sweep``, ``export_best``) in this
process; what only the command line shows (JSON output, exit codes, messages) runs the real CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import optuna
import pytest
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from ftlab.export.export import ExportRefusedError, ExportResult, export_best
from ftlab.sweep.events import SweepFailingError
from tests.helpers import environment, local_client, run_ftlab, sweep_in_process, write_sweep
from tests.support.faults import fault_env

pytestmark = pytest.mark.integration


def study_of(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="small", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    write_sweep(folder, budget={"n_trials": 2})
    sweep_in_process(folder)
    return folder


def export_here(folder: Path, out: str, **options: Any) -> ExportResult:
    """``ftlab best sweep.yaml --export OUT`` as the library call behind it, in this process."""
    with contextlib.chdir(folder), environment(None):
        return export_best(Path("sweep.yaml"), Path(out), **options)


def snapshot(folder: Path, run_id: str) -> dict[str, Any]:
    """What MLflow's client shows of a run: its times, status, params, metrics (every point) and tags."""
    client = local_client(folder)
    run = client.get_run(run_id)
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}
    return {
        "start": run.info.start_time,
        "end": run.info.end_time,
        "status": run.info.status,
        "params": run.data.params,
        "metrics": history,
        "tags": run.data.tags,
        "artifacts": [item.path for item in client.list_artifacts(run_id)],
    }


@pytest.fixture(scope="module")
def trial_run_before(swept: Path) -> dict[str, Any]:
    """The winning trial's run as the sweep left it, before anything is exported or registered."""
    return snapshot(swept, study_of(swept).best_trial.user_attrs["mlflow_run_id"])


@pytest.fixture(scope="module")
def exported(swept: Path, trial_run_before: dict[str, Any]) -> tuple[Path, dict]:
    result = run_ftlab("best", "sweep.yaml", "--export", "out", "--register", "small-best", "--json", cwd=swept)
    assert result.returncode == 0, result.stderr
    return swept / "out", json.loads(result.stdout)


def test_best_json_names_the_winner_and_the_baseline(swept: Path) -> None:
    result = run_ftlab("best", "sweep.yaml", "--json", cwd=swept)
    assert result.returncode == 0, result.stderr
    best = json.loads(result.stdout)
    study = study_of(swept)
    assert best["trial"] == study.best_trial.number
    assert best["eval_loss"] == pytest.approx(study.best_value)
    assert best["perplexity"] == pytest.approx(study.best_trial.user_attrs["perplexity"])
    assert best["mlflow_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    assert best["baseline"]["trial"] == 0
    assert best["gain"]["absolute"] == pytest.approx(best["baseline"]["eval_loss"] - best["eval_loss"])
    assert "mlflow ui --backend-store-uri" in best["ui"]


def test_export_loads_with_plain_transformers_and_generates(exported: tuple[Path, dict]) -> None:
    out, _ = exported
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "ftlab.json"} <= {
        path.name for path in out.iterdir()
    }
    # Readable as this user's other files are (safetensors itself writes 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~umask
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 2
    generator = pipeline("text-generation", model=str(out))
    text = generator("The with statement", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The with statement") and len(tokenizer(text).input_ids) > len(
        tokenizer("The with statement").input_ids
    )


def test_card_round_trips_to_the_winners_hyperparameters(exported: tuple[Path, dict], swept: Path) -> None:
    out, best = exported
    result = run_ftlab("baseline", "from-card", str(out / "README.md"), "--json", cwd=swept)
    assert result.returncode == 0, result.stderr
    card = json.loads(result.stdout)
    params = best["params"]
    assert card["learning_rate"] == params["learning_rate"]
    assert card["total_train_batch_size"] == params["total_train_batch_size"]
    assert card["eval_loss"] == pytest.approx(best["eval_loss"], abs=1e-4)
    assert card["perplexity"] == pytest.approx(best["perplexity"], rel=1e-4)
    assert card["warnings"] == []
    provenance = json.loads((out / "ftlab.json").read_text())
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "warmup_ratio", "seed", "weight_decay"):
        assert card[key] == provenance["train"][key], key


def test_provenance_matches_the_mlflow_run(exported: tuple[Path, dict], swept: Path) -> None:
    out, best = exported
    provenance = json.loads((out / "ftlab.json").read_text())
    run = local_client(swept).get_run(best["mlflow_run_id"])
    assert provenance["mlflow_run_id"] == run.info.run_id
    assert provenance["data_fingerprint"] == run.data.tags["data.fingerprint"]
    assert provenance["seed"] == int(run.data.params["seed"])
    assert provenance["trial"] == best["trial"] == int(run.data.tags["optuna.trial.number"])
    assert (
        abs(provenance["eval_loss_measured"] - provenance["eval_loss_recorded"])
        <= 1e-3 * provenance["eval_loss_recorded"]
    )


def test_the_registered_champion_loads_with_mlflow_and_says_what_it_is_for(
    exported: tuple[Path, dict], swept: Path
) -> None:
    import mlflow

    _, best = exported
    client = local_client(swept)
    version = client.get_model_version_by_alias("small-best", "champion")
    assert f"Trial {best['trial']} of an ftlab sweep: eval/loss {best['eval_loss']:.4f}" in version.description
    assert version.tags["ftlab.trial"] == str(best["trial"]) and "gain_over_baseline" in version.tags
    assert version.tags["ftlab.trial_run_id"] == best["mlflow_run_id"]
    registered = client.get_registered_model("small-best")
    assert "ftlab sweep small" in registered.description and registered.tags["ftlab.objective"] == "eval/loss"
    # The model's own run, nested under the sweep's parent run beside the trials, names the trial it holds.
    register_run = client.get_run(version.run_id)
    trial_run = client.get_run(best["mlflow_run_id"])
    assert register_run.info.run_id != trial_run.info.run_id
    assert register_run.data.tags["ftlab.trial_run_id"] == trial_run.info.run_id
    assert register_run.data.tags["mlflow.parentRunId"] == trial_run.data.tags["mlflow.parentRunId"]
    assert register_run.info.status == "FINISHED"
    with contextlib.chdir(swept):
        mlflow.set_tracking_uri(client.tracking_uri)
        try:
            model = mlflow.pyfunc.load_model("models:/small-best@champion")
            logged = mlflow.search_logged_models(
                experiment_ids=[trial_run.info.experiment_id], filter_string=f"source_run_id = '{version.run_id}'"
            )
        finally:
            mlflow.set_tracking_uri(None)
    (text,) = model.predict(["The with statement"])
    assert text.startswith("The with statement") and len(text) > len("The with statement")
    assert len(logged) == 1
    # The params schema lets a caller choose the length (the tiny model may stop early: only a bound is certain).
    assert [param.name for param in model.metadata.get_params_schema().params] == ["max_new_tokens"]
    tokenizer = AutoTokenizer.from_pretrained(exported[0])
    prompt_tokens = len(tokenizer("The with statement").input_ids)
    (short,) = model.predict(["The with statement"], params={"max_new_tokens": 1})
    assert short.startswith("The with statement") and len(tokenizer(short).input_ids) <= prompt_tokens + 1
    assert len(short) <= len(text)


def test_registering_leaves_the_trials_run_as_the_sweep_ended_it(
    exported: tuple[Path, dict], swept: Path, trial_run_before: dict[str, Any]
) -> None:
    """Reopening the trial's run to log the model stretched its duration and added params and system metrics."""
    _, best = exported
    assert snapshot(swept, best["mlflow_run_id"]) == trial_run_before


def test_non_empty_folder_is_refused_unless_forced(exported: tuple[Path, dict], swept: Path) -> None:
    refused = run_ftlab("best", "sweep.yaml", "--export", "out", cwd=swept)
    assert refused.returncode == 2 and "earlier export" in refused.stderr and "Traceback" not in refused.stderr
    forced = export_here(swept, "out", force=True)
    assert forced.out_dir == Path("out") and (swept / "out" / "model.safetensors").is_file()


def _tree(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_size for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("target", ["mlruns", ".", "<cwd>"])
def test_force_never_replaces_the_results_or_the_current_folder(swept: Path, target: str) -> None:
    before = _tree(swept)
    where = str(swept) if target == "<cwd>" else target
    result = run_ftlab("best", "sweep.yaml", "--export", where, "--force", cwd=swept)
    assert result.returncode == 2, result.stderr
    assert "would delete it" in result.stderr and "Traceback" not in result.stderr
    assert _tree(swept) == before, "nothing was deleted or written"


def test_a_failed_forced_export_leaves_the_earlier_export_as_it_was(exported: tuple[Path, dict], swept: Path) -> None:
    out, _ = exported
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    weights = swept / study_of(swept).best_trial.user_attrs["model_dir"] / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = next(key for key in tensors if key.endswith("wte.weight"))
    tensors[name] = tensors[name] * 0.5
    save_file(tensors, weights, metadata={"format": "pt"})
    try:
        with pytest.raises(ExportRefusedError, match="not the measured model"):
            export_here(swept, "out", force=True)
    finally:
        weights.write_bytes(original)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert not list(swept.glob(".out*")), "no temporary folder is left"


def test_weights_come_from_mlflow_when_the_local_trial_folder_is_gone(swept: Path) -> None:
    local = Path(swept / study_of(swept).best_trial.user_attrs["model_dir"])
    moved = local.with_name("moved-away")
    shutil.move(local, moved)
    try:
        result = export_here(swept, "from-mlflow")
    finally:
        shutil.move(moved, local)
    assert result.weights_from.startswith("MLflow artifact")


def test_weights_that_do_not_reproduce_the_metric_are_refused(swept: Path) -> None:
    weights = swept / study_of(swept).best_trial.user_attrs["model_dir"] / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = next(key for key in tensors if key.endswith("wte.weight"))
    tensors[name] = tensors[name] * 0.5  # a different model than the one the sweep measured
    save_file(tensors, weights, metadata={"format": "pt"})
    try:
        with pytest.raises(ExportRefusedError, match="not the measured model"):
            export_here(swept, "tampered")
    finally:
        weights.write_bytes(original)
    assert not (swept / "tampered").exists()
    assert not list(swept.glob(".tampered*")), "no temporary folder is left"


def test_no_completed_trial_is_a_clear_error(tmp_path: Path) -> None:
    write_sweep(tmp_path, budget={"n_trials": 1, "max_trials": 1})
    with pytest.raises(SweepFailingError):  # the baseline diverges (NaN loss): nothing completes
        sweep_in_process(tmp_path, env=fault_env("nan_at_step=1"))
    result = run_ftlab("best", "sweep.yaml", "--export", "out", cwd=tmp_path)
    assert result.returncode == 2 and "no completed trial" in result.stderr


def test_without_stored_artifacts_export_retrains_with_the_trial_seed(tmp_path: Path) -> None:
    write_sweep(tmp_path, budget={"n_trials": 1}, tracking={"artifacts": "none"})
    sweep_in_process(tmp_path)
    shutil.rmtree(tmp_path / ".ftlab" / "trials")
    result = export_here(tmp_path, "out")
    assert result.weights_from.startswith("re-trained")
    assert (tmp_path / "out" / "model.safetensors").is_file()
