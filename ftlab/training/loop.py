"""The training loop: one readable pass from settings to a trained model.

Why not transformers' Trainer? A sweep runs hundreds of short trainings, and each needs things Trainer makes awkward:
evaluation at fidelity points measured in tokens seen (for fair pruning across batch sizes), a train loss that is
token-weighted across gradient accumulation, NaN detection that ends the trial, an out-of-memory retry that keeps the
effective batch, and no per-step host synchronisation. The loop below does those in ~200 lines and uses transformers
for everything else (model, loss, schedules). ``benchmarks/trial_cpu.py`` measures it against a plain Trainer script.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ftlab.config import TrainConfig
from ftlab.training.callbacks import TrainingCallback, TrainPlan, TrainResult
from ftlab.training.checkpoint import load_training_state, save_model_atomically, save_training_state
from ftlab.training.metrics import count_label_tokens, evaluate, perplexity
from ftlab.training.optim import build_optimizer, build_scheduler, warmup_steps_for
from ftlab.training.runtime import Runtime, peak_memory_mb
from ftlab.training.speedups import align_output_head, compile_blocks, fuse_tanh_gelu

# Data that fits comfortably is moved to the device once: no loader, no per-step host-to-device copies.
_DEVICE_RESIDENT_BYTES = 1 << 30


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot recover by going on."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"training loss became {loss} at optimizer step {step}")
        self.step = step
        self.loss = loss


class NotEnoughDataError(ValueError):
    """The training split is smaller than one optimizer step."""


class TrainingPreemptedError(RuntimeError):
    """Training stopped on request (SIGTERM: preemption) after ``step``, with a resumable checkpoint if one is kept."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        saved = f"checkpoint saved at step {step}" if checkpoint else "no checkpoint kept"
        super().__init__(f"preempted (SIGTERM) after optimizer step {step}; {saved}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class InjectedFaults:
    """Faults the tests inject through ``FTLAB_INJECT_FAULT`` to prove the sweep survives them.

    Format: comma-separated ``oom_at_step=N``, ``oom_above_batch=B`` (raise CUDA OOM at step N while the micro-batch
    is larger than B), ``nan_at_step=N`` (make the loss NaN at step N), ``segfault_at_step=N`` (kill the process with
    SIGSEGV at step N), ``kill_in_checkpoint_at_step=N`` (SIGKILL halfway through writing step N's checkpoint),
    ``trial=K`` (only in sweep trial number K, read from ``FTLAB_TRIAL_NUMBER``). Groups separated by ``;`` give
    different trials different faults: ``nan_at_step=3,trial=1;segfault_at_step=2,trial=2``. Unset in normal use.
    """

    oom_at_step: int | None = None
    oom_above_batch: int = 0
    nan_at_step: int | None = None
    segfault_at_step: int | None = None
    kill_in_checkpoint_at_step: int | None = None
    trial: int | None = None

    @classmethod
    def from_env(cls) -> InjectedFaults:
        for group in os.environ.get("FTLAB_INJECT_FAULT", "").split(";"):
            items = (item.split("=", 1) for item in group.split(",") if "=" in item)
            faults = cls(**{key.strip(): int(value) for key, value in items})
            if faults.trial is None or str(faults.trial) == os.environ.get("FTLAB_TRIAL_NUMBER"):
                return faults
        return cls()


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


def _is_save_step(config: TrainConfig, step: int, is_eval_step: bool) -> bool:
    if config.save_steps is None:
        return is_eval_step
    return config.save_steps > 0 and step % config.save_steps == 0


def _epoch_order(seed: int, epoch: int, n_blocks: int, device: torch.device) -> torch.Tensor:
    """The block order of one epoch: a pure function of (seed, epoch), so a resumed run sees the same batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_blocks, generator=generator).to(device)


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
) -> TrainResult:
    """Fine-tune ``model`` on packed ``train_blocks`` and evaluate it on ``validation_blocks``.

    Args:
        model: a transformers causal LM, already on ``runtime.device``.
        train_blocks: int64 tensor [n_blocks, block_size] of token ids (no padding).
        validation_blocks: the same for validation.
        config: TrainingArguments-named settings.
        runtime: device and precision.
        callback: hooks for tracking, pruning and progress.
        best_model_dir: if given, the model with the lowest eval loss so far is saved there (whole or not at all).
        checkpoint_path: where resumable checkpoints are written (see ``save_steps``); None writes none.
        resume_from: a checkpoint to resume from (a retried trial's predecessor's); ignored if absent.
        stop_requested: when set, training stops after the current optimizer step, saving a checkpoint first.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
        NotEnoughDataError: less data than one optimizer step.
        TrainingPreemptedError: ``stop_requested`` was set.
    """
    callback = callback or TrainingCallback()
    faults = InjectedFaults.from_env()
    device = runtime.device
    micro, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    total_steps, steps_per_epoch = plan_steps(config, train_blocks.size(0))

    if train_blocks.numel() * train_blocks.element_size() <= _DEVICE_RESIDENT_BYTES:
        train_blocks = train_blocks.to(device)
        validation_blocks = validation_blocks.to(device)
    elif device.type == "cuda":
        train_blocks = train_blocks.pin_memory()

    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    fuse_tanh_gelu(model)
    if device.type == "cuda":  # cuBLAS's alignment rule; the CPU's kernels have none
        align_output_head(model)
    if config.torch_compile:
        compile_blocks(model)  # in place: the model trains, evaluates and saves as before
    optimizer = build_optimizer(model, config, device)
    scheduler = build_scheduler(optimizer, config, total_steps)
    # Label tokens per micro-batch: the same for every packed block, counted once on the host.
    label_tokens_per_micro = count_label_tokens(train_blocks[:micro].cpu())
    label_tokens_per_step = label_tokens_per_micro * accumulation
    input_tokens_per_step = micro * accumulation * train_blocks.size(1)

    plan = TrainPlan(
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(config, total_steps),
        steps_per_epoch=steps_per_epoch,
        tokens_per_step=input_tokens_per_step,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        learning_rate=float(scheduler.base_lrs[0]),
        device=str(device),
        bf16=runtime.bf16,
        train_blocks=train_blocks.size(0),
        validation_blocks=validation_blocks.size(0),
        block_size=train_blocks.size(1),
    )
    resumed = load_training_state(resume_from)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["cpu_rng"])
        if device.type == "cuda" and resumed.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resumed["cuda_rng"])
        plan = dataclasses.replace(plan, start_step=resumed["step"])
    callback.on_train_begin(plan)

    def run_evaluation() -> tuple[float, int]:
        return evaluate(model, validation_blocks, config.per_device_eval_batch_size, device, runtime.autocast())

    # Window sums live on the device and are read only at logging steps: no per-step host synchronisation.
    window_loss = torch.zeros((), dtype=torch.float64, device=device)
    window_steps = 0
    run_loss_sum = resumed["run_loss_sum"] if resumed else 0.0
    grad_norm = torch.zeros((), device=device)
    best_eval_loss = resumed["best_eval_loss"] if resumed else math.inf
    eval_loss, history = (resumed["eval_loss"], resumed["history"]) if resumed else (math.nan, [])
    num_items = torch.tensor(label_tokens_per_step, device=device)
    runtime.reset_peak_memory()
    started = time.perf_counter()

    def save_checkpoint(step: int) -> None:
        nonlocal run_loss_sum, window_steps
        assert checkpoint_path is not None
        state = {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            # The partial logging window is folded in, so no loss is counted twice after a resume.
            "run_loss_sum": run_loss_sum + window_loss.item(),
            "best_eval_loss": best_eval_loss,
            "eval_loss": eval_loss,
            "history": history,
        }
        # The partial logging window is now counted in run_loss_sum; the next log covers the steps after it.
        run_loss_sum, window_steps = state["run_loss_sum"], 0
        window_loss.zero_()
        save_training_state(state, checkpoint_path, kill_midway=faults.kill_in_checkpoint_at_step == step)
        callback.on_checkpoint(step, str(checkpoint_path))

    # The batch order is a pure function of (seed, epoch): a resumed run continues with exactly the batches it missed.
    order = _epoch_order(config.seed, plan.start_step // steps_per_epoch, train_blocks.size(0), device)

    for step in range(plan.start_step + 1, total_steps + 1):
        epoch, position = divmod(step - 1, steps_per_epoch)
        if position == 0 and step > plan.start_step + 1:
            order = _epoch_order(config.seed, epoch, train_blocks.size(0), device)
        step_indices = order[position * micro * accumulation : (position + 1) * micro * accumulation]
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for micro_step in range(accumulation):
            if faults.segfault_at_step == step:
                os.kill(os.getpid(), signal.SIGSEGV)
            if faults.oom_at_step == step and micro > faults.oom_above_batch:
                raise torch.cuda.OutOfMemoryError(f"injected by FTLAB_INJECT_FAULT at step {step}")
            batch = train_blocks[step_indices[micro_step * micro : (micro_step + 1) * micro]]
            batch = batch.to(device, non_blocking=True)
            with runtime.autocast():
                # num_items_in_batch makes the model's loss sum/(tokens in the whole optimizer step), so summing the
                # micro-batch losses gives the token-weighted mean: 2×4 and 8×1 report the same loss.
                loss = model(input_ids=batch, labels=batch, num_items_in_batch=num_items, use_cache=False).loss
            if faults.nan_at_step == step:
                loss = loss * math.nan
            loss.backward()
            step_loss += loss.detach().double()
        clip = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window_loss += step_loss
        window_steps += 1

        tokens_seen = step * input_tokens_per_step
        fidelity = _fidelity_point(config, step, tokens_seen, input_tokens_per_step)
        is_eval_step = step == total_steps or fidelity is not None
        if step % config.logging_steps == 0 or is_eval_step:
            mean_loss = window_loss.item() / window_steps  # the one host sync per logging window
            if not math.isfinite(mean_loss):
                raise NonFiniteLossError(step, mean_loss)
            run_loss_sum += mean_loss * window_steps
            elapsed = time.perf_counter() - started
            callback.on_log(
                step,
                {
                    "train/loss": mean_loss,
                    "train/learning_rate": scheduler.get_last_lr()[0],
                    "train/grad_norm": float(grad_norm),
                    "train/tokens_seen": float(tokens_seen),
                    "train/epoch": step / steps_per_epoch,
                    "perf/tokens_per_second": (step - plan.start_step) * input_tokens_per_step / elapsed,
                    "perf/peak_memory_mb": peak_memory_mb(device),
                },
            )
            window_loss.zero_()
            window_steps = 0

        if is_eval_step:
            eval_loss, eval_tokens = run_evaluation()
            metrics = {"eval/loss": eval_loss, "eval/perplexity": perplexity(eval_loss), "eval/tokens": eval_tokens}
            # Pruners compare trials at the same fidelity point: the eval_tokens multiple just crossed, or the
            # tokens seen when evaluating by steps or at the end.
            point = fidelity if fidelity is not None else tokens_seen
            history.append({"step": step, "tokens_seen": tokens_seen, "fidelity_tokens": point, **metrics})
            if eval_loss < best_eval_loss:
                best_eval_loss = eval_loss
                if best_model_dir is not None:
                    save_model_atomically(model, best_model_dir)
                    callback.on_checkpoint(step, str(best_model_dir))
            callback.on_evaluate(step, point, metrics)

        saved = checkpoint_path is not None and _is_save_step(config, step, is_eval_step) and step < total_steps
        if saved:
            save_checkpoint(step)
        if stop_requested is not None and stop_requested.is_set() and step < total_steps:
            # Preemption: the scheduler's grace period is short, so stop at this step boundary with a checkpoint.
            if checkpoint_path is not None and not saved:
                save_checkpoint(step)
            raise TrainingPreemptedError(step, checkpoint_path)

    seconds = time.perf_counter() - started
    tokens_seen = total_steps * input_tokens_per_step
    result = TrainResult(
        steps=total_steps,
        tokens_seen=tokens_seen,
        train_loss=run_loss_sum / total_steps,  # every step's loss, also those run before a resume
        eval_loss=eval_loss,
        eval_perplexity=perplexity(eval_loss),
        best_eval_loss=best_eval_loss,
        seconds=seconds,
        tokens_per_second=tokens_seen / seconds,
        peak_memory_mb=peak_memory_mb(device),
        history=history,
    )
    callback.on_train_end(result)
    return result
