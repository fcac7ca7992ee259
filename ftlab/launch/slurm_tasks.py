"""The SLURM tasks of a launched sweep, their states beside the study's trials, for ``ftlab status``.

States come from ``scontrol show job`` (live, with the requeue count and the reason a task waits), for as long as
the controller keeps a finished job (``MinJobAge``, 300 s by default), then from ``sacct`` where the cluster keeps
accounting. A cluster without accounting forgets a job MinJobAge seconds after it ended: status then says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from rich.table import Table

from ftlab.launch.slurm import SLURM_JOBS_ATTR
from ftlab.sweep.cluster_task import SLURM_TASK_ATTR

# States in which a task's worker is gone for good (this start of it, at least: a requeued task starts again).
ENDED = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "REVOKED", "TIMEOUT",
}  # fmt: skip
_FIELD = re.compile(r"(\w+)=(\S*)")
_COMMAND_TIMEOUT_S = 20


@dataclass(frozen=True)
class SlurmTask:
    """One array task as SLURM sees it."""

    task: str  # JOBID_TASKID
    state: str  # RUNNING, PENDING, COMPLETED, CANCELLED, TIMEOUT, …
    node: str = ""
    elapsed: str = ""
    starts: int | None = None  # 1 + the times it was requeued (scontrol only)
    reason: str = ""  # why it waits, or how it ended (scontrol); the exit code (sacct)

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def array_ids(spec: str) -> list[str]:
    """Task ids in an array spec: ``"3"``, ``"0-3"``, ``"1,4-5"``, ``"0-15%4"`` (the ``%`` limit dropped)."""
    ids: list[str] = []
    for part in spec.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            ids += [str(number) for number in range(int(low), int(high or low) + 1)]
    return ids


def parse_scontrol(text: str) -> list[SlurmTask]:
    """The tasks in ``scontrol show job JOBID --oneliner`` output (pending tasks of an array come as one range)."""
    tasks = []
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobState" not in fields:
            continue
        job = fields.get("ArrayJobId") or fields.get("JobId", "?")
        ids = array_ids(fields["ArrayTaskId"]) if "ArrayTaskId" in fields else [""]
        restarts = fields.get("Restarts", "")
        for task in ids:
            tasks.append(
                SlurmTask(
                    task=f"{job}_{task}" if task else job,
                    state=fields["JobState"],
                    node=fields.get("NodeList", "") if fields.get("NodeList") != "(null)" else "",
                    elapsed=fields.get("RunTime", ""),
                    starts=int(restarts) + 1 if restarts.isdigit() else None,
                    reason="" if fields.get("Reason") == "None" else fields.get("Reason", ""),
                )
            )
    return tasks


def parse_sacct(text: str) -> list[SlurmTask]:
    """The tasks in ``sacct -X -P -n -o JobID,State,NodeList,Elapsed,ExitCode`` output."""
    tasks = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5 or not parts[0]:
            continue
        job_id, state, node, elapsed, exit_code = parts[:5]
        tasks.append(SlurmTask(job_id, state.split()[0], node, elapsed, None, f"exit {exit_code}"))
    return tasks


def _output(command: list[str]) -> str:
    """What ``command`` printed; "" when it is not installed here, fails or times out."""
    if shutil.which(command[0]) is None:
        return ""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def read_tasks(job_id: str) -> tuple[list[SlurmTask], str]:
    """The job's tasks and where they were read: ``"scontrol"``, ``"sacct"``, or ``""`` when SLURM no longer knows
    the job (or is not reachable from here)."""
    if tasks := parse_scontrol(_output(["scontrol", "show", "job", job_id, "--oneliner"])):
        return sorted(tasks, key=_task_order), "scontrol"
    accounted = _output(["sacct", "-j", job_id, "-X", "-P", "-n", "-o", "JobID,State,NodeList,Elapsed,ExitCode"])
    if tasks := parse_sacct(accounted):
        return sorted(tasks, key=_task_order), "sacct"
    return [], ""


def _task_order(task: SlurmTask) -> tuple[int, str]:
    number = task.task.rpartition("_")[2]
    return (int(number) if number.isdigit() else -1, task.task)


@dataclass(frozen=True)
class JobStatus:
    """A launched job: its tasks, each with the trials its workers ran, and what is not right yet."""

    job: dict[str, Any]  # the study's record of it (SLURM_JOBS_ATTR)
    tasks: list[SlurmTask]
    source: str
    trials_by_task: dict[str, list[str]]  # "123_1" -> ["#3 COMPLETE", "#5 RUNNING (start 2)"]
    warnings: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            **self.job,
            "source": self.source or None,
            "tasks": [asdict(task) | {"trials": self.trials_by_task.get(task.task, [])} for task in self.tasks],
            "warnings": self.warnings,
        }


def _where(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    where = trial.user_attrs.get(SLURM_TASK_ATTR)
    return where if isinstance(where, dict) and "task" in where else None


def unreaped(tasks: list[SlurmTask], trials: list[optuna.trial.FrozenTrial], grace_period: float) -> list[str]:
    """RUNNING trials whose task's worker is gone (the task ended, or was requeued since the trial started): their
    worker died without telling the study, so they wait for a live worker (or ``--reap``) to fail and retry them."""
    by_id = {task.task: task for task in tasks}
    found = []
    for trial in trials:
        where = _where(trial)
        if trial.state != optuna.trial.TrialState.RUNNING or where is None or where["task"] not in by_id:
            continue
        task = by_id[where["task"]]
        restarted = task.starts is not None and task.starts > int(where.get("start", 1))
        if task.ended or restarted:
            how = f"ended {task.state}" if task.ended else f"was requeued (now start {task.starts}, {task.state})"
            found.append(
                f"trial #{trial.number} is RUNNING but its task {task.task} {how}: not reaped yet. A live worker fails "
                f"and retries it once its heartbeat is {grace_period:.0f} s old; `--reap` does it now"
            )
    return found


def job_status(job: dict[str, Any], trials: list[optuna.trial.FrozenTrial], grace_period: float) -> JobStatus:
    """One launched job's tasks, the trials each ran and the trials left behind by a task that died."""
    tasks, source = read_tasks(str(job["job"]))
    trials_by_task: dict[str, list[str]] = {}
    for trial in trials:
        where = _where(trial)
        # A queued retry carries its failed trial's attributes until a worker takes it (and records its own task).
        if trial.state == optuna.trial.TrialState.WAITING:
            continue
        if where is not None and where["task"].split("_")[0] == str(job["job"]):
            start = int(where.get("start", 1))
            trials_by_task.setdefault(where["task"], []).append(
                f"#{trial.number} {trial.state.name}" + (f" (start {start})" if start > 1 else "")
            )
    warnings = unreaped(tasks, trials, grace_period)
    if not source:
        warnings.append(
            f"job {job['job']}: SLURM no longer lists it (it ended more than MinJobAge ago, or this machine cannot "
            "reach the controller) and sacct has no record of it (no accounting)"
        )
    return JobStatus(job, tasks, source, trials_by_task, warnings)


def launched_jobs(study: optuna.Study, grace_period: float) -> list[JobStatus]:
    """Every job ``ftlab launch slurm`` recorded in the study, oldest first; [] for a study launched otherwise."""
    jobs = study.user_attrs.get(SLURM_JOBS_ATTR) or []
    trials = study.get_trials(deepcopy=False) if jobs else []
    return [job_status(job, trials, grace_period) for job in jobs]


def job_table(status: JobStatus) -> Table:
    """A job's tasks, one row each: state, node, run time, which start of the task, and the trials it ran."""
    job = status.job
    source = f"from {status.source}" if status.source else "unknown to SLURM now"
    table = Table(title=f"SLURM job {job['job']}: {job['tasks']} worker tasks, submitted {job['submitted']} ({source})")
    for column in ("task", "state", "node", "time", "start"):
        table.add_column(column, no_wrap=True)
    table.add_column("trials (by this task's workers)", overflow="fold")
    for task in status.tasks:
        state = task.state + (f" ({task.reason})" if task.reason and not task.reason.startswith("exit") else "")
        table.add_row(
            task.task, state, task.node or "-", task.elapsed or "-", str(task.starts or "-"),
            ", ".join(status.trials_by_task.get(task.task, [])) or "-",
        )  # fmt: skip
    return table
