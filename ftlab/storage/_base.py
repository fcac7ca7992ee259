"""What every storage backend offers: the one place a new kind of study storage plugs in.

A backend is a URL form (``sqlite:///``, ``postgresql://``, ``grpc://HOST:PORT``, ``journal:///PATH``) and what ftlab
needs of it: the Optuna storage with heartbeats, a lock that serialises workers, a reachability check that answers
within seconds, and whether the store exists already (so that commands that only read create nothing).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import ClassVar

import optuna
from filelock import FileLock
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from ftlab.config import StorageConfig

StaleTrialCallback = Callable[[optuna.Study, FrozenTrial], None]


class StudyMutex(abc.ABC):
    """A lock every worker process of a study agrees on, whatever machine it runs on."""

    @abc.abstractmethod
    def held(self) -> AbstractContextManager[object]:
        """Hold the lock for the ``with`` block."""


class BaseStorageBackend(abc.ABC):
    """One kind of study storage. Subclasses live in a private module each and are listed in ``BACKENDS``
    (``ftlab/storage/__init__.py``), which asks them in turn whether they handle a URL."""

    fix: ClassVar[str]  # what a user does about a :meth:`problem`, for the error message

    @abc.abstractmethod
    def handles(self, url: str) -> bool:
        """Whether ``url`` is this backend's form."""

    @abc.abstractmethod
    def open(
        self, url: str, config: StorageConfig | None = None, on_stale_trial: StaleTrialCallback | None = None
    ) -> BaseStorage:
        """The Optuna storage at ``url``. With ``config``, running trials send heartbeats and a trial silent for
        ``grace_period`` seconds is failed by whichever worker looks next, which then calls ``on_stale_trial``."""

    @abc.abstractmethod
    def mutex(self, url: str, study_name: str, purpose: str) -> StudyMutex:
        """A lock for ``purpose`` (``"study"``: asking for trials) in study ``study_name``, shared by every worker of
        the storage."""

    @abc.abstractmethod
    def problem(self, url: str, timeout_s: float) -> str | None:
        """Why the storage at ``url`` cannot be used now (answered within ``timeout_s``), or None when it can."""

    def exists(self, url: str) -> bool:
        """Whether the store is there already; a server database is (opening it creates only Optuna's tables)."""
        return True

    def local_files(self, url: str) -> list[Path]:
        """The files on this machine that hold the store (what nothing ftlab writes may replace); none for a server."""
        return []


class FileBackendBase(BaseStorageBackend):
    """A backend whose store is one file on this machine (or a filesystem every worker shares), named by its URL:
    ``PREFIX``, then the path, with slashes as in ``sqlite:///``: ``sqlite:///study.db`` is relative to the current
    folder, ``sqlite:////nfs/study.db`` absolute. The study lock is a file beside the store."""

    prefix: ClassVar[str]  # the URL's start, before the file's path: "sqlite:///"
    lock_infix: ClassVar[str] = ""  # between the store's path and a lock file's suffix

    def handles(self, url: str) -> bool:
        return url.startswith(self.prefix)

    def exists(self, url: str) -> bool:
        return self.file(url).is_file()

    def local_files(self, url: str) -> list[Path]:
        return [self.file(url)]

    def file(self, url: str) -> Path:
        """The store's file (for a URL this backend handles)."""
        return Path(url.removeprefix(self.prefix))

    def mutex(self, url: str, study_name: str, purpose: str) -> StudyMutex:
        # Nothing more for the study lock, `.purpose` for the others.
        suffix = "" if purpose == "study" else f".{purpose}"
        return FileMutex(f"{self.file(url)}{self.lock_infix}{suffix}.lock")


def lock_name(study_name: str, purpose: str) -> str:
    """The study's name for its main lock, ``study:purpose`` for the others."""
    return study_name if purpose == "study" else f"{study_name}:{purpose}"


class NoMutex(StudyMutex):
    """For storages that offer no lock (a database server other than PostgreSQL): workers are not serialised."""

    def held(self) -> AbstractContextManager[object]:
        return nullcontext()


class FileMutex(StudyMutex):
    """A lock file on the filesystem the store is on (local, or shared by every worker)."""

    def __init__(self, path: str) -> None:
        self._lock = FileLock(path)

    def held(self) -> AbstractContextManager[object]:
        return self._lock
