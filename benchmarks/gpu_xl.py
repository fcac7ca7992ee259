"""The documented recipe's training step on GPT-2 XL (1.56B parameters), ftlab's loop against transformers' Trainer:
full fine-tuning on one GPU, whole optimizer steps timed.

Run from the repo root on a CUDA machine (about 4 to 5 minutes on an H100 or H200):

    python -m benchmarks.gpu_xl               # the recipe's phases, alternated, each run twice
    python -m benchmarks.gpu_xl --tiny        # the same path with a 2-layer model on any device (seconds on CPU)
    # --compile adds ftlab with torch_compile=True, --ablations ftlab with one model speed-up off (both at the
    # recipe's batch); --profile ends with a profile of one ftlab optimizer step at the fastest micro-batch.

The recipe (``ftlab baseline show gpt2-xl_ft_logits_25k``): micro-batch 4 × gradient accumulation 32 = 128 sequences
of 1024 tokens per optimizer step, bf16 autocast over fp32 weights, fused AdamW. Every phase trains the same randomly
initialised model (nothing is downloaded) on the same random token blocks:

- ``ftlab_4x32``: ``ftlab.training.loop.train`` at the recipe.
- ``ftlab_8x16``, ``ftlab_16x8``: the same effective batch at bigger micro-batches; the fastest that fits is reported
  as ``fastest_ftlab``. A phase that runs out of memory is recorded as ``{"error"}`` and not run again.
- ``trainer_4x32``: Trainer as users run it: ``bf16=True``, ``optim="adamw_torch_fused"``, sdpa attention,
  ``tf32=True``, the same accumulation, its own data loader.
- ``trainer_patched_4x32``: the same Trainer given ftlab's model speed-ups (``ftlab.training.speedups``: the fused
  tanh-GELU and, on CUDA, the 64-aligned output head), so that ``ratios`` separate the loop's own share
  (ftlab / patched Trainer) from the speed-ups' (patched Trainer / Trainer).

Timing: a timestamp after a device synchronisation at every optimizer step (32 micro-batches, so the sync costs
nothing measurable); each run's first ``--warmup-steps`` (cuBLAS heuristics, allocator growth, compilation) are not
counted. Phases take turns, ABCDE ABCDE…, ``--repeats`` times, each run from a fresh model, so that drift (clocks,
heat) spreads over all of them; a phase reports the min/median/max of its step times and its throughput at the median.

MFU in two conventions over the device's dense bf16 peak (989 TFLOP/s for the H100 SXM and the H200: the JSON names
its source): ftlab's (nanoGPT's ``estimate_mfu``) 6·N + 12·L·C·T FLOPs per token, and llm.c's 6·N + 6·L·C·T (causal
attention computes half the square); N counts every trainable parameter once (lm_head is tied to wte), L layers, C the
width, T the sequence. None on a CPU. Peak memory is ``torch.cuda.max_memory_allocated`` over a run: with accumulation
above 1 the gradients persist across a step's micro-batches, so it holds them.

Prints one JSON line on stdout (everything else goes to stderr) and writes it to ``benchmarks/results/gpu_xl.json``
(``gpu_xl_tiny.json`` with ``--tiny``), and to ``$OUT`` when that is set.
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

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
from ftlab.training.speedups import align_output_head, fuse_tanh_gelu

NAME = "gpu_xl"
DEFAULT_PEAK = (989e12, "not in benchmarks._common's table: assumed the H100 SXM's 989 TFLOP/s dense bf16")
TARGETS = {  # issue 12, for ftlab as users run it: (bound, "min" or "max")
    "mfu": (0.45, "min"),  # ftlab's convention
    "peak_mem_gb": (60.0, "max"),
}
FLOP_FORMULAS = {
    "ftlab": "6*N + 12*n_layer*n_embd*seq_len (nanoGPT's estimate_mfu: attention's QK^T and AV over the full square)",
    "llm_c": "6*N + 6*n_layer*n_embd*seq_len (llm.c: causal attention computes half the square)",
}
N_MEANS = "N = every trainable parameter once (lm_head tied to wte), position embeddings included"


@dataclass(frozen=True)
class Shape:
    """The model and sequence being benchmarked."""

    n_layer: int
    n_embd: int
    n_head: int
    seq_len: int
    vocab_size: int


@dataclass(frozen=True)
class Batch:
    """One optimizer step's split: micro-batch × gradient accumulation."""

    micro_batch: int
    accumulation: int

    @property
    def sequences(self) -> int:
        return self.micro_batch * self.accumulation

    def with_micro_batch(self, micro_batch: int) -> Batch:
        """The same effective batch at another micro-batch (which must divide it)."""
        return Batch(micro_batch, self.sequences // micro_batch)

    def __str__(self) -> str:
        return f"{self.micro_batch}x{self.accumulation}"


GPT2_XL = Shape(n_layer=48, n_embd=1600, n_head=25, seq_len=1024, vocab_size=50257)
RECIPE = Batch(micro_batch=4, accumulation=32)  # gpt2-xl_ft_logits_25k
BIGGER_MICRO_BATCHES = (8, 16)
# --tiny keeps every code path, accumulation above 1 included, at a size a CPU runs in seconds.
TINY = Shape(n_layer=2, n_embd=64, n_head=2, seq_len=64, vocab_size=512)
TINY_RECIPE = Batch(micro_batch=2, accumulation=4)
TINY_BIGGER_MICRO_BATCHES = (4, 8)
SPEEDUPS = {"ftlab_written_out_gelu": "fuse_tanh_gelu", "ftlab_unaligned_head": "align_output_head"}


@dataclass(frozen=True)
class Phase:
    """One way of training: who runs the loop, at which split, with which model speed-ups."""

    name: str
    runner: Literal["ftlab", "trainer"]
    batch: Batch
    compile_: bool = False  # ftlab with torch_compile=True
    patched: bool = False  # Trainer given ftlab's model speed-ups
    without: str | None = None  # ftlab with this speed-up turned off: an ablation, not ftlab as users run it

    @property
    def speedups(self) -> str:
        if self.runner == "trainer":
            return "ftlab's model speed-ups" if self.patched else "none"
        if self.without:
            return f"ftlab's, without {self.without}"
        return "ftlab's, blocks compiled" if self.compile_ else "ftlab's"

    @property
    def ftlab_as_run(self) -> bool:
        return self.runner == "ftlab" and self.without is None


def plan_phases(recipe: Batch, bigger: tuple[int, ...], compile_: bool, ablations: bool) -> list[Phase]:
    """The phases in the order they take turns: ftlab at every micro-batch, then the two Trainer references."""
    phases = [Phase(f"ftlab_{recipe}", "ftlab", recipe)]
    phases += [Phase(f"ftlab_{recipe.with_micro_batch(m)}", "ftlab", recipe.with_micro_batch(m)) for m in bigger]
    phases += [
        Phase(f"trainer_{recipe}", "trainer", recipe),
        Phase(f"trainer_patched_{recipe}", "trainer", recipe, patched=True),
    ]
    if compile_:
        phases.append(Phase(f"ftlab_compile_{recipe}", "ftlab", recipe, compile_=True))
    if ablations:
        phases += [Phase(f"{name}_{recipe}", "ftlab", recipe, without=speedup) for name, speedup in SPEEDUPS.items()]
    return phases


@dataclass
class Bench:
    """What every run shares: the model's shape, the device, the data, how many steps, the script's clock."""

    shape: Shape
    device: torch.device
    blocks: torch.Tensor  # one epoch covers a whole run, so no run crosses an epoch boundary
    warmup: int
    last_step: int
    started: float


def build_model(shape: Shape, device: torch.device) -> torch.nn.Module:
    """A GPT-2 with random fp32 weights, created directly on ``device``: seconds on a GPU, not minutes on the host."""
    torch.manual_seed(0)  # every run starts from the same weights
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
    """Timestamps taken right after a device synchronisation, and the rule for when a run stops."""

    label: str
    device: torch.device
    last_step: int
    deadline: float  # time.perf_counter() value after which the run stops at its next mark
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
def speedup_off(name: str | None) -> Iterator[None]:
    """One of ftlab's model speed-ups (a function the loop calls) turned off while the block runs."""
    if name is None:
        yield
        return
    original = getattr(ftlab.training.loop, name)
    setattr(ftlab.training.loop, name, lambda model: 0)
    try:
        yield
    finally:
        setattr(ftlab.training.loop, name, original)


def ftlab_config(bench: Bench, batch: Batch, max_steps: int, compile_: bool = False) -> TrainConfig:
    """ftlab's settings for a run: TrainingArguments names, a log (and so a mark) at every optimizer step."""
    return TrainConfig(
        bf16=bench.device.type == "cuda",
        use_cpu=bench.device.type == "cpu",
        optim="adamw_torch_fused",
        per_device_train_batch_size=batch.micro_batch,
        per_device_eval_batch_size=batch.micro_batch,
        gradient_accumulation_steps=batch.accumulation,
        max_steps=max_steps,
        logging_steps=1,
        torch_compile=compile_,
    )


def run_ftlab(bench: Bench, phase: Phase, clock: StepClock) -> dict[str, Any]:
    """Train with ftlab's loop until the clock says stop; what ran."""
    config = ftlab_config(bench, phase.batch, bench.last_step, phase.compile_)
    runtime = Runtime.for_config(config)
    model = build_model(bench.shape, runtime.device)
    with speedup_off(phase.without), contextlib.suppress(BenchmarkDone):
        train(model, bench.blocks, bench.blocks[: phase.batch.micro_batch], config, runtime, FtlabMarks(clock))
    return {"optimizer": config.optim, "bf16": runtime.bf16}


def run_trainer(bench: Bench, phase: Phase, clock: StepClock) -> dict[str, Any]:
    """Train with transformers' Trainer as users set it up (given ftlab's model speed-ups if the phase says so)."""
    cuda = bench.device.type == "cuda"
    model = build_model(bench.shape, bench.device)
    if phase.patched:
        fuse_tanh_gelu(model)
        if cuda:  # as ftlab's loop does: cuBLAS's alignment rule, which the CPU's kernels do not have
            align_output_head(model)
    dataset = [{"input_ids": block, "labels": block} for block in bench.blocks]
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            bf16=cuda,
            # TrainingArguments refuses tf32 without an Ampere-or-newer GPU. TF32 then stays on for the process, as
            # ftlab's Runtime leaves it: transformers sets it once per process, so no phase may turn it off again.
            tf32=True if cuda else None,
            use_cpu=not cuda,
            optim="adamw_torch_fused",
            per_device_train_batch_size=phase.batch.micro_batch,
            gradient_accumulation_steps=phase.batch.accumulation,
            max_steps=bench.last_step,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            disable_tqdm=True,  # progress comes from the marks; tqdm adds no device work either way
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[TrainerMarks(clock, 1)])
        trainer.train()
        trainer.accelerator.free_memory()  # drops accelerate's references to the model and optimizer
    return {"optimizer": str(getattr(args.optim, "value", args.optim)), "bf16": args.bf16}


def run_once(bench: Bench, phase: Phase, deadline: float) -> dict[str, Any]:
    """One run of ``phase`` from a fresh model: its marks, seconds and peak memory, or ``{"error"}``."""
    free_device_memory()
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
    clock = StepClock(phase.name, bench.device, bench.last_step, deadline, bench.started)
    progress(NAME, bench.started, f"{phase.name}: building the model on {bench.device}")
    begun = time.perf_counter()
    try:
        # Trainer prints its final metrics on stdout; stdout is kept for the one JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            ran = (run_ftlab if phase.runner == "ftlab" else run_trainer)(bench, phase, clock)
    except Exception as error:  # out of memory, say: the other phases' numbers must not be lost
        traceback.print_exc()
        ran = {"error": f"{type(error).__name__}: {error}"[:1000]}
    ran["seconds"] = time.perf_counter() - begun
    ran["marks"] = clock.marks
    ran["peak_mem_gb"] = torch.cuda.max_memory_allocated(bench.device) / 1e9 if bench.device.type == "cuda" else None
    free_device_memory()  # outside the except block, whose traceback pins the failed run's tensors
    return ran


def run_schedule(bench: Bench, phases: list[Phase], repeats: int, budget_end: float) -> dict[str, list[dict]]:
    """Every phase ``repeats`` times, taking turns; a phase that failed is not run again, and a run that would not
    end within the time budget (judging by the phase's last run) is skipped."""
    runs: dict[str, list[dict[str, Any]]] = {phase.name: [] for phase in phases}
    for repeat, phase in itertools.product(range(repeats), phases):
        done = runs[phase.name]
        if any("error" in run for run in done):  # out of memory, say: it would not fit the next time either
            continue
        expected = next((run["seconds"] for run in reversed(done) if "seconds" in run), 0.0)
        if time.perf_counter() + expected > budget_end:
            done.append({"skipped": "time budget"})
            continue
        progress(NAME, bench.started, f"{phase.name}: run {repeat + 1}/{repeats}")
        done.append(run_once(bench, phase, budget_end))
    return runs


@dataclass(frozen=True)
class FlopsModel:
    """FLOPs per token in both conventions and the device's peak (None on a CPU), for MFU."""

    per_token: dict[str, int]
    peak: float | None

    def mfu(self, tokens_per_s: float) -> dict[str, float | None]:
        return {name: tokens_per_s * flops / self.peak if self.peak else None for name, flops in self.per_token.items()}


def step_times(marks: list[tuple[int, float]], warmup: int) -> list[float]:
    """Seconds per optimizer step after the warm-up, one per marked interval."""
    timed = [(step, t) for step, t in marks if step >= warmup]
    return [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(timed)]


def summarize(phase: Phase, runs: list[dict[str, Any]], bench: Bench, flops: FlopsModel) -> dict[str, Any]:
    """A phase's figures over all its runs: step-time spread, throughput and MFU at the median step, peak memory."""
    ran = [run for run in runs if "marks" in run and "error" not in run]  # a run that failed midway does not fit
    steps = [seconds for run in ran for seconds in step_times(run["marks"], bench.warmup)]
    summary: dict[str, Any] = {
        "runner": phase.runner,
        "micro_batch": phase.batch.micro_batch,
        "gradient_accumulation_steps": phase.batch.accumulation,
        "speedups": phase.speedups,
        "runs": len(ran),
        "measured_steps": len(steps),
    }
    errors = [run["error"] for run in runs if "error" in run]
    summary |= {"errors": errors} if errors else {}
    skipped = sum("skipped" in run for run in runs)
    summary |= {"skipped_runs": skipped} if skipped else {}
    if not steps:
        return {"error": errors[0] if errors else "no timed step before the time budget ran out", **summary}
    median = statistics.median(steps)
    tokens_per_s = phase.batch.sequences * bench.shape.seq_len / median
    peaks = [run["peak_mem_gb"] for run in ran if run["peak_mem_gb"] is not None]
    return summary | {
        "step_ms": {"min": 1000 * min(steps), "median": 1000 * median, "max": 1000 * max(steps)},
        "steps_ms": [round(1000 * seconds, 2) for seconds in steps],  # in the order they ran
        "tokens_per_s": tokens_per_s,
        "mfu": flops.mfu(tokens_per_s),
        # From the first mark (training set up) to the end of the warm-up, per run: compilation lands here.
        "warmup_s": [
            run["marks"][bench.warmup][1] - run["marks"][0][1] for run in ran if len(run["marks"]) > bench.warmup
        ],
        "peak_mem_gb": max(peaks) if peaks else None,
        "optimizer": ran[0].get("optimizer"),
        "bf16": ran[0].get("bf16"),
    }


def fastest_ftlab(phases: list[Phase], results: dict[str, dict[str, Any]]) -> str | None:
    """The eager ftlab phase (the recipe's effective batch, any micro-batch that fitted) with the fastest step."""
    eager = [p.name for p in phases if p.ftlab_as_run and not p.compile_ and "tokens_per_s" in results[p.name]]
    return max(eager, key=lambda name: results[name]["tokens_per_s"], default=None)


def ratios(phases: list[Phase], results: dict[str, dict[str, Any]], fastest: str | None) -> dict[str, float | None]:
    """Throughput ratios that split ftlab's gain over Trainer into the loop's own share and the speed-ups' share."""
    recipe_ftlab, trainer, patched = phases[0].name, *(p.name for p in phases if p.runner == "trainer")

    def ratio(a: str | None, b: str) -> float | None:
        if a is None or "tokens_per_s" not in results[a] or "tokens_per_s" not in results[b]:
            return None
        return results[a]["tokens_per_s"] / results[b]["tokens_per_s"]

    return {
        "ftlab_recipe_vs_trainer": ratio(recipe_ftlab, trainer),
        "loop_share_ftlab_recipe_vs_trainer_patched": ratio(recipe_ftlab, patched),
        "speedups_share_trainer_patched_vs_trainer": ratio(patched, trainer),
        "ftlab_fastest_vs_trainer": ratio(fastest, trainer),
    }


def check_targets(phases: list[Phase], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target for each ftlab phase as users run it: its bound, value, and met (None if not measured)."""
    targets = {}
    for phase in (p for p in phases if p.ftlab_as_run):
        for key, (bound, kind) in TARGETS.items():
            value = results[phase.name].get(key)
            value = value.get("ftlab") if isinstance(value, dict) else value  # MFU: ftlab's convention
            met = None if value is None else (value >= bound if kind == "min" else value <= bound)
            targets[f"{phase.name}.{key}"] = {kind: bound, "value": value, "met": met}
    return targets


def compile_payback(phases: list[Phase], results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What compiling costs (its extra warm-up, first runs compared) and after how many steps a trial earns it back."""
    compiled = next((p for p in phases if p.compile_), None)
    if compiled is None:
        return None
    eager, fast = results[phases[0].name], results[compiled.name]
    if "step_ms" not in eager or "step_ms" not in fast or not eager["warmup_s"] or not fast["warmup_s"]:
        return None
    extra_s = fast["warmup_s"][0] - eager["warmup_s"][0]
    saved_ms = eager["step_ms"]["median"] - fast["step_ms"]["median"]
    return {
        "extra_warmup_s": extra_s,
        "saved_ms_per_step": saved_ms,
        "pays_back_after_steps": math.ceil(1000 * extra_s / saved_ms) if saved_ms > 0 else None,
    }


class ProfileSteps(TrainingCallback):
    """Steps torch.profiler's schedule at every optimizer step (ftlab logs every step here)."""

    def __init__(self, profiler: torch.profiler.profile, last_step: int) -> None:
        self.profiler = profiler
        self.last_step = last_step

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.profiler.step()
        if step >= self.last_step:
            raise BenchmarkDone


def profile_ftlab(bench: Bench, batch: Batch, table: Path) -> str:
    """Profile one whole ftlab optimizer step (after one step of warm-up): where its time goes, by operator."""
    config = ftlab_config(bench, batch, max_steps=3)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if bench.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    free_device_memory()
    progress(NAME, bench.started, f"profile: one ftlab step at {batch}")
    with contextlib.redirect_stdout(sys.stderr):
        runtime = Runtime.for_config(config)
        model = build_model(bench.shape, runtime.device)
        schedule = torch.profiler.schedule(wait=1, warmup=1, active=1, repeat=1)
        with (
            torch.profiler.profile(activities=activities, schedule=schedule) as profiler,
            contextlib.suppress(BenchmarkDone),
        ):
            train(model, bench.blocks, bench.blocks[: batch.micro_batch], config, runtime, ProfileSteps(profiler, 3))
    sort_by = "self_cuda_time_total" if bench.device.type == "cuda" else "self_cpu_time_total"
    text = profiler.key_averages().table(sort_by=sort_by, row_limit=40, max_name_column_width=60)
    write_output(text, table)
    progress(NAME, bench.started, f"wrote {table}\n{text}")
    del model
    free_device_memory()
    return str(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_xl", description=__doc__.split("\n")[0])
    parser.add_argument("--warmup-steps", type=int, default=1, help="optimizer steps of each run not timed")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps of each run timed after the warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each phase, the phases taking turns")
    parser.add_argument("--compile", action="store_true", help="add a phase: ftlab with torch_compile=True")
    parser.add_argument("--ablations", action="store_true", help="add phases that each turn one ftlab speed-up off")
    parser.add_argument(
        "--profile", action="store_true", help="then profile one ftlab step; writes NAME_profile.txt beside the JSON"
    )
    parser.add_argument("--tiny", action="store_true", help="2-layer, 64-wide model on any device (tests the script)")
    parser.add_argument("--time-budget-s", type=float, default=300.0, help="the runs' time; later runs are skipped")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device's dense bf16 peak (default: by name)")
    parser.add_argument("--output", type=Path, default=None, help=f"result file (default: {RESULTS_DIR}/{NAME}.json)")
    args = parser.parse_args(argv)
    for name, least in (("warmup_steps", 0), ("steps", 1), ("repeats", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}, but got {getattr(args, name)}")
    if args.time_budget_s <= 0:
        parser.error(f"--time-budget-s must be positive, but got {args.time_budget_s}")
    return args


def device_peak(device: torch.device, device_name: str, override_tflops: float | None) -> tuple[float | None, str]:
    """The peak MFU is measured against, and where it comes from."""
    if device.type == "cpu":
        return None, "no MFU on a CPU"
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    return peak_bf16_flops(device_name) or DEFAULT_PEAK


def flops_config(shape: Shape, device: torch.device, device_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON's account of how MFU is computed: parameters, both conventions with their formulas, the peak."""
    n_params = count_params(shape)
    attention = shape.n_layer * shape.n_embd * shape.seq_len
    per_token = {"ftlab": 6 * n_params + 12 * attention, "llm_c": 6 * n_params + 6 * attention}
    peak, source = device_peak(device, device_name, args.peak_tflops)
    return {
        "params": n_params,
        "mfu_conventions": {
            name: {"flops_per_token": flops, "formula": FLOP_FORMULAS[name], "n": N_MEANS}
            for name, flops in per_token.items()
        },
        "peak_flops": peak,
        "peak_flops_source": source,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    shape, recipe = (TINY, TINY_RECIPE) if args.tiny else (GPT2_XL, RECIPE)
    phases = plan_phases(
        recipe, TINY_BIGGER_MICRO_BATCHES if args.tiny else BIGGER_MICRO_BATCHES, args.compile, args.ablations
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    output = args.output or RESULTS_DIR / f"{NAME}{'_tiny' if args.tiny else ''}.json"
    mfu_config = flops_config(shape, device, device_name, args)
    flops = FlopsModel(
        {name: c["flops_per_token"] for name, c in mfu_config["mfu_conventions"].items()}, mfu_config["peak_flops"]
    )
    last_step = args.warmup_steps + args.steps
    generator = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, shape.vocab_size, (last_step * recipe.sequences, shape.seq_len), generator=generator)
    bench = Bench(shape, device, blocks, args.warmup_steps, last_step, started)
    progress(NAME, started, f"{device_name}: {mfu_config['params'] / 1e6:,.1f}M params, recipe {recipe}, "
             f"{args.warmup_steps}+{args.steps} steps a run, {args.repeats} runs a phase")  # fmt: skip

    runs = run_schedule(bench, phases, args.repeats, started + args.time_budget_s)
    results = {phase.name: summarize(phase, runs[phase.name], bench, flops) for phase in phases}
    fastest = fastest_ftlab(phases, results)
    result = {
        "benchmark": NAME,
        "device": device_name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": {
            "tiny": args.tiny,
            **asdict(shape),
            "recipe": {
                "micro_batch": recipe.micro_batch,
                "gradient_accumulation_steps": recipe.accumulation,
                "effective_batch": recipe.sequences,
            },
            "tokens_per_step": recipe.sequences * shape.seq_len,
            "warmup_steps": args.warmup_steps,
            "steps": args.steps,
            "repeats": args.repeats,
            "order": [phase.name for phase in phases],
            **mfu_config,
            "peak_memory": "torch.cuda.max_memory_allocated over a run; gradients persist across micro-batches",
            "time_budget_s": args.time_budget_s,
        },
        "phases": results,
        "recipe_phase": phases[0].name,
        "fastest_ftlab": None
        if fastest is None
        else {"phase": fastest, "micro_batch": results[fastest]["micro_batch"]},
        "ratios": ratios(phases, results, fastest),
        "compile": compile_payback(phases, results),
        "targets": check_targets(phases, results),
    }
    if args.profile:
        profiled = next(p.batch for p in phases if p.name == fastest) if fastest else recipe
        result["profile"] = profile_ftlab(bench, profiled, output.with_name(f"{output.stem}_profile.txt"))
    result["wall_s"] = time.perf_counter() - started
    print(json.dumps(result), flush=True)  # first, so that the numbers survive a failing write
    for path in write_result(result, output):
        progress(NAME, started, f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
