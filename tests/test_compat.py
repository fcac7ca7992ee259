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
