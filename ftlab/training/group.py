"""Train one trial on a group of ``nproc_per_node`` processes, called like :func:`ftlab.training.loop.train`.

The calling process (a sweep's trial process, or ``ftlab train``) launches the ranks with torchrun's elastic launcher
(:mod:`ftlab.training.launch`) and stays their agent. Every rank gets the same settings as data — nothing is sampled
again in a rank (the failure of transformers #18609) — builds the model the same way from the same seed, and runs the
loop on its share of each step.

Rank 0 alone reports. Its callback hooks are relayed, call by call, over a pipe to the calling process, which runs
the real callbacks (MLflow, Optuna pruning, progress) there: the one process that owns the run and the Optuna trial,
so no database connection is ever shared across a fork. A hook that raises there (a pruning decision, a setting not
applied) raises on rank 0, which broadcasts the stop to the other ranks; the caller then raises the original error,
so the trial ends exactly as a single-process trial would. The loop's own outcomes (a NaN loss, a preemption, too
little data, CUDA out of memory) come back from rank 0 as the same exceptions.

A stop asked of the calling process (its ``stop_requested``, set by its SIGTERM handler: a preemption) travels back
with the answer to rank 0's next hook call (``on_step_begin``, every step), and the ranks agree to stop at one step
boundary with a checkpoint, as a single process would. The launcher is told to leave SIGTERM alone: its own handler
would stop the group at once and then wait out its shutdown timeout for ranks that finished.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.distributed.elastic.multiprocessing.api import SignalException

from ftlab.config import TrainConfig
from ftlab.training.callbacks import CallbackList, ForwardingCallback, TrainingCallback, TrainResult
from ftlab.training.checkpoint import save_model
from ftlab.training.distributed import Parallel, StoppedByRankZeroError
from ftlab.training.launch import RankFailedError, launch
from ftlab.training.loop import NonFiniteLossError, NotEnoughDataError, TrainingPreemptedError, train
from ftlab.training.plugins import extra_callbacks_from_env
from ftlab.training.runtime import Runtime


class CallbackRaisedError(RuntimeError):
    """A relayed hook raised in the calling process; rank 0 stops the group, the caller raises the original."""


@dataclass(frozen=True)
class GroupTraining:
    """What every rank needs to train its share: the same settings and data on each, pickled to every rank."""

    load_model: Callable[[Runtime], torch.nn.Module]  # the pretrained model on the rank's device (picklable)
    train_blocks: torch.Tensor
    validation_blocks: torch.Tensor
    config: TrainConfig
    runtime: Runtime
    best_model_dir: Path | None = None
    checkpoint_path: Path | None = None  # a folder: one shard per rank
    resume_from: Path | None = None
    final_model_dir: Path | None = None  # rank 0 writes the trained model there (Hugging Face format)
    cpu_threads: int | None = None  # for all ranks together; each takes its share
    holdout_blocks: torch.Tensor | None = None  # evaluated once on the final model (``ftlab confirm``'s runs only)


class _RelayedCallback(ForwardingCallback):
    """Rank 0's callback: each hook call goes to the calling process, which answers when its callbacks are done, and
    with whether it was asked to stop (then ``stop_requested`` is set here)."""

    def __init__(self, connection: Connection, stop_requested: threading.Event) -> None:
        self.connection = connection
        self.stop_requested = stop_requested

    def forward(self, hook: str, *args: Any) -> None:
        self.connection.send((hook, args))
        raised, stop = self.connection.recv()
        if stop:
            self.stop_requested.set()
        if raised is not None:
            raise CallbackRaisedError(raised)


class _CallbackServer:
    """Runs rank 0's relayed hook calls on the real callback, in a thread of the calling process."""

    def __init__(self, callback: TrainingCallback, stop_requested: threading.Event | None) -> None:
        self.callback = callback
        self.stop_requested = stop_requested
        self.rank_end, self._end = multiprocessing.Pipe()
        self.raised: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ftlab-rank0-callbacks", daemon=True)

    def __enter__(self) -> _CallbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._end.close()
        self.rank_end.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._end.poll(0.05):
                continue
            try:
                hook, args = self._end.recv()
            except EOFError:
                return
            raised = None
            try:
                getattr(self.callback, hook)(*args)
            except Exception as error:  # raised again by the caller once the group has stopped
                self.raised = error
                raised = f"{type(error).__name__}: {error}"
            self._end.send((raised, self.stop_requested is not None and self.stop_requested.is_set()))


def _rank_entry(job: GroupTraining, connection: Connection) -> dict[str, Any]:
    """One rank: train its share with the group, rank 0 reporting; rank 0's result, or the error the caller raises."""
    if job.runtime.device.type == "cpu":  # the ranks share the cores instead of each taking them all
        threads = job.cpu_threads or os.cpu_count() or 1
        torch.set_num_threads(max(1, threads // job.config.nproc_per_node))
    stop_requested = threading.Event()
    # A SIGTERM to a rank itself (a scheduler signalling every process of the job) or, on rank 0, the calling
    # process's stop (relayed): the ranks agree to stop at the same step boundary.
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.set())
    parallel = Parallel.from_process_group("fsdp" if job.config.fsdp else "ddp")
    runtime = job.runtime
    if runtime.device.type == "cuda":  # the rank's own GPU, made current by the launcher from LOCAL_RANK
        runtime = Runtime(device=torch.device("cuda", torch.cuda.current_device()), bf16=runtime.bf16)
    transformers.set_seed(job.config.seed)  # every rank: the same initial weights where the model initialises any
    model = job.load_model(runtime)
    callback: TrainingCallback = TrainingCallback()
    if parallel.is_main:
        # FTLAB_TRAINING_CALLBACKS (tests' fault injection) acts on rank 0's model, where the hooks run.
        callback = CallbackList([_RelayedCallback(connection, stop_requested), *extra_callbacks_from_env()(model)])
    try:
        result = train(
            model,
            job.train_blocks,
            job.validation_blocks,
            job.config,
            runtime,
            callback,
            best_model_dir=job.best_model_dir,
            checkpoint_path=job.checkpoint_path,
            resume_from=job.resume_from,
            stop_requested=stop_requested,
            parallel=parallel,
            holdout_blocks=job.holdout_blocks,
        )
        if job.final_model_dir is not None:
            save_model(model, job.final_model_dir, parallel)
    except (NonFiniteLossError, TrainingPreemptedError, NotEnoughDataError) as error:
        return {"error": error}  # a loop outcome, not a failure of the group: the caller raises it again
    except (StoppedByRankZeroError, CallbackRaisedError) as error:  # by a callback on rank 0 (the caller holds it)
        return {"error": RuntimeError(f"the trial's process group stopped: {error}")}
    return {"result": asdict(result)}


def train_in_group(
    job: GroupTraining, callback: TrainingCallback | None = None, stop_requested: threading.Event | None = None
) -> TrainResult:
    """Train ``job`` on ``job.config.nproc_per_node`` ranks; rank 0's result, its hooks run on ``callback`` here.

    ``stop_requested`` (this process's, set by its SIGTERM handler) stops every rank after the current step, saving
    a checkpoint first, as :func:`~ftlab.training.loop.train`'s does.

    Raises:
        NonFiniteLossError, TrainingPreemptedError, NotEnoughDataError: as :func:`~ftlab.training.loop.train`.
        torch.cuda.OutOfMemoryError: a rank ran out of GPU memory (the caller's OOM retry halves the micro-batch).
        RankFailedError: a rank raised another error or was killed; every rank has ended.
        Exception: whatever a hook of ``callback`` raised (pruning …), after every rank stopped.
    """
    with _CallbackServer(callback or TrainingCallback(), stop_requested) as server:
        try:
            outcome = launch(
                _rank_entry,
                (job, server.rank_end),
                nproc=job.config.nproc_per_node,
                backend="nccl" if job.runtime.device.type == "cuda" else "gloo",  # NCCL between GPUs
                signals=("SIGINT", "SIGHUP", "SIGQUIT"),  # not SIGTERM: a preemption stops at a step boundary
            )
        except RankFailedError as error:
            # Out of memory fails its rank (the others wait in a collective until the agent ends them).
            if error.error_type.endswith("OutOfMemoryError"):
                raise torch.cuda.OutOfMemoryError(error.message) from error
            raise
        except SignalException as error:  # the launcher's own handlers, while it runs: it stopped every rank
            if error.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise
    if server.raised is not None:
        raise server.raised
    if "error" in outcome:
        raise outcome["error"]
    return TrainResult(**outcome["result"])
