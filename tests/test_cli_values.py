"""Values given on the command line get the checks the same values get in a sweep file: each bad one is exit 2 with
a line naming the option, before anything is created (no study, no MLflow store, no trial folder)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers import run_ftlab, write_sweep


def created(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()} - {"sweep.yaml"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("sweep", "sweep.yaml", "--n-trials", "0"), "--n-trials: Input should be greater than or equal to 1; got 0"),
        (("sweep", "sweep.yaml", "--n-trials", "-3"), "--n-trials: Input should be greater than or equal to 1"),
        (("sweep", "sweep.yaml", "--timeout", "-1"), "--timeout: Input should be greater than 0; got -1.0"),
        (("sweep", "sweep.yaml", "--timeout", "nan"), "--timeout: Input should be greater than 0"),
        (
            ("sweep", "sweep.yaml", "--workers", "0"),
            "Invalid value for '--workers': Input should be greater than or equal to 1",
        ),
        (
            (
                "worker",
                "sweep.yaml",
                "--storage",
                "sqlite:///w.db",
                "--tracking-uri",
                "sqlite:///m.db",
                "--n-trials",
                "0",
            ),
            "--n-trials: Input should be greater than or equal to 1",
        ),
        (
            ("confirm", "sweep.yaml", "--top", "0"),
            "Invalid value for '--top': Input should be greater than or equal to 1",
        ),
        (
            ("confirm", "sweep.yaml", "--seeds", "-1"),
            "Invalid value for '--seeds': Input should be greater than or equal to 1",
        ),
        (
            ("confirm", "sweep.yaml", "--workers", "0"),
            "Invalid value for '--workers': Input should be greater than or equal to 1",
        ),
        (("train", "sweep.yaml", "--set", "learning_rate=-1"), "train.learning_rate: Input should be greater than 0"),
        (("train", "sweep.yaml", "--set", "seed=[1,"), "--set seed: the value is not a YAML scalar"),
        (("ui", "--port", "99999"), "Invalid value for '--port': Input should be less than or equal to 65535"),
        (("ui", "--port", "0"), "Invalid value for '--port': Input should be greater than or equal to 1"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
@pytest.mark.integration
def test_a_bad_option_value_is_exit_2_naming_it_and_creates_nothing(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    write_sweep(tmp_path)
    result = run_ftlab(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert created(tmp_path) == set(), "nothing is created"


@pytest.mark.integration
def test_ui_on_a_busy_port_is_exit_2_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_bytes(b"")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_ftlab("ui", "--port", str(port), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"--port: port {port} on 127.0.0.1 is not free" in result.stderr and "Traceback" not in result.stderr
    assert "pass another port" in result.stderr
    assert {path.name for path in (tmp_path / "mlruns").iterdir()} == {"mlflow.db"}
