"""A headless Chromium for tests: Debian's system browser, driven by Playwright.

Playwright cannot download its own browsers here (``playwright install`` needs the internet), so it launches the
Chromium found on PATH, installed with ``apt-get`` when running as root on a system that has it; :func:`find_chromium`
says why when neither works, for a test to skip with.

PYTEST_DONT_REWRITE: nothing here asserts for a test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator

from playwright.sync_api import Browser, sync_playwright

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Headless on a machine without a display, a GPU or the internet: no sandbox (tests run as root in containers), no
# background traffic (without these, update checks, sync and QUIC probes open connections that are refused here, many
# at a time).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
_APT_TIMEOUT_S = 600


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


@contextlib.contextmanager
def launch(executable: str) -> Iterator[Browser]:
    """A headless Chromium started by Playwright from ``executable``, closed when the block ends."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS))
        try:
            yield browser
        finally:
            browser.close()
