"""ftlab's training step against transformers' Trainer on GPT-2 XL (1.56B parameters), full fine-tuning on one GPU.

Run from the repo root on a CUDA machine; the whole script ends within about 6 minutes on an H100:

    python -m benchmarks.gpu_xl              # --compile adds a third phase: ftlab with torch_compile=True
    python -m benchmarks.gpu_xl --tiny       # the same path with a 2-layer model on any device (seconds on CPU)
    # --ablations adds phases with one speed-up turned off; --profile ends with a profile of ftlab's eager step.

Both phases train the same randomly initialised model (nothing is downloaded) on the same random token blocks:
sequence 1024, micro-batch 4, no gradient accumulation, bf16 autocast over fp32 weights, fused AdamW (Trainer's
default from torch 2.8 on; the JSON records each phase's optimizer).
- ftlab: ``ftlab.training.loop.train`` with TrainingArguments-named settings.
- Trainer: as a typical user runs it: ``TrainingArguments(bf16=True, report_to=[], save_strategy="no",
  eval_strategy="no")`` with its default optimizer, a plain dataset of ``{"input_ids", "labels"}`` and its own loader.

Only steady-state steps count. Both phases take a timestamp after a device synchronisation every 5 optimizer steps
(where ftlab's loop reads the loss anyway); the first ``--warmup-steps`` (cuDNN/cuBLAS heuristics, allocator growth,
compilation) are excluded. MFU follows nanoGPT's ``estimate_mfu``: FLOPs per token = 6·N + 12·n_layer·n_embd·seq,
where N counts every trainable parameter once (the tied lm_head/wte matrix once, position embeddings included).

Prints one JSON line on stdout (everything else goes to stderr) and writes it to ``benchmarks/results/gpu_xl.json``,
and to ``$OUT/gpu_xl.json`` when ``OUT`` is set. A phase that fails (out of memory, say) is recorded as ``{"error"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, GPT2Config, Trainer, TrainingArguments

import ftlab.training.loop
from benchmarks._common import (
    RESULTS_DIR,
    BenchmarkDone,
    FtlabMarks,
    TrainerMarks,
    free_device_memory,
    peak_bf16_flops,
    progress,
    synchronize,
    write_output,
    write_result,
)
from ftlab.config import TrainConfig
from ftlab.training.callbacks import TrainingCallback
from ftlab.training.loop import train
from ftlab.training.runtime import Runtime

NAME = "gpu_xl"
LOG_EVERY = 5  # optimizer steps between timestamps: ftlab's logging_steps, where its loop syncs the device anyway
DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM dense bf16, for GPUs the table in _common does not know
TARGETS = {  # what ftlab should reach on an H100: (bound, "min" or "max")
    "mfu": (0.45, "min"),
    "ratio_tokens_per_s": (1.3, "min"),
    "peak_mem_gb": (45.0, "max"),
}


@dataclass(frozen=True)
class Shape:
    """The model and batch being benchmarked."""

    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int
    vocab_size: int
    micro_batch: int


GPT2_XL = Shape(n_layer=48, n_embd=1600, n_head=25, seq_len=1024, vocab_size=50257, micro_batch=4)
TINY = Shape(n_layer=2, n_embd=64, n_head=2, seq_len=64, vocab_size=512, micro_batch=4)


def build_model(shape: Shape, device: torch.device) -> torch.nn.Module:
    """A GPT-2 with random fp32 weights, created directly on ``device``: seconds on a GPU, not minutes on the host."""
    torch.manual_seed(0)  # every phase starts from the same weights
    config = GPT2Config(
        n_layer=shape.n_layer,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        n_positions=shape.seq_len,
        vocab_size=shape.vocab_size,
        bos_token_id=shape.vocab_size - 1,
        eos_token_id=shape.vocab_size - 1,
    )
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def count_params(shape: Shape) -> int:
    """Trainable parameters, each tensor once (GPT-2 ties lm_head to wte), counted on a weightless meta model."""
    model = build_model(shape, torch.device("meta"))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class StepClock:
    """Timestamps taken right after a device synchronisation, and the rule for when a phase stops."""

    label: str
    device: torch.device
    last_step: int
    deadline: float  # time.perf_counter() value after which the phase stops at its next mark
    started: float
    marks: list[tuple[int, float]] = field(default_factory=list)

    def mark(self, step: int) -> bool:
        """Record the time after optimizer step ``step``; returns whether training should stop here."""
        synchronize(self.device)
        now = time.perf_counter()
        self.marks.append((step, now))
        if step > 0:
            progress(NAME, self.started, f"{self.label}: step {step}/{self.last_step}")
        return step >= self.last_step or now > self.deadline


@contextlib.contextmanager
def restored_tf32_flags():
    """ftlab's Runtime turns TF32 on process-wide; give it back so that Trainer runs with the user's defaults."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def run_ftlab(
    shape: Shape,
    blocks: torch.Tensor,
    device: torch.device,
    last_step: int,
    deadline: float,
    started: float,
    compile_: bool,
) -> dict[str, Any]:
    """Train with ftlab's loop until ``last_step``; returns the timestamps and what ran."""
    config = TrainConfig(
        bf16=device.type == "cuda",
        use_cpu=device.type == "cpu",
        optim="adamw_torch_fused",
        per_device_train_batch_size=shape.micro_batch,
        per_device_eval_batch_size=shape.micro_batch,
        gradient_accumulation_steps=1,
        max_steps=last_step,
        logging_steps=LOG_EVERY,
        torch_compile=compile_,
    )
    label = "ftlab_compile" if compile_ else "ftlab"
    with restored_tf32_flags():
        runtime = Runtime.for_config(config)
        progress(NAME, started, f"{label}: building the model on {runtime.device}")
        model = build_model(shape, runtime.device)
        clock = StepClock(label, runtime.device, last_step, deadline, started)
        with contextlib.suppress(BenchmarkDone):
            train(model, blocks, blocks[: shape.micro_batch], config, runtime, FtlabMarks(clock))
    return {"marks": clock.marks, "optimizer": config.optim, "bf16": runtime.bf16}


def without(speedup: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a phase with one of ftlab's model speed-ups (a function the loop calls) turned off, to measure its gain."""
    original = getattr(ftlab.training.loop, speedup)
    setattr(ftlab.training.loop, speedup, lambda model: 0)
    try:
        return run()
    finally:
        setattr(ftlab.training.loop, speedup, original)


class ProfileSteps(TrainingCallback):
    """Steps torch.profiler's schedule at every optimizer step (ftlab logs every step while profiling)."""

    def __init__(self, profiler: torch.profiler.profile, last_step: int) -> None:
        self.profiler = profiler
        self.last_step = last_step

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.profiler.step()
        if step >= self.last_step:
            raise BenchmarkDone


def profile_ftlab(shape: Shape, blocks: torch.Tensor, device: torch.device, started: float, table: Path) -> str:
    """Profile ftlab's eager step (3 steps after 2 of warm-up): where the time of one step goes, by operator."""
    config = TrainConfig(
        bf16=device.type == "cuda",
        use_cpu=device.type == "cpu",
        optim="adamw_torch_fused",
        per_device_train_batch_size=shape.micro_batch,
        gradient_accumulation_steps=1,
        max_steps=6,
        logging_steps=1,
    )
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    free_device_memory()
    progress(NAME, started, "profile: 3 ftlab steps")
    with restored_tf32_flags():
        runtime = Runtime.for_config(config)
        model = build_model(shape, runtime.device)
        schedule = torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1)
        with (
            torch.profiler.profile(activities=activities, schedule=schedule) as profiler,
            contextlib.suppress(BenchmarkDone),
        ):
            train(model, blocks, blocks[: shape.micro_batch], config, runtime, ProfileSteps(profiler, 5))
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    text = profiler.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=60)
    write_output(text, table)
    progress(NAME, started, f"wrote {table}\n{text}")
    del model
    free_device_memory()
    return str(table)


def run_trainer(
    shape: Shape, blocks: torch.Tensor, device: torch.device, last_step: int, deadline: float, started: float
) -> dict[str, Any]:
    """Train with transformers' Trainer as a typical user sets it up, until ``last_step``."""
    progress(NAME, started, f"trainer: building the model on {device}")
    model = build_model(shape, device)
    dataset = [{"input_ids": block, "labels": block} for block in blocks]
    clock = StepClock("trainer", device, last_step, deadline, started)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            bf16=device.type == "cuda",
            use_cpu=device.type == "cpu",
            per_device_train_batch_size=shape.micro_batch,
            gradient_accumulation_steps=1,
            max_steps=last_step,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            disable_tqdm=True,  # progress comes from the marks; tqdm adds no device work either way
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[TrainerMarks(clock, LOG_EVERY)])
        trainer.train()
        trainer.accelerator.free_memory()  # drops accelerate's references to the model and optimizer
    return {"marks": clock.marks, "optimizer": str(args.optim.value if hasattr(args.optim, "value") else args.optim)}


def summarize(
    marks: list[tuple[int, float]], warmup: int, tokens_per_step: int, flops_per_token: int, peak_flops: float | None
) -> dict[str, Any]:
    """Steady-state throughput from the first mark at or after ``warmup`` to the last mark."""
    measured = [(step, t) for step, t in marks if step >= warmup]
    if len(measured) < 2:
        return {"error": f"no steady-state window: the phase stopped after {marks[-1][0] if marks else 0} steps"}
    (first_step, first_t), (last_step, last_t) = measured[0], measured[-1]
    steps, seconds = last_step - first_step, last_t - first_t
    tokens_per_s = steps * tokens_per_step / seconds
    # The mean over all timed steps is the figure; the median window shows whether a few slow windows moved it.
    windows = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(measured)]
    return {
        "tokens_per_s": tokens_per_s,
        "step_ms": 1000 * seconds / steps,
        "median_window_step_ms": 1000 * statistics.median(windows),
        "mfu": tokens_per_s * flops_per_token / peak_flops if peak_flops else None,
        "measured_steps": steps,
        # From the first mark (training set up) to the end of the warm-up: compilation lands here.
        "warmup_s": first_t - marks[0][1],
    }


def check_targets(phases: dict[str, dict[str, Any]], ratios: dict[str, float | None]) -> dict[str, Any]:
    """Each target for ftlab as it runs (eager, and compiled where measured): value, and met (None if missing)."""
    targets = {}
    for phase in (name for name in ("ftlab", "ftlab_compile") if name in phases):  # ablations are not ftlab as run
        for key, (bound, kind) in TARGETS.items():
            value = ratios.get(phase) if key.startswith("ratio") else phases[phase].get(key)
            met = None if value is None else (value >= bound if kind == "min" else value <= bound)
            targets[f"{phase}.{key}"] = {kind: bound, "value": value, "met": met}
    return targets


def compile_payback(phases: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What compiling costs (its extra warm-up time) and after how many steps a trial has earned it back."""
    eager, compiled = phases.get("ftlab", {}), phases.get("ftlab_compile", {})
    if "step_ms" not in eager or "step_ms" not in compiled:
        return None
    extra_s = compiled["warmup_s"] - eager["warmup_s"]
    saved_ms = eager["step_ms"] - compiled["step_ms"]
    return {
        "extra_warmup_s": extra_s,
        "saved_ms_per_step": saved_ms,
        "pays_back_after_steps": math.ceil(1000 * extra_s / saved_ms) if saved_ms > 0 else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_xl", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--warmup-steps", type=int, default=5, help=f"steps not timed (rounded up to a multiple of {LOG_EVERY})"
    )
    parser.add_argument("--steps", type=int, default=30, help="steps timed after the warm-up")
    parser.add_argument("--compile", action="store_true", help="add a third phase: ftlab with torch_compile=True")
    parser.add_argument(
        "--ablations", action="store_true", help="add phases that each turn one of ftlab's speed-ups off"
    )
    parser.add_argument(
        "--profile", action="store_true", help="then profile a few ftlab steps; writes NAME_profile.txt beside the JSON"
    )
    parser.add_argument("--tiny", action="store_true", help="2-layer, 64-wide model on any device (tests the script)")
    parser.add_argument("--time-budget-s", type=float, default=300.0, help="the whole script's time; phases share it")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device's dense bf16 peak (default: by name)")
    parser.add_argument("--output", type=Path, default=None, help=f"result file (default: {RESULTS_DIR}/{NAME}.json)")
    args = parser.parse_args(argv)
    if args.warmup_steps < 0:
        parser.error(f"--warmup-steps cannot be negative, but got {args.warmup_steps}")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, but got {args.steps}")
    if args.time_budget_s <= 0:
        parser.error(f"--time-budget-s must be positive, but got {args.time_budget_s}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:  # noqa: C901 - rewritten with the recipe phases
    started = time.perf_counter()
    args = parse_args(argv)
    shape = TINY if args.tiny else GPT2_XL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    warmup = math.ceil(args.warmup_steps / LOG_EVERY) * LOG_EVERY  # a mark exists exactly where timing starts
    last_step = warmup + args.steps
    output = args.output or RESULTS_DIR / f"{NAME}{'_tiny' if args.tiny else ''}.json"

    # FLOPs per token (nanoGPT estimate_mfu): 6N for the matmuls with weights, forward and backward,
    # plus 12·n_layer·n_embd·seq for attention's QK^T and AV.
    n_params = count_params(shape)
    flops_per_token = 6 * n_params + 12 * shape.n_layer * shape.n_embd * shape.seq_len
    if device.type == "cpu":
        peak_flops = None  # no meaningful MFU on a CPU
    elif args.peak_tflops is not None:
        peak_flops = args.peak_tflops * 1e12
    else:
        peak_flops = peak_bf16_flops(device_name) or DEFAULT_PEAK_TFLOPS * 1e12
    tokens_per_step = shape.micro_batch * shape.seq_len
    # One epoch covers the run, so neither side crosses an epoch boundary.
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, shape.vocab_size, (last_step * shape.micro_batch, shape.seq_len), generator=generator)
    progress(NAME, started, f"{device_name}: {n_params / 1e6:,.1f}M params, {warmup}+{args.steps} steps per phase")

    phase_runs = {
        "ftlab": lambda deadline: run_ftlab(shape, blocks, device, last_step, deadline, started, compile_=False),
        "trainer": lambda deadline: run_trainer(shape, blocks, device, last_step, deadline, started),
    }
    if args.compile:
        phase_runs["ftlab_compile"] = lambda deadline: run_ftlab(
            shape, blocks, device, last_step, deadline, started, compile_=True
        )
    if args.ablations:
        ablations = {"ftlab_written_out_gelu": "fuse_tanh_gelu", "ftlab_unaligned_head": "align_output_head"}
        for phase, speedup in ablations.items():
            phase_runs[phase] = lambda deadline, speedup=speedup: without(
                speedup, lambda: run_ftlab(shape, blocks, device, last_step, deadline, started, compile_=False)
            )

    budget_end = started + args.time_budget_s
    phases: dict[str, dict[str, Any]] = {}
    for index, (name, run) in enumerate(phase_runs.items()):
        # Each phase may use an equal share of what is left, so one that finishes early leaves more to the next.
        now = time.perf_counter()
        deadline = now + (budget_end - now) / (len(phase_runs) - index)
        free_device_memory()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            # Trainer prints its final metrics on stdout; stdout is kept for the one JSON line.
            with contextlib.redirect_stdout(sys.stderr):
                ran = run(deadline)
            phase = summarize(ran.pop("marks"), warmup, tokens_per_step, flops_per_token, peak_flops) | ran
        except Exception as error:  # an out-of-memory in one phase must not lose the other phases' numbers
            traceback.print_exc()
            phase = {"error": f"{type(error).__name__}: {error}"[:1000]}
        phase["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
        phases[name] = phase
        progress(NAME, started, f"{name}: {json.dumps(phase)}")
    free_device_memory()

    trainer_tps = phases["trainer"].get("tokens_per_s")
    ratios = {
        name: phase["tokens_per_s"] / trainer_tps if phase.get("tokens_per_s") and trainer_tps else None
        for name, phase in phases.items()
        if name.startswith("ftlab")
    }
    ratio = ratios["ftlab"]
    result = {
        "benchmark": NAME,
        "device": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": {
            "tiny": args.tiny,
            **asdict(shape),
            "gradient_accumulation_steps": 1,
            "params": n_params,
            "warmup_steps": warmup,
            "steps": args.steps,
            "tokens_per_step": tokens_per_step,
            "flops_per_token": flops_per_token,
            "flops_per_token_formula": "6*params + 12*n_layer*n_embd*seq_len; params = all trainable, tied once",
            "peak_flops": peak_flops,
            "time_budget_s": args.time_budget_s,
        },
        "phases": phases,
        "ratio_tokens_per_s": ratio,
        "ratio_tokens_per_s_compile": ratios.get("ftlab_compile"),
        "compile": compile_payback(phases),
        "targets": check_targets(phases, ratios),
    }
    if args.profile:
        with contextlib.redirect_stdout(sys.stderr):
            result["profile"] = profile_ftlab(
                shape, blocks, device, started, output.with_name(f"{output.stem}_profile.txt")
            )
    result["wall_s"] = time.perf_counter() - started
    print(json.dumps(result), flush=True)  # first, so that the numbers survive a failing write
    for path in write_result(result, output):
        progress(NAME, started, f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
