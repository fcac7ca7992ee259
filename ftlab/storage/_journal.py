"""Optuna's JournalStorage on a file every worker shares (``journal:///PATH``): no database at all."""

from __future__ import annotations

from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from ftlab.config import StorageConfig
from ftlab.folders import file_problem
from ftlab.storage._base import FileBackendBase, FileMutex, StaleTrialCallback, StudyMutex, lock_suffix
from ftlab.storage._heartbeat import SystemAttrHeartbeat


def journal_file(url: str) -> Path | None:
    """The log file of a ``journal:///`` URL, None for any other URL.

    Slashes as in ``sqlite:///``: ``journal:///study.log`` is relative to the current folder, ``journal:////nfs/
    study.log`` absolute.
    """
    return Path(url.removeprefix("journal:///")) if url.startswith("journal:///") else None


class HeartbeatJournalStorage(SystemAttrHeartbeat, JournalStorage):
    """Optuna's JournalStorage (a log file on a filesystem every worker shares) with ftlab's heartbeats."""


class JournalBackend(FileBackendBase):
    """``journal:///PATH``: the study in a journal file; the lock a file beside it."""

    fix = "give a journal path every worker can write (docs/scale-out.md, section 9)"

    path_of = staticmethod(journal_file)

    def open(
        self, url: str, config: StorageConfig | None = None, on_stale_trial: StaleTrialCallback | None = None
    ) -> BaseStorage:
        journal = self._file(url)
        journal.parent.mkdir(parents=True, exist_ok=True)
        storage = HeartbeatJournalStorage(JournalFileBackend(str(journal)))
        if config is not None:
            storage.configure_heartbeat(config.heartbeat_interval, config.grace_period, on_stale_trial)
        return storage

    def mutex(self, url: str, study_name: str, purpose: str) -> StudyMutex:
        # Not `{journal}.lock`: Optuna's own lock for writing the journal is a symlink of that name.
        return FileMutex(f"{self._file(url)}.ftlab{lock_suffix(purpose)}.lock")

    def problem(self, url: str, timeout_s: float) -> str | None:
        problem = file_problem(self._file(url))  # a folder at the journal's path, or one that refuses writes
        return None if problem is None else f"cannot write the journal file: {problem}"
