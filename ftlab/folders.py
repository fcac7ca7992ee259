"""Whether ftlab can make files in a folder, proved before any work by making one: root passes ``os.access``
checks that a read-only mount, an immutable (``chattr +i``) folder or a file-size limit still refuse. A command that
cannot write where it was asked to refuses in one line before it trains, downloads or creates anything."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ftlab.errors import UserError

# Errors of creating a file that the user can fix by choosing another path.
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be made in ``folder`` (made as needed), or None: a file where a folder has to be, or a
    folder that refuses writes (read-only filesystem, immutable, permissions, no space). Leaves nothing behind."""
    existing = folder.expanduser()  # or its nearest ancestor that exists: a missing folder is made in it
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=".ftlab-probe-", dir=existing)
    except OSError as error:
        return f"cannot write in {existing}: {_reason(error)}"
    os.close(handle)
    os.unlink(probe)
    return None


def file_problem(file: Path) -> str | None:
    """Why ``file`` (made as needed, or written in place) cannot be written, or None."""
    file = file.expanduser()
    if file.is_dir():
        return f"{file} is a folder, not a file"
    if not file.exists():
        return folder_problem(file.parent)
    try:
        with file.open("ab"):
            pass
    except OSError as error:
        return f"cannot write {file}: {_reason(error)}"
    return None


def unwritable_reason(target: Path) -> str | None:
    """Why ``target`` (a file or folder written beside itself and renamed into place, with any missing parent
    folders) cannot be created; None if it can."""
    problem = folder_problem(Path(os.path.abspath(target.expanduser())).parent)
    if problem is not None and problem.endswith("is a file, not a folder"):
        return f"{problem}, so nothing can be created under it"
    return problem


@contextmanager
def naming_write_errors(where: str, fix: str) -> Iterator[None]:
    """Turn a failed create or write that is about the path (permissions, a read-only mount, a file in the way) into
    a :class:`UserError` naming ``where``; other errors pass unchanged."""
    try:
        yield
    except OSError as error:
        if error.errno not in PATH_ERRNOS:
            raise
        shown = _reason(error) + (f": {error.filename}" if error.filename else "")
        raise UserError.single(f"cannot write there ({shown})", where=where, fix=fix) from None


def _reason(error: OSError) -> str:
    if error.errno == errno.EROFS:
        return "the filesystem is read-only"
    return error.strerror or str(error)


_REFUSED_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


def refused_write(error: BaseException | None) -> str | None:
    """A write the folder refused (read-only, immutable, permissions) anywhere in ``error``'s causes, as one line
    naming the path; else None. Such a folder fails every trial alike: it is this machine's fault, not the recipe's."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _REFUSED_ERRNOS:
            where = f" {error.filename}" if error.filename else ""
            return f"cannot write{where}: {_reason(error)}"
        error = error.__cause__ or error.__context__
    return None
