"""A folder that is really read-only for the tests, which run as root (root ignores permission bits)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder`` (created) bind-mounted read-only onto itself for the block; skips the test where mounts are not
    allowed (no root, no CAP_SYS_ADMIN in a container)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only folder here (mount --bind: {mounted.stderr.strip()})")
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot make a read-only folder here (remount ro: {remount.stderr.strip()})")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
