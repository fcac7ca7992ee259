"""A headless Chromium for tests, driven over the Chrome DevTools Protocol: open a page, wait, click, type, screenshot.

No browser-automation package: Chromium is started with ``--remote-debugging-port=0`` and spoken to over its page's
WebSocket with aiohttp (a dependency of MLflow, so always installed). The handful of protocol methods used here
(``Page.navigate``, ``Runtime.evaluate``, ``Input.dispatchMouseEvent``, ``Input.insertText``,
``Page.captureScreenshot``) are the stable core of the protocol.

Chromium is looked up on PATH, else installed with ``apt-get`` when running as root on a system that has it;
:func:`find_chromium` says why when neither works, for a test to skip with.

PYTEST_DONT_REWRITE: nothing here asserts for a test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Headless on a machine without a display, a GPU or the internet: no sandbox (tests run as root in containers), no
# background traffic (update checks, sync, QUIC probes would flood a closed network), a fresh profile per browser.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
_APT_TIMEOUT_S = 600
KEY_CODES = {"Enter": 13, "Escape": 27, "Tab": 9}


def find_chromium(install: bool = True) -> tuple[str | None, str]:
    """Chromium's executable, installing Debian's package when allowed and possible.

    Args:
        install: try ``apt-get install -y chromium`` when none is on PATH (only as root, only where apt-get exists).

    Returns:
        ``(path, "")`` when found, else ``(None, reason)``: why there is none, for ``pytest.skip``.
    """
    if path := _chromium_on_path():
        return path, ""
    if not install:
        return None, f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)})"
    if shutil.which("apt-get") is None:
        return None, "no Chromium on PATH and no apt-get to install it with; install chromium or google-chrome"
    if os.geteuid() != 0:
        return None, "no Chromium on PATH; installing it needs root (sudo apt-get install -y chromium)"
    if failure := _apt_install("chromium"):
        return None, f"no Chromium on PATH, and {failure}"
    if path := _chromium_on_path():
        return path, ""
    return None, "apt-get installed chromium, but no Chromium executable is on PATH"


def _chromium_on_path() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _apt_install(package: str) -> str:
    """Install a Debian package; returns what went wrong, or an empty string."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`{' '.join(command)}` failed: {error}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"`{' '.join(command)}` failed: {' | '.join(tail)}"
    return ""


class BrowserError(RuntimeError):
    """Chromium did not start, a protocol call failed, or a page never reached the state waited for."""


class Browser:
    """One headless Chromium with one tab, driven synchronously over the DevTools protocol.

    Use it as a context manager; the browser and its temporary profile are removed on exit.

    Args:
        executable: Chromium's executable (see :func:`find_chromium`).
        width: the viewport's width in CSS pixels; screenshots have this size.
        height: the viewport's height.
        startup_timeout: seconds to wait for Chromium's DevTools endpoint.
    """

    def __init__(self, executable: str, *, width: int = 1600, height: int = 1000, startup_timeout: float = 60) -> None:
        self.executable = executable
        self.width = width
        self.height = height
        self.startup_timeout = startup_timeout
        self._profile = Path(tempfile.mkdtemp(prefix="ftlab-chromium-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0

    # --- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> Browser:
        """Start Chromium on a blank page and connect to that page."""
        command = [
            self.executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
            "about:blank",
        ]
        log = (self._profile / "chromium.log").open("wb")
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            page_socket_url = self._page_socket_url(self._devtools_port())
            self._loop.run_until_complete(self._connect(page_socket_url))
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=self.width,
                height=self.height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise
        return self

    def _devtools_port(self) -> int:
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrowserError(f"Chromium exited with code {self._process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(port_file.read_text().splitlines()[0])
            time.sleep(0.1)
        raise BrowserError(f"Chromium opened no DevTools port within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def _page_socket_url(self, port: int) -> str:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                    targets = json.load(response)
                for target in targets:
                    if target.get("type") == "page":
                        return target["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise BrowserError(f"Chromium on DevTools port {port} showed no page:\n{self.log_tail()}")

    async def _connect(self, url: str) -> None:
        self._session = aiohttp.ClientSession()
        # Screenshots come back as one base64 message of several MB.
        self._socket = await self._session.ws_connect(url, max_msg_size=0)

    def close(self) -> None:
        """Close the connection, end Chromium and its children, remove the profile. Safe to call twice."""
        if self._socket is not None or self._session is not None:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._disconnect())
        process, self._process = self._process, None
        if process is not None:
            stop_process_group(process, grace=10)
        if not self._loop.is_closed():
            self._loop.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def _disconnect(self) -> None:
        socket, self._socket = self._socket, None
        session, self._session = self._session, None
        if socket is not None:
            await socket.close()
        if session is not None:
            await session.close()

    def log_tail(self, lines: int = 20) -> str:
        log = self._profile / "chromium.log"
        if not log.exists():
            return "(no log)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the protocol -------------------------------------------------------------------------------------------------

    def call(self, method: str, timeout: float = 60, **params: Any) -> dict[str, Any]:
        """Send one DevTools command to the page and return its result; raises BrowserError on a protocol error."""
        return self._loop.run_until_complete(asyncio.wait_for(self._call(method, params), timeout))

    async def _call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self._socket is None:
            raise BrowserError("the browser is not started")
        self._next_id += 1
        message_id = self._next_id
        await self._socket.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = await self._socket.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"the DevTools connection closed during {method} ({message.type.name})")
            reply = json.loads(message.data)
            if reply.get("id") != message_id:
                continue  # an event, or the late reply of a command that timed out
            if "error" in reply:
                raise BrowserError(f"{method} failed: {reply['error'].get('message')}")
            return reply.get("result", {})

    # --- what a test does ---------------------------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate the tab to ``url`` (returns once navigation started; wait for content with :meth:`wait_for`)."""
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"opening {url} failed: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise), as JSON data."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript failed: {text}\n  in: {expression}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy and return its value; raises BrowserError on timeout.

        Errors while the page loads (no ``document.body`` yet, a context replaced by navigation) count as not yet.
        """
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError as error:
                value, last_error = None, str(error)
            if value:
                return value
            if time.monotonic() > deadline:
                seen = last_error or self.text()[:2000]
                raise BrowserError(f"waited {timeout:.0f} s for {what or expression} on {self.url()}; saw:\n{seen}")
            time.sleep(0.25)

    def url(self) -> str:
        """The address the tab shows."""
        with contextlib.suppress(BrowserError):
            return self.evaluate("location.href") or ""
        return ""

    def text(self) -> str:
        """The visible text of the page (``document.body.innerText``)."""
        with contextlib.suppress(BrowserError):
            return self.evaluate("document.body ? document.body.innerText : ''") or ""
        return ""

    def click(self, element: str, timeout: float = 30) -> None:
        """Click the centre of an element as a mouse would (pointer, mouse and click events, in that order).

        Args:
            element: a JavaScript expression that evaluates to the element (or null until it exists).
            timeout: seconds to wait for the element to exist and have a size.
        """
        box = self.wait_for(
            f"(() => {{ const e = {element}; if (!e) return null; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return r.width && r.height ?"
            " {x: r.x + r.width / 2, y: r.y + r.height / 2} : null; })()",
            timeout,
            what=f"a clickable element {element}",
        )
        for event in ("mouseMoved", "mousePressed", "mouseReleased"):
            extra = {"button": "left", "clickCount": 1} if event != "mouseMoved" else {}
            self.call("Input.dispatchMouseEvent", type=event, x=box["x"], y=box["y"], **extra)

    def choose(self, element: str, timeout: float = 30) -> None:
        """Choose an item of an open menu (its click handler, without moving the mouse).

        A submenu closes when the pointer leaves the row that opened it other than straight into the submenu, which
        a synthetic mouse jump does not do reliably; choosing the item as the keyboard would is what a person gets.

        Args:
            element: a JavaScript expression that evaluates to the menu item (or null until it exists).
            timeout: seconds to wait for the item to exist.
        """
        self.wait_for(f"!!({element})", timeout, what=f"a menu item {element}")
        self.evaluate(f"({element}).click()")

    def type(self, text: str) -> None:
        """Type text into the focused element."""
        self.call("Input.insertText", text=text)

    def press(self, key: str) -> None:
        """Press and release a named key (one of ``KEY_CODES``) on the focused element."""
        code = KEY_CODES[key]
        for event in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=event, key=key, code=key, windowsVirtualKeyCode=code)

    def screenshot(self, path: Path) -> Path:
        """Write the viewport as a PNG to ``path`` and return it."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def by_text(text: str, selector: str = "*") -> str:
    """A JavaScript expression for the innermost element matching ``selector`` whose own text is exactly ``text``."""
    return (
        f"[...document.querySelectorAll({json.dumps(selector)})]"
        f".filter(e => e.innerText && e.innerText.trim() === {json.dumps(text)})"
        ".sort((a, b) => b.querySelectorAll('*').length - a.querySelectorAll('*').length).pop() || null"
    )


# --- the web apps a test looks at -------------------------------------------------------------------------------------


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
        BrowserError: the server exited or did not answer within ``timeout``.
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
            raise BrowserError(f"{process.args!r} exited with code {process.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except OSError as error:  # URLError, connection refused, timeouts
            last_error = str(error)
        time.sleep(0.5)
    raise BrowserError(f"{url} did not answer within {timeout:.0f} s ({last_error}):\n{_tail(log_path)}")


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
