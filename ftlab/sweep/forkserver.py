"""The fork server that trial processes start from: heavy imports once, then a cheap, clean fork per trial.

Only the standard library is imported here, so the CLI can start the server first thing and let its imports (seconds)
run while the sweep process itself imports, opens the study and starts the MLflow parent run.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver

# Modules every trial needs. transformers and MLflow import most of their code lazily, on first use: name the lazy
# parts a trial uses, or each trial pays for them again (about 2 s per trial on a CPU machine: modeling_utils 1.5 s,
# MLflow's SQL store 0.6 s).
PRELOAD = [
    "ftlab.sweep.trial_process",
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "datasets",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.tracking.rest_store",
    "optuna",
]


def trial_process_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context for trial processes; starts the preloaded fork server if it is not running."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return context
