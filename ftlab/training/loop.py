"""The training loop: one readable pass from settings to a trained model.

Why not transformers' Trainer? A sweep runs hundreds of short trainings, and each needs things Trainer makes awkward:
evaluation at fidelity points measured in tokens seen (for fair pruning across batch sizes), a train loss that is
token-weighted across gradient accumulation, NaN detection that ends the trial, checkpoints that resume to exactly
the uninterrupted result, a stop at the next step boundary on preemption, and no per-step host synchronisation. So the
loop is ftlab's own, and transformers does everything else (model, loss, schedules). ``benchmarks/trial_cpu.py``
measures it against a plain Trainer script.

The file reads top to bottom: the errors it raises, small setup helpers, then :func:`train`, whose one loop runs
forward/backward, optimizer step, log, evaluate, checkpoint and stop on request. What the loop changes as it goes lives
in :class:`~ftlab.training.state.TrainState`; tracking, pruning, progress and test-only fault injection
(:mod:`ftlab.training.plugins`) come in through callbacks; the out-of-memory retry (:mod:`ftlab.training.oom`) wraps
the whole call.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ftlab.config import TrainConfig
from ftlab.figures import Measured, final_figures, holdout_figures
from ftlab.training.callbacks import TrainingCallback, TrainPlan, TrainResult
from ftlab.training.checkpoint import (
    load_sharded_training_state,
    load_training_state,
    save_model,
    save_sharded_training_state,
    save_training_state,
)
from ftlab.training.distributed import SINGLE, Parallel, to_float
from ftlab.training.metrics import count_label_tokens, evaluate, perplexity
from ftlab.training.optim import build_optimizer, build_scheduler, warmup_steps_for
from ftlab.training.runtime import Runtime, peak_memory_mb
from ftlab.training.speedups import align_output_head, compile_blocks, fuse_tanh_gelu
from ftlab.training.state import TrainState

# Data that fits comfortably is moved to the device once: no loader, no per-step host-to-device copies.
_DEVICE_RESIDENT_BYTES = 1 << 30


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot recover by going on."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"training loss became {loss} at optimizer step {step}")
        self.step = step
        self.loss = loss

    def __reduce__(self) -> tuple[type, tuple[int, float]]:  # pickled from a trial group's rank 0 to its caller
        return type(self), (self.step, self.loss)


class NotEnoughDataError(ValueError):
    """The training split is smaller than one optimizer step."""


class TrainingPreemptedError(RuntimeError):
    """Training stopped on request (SIGTERM: preemption) after ``step``, with a resumable checkpoint if one is kept."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        saved = f"checkpoint saved at step {step}" if checkpoint else "no checkpoint kept"
        super().__init__(f"preempted (SIGTERM) after optimizer step {step}; {saved}")
        self.step = step
        self.checkpoint = checkpoint

    def __reduce__(self) -> tuple[type, tuple[int, Path | None]]:  # pickled from a trial group's rank 0 to its caller
        return type(self), (self.step, self.checkpoint)


def plan_steps(config: TrainConfig, train_blocks: int) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch) for ``train_blocks`` packed sequences.

    Raises:
        NotEnoughDataError: fewer blocks than one optimizer step consumes.
    """
    per_step = config.total_train_batch_size
    steps_per_epoch = train_blocks // per_step  # an incomplete last step would change the effective batch
    if steps_per_epoch == 0:
        raise NotEnoughDataError(
            f"the training split has {train_blocks} blocks but one optimizer step needs {per_step} "
            f"(per_device_train_batch_size × gradient_accumulation_steps); use more data, a smaller "
            f"data.block_size or a smaller batch"
        )
    if config.max_steps > 0:
        return config.max_steps, steps_per_epoch
    return max(1, math.ceil(config.num_train_epochs * steps_per_epoch)), steps_per_epoch


def _fidelity_point(config: TrainConfig, step: int, tokens_seen: int, tokens_per_step: int) -> int | None:
    """The fidelity point (in tokens) to evaluate at after ``step``, or None if this step is not one."""
    if config.eval_tokens is not None:
        crossed = tokens_seen // config.eval_tokens
        if crossed > (tokens_seen - tokens_per_step) // config.eval_tokens:
            return crossed * config.eval_tokens
        return None
    if config.eval_steps is not None and step % config.eval_steps == 0:
        return tokens_seen
    return None


def _is_save_step(config: TrainConfig, step: int, total_steps: int, is_eval_step: bool) -> bool:
    """Whether to write a resumable checkpoint after ``step``: per ``save_steps``, never after the last step."""
    if step == total_steps:
        return False
    if config.save_steps is None:
        return is_eval_step
    return config.save_steps > 0 and step % config.save_steps == 0


def _step_batches(
    config: TrainConfig, first_step: int, total_steps: int, steps_per_epoch: int, n_blocks: int, device: torch.device
) -> Iterator[tuple[int, torch.Tensor]]:
    """(optimizer step, indices of its ``total_train_batch_size`` blocks) for steps ``first_step``..``total_steps``.

    Each epoch visits the blocks in its own order, a pure function of (seed, epoch): a resumed run continues with
    exactly the batches it missed.
    """
    per_step = config.total_train_batch_size
    order = None
    for step in range(first_step, total_steps + 1):
        epoch, position = divmod(step - 1, steps_per_epoch)
        if position == 0 or order is None:
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            order = torch.randperm(n_blocks, generator=generator).to(device)
        yield step, order[position * per_step : (position + 1) * per_step]


def _place_blocks(
    train_blocks: torch.Tensor, validation_blocks: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data where training reads it: on the device when it fits comfortably, else in (pinned) host memory."""
    if train_blocks.nbytes <= _DEVICE_RESIDENT_BYTES:
        return train_blocks.to(device), validation_blocks.to(device)
    if device.type == "cuda":
        return train_blocks.pin_memory(), validation_blocks
    return train_blocks, validation_blocks


def _prepare_model(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> None:
    """Training mode and the speed-ups, in place: the model trains, evaluates and saves as it would without them."""
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    fuse_tanh_gelu(model)
    if device.type == "cuda":  # cuBLAS's alignment rule; the CPU's kernels have none
        align_output_head(model)
    if config.torch_compile:
        compile_blocks(model)


def _initial_state(
    model: torch.nn.Module,
    config: TrainConfig,
    device: torch.device,
    total_steps: int,
    resume_from: Path | None,
    parallel: Parallel,
) -> TrainState:
    """A fresh optimizer and schedule for ``model``, continued from the checkpoint ``resume_from`` if there is one."""
    optimizer = build_optimizer(model, config, device)
    scheduler = build_scheduler(optimizer, config, total_steps)
    state = TrainState(model, optimizer, scheduler, device)
    if parallel.active:
        load_sharded_training_state(state, resume_from, parallel)
    elif (resumed := load_training_state(resume_from)) is not None:
        state.load_state_dict(resumed)
    return state


def _save_checkpoint(state: TrainState, path: Path, callback: TrainingCallback, parallel: Parallel) -> None:
    """Write the resumable state of ``state.step`` to ``path``, whole or not at all (one shard per rank)."""
    parallel.on_main(lambda: callback.on_checkpoint_begin(state.step, str(path)))
    # The open logging window is counted now, so the next log covers only later steps, as a resumed run's would.
    parallel.mean_(state.window_loss)
    state.fold_window()
    if parallel.active:
        save_sharded_training_state(state, path, parallel)
    else:
        save_training_state(state.state_dict(), path)
    parallel.on_main(lambda: callback.on_checkpoint(state.step, str(path)))


def _check_group(config: TrainConfig, parallel: Parallel) -> None:
    """The process group must be the one the settings ask for: the effective batch counts its ranks."""
    if parallel.world_size != config.nproc_per_node:
        raise ValueError(
            f"nproc_per_node={config.nproc_per_node} but this process group has {parallel.world_size} rank(s); "
            f"start the trial with ftlab.training.launch"
        )


def train(
    model: torch.nn.Module,
    train_blocks: torch.Tensor,
    validation_blocks: torch.Tensor,
    config: TrainConfig,
    runtime: Runtime,
    callback: TrainingCallback | None = None,
    best_model_dir: Path | None = None,
    checkpoint_path: Path | None = None,
    resume_from: Path | None = None,
    stop_requested: threading.Event | None = None,
    parallel: Parallel = SINGLE,
    holdout_blocks: torch.Tensor | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on packed ``train_blocks`` and evaluate it on ``validation_blocks``.

    Args:
        model: a transformers causal LM, already on ``runtime.device``.
        train_blocks: int64 tensor [n_blocks, block_size] of token ids (no padding).
        validation_blocks: the same for validation.
        config: TrainingArguments-named settings.
        runtime: device and precision.
        callback: hooks for tracking, pruning, progress (and fault injection in tests).
        best_model_dir: if given, the model with the lowest eval loss so far is saved there (whole or not at all).
        checkpoint_path: where resumable checkpoints are written (see ``save_steps``); None writes none.
        resume_from: a checkpoint to resume from (a retried trial's predecessor's); ignored if absent.
        stop_requested: when set, training stops after the current optimizer step, saving a checkpoint first.
        parallel: this process's rank in a trial of ``nproc_per_node`` processes (see
            :mod:`ftlab.training.distributed`); callbacks run on rank 0 only, checkpoints are sharded by rank.
        holdout_blocks: if given, the final model is evaluated on them once, after the last step, and the result
            has ``holdout/loss`` and ``holdout/perplexity`` too (``ftlab confirm``'s runs; sweep trials never pass
            them). No hook hears of it: nothing may prune, or choose, on the holdout.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
        NotEnoughDataError: less data than one optimizer step.
        TrainingPreemptedError: ``stop_requested`` was set.
    """
    callback = callback or TrainingCallback()
    _check_group(config, parallel)
    device = runtime.device
    micro, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    total_steps, steps_per_epoch = plan_steps(config, train_blocks.size(0))
    train_blocks, validation_blocks = _place_blocks(train_blocks, validation_blocks, device)
    _prepare_model(model, config, device)
    model = parallel.wrap(model, device)
    state = _initial_state(model, config, device, total_steps, resume_from, parallel)
    plan = TrainPlan(
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(config, total_steps),
        tokens_per_step=config.total_train_batch_size * train_blocks.size(1),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        learning_rate=float(state.scheduler.base_lrs[0]),
        bf16=runtime.bf16,
        train_blocks=train_blocks.size(0),
        validation_blocks=validation_blocks.size(0),
        start_step=state.step,
        world_size=parallel.world_size,
    )
    parallel.on_main(lambda: callback.on_train_begin(plan))
    # Label tokens per optimizer step on this rank: the same for every packed block, counted once on the host.
    num_items = torch.tensor(count_label_tokens(train_blocks[:micro].cpu()) * accumulation, device=device)
    clip = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    runtime.reset_peak_memory()
    started = time.perf_counter()

    # Per step, not worth a broadcast: on rank 0 only, and if it raises, the launcher ends the group.
    on_step_begin = (callback if parallel.is_main else TrainingCallback()).on_step_begin
    batches = _step_batches(config, state.step + 1, total_steps, steps_per_epoch, train_blocks.size(0), device)
    for step, step_blocks in batches:
        on_step_begin(step)
        step_indices = parallel.rank_share(step_blocks)

        # forward/backward over the micro-batches
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for micro_step in range(accumulation):
            batch = train_blocks[step_indices[micro_step * micro : (micro_step + 1) * micro]]
            batch = batch.to(device, non_blocking=True)
            # Ranks exchange gradients once per optimizer step, after its last micro-batch.
            with parallel.gradient_sync(model, micro_step == accumulation - 1):
                with runtime.autocast():
                    # num_items_in_batch makes the model's loss sum/(tokens in the whole optimizer step), so summing
                    # the micro-batch losses gives the token-weighted mean: 2×4 and 8×1 report the same loss.
                    loss = model(input_ids=batch, labels=batch, num_items_in_batch=num_items, use_cache=False).loss
                loss.backward()
            step_loss += loss.detach().double()

        # optimizer step
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step = step
        state.add_step_loss(step_loss)

        # log
        tokens_seen = step * plan.tokens_per_step
        fidelity = _fidelity_point(config, step, tokens_seen, plan.tokens_per_step)
        is_eval_step = step == total_steps or fidelity is not None
        if step % config.logging_steps == 0 or is_eval_step:
            parallel.mean_(state.window_loss)
            mean_loss = state.close_window()  # the one host sync per logging window
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(step, mean_loss)
            elapsed = time.perf_counter() - started
            train_metrics = {
                "train/loss": mean_loss,
                "train/learning_rate": state.scheduler.get_last_lr()[0],
                "train/grad_norm": to_float(grad_norm),
                "train/tokens_seen": float(tokens_seen),
                "train/epoch": step / steps_per_epoch,
                "perf/tokens_per_second": (step - plan.start_step) * plan.tokens_per_step / elapsed,
                "perf/peak_memory_mb": peak_memory_mb(device),
            }
            parallel.on_main(functools.partial(callback.on_log, step, train_metrics))

        # evaluate
        if is_eval_step:
            eval_loss, eval_tokens = _evaluate(model, validation_blocks, config, runtime, parallel)
            metrics = {"eval/loss": eval_loss, "eval/perplexity": perplexity(eval_loss), "eval/tokens": eval_tokens}
            # Pruners compare trials at the same fidelity point: the eval_tokens multiple just crossed, or the
            # tokens seen when evaluating by steps or at the end.
            point = fidelity if fidelity is not None else tokens_seen
            if state.record_evaluation(step, tokens_seen, point, metrics) and best_model_dir is not None:
                save_model(model, best_model_dir, parallel)
                parallel.on_main(functools.partial(callback.on_checkpoint, step, str(best_model_dir)))
            parallel.on_main(functools.partial(callback.on_evaluate, step, point, metrics))

        # checkpoint
        saved = checkpoint_path is not None and _is_save_step(config, step, total_steps, is_eval_step)
        if saved:
            _save_checkpoint(state, checkpoint_path, callback, parallel)

        # stop on request: a preempting scheduler's grace period is short, so stop at this step boundary, with a
        # checkpoint to resume from; asked of one rank (a signal) is asked of all, at the same step
        if parallel.any(stop_requested is not None and stop_requested.is_set(), device) and step < total_steps:
            if checkpoint_path is not None and not saved:
                _save_checkpoint(state, checkpoint_path, callback, parallel)
            raise TrainingPreemptedError(step, checkpoint_path)

    measured = Measured(
        steps=total_steps,
        tokens_seen=plan.total_tokens,
        train_loss=state.run_loss_sum / total_steps,  # every step's loss, also those run before a resume
        eval_loss=state.eval_loss,
        best_eval_loss=state.best_eval_loss,
        seconds=time.perf_counter() - started,
        peak_memory_mb=peak_memory_mb(device),
        devices=parallel.world_size,
    )
    # After the clock stopped: a confirmation's check on the holdout is not training time.
    figures = final_figures(measured) | _on_holdout(model, holdout_blocks, config, runtime, parallel)
    result = TrainResult(steps=total_steps, metrics=figures, history=state.history)
    parallel.on_main(lambda: callback.on_train_end(result))
    return result


def _evaluate(
    model: torch.nn.Module, blocks: torch.Tensor, config: TrainConfig, runtime: Runtime, parallel: Parallel
) -> tuple[float, int]:
    """(eval loss, tokens scored) over all of ``blocks`` (the validation or the holdout split), shared out among the
    ranks if there are several."""
    batch_size = config.per_device_eval_batch_size
    forward = parallel.unwrap(model)  # DDP's hooks are for training
    return evaluate(forward, blocks, batch_size, runtime.device, runtime.autocast(), parallel.rank, parallel.world_size)


def _on_holdout(
    model: torch.nn.Module, blocks: torch.Tensor | None, config: TrainConfig, runtime: Runtime, parallel: Parallel
) -> dict[str, float]:
    """The final model's holdout figures; none without holdout blocks (every sweep trial)."""
    if blocks is None:
        return {}
    return holdout_figures(_evaluate(model, blocks, config, runtime, parallel)[0])
