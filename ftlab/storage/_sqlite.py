"""SQLite: a local sweep's study in ``./mlruns/optuna.db``; Optuna's RDBStorage with a lock file beside it."""

from __future__ import annotations

from pathlib import Path

from optuna.storages import BaseStorage

from ftlab.config import StorageConfig
from ftlab.folders import file_problem
from ftlab.storage._base import FileBackendBase, StaleTrialCallback
from ftlab.storage._rdb import open_rdb

# SQLite serialises writers; with several trial processes reporting at once, wait for the lock instead of failing.
_SQLITE_LOCK_TIMEOUT_S = 120

_SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (Optuna's or MLflow's), None for any other URL."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


class SQLiteBackend(FileBackendBase):
    """``sqlite:///PATH``: relative to the current folder, ``sqlite:////PATH`` absolute."""

    fix = "give a path to a SQLite database (or to none yet) in a folder this user can write, not on a read-only mount"

    prefix = "sqlite:///"

    def open(
        self, url: str, config: StorageConfig | None = None, on_stale_trial: StaleTrialCallback | None = None
    ) -> BaseStorage:
        self.file(url).parent.mkdir(parents=True, exist_ok=True)
        return open_rdb(url, {"connect_args": {"timeout": _SQLITE_LOCK_TIMEOUT_S}}, config, on_stale_trial)

    def problem(self, url: str, timeout_s: float) -> str | None:
        # A SQLite file can be written where its folder is, or can be made; an existing one is a SQLite database. By
        # writing, not `os.access`: root passes that check on a read-only mount or an immutable folder.
        database = self.file(url)
        if problem := file_problem(database):
            return f"cannot write the database file: {problem}"
        if database.is_file() and database.stat().st_size > 0:
            with database.open("rb") as file:
                if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                    return f"{database} is not a SQLite database"
        return None
