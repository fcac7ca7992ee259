"""Commands printed for a person to copy: each word shell-quoted, so a path with spaces or quotes runs as printed."""

from __future__ import annotations

import shlex
from pathlib import Path


def shell_command(*words: str | Path) -> str:
    """``words`` joined into one command line a POSIX shell reads back as the same words."""
    return shlex.join(str(word) for word in words)
