"""Files and folders written whole or not at all, and folders built once by whichever process gets there first.

Readers never see a half-written result file, checkpoint, model folder or cache entry: everything is written under a
temporary sibling name (same filesystem, so the final rename is atomic) and renamed into place when complete. A write
that fails (a crash, a full disk) leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import resource
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

logger = logging.getLogger(__name__)


class NoSpaceError(OSError):
    """A write failed for want of room: the disk or quota is full, or the file-size limit (``ulimit -f``) is hit."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# Libraries written in Rust or C++ (safetensors, torch's own writer) report the OS error in their message only.
_SPACE_MESSAGES = {
    "No space left on device": errno.ENOSPC,
    "os error 28)": errno.ENOSPC,
    "File too large": errno.EFBIG,
    "os error 27)": errno.EFBIG,
    "Disk quota exceeded": errno.EDQUOT,
    "os error 122)": errno.EDQUOT,
}


def _space_errno(error: BaseException | None) -> int | None:
    """The errno of a disk-space failure anywhere in ``error``'s chain of causes, else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _SPACE_ERRNOS:
            return error.errno
        for text, code in _SPACE_MESSAGES.items():
            if text in str(error):
                return code
        error = error.__cause__ or error.__context__
    return None


def no_space_error(error: BaseException, target: Path, what: str | None = None) -> NoSpaceError | None:
    """``error`` named for a person, when it was the disk, a quota or the file-size limit; else None."""
    code = _space_errno(error)
    if code is None:
        return None
    writing = f"while writing {what + ' ' if what else ''}{target}"
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        shown = "unlimited" if limit == resource.RLIM_INFINITY else f"{limit:,} bytes"
        return NoSpaceError(code, f"file too large {writing}: the file-size limit (ulimit -f) is {shown}")
    folder = target.parent if target.parent.exists() else Path.cwd()
    free = shutil.disk_usage(folder).free / 2**20
    mount = folder.resolve()
    while not mount.is_mount():
        mount = mount.parent
    return NoSpaceError(code, f"no space left on {mount} {writing} ({free:,.0f} MB free)")


@contextmanager
def naming_space_errors(target: str | Path, what: str | None = None) -> Iterator[None]:
    """Turn a failed write into a :class:`NoSpaceError` that says where and how much room was left."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as error:
        named = no_space_error(error, Path(target), what)
        if named is None:
            raise
        raise named from error


def _sibling(path: Path, tag: str) -> Path:
    # A leading dot and a random suffix: no reader looks for it, and two writers never share one.
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(NotADirectoryError):  # a file where its folder should be: nothing was created
            path.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file or a folder into; on success it replaces ``target``.

    A folder replaces an existing folder too (POSIX cannot rename over a non-empty one, so the old one is moved aside
    first and removed after). On any exception the temporary path is removed and the target is left as it was; a full
    disk or a file-size limit is raised as a :class:`NoSpaceError` that says so.
    """
    target = Path(target)
    staging = _sibling(target, "tmp")
    try:
        with naming_space_errors(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            yield staging
            if staging.is_dir() and target.is_dir():
                retired = _sibling(target, "old")
                os.replace(target, retired)
                os.replace(staging, target)
                _remove(retired)
            else:
                os.replace(staging, target)
    except BaseException:
        _remove(staging)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    with atomic_path(path) as staging:
        staging.write_bytes(text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, **dumps: Any) -> None:
    """Write ``data`` as JSON to ``path`` whole or not at all."""
    atomic_write_text(path, json.dumps(data, **dumps) + "\n")


def build_once(
    target: Path,
    build: Callable[[Path], None],
    is_complete: Callable[[Path], bool],
    *,
    force: bool = False,
    lock_timeout: float = -1,
) -> bool:
    """Make sure the folder ``target`` holds a complete build; whether this call built it.

    ``build(staging)`` fills an empty staging folder; ``is_complete(folder)`` says whether a folder holds a finished
    build (usually: a marker file that ``build`` writes last). Several processes may call this at once: one builds,
    under a lock file beside ``target``, the others wait and then find the build complete. A complete build is read
    without taking the lock. A build that crashed leaves only its staging folder (or the previous build moved aside),
    which the next builder removes.

    Raises:
        filelock.Timeout: another process held the lock for longer than ``lock_timeout`` seconds (-1: wait forever);
            its ``lock_file`` names the lock.
    """
    if not force and is_complete(target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.with_name(target.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:  # say why this call is slow before it blocks
        logger.info("Waiting for another process that is building %s (lock %s)", target, lock.lock_file)
        lock.acquire(timeout=lock_timeout)
    try:
        if not force and is_complete(target):  # another process finished it while this one waited
            return False
        for tag in ("tmp", "old"):  # the lock says no build is running, so these are a crashed build's
            for leftover in target.parent.glob(f".{target.name}.{tag}-*"):
                _remove(leftover)
        with atomic_path(target) as staging:
            staging.mkdir()
            build(staging)
    finally:
        lock.release()
    return True
