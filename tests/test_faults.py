"""Injected faults (tests/support/faults.py): installed from outside the loop as callbacks, or into real trials through
ftlab's FTLAB_TRAINING_CALLBACKS hook, each doing what the sweep's resilience tests expect.

The faults that kill the process (SIGSEGV, SIGKILL mid-checkpoint) run in a forked child, which starts in
milliseconds because it inherits the already imported torch and transformers.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ftlab.config import TrainConfig
from ftlab.errors import UserError
from ftlab.training.callbacks import CallbackList, TrainingCallback, TrainPlan
from ftlab.training.checkpoint import load_training_state
from ftlab.training.loop import NonFiniteLossError, train
from ftlab.training.plugins import ENV_VAR as CALLBACKS_ENV_VAR
from ftlab.training.plugins import extra_callbacks_from_env
from tests.support.faults import (
    InjectedFaults,
    NanLossInjector,
    OutOfMemoryInjector,
    SegfaultInjector,
    TornCheckpointInjector,
    fault_callbacks,
    fault_env,
)
from tests.test_metrics import CPU, random_blocks, tiny_model

CONFIG = TrainConfig(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6, logging_steps=1)
TRAIN_BLOCKS, VALIDATION = random_blocks(24), random_blocks(4, seed=2)


class Steps(TrainingCallback):
    """Records the steps that began, the steps logged and the plan."""

    def __init__(self) -> None:
        self.begun: list[int] = []
        self.logged: list[int] = []
        self.plan: TrainPlan | None = None

    def on_train_begin(self, plan: TrainPlan) -> None:
        self.plan = plan

    def on_step_begin(self, step: int) -> None:
        self.begun.append(step)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.logged.append(step)


def train_with_faults(config: TrainConfig = CONFIG, **paths: Path) -> Steps:
    model, steps = tiny_model(), Steps()
    train(model, TRAIN_BLOCKS, VALIDATION, config, CPU, CallbackList([steps, *fault_callbacks(model)]), **paths)
    return steps


def exit_code_of(target: Callable[[], object]) -> int | None:
    """Run ``target`` in a forked child; its exit code (-N: killed by signal N)."""

    def child() -> None:
        faulthandler.disable()  # pytest's traceback dump on SIGSEGV is noise here
        # OpenMP's thread pool does not survive a fork: a child that used it would hang. One thread never enters it.
        torch.set_num_threads(1)
        target()

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout=60)
    if process.exitcode is None:
        process.kill()
        process.join()
        pytest.fail("the child process hung")
    return process.exitcode


def test_no_faults_without_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTLAB_INJECT_FAULT", raising=False)
    assert fault_callbacks(tiny_model()) == []


def test_ftlab_s_hook_installs_the_faults_only_when_its_variable_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTLAB_INJECT_FAULT", "nan_at_step=3")
    monkeypatch.delenv(CALLBACKS_ENV_VAR, raising=False)
    assert extra_callbacks_from_env()(tiny_model()) == [], "the package installs nothing of its own"
    for name, value in fault_env("nan_at_step=3").items():
        monkeypatch.setenv(name, value)
    assert [type(callback) for callback in extra_callbacks_from_env()(tiny_model())] == [NanLossInjector]


@pytest.mark.parametrize("spec", ["tests.support.faults", "tests.support.faults:nothing", "no_such_module:f"])
def test_a_hook_that_cannot_be_loaded_is_named(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv(CALLBACKS_ENV_VAR, f"tests.support.faults:fault_callbacks, {spec}")
    with pytest.raises(UserError, match=f"cannot load the training callbacks '{spec}'") as raised:
        extra_callbacks_from_env()
    assert raised.value.problems[0].where == CALLBACKS_ENV_VAR


def test_each_trial_gets_its_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTLAB_INJECT_FAULT", "oom_at_step=2,oom_above_batch=2,trial=0;nan_at_step=3,trial=1")
    monkeypatch.setenv("FTLAB_TRIAL_NUMBER", "1")
    assert InjectedFaults.from_env() == InjectedFaults(nan_at_step=3, trial=1)
    assert [type(callback) for callback in fault_callbacks(tiny_model())] == [NanLossInjector]
    monkeypatch.setenv("FTLAB_TRIAL_NUMBER", "7")
    assert fault_callbacks(tiny_model()) == []


def test_all_faults_of_a_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FTLAB_INJECT_FAULT", "segfault_at_step=9, oom_at_step=1,nan_at_step=2,kill_in_checkpoint_at_step=4"
    )
    kinds = [type(callback) for callback in fault_callbacks(tiny_model())]
    assert kinds == [SegfaultInjector, OutOfMemoryInjector, NanLossInjector, TornCheckpointInjector]


def test_out_of_memory_is_raised_from_training_at_its_step_above_its_micro_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FTLAB_INJECT_FAULT", "oom_at_step=3,oom_above_batch=1")
    steps = Steps()
    model = tiny_model()
    with pytest.raises(torch.cuda.OutOfMemoryError, match="injected by FTLAB_INJECT_FAULT at step 3"):
        train(model, TRAIN_BLOCKS, VALIDATION, CONFIG, CPU, CallbackList([steps, *fault_callbacks(model)]))
    assert steps.logged == [1, 2]

    monkeypatch.setenv("FTLAB_INJECT_FAULT", "oom_at_step=3,oom_above_batch=2")
    assert train_with_faults().logged == [1, 2, 3, 4, 5, 6], "a micro-batch of 2 is not above 2"


@pytest.mark.parametrize(("logging_steps", "raised_at"), [(1, 2), (4, 4)])
def test_a_nan_loss_ends_training_at_the_next_log(
    monkeypatch: pytest.MonkeyPatch, logging_steps: int, raised_at: int
) -> None:
    monkeypatch.setenv("FTLAB_INJECT_FAULT", "nan_at_step=2")
    config = CONFIG.model_copy(update={"logging_steps": logging_steps})
    with pytest.raises(NonFiniteLossError, match=f"became nan at optimizer step {raised_at}$"):
        train_with_faults(config)


def test_the_nan_hook_poisons_only_training_forward_passes_of_its_step() -> None:
    model = tiny_model()
    injector = NanLossInjector(model, step=2)
    batch = random_blocks(2)
    injector.on_step_begin(2)
    assert model(input_ids=batch, labels=batch).loss.isnan()
    model.eval()
    assert model(input_ids=batch, labels=batch).loss.isfinite(), "evaluation is left alone"
    model.train()
    injector.on_step_begin(3)
    assert model(input_ids=batch, labels=batch).loss.isfinite()


def test_a_segfault_kills_the_process_at_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTLAB_INJECT_FAULT", "segfault_at_step=2")
    assert exit_code_of(train_with_faults) == -signal.SIGSEGV


def test_a_kill_mid_checkpoint_leaves_a_torn_file_that_is_never_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checkpoints every 2 steps; the process dies writing step 4's, so step 2's is the last complete one.
    monkeypatch.setenv("FTLAB_INJECT_FAULT", "kill_in_checkpoint_at_step=4")
    config = CONFIG.model_copy(update={"save_steps": 2})
    checkpoint = tmp_path / "checkpoint.pt"
    assert exit_code_of(lambda: train_with_faults(config, checkpoint_path=checkpoint)) == -signal.SIGKILL

    (torn,) = tmp_path.glob(".checkpoint.pt.tmp-*")
    assert torn.stat().st_size > 0
    with pytest.raises((RuntimeError, OSError)):  # half a zip archive: torch cannot read it
        torch.load(torn, weights_only=False)
    complete = load_training_state(checkpoint)
    assert complete is not None and complete["step"] == 2

    monkeypatch.delenv("FTLAB_INJECT_FAULT")
    resumed = Steps()
    train(tiny_model(seed=5), TRAIN_BLOCKS, VALIDATION, config, CPU, resumed, resume_from=checkpoint)
    assert resumed.plan is not None and resumed.plan.start_step == 2
    assert resumed.begun == [3, 4, 5, 6]
