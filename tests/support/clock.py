"""Time that tests move on by hand, so that heartbeats age past a grace period without the test sleeping through it.

ftlab decides that a trial is stale with a clock it can be given: a SystemAttrHeartbeat storage's ``clock`` (journal
files and the gRPC proxy: it stamps the beats and compares them) and :func:`ftlab.sweep.reaper.fail_orphaned_trials`'s
``clock`` (a trial's age since it was asked for). Optuna's RDBStorage (SQLite, PostgreSQL) stamps beats and compares
them with the database server's own clock, which no test can move: there, moving time on by ``s`` seconds moves every
stored beat ``s`` seconds back, which is the same to that comparison.
"""

from __future__ import annotations

import time
from datetime import timedelta

import optuna
import sqlalchemy

from ftlab.storage import SystemAttrHeartbeat
from ftlab.sweep import compat


class StudyClock:
    """Seconds since the epoch as ``study``'s heartbeats and the reaper see them; starts at the real time and moves
    only by :meth:`advance`. Call it as the clock (``fail_orphaned_trials(study, clock)``)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.now = time.time()
        storage = compat.storage_of(study)
        if isinstance(storage, SystemAttrHeartbeat):
            storage.clock = self

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``: every heartbeat recorded so far, and every trial, is that much older."""
        self.now += seconds
        backend = compat.rdb_backend(self.study)
        if backend is not None:
            _move_beats_back(backend.engine, seconds)


def _move_beats_back(engine: sqlalchemy.Engine, seconds: float) -> None:
    # Optuna's own table (see compat.running_trials_without_heartbeat), rewritten in Python: SQLite and PostgreSQL
    # spell date arithmetic differently. Typed, so that SQLite's text timestamps come back as datetimes.
    select = sqlalchemy.text("SELECT trial_heartbeat_id, heartbeat FROM trial_heartbeats").columns(
        sqlalchemy.column("trial_heartbeat_id", sqlalchemy.Integer), sqlalchemy.column("heartbeat", sqlalchemy.DateTime)
    )
    update = sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :beat WHERE trial_heartbeat_id = :id").bindparams(
        sqlalchemy.bindparam("beat", type_=sqlalchemy.DateTime)
    )
    with engine.begin() as connection:
        for beat_id, beat in connection.execute(select).all():
            connection.execute(update, {"beat": beat - timedelta(seconds=seconds), "id": beat_id})
