"""Web apps for tests that look at them in a browser: start one in its own process group, stop the whole group.

PYTEST_DONT_REWRITE: nothing here asserts for a test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


class WebAppError(RuntimeError):
    """A web app exited or did not answer in time."""


@contextlib.contextmanager
def serve(
    command: list[str],
    *,
    cwd: Path,
    ready_url: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a web app in its own process group until the block ends; wait until ``ready_url`` answers 200 first.

    The whole group is stopped at the end (SIGTERM, then SIGKILL), so servers that fork workers (uvicorn, gunicorn)
    leave nothing behind, whatever the test did.

    Args:
        command: the server's command line.
        cwd: its working folder (anything it writes by default lands there).
        ready_url: a URL that answers 200 once the app can serve pages.
        log_path: where its output goes; its tail is shown when it does not come up.
        env: its environment; default this process's.
        timeout: seconds to wait for ``ready_url``.

    Raises:
        WebAppError: the server exited or did not answer within ``timeout``.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_answering(process, ready_url, log_path, timeout)
        yield process
    finally:
        stop_process_group(process)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise WebAppError(f"{process.args!r} exited with code {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except OSError as error:  # URLError, connection refused, timeouts
            last_error = str(error)
        time.sleep(0.5)
    raise WebAppError(f"{url} did not answer within {timeout:.0f} s ({last_error}):\n{_tail(log_path)}")


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    """End a process started with ``start_new_session=True`` and every process of its group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + grace  # workers outlive their leader for a moment
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.1)
        if not _group_alive(process.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
