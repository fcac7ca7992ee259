"""Real services for tests and benchmarks: a throwaway PostgreSQL database, an MLflow tracking server on it, and
Optuna's gRPC storage proxy in front of a database. No mocks.

Use the fixtures by registering this module as a plugin, once, in the test module (or in ``tests/conftest.py``)::

    pytest_plugins = ["tests.support.services"]

    @pytest.mark.services
    def test_workers_share_a_study(postgres_url, mlflow_server):
        ...  # postgres_url: a fresh empty database; mlflow_server.uri: http://127.0.0.1:PORT

Fixtures:

- ``postgres_url`` (function): the URL of a fresh, empty database, dropped after the test.
- ``postgres_databases`` (function): a factory, ``postgres_databases("optuna") -> url``, for tests that need several
  databases; every one is dropped after the test.
- ``mlflow_server`` (function, backed by one server per test module): a running :class:`MlflowServer` whose backend is
  a fresh PostgreSQL database and whose artifacts are proxied (``mlflow-artifacts:``) into a temporary folder. The
  server, its database and its data are shared by the tests of one module, so use unique experiment names; a test
  may ``stop()`` it and the next test gets it started again, on the same port.

A test skips, with the reason, when PostgreSQL is not reachable. ``FTLAB_TEST_POSTGRES`` overrides the server URL
(default ``postgresql://postgres@127.0.0.1:5432``, trust authentication: the plain form users write, which
SQLAlchemy opens with psycopg 3).

PYTEST_DONT_REWRITE: nothing here asserts for a test, so a test module may import from this module before pytest
loads it as a plugin.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.exc import OperationalError

from ftlab.errors import redact_url

POSTGRES_SERVER_URL = os.environ.get("FTLAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
_CONNECT_TIMEOUT_S = 3
_STARTUP_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 15

# The server's environment, here and in docker-compose.yml: no usage telemetry (nothing leaves the machine), and no
# job runner (MLflow's GenAI judge/rollup jobs, which ftlab does not use; it would add a process and a /dev/shm folder
# per start).
MLFLOW_SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


# --- PostgreSQL -------------------------------------------------------------------------------------------------------


def _admin_engine(server_url: str) -> sqlalchemy.Engine:
    """An AUTOCOMMIT engine on the server's ``postgres`` database (CREATE/DROP DATABASE refuse transactions)."""
    return sqlalchemy.create_engine(
        f"{server_url}/postgres",
        isolation_level="AUTOCOMMIT",
        poolclass=sqlalchemy.NullPool,
        connect_args={"connect_timeout": _CONNECT_TIMEOUT_S},
    )


def _drop_database(engine: sqlalchemy.Engine, name: str) -> None:
    with engine.connect() as connection:
        # An MLflow server or an Optuna storage left behind would otherwise make DROP DATABASE fail.
        connection.execute(
            sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def postgres_database(prefix: str = "ftlab_test", server_url: str = POSTGRES_SERVER_URL) -> Iterator[str]:
    """Create a uniquely named, empty database, yield its SQLAlchemy URL, and drop it afterwards.

    Args:
        prefix: the start of the database's name (letters, digits, underscores); a random suffix follows.
        server_url: the server, without a database: ``postgresql://USER[:PASSWORD]@HOST:PORT``.

    Yields:
        ``{server_url}/{name}``, e.g. ``postgresql://postgres@127.0.0.1:5432/ftlab_test_3f2a…``.

    Raises:
        pytest.skip.Exception: the server is not reachable (the test is skipped with the reason).
    """
    if not prefix.replace("_", "").isalnum():
        raise ValueError(f"A database prefix may hold letters, digits and underscores only, but got prefix={prefix!r}.")
    engine = _admin_engine(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}".lower()
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        engine.dispose()
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        pytest.skip(f"PostgreSQL is not reachable at {redact_url(server_url)} ({reason}); set FTLAB_TEST_POSTGRES")
    try:
        yield f"{server_url}/{name}"
    finally:
        _drop_database(engine, name)
        engine.dispose()


def database_exists(url: str) -> bool:
    """Whether the database named at the end of ``url`` exists on its server."""
    server_url, name = url.rsplit("/", 1)
    engine = _admin_engine(server_url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            return found.first() is not None
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards); skips if PostgreSQL is unreachable."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def postgres_databases() -> Iterator[Callable[[str], str]]:
    """A factory for several fresh databases in one test: ``postgres_databases("optuna") -> url``; all dropped after."""
    with contextlib.ExitStack() as stack:
        yield lambda prefix="ftlab_test": stack.enter_context(postgres_database(prefix))


# --- MLflow tracking server -------------------------------------------------------------------------------------------


def mlflow_server_command(
    backend_uri: str, artifacts_dir: str, host: str, port: int, *, allowed_hosts: str | None = None
) -> list[str]:
    """The ``mlflow server`` command line the tests run; docker-compose.yml's ``mlflow`` service has the same flags.

    Args:
        backend_uri: the backend store, a SQLAlchemy URL (``postgresql://…``).
        artifacts_dir: where the server stores the artifacts it proxies; new experiments get ``mlflow-artifacts:/``.
        host: the interface to bind.
        port: the port to listen on.
        allowed_hosts: MLflow 3's ``--allowed-hosts`` (the Host headers it answers; it rejects other names with 403,
            except on ``/health``). Default: ``{host}:*,localhost:*``, whatever port a client or a tunnel uses.

    Returns:
        The argv, starting with this interpreter's ``-m mlflow server``.
    """
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts_dir,
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        allowed_hosts or f"{host}:*,localhost:*",
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class MlflowServer:
    """An ``mlflow server`` subprocess on a PostgreSQL backend that can be stopped and started again on its port.

    The port is chosen once, so ``uri`` stays valid across :meth:`stop` and :meth:`start` (a client keeps working
    after a restart). The server runs in its own process group, so stopping it also ends its uvicorn worker and job
    runner; its output goes to ``log_path``, shown when it fails to start.

    Args:
        backend_uri: the backend store URL (a PostgreSQL database from :func:`postgres_database`).
        artifacts_dir: where proxied artifacts are stored.
        host: the interface to bind; clients use ``http://{host}:{port}``.
        port: the port; default a free one.
        log_dir: where ``mlflow-server.log`` goes; default a new temporary folder.
        startup_timeout: seconds to wait for the server to answer before failing.
    """

    def __init__(
        self,
        backend_uri: str,
        artifacts_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_dir: Path | None = None,
        startup_timeout: float = _STARTUP_TIMEOUT_S,
    ) -> None:
        self.backend_uri = backend_uri
        self.artifacts_dir = Path(artifacts_dir)
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="mlflow-server-")) / "mlflow-server.log"
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The tracking URI: ``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        return mlflow_server_command(self.backend_uri, str(self.artifacts_dir), self.host, self.port)

    def start(self) -> MlflowServer:
        """Start the server (a no-op if it runs) and wait until its REST API answers; raises with the log tail."""
        if self.running:
            return self
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **MLFLOW_SERVER_ENV}
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start: {redact_url(' '.join(self.command()))}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.log_path.parent,  # anything the server writes by default lands beside its log
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the server and its children together
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self) -> None:
        # The experiments API, not /health: /health answers before the Host check and without touching the database.
        probe = f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1"
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {self._process.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(probe, timeout=5) as response:
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(0.25)
        raise TimeoutError(
            f"mlflow server on {self.uri} did not answer within {self.startup_timeout:.0f} s ({last_error}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server and its children (SIGTERM, then SIGKILL after a grace period); a no-op if stopped."""
        process, self._process = self._process, None
        if process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, _STOP_TIMEOUT_S), (signal.SIGKILL, _STOP_TIMEOUT_S)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children outlive the leader for a moment; the port is free only once they are gone.
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def mlflow_server_on_postgres(workdir: Path) -> Iterator[MlflowServer]:
    """A running :class:`MlflowServer` on a fresh PostgreSQL database, artifacts and log under ``workdir``."""
    with (
        postgres_database("ftlab_mlflow") as backend_uri,
        MlflowServer(backend_uri, workdir / "artifacts", log_dir=workdir) as server,
    ):
        yield server


@pytest.fixture(scope="module")
def mlflow_server_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One MLflow server (and its PostgreSQL database) for all the tests of a module; prefer ``mlflow_server``."""
    with mlflow_server_on_postgres(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server


@pytest.fixture
def mlflow_server(mlflow_server_module: MlflowServer) -> MlflowServer:
    """The module's MLflow server, running (started again if an earlier test stopped it)."""
    return mlflow_server_module.start()


@contextlib.contextmanager
def grpc_proxy(
    database_url: str, folder: Path, pids: list[int] | None = None, port: int | None = None
) -> Iterator[str]:
    """Optuna's gRPC storage proxy in front of the database, as a process of its own (``docker-compose.yml``'s
    ``storage-proxy`` service runs the same code), on ``port`` (default a free one). ``get_storage`` adds Optuna's
    cache of finished trials, as ``run_grpc_proxy_server``'s documentation asks."""
    from optuna.storages import GrpcStorageProxy

    port = port or free_port()
    code = (
        "import sys; from optuna.storages import RDBStorage, get_storage, run_grpc_proxy_server; "
        "run_grpc_proxy_server(get_storage(RDBStorage(sys.argv[1], engine_kwargs={'pool_pre_ping': True})), "
        "host='127.0.0.1', port=int(sys.argv[2]))"
    )
    with (folder / "grpc-proxy.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code, database_url, str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    if pids is not None:
        pids.append(process.pid)  # for its CPU time
    try:
        proxy = GrpcStorageProxy(host="127.0.0.1", port=port)
        proxy.wait_server_ready(timeout=60)
        proxy.close()
        yield f"grpc://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
