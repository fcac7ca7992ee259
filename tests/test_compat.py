"""Every private Optuna part ftlab touches still exists (this fails first when an Optuna release removes one), and a
storage without what ftlab needs gets a clear error rather than an AttributeError."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from ftlab.sweep import compat
from ftlab.sweep.compat import UnsupportedStorageError
from tests.support.clock import StudyClock


def heartbeat_study(tmp_path: Path) -> optuna.Study:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=3)
    return optuna.create_study(study_name="compat", storage=storage)


def test_every_touchpoint_works_on_an_rdb_storage(tmp_path: Path) -> None:
    study = heartbeat_study(tmp_path)
    asked = study.ask()
    trial_id = compat.trial_id_of(asked)
    assert compat.trial_id_of(study.trials[0]) == trial_id  # FrozenTrial too
    assert compat.study_id_of(study) == compat.storage_of(study).get_study_id_from_name("compat")
    assert isinstance(compat.rdb_backend(study), RDBStorage)
    assert compat.grace_period_of(study) == 3

    # A handle rebuilt from the id, as a trial process does, writes to the same trial.
    handle = compat.trial_handle(study, trial_id)
    handle.set_user_attr("seen", True)
    assert study.trials[0].user_attrs["seen"] is True

    assert compat.running_trials_without_heartbeat(study) == [trial_id]
    compat.record_heartbeat(study, trial_id)
    assert compat.running_trials_without_heartbeat(study) == []
    assert compat.stale_trial_ids(study) == []
    StudyClock(study).advance(10)  # the beat is now older than the 3 s grace period
    assert compat.stale_trial_ids(study) == [trial_id]

    assert compat.set_trial_state(study, trial_id, TrialState.FAIL) is True
    assert study.trials[0].state is TrialState.FAIL


def test_a_storage_without_heartbeats_gets_a_clear_error(tmp_path: Path) -> None:
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(tmp_path / "journal.log"))))
    trial_id = compat.trial_id_of(study.ask())
    with pytest.raises(UnsupportedStorageError, match=r"JournalStorage.*keeps no heartbeats"):
        compat.record_heartbeat(study, trial_id)
    # What only RDB storages have is simply absent elsewhere, not an AttributeError.
    assert compat.rdb_backend(study) is None
    assert compat.grace_period_of(study) is None
    assert compat.running_trials_without_heartbeat(study) == []


def test_the_storage_backends_touchpoints_work(tmp_path: Path) -> None:
    """The private parts the storage backends use (ftlab/storage): Optuna's heartbeat interface on a journal, the
    cache inside an RDB storage behind ftlab's retrying wrapper, and the gRPC client's stub and trial cache."""
    from ftlab.config import StorageConfig
    from ftlab.storage import open_storage
    from ftlab.storage._grpc import HeartbeatGrpcStorageProxy, _RetryingStub

    config = StorageConfig(heartbeat_interval=1, grace_period=3)
    journal = optuna.create_study(storage=open_storage(f"journal:///{tmp_path / 'study.journal'}", config))
    trial_id = compat.trial_id_of(journal.ask())
    assert compat.grace_period_of(journal) == 3 and compat.heartbeat_interval_of(journal) == 1
    assert compat.running_trials_without_heartbeat(journal) == [trial_id]
    compat.record_heartbeat(journal, trial_id)
    assert compat.running_trials_without_heartbeat(journal) == []

    rdb = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", config))
    assert isinstance(compat.rdb_backend(rdb), RDBStorage)  # through RetryingStorage and Optuna's _CachedStorage

    pytest.importorskip("grpc")
    proxy = open_storage("grpc://127.0.0.1:9")  # the channel connects lazily: no proxy needed
    assert isinstance(proxy, HeartbeatGrpcStorageProxy)
    assert isinstance(proxy._stub, _RetryingStub) and proxy._cache.grpc_client is proxy._stub
    proxy.close()
