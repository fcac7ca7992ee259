"""Stores and folders that cannot work are refused before anything is made, each as one line naming the path, what
is wrong and the fix: read-only folders (for root too), files where folders go, a journal path that is a folder, the
same SQLite file for the study and MLflow, a tracking URI that is a plain path, a web server that is not MLflow."""

from __future__ import annotations

import errno
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ftlab.config import load_sweep
from ftlab.folders import folder_problem
from ftlab.settings import resolve_train_config
from ftlab.sweep import preflight
from tests.helpers import SMALL_SWEEP, write_sweep
from tests.support.readonly import read_only_folder


def test_a_read_only_folder_is_found_by_writing_not_by_asking(tmp_path: Path) -> None:
    assert folder_problem(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()  # the check makes nothing
    with read_only_folder(tmp_path / "ro") as folder:
        problem = folder_problem(folder / "cache")
        assert problem is not None and "read-only" in problem and str(folder) in problem
    assert list((tmp_path / "ro").iterdir()) == []  # no probe file left


def test_a_file_where_a_folder_goes_is_named(tmp_path: Path) -> None:
    (tmp_path / "mlruns").write_text("not a folder")
    problem = folder_problem(tmp_path / "mlruns" / "artifacts")
    assert problem == f"{tmp_path / 'mlruns'} is a file, not a folder"


def test_mlruns_being_a_file_is_refused_for_the_study_and_mlflow(tmp_path: Path) -> None:
    (tmp_path / "mlruns").write_text("not a folder")
    problems = preflight.service_problems(
        f"sqlite:///{tmp_path}/mlruns/optuna.db", f"sqlite:///{tmp_path}/mlruns/mlflow.db", "--storage", "tracking"
    )
    assert [problem.where for problem in problems] == ["--storage", "tracking"]
    assert all("mlruns is a file, not a folder" in problem.message for problem in problems), problems
    assert (tmp_path / "mlruns").read_text() == "not a folder"


def test_a_journal_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "study.log").mkdir()
    (problem,) = preflight.storage_problems(f"journal:///{tmp_path}/study.log", "--storage")
    assert "is a folder, not a file" in problem.message and problem.fix


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    (tmp_path / "optuna.db").write_text("some notes")
    (problem,) = preflight.storage_problems(f"sqlite:///{tmp_path}/optuna.db", "--storage")
    assert "is not a SQLite database" in problem.message
    assert (tmp_path / "optuna.db").read_text() == "some notes"


def test_the_same_sqlite_file_for_study_and_mlflow_is_refused_before_either_is_touched(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/one.db"
    (problem,) = preflight.service_problems(url, f"sqlite:///{tmp_path}/./one.db", "--storage", "--tracking-uri")
    assert "are the same SQLite file" in problem.message and "optuna.db" in (problem.fix or "")
    assert not (tmp_path / "one.db").exists()


@pytest.mark.parametrize("form", ["plain", "file", "existing"])
def test_a_tracking_uri_that_is_a_path_is_refused_with_the_database_form(tmp_path: Path, form: str) -> None:
    (tmp_path / "store").write_text("a file")
    uri = {"plain": str(tmp_path / "runs"), "file": f"file://{tmp_path}/runs", "existing": str(tmp_path / "store")}
    (problem,) = preflight.tracking_problems(uri[form], "--tracking-uri")
    assert "file store" in problem.message and "sqlite:///" in (problem.fix or ""), problem
    assert not (tmp_path / "runs").exists()


def test_a_path_with_the_file_store_allowed_must_be_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (tmp_path / "store").write_text("a file")
    (problem,) = preflight.tracking_problems(str(tmp_path / "store"), "--tracking-uri")
    assert "is a file, not a folder" in problem.message
    assert preflight.tracking_problems(str(tmp_path / "runs"), "--tracking-uri") == []


def test_a_read_only_artifacts_folder_is_refused(tmp_path: Path) -> None:
    with read_only_folder(tmp_path / "mlruns" / "artifacts"):
        (problem,) = preflight.tracking_problems(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "--tracking-uri")
    assert "cannot store artifacts" in problem.message and "read-only" in problem.message
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


class _NotMLflow(http.server.BaseHTTPRequestHandler):
    answer_everything = False

    def do_GET(self) -> None:
        found = self.path == "/health" or self.answer_everything
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>OK</html>")

    def log_message(self, *args: object) -> None:
        pass


class _AnswersEverything(_NotMLflow):
    answer_everything = True


@contextmanager
def _server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("handler", [_NotMLflow, _AnswersEverything])
def test_a_server_that_answers_health_but_is_not_mlflow_is_refused(
    handler: type[http.server.BaseHTTPRequestHandler],
) -> None:
    with _server(handler) as uri:
        (problem,) = preflight.tracking_problems(uri, "--tracking-uri")
    assert "is this an MLflow tracking server?" in problem.message, problem


def test_read_only_cache_and_output_folders_are_refused(tmp_path: Path) -> None:
    data = {**SMALL_SWEEP["data"], "cache_dir": str(tmp_path / "ro" / "cache")}
    train = {**SMALL_SWEEP["train"], "output_dir": str(tmp_path / "ro" / "trials")}
    file = write_sweep(tmp_path, data=data, train=train)
    sweep = load_sweep(file)
    configs = [resolve_train_config(sweep, tmp_path)]
    assert preflight.folder_problems(sweep, configs, str(file)) == []
    with read_only_folder(tmp_path / "ro"):
        problems = preflight.folder_problems(sweep, configs, str(file))
    assert [problem.where for problem in problems] == [f"{file}:data.cache_dir", f"{file}:train.output_dir"]
    assert all("read-only" in problem.message for problem in problems), problems


def test_a_refused_write_in_a_trial_is_this_machine_s_fault_and_retried() -> None:
    from ftlab.sweep.trial_process import record_for, run_ending

    error = OSError(errno.EROFS, "Read-only file system", "/runs/trial-000/model")
    record = record_for(error)
    assert record.state == "FAIL" and record.retry and record.machine_fault
    assert record.reason is not None and "/runs/trial-000/model" in record.reason and "read-only" in record.reason
    assert run_ending(error) == ("KILLED", record.reason)
