"""A baseline outside its own search range: ftlab says so once at validate time, in its own words; Optuna's
"fixed parameter" UserWarning does not leak from the trials."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest

from ftlab.config import load_sweep
from ftlab.settings import resolve_train_config
from ftlab.sweep.space import baseline_outside_ranges, baseline_point, sample_overrides
from tests.helpers import run_ftlab
from tests.support.sweeps import SMALL_SWEEP, write_sweep

OUTSIDE = {**SMALL_SWEEP["search"], "learning_rate": {"type": "float", "low": 2e-3, "high": 1e-2, "log": True}}


@pytest.mark.integration
def test_validate_warns_once_naming_the_key_the_value_and_the_range(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, search=OUTSIDE)  # the baseline's learning_rate is 1e-3
    checked = run_ftlab("validate", "--schema-only", str(sweep), cwd=tmp_path, timeout=300)
    assert checked.returncode == 0, checked.stderr
    lines = [line for line in checked.stdout.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, checked.stdout
    assert "search.learning_rate" in lines[0] and "0.001" in lines[0] and "[0.002, 0.01]" in lines[0]
    inside = run_ftlab("validate", "--schema-only", str(write_sweep(tmp_path)), cwd=tmp_path, timeout=300)
    assert inside.returncode == 0 and "warning" not in inside.stdout, inside.stdout


def test_the_baseline_trial_samples_without_optunas_warning(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, search=OUTSIDE))
    baseline = resolve_train_config(sweep, tmp_path)
    assert len(baseline_outside_ranges(sweep, baseline)) == 1
    study = optuna.create_study()
    study.enqueue_trial(baseline_point(sweep, baseline))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        overrides = sample_overrides(study.ask(), sweep, baseline)
    assert overrides["learning_rate"] == 1e-3, "trial 0 is still the baseline"
    assert not [str(warning.message) for warning in caught]


@pytest.mark.integration
def test_a_baseline_outside_its_choices_is_refused_by_validate_and_sweep_creates_nothing(tmp_path: Path) -> None:
    choices = {**SMALL_SWEEP["search"], "learning_rate": {"choices": [1e-4, 3e-4]}}  # the baseline's is 1e-3
    sweep = write_sweep(tmp_path, search=choices)
    for command in (["validate", "--schema-only"], ["validate"], ["sweep"]):
        checked = run_ftlab(*command, str(sweep), cwd=tmp_path, timeout=300)
        assert checked.returncode == 2, (command, checked.stdout, checked.stderr)
        assert "search.learning_rate.choices" in checked.stderr and "add 0.001 to the choices" in checked.stderr
        assert "Traceback" not in checked.stderr
    assert not (tmp_path / "mlruns").exists() or not any((tmp_path / "mlruns").iterdir()), "the sweep made stores"
