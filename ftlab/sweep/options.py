"""How to run a sweep from this machine: the options ``ftlab sweep``, ``ftlab worker`` and ``ftlab confirm`` share,
as one value for :func:`~ftlab.sweep.orchestrate.run_sweep`, :func:`~ftlab.sweep.orchestrate.run_study` and
:func:`~ftlab.sweep.orchestrate.run_confirm`."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console


@dataclass(frozen=True)
class SweepOptions:
    """The command line's options for running a sweep; the sweep file has the rest. None: as the sweep file says."""

    n_trials: int | None = None
    """COMPLETE trials the study should reach, across all workers (``--n-trials``; overrides ``budget.n_trials``)."""
    timeout: float | None = None
    """Seconds after which no new trial starts (``--timeout``; overrides ``budget.timeout``)."""
    workers: int = 1
    """Trials at once on this machine, one per GPU (``--workers``)."""
    storage_url: str | None = None
    """The Optuna storage (``--storage``); else the file's ``storage.url``, else SQLite in ``./mlruns``."""
    tracking_uri: str | None = None
    """The MLflow store (``--tracking-uri``); else the file's ``tracking.uri``, ``MLFLOW_TRACKING_URI`` or
    ``./mlruns``."""
    console: Console | None = None
    """Where the view goes; a new console on stdout by default."""
    live: bool | None = None
    """A live view (True) or one line per event (False); live on a terminal by default."""
    seed_salt: int = 0
    """Mixed into the sampler's seed: worker processes that start together must not draw the same trials."""
    accept_changes: bool = False
    """Go on with a study although the sweep file's search space, objective or baseline changed (recorded)."""
