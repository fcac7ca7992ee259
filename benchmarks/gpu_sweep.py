"""A real ftlab sweep on a GPU, end to end, through the command line, with checks of what a GPU adds.

Run from the repo root:

    python -m benchmarks.gpu_sweep           # a CUDA machine: GPT-2 small shape, about 3 minutes on an H100 or H200
    python -m benchmarks.gpu_sweep --tiny    # a 2-layer model on the CPU, about 1 to 2 minutes; GPU checks skipped

Nothing is downloaded. The script builds, in a work folder: text (the standard library's own sources, as the demo
does), a byte-level BPE tokenizer trained on it, and a GPT-2-architecture model with random weights
(``save_pretrained``); then a sweep file, and runs the real CLI in subprocesses:

1. ``ftlab sweep``: Optuna's grid sampler over the learning rate (the baseline's and 3×) and the micro-batch (the
   baseline's, and one that cannot fit: 512 sequences of 1024 tokens need several times the memory of a 141 GB
   card), four trials, pruned by successive halving. The grid's seed runs the baseline's point first, so every later
   trial meets it at the first rung; the trials at the huge micro-batch have done one optimizer step (at a warm-up
   learning rate of 0) there, and are pruned. Their first attempt runs out of CUDA memory and ftlab retries it with
   half the micro-batch and twice the accumulation until it fits. ``--tiny`` gets the same retry from ftlab's
   test-only fault injection (``tests/support/faults.py`` with ``FTLAB_INJECT_FAULT=oom_at_step=1,oom_above_batch=4``:
   a card on which 4 sequences fit and 8 do not).
2. ``ftlab status --json`` and ``ftlab best --export DIR --json``.

While the sweep runs, the process tree and ``nvidia-smi`` are sampled every half second. Checks, each
``{"ok": true/false/null, ...figures}`` (null: skipped, with the reason):

- ``sweep_exit``: ``ftlab sweep`` exited 0.
- ``trials``: at least 4 trials, the baseline among them, at least one PRUNED, none left unfinished.
- ``runs_match_states``: one MLflow parent run; every trial a child run of it in the matching state (COMPLETE ↔
  FINISHED, PRUNED ↔ KILLED, FAIL ↔ FAILED).
- ``perf_metrics``: every trial's run holds ``perf/tokens_per_second`` and ``perf/peak_memory_mb``.
- ``oom_retry``: every trial sampled at the micro-batch that cannot fit has the ``ftlab.oom_retries`` tag (and no
  other trial has it).
- ``export``: the exported folder is the best trial's, and loads and runs with plain ``AutoModelForCausalLM``.
- ``fork_server_no_cuda`` (GPU): the fork server that trial processes are forked from never initialised CUDA. It never
  appears among ``nvidia-smi``'s compute processes (which list every process holding a CUDA context), the CUDA driver
  library (libcuda) is never mapped into it (``/proc/PID/maps``; the driver is loaded on CUDA's first use, not by
  ``import torch``), and every trial ran on CUDA after the fork: CUDA cannot be initialised in a process forked
  from one that had (torch raises), so trials that ran on CUDA prove it from the other side.
- ``gpu_memory_released`` (GPU): after each trial process ends, the GPU's used memory, less what live CUDA processes
  hold, is back to the idle level measured before the sweep (within 256 MiB); and it is at that level after the sweep.

Prints one JSON line on stdout and writes it to ``benchmarks/results/gpu_sweep.json`` (``gpu_sweep_tiny.json`` with
``--tiny``), and the commands' output to ``gpu_sweep.log`` beside it; both to ``$OUT`` too when that is set. Exits 1
when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks._common import RESULTS_DIR, progress, write_output, write_result

NAME = "gpu_sweep"
REPO_ROOT = Path(__file__).resolve().parent.parent
EOS_TOKEN = "<|endoftext|>"
GRID_SEED = 5  # Optuna's grid with this seed runs (lr, fits), (lr, too big), (3·lr, fits), (3·lr, too big)
SAMPLE_EVERY_S = 0.5
IDLE_TOLERANCE_MIB = 256
RELEASE_WINDOW_S = 15.0  # how long after a trial process ends its memory may take to show as released


@dataclass(frozen=True)
class Size:
    """Everything that differs between the GPU run and ``--tiny``."""

    sweep_name: str
    n_layer: int
    n_embd: int
    n_head: int
    block_size: int
    tokenizer_vocab: int
    model_vocab: int  # GPT-2's 50,257 on the GPU: the output layer's real width (ids past the tokenizer's go unused)
    source_chars: int  # standard-library source text to read
    max_train_blocks: int
    max_eval_blocks: int
    micro_batch: int  # the baseline's: fits
    too_big_micro_batch: int  # cannot fit (on the GPU for real; on the CPU by the injected fault)
    learning_rate: float
    use_cpu: bool
    fault: str | None = None  # FTLAB_INJECT_FAULT for the sweep

    @property
    def eval_tokens(self) -> int:
        """One optimizer step at the micro-batch that cannot fit: its trials meet the first rung after one step."""
        return self.too_big_micro_batch * self.block_size


GPU = Size(
    sweep_name="gpu-sweep",
    n_layer=12,
    n_embd=768,
    n_head=12,
    block_size=1024,
    tokenizer_vocab=8192,
    model_vocab=50257,
    source_chars=16_000_000,
    max_train_blocks=2048,  # 2.1M tokens: 128 steps at the baseline's 16 × 1024, 4 at 512 × 1024
    max_eval_blocks=64,
    micro_batch=16,
    too_big_micro_batch=512,  # GPT-2 small needs roughly 1 GB per 1024-token sequence in training: 512 need ~500 GB
    learning_rate=6e-4,
    use_cpu=False,
)
TINY = Size(
    sweep_name="gpu-sweep-tiny",
    n_layer=2,
    n_embd=64,
    n_head=2,
    block_size=64,
    tokenizer_vocab=512,
    model_vocab=512,
    source_chars=600_000,
    max_train_blocks=128,
    max_eval_blocks=16,
    micro_batch=4,
    too_big_micro_batch=16,
    learning_rate=1e-3,
    use_cpu=True,
    fault="oom_at_step=1,oom_above_batch=4",  # what a card on which 4 sequences fit and 8 do not would do
)


# --- assets: text, tokenizer, model ----------------------------------------------------------------------------------


def write_text(size: Size, path: Path) -> int:
    """The standard library's sources, one JSON-lines document per file; how many documents."""
    from ftlab.demo import DemoRecipe, stdlib_sources

    # file_chars above the largest module's (~230k characters): every file whole, one document each.
    sources = stdlib_sources(DemoRecipe(source_chars=size.source_chars, file_chars=500_000))
    path.write_text("".join(json.dumps({"text": source}) + "\n" for source in sources), encoding="utf-8")
    return len(sources)


def build_tokenizer(size: Size, text_file: Path) -> Any:
    """A GPT-2-style byte-level BPE tokenizer trained on the text, wrapped as transformers' GPT2TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size.tokenizer_vocab,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, so nothing is ever unknown
        show_progress=False,
    )
    with text_file.open(encoding="utf-8") as lines:
        tokenizer.train_from_iterator((json.loads(line)["text"] for line in lines), trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=size.block_size,
    )


def build_model(size: Size, tokenizer: Any, model_dir: Path) -> int:
    """A GPT-2 with random weights and the tokenizer, saved as a Hugging Face folder; its parameter count."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = GPT2Config(
        vocab_size=max(size.model_vocab, len(tokenizer)),
        n_positions=size.block_size,
        n_embd=size.n_embd,
        n_layer=size.n_layer,
        n_head=size.n_head,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)  # on the CPU: this process must not touch CUDA (nvidia-smi would list it)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters())


def write_sweep(size: Size, model_dir: Path, text_file: Path, path: Path) -> dict[str, Any]:
    """The sweep file: a grid over the learning rate and the micro-batch, one point of which cannot fit."""
    lr = size.learning_rate
    sweep = {
        "name": size.sweep_name,
        "model": {"name_or_path": str(model_dir)},
        "data": {
            "train_files": [str(text_file)],
            "block_size": size.block_size,
            "validation_fraction": 0.05,
            "max_train_blocks": size.max_train_blocks,
            "max_eval_blocks": size.max_eval_blocks,
        },
        "baseline": {
            "learning_rate": lr,
            "per_device_train_batch_size": size.micro_batch,
            "per_device_eval_batch_size": size.micro_batch,
            "gradient_accumulation_steps": 1,
            "warmup_ratio": 0.1,  # a first step at learning rate 0: a trial is at its initial loss after one step
        },
        "train": {
            "num_train_epochs": 1,
            "eval_tokens": size.eval_tokens,
            "logging_steps": 4,
            "seed": 0,
            "save_steps": 0,  # no resumable checkpoints: a trial is seconds long, and one with Adam state is 1.5 GB
            "use_cpu": size.use_cpu,
        },
        "search": {
            "learning_rate": {"choices": [lr, 3 * lr]},
            "per_device_train_batch_size": {"choices": [size.micro_batch, size.too_big_micro_batch]},
        },
        "objective": "eval/loss",
        "sampler": {"name": "grid", "seed": GRID_SEED},
        "pruner": {"name": "successive_halving", "reduction_factor": 2},
        "budget": {"n_trials": 4, "max_trials": 4},
    }
    header = "# Written by benchmarks/gpu_sweep.py; run with: ftlab sweep sweep.yaml\n"
    path.write_text(header + yaml.safe_dump(sweep, sort_keys=False), encoding="utf-8")
    return sweep


@dataclass(frozen=True)
class Assets:
    """What ``build_assets`` made: the sweep file's content, and figures about the text and the model."""

    sweep: dict[str, Any]
    facts: dict[str, Any]


def build_assets(size: Size, work: Path) -> Assets:
    """Text, tokenizer, model and sweep file in ``work``."""
    text_file, model_dir, sweep_file = work / "data" / "stdlib.jsonl", work / "model", work / "sweep.yaml"
    text_file.parent.mkdir(parents=True, exist_ok=True)
    documents = write_text(size, text_file)
    tokenizer = build_tokenizer(size, text_file)
    params = build_model(size, tokenizer, model_dir)
    sweep = write_sweep(size, model_dir, text_file, sweep_file)
    facts = {"documents": documents, "text_mb": text_file.stat().st_size / 1e6, "tokenizer_vocab": len(tokenizer)}
    return Assets(sweep, facts | {"params": params})


# --- watching the sweep: process tree and GPU memory -----------------------------------------------------------------


def nvidia_smi(*query: str) -> list[list[str]] | None:
    """Rows of ``nvidia-smi --query-…`` as CSV fields; None if nvidia-smi is missing or fails."""
    try:
        out = subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def mib(cell: str) -> float | None:
    """A memory figure from nvidia-smi; None for ``[N/A]`` and the like."""
    try:
        return float(cell)
    except ValueError:
        return None


def gpu_memory_used_mib() -> float | None:
    rows = nvidia_smi("--query-gpu=memory.used")
    return mib(rows[0][0]) if rows else None


def compute_apps() -> dict[int, float | None]:
    """The processes that hold a CUDA context on the GPU, with the memory each uses (None where not reported)."""
    rows = nvidia_smi("--query-compute-apps=pid,used_memory") or []
    return {int(row[0]): mib(row[1]) for row in rows if len(row) == 2 and row[0].isdigit()}


def maps_libcuda(pid: int) -> bool | None:
    """Whether the CUDA driver library is mapped into process ``pid``; None if its maps cannot be read."""
    try:
        return "libcuda.so" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


@dataclass
class Sample:
    """One look at the sweep: when, the GPU's used memory, its CUDA processes, the fork server and its children."""

    t: float
    memory_mib: float | None
    apps: dict[int, float | None]
    fork_server: int | None
    forked: set[int]
    libcuda_in_fork_server: bool | None


@dataclass
class Monitor:
    """Samples the sweep's process tree, and on a GPU nvidia-smi, while ``ftlab sweep`` runs."""

    gpu: bool
    idle_mib: float | None = None
    samples: list[Sample] = field(default_factory=list)

    def sample(self, sweep_pid: int) -> None:
        fork_server, forked = None, set()
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(sweep_pid).children():
                if "forkserver" in " ".join(child.cmdline()):  # multiprocessing's fork server runs `-c …forkserver…`
                    fork_server, forked = child.pid, {grandchild.pid for grandchild in child.children()}
        self.samples.append(
            Sample(
                t=time.monotonic(),
                memory_mib=gpu_memory_used_mib() if self.gpu else None,
                apps=compute_apps() if self.gpu else {},
                fork_server=fork_server,
                forked=forked,
                libcuda_in_fork_server=maps_libcuda(fork_server) if fork_server else None,
            )
        )

    def final(self) -> None:
        """One more sample once the sweep has exited: nothing of it may hold GPU memory any more."""
        self.samples.append(
            Sample(time.monotonic(), gpu_memory_used_mib() if self.gpu else None, {}, None, set(), None)
        )

    def fork_server(self) -> dict[str, Any]:
        servers = {s.fork_server for s in self.samples if s.fork_server}
        seen_in_apps = {pid for s in self.samples for pid in s.apps}
        forked = set().union(*(s.forked for s in self.samples))
        return {
            "fork_server_pids": sorted(servers),
            "forked_processes": len(forked),
            "cuda_processes": len(forked & seen_in_apps),
            "fork_server_in_compute_apps": bool(servers & seen_in_apps),
            "libcuda_mapped_in_fork_server": any(s.libcuda_in_fork_server for s in self.samples),
            "samples": len(self.samples),
        }

    def watched(self) -> tuple[set[int], str]:
        """The processes whose end must give the GPU's memory back, and how they were found."""
        forked = set().union(*(s.forked for s in self.samples))
        cuda = forked & {pid for s in self.samples for pid in s.apps}
        if cuda:
            return cuda, "forked processes nvidia-smi listed as CUDA processes"
        # Some virtual machines' nvidia-smi lists no process at all: then every forked process is watched.
        return forked, "every forked process (nvidia-smi listed no CUDA process)"

    def released(self) -> list[dict[str, Any]]:
        """For each watched process, in the order they ended: how soon after its end the GPU was back to idle."""
        return [self._release_of(pid) for pid in sorted(self.watched()[0], key=self._last_seen)]

    def _last_seen(self, pid: int) -> float:
        return max(s.t for s in self.samples if pid in s.forked or pid in s.apps)

    def _release_of(self, pid: int) -> dict[str, Any]:
        ended = self._last_seen(pid)
        for s in self.samples:
            if not ended < s.t <= ended + RELEASE_WINDOW_S or pid in s.apps or s.memory_mib is None:
                continue
            if any(used is None for used in s.apps.values()):
                continue  # a live process whose share nvidia-smi does not report: this sample cannot tell
            residual = s.memory_mib - sum(used for used in s.apps.values() if used is not None)
            if self.idle_mib is not None and residual <= self.idle_mib + IDLE_TOLERANCE_MIB:
                return {"pid": pid, "released": True, "residual_mib": residual, "after_s": round(s.t - ended, 2)}
        return {"pid": pid, "released": False, "residual_mib": None, "after_s": None}


# --- running the CLI --------------------------------------------------------------------------------------------------


@dataclass
class Log:
    """The commands' output, in order, for the log file."""

    parts: list[str] = field(default_factory=list)

    def add(self, title: str, text: str) -> None:
        self.parts.append(f"==== {title}\n{text.rstrip()}\n")

    def text(self) -> str:
        return "\n".join(self.parts)


def cli_env(work: Path, size: Size) -> dict[str, str]:
    """The CLI's environment: offline, ftlab's home and stores in the work folder, the size's fault if any."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FTLAB_HOME": str(work / "home")}
    # The CLI runs in the work folder: ftlab comes from this checkout, installed or not (on the GPU machine it is
    # only files).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env.pop("MLFLOW_TRACKING_URI", None)  # the sweep's own store: work/mlruns
    env.pop("FTLAB_INJECT_FAULT", None)
    env.pop("FTLAB_TRAINING_CALLBACKS", None)  # ftlab.training.plugins.ENV_VAR
    if size.fault:
        from tests.support.faults import fault_env  # the package ships no faults: the tests' own, through its hook

        env.update(fault_env(size.fault))
    return env


def ftlab_command(*args: str) -> list[str]:
    """The CLI as its console script runs it (``ftlab.cli:main``), from this interpreter."""
    return [sys.executable, "-m", "ftlab.cli", *args]


def run_cli(work: Path, env: dict[str, str], log: Log, timeout: float, *args: str) -> tuple[int, str, float]:
    """Run one ftlab command to its end; (exit code, stdout, seconds). Its output goes to the log."""
    begun = time.monotonic()
    try:
        done = subprocess.run(ftlab_command(*args), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as expired:
        code, out, err = 124, str(expired.stdout or ""), f"timed out after {timeout:.0f} s\n{expired.stderr or ''}"
    log.add(f"ftlab {' '.join(args)} (exit {code})", out + ("\n---- stderr\n" + err if err.strip() else ""))
    return code, out, time.monotonic() - begun


def run_sweep(work: Path, env: dict[str, str], log: Log, monitor: Monitor, timeout: float) -> tuple[int, float]:
    """``ftlab sweep`` in a subprocess, sampled every half second; (exit code, seconds). Ctrl-C, then SIGKILL, at
    the timeout."""
    output = work / "sweep.out"
    begun = time.monotonic()
    with output.open("w") as sink:
        process = subprocess.Popen(
            ftlab_command("sweep", "sweep.yaml"), cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
        while process.poll() is None:
            monitor.sample(process.pid)
            if time.monotonic() - begun > timeout:
                process.send_signal(signal.SIGINT)  # trials end KILLED, as a user's Ctrl-C would
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
                process.kill()
            time.sleep(SAMPLE_EVERY_S)
    code = process.wait()
    log.add(f"ftlab sweep sweep.yaml (exit {code})", output.read_text(errors="replace"))
    return code, time.monotonic() - begun


def parse_json(text: str) -> Any:
    """The JSON a ``--json`` command printed, or None."""
    try:
        return json.loads(text)
    except ValueError:
        return None


# --- checks -----------------------------------------------------------------------------------------------------------

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def check(ok: bool, **figures: Any) -> dict[str, Any]:
    return {"ok": ok, **figures}


def skipped(reason: str, **figures: Any) -> dict[str, Any]:
    return {"ok": None, "skipped": reason, **figures}


def trial_runs(work: Path, sweep_name: str) -> tuple[list[Any], list[Any]]:
    """The sweep's MLflow runs from its store: (parent runs, child runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    return parents, [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def check_trials(trials: list[dict[str, Any]]) -> dict[str, Any]:
    states = [trial["state"] for trial in trials]
    counts = {state: states.count(state) for state in sorted(set(states))}
    baseline = [trial["number"] for trial in trials if trial["baseline"]]
    ok = len(trials) >= 4 and len(baseline) == 1 and "PRUNED" in counts and set(counts) <= set(RUN_STATUS)
    return check(ok, count=len(trials), states=counts, baseline_trial=baseline[0] if baseline else None)


def check_runs(trials: list[dict[str, Any]], parents: list[Any], children: list[Any]) -> dict[str, Any]:
    by_id = {run.info.run_id: run for run in children}
    parent_id = parents[0].info.run_id if len(parents) == 1 else None
    pairs = []
    for trial in trials:
        run = by_id.get(trial["mlflow_run_id"])
        nested = run is not None and run.data.tags.get("mlflow.parentRunId") == parent_id
        status = run.info.status if run else None
        pairs.append({"trial": trial["number"], "state": trial["state"], "run_status": status, "nested": nested})
    ok = parent_id is not None and len(children) == len(trials)
    ok = ok and all(p["nested"] and RUN_STATUS.get(p["state"]) == p["run_status"] for p in pairs)
    return check(ok, parent_runs=len(parents), child_runs=len(children), trials=pairs)


PERF_METRICS = ("perf/tokens_per_second", "perf/peak_memory_mb")


def check_perf(trials: list[dict[str, Any]], children: list[Any]) -> dict[str, Any]:
    by_id = {run.info.run_id: run for run in children}
    figures = {}
    for trial in trials:
        metrics = by_id[trial["mlflow_run_id"]].data.metrics if trial["mlflow_run_id"] in by_id else {}
        figures[str(trial["number"])] = {name: metrics.get(name) for name in PERF_METRICS}
    ok = bool(figures) and all(value is not None for trial in figures.values() for value in trial.values())
    return check(ok, trials=figures)


def check_oom(trials: list[dict[str, Any]], children: list[Any], size: Size) -> dict[str, Any]:
    by_id = {run.info.run_id: run for run in children}
    retries = {}
    for trial in trials:
        tags = by_id[trial["mlflow_run_id"]].data.tags if trial["mlflow_run_id"] in by_id else {}
        retries[str(trial["number"])] = tags.get("ftlab.oom_retries")
    too_big = {
        str(trial["number"])
        for trial in trials
        if trial["params"].get("per_device_train_batch_size") == size.too_big_micro_batch
    }
    ok = bool(too_big) and all(bool(retries[n]) == (n in too_big) for n in retries)
    cause = f"injected: FTLAB_INJECT_FAULT={size.fault}" if size.fault else "CUDA out of memory"
    return check(ok, micro_batch_that_cannot_fit=size.too_big_micro_batch, cause=cause, retries=retries)


def check_export(code: int, best: Any, export_dir: Path, best_trial: int | None) -> dict[str, Any]:
    """The export exited 0, is the best trial's, and loads and runs with plain transformers (on the CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if code != 0 or not isinstance(best, dict):
        return check(False, exit_code=code)
    model = AutoModelForCausalLM.from_pretrained(export_dir)
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    with torch.no_grad():
        logits = model(**tokenizer("def main():\n    return 0\n", return_tensors="pt")).logits
    provenance = json.loads((export_dir / "ftlab.json").read_text(encoding="utf-8"))
    trial = best.get("trial")
    ok = trial == best_trial and bool(torch.isfinite(logits).all()) and (export_dir / "README.md").is_file()
    return check(
        ok,
        dir=str(export_dir),
        trial=trial,
        provenance_trial=provenance.get("trial"),
        eval_loss_measured=best.get("export", {}).get("eval_loss_measured"),
        weights_from=best.get("export", {}).get("weights_from"),
    )


def check_fork_server(monitor: Monitor, children: list[Any], gpu: bool) -> dict[str, Any]:
    figures = monitor.fork_server()
    devices = sorted({run.data.tags.get("device", "?") for run in children})
    if not gpu:
        return skipped("no CUDA", **figures, trial_devices=devices)
    ok = (
        bool(figures["fork_server_pids"])
        and not figures["fork_server_in_compute_apps"]
        and not figures["libcuda_mapped_in_fork_server"]
        and bool(devices)
        and all(device.startswith("cuda") for device in devices)
    )
    return check(ok, **figures, trial_devices=devices)


def check_memory(monitor: Monitor, gpu: bool) -> dict[str, Any]:
    if not gpu:
        return skipped("no CUDA")
    after_each = monitor.released()
    after_sweep = monitor.samples[-1].memory_mib if monitor.samples else None
    idle = monitor.idle_mib
    at_idle = None not in (idle, after_sweep) and after_sweep <= idle + IDLE_TOLERANCE_MIB
    ok = bool(after_each) and all(entry["released"] for entry in after_each) and at_idle
    return check(
        ok,
        idle_mib=idle,
        tolerance_mib=IDLE_TOLERANCE_MIB,
        after_sweep_mib=after_sweep,
        watched=monitor.watched()[1],
        after_each_process=after_each,
    )


def trial_table(trials: list[dict[str, Any]], children: list[Any]) -> list[dict[str, Any]]:
    """One line per trial for the JSON: state, params, objective, what ran, throughput and memory."""
    by_id = {run.info.run_id: run for run in children}
    table = []
    for trial in trials:
        run = by_id.get(trial["mlflow_run_id"])
        tags, metrics = (run.data.tags, run.data.metrics) if run else ({}, {})
        table.append(
            {
                "number": trial["number"],
                "state": trial["state"],
                "baseline": trial["baseline"],
                "params": trial["params"],
                "eval_loss": trial["eval_loss"],
                "oom_retries": tags.get("ftlab.oom_retries"),
                "applied_micro_batch": tags.get("ftlab.applied.per_device_train_batch_size"),
                "duration_s": trial["duration_s"],
                "tokens_per_second": metrics.get("perf/tokens_per_second"),
                "peak_memory_mb": metrics.get("perf/peak_memory_mb"),
                "device": tags.get("device"),
                "reason": trial["reason"],
            }
        )
    return table


# --- main -------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer model on the CPU; the GPU checks are skipped")
    parser.add_argument("--work", type=Path, default=None, help="work folder, kept (default: a temporary one)")
    parser.add_argument("--timeout-s", type=float, default=360.0, help="for `ftlab sweep` (Ctrl-C, then kill)")
    parser.add_argument("--output", type=Path, default=None, help=f"result file (default: {RESULTS_DIR}/{NAME}.json)")
    return parser.parse_args(argv)


def gpu_name() -> str | None:
    """The GPU's name from nvidia-smi (this process never touches CUDA itself); None without one."""
    rows = nvidia_smi("--query-gpu=name")
    return rows[0][0] if rows else None


@contextlib.contextmanager
def work_folder(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    folder = Path(tempfile.mkdtemp(prefix="ftlab-gpu-sweep-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_and_check(size: Size, work: Path, gpu: bool, args: argparse.Namespace, started: float, log: Log) -> dict:
    """Build the assets, run the CLI, and check what it left; the result's body."""
    timings: dict[str, float] = {}
    begun = time.monotonic()
    assets = build_assets(size, work)
    timings["assets_s"] = time.monotonic() - begun
    progress(NAME, started, f"assets in {work}: {json.dumps(assets.facts)}")
    env = cli_env(work, size)
    monitor = Monitor(gpu, idle_mib=gpu_memory_used_mib() if gpu else None)
    code, timings["sweep_s"] = run_sweep(work, env, log, monitor, args.timeout_s)
    monitor.final()
    progress(NAME, started, f"ftlab sweep exited {code}")
    _, status_out, timings["status_s"] = run_cli(work, env, log, 120, "status", "sweep.yaml", "--json")
    status = parse_json(status_out) or {"trials": [], "best": None}
    export_dir = work / "export"
    export_code, best_out, timings["export_s"] = run_cli(
        work, env, log, 180, "best", "sweep.yaml", "--export", str(export_dir), "--json"
    )
    progress(NAME, started, f"ftlab best --export exited {export_code}")
    trials = status["trials"]
    parents, children = trial_runs(work, size.sweep_name)
    best_trial = (status.get("best") or {}).get("best_trial")
    checks = {
        "sweep_exit": check(code == 0, exit_code=code),
        "trials": check_trials(trials),
        "runs_match_states": check_runs(trials, parents, children),
        "perf_metrics": check_perf(trials, children),
        "oom_retry": check_oom(trials, children, size),
        "export": check_export(export_code, parse_json(best_out), export_dir, best_trial),
        "fork_server_no_cuda": check_fork_server(monitor, children, gpu),
        "gpu_memory_released": check_memory(monitor, gpu),
    }
    return {
        "assets": assets.facts,
        "sweep_file": assets.sweep,
        "checks": checks,
        "ok": all(c["ok"] is not False for c in checks.values()),
        "trials": trial_table(trials, children),
        "best": status.get("best"),
        "timings_s": timings,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    size = TINY if args.tiny else GPU
    device = "cpu" if args.tiny else gpu_name()
    if device is None:
        sys.exit("no GPU found by nvidia-smi: run with --tiny for the CPU version")
    output = args.output or RESULTS_DIR / f"{NAME}{'_tiny' if args.tiny else ''}.json"
    log = Log()
    with work_folder(args.work) as work:
        body = sweep_and_check(size, work, not args.tiny, args, started, log)
    import mlflow
    import optuna
    import torch
    import transformers

    result = {
        "benchmark": NAME,
        "device": device,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "optuna": optuna.__version__,
            "mlflow": mlflow.__version__,
        },
        "config": {"tiny": args.tiny, **asdict(size), "eval_tokens": size.eval_tokens, "grid_seed": GRID_SEED},
        **body,
        "wall_s": time.perf_counter() - started,
    }
    print(json.dumps(result), flush=True)  # first, so that the figures survive a failing write
    written = write_result(result, output) + write_output(log.text(), output.with_suffix(".log"))
    for path in written:
        progress(NAME, started, f"wrote {path}")
    failed = [name for name, outcome in result["checks"].items() if outcome["ok"] is False]
    progress(NAME, started, f"checks failed: {', '.join(failed)}" if failed else "every check passed")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
