# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 is a CPU build on this project's machines; on a GPU machine install your CUDA torch first
# (TORCH_SPEC= make setup keeps what is there).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-slow test-browser lint bench-cpu bench-sweep bench-gpu clean

$(BIN)/ftlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) -e '.[dev,dashboard]'
	touch $(BIN)/ftlab

setup: $(BIN)/ftlab

demo: setup
	$(BIN)/ftlab demo-assets
	$(BIN)/ftlab sweep sweeps/demo.yaml
	$(BIN)/ftlab confirm sweeps/demo.yaml --top 1 --seeds 3
	$(BIN)/ftlab status sweeps/demo.yaml
	$(BIN)/ftlab best sweeps/demo.yaml --export out/demo-best --force
	@echo "Next: open the MLflow UI with '$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db' (http://127.0.0.1:5000)"

# The everyday tier on TEST_WORKERS processes (pytest-xdist): much of its time is spent waiting on the CLI's and the
# trials' subprocesses, so a second worker fills the gaps (on this project's 2-core machines: 7-8 min instead of 10).
# --dist worksteal hands each worker half the tests in order, so a module's server or sweep fixture mostly starts once;
# the workers share one FTLAB_HOME and build the demo assets once (tests/conftest.py). --durations=15 lists the
# slowest tests, so a slower suite says where its time went. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

# The slow tier: chaos tests (kills mid-checkpoint, Ctrl-C inside torch.save, SIGTERM, dropped database connections,
# a tracking-server outage, a killed confirmation) and smoke runs of the benchmark scripts at tiny size.
# CI runs it after `make test`.
test-slow: setup
	$(BIN)/python -m pytest -q -m "slow and not browser"

# The MLflow UI and optuna-dashboard in headless Chromium (found on PATH or installed with apt-get; else skipped).
test-browser: setup
	$(BIN)/python -m pytest -q -m browser -p no:cacheprovider

lint: setup
	$(BIN)/ruff check ftlab tests benchmarks
	$(BIN)/ruff format --check ftlab tests benchmarks

# Benchmarks print one JSON line and write it under benchmarks/results/; each compares against a reference in the same run.
bench-cpu: setup
	$(BIN)/python -m benchmarks.trial_cpu

bench-sweep: setup
	$(BIN)/python -m benchmarks.sweep_efficiency

bench-gpu: setup  # on a CUDA machine: the recipe's step against Trainer, then a real sweep; about 8 minutes
	PYTHON=$(BIN)/python bash benchmarks/gpu_run.sh

clean:
	rm -rf .ftlab mlruns/* out
