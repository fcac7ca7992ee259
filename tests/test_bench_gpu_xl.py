"""The GPU benchmark end to end at tiny size on this machine: the recipe's phases with accumulation, taking turns,
both MFU conventions, the JSON line and the result files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS, REPEATS = 3, 2


@pytest.mark.integration
@pytest.mark.slow
def test_tiny_run_measures_the_recipe_phases_in_turns(tmp_path: Path) -> None:
    output = tmp_path / "results" / "gpu_xl_tiny.json"
    out_dir = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(out_dir)}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_xl", "--tiny", "--steps", str(STEPS), "--repeats", str(REPEATS),
         "--output", str(output)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON line, got: {completed.stdout[-2000:]}"
    result = json.loads(lines[0])
    config, phases = result["config"], result["phases"]

    # The recipe: accumulation above 1, and every phase at its effective batch.
    recipe = config["recipe"]
    assert recipe["gradient_accumulation_steps"] > 1
    assert result["recipe_phase"] == config["order"][0]
    assert phases[result["recipe_phase"]]["gradient_accumulation_steps"] == recipe["gradient_accumulation_steps"]
    for phase in phases.values():
        assert phase["micro_batch"] * phase["gradient_accumulation_steps"] == recipe["effective_batch"]
    assert {phase["runner"] for phase in phases.values()} == {"ftlab", "trainer"}
    assert [p["speedups"] for p in phases.values() if p["runner"] == "trainer"] == ["none", "ftlab's model speed-ups"]
    assert len([p for p in phases.values() if p["runner"] == "ftlab"]) == 3  # the recipe and two bigger micro-batches

    # Whole steps timed after the warm-up, every phase run REPEATS times, the spread reported.
    for name, phase in phases.items():
        assert "error" not in phase, (name, phase)
        assert phase["runs"] == REPEATS and phase["measured_steps"] == REPEATS * STEPS == len(phase["steps_ms"])
        spread = phase["step_ms"]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
        assert spread["min"] == pytest.approx(min(phase["steps_ms"]), abs=0.01)
        assert phase["tokens_per_s"] == pytest.approx(config["tokens_per_step"] / (spread["median"] / 1000))
        assert len(phase["warmup_s"]) == REPEATS
    # The phases took turns: ABC… ABC…, as the progress lines show.
    runs = re.findall(r"\] (\S+): run (\d+)/\d+", completed.stderr)
    assert runs == [(name, str(repeat)) for repeat in range(1, REPEATS + 1) for name in config["order"]]

    # MFU in both conventions, with their formulas; None on a CPU.
    conventions = config["mfu_conventions"]
    assert set(conventions) == {"ftlab", "llm_c"}
    assert "12*n_layer*n_embd*seq_len" in conventions["ftlab"]["formula"]
    assert "6*n_layer*n_embd*seq_len" in conventions["llm_c"]["formula"]
    attention = config["n_layer"] * config["n_embd"] * config["seq_len"]
    assert conventions["ftlab"]["flops_per_token"] == 6 * config["params"] + 12 * attention
    assert conventions["llm_c"]["flops_per_token"] == 6 * config["params"] + 6 * attention
    assert config["peak_flops_source"]
    for phase in phases.values():
        assert set(phase["mfu"]) == {"ftlab", "llm_c"}
    if result["device"] == "cpu":
        assert config["peak_flops"] is None
        assert all(value is None for phase in phases.values() for value in phase["mfu"].values())
        assert all(target["met"] is None for name, target in result["targets"].items() if name.endswith(".mfu"))

    # The comparisons.
    ftlab_phases = [name for name, phase in phases.items() if phase["runner"] == "ftlab"]
    fastest = max(ftlab_phases, key=lambda name: phases[name]["tokens_per_s"])
    assert result["fastest_ftlab"] == {"phase": fastest, "micro_batch": phases[fastest]["micro_batch"]}
    trainer, patched = (name for name, phase in phases.items() if phase["runner"] == "trainer")
    ratios = result["ratios"]
    tps = {name: phase["tokens_per_s"] for name, phase in phases.items()}
    assert ratios["ftlab_recipe_vs_trainer"] == pytest.approx(tps[result["recipe_phase"]] / tps[trainer])
    assert ratios["loop_share_ftlab_recipe_vs_trainer_patched"] == pytest.approx(
        tps[result["recipe_phase"]] / tps[patched]
    )
    assert ratios["speedups_share_trainer_patched_vs_trainer"] == pytest.approx(tps[patched] / tps[trainer])
    assert set(result["targets"]) == {f"{name}.{key}" for name in ftlab_phases for key in ("mfu", "peak_mem_gb")}

    assert json.loads(output.read_text(encoding="utf-8")) == result
    assert json.loads((out_dir / output.name).read_text(encoding="utf-8")) == result
