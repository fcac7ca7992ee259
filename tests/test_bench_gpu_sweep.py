"""The GPU sweep script: its GPU-only checks on recorded samples, and the whole thing at tiny size on the CPU (the
real CLI, the out-of-memory retry by injected fault, the export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.gpu_sweep import TINY, Monitor, Sample, check_fork_server, check_memory

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def sample(t: float, memory: float, apps: dict[int, float | None], forked: set[int], libcuda: bool = False) -> Sample:
    return Sample(t, memory, apps, fork_server=10, forked=forked, libcuda_in_fork_server=libcuda)


def runs_on(*devices: str) -> list[SimpleNamespace]:
    return [SimpleNamespace(data=SimpleNamespace(tags={"device": device})) for device in devices]


def test_memory_is_released_when_the_gpu_is_back_to_idle_less_the_live_processes() -> None:
    monitor = Monitor(gpu=True, idle_mib=100)
    monitor.samples = [
        sample(0.0, 5100, {11: 5000}, {11}),
        sample(0.5, 150, {}, set()),  # trial 11 ended: back to idle
        sample(1.0, 6100, {12: 6000}, {12}),
        sample(1.5, 900, {13: 600}, {13}),  # trial 12 ended and 13 has started: 900 - 600 is idle
        sample(2.0, 4600, {}, set()),  # trial 13 ended, and 4.5 GB stayed in use
        sample(3.0, 4600, {}, set()),
    ]
    released = {entry["pid"]: entry for entry in monitor.released()}
    assert released[11]["released"] and released[11]["after_s"] == 0.5 and released[11]["residual_mib"] == 150
    assert released[12]["released"] and released[12]["residual_mib"] == 300
    assert not released[13]["released"]
    result = check_memory(monitor, gpu=True)
    assert result["ok"] is False and result["after_sweep_mib"] == 4600


def test_a_sample_where_a_live_process_has_no_reported_memory_cannot_tell() -> None:
    monitor = Monitor(gpu=True, idle_mib=100)
    monitor.samples = [
        sample(0.0, 5100, {11: 5000}, {11}),
        sample(0.5, 5100, {12: None}, {12}),  # 11 ended, but how much of 5100 MiB is 12's?
        sample(1.0, 100, {}, set()),
    ]
    released = {entry["pid"]: entry for entry in monitor.released()}
    assert released[11]["after_s"] == 1.0 and released[12]["after_s"] == 0.5


def test_where_nvidia_smi_lists_no_process_every_forked_process_is_watched() -> None:
    monitor = Monitor(gpu=True, idle_mib=100)
    monitor.samples = [sample(0.0, 5100, {}, {11}), sample(0.5, 120, {}, set()), sample(1.0, 5000, {}, {12})]
    monitor.final()
    released = {entry["pid"]: entry for entry in monitor.released()}
    assert released[11]["released"] and released[12]["released"] is False  # no sample after its end shows idle
    assert "no CUDA process" in check_memory(monitor, gpu=True)["watched"]


def test_the_fork_server_check_fails_if_it_held_a_cuda_context_or_loaded_the_driver() -> None:
    clean = Monitor(gpu=True, idle_mib=0, samples=[sample(0, 0, {11: 500}, {11})])
    assert check_fork_server(clean, runs_on("cuda:NVIDIA H200"), gpu=True)["ok"] is True
    assert (
        check_fork_server(clean, runs_on("cpu"), gpu=True)["ok"] is False
    )  # trials that did not use CUDA prove nothing
    in_apps = Monitor(gpu=True, idle_mib=0, samples=[sample(0, 0, {10: 500, 11: 500}, {11})])
    assert check_fork_server(in_apps, runs_on("cuda:NVIDIA H200"), gpu=True)["ok"] is False
    driver = Monitor(gpu=True, idle_mib=0, samples=[sample(0, 0, {11: 500}, {11}, libcuda=True)])
    assert check_fork_server(driver, runs_on("cuda:NVIDIA H200"), gpu=True)["ok"] is False
    on_cpu = check_fork_server(clean, runs_on("cpu"), gpu=False)
    assert on_cpu["ok"] is None and on_cpu["skipped"] == "no CUDA" and on_cpu["fork_server_pids"] == [10]


@pytest.mark.integration
@pytest.mark.slow
def test_tiny_sweep_runs_the_cli_end_to_end_and_every_check_passes(tmp_path: Path) -> None:
    output, out_dir, work = tmp_path / "results" / "gpu_sweep_tiny.json", tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OUT": str(out_dir)}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_sweep", "--tiny", "--work", str(work), "--output", str(output)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = completed.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON line, got: {completed.stdout[-2000:]}"
    result = json.loads(lines[0])
    checks = result["checks"]

    assert result["ok"] is True
    gpu_only = {"fork_server_no_cuda", "gpu_memory_released"}
    assert {name for name, check in checks.items() if check["ok"] is not True} == gpu_only
    assert all(checks[name]["skipped"] == "no CUDA" for name in gpu_only)
    assert checks["fork_server_no_cuda"]["fork_server_pids"], "the fork server was seen"

    # Trials and runs: the baseline first, pruning, every trial a nested run in the matching state.
    trials = result["trials"]
    assert len(trials) >= 4 and trials[0]["baseline"] and not any(trial["baseline"] for trial in trials[1:])
    assert "PRUNED" in {trial["state"] for trial in trials}
    runs = checks["runs_match_states"]
    assert runs["parent_runs"] == 1 and runs["child_runs"] == len(trials)
    assert all(pair["nested"] and RUN_STATUS[pair["state"]] == pair["run_status"] for pair in runs["trials"])
    assert all(trial["tokens_per_second"] > 0 and trial["peak_memory_mb"] > 0 for trial in trials)

    # The micro-batch that cannot fit: retried with half of it each time, down to what the injected fault allows.
    too_big = [trial for trial in trials if trial["params"]["per_device_train_batch_size"] == TINY.too_big_micro_batch]
    assert too_big and all(trial["oom_retries"] == "16x1->8x2, 8x2->4x4" for trial in too_big)
    assert all(trial["oom_retries"] is None for trial in trials if trial not in too_big)

    # The export is the best trial's and loads with plain transformers.
    export = checks["export"]
    assert export["trial"] == result["best"]["best_trial"] == export["provenance_trial"]
    model = AutoModelForCausalLM.from_pretrained(export["dir"])
    tokenizer = AutoTokenizer.from_pretrained(export["dir"])
    assert model.config.n_layer == TINY.n_layer
    assert model(**tokenizer("import os\n", return_tensors="pt")).logits.isfinite().all()

    assert json.loads(output.read_text(encoding="utf-8")) == result
    assert json.loads((out_dir / output.name).read_text(encoding="utf-8")) == result
    log = (out_dir / "gpu_sweep_tiny.log").read_text(encoding="utf-8")
    assert "==== ftlab sweep sweep.yaml (exit 0)" in log and "==== ftlab best sweep.yaml --export" in log
