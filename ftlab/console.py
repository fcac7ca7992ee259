"""Keep the libraries' own chatter (progress bars, INFO logs) out of ftlab's output, which has its own view."""

from __future__ import annotations

import logging
import os
import warnings

import optuna


def quiet_libraries() -> None:
    """Silence transformers', datasets' and MLflow's progress bars and INFO logs; warnings still show."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # MLflow prints "View run … at: URL" to stdout whenever a run on a tracking server ends (and fetches the run
    # again to do it); ftlab's own lines already say where runs are.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import datasets
    import tqdm.std
    import transformers

    # tqdm guards bars across processes with a multiprocessing lock, a semaphore it creates on first use (datasets'
    # load_from_disk) and never frees: every trial process leaked one, and each sweep ended with resource_tracker's
    # "leaked semaphore objects" warning. ftlab shows no library bars, so none is needed.
    tqdm.std.TqdmDefaultWriteLock.mp_lock = None

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    import mlflow  # noqa: F401 - MLflow configures its loggers on import; import first, then quiet them

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # ftlab drives Optuna's heartbeats itself (ask/tell, one process per trial), which Optuna marks experimental and
    # warns about outside Study.optimize; the warnings say nothing the user can act on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
