"""What is at a path that should be a regular file: nothing, a folder, or a pipe, device or socket.

"not found" for a folder or a FIFO sends the user looking for a typo in a path that exists; a FIFO or a device would
also block or never end if it were read.
"""

from __future__ import annotations

from pathlib import Path


def not_a_file_message(path: Path, what: str) -> str:
    """``what`` (e.g. "data file") and why ``path``, which is not a regular file, cannot be one."""
    if path.is_dir():
        return f"{what} is a folder, not a file"
    if path.exists():
        return f"{what} is not a regular file (a pipe, device or socket)"
    return f"{what} not found"
