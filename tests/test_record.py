"""The one trial record: through the result file and through Optuna's user attributes, nothing changes on the way."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from ftlab.record import BASELINE_ATTR, RUN_ID_ATTR, TrialRecord
from ftlab.sweep.study import tell

COMPLETE = TrialRecord(
    "COMPLETE",
    values=[4.25],
    metrics={
        "eval/loss": 4.25,
        "eval/perplexity": 70.105,
        "train/loss": 4.5,
        "train/tokens_seen": 65536,
        "perf/train_seconds": 12.5,
    },
    device="cpu",
    model_dir="/trials/trial-003/final",
    data_fingerprint="abc123",
    per_device_train_batch_size=2,
    gradient_accumulation_steps=4,
)


def test_the_result_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    assert TrialRecord.read(path) is None, "no file: the trial process died without a word"
    COMPLETE.write(path)
    assert TrialRecord.read(path) == COMPLETE
    assert not list(tmp_path.glob(".*")), "no temporary file is left"


@pytest.mark.parametrize(
    "record",
    [COMPLETE, TrialRecord("PRUNED", "pruned after 4,096 tokens: eval/loss 6.1"), TrialRecord("FAIL", "boom")],
    ids=["complete", "pruned", "failed"],
)
def test_telling_the_study_and_reading_it_back_gives_the_same_record(record: TrialRecord) -> None:
    study = optuna.create_study()
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    trial.set_user_attr(BASELINE_ATTR, True)
    trial.set_user_attr(RUN_ID_ATTR, "run-1")
    tell(study, trial._trial_id, record)
    tell(study, trial._trial_id, record)  # told again (a connection dropped after the commit): nothing changes
    (frozen,) = study.get_trials()
    back = TrialRecord.from_trial(frozen)
    assert back.state == record.state
    assert back.reason == record.reason
    assert back.values == record.values
    for name in ("eval_loss", "perplexity", "train_loss", "tokens_seen", "seconds", "device", "model_dir"):
        assert getattr(back, name) == getattr(record, name)
    assert (back.per_device_train_batch_size, back.gradient_accumulation_steps) == (
        record.per_device_train_batch_size,
        record.gradient_accumulation_steps,
    )
    assert back.number == 0 and back.baseline and back.mlflow_run_id == "run-1"
    assert back.params == {"learning_rate": trial.params["learning_rate"]}
    assert back.duration_s is not None and back.duration_s >= 0


def test_the_stored_attribute_names_stay_those_earlier_versions_wrote() -> None:
    # Studies written before the record existed still read: the names are part of the storage format.
    assert set(COMPLETE.to_user_attrs()) == {
        "eval_loss",
        "perplexity",
        "train_loss",
        "tokens_seen",
        "seconds",
        "device",
        "model_dir",
        "data_fingerprint",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
    }
    assert TrialRecord("PRUNED", "why").to_user_attrs() == {"prune_reason": "why"}
    assert TrialRecord("FAIL", "why").to_user_attrs() == {"fail_reason": "why", "stopped_from_outside": False}


def test_final_metrics_earlier_versions_did_not_store_keep_their_names_under_final() -> None:
    record = TrialRecord("COMPLETE", values=[512.0], metrics={"eval/loss": 4.25, "perf/peak_memory_mb": 512.0})
    attrs = record.to_user_attrs()
    assert attrs["eval_loss"] == 4.25 and attrs["final/perf/peak_memory_mb"] == 512.0
    study = optuna.create_study()
    trial = study.ask()
    tell(study, trial._trial_id, record)
    assert TrialRecord.from_trial(study.get_trials()[0]).metrics == record.metrics
