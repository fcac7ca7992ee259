"""The CPU benchmarks end to end at their smallest: trial_cpu --quick, and sweep_efficiency's sweep files (no sweep)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftlab.config import load_sweep

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(module: str, *args: str, timeout: float) -> dict:
    """Run ``python -m benchmarks.MODULE ARGS``; its stdout must be exactly one JSON line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OUT", None)
    completed = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON line, got: {completed.stdout[-2000:]}"
    return json.loads(lines[0])


@pytest.mark.integration
@pytest.mark.slow
def test_trial_cpu_quick_measures_every_figure(tmp_path: Path) -> None:
    output = tmp_path / "trial_cpu.json"
    result = run_benchmark("trial_cpu", "--quick", "--output", str(output), timeout=300)

    phases = result["phases"]
    assert not [name for name, phase in phases.items() if "error" in phase], phases
    targets = result["targets"]
    assert set(targets) == {
        "ratio_tokens_per_s",
        "fixed_cost_fork_s",
        "fixed_cost_cold_s",
        "prepare_data_cache_hit_s",
        "demo_assets_hit_s",
        "tracking_overhead",
    }
    for key in (
        "ratio_tokens_per_s",
        "fixed_cost_fork_s",
        "fixed_cost_cold_s",
        "prepare_data_cache_hit_s",
        "demo_assets_hit_s",
    ):
        assert targets[key]["value"] > 0, (key, targets[key])
    # An overhead is a difference of two noisy rates: on a busy machine it can come out below zero.
    assert math.isfinite(targets["tracking_overhead"]["value"])
    assert phases["tracking"]["on"]["steps_per_s_median"] > 0 and phases["tracking"]["off"]["steps_per_s_median"] > 0
    assert all(isinstance(target["met"], bool) for target in targets.values())

    throughput = phases["throughput"]
    assert throughput["ftlab"]["tokens_per_s_median"] > 0 and throughput["trainer"]["tokens_per_s_median"] > 0
    assert throughput["measured_steps"] == 10
    assert targets["ratio_tokens_per_s"]["value"] == pytest.approx(
        throughput["ftlab"]["tokens_per_s_median"] / throughput["trainer"]["tokens_per_s_median"]
    )
    assert phases["data"]["miss_s"] > 0 and len(phases["data"]["hit_s"]) == 3
    assert len(phases["fixed_cost"]["fork"]["trials"]) == 2
    assert result["machine"]["cpu_count"] >= 1 and result["machine"]["torch"]
    assert json.loads(output.read_text(encoding="utf-8")) == result


@pytest.mark.integration
@pytest.mark.slow  # a benchmark smoke run: `make test-slow`, run by CI
def test_sweep_efficiency_dry_run_writes_an_unpruned_copy(tmp_path: Path) -> None:
    result = run_benchmark("sweep_efficiency", "--dry-run", "--work-dir", str(tmp_path), timeout=120)

    demo = yaml.safe_load((REPO_ROOT / "sweeps" / "demo.yaml").read_text(encoding="utf-8"))
    assert result["dry_run"] is True and result["n_trials"] == demo["budget"]["n_trials"]
    pruned, unpruned = result["variants"]["pruned"], result["variants"]["unpruned"]
    assert pruned["pruner"] == demo["pruner"] and pruned["name"] == demo["name"]
    assert unpruned["pruner"] == {"name": "none"} and unpruned["name"] != demo["name"]
    for key in ("model", "data", "baseline", "train", "search", "sampler", "budget"):
        assert unpruned[key] == demo[key], key
    for variant in (pruned, unpruned):
        load_sweep(variant["file"])  # both files are valid sweeps, as the benchmark would run them


@pytest.mark.integration
@pytest.mark.slow
def test_trial_group_quick_compares_two_processes_with_one(tmp_path: Path) -> None:
    output = tmp_path / "trial_group.json"
    result = run_benchmark("trial_group", "--quick", "--output", str(output), timeout=300)

    assert json.loads(output.read_text()) == result
    assert set(result["runs"]) == {"1 process", "2 processes, ddp", "2 processes, fsdp"}
    for name, figures in result["runs"].items():
        assert figures["wall_s"] > 0 and figures["step_ms"] > 0, name
        if name != "1 process":  # the same training: losses equal to float32 rounding
            assert figures["eval_loss_rel_diff"] < 1e-5 and figures["train_loss_rel_diff"] < 1e-5, figures
    assert set(result["ratios_to_1_process"]) == {"2 processes, ddp", "2 processes, fsdp"}
