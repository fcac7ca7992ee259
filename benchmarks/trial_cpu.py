"""What one demo trial costs on the CPU: ftlab's loop against Trainer, a trial's fixed cost, data caching, tracking.

Run from the repo root (a few minutes on two cores; ``--quick`` is the same path in well under a minute):

    python -m benchmarks.trial_cpu               # --repeats 3 by default
    python -m benchmarks.trial_cpu --quick       # 1 repeat, few steps: checks the script, not the machine

Everything uses the demo: the tiny GPT-2 of ``demo://tiny-gpt2`` (built once under ``$FTLAB_HOME``) fine-tuned on
``sweeps/demo.yaml``'s data with its baseline settings. Six figures, each against a target:

- ``ratio_tokens_per_s``: steady-state training tokens/s of ``ftlab.training.loop.train`` over a plain Trainer script
  with the same hyperparameters (learning rate, batch, accumulation, schedule, warm-up, optimizer, clipping, seed,
  ``max_steps``), the same packed blocks (``labels`` = ``input_ids``, ``default_data_collator``), the same model
  reloaded from the demo folder for every run, no evaluation during training. Runs alternate ftlab/Trainer; each run
  is timed from a callback every 5 optimizer steps after the first ``--warmup-steps``; medians over ``--repeats``.
- ``fixed_cost_fork_s`` and ``fixed_cost_cold_s``: from starting a trial process to the end of its first optimizer
  step, as a sweep pays it (a real ``ftlab sweep`` whose trials fork from its preloaded fork server; the sweep's
  first trial also starts that server and is reported apart) and as ``ftlab train`` pays it in a cold ``python``.
  The end is the MLflow timestamp of the step-1 ``train/loss`` (``logging_steps=1``); the start is the trial's MLflow
  run creation (the sweep creates it just before starting the process) or the parent's clock at ``subprocess`` spawn.
- ``prepare_data_cache_hit_s``: ``ftlab.data.prepare_data`` again once the cache holds the blocks; median.
- ``demo_assets_hit_s``: ``ftlab.demo.ensure_demo_assets`` once the demo assets are built (what every ``load_sweep`` of
  a sweep file with ``demo://`` names pays); median.
- ``tracking_overhead``: 1 - (steps/s of ``train`` with ``ftlab.tracking.MlflowCallback`` on a SQLite MLflow store) /
  (steps/s without), the demo's own settings (eval every 16k tokens, log every 5 steps), the run ended (queued
  metrics sent) inside the timed region; runs alternate; medians.

Prints one JSON line on stdout (progress goes to stderr) and writes it to ``benchmarks/results/trial_cpu.json``, and to
``$OUT/trial_cpu.json`` when ``OUT`` is set. Other processes on the machine make every figure noisier: the JSON keeps
each run's value and the load average, so the spread is visible.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

from benchmarks._common import (
    RESULTS_DIR,
    BenchmarkDone,
    FtlabMarks,
    TrainerMarks,
    progress,
    synchronize,
    write_result,
)
from ftlab.config import SweepConfig, TrainConfig, load_sweep
from ftlab.console import quiet_libraries
from ftlab.data import PreparedData, prepare_data
from ftlab.demo import ensure_demo_assets, load_sweep_with_assets
from ftlab.settings import resolve_train_config
from ftlab.tracking import MlflowCallback, TrackedRun, get_or_create_experiment
from ftlab.training.callbacks import TrainPlan
from ftlab.training.loop import train
from ftlab.training.runtime import Runtime
from ftlab.trial import load_model, load_tokenizer

NAME = "trial_cpu"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_SWEEP = REPO_ROOT / "sweeps" / "demo.yaml"
LOG_EVERY = 5  # optimizer steps between timestamps: the demo's logging_steps, where ftlab's loop reads the loss
TARGETS = {  # figure → (bound, "min" or "max", unit)
    "ratio_tokens_per_s": (1.0, "min", "ftlab / Trainer"),
    "fixed_cost_fork_s": (3.0, "max", "s"),
    "fixed_cost_cold_s": (3.0, "max", "s"),
    "prepare_data_cache_hit_s": (0.5, "max", "s"),
    "demo_assets_hit_s": (0.1, "max", "s"),
    "tracking_overhead": (0.02, "max", "fraction of steps/s"),
}


@dataclass
class StepClock:
    """Timestamps after optimizer steps; ``mark`` says when the run should stop."""

    label: str
    last_step: int
    started: float
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    marks: list[tuple[int, float]] = field(default_factory=list)

    def mark(self, step: int) -> bool:
        synchronize(self.device)
        self.marks.append((step, time.perf_counter()))
        return step >= self.last_step


def steady_tokens_per_s(marks: list[tuple[int, float]], warmup: int, tokens_per_step: int) -> tuple[float, list[float]]:
    """Tokens/s from the first mark at or after ``warmup`` to the last mark, and of each window between two marks."""
    measured = [(step, t) for step, t in marks if step >= warmup]
    if len(measured) < 2:
        raise RuntimeError(f"no steady-state window: marks at steps {[step for step, _ in marks]}")
    (first_step, first_t), (last_step, last_t) = measured[0], measured[-1]
    windows = [(s1 - s0) * tokens_per_step / (t1 - t0) for (s0, t0), (s1, t1) in itertools.pairwise(measured)]
    return (last_step - first_step) * tokens_per_step / (last_t - first_t), windows


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """(max - min) / median: how noisy the repeats were."""
    return (max(values) - min(values)) / statistics.median(values) if values else 0.0


@dataclass
class Setup:
    """The demo sweep, pointed at this run's scratch folder, and what every phase shares."""

    sweep: SweepConfig
    sweep_dir: Path
    work: Path
    tokenizer: transformers.PreTrainedTokenizerBase
    tracking_uri: str
    started: float


def make_setup(work: Path, started: float) -> Setup:
    sweep = load_sweep_with_assets(DEMO_SWEEP)  # builds the demo assets if this FTLAB_HOME has none
    # Our own data cache, so that the first preparation is a real miss and nothing lands in the repository.
    data = sweep.data.model_copy(update={"cache_dir": str(work / "data-cache")})
    sweep = sweep.model_copy(update={"data": data})
    progress(NAME, started, f"demo assets at {sweep.model.name_or_path}")
    tokenizer = load_tokenizer(sweep)
    store = work / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return Setup(sweep, DEMO_SWEEP.parent, work, tokenizer, f"sqlite:///{store / 'mlflow.db'}", started)


# --- data ---------------------------------------------------------------------------------------------------------


def bench_data(setup: Setup, hits: int) -> tuple[PreparedData, dict[str, Any]]:
    """The first ``prepare_data`` (a cache miss: tokenize, pack, write) and ``hits`` calls that find the cache."""
    started = time.perf_counter()
    data = prepare_data(setup.sweep.data, setup.tokenizer, base_dir=setup.sweep_dir)
    miss_s = time.perf_counter() - started
    assert not data.from_cache, "the scratch cache folder should start empty"
    hit_s = []
    for _ in range(hits):
        started = time.perf_counter()
        again = prepare_data(setup.sweep.data, setup.tokenizer, base_dir=setup.sweep_dir)
        hit_s.append(time.perf_counter() - started)
        assert again.from_cache
    started = time.perf_counter()
    again.train_tensor(), again.validation_tensor()
    to_tensors_s = time.perf_counter() - started
    progress(NAME, setup.started, f"data: miss {miss_s:.3f} s, hit median {median(hit_s):.4f} s")
    return data, {
        "miss_s": miss_s,
        "hit_s": hit_s,
        "hit_median_s": median(hit_s),
        "to_tensors_s": to_tensors_s,  # what the trial does next with the loaded splits; not part of the figure
        "train_blocks": len(data.train),
        "validation_blocks": len(data.validation),
        "block_size": setup.sweep.data.block_size,
    }


def bench_demo(setup: Setup, hits: int) -> dict[str, Any]:
    """``hits`` calls of ``ensure_demo_assets`` that find the assets ``load_sweep`` made sure of."""
    hit_s = []
    for _ in range(hits):
        started = time.perf_counter()
        assets = ensure_demo_assets()
        hit_s.append(time.perf_counter() - started)
        assert not assets.built, "load_sweep should have built the demo assets"
    progress(NAME, setup.started, f"demo assets: hit median {median(hit_s):.4f} s")
    return {"hit_s": hit_s, "hit_median_s": median(hit_s)}


# --- throughput: ftlab against Trainer ----------------------------------------------------------------------------


def throughput_config(setup: Setup, last_step: int) -> TrainConfig:
    """The demo baseline for ``last_step`` steps, logging every ``LOG_EVERY`` steps, no evaluation during training."""
    overrides = {"max_steps": last_step, "logging_steps": LOG_EVERY, "eval_tokens": None, "use_cpu": True}
    return resolve_train_config(setup.sweep, setup.sweep_dir, overrides, source=str(DEMO_SWEEP))


def run_ftlab(setup: Setup, config: TrainConfig, data: PreparedData) -> list[tuple[int, float]]:
    transformers.set_seed(config.seed)
    runtime = Runtime.for_config(config)
    model = load_model(setup.sweep, runtime)
    clock = StepClock("ftlab", config.max_steps, setup.started)
    with contextlib.suppress(BenchmarkDone):
        train(model, data.train_tensor(), data.validation_tensor(), config, runtime, FtlabMarks(clock))
    return clock.marks


def trainer_arguments(config: TrainConfig, output_dir: str) -> TrainingArguments:
    """TrainingArguments with the same hyperparameters as ``config``, as a Trainer user writes them."""
    # transformers 5 folded warmup_ratio into warmup_steps: a value below 1 is a fraction of the steps.
    warmup = config.warmup_steps if config.warmup_steps > 0 else config.warmup_ratio
    return TrainingArguments(
        output_dir=output_dir,
        use_cpu=True,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=warmup,
        weight_decay=config.weight_decay,
        optim=config.optim,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_epsilon=config.adam_epsilon,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        max_steps=config.max_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )


def run_trainer(setup: Setup, config: TrainConfig, dataset: datasets.Dataset) -> tuple[list[tuple[int, float]], str]:
    model = AutoModelForCausalLM.from_pretrained(setup.sweep.model.name_or_path)
    clock = StepClock("trainer", config.max_steps, setup.started)
    with tempfile.TemporaryDirectory(dir=setup.work) as output_dir:
        args = trainer_arguments(config, output_dir)
        # default_data_collator stacks the blocks and keeps labels = input_ids. DataCollatorForLanguageModeling would
        # set labels to -100 wherever input_ids == pad_token_id, and the demo tokenizer pads with its EOS token, so it
        # would drop every document boundary from the loss that ftlab trains on.
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=default_data_collator,
            callbacks=[TrainerMarks(clock, LOG_EVERY)],
        )
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its closing metrics; stdout is for the JSON
            trainer.train()
    return clock.marks, str(getattr(args.optim, "value", args.optim))


def bench_throughput(
    setup: Setup, data: PreparedData, repeats: int, warmup: int, steps: int
) -> tuple[dict[str, Any], float]:
    config = throughput_config(setup, warmup + steps)
    tokens_per_step = config.total_train_batch_size * setup.sweep.data.block_size
    blocks = data.train_tensor().tolist()
    dataset = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    runs: dict[str, list[float]] = {"ftlab": [], "trainer": []}
    windows: dict[str, list[float]] = {"ftlab": [], "trainer": []}
    trainer_optim = None
    for repeat in range(repeats):
        # Alternate which goes first, so that a slow drift of the machine's load hits both alike.
        order = ["ftlab", "trainer"] if repeat % 2 == 0 else ["trainer", "ftlab"]
        for phase in order:
            if phase == "ftlab":
                marks = run_ftlab(setup, config, data)
            else:
                marks, trainer_optim = run_trainer(setup, config, dataset)
            value, phase_windows = steady_tokens_per_s(marks, warmup, tokens_per_step)
            runs[phase].append(value)
            windows[phase] += phase_windows
            progress(NAME, setup.started, f"throughput {repeat + 1}/{repeats} {phase}: {value:,.0f} tokens/s")
    ftlab_tps, trainer_tps = median(runs["ftlab"]), median(runs["trainer"])
    result = {
        "warmup_steps": warmup,
        "measured_steps": steps,
        "tokens_per_step": tokens_per_step,
        "hyperparameters": {
            key: getattr(config, key)
            for key in (
                "learning_rate",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "lr_scheduler_type",
                "warmup_ratio",
                "weight_decay",
                "optim",
                "max_grad_norm",
                "seed",
                "max_steps",
            )
        },
        "trainer_optimizer": trainer_optim,
        "ftlab": {"tokens_per_s_median": ftlab_tps, "runs": runs["ftlab"], "spread": spread(runs["ftlab"])},
        "trainer": {"tokens_per_s_median": trainer_tps, "runs": runs["trainer"], "spread": spread(runs["trainer"])},
        # Paired ratios (each repeat's ftlab over its Trainer neighbour) show how much of the ratio is noise; the
        # median over every 5-step window of every run is less sensitive to a burst of load from another process.
        "paired_ratios": [f / t for f, t in zip(runs["ftlab"], runs["trainer"], strict=True)],
        "window_median_ratio": median(windows["ftlab"]) / median(windows["trainer"]),
    }
    return result, ftlab_tps / trainer_tps


# --- tracking overhead --------------------------------------------------------------------------------------------


class TimedMlflowCallback(MlflowCallback):
    """ftlab's MLflow callback, with the time the training thread spends inside its hooks added up."""

    def __init__(self, tracker: TrackedRun) -> None:
        super().__init__(tracker)
        self.seconds = 0.0

    @contextlib.contextmanager
    def _timed(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started

    def on_train_begin(self, plan: TrainPlan) -> None:
        with self._timed():
            super().on_train_begin(plan)

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        with self._timed():
            super().on_log(step, metrics)

    def on_evaluate(self, step: int, tokens_seen: int, metrics: dict[str, float]) -> None:
        with self._timed():
            super().on_evaluate(step, tokens_seen, metrics)


def bench_tracking(
    setup: Setup, data: PreparedData, repeats: int, max_steps: int | None
) -> tuple[dict[str, Any], float]:
    overrides: dict[str, Any] = {"use_cpu": True}
    if max_steps:
        overrides["max_steps"] = max_steps
    config = resolve_train_config(setup.sweep, setup.sweep_dir, overrides, source=str(DEMO_SWEEP))
    runtime = Runtime.for_config(config)
    client = MlflowClient(tracking_uri=setup.tracking_uri)
    get_or_create_experiment(client, f"{NAME}-tracking")  # creates the SQLite schema outside the timed runs
    runs: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}  # this process's CPU seconds, every thread
    blocking: list[float] = []  # share of an "on" run the training thread spent in the hooks and in ending the run
    steps = 0
    for repeat in range(repeats):
        order = ["off", "on"] if repeat % 2 == 0 else ["on", "off"]
        for phase in order:
            transformers.set_seed(config.seed)
            model = load_model(setup.sweep, runtime)
            tracker = (
                TrackedRun.start(setup.tracking_uri, f"{NAME}-tracking", f"{phase}-{repeat}") if phase == "on" else None
            )
            callback = TimedMlflowCallback(tracker) if tracker else None
            started, cpu_started = time.perf_counter(), time.process_time()
            result = train(model, data.train_tensor(), data.validation_tensor(), config, runtime, callback)
            if tracker and callback:
                end_started = time.perf_counter()
                tracker.end("FINISHED")  # sends what is still queued, as a trial's end does: part of the cost
                callback.seconds += time.perf_counter() - end_started
            seconds = time.perf_counter() - started
            cpu[phase].append(time.process_time() - cpu_started)
            if callback:
                blocking.append(callback.seconds / seconds)
            steps = result.steps
            runs[phase].append(result.steps / seconds)
            progress(
                NAME, setup.started, f"tracking {repeat + 1}/{repeats} {phase}: {result.steps / seconds:.2f} steps/s"
            )
    on, off = median(runs["on"]), median(runs["off"])
    return {
        "steps": steps,
        "logging_steps": config.logging_steps,
        "eval_tokens": config.eval_tokens,
        "tracking_uri": "sqlite (local file)",
        "on": {"steps_per_s_median": on, "runs": runs["on"], "spread": spread(runs["on"])},
        "off": {"steps_per_s_median": off, "runs": runs["off"], "spread": spread(runs["off"])},
        "paired_overheads": [1 - a / b for a, b in zip(runs["on"], runs["off"], strict=True)],
        # Two more views, for when the wall-clock difference is below the noise (see the spreads): the process's CPU
        # seconds (every thread, the logging threads too), and the time training waits inside the hooks and the final
        # flush (the part of tracking that blocks training; the logging threads' share of the cores is not in it).
        "cpu_s_median": {"on": median(cpu["on"]), "off": median(cpu["off"])},
        "cpu_overhead": median(cpu["on"]) / median(cpu["off"]) - 1,
        "blocking_fraction_median": median(blocking),
    }, 1 - on / off


# --- fixed cost of a trial ----------------------------------------------------------------------------------------


def fixed_cost_sweep_file(setup: Setup, n_trials: int) -> Path:
    """The demo sweep for one optimizer step per trial, logged at step 1, no pruning, no model artifacts."""
    raw = yaml.safe_load(DEMO_SWEEP.read_text(encoding="utf-8"))
    raw["name"] = f"{NAME}-fixed-cost"
    raw["data"]["cache_dir"] = setup.sweep.data.cache_dir  # the cache bench_data filled: trials hit it, as in a sweep
    raw["train"].update(max_steps=1, logging_steps=1)
    raw["pruner"] = {"name": "none"}
    raw["budget"] = {"n_trials": n_trials}
    raw["tracking"] = {"artifacts": "none"}
    path = setup.work / "fixed-cost.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    load_sweep(path)  # fail here, not in the subprocess, if the schema changed
    return path


def first_step_time(client: MlflowClient, run_id: str) -> float:
    """Epoch seconds at which the run logged ``train/loss`` for optimizer step 1."""
    history = [metric for metric in client.get_metric_history(run_id, "train/loss") if metric.step == 1]
    if not history:
        raise RuntimeError(f"run {run_id} logged no train/loss at step 1")
    return min(metric.timestamp for metric in history) / 1000


def run_cli(args: list[str], cwd: Path, log: Path) -> float:
    """Run ``python -m ftlab.cli ARGS`` as a user would; returns the epoch time just before the spawn."""
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("a", encoding="utf-8") as out:
        spawned = time.time()
        completed = subprocess.run(
            [sys.executable, "-m", "ftlab.cli", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if completed.returncode != 0:
        tail = log.read_text(encoding="utf-8")[-3000:]
        raise RuntimeError(f"ftlab {' '.join(args)} exited with {completed.returncode}:\n{tail}")
    return spawned


def bench_fixed_cost(setup: Setup, cold_repeats: int, fork_trials: int) -> dict[str, Any]:
    sweep_file = fixed_cost_sweep_file(setup, fork_trials)
    experiment = f"{NAME}-fixed-cost"
    client = MlflowClient(tracking_uri=setup.tracking_uri)
    experiment_id = get_or_create_experiment(client, experiment)  # the store exists before any timed process
    log = setup.work / "fixed-cost.log"
    common = ["--tracking-uri", setup.tracking_uri]

    # A cold `python -m ftlab.cli train`: every import, the config, tokenizer, cached data, run, model, one step.
    cold = []
    for repeat in range(cold_repeats):
        spawned = run_cli(
            ["train", str(sweep_file), "--set", f"output_dir={setup.work / 'trials'}", *common], setup.work, log
        )
        run = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
        first = first_step_time(client, run.info.run_id)
        cold.append(
            {
                "first_step_s": first - spawned,
                "spawn_to_run_start_s": run.info.start_time / 1000 - spawned,  # imports, config, tokenizer, data
                "run_start_to_first_step_s": first - run.info.start_time / 1000,  # params, tags, model, first step
            }
        )
        progress(NAME, setup.started, f"fixed cost, cold process {repeat + 1}/{cold_repeats}: {first - spawned:.2f} s")

    # A real sweep: trial processes fork from the fork server the sweep starts with its heavy imports preloaded.
    storage = f"sqlite:///{setup.work / 'mlruns' / 'optuna.db'}"
    run_cli(["sweep", str(sweep_file), "--storage", storage, *common], setup.work, log)
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`optuna.study_name` = '{experiment}'",
        max_results=1000,
    )
    trials = sorted(
        (run for run in children if "optuna.trial.number" in run.data.tags),  # not the sweep's parent run
        key=lambda run: int(run.data.tags["optuna.trial.number"]),
    )
    fork = []
    for run in trials:
        first = first_step_time(client, run.info.run_id)
        fork.append(
            {"trial": int(run.data.tags["optuna.trial.number"]), "first_step_s": first - run.info.start_time / 1000}
        )
    if len(fork) < 2:
        raise RuntimeError(f"the sweep ran {len(fork)} trial(s); need at least 2 (the first starts the fork server)")
    progress(NAME, setup.started, "fixed cost, forked trials: " + ", ".join(f"{t['first_step_s']:.2f} s" for t in fork))
    warm = [trial["first_step_s"] for trial in fork[1:]]
    return {
        "cold": {"median_s": median([c["first_step_s"] for c in cold]), "runs": cold},
        "fork": {
            "median_s": median(warm),
            "first_trial_s": fork[0]["first_step_s"],  # includes starting the fork server (its preload imports)
            "trials": fork,
        },
        "includes": "the first optimizer step itself (2 x 8 x 128 tokens); for forked trials also multiprocessing's "
        "re-import of the sweep process's __main__ module (ftlab.cli) in the child",
    }


# --- the whole run ------------------------------------------------------------------------------------------------


def check_targets(values: dict[str, float | None]) -> dict[str, Any]:
    targets = {}
    for key, (bound, kind, unit) in TARGETS.items():
        value = values.get(key)
        met = None if value is None else (value >= bound if kind == "min" else value <= bound)
        targets[key] = {kind: bound, "value": value, "unit": unit, "met": met}
    return targets


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trial_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side for throughput (alternated)")
    parser.add_argument("--tracking-repeats", type=int, default=5, help="runs with and without MLflow (alternated)")
    parser.add_argument("--warmup-steps", type=int, default=5, help=f"steps not timed (a multiple of {LOG_EVERY})")
    parser.add_argument(
        "--steps", type=int, default=30, help=f"steps timed after the warm-up (a multiple of {LOG_EVERY})"
    )
    parser.add_argument("--data-repeats", type=int, default=7, help="prepare_data calls that hit the cache")
    parser.add_argument("--demo-repeats", type=int, default=7, help="ensure_demo_assets calls on built assets")
    parser.add_argument("--cold-repeats", type=int, default=3, help="cold `ftlab train` processes")
    parser.add_argument("--fork-trials", type=int, default=5, help="trials of the sweep (the first starts the server)")
    parser.add_argument("--quick", action="store_true", help="1 repeat of everything and few steps: tests the script")
    parser.add_argument("--output", type=Path, default=None, help=f"result file (default: {RESULTS_DIR}/{NAME}.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = args.tracking_repeats = args.cold_repeats = 1
        args.steps, args.data_repeats, args.demo_repeats, args.fork_trials = 10, 3, 3, 2
    for name in ("repeats", "tracking_repeats", "steps", "data_repeats", "demo_repeats", "cold_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, but got {getattr(args, name)}")
    if args.fork_trials < 2:
        parser.error(f"--fork-trials must be at least 2 (the first starts the fork server), but got {args.fork_trials}")
    if args.warmup_steps < 0 or args.warmup_steps % LOG_EVERY or args.steps % LOG_EVERY:
        parser.error(f"--warmup-steps and --steps must be multiples of {LOG_EVERY}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    output = args.output or RESULTS_DIR / f"{NAME}.json"
    quiet_libraries()
    load_before = os.getloadavg()
    phases: dict[str, Any] = {}
    values: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as scratch:
        setup = make_setup(Path(scratch), started)

        def phase(name: str, fn, *fn_args):  # a failing phase is recorded, the others still run
            try:
                return fn(*fn_args)
            except Exception as error:
                traceback.print_exc(file=sys.stderr)
                phases[name] = {"error": f"{type(error).__name__}: {error}"}
                return None

        data, phases["data"] = bench_data(setup, args.data_repeats)
        values["prepare_data_cache_hit_s"] = phases["data"]["hit_median_s"]
        phases["demo"] = bench_demo(setup, args.demo_repeats)
        values["demo_assets_hit_s"] = phases["demo"]["hit_median_s"]
        if out := phase("throughput", bench_throughput, setup, data, args.repeats, args.warmup_steps, args.steps):
            phases["throughput"], values["ratio_tokens_per_s"] = out
        tracking_steps = 10 if args.quick else None
        if out := phase("tracking", bench_tracking, setup, data, args.tracking_repeats, tracking_steps):
            phases["tracking"], values["tracking_overhead"] = out
        if out := phase("fixed_cost", bench_fixed_cost, setup, args.cold_repeats, args.fork_trials):
            phases["fixed_cost"] = out
            values["fixed_cost_cold_s"] = out["cold"]["median_s"]
            values["fixed_cost_fork_s"] = out["fork"]["median_s"]

    result = {
        "benchmark": NAME,
        "machine": {**machine(), "load_average_1m": {"start": load_before[0], "end": os.getloadavg()[0]}},
        "config": {
            "sweep": str(DEMO_SWEEP.relative_to(REPO_ROOT)),
            "quick": args.quick,
            "repeats": args.repeats,
            "tracking_repeats": args.tracking_repeats,
            "warmup_steps": args.warmup_steps,
            "steps": args.steps,
            "data_repeats": args.data_repeats,
            "demo_repeats": args.demo_repeats,
            "cold_repeats": args.cold_repeats,
            "fork_trials": args.fork_trials,
        },
        "phases": phases,
        "targets": check_targets(values),
        "wall_s": time.perf_counter() - started,
    }
    print(json.dumps(result), flush=True)  # first, so that the numbers survive a failing write
    for path in write_result(result, output):
        progress(NAME, started, f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
