"""The SLURM launcher's pure parts: the script it writes, time limits, and what it reads back from scontrol and sacct.
The real cluster is in tests/test_slurm.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ftlab.errors import UserError
from ftlab.launch.slurm import SlurmLaunch, render_script, signal_lead, time_limit_seconds
from ftlab.launch.slurm_tasks import array_ids, parse_sacct, parse_scontrol
from ftlab.sweep.cluster_task import slurm_task_id
from tests.helpers import run_ftlab, write_sweep

TEMPLATE = Path(__file__).resolve().parents[1] / "docs" / "slurm" / "ftlab-workers.sbatch"


def launch(**changes: object) -> SlurmLaunch:
    settings: dict = dict(sweep_file=Path("/shared/sweeps/gpt2.yaml"), sweep_name="gpt2", workers=4,
                          workdir=Path("/shared/work"), ftlab_bin="/shared/venv/bin/ftlab")  # fmt: skip
    return SlurmLaunch(**(settings | changes))


def test_the_script_is_the_shipped_one_with_the_flags_as_directives() -> None:
    script = render_script(launch(gpus_per_worker=2, partition="gpu", time="2:00:00", n_trials=48))
    directives = re.findall(r"^#SBATCH (\S+)", script, re.M)
    assert directives == [
        "--job-name=ftlab-gpt2", "--array=0-3", "--ntasks=1", "--cpus-per-task=8", "--gres=gpu:2", "--partition=gpu",
        "--time=2:00:00", "--signal=B:TERM@300", "--requeue", "--open-mode=append",
        "--output=/shared/work/.ftlab/slurm/gpt2-%A_%a.log", "--export=ALL",
    ]  # fmt: skip
    assert "export FTLAB_TRIALS_AT_ONCE=2\n" in script and "export FTLAB_N_TRIALS=48\n" in script
    # Everything from `set -euo pipefail` on is the template's, unchanged.
    body = TEMPLATE.read_text().split("set -euo pipefail", 1)[1]
    assert script.split("set -euo pipefail", 1)[1] == body
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_short_time_limits_get_a_shorter_warning_or_none() -> None:
    assert signal_lead(None) == 300 and signal_lead("24:00:00") == 300
    assert signal_lead("10") == 120  # a fifth of 10 minutes
    assert signal_lead("2") is None  # 24 s is under SLURM's 60 s resolution: the limit's own SIGTERM warns
    assert "--signal" not in " ".join(re.findall(r"^#SBATCH (\S+)", render_script(launch(time="2")), re.M))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        *[("30", 1800), ("1:30", 90), ("2:00:00", 7200), ("1-12", 129600), ("1-0:30", 88200), ("0-0:0:45", 45)],
        *[("0-5", 18000), ("0-1:30", 5400)],  # 0 days is still D-H: hours come first
    ],
)
def test_slurm_time_limits(text: str, seconds: int) -> None:
    assert time_limit_seconds(text) == seconds


def test_a_bad_time_limit_or_worker_count_names_the_flag() -> None:
    with pytest.raises(UserError, match="--time: not a SLURM time limit; got '2h'"):
        launch(time="2h")
    with pytest.raises(UserError, match="--workers"):
        launch(workers=0)


def test_array_ids_and_scontrol_records() -> None:
    assert array_ids("3") == ["3"] and array_ids("0-2%1") == ["0", "1", "2"] and array_ids("1,4-5") == ["1", "4", "5"]
    shown = (
        "JobId=12 ArrayJobId=10 ArrayTaskId=2 JobName=ftlab-x JobState=RUNNING Reason=None Restarts=1 "
        "RunTime=00:01:02 NodeList=n7\n"
        "JobId=10 ArrayJobId=10 ArrayTaskId=3-4%2 JobName=ftlab-x JobState=PENDING Reason=JobArrayTaskLimit "
        "Restarts=0 RunTime=00:00:00 NodeList=(null)\n"
    )
    tasks = parse_scontrol(shown)
    assert [(t.task, t.state, t.starts, t.node, t.reason) for t in tasks] == [
        ("10_2", "RUNNING", 2, "n7", ""),
        ("10_3", "PENDING", 1, "", "JobArrayTaskLimit"),
        ("10_4", "PENDING", 1, "", "JobArrayTaskLimit"),
    ]


def test_sacct_records() -> None:
    tasks = parse_sacct("10_0|COMPLETED|n1|00:05:00|0:0\n10_1|CANCELLED by 0|n2|00:01:00|0:15\n")
    assert [(t.task, t.state, t.ended) for t in tasks] == [("10_0", "COMPLETED", True), ("10_1", "CANCELLED", True)]


def test_the_task_a_worker_runs_in() -> None:
    assert slurm_task_id({"SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "13"}) == "10_3"
    assert slurm_task_id({"SLURM_JOB_ID": "13"}) == "13"
    assert slurm_task_id({}) is None


@pytest.mark.integration
def test_dry_run_prints_the_script_and_a_bad_flag_exits_2(tmp_path: Path) -> None:
    write_sweep(tmp_path, name="dry")
    env = {"FTLAB_STORAGE": "postgresql://ftlab:Dry-s3cret@db-host:5432/optuna"}
    shown = run_ftlab("launch", "slurm", "sweep.yaml", "--workers", "2", "--dry-run", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("#!/bin/bash") and "#SBATCH --array=0-1\n" in shown.stdout
    assert f"export FTLAB_DIR={tmp_path}\n" in shown.stdout
    assert "Dry-s3cret" not in shown.stdout + shown.stderr and "submit with: sbatch --parsable" in shown.stderr
    assert not (tmp_path / ".ftlab").exists(), "a dry run writes nothing"
    bad = run_ftlab("launch", "slurm", "sweep.yaml", "--workers", "2", "--time", "2h", "--dry-run", cwd=tmp_path)
    assert bad.returncode == 2 and "--time: not a SLURM time limit" in bad.stderr and "Traceback" not in bad.stderr
