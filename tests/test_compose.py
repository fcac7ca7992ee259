"""The scale-out deployment files, read without Docker: docker-compose.yml, .env.example, the SLURM and k8s examples."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.services import MLFLOW_SERVER_ENV, mlflow_server_command

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SLURM_SCRIPT = ROOT / "docs" / "slurm" / "ftlab-workers.sbatch"
K8S_JOB = ROOT / "docs" / "k8s" / "ftlab-workers-job.yaml"

# ${VAR}, ${VAR:-default}, ${VAR:?message}; $$ is a literal dollar for the container's shell.
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
_URL_PASSWORD = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]+)@")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _strings(node: Any) -> list[str]:
    """Every string (keys and values) anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [text for item in node for text in _strings(item)]
    return [node] if isinstance(node, str) else []


def _command(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "write commands as lists: a string is split by a shell-like parser"
    assert all(isinstance(part, str) for part in command), f"quote numbers in commands: {command}"
    return command


def _option_values(argv: list[str]) -> dict[str, str]:
    return {flag: value for flag, value in itertools.pairwise(argv) if flag.startswith("--")}


def test_the_stack_has_its_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "mlflow", "optuna-dashboard", "worker"} <= set(_services(compose))
    assert _services(compose)["postgres"]["image"] == "postgres:16"
    assert set(compose["volumes"]) >= {"postgres-data", "mlflow-artifacts"}


def test_every_published_port_is_bound_to_localhost(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in _services(compose).items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port!r} on every interface"
    assert published == 3  # postgres, mlflow, optuna-dashboard; workers publish nothing


def test_no_password_is_written_down(compose: dict[str, Any]) -> None:
    for text in _strings(compose):
        for match in _URL_PASSWORD.finditer(text):
            assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", match["password"]), f"a literal password: {text}"
    environment = _services(compose)["postgres"]["environment"]
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", environment[key]), f"{key} must come from .env, required"


def test_every_password_reference_is_required() -> None:
    """`${POSTGRES_PASSWORD}` or `${POSTGRES_PASSWORD:-x}` would start the stack with an empty or known password."""
    for match in _INTERPOLATION.finditer(COMPOSE_FILE.read_text()):
        if "PASSWORD" in match["name"]:
            assert match["op"] == ":?", f"{match[0]} must be ${{{match['name']}:?message}}"


def test_env_example_names_every_variable_and_sets_no_password() -> None:
    example = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert example["POSTGRES_PASSWORD"] == "", "ship no password that works: compose must refuse an unchanged copy"
    assert "copy" in ENV_EXAMPLE.read_text().lower() and ".env" in ENV_EXAMPLE.read_text()
    text = ENV_EXAMPLE.read_text()
    for match in _INTERPOLATION.finditer(COMPOSE_FILE.read_text()):
        name = match["name"]
        assert name in example or re.search(rf"^# {name}=", text, re.M), f"${{{name}}} is not in .env.example"


def test_env_file_is_git_ignored() -> None:
    # .env holds POSTGRES_PASSWORD: a `git add -A` must never pick it up.
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "add `.env` to .gitignore"


def test_services_wait_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in ("mlflow", "optuna-dashboard", "worker"):
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dependency, condition in depends.items():
            assert dependency in services
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck to wait for"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"


def test_postgres_creates_the_mlflow_and_optuna_databases(compose: dict[str, Any]) -> None:
    volumes = _services(compose)["postgres"]["volumes"]
    init = [v for v in volumes if ":/docker-entrypoint-initdb.d/" in v]
    assert init, "no init script mounted into /docker-entrypoint-initdb.d/"
    script = (ROOT / init[0].split(":")[0]).read_text()
    assert "'mlflow'" in script and "'optuna'" in script
    healthcheck = " ".join(_services(compose)["postgres"]["healthcheck"]["test"])
    assert "-d mlflow" in healthcheck and "-d optuna" in healthcheck


def test_mlflow_service_runs_the_tests_server_command(compose: dict[str, Any]) -> None:
    service = _services(compose)["mlflow"]
    command = _command(service)
    assert command[:2] == ["mlflow", "server"]
    values = _option_values(command)
    expected = mlflow_server_command(
        values["--backend-store-uri"],
        values["--artifacts-destination"],
        values["--host"],
        int(values["--port"]),
        allowed_hosts=values["--allowed-hosts"],
    )
    assert command[2:] == expected[expected.index("server") + 1 :], "flags differ from tests/support/services.py"

    assert values["--backend-store-uri"].startswith("postgresql://")
    assert values["--backend-store-uri"].endswith("@postgres:5432/mlflow")
    assert values["--host"] == "0.0.0.0" and values["--port"] == "5000"  # inside the container; published on 127.0.0.1
    assert f"{values['--artifacts-destination']}" in " ".join(service["volumes"])
    assert "mlflow:5000" in values["--allowed-hosts"]  # the name the workers use in --tracking-uri
    assert service["environment"] == MLFLOW_SERVER_ENV


def test_dashboard_reads_the_optuna_database(compose: dict[str, Any]) -> None:
    command = _command(_services(compose)["optuna-dashboard"])
    assert command[:5] == ["optuna-dashboard", "--host", "0.0.0.0", "--port", "8080"]
    assert command[-1].startswith("postgresql://") and command[-1].endswith("@postgres:5432/optuna")


def _worker_argv(argv: list[str]) -> list[str]:
    """The ``ftlab worker …`` part of a command (after a shell's ``exec`` or an interpreter's ``-m ftlab.cli``)."""
    for start in range(len(argv) - 1):
        if argv[start] in {"ftlab", "ftlab.cli"} and argv[start + 1] == "worker":
            return argv[start:]
    raise AssertionError(f"no `ftlab worker` in {argv}")


def test_worker_runs_ftlab_worker_on_the_shared_services(compose: dict[str, Any]) -> None:
    worker = _services(compose)["worker"]
    argv = _worker_argv(_command(worker))
    assert argv[2].startswith("sweeps/")
    values = _option_values(argv)
    assert values["--storage"].startswith("postgresql://")
    assert values["--storage"].endswith("@postgres:5432/optuna")
    assert values["--tracking-uri"] == "http://mlflow:5000"
    gpus = worker["deploy"]["resources"]["reservations"]["devices"]
    assert [(g["driver"], g["capabilities"]) for g in gpus] == [("nvidia", ["gpu"])]
    assert "ports" not in worker


def _worker_help() -> str:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "ftlab.cli", "worker", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_ftlab_worker_accepts_the_options_the_deployments_pass(compose: dict[str, Any]) -> None:
    help_text = _worker_help()
    used = {flag for flag in _worker_argv(_command(_services(compose)["worker"])) if flag.startswith("--")}
    used |= {flag for flag in re.findall(r"--[a-z][a-z-]+", _slurm_worker_line()) if flag != "--array"}
    used |= {flag for flag in _k8s_worker_argv() if flag.startswith("--")}
    for flag in sorted(used | {"--n-trials"}):
        assert re.search(rf"{re.escape(flag)}\b", help_text), f"`ftlab worker --help` has no {flag}"


def _slurm_worker_line() -> str:
    lines = [line.strip() for line in SLURM_SCRIPT.read_text().splitlines()]
    found = [line for line in lines if not line.startswith("#") and re.search(r"\bftlab(\}\")? worker\b", line)]
    assert len(found) == 1, f"expected one `ftlab worker` line in {SLURM_SCRIPT.name}, found {found}"
    return found[0]


def test_slurm_script_is_a_gpu_job_array_of_workers() -> None:
    text = SLURM_SCRIPT.read_text()
    assert text.startswith("#!/bin/bash")
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(SLURM_SCRIPT)], check=True)
    directives = re.findall(r"^#SBATCH\s+(\S+)", text, re.M)
    assert any(re.fullmatch(r"--array=0-\d+(%\d+)?", d) for d in directives), directives
    assert any(d in {"--gres=gpu:1", "--gpus-per-task=1", "--gpus=1"} for d in directives), directives
    assert "--signal=B:TERM@300" in directives, "SIGTERM to the batch shell (the worker): the job runs no steps"
    assert "--requeue" in directives
    # The worker reads both URLs from the environment: none on its command line, where `ps` would show a password.
    line = _slurm_worker_line()
    assert "--storage" not in line and "--tracking-uri" not in line, line
    assert "${FTLAB_STORAGE:?" in text and "${FTLAB_TRACKING_URI:?" in text
    assert not _URL_PASSWORD.search(text), "no storage URL with a password in the script"


def _k8s_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(K8S_JOB.read_text()) if doc]


def _k8s_job() -> dict[str, Any]:
    jobs = [doc for doc in _k8s_documents() if doc.get("kind") == "Job"]
    assert len(jobs) == 1
    return jobs[0]


def _k8s_container() -> dict[str, Any]:
    containers = _k8s_job()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _k8s_worker_argv() -> list[str]:
    container = _k8s_container()
    return _worker_argv([*container.get("command", []), *container.get("args", [])])


def test_k8s_job_runs_parallel_gpu_workers_with_the_storage_url_from_a_secret() -> None:
    job = _k8s_job()
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["parallelism"] == spec["completions"] >= 1
    container = _k8s_container()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1

    env = {item["name"]: item for item in container["env"]}
    storage = env["FTLAB_STORAGE"]
    assert "value" not in storage and storage["valueFrom"]["secretKeyRef"]["name"], "storage URL only from a Secret"
    assert "FTLAB_TRACKING_URI" in env
    values = _option_values(_k8s_worker_argv())
    assert values["--storage"] == "$(FTLAB_STORAGE)"
    assert values["--tracking-uri"] == "$(FTLAB_TRACKING_URI)"

    assert not any(doc.get("kind") == "Secret" for doc in _k8s_documents()), "never ship the Secret with its value"
    for text in _strings(_k8s_documents()):
        assert not _URL_PASSWORD.search(text), f"a password in the manifest: {text}"
