"""The fork server that trial processes start from: heavy imports once, then a cheap, clean fork per trial.

Only the standard library is imported here, so the CLI can start the server first thing and let its imports (seconds)
run while the sweep process itself imports, opens the study and starts the MLflow parent run.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal

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
    if _server_pid() is not None:
        multiprocessing.forkserver.ensure_running()  # restarts a server that died
        return context
    # The server imports torch for seconds before it ignores Ctrl-C itself: a Ctrl-C then (a terminal sends it to
    # the whole process group) printed its KeyboardInterrupt traceback. Started with SIGINT blocked (the mask survives
    # fork and exec) it never sees one; the CLI stops it, and trial processes unblock it for their own handler. Here
    # it is blocked only while the server starts, not ignored: a Ctrl-C in that moment waits, then stops this process.
    # multiprocessing's resource tracker unblocks SIGINT once it has started, so it is started first.
    multiprocessing.resource_tracker.ensure_running()
    atexit.register(stop_trial_server)  # before: the Ctrl-C that waited is raised as SIGINT is unblocked, below
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return context


def _server_pid() -> int | None:
    return multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]


def stop_trial_server() -> None:
    """Stop the fork server now, also in the middle of its imports.

    Left alone, a server still importing when its command ends (a refusal, Ctrl-C, an error) goes on importing torch
    for 20-40 s before it notices; trials it started are processes of their own and are not affected.
    """
    pid = _server_pid()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]  # reaps it, removes its socket
