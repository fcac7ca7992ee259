"""A trial on several processes (CPU, gloo, the tiny model): the same losses as one process at the same effective
batch, under DDP and FSDP; a pruning decision on rank 0 stops every rank; a SIGKILLed rank ends the group and the
retry resumes exactly from the sharded checkpoint (slow tier).

Tolerances: a 2-process trial sums the same per-token losses in another order (two partial sums, then an all-reduce),
and its updates follow from gradients averaged in another order, so losses agree to float32 rounding carried through a
few Adam steps: relative 1e-5 (measured differences are around 1e-7).
"""

from __future__ import annotations

import math
import multiprocessing.util
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from transformers import GPT2LMHeadModel

from ftlab.config import TrainConfig
from ftlab.sweep.launcher import gpus_of_worker
from ftlab.training.callbacks import TrainingCallback
from ftlab.training.checkpoint import latest_sharded_checkpoint
from ftlab.training.distributed import Parallel, StoppedByRankZeroError
from ftlab.training.group import GroupTraining, train_in_group
from ftlab.training.launch import RankFailedError, launch
from ftlab.training.loop import TrainingPreemptedError, train
from ftlab.training.metrics import evaluate
from ftlab.training.runtime import Runtime
from tests.test_metrics import CPU, Recorder, tiny_model

REL_TOL = 1e-5
# One process at micro-batch 2 × accumulation 2, or two at 1 × 2: 4 sequences per optimizer step either way.
SETTINGS: dict[str, Any] = {
    "learning_rate": 1e-2,
    "max_steps": 6,
    "eval_steps": 3,
    "logging_steps": 1,
    "gradient_accumulation_steps": 2,
    "per_device_eval_batch_size": 3,  # 10 validation blocks: ranks score unequal shares, with a stand-in batch
    "warmup_steps": 1,
    "seed": 3,
}


class PrunedError(Exception):
    """Stands in for optuna.TrialPruned, raised by rank 0's callback."""


class PruneAtFirstEvaluation(TrainingCallback):
    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        raise PrunedError(f"pruned at step {step}")


def _config(nproc: int, strategy: str = "ddp") -> TrainConfig:
    micro = 2 if nproc == 1 else 1
    fsdp = "full_shard" if strategy == "fsdp" else ""
    return TrainConfig(**{**SETTINGS, "per_device_train_batch_size": micro, "nproc_per_node": nproc, "fsdp": fsdp})


def counting_blocks(n: int, seed: int) -> torch.Tensor:
    """Blocks that count up from a random start (mod 97): learnable in a few steps, so the runs compared move."""
    starts = torch.randint(0, 97, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (starts + torch.arange(16)) % 97


def holdout_blocks() -> torch.Tensor:
    """7 blocks at an eval batch of 3: the two ranks score unequal shares of the holdout too."""
    return counting_blocks(7, seed=4)


def _figures(recorder: Recorder, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "train": [log["train/loss"] for log in recorder.logs],
        "grad_norm": [log["train/grad_norm"] for log in recorder.logs],
        "eval": [evaluation["eval/loss"] for _, _, evaluation in recorder.evals],
        "train_loss": metrics["train/loss"],
        "eval_loss": metrics["eval/loss"],
        "holdout_loss": metrics["holdout/loss"],
    }


def _train_rank(
    config: TrainConfig, folder: str | None = None, resume: bool = False, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """One rank of a trial (or the single process): train the tiny model, return rank 0's figures."""
    torch.set_num_threads(1)
    parallel = Parallel.from_process_group("fsdp" if config.fsdp else "ddp")
    recorder = Recorder()
    checkpoint = Path(folder) / "checkpoint" if folder else None
    result = train(
        model or tiny_model(),
        counting_blocks(48, seed=1),
        counting_blocks(10, seed=2),
        config,
        CPU,
        recorder,
        checkpoint_path=checkpoint,
        resume_from=checkpoint if resume else None,
        parallel=parallel,
        holdout_blocks=holdout_blocks(),
    )
    return _figures(recorder, result.metrics)


def _assert_same(single: dict[str, Any], group: dict[str, Any]) -> None:
    assert len(group["train"]) == len(single["train"]) == SETTINGS["max_steps"]
    assert len(group["eval"]) == len(single["eval"]) == 2
    for key in ("train", "grad_norm", "eval"):
        for one, two in zip(single[key], group[key], strict=True):
            assert math.isclose(one, two, rel_tol=REL_TOL), (key, single[key], group[key])
    assert math.isclose(single["train_loss"], group["train_loss"], rel_tol=REL_TOL)
    assert math.isclose(single["eval_loss"], group["eval_loss"], rel_tol=REL_TOL)
    # A confirmation run's holdout figure too (scored once on the final model, shared out among the ranks).
    assert math.isclose(single["holdout_loss"], group["holdout_loss"], rel_tol=REL_TOL)
    assert single["holdout_loss"] != single["eval_loss"], "the holdout is its own split"
    # Training moved the loss: the comparison is of runs that did something.
    assert group["eval"][-1] < group["train"][0] - 0.05


@pytest.fixture(scope="module")
def single_process() -> dict[str, Any]:
    return _train_rank(_config(1))


def _tiny_model_on(runtime: Runtime) -> torch.nn.Module:
    return tiny_model()


def _group_job(config: TrainConfig, **paths: Path) -> GroupTraining:
    return GroupTraining(
        load_model=_tiny_model_on,
        train_blocks=counting_blocks(48, seed=1),
        validation_blocks=counting_blocks(10, seed=2),
        holdout_blocks=holdout_blocks(),
        config=config,
        runtime=CPU,
        cpu_threads=2,
        **paths,
    )


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_two_process_trial_has_the_losses_of_one_process_at_the_same_effective_batch(
    strategy: str, single_process: dict[str, Any], tmp_path: Path
) -> None:
    recorder = Recorder()  # rank 0's hooks, relayed to this process
    final = tmp_path / "final"
    result = train_in_group(_group_job(_config(2, strategy), final_model_dir=final), recorder)
    group = _figures(recorder, result.metrics)
    print(f"{strategy}: 1 process {single_process}\n{strategy}: 2 processes {group}")  # the figures for the record
    _assert_same(single_process, group)
    # The whole model, gathered from the shards, loads as a plain transformers model with the trained weights.
    reloaded = GPT2LMHeadModel.from_pretrained(final)
    blocks = counting_blocks(10, seed=2)
    loss, _ = evaluate(reloaded, blocks, 3, CPU.device, CPU.autocast())
    assert math.isclose(loss, result.metrics["eval/loss"], rel_tol=REL_TOL)


def test_a_trial_pruned_on_rank_zero_stops_every_rank() -> None:
    started = time.monotonic()
    with pytest.raises(PrunedError, match="pruned at step 3"):  # the very error the callback raised
        train_in_group(_group_job(_config(2)), PruneAtFirstEvaluation())
    # train_in_group returned: every rank ended normally (a rank that failed or hung would have raised or waited).
    assert time.monotonic() - started < 120  # not a collective timeout
    assert _children() == []


class PreemptAtStep(TrainingCallback):
    """SIGTERMs this process (the trial process, where rank 0's hooks are relayed) once step ``step`` is logged, as
    a scheduler preempting the job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_sigterm_stops_every_rank_at_one_step_with_a_complete_checkpoint(strategy: str, tmp_path: Path) -> None:
    started = time.monotonic()
    stop_requested = threading.Event()  # as a trial process's SIGTERM handler sets it
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.set())
    try:
        with pytest.raises(TrainingPreemptedError) as preempted:
            job = _group_job(_config(2, strategy), checkpoint_path=tmp_path / "checkpoint")
            train_in_group(job, PreemptAtStep(2), stop_requested)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Every rank stopped at the same step boundary, after step 2, and saved its shard of that step's checkpoint.
    assert 2 <= preempted.value.step < SETTINGS["max_steps"], preempted.value
    latest = latest_sharded_checkpoint(tmp_path / "checkpoint")
    assert latest is not None and latest.name == f"step-{preempted.value.step:08d}"
    assert sorted(path.name for path in latest.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
    assert time.monotonic() - started < 25  # the ranks ended by themselves: not the launcher's 30 s shutdown timeout
    assert _children() == []


def _stop_rank(config: TrainConfig, folder: str) -> str:
    """Rank 0's callback stops at the first evaluation; every rank writes how it stopped."""
    torch.set_num_threads(1)
    parallel = Parallel.from_process_group("ddp")
    try:
        train(tiny_model(), counting_blocks(48, 1), counting_blocks(10, 2), config, CPU, PruneAtFirstEvaluation(),
              parallel=parallel)  # fmt: skip
    except (PrunedError, StoppedByRankZeroError) as error:
        outcome = f"{type(error).__name__}: {error}"
    else:
        outcome = "finished"
    (Path(folder) / f"rank{parallel.rank}.txt").write_text(outcome)
    return outcome


def test_every_rank_stops_at_the_step_rank_zero_stopped(tmp_path: Path) -> None:
    outcome = launch(_stop_rank, (_config(2), str(tmp_path)), nproc=2)
    assert outcome == "PrunedError: pruned at step 3"
    assert (tmp_path / "rank1.txt").read_text() == "StoppedByRankZeroError: stopped with rank 0: " + outcome


def _raise_on_rank_zero() -> None:
    """Rank 0 raises while rank 1 waits for it in a collective, which then fails with 'connection closed'."""
    if int(os.environ["RANK"]) == 0:
        time.sleep(0.5)  # rank 1 is in the all-reduce by now
        # A process that takes its time to end after the error (a CUDA context to release): its peer must not be
        # told before it is gone, or the agent sees the peer's failure alone.
        multiprocessing.util.Finalize(None, time.sleep, args=(2,), exitpriority=10)
        raise torch.OutOfMemoryError("simulated: CUDA out of memory")
    torch.distributed.all_reduce(torch.ones(1))


def test_the_failure_reported_is_the_rank_that_raised_not_the_peer_that_lost_it() -> None:
    with pytest.raises(RankFailedError) as failed:
        launch(_raise_on_rank_zero, (), nproc=2)
    # The out-of-memory error itself (what the OOM retry looks for), not rank 1's lost connection.
    assert (failed.value.rank, failed.value.error_type) == (0, "OutOfMemoryError"), failed.value
    assert _children() == []


def test_a_group_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="nproc_per_node=2 but this process group has 1 rank"):
        _train_rank(_config(2))


def _children() -> list[psutil.Process]:
    """Ranks still there, zombies included: the ranks are forked from multiprocessing's fork server (a child of this
    process, which stays for the next launch), so any child of that server."""
    servers = [child for child in psutil.Process().children() if "forkserver" in " ".join(child.cmdline())]
    assert servers, "no fork server: the ranks were started some other way"
    return [rank for server in servers for rank in server.children(recursive=True)]


def _killed_at_forward(model: torch.nn.Module, calls: int) -> torch.nn.Module:
    """``model``, whose process SIGKILLs itself as its forward pass number ``calls`` begins.

    Counted in forward passes rather than timed: a watcher that waited for the checkpoint and slept into the next step
    once found the tiny model's last steps already done (CI, DDP) and the rank never died.
    """
    started = 0

    def count(module: torch.nn.Module, args: Any) -> None:
        nonlocal started
        started += 1
        if started == calls:
            os.kill(os.getpid(), signal.SIGKILL)

    model.register_forward_pre_hook(count)
    return model


def _killed_rank(config: TrainConfig, folder: str) -> dict[str, Any]:
    # Two forward passes per step (accumulation 2, micro-batch 1): the 5th begins step 3, after step 2's checkpoint.
    model = _killed_at_forward(tiny_model(), calls=5) if int(os.environ["RANK"]) == 1 else None
    return _train_rank(config, folder, model=model)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_a_killed_rank_ends_the_trial_and_the_retry_resumes_from_the_sharded_checkpoint(
    strategy: str, tmp_path: Path
) -> None:
    config = _config(2, strategy).model_copy(update={"save_steps": 2})
    uninterrupted = launch(_train_rank, (config, str(tmp_path / "whole")), nproc=2)

    started = time.monotonic()
    with pytest.raises(RankFailedError) as failed:
        launch(_killed_rank, (config, str(tmp_path / "killed")), nproc=2)
    # The agent names the first rank it saw fail: rank 1, dead by a signal (SIGKILL; once in a few runs DDP's rank 1
    # was seen aborting first, SIGABRT), or rank 0, whose collective lost its peer.
    assert failed.value.exitcode < 0 or failed.value.lost_peer, failed.value
    assert time.monotonic() - started < 120  # rank 0 did not wait out a collective timeout
    assert _children() == []  # no hung rank, no zombie
    latest = latest_sharded_checkpoint(tmp_path / "killed" / "checkpoint")
    assert latest is not None and latest.name.startswith("step-")
    assert sorted(path.name for path in latest.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]

    resumed = launch(_train_rank, (config, str(tmp_path / "killed"), True), nproc=2)
    # The resumed run logs only the steps it ran; what it ends with is the uninterrupted run's, exactly.
    assert 0 < len(resumed["train"]) < len(uninterrupted["train"])
    assert resumed["train"] == uninterrupted["train"][-len(resumed["train"]) :]
    assert resumed["eval"][-1] == uninterrupted["eval"][-1]
    assert resumed["train_loss"] == uninterrupted["train_loss"]


def test_k_workers_on_k_times_g_gpus_run_k_trials_of_g_gpus_each() -> None:
    gpus = [str(index) for index in range(8)]
    assert [gpus_of_worker(worker, 2, gpus) for worker in range(4)] == ["0,1", "2,3", "4,5", "6,7"]
    assert [gpus_of_worker(worker, 4, gpus) for worker in range(2)] == ["0,1,2,3", "4,5,6,7"]
    # Under CUDA_VISIBLE_DEVICES the worker's GPUs are those names, not indices.
    assert gpus_of_worker(1, 2, ["3", "5", "6", "7"]) == "6,7"
