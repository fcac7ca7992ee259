"""A sweep whose trials are process groups (``train.nproc_per_node: 2`` on the CPU, gloo, the tiny demo model): the
trials report to Optuna and MLflow as one-process trials do, a rank SIGKILLed mid-checkpoint is retried and resumes
from the sharded checkpoint, and an out-of-memory rank makes the trial retry itself at half the micro-batch.

Slow tier: each trial starts a fork server for its ranks (torch and transformers imported once more, seconds).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SMALL_SWEEP, runs_of, sweep_in_process, write_sweep
from tests.support.faults import fault_env
from tests.test_sweep import load_study

pytestmark = pytest.mark.slow


def test_a_sweep_of_two_process_trials_survives_a_killed_rank_and_an_out_of_memory_rank(tmp_path: Path) -> None:
    # Baseline: 4 × 2 per process × 2 processes = 16 sequences per step, 16 steps, a checkpoint at every evaluation
    # (every 4 steps). Trial 0's rank 0 is SIGKILLed halfway through writing step 8's checkpoint; its retry comes
    # next (trial 1); trial 2 runs out of memory (simulated on rank 0) at step 2 while its micro-batch is above 2.
    faults = "kill_in_checkpoint_at_step=8,trial=0;oom_at_step=2,oom_above_batch=2,trial=2"
    write_sweep(
        tmp_path,
        train={**SMALL_SWEEP["train"], "nproc_per_node": 2},
        search={"learning_rate": {"factor": [0.3, 3]}, "total_train_batch_size": {"choices": [16]}},
        budget={"n_trials": 2},
    )
    sweep_in_process(tmp_path, env=fault_env(faults))
    study = load_study(tmp_path)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    killed, retry, oom = study.trials
    assert "of the trial's process group failed" in killed.user_attrs["fail_reason"]
    runs = {run.data.tags.get("optuna.trial.number"): run for run in runs_of(tmp_path, "small")}

    # The retry resumed from the last complete sharded checkpoint (step 4), not from scratch, and finished.
    assert runs["1"].data.tags["ftlab.resumed_from_step"] == "4"
    assert retry.params == killed.params
    # Out of memory on a rank: the trial retried at half the micro-batch per process, the effective batch kept.
    assert runs["2"].data.tags["ftlab.oom_retries"] == "4x2->2x4"
    assert (oom.user_attrs["per_device_train_batch_size"], oom.user_attrs["gradient_accumulation_steps"]) == (2, 4)
    assert runs["2"].data.params["total_train_batch_size"] == "16"

    # Rank 0's reports reached MLflow and Optuna: every fidelity point (the retry's from where it resumed on; step 4's
    # point is its predecessor's), the final figures, the whole model.
    for number, trial, points in (("1", retry, [8192, 12288, 16384]), ("2", oom, [4096, 8192, 12288, 16384])):
        run = runs[number]
        assert sorted(trial.intermediate_values) == points, trial.intermediate_values
        assert run.data.metrics["final/eval/loss"] == pytest.approx(trial.value)
        assert run.data.params["nproc_per_node"] == "2"
        assert (Path(run.data.tags["ftlab.trial_dir"]) / "final" / "model.safetensors").is_file()
        assert not (Path(run.data.tags["ftlab.trial_dir"]) / "checkpoint").exists()  # finished: nothing to resume
    # The killed trial's run ends KILLED, as a killed one-process trial's does (it was stopped from outside and
    # retried, not failed by its settings); the others FINISHED.
    assert runs["0"].info.status == "KILLED"
    assert "of the trial's process group failed" in runs["0"].data.tags["ftlab.end_reason"]
    assert [runs[number].info.status for number in ("1", "2")] == ["FINISHED", "FINISHED"]
    assert runs[None].info.status == "FINISHED"  # the sweep's parent run
