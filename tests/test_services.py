"""The real-service fixtures themselves: a PostgreSQL database comes and goes, an MLflow server tracks and restarts."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import sqlalchemy
from mlflow import MlflowClient

from tests.support.services import MlflowServer, database_exists, postgres_database

pytest_plugins = ["tests.support.services"]

pytestmark = pytest.mark.services


def test_postgres_database_is_created_and_dropped() -> None:
    with postgres_database("ftlab_selftest") as url:
        assert url.startswith("postgresql://postgres@127.0.0.1:5432/ftlab_selftest_")
        assert database_exists(url)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
        with engine.connect() as connection:  # left open on purpose: dropping must terminate it
            assert connection.execute(sqlalchemy.text("SELECT current_database()")).scalar() == url.rsplit("/", 1)[1]
            leftover = engine.connect()
        engine.dispose()
    assert not database_exists(url)
    leftover.close()


def test_postgres_fixture_gives_a_usable_empty_database(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.NullPool)
    with engine.connect() as connection:
        tables = connection.execute(
            sqlalchemy.text("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        ).scalar()
    assert tables == 0


def test_unreachable_postgres_skips_with_the_reason() -> None:
    with (
        pytest.raises(pytest.skip.Exception, match=r"PostgreSQL is not reachable at .*127\.0\.0\.1:1"),
        postgres_database(server_url="postgresql://postgres:secret@127.0.0.1:1"),
    ):
        pass


def test_unreachable_postgres_reason_hides_the_password() -> None:
    with (
        pytest.raises(pytest.skip.Exception) as skipped,
        postgres_database(server_url="postgresql://postgres:hunter2@127.0.0.1:1"),
    ):
        pass
    assert "hunter2" not in str(skipped.value)


def _healthy(server: MlflowServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_mlflow_server_tracks_through_postgres_and_proxies_artifacts(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    assert mlflow_server.uri == f"http://127.0.0.1:{mlflow_server.port}"
    assert mlflow_server.backend_uri.startswith("postgresql://")
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment(f"selftest-{uuid.uuid4().hex[:8]}")
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(experiment_id, run_name="selftest")
    client.log_metric(run.info.run_id, "eval/loss", 1.25, step=3)
    note = tmp_path / "note.txt"
    note.write_text("proxied through the server")
    client.log_artifact(run.info.run_id, str(note), "notes")
    client.set_terminated(run.info.run_id, "FINISHED")

    stored = list(mlflow_server.artifacts_dir.rglob("note.txt"))  # the server wrote it, not the client
    assert [path.read_text() for path in stored] == ["proxied through the server"]

    port = mlflow_server.port
    mlflow_server.stop()
    assert not _healthy(mlflow_server)
    mlflow_server.start()
    assert mlflow_server.port == port and _healthy(mlflow_server)

    again = client.get_run(run.info.run_id)  # the same client, the same URI, after the restart
    assert again.data.metrics == {"eval/loss": 1.25}
    assert again.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "eval/loss")
    assert [(m.step, m.value) for m in history] == [(3, 1.25)]
    downloaded = Path(client.download_artifacts(run.info.run_id, "notes/note.txt", str(tmp_path / "down")))
    assert downloaded.read_text() == "proxied through the server"
