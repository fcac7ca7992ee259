"""What ``ftlab confirm``'s parent run and progress lines say: role confirm, the verdict, each configuration's mean
and interval over seeds named by the sweep's trial numbers, and no seed run marked best (real MLflow store)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from ftlab.demo import load_sweep_with_assets
from ftlab.record import BASELINE_ATTR
from ftlab.sweep.confirm import CONFIRMS_ATTR, SEED_ATTR, confirm_config, confirmation, seeds_for
from ftlab.sweep.confirm_runs import confirm_parent_run
from ftlab.sweep.runs import sweep_parent_run, trial_label
from ftlab.tracking import DESCRIPTION_TAG, TrackedRun
from tests.helpers import write_sweep

# Sweep trial 3 has the luckiest single seed (3.0); trial 1 wins by its mean.
SEED_RESULTS = {0: [5.0, 5.2, 4.9], 3: [3.0, 4.6, 4.7], 1: [4.0, 4.1, 3.9]}


def _confirmation_study() -> optuna.Study:
    study = optuna.create_study()
    for number, values in SEED_RESULTS.items():
        for seed, value in zip(seeds_for(7, 3), values, strict=True):
            study.add_trial(
                create_trial(
                    value=value,
                    params={"learning_rate": 1e-3 * (number + 1)},
                    distributions={"learning_rate": FloatDistribution(1e-6, 1e-1, log=True)},
                    user_attrs={CONFIRMS_ATTR: number, SEED_ATTR: seed, BASELINE_ATTR: number == 0},
                )
            )
    return study


def test_the_confirm_parent_run_carries_role_verdict_and_each_configurations_mean(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    sweep = load_sweep_with_assets(tmp_path / "sweep.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = _confirmation_study()
    parent = confirm_parent_run(sweep, confirm_config(sweep), tmp_path / "sweep.yaml", "sqlite:///optuna.db")
    run = TrackedRun.start(uri, "small", parent.name, tags=parent.tags(study))

    parent.show(study, uri, run.run_id)

    found = confirmation(study, "eval/loss")
    assert found is not None and found.winner is not None
    shown = MlflowClient(tracking_uri=uri).get_run(run.run_id)
    tags, metrics = shown.data.tags, shown.data.metrics
    assert tags["ftlab.role"] == "confirm" and tags["ftlab.confirms_study"] == "small"
    description = tags[DESCRIPTION_TAG]
    assert description.startswith("The confirmation of sweep small") and "Optuna study" not in description
    assert found.sentence() in description and found.table() in description
    assert tags["ftlab.verdict"] == found.sentence() and tags["ftlab.winner_trial"] == "1"
    assert tags["ftlab.baseline_trial"] == "0" and tags["ftlab.confirmed_trials"] == "0,1,3"
    # Means over seeds, named by the sweep's trial numbers; never a "best trial" from one lucky seed.
    for number, values in SEED_RESULTS.items():
        assert metrics[f"confirm/trial_{number}/mean"] == pytest.approx(sum(values) / len(values))
        assert metrics[f"confirm/trial_{number}/seeds"] == len(values)
        assert metrics[f"confirm/trial_{number}/ci_low"] < metrics[f"confirm/trial_{number}/ci_high"]
    assert metrics["confirm/trial_1/vs_baseline_mean"] == pytest.approx(4.0 - 5.033333, abs=1e-5)
    assert not any(key.startswith("best/") for key in metrics) and "ftlab.best_trial" not in tags
    assert "ftlab.best_run_id" not in tags


def test_the_sweep_parent_run_still_shows_its_role_and_best(tmp_path: Path) -> None:
    write_sweep(tmp_path)
    sweep = load_sweep_with_assets(tmp_path / "sweep.yaml")
    parent = sweep_parent_run(sweep, tmp_path / "sweep.yaml", "sqlite:///optuna.db")
    tags = parent.tags(optuna.create_study())
    assert parent.name == "small-sweep" and tags["ftlab.role"] == "sweep"


def test_progress_lines_name_the_sweep_trial_and_seed_of_a_confirmation_run() -> None:
    study = _confirmation_study()
    trials = study.get_trials()
    run = next(t for t in trials if t.user_attrs[CONFIRMS_ATTR] == 3 and t.value == 4.6)
    baseline = next(t for t in trials if t.user_attrs[CONFIRMS_ATTR] == 0)
    assert run.number == 4  # the confirmation study's own numbering, which means nothing to the sweep
    assert trial_label(run, baseline=False) == f"sweep trial 3, seed {run.user_attrs[SEED_ATTR]}"
    assert trial_label(baseline, baseline=True) == f"sweep trial 0 (baseline), seed {baseline.user_attrs[SEED_ATTR]}"
    plain = optuna.create_study()
    plain.add_trial(create_trial(value=1.0))
    assert trial_label(plain.trials[0], baseline=False) == "trial 0"
