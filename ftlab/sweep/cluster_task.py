"""Which scheduler task this process runs in, so that a trial can say where it ran (``ftlab status`` shows it)."""

from __future__ import annotations

import os
import socket
from typing import Any

# The trial's user attribute naming the SLURM task whose worker ran it: {"task": "123_4", "start": 2, "host": "n7"}.
SLURM_TASK_ATTR = "slurm_task"


def slurm_task_id(env: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """``JOBID_TASKID`` of the SLURM array task this process runs in (``JOBID`` for a plain job); None outside SLURM."""
    env = os.environ if env is None else env
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return env.get("SLURM_JOB_ID") or None


def current_slurm_task() -> dict[str, Any] | None:
    """The SLURM task of this process, which start of it (1 + the times SLURM requeued it) and the node; None outside
    SLURM."""
    task = slurm_task_id()
    if task is None:
        return None
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return {"task": task, "start": 1 + (int(restarts) if restarts.isdigit() else 0), "host": socket.gethostname()}
