#!/usr/bin/env bash
# Issue 12's GPU checks in one command on a CUDA machine that has its own Python with torch and no network:
# benchmarks/gpu_xl.py (the documented recipe's step, ftlab against Trainer), then benchmarks/gpu_sweep.py (a real
# `ftlab sweep` and `ftlab best --export` through the CLI, with its checks). Results go to $OUT.
#
#   bash benchmarks/gpu_run.sh --fetch-wheels   # HERE, once, with the package index: the packages ftlab needs and
#                                               # the GPU machine lacks, as Python 3.12 wheels in .whl/ (~29 MB,
#                                               # git-ignored; versions: this checkout's .venv, the ones tested here)
#   bash benchmarks/gpu_run.sh                  # THERE: device tool `run`, carry [".whl"], timeout_s 600
#   bash benchmarks/gpu_run.sh xl               # one part only (xl, sweep or group)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh --tiny   # the same plumbing here on the CPU, ~2-3 minutes
#
# Expected wall time on one H200 (or H100), about 8 minutes of the 10 one command may take:
#   setup: install the wheels into /tmp/ftlab-site, record versions, import everything a sweep imports   ~20 s
#   gpu_xl: GPT-2 XL, 5 phases (ftlab 4x32, 8x16, 16x8; Trainer 4x32, plain and with ftlab's model speed-ups)
#           taking turns twice, 1 + 3 optimizer steps of 128 x 1024 tokens each run       ~4.5 min (killed at 320 s)
#   gpu_sweep: stdlib text, BPE tokenizer, random GPT-2 small; 4 trials (2 retried after a real CUDA OOM, pruned),
#           status, export                                                               ~3 min (killed at 230 s)
#   group:  only where the machine has 2 GPUs or more (else "skipped" in group.txt): benchmarks/trial_group.py
#           --device cuda, GPT-2 small fp32, 30 steps in one process on one GPU, then as a trial of 2 processes
#           on 2 GPUs (NCCL) under DDP and under FSDP; losses compared, step times      ~2 min (killed at 180 s)
#
# Afterwards, in $OUT (copy the .json and .log files to benchmarks/results/ and commit them):
#   env.txt          Python, torch, CUDA, the GPU, the versions of the packages used, whether ftlab imported
#   gpu_xl.json      phases.*: step_ms {min, median, max}, tokens_per_s, mfu {ftlab, llm_c}, peak_mem_gb, errors (a
#                    micro-batch that did not fit); fastest_ftlab; ratios (the loop's own share against the model
#                    speed-ups'); targets (MFU >= 0.45 in ftlab's convention, peak <= 60 GB); config.mfu_conventions
#   gpu_xl.log       progress and the traceback of any phase that failed
#   gpu_sweep.json   checks.*.ok: all true (or null where skipped); trials: states, OOM retries, tokens/s, peak
#                    memory; timings_s
#   gpu_sweep.log    the output of `ftlab sweep`, `ftlab status --json` and `ftlab best --export --json`
#   gpu_sweep.stderr.log   the script's progress
#   trial_group_cuda.json  runs.*: wall_s, step_ms, start_s, eval/train loss and their relative difference from the
#                    1-GPU run; ratios_to_1_process (group.log: its progress)
# Exit status: 0 when both parts passed, else 1.

set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
SITE=/tmp/ftlab-site
# What a sweep imports that the GPU machine's image does not have (it has torch, transformers, accelerate,
# tokenizers, safetensors, huggingface-hub, numpy, pandas, pyarrow, fsspec, psutil, rich, typer, ...: see the device
# notes' package list). Found by recording the modules every process of a tiny sweep and export had loaded.
MISSING="alembic annotated-types cachetools cffi colorlog cryptography databricks-sdk datasets dill fastapi google-auth
importlib-metadata mako mlflow-skinny nvidia-ml-py multiprocess opentelemetry-api opentelemetry-proto opentelemetry-sdk
opentelemetry-semantic-conventions optuna plotly pydantic pydantic-core sqlalchemy sqlparse starlette tenacity
typing-inspection typing-extensions"

fetch_wheels() {
    local python=${PYTHON:-.venv/bin/python} specs
    specs=$("$python" -c 'import importlib.metadata as m, sys; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $MISSING) || return
    rm -rf "$WHEELS" && mkdir -p "$WHEELS" || return
    # The GPU machine runs CPython 3.12 on x86-64; --no-deps: each dependency it lacks is named above.
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" $specs || return
    du -sh "$WHEELS"
}

setup() {
    if [[ -z $TINY ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl || return
    fi
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    "$PYTHON" - <<'EOF'
import importlib.metadata as metadata
import shutil
import subprocess
import sys

print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "transformers", "accelerate", "tokenizers", "datasets", "optuna", "mlflow-skinny", "pydantic",
             "sqlalchemy", "pyarrow", "numpy", "pandas", "huggingface-hub", "fsspec", "plotly", "typer"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "MISSING")
if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version", "--format=csv"]
    smi = subprocess.run(query, capture_output=True, text=True)
    print(smi.stdout or smi.stderr)
else:
    print("no nvidia-smi")
import ftlab.cli, ftlab.export.export, ftlab.sweep.report, ftlab.sweep.trial_process  # all a sweep's processes load
print("ftlab imports: ok")
EOF
}

TINY=""
PARTS=()
for arg in "$@"; do
    case $arg in
        --fetch-wheels) fetch_wheels; exit ;;
        --tiny) TINY=--tiny ;;
        xl | sweep | group) PARTS+=("$arg") ;;
        *) echo "usage: bash benchmarks/gpu_run.sh [--fetch-wheels | [--tiny] [xl] [sweep] [group]]" >&2; exit 2 ;;
    esac
done
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(xl sweep group)
PYTHON=${PYTHON:-python3}
export OUT=${OUT:-$(mktemp -d -t ftlab-gpu-run-XXXX)}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
# --tiny keeps its results under $OUT: the tiny figures do not belong in benchmarks/results/.
RESULTS=${RESULTS:-$([[ -n $TINY ]] && echo "$OUT/results" || echo benchmarks/results)}
SUFFIX=${TINY:+_tiny}
echo "results in $OUT" >&2

setup >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >&2
status=0
for part in "${PARTS[@]}"; do
    if [[ $part == xl ]]; then
        timeout --kill-after=20 320 "$PYTHON" -m benchmarks.gpu_xl $TINY --time-budget-s 270 \
            --output "$RESULTS/gpu_xl$SUFFIX.json" 2> >(tee "$OUT/gpu_xl$SUFFIX.log" >&2) || status=1
    elif [[ $part == group ]]; then
        gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
        if [[ -n $TINY ]]; then  # the same plumbing on the CPU: gloo, the small CPU model, few steps
            timeout --kill-after=20 180 "$PYTHON" -m benchmarks.trial_group --quick \
                --output "$RESULTS/trial_group$SUFFIX.json" 2> >(tee "$OUT/group$SUFFIX.log" >&2) || status=1
        elif [[ ${gpus:-0} -ge 2 ]]; then
            timeout --kill-after=20 180 "$PYTHON" -m benchmarks.trial_group --device cuda --micro-batch 8 \
                --output "$RESULTS/trial_group_cuda.json" 2> >(tee "$OUT/group.log" >&2) || status=1
        else
            echo "skipped: ${gpus:-0} GPU(s) here, the 2-process cases need 2" | tee "$OUT/group.txt" >&2
        fi
    else
        timeout --kill-after=20 230 "$PYTHON" -m benchmarks.gpu_sweep $TINY --timeout-s 150 \
            --output "$RESULTS/gpu_sweep$SUFFIX.json" 2> >(tee "$OUT/gpu_sweep$SUFFIX.stderr.log" >&2) || status=1
    fi
done
echo "results in $OUT: $(ls "$OUT" | tr '\n' ' ')" >&2
exit $status
