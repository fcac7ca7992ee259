"""Faults injected on purpose, so that tests can prove a sweep survives them: out of memory, a NaN loss, a segfault,
a SIGKILL halfway through writing a checkpoint, a file-size limit that makes every large write fail, and slow steps
(a trial that lasts long enough for a scheduler to cancel, requeue or time out its job mid-trial).

Test code only: the package ships none of it. They are training callbacks (and one forward hook); a test installs
them directly, ``train(..., callback=CallbackList([..., *fault_callbacks(model)]))``, or has every trial of a real
sweep install them through ftlab's ``FTLAB_TRAINING_CALLBACKS`` hook: :func:`fault_env` gives the environment for
that. Which faults, at which step and in which trial is read from ``FTLAB_INJECT_FAULT`` (see :class:`InjectedFaults`).
"""

from __future__ import annotations

import io
import math
import os
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftlab.fileio import atomic_path
from ftlab.training.callbacks import TrainingCallback, TrainPlan
from ftlab.training.plugins import ENV_VAR as CALLBACKS_ENV_VAR

REPO_ROOT = Path(__file__).resolve().parents[2]


def fault_env(faults: str) -> dict[str, str]:
    """Environment variables that make every trial of a sweep (or ``ftlab train``) inject ``faults``, in the format
    of :class:`InjectedFaults`: the faults, ftlab's hook naming :func:`fault_callbacks`, and ``PYTHONPATH`` with the
    repository root, so that a CLI started in another folder (and its trials) can import this module."""
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {
        "FTLAB_INJECT_FAULT": faults,
        CALLBACKS_ENV_VAR: f"{__name__}:fault_callbacks",
        "PYTHONPATH": python_path,
    }


@dataclass(frozen=True)
class InjectedFaults:
    """Faults the tests inject through ``FTLAB_INJECT_FAULT`` to prove the sweep survives them.

    Format: comma-separated ``oom_at_step=N``, ``oom_above_batch=B`` (raise CUDA OOM at step N while the micro-batch
    is larger than B), ``nan_at_step=N`` (make the loss NaN at step N), ``segfault_at_step=N`` (kill the process with
    SIGSEGV at step N), ``kill_in_checkpoint_at_step=N`` (SIGKILL halfway through writing step N's checkpoint),
    ``ctrl_c_in_checkpoint_at_step=N`` (a terminal's Ctrl-C, SIGINT to the whole process group, lands while torch.save
    writes step N's training state), ``file_size_limit=B`` (no file may grow past B bytes from the first step on, as
    a full disk or ``ulimit -f`` would have it), ``step_delay_ms=D`` (every optimizer step takes D ms longer, without
    using the CPU), ``trial=K`` (only in sweep trial number K, read from ``FTLAB_TRIAL_NUMBER``). Groups separated
    by ``;`` give different trials different faults: ``nan_at_step=3,trial=1;segfault_at_step=2,trial=2``. Unset in
    normal use.
    """

    oom_at_step: int | None = None
    oom_above_batch: int = 0
    nan_at_step: int | None = None
    segfault_at_step: int | None = None
    kill_in_checkpoint_at_step: int | None = None
    ctrl_c_in_checkpoint_at_step: int | None = None
    file_size_limit: int | None = None
    step_delay_ms: int | None = None
    trial: int | None = None

    @classmethod
    def from_env(cls) -> InjectedFaults:
        """The first group of ``FTLAB_INJECT_FAULT`` meant for this process's trial; no faults if none is."""
        for group in os.environ.get("FTLAB_INJECT_FAULT", "").split(";"):
            items = (item.split("=", 1) for item in group.split(",") if "=" in item)
            faults = cls(**{key.strip(): int(value) for key, value in items})
            if faults.trial is None or str(faults.trial) == os.environ.get("FTLAB_TRIAL_NUMBER"):
                return faults
        return cls()


class OutOfMemoryInjector(TrainingCallback):
    """Raises CUDA's out-of-memory error as step ``step`` begins, while the micro-batch is larger than ``above_batch``.

    The OOM retry halves the micro-batch, so a low enough ``above_batch`` lets the retried attempt through.
    """

    def __init__(self, step: int, above_batch: int) -> None:
        self.step = step
        self.above_batch = above_batch
        self.micro_batch = 0

    def on_train_begin(self, plan: TrainPlan) -> None:
        self.micro_batch = plan.per_device_train_batch_size

    def on_step_begin(self, step: int) -> None:
        if step == self.step and self.micro_batch > self.above_batch:
            raise torch.cuda.OutOfMemoryError(f"injected by FTLAB_INJECT_FAULT at step {step}")


class FileSizeLimiter(TrainingCallback):
    """Limits the size of any file this process writes (``RLIMIT_FSIZE``) once training begins: what ``ulimit -f``
    does, and as near to a full disk as a test can get without one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def on_train_begin(self, plan: TrainPlan) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


class StepDelayInjector(TrainingCallback):
    """Sleeps ``delay_ms`` as every step begins: a long trial of a tiny model, for the scheduler tests."""

    def __init__(self, delay_ms: int) -> None:
        self.delay_s = delay_ms / 1000

    def on_step_begin(self, step: int) -> None:
        time.sleep(self.delay_s)


class SegfaultInjector(TrainingCallback):
    """Kills the process with SIGSEGV as step ``step`` begins, as a crash in native code would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGSEGV)


class NanLossInjector(TrainingCallback):
    """Makes the training loss NaN in every forward pass of step ``step``, through a forward hook on ``model``.

    The NaN reaches the gradients and the logged loss exactly as a diverging run's would, so the loop's own check
    ends training with ``NonFiniteLossError`` at its next log. Evaluation (the model in eval mode) is left alone.
    """

    def __init__(self, model: torch.nn.Module, step: int) -> None:
        self.step = step
        self.current_step = 0
        model.register_forward_hook(self._poison_loss)

    def on_step_begin(self, step: int) -> None:
        self.current_step = step

    def _poison_loss(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if module.training and self.current_step == self.step and output.loss is not None:
            output.loss = output.loss * math.nan
        return output


class TornCheckpointInjector(TrainingCallback):
    """SIGKILLs the process halfway through writing step ``step``'s checkpoint, as a machine dying mid-write would.

    Half of a serialized model lands in the real staging file (through the same ``atomic_path`` the checkpoint
    writer uses), so a test can prove that a torn checkpoint is never loaded and the previous complete one is.
    """

    def __init__(self, model: torch.nn.Module, step: int) -> None:
        self.model = model
        self.step = step

    def on_checkpoint_begin(self, step: int, path: str) -> None:
        if step != self.step:
            return
        buffer = io.BytesIO()
        torch.save(self.model.state_dict(), buffer)
        with atomic_path(Path(path)) as staging:
            staging.write_bytes(buffer.getvalue()[: buffer.tell() // 2])
            os.kill(os.getpid(), signal.SIGKILL)


class CtrlCInCheckpointInjector(TrainingCallback):
    """Ctrl-C lands inside torch.save as it writes step ``step``'s training state, as a user's Ctrl-C at that moment
    would: torch's C++ writer turns the KeyboardInterrupt raised in its write callback into a RuntimeError.

    SIGINT goes to the whole process group, as a terminal sends it: run the command in a session of its own.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_checkpoint_begin(self, step: int, path: str) -> None:
        if step != self.step:
            return
        real_save = torch.save

        def save_interrupted(state: Any, file: Any, *args: Any, **kwargs: Any) -> None:
            torch.save = real_save
            real_save(state, _CtrlCWhileWriting(file), *args, **kwargs)

        torch.save = save_interrupted


class _CtrlCWhileWriting:
    """A file that sends Ctrl-C once its second write's bytes are written and waits for it: Python raises
    KeyboardInterrupt inside that write. The first write would not do: the archive is still empty, torch's writer
    passes the KeyboardInterrupt on; from the second on, its end-of-file check fails and raises RuntimeError."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self._writes = 0

    def write(self, data: bytes) -> int:
        written = self._file.write(data)
        self._writes += 1
        if self._writes == 2:
            os.killpg(os.getpgid(0), signal.SIGINT)
            time.sleep(10)  # the handler runs here; were SIGINT ignored, the write would return after the wait
        return written

    def flush(self) -> None:
        self._file.flush()


def fault_callbacks(model: torch.nn.Module) -> list[TrainingCallback]:
    """The callbacks that inject the faults ``FTLAB_INJECT_FAULT`` asks of this trial into training ``model``.

    Returns [] when the variable is unset or names no fault for this trial (``FTLAB_TRIAL_NUMBER``).
    """
    faults = InjectedFaults.from_env()
    callbacks: list[TrainingCallback] = []
    # A segfault and an OOM at the same step: the segfault comes first.
    if faults.segfault_at_step is not None:
        callbacks.append(SegfaultInjector(faults.segfault_at_step))
    if faults.oom_at_step is not None:
        callbacks.append(OutOfMemoryInjector(faults.oom_at_step, faults.oom_above_batch))
    if faults.nan_at_step is not None:
        callbacks.append(NanLossInjector(model, faults.nan_at_step))
    if faults.kill_in_checkpoint_at_step is not None:
        callbacks.append(TornCheckpointInjector(model, faults.kill_in_checkpoint_at_step))
    if faults.ctrl_c_in_checkpoint_at_step is not None:
        callbacks.append(CtrlCInCheckpointInjector(faults.ctrl_c_in_checkpoint_at_step))
    if faults.file_size_limit is not None:
        callbacks.append(FileSizeLimiter(faults.file_size_limit))
    if faults.step_delay_ms is not None:
        callbacks.append(StepDelayInjector(faults.step_delay_ms))
    return callbacks
