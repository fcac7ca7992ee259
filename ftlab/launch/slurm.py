"""``ftlab launch slurm``: write the workers' job script and submit it with ``sbatch``.

One array task per worker: SLURM then schedules, cancels, requeues (preemption) and times out each worker on its own,
so losing one costs only the trials it was running, and tasks start as soon as any node has room (a node-wide
"one task per node, ``--workers G``" job waits for a whole free node and loses all G trials at once). A task with G
GPUs (``--gpus-per-worker G``, ``--gres=gpu:G``) runs G trials at once, one per GPU.

The script is the shipped ``docs/slurm/ftlab-workers.sbatch`` (the hand-editable example) with its ``#SBATCH`` lines
replaced by the ones the flags ask for and a few settings exported; its body is the same. The storage and tracking
URLs travel in the job's environment (``--export=ALL``), never on a command line or in the script, so a password in
one is shown neither by ``ps`` nor by ``scontrol show job``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from ftlab import paths
from ftlab.errors import UserError

# The study's user attribute listing the jobs launched for it: [{"job": "123", "tasks": 4, "submitted": …}, …].
SLURM_JOBS_ATTR = "slurm_jobs"
SLURM_DIR = paths.WORK_DIR / "slurm"  # the written scripts and the tasks' logs
_SIGNAL_LEAD_S = 300  # SIGTERM this long before the time limit: time to finish a step and write a checkpoint
_SIGNAL_RESOLUTION_S = 60  # SLURM may send the early signal up to this much sooner than asked
_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


@dataclass(frozen=True)
class SlurmLaunch:
    """What ``ftlab launch slurm`` submits: ``workers`` array tasks, each an ``ftlab worker`` on the sweep."""

    sweep_file: Path  # absolute: the tasks run it from workdir
    sweep_name: str
    workers: int
    workdir: Path  # the folder the tasks run in (the trials' output_dir is relative to it): on the shared filesystem
    gpus_per_worker: int = 0
    cpus_per_worker: int = 8
    partition: str | None = None
    time: str | None = None
    n_trials: int | None = None
    ftlab_bin: str = "ftlab"
    sbatch_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError.single("--workers must be at least 1", where="--workers", value=self.workers)
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 1:
            raise UserError.single(
                "--gpus-per-worker must be 0 or more and --cpus-per-worker 1 or more",
                where="--gpus-per-worker/--cpus-per-worker",
                value=(self.gpus_per_worker, self.cpus_per_worker),
            )
        if self.time is not None:
            time_limit_seconds(self.time)  # fails early, naming the flag

    @property
    def log_pattern(self) -> Path:
        """The tasks' log files, in sbatch's ``--output`` pattern (%A: the job id, %a: the task)."""
        return self.workdir / SLURM_DIR / f"{self.sweep_name}-%A_%a.log"


@dataclass(frozen=True)
class SubmittedJob:
    """A job that sbatch accepted."""

    job_id: str
    tasks: int
    script: Path
    log_pattern: Path

    def as_attr(self) -> dict[str, object]:
        return {
            "job": self.job_id,
            "tasks": self.tasks,
            "submitted": datetime.now(UTC).isoformat(timespec="seconds"),
            "script": str(self.script),
            "logs": str(self.log_pattern).replace("%A", self.job_id).replace("%a", "*"),
        }


def time_limit_seconds(text: str) -> int:
    """Seconds in a SLURM time limit: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``.

    Raises:
        UserError: not one of those forms.
    """
    found = _TIME.match(text.strip())
    if not found:
        raise UserError.single(
            "not a SLURM time limit",
            where="--time",
            value=text,
            fix="write minutes (30), M:S (1:30), H:M:S (2:00:00) or D-H (1-12)",
        )
    days = int(found["days"] or 0)
    numbers = [int(part) for part in (found["a"], found["b"], found["c"]) if part is not None]
    if found["days"] is None and len(numbers) < 3:  # M or M:S: no hours (D-H, D-H:M, D-H:M:S, H:M:S start with them)
        numbers.insert(0, 0)
    hours, minutes, seconds = [*numbers, 0, 0][:3]
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def signal_lead(time: str | None) -> int | None:
    """Seconds before the time limit at which the worker gets SIGTERM (``--signal=B:TERM@N``): 5 minutes, or a fifth
    of a shorter limit; None when that is under SLURM's 60 s resolution: then the time limit's own SIGTERM (KillWait
    seconds before SIGKILL) is the warning."""
    if time is None:
        return _SIGNAL_LEAD_S
    lead = min(_SIGNAL_LEAD_S, time_limit_seconds(time) // 5)
    return lead if lead >= _SIGNAL_RESOLUTION_S else None


def directives(launch: SlurmLaunch) -> list[str]:
    """The script's ``#SBATCH`` options."""
    options = [
        f"--job-name=ftlab-{launch.sweep_name}",
        f"--array=0-{launch.workers - 1}",
        "--ntasks=1",
        f"--cpus-per-task={launch.cpus_per_worker}",
    ]
    if launch.gpus_per_worker:
        options.append(f"--gres=gpu:{launch.gpus_per_worker}")
    if launch.partition:
        options.append(f"--partition={launch.partition}")
    if launch.time:
        options.append(f"--time={launch.time}")
    if (lead := signal_lead(launch.time)) is not None:
        options.append(f"--signal=B:TERM@{lead}")
    options += ["--requeue", "--open-mode=append", f"--output={launch.log_pattern}", "--export=ALL"]
    return options


def render_script(launch: SlurmLaunch) -> str:
    """The shipped job script (``docs/slurm/ftlab-workers.sbatch``) with its ``#SBATCH`` block replaced by this
    launch's, and the launch's (non-secret) settings exported after it; the body is the template's."""
    lines = resources.files("ftlab.launch").joinpath("ftlab-workers.sbatch").read_text().splitlines()
    block = [index for index, line in enumerate(lines) if line.startswith("#SBATCH")]
    first, last = block[0], block[-1]
    settings = {
        "FTLAB_BIN": launch.ftlab_bin,
        "FTLAB_DIR": str(launch.workdir),
        "FTLAB_TRIALS_AT_ONCE": str(max(1, launch.gpus_per_worker)),
    }
    if launch.n_trials is not None:
        settings["FTLAB_N_TRIALS"] = str(launch.n_trials)
    written = [
        *lines[:first],
        *(f"#SBATCH {option}" for option in directives(launch)),
        *(line for line in lines[first : last + 1] if not line.startswith("#SBATCH")),  # the comments between
        "",
        "# Written by `ftlab launch slurm`; FTLAB_STORAGE and FTLAB_TRACKING_URI come from the submitting environment.",
        *(f"export {name}={shlex.quote(value)}" for name, value in settings.items()),
        *lines[last + 1 :],
    ]
    return "\n".join(written) + "\n"


def sbatch_command(launch: SlurmLaunch, script: Path) -> list[str]:
    """``sbatch --parsable [--sbatch-arg …] SCRIPT SWEEP_FILE``: options given here override the script's."""
    return ["sbatch", "--parsable", *launch.sbatch_args, str(script), str(launch.sweep_file)]


def default_ftlab_bin() -> str:
    """The ``ftlab`` of this installation (beside this Python), for the tasks to run: on a cluster the venv is on the
    shared filesystem at the same path."""
    beside = Path(sys.executable).with_name("ftlab")
    return str(beside) if beside.is_file() else (shutil.which("ftlab") or "ftlab")


def submit(launch: SlurmLaunch, storage_url: str, tracking_uri: str) -> SubmittedJob:
    """Write the script under ``.ftlab/slurm/`` and submit it; the URLs go in sbatch's environment only.

    Raises:
        UserError: sbatch is not installed here, or refused the job (its message is passed on).
    """
    if shutil.which("sbatch") is None:
        raise UserError.single(
            "sbatch is not on PATH", where="ftlab launch slurm", fix="run it on a SLURM login node (or install slurm)"
        )
    folder = launch.workdir / SLURM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    script = folder / f"{launch.sweep_name}-{stamp}.sbatch"
    script.write_text(render_script(launch))
    env = {**os.environ, "FTLAB_STORAGE": storage_url, "FTLAB_TRACKING_URI": tracking_uri}
    done = subprocess.run(sbatch_command(launch, script), capture_output=True, text=True, env=env, cwd=launch.workdir)
    if done.returncode != 0:
        raise UserError.single(
            f"sbatch refused the job: {done.stderr.strip() or done.stdout.strip()}",
            where=str(script),
            fix="check --partition, --time, --gpus-per-worker and --sbatch-arg against the cluster (sinfo)",
        )
    job_id = done.stdout.strip().split(";")[0]  # --parsable: "JOBID" or "JOBID;CLUSTER"
    return SubmittedJob(job_id, launch.workers, script, launch.log_pattern)


def launch_slurm(
    sweep_file: Path, launch: SlurmLaunch, storage_url: str | None, tracking_uri: str | None, dry_run: bool = False
) -> tuple[str, SubmittedJob | None]:
    """Submit the workers of a sweep (or, with ``dry_run``, only write the script): the study is created first, so
    that the tasks do not race to create it, and the job is recorded in it for ``ftlab status``.

    Returns:
        The script's text and the submitted job (None on a dry run).

    Raises:
        UserError: the storage cannot be reached, sbatch is missing or refused the job.
    """
    from ftlab.config import load_sweep
    from ftlab.storage import storage_url_for
    from ftlab.sweep import preflight
    from ftlab.sweep.study import create_or_load_study
    from ftlab.tracking import tracking_uri_for

    sweep = load_sweep(sweep_file)  # the model and data are the tasks' business
    storage = storage_url_for(sweep, storage_url)
    tracking = tracking_uri_for(sweep, tracking_uri)
    script = render_script(launch)
    if dry_run:
        return script, None
    # From here as from the tasks: the services must answer before a job waits in the queue for nothing.
    storage_where = "--storage" if storage_url else f"{sweep_file}:storage.url"
    tracking_where = "--tracking-uri" if tracking_uri else f"{sweep_file}:tracking.uri"
    preflight.raise_problems(preflight.service_problems(storage, tracking, storage_where, tracking_where))
    study = create_or_load_study(sweep, storage)
    job = submit(launch, storage, tracking)
    study.set_user_attr(SLURM_JOBS_ATTR, [*study.user_attrs.get(SLURM_JOBS_ATTR, []), job.as_attr()])
    return script, job
