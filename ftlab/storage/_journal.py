"""Optuna's JournalStorage on a file every worker shares (``journal:///PATH``): no database at all."""

from __future__ import annotations

from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from ftlab.config import StorageConfig
from ftlab.folders import file_problem
from ftlab.storage._base import FileBackendBase, StaleTrialCallback
from ftlab.storage._heartbeat import SystemAttrHeartbeat


class HeartbeatJournalStorage(SystemAttrHeartbeat, JournalStorage):
    """Optuna's JournalStorage (a log file on a filesystem every worker shares) with ftlab's heartbeats."""


class JournalBackend(FileBackendBase):
    """``journal:///PATH``: the study in a journal file (``journal:///study.log`` relative to the current folder,
    ``journal:////nfs/study.log`` absolute); the lock a file beside it."""

    fix = "give a journal path every worker can write (docs/scale-out.md, section 9)"

    prefix = "journal:///"
    # Not `{journal}.lock`: Optuna's own lock for writing the journal is a symlink of that name.
    lock_infix = ".ftlab"

    def open(
        self, url: str, config: StorageConfig | None = None, on_stale_trial: StaleTrialCallback | None = None
    ) -> BaseStorage:
        journal = self.file(url)
        journal.parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(JournalFileBackend(str(journal))).configure_heartbeat(config, on_stale_trial)

    def problem(self, url: str, timeout_s: float) -> str | None:
        problem = file_problem(self.file(url))  # a folder at the journal's path, or one that refuses writes
        return None if problem is None else f"cannot write the journal file: {problem}"
