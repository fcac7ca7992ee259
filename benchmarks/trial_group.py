"""What a trial of 2 processes costs against a trial of 1, and whether it trains the same (DDP and FSDP).

    python -m benchmarks.trial_group                 # CPU, gloo: 2 ranks × 1 thread against 1 process × 2 threads
    python -m benchmarks.trial_group --quick         # the same path in well under a minute
    python -m benchmarks.trial_group --device cuda   # 2 GPUs, NCCL: GPT-2 small, 1 GPU against 2 (gpu_run.sh group)

The same randomly initialised GPT-2 is trained for ``--steps`` optimizer steps at the same effective batch three
ways: in-process (``ftlab.training.loop.train``, micro-batch M × accumulation A), and as a trial of 2 processes
(``ftlab.training.group.train_in_group``, M/2 × A per rank) under DDP and under FSDP. Per run:

- ``wall_s``: from the call to its return: for a group, starting the ranks (fork server, rendezvous, process group),
  building the model on each, training, gathering nothing (no model is saved);
- ``step_ms``: the median time between consecutive ``on_log`` calls after ``--warmup-steps`` (logging every step; for
  a group these are rank 0's hooks, relayed to this process, so they include the relay);
- ``start_s``: ``wall_s`` − steps × ``step_ms``: the fixed cost of the run;
- ``eval_loss``, ``train_loss`` and their relative difference from the in-process run.

Prints one JSON line and writes it to ``benchmarks/results/trial_group_<device>.json`` (and ``$OUT`` when set).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import transformers

from ftlab.config import TrainConfig
from ftlab.training.callbacks import TrainingCallback
from ftlab.training.group import GroupTraining, train_in_group
from ftlab.training.loop import train
from ftlab.training.runtime import Runtime

SIZES = {  # (n_embd, n_layer, n_head, block_size, vocab)
    "cpu": (128, 4, 4, 128, 512),
    "cuda": (768, 12, 12, 512, 50257),
}


class StepClock(TrainingCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.times.append(time.perf_counter())


def build_model(runtime: Runtime, device_kind: str = "cpu") -> torch.nn.Module:
    """The benchmark's GPT-2, the same weights on every rank (seeded), on the runtime's device."""
    n_embd, n_layer, n_head, block, vocab = SIZES[device_kind]
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).to(runtime.device)


def _blocks(n: int, device_kind: str, seed: int) -> torch.Tensor:
    _, _, _, block, vocab = SIZES[device_kind]
    return torch.randint(0, vocab, (n, block), generator=torch.Generator().manual_seed(seed))


def _step_ms(clock: StepClock, warmup: int) -> float:
    gaps = [b - a for a, b in zip(clock.times[warmup:], clock.times[warmup + 1 :], strict=False)]
    return 1000 * statistics.median(gaps)


def _relative(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference)


def run(args: argparse.Namespace) -> dict[str, Any]:
    kind = args.device
    runtime = Runtime(device=torch.device(kind), bf16=False)  # fp32 both ways: the losses must compare
    micro = args.micro_batch
    settings = {
        "learning_rate": 1e-3,
        "max_steps": args.steps,
        "eval_steps": args.steps,
        "logging_steps": 1,
        "gradient_accumulation_steps": args.accumulation,
        "per_device_eval_batch_size": micro,
        "seed": 0,
    }
    train_blocks = _blocks(micro * args.accumulation * (args.steps + 1), kind, 1)
    validation = _blocks(2 * micro, kind, 2)
    runs: dict[str, Any] = {}

    threads = args.threads
    torch.set_num_threads(threads)
    clock = StepClock()
    started = time.perf_counter()
    single = train(
        build_model(runtime, kind), train_blocks, validation,
        TrainConfig(**settings, per_device_train_batch_size=micro), runtime, clock,
    )  # fmt: skip
    wall = time.perf_counter() - started
    runs["1 process"] = {"wall_s": wall, "step_ms": _step_ms(clock, args.warmup_steps)}
    runs["1 process"].update(eval_loss=single.metrics["eval/loss"], train_loss=single.metrics["train/loss"])
    print(f"1 process: {runs['1 process']}", file=sys.stderr)

    for strategy in ("ddp", "fsdp"):
        config = TrainConfig(
            **settings,
            per_device_train_batch_size=micro // 2,
            nproc_per_node=2,
            fsdp="full_shard" if strategy == "fsdp" else "",
        )
        job = GroupTraining(
            load_model=functools.partial(build_model, device_kind=kind),
            train_blocks=train_blocks,
            validation_blocks=validation,
            config=config,
            runtime=runtime,
            cpu_threads=threads if kind == "cpu" else None,
        )
        clock = StepClock()
        started = time.perf_counter()
        result = train_in_group(job, clock)
        wall = time.perf_counter() - started
        figures = {"wall_s": wall, "step_ms": _step_ms(clock, args.warmup_steps)}
        figures.update(
            eval_loss=result.metrics["eval/loss"],
            train_loss=result.metrics["train/loss"],
            eval_loss_rel_diff=_relative(result.metrics["eval/loss"], single.metrics["eval/loss"]),
            train_loss_rel_diff=_relative(result.metrics["train/loss"], single.metrics["train/loss"]),
        )
        runs[f"2 processes, {strategy}"] = figures
        print(f"2 processes, {strategy}: {figures}", file=sys.stderr)

    for figures in runs.values():
        figures["start_s"] = figures["wall_s"] - args.steps * figures["step_ms"] / 1000
    base = runs["1 process"]
    ratios = {
        name: {"step_ms": figures["step_ms"] / base["step_ms"], "wall_s": figures["wall_s"] / base["wall_s"]}
        for name, figures in runs.items()
        if name != "1 process"
    }
    return {
        "device": kind if kind == "cpu" else torch.cuda.get_device_name(0),
        "model": dict(zip(("n_embd", "n_layer", "n_head", "block_size", "vocab"), SIZES[kind], strict=True)),
        "steps": args.steps,
        "effective_batch": micro * args.accumulation,
        "split": {"1 process": f"{micro}x{args.accumulation}", "2 processes": f"2x({micro // 2}x{args.accumulation})"},
        "threads": threads if kind == "cpu" else None,
        "runs": runs,
        "ratios_to_1_process": ratios,
        "loadavg": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (each rank takes its share)")
    parser.add_argument("--quick", action="store_true", help="few steps: checks the script, not the machine")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup_steps = 6, 1
    result = run(args)
    line = json.dumps(result)
    print(line)
    output = args.output or Path("benchmarks/results") / f"trial_group_{args.device}.json"
    if not args.quick or args.output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], output.name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
