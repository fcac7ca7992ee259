"""Every bad input caught before a trial starts: the search space, the model, the data, the storage, the tracking
server. Each says where (file and key), what, the value and how to fix it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ftlab.config import parse_sweep
from ftlab.errors import ConfigError
from ftlab.sweep import preflight
from tests.helpers import SMALL_SWEEP
from tests.support.services import POSTGRES_SERVER_URL, postgres_database

pytest_plugins = ["tests.support.services"]


def sweep_with(**changes: object):
    return parse_sweep({**SMALL_SWEEP, **changes}, "sweep.yaml")


def settings_problems(**changes: object) -> list[str]:
    return [str(problem) for problem in preflight.settings_problems(sweep_with(**changes), Path(), "sweep.yaml")[1]]


# --- the search space --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "float", "low": 1e-3, "high": 1e-4}, "`low` (0.001) must be below `high` (0.0001)"),
        ({"type": "float", "low": 0.0, "high": 1e-3, "log": True}, "a log range needs `low` above 0"),
        ({"type": "int", "low": 0, "high": 8, "log": True}, "a log range needs `low` above 0"),
        ({"type": "float", "low": 1e-4, "high": 1e-3, "log": True, "step": 1e-4}, "`log: true` or have a `step`"),
    ],
)
def test_ranges_optuna_would_refuse_are_refused_when_the_file_is_read(spec: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"sweep\.yaml:search\.learning_rate") as caught:
        sweep_with(search={"learning_rate": spec})
    assert expected in str(caught.value)


def test_every_value_a_range_can_produce_must_train() -> None:
    (problem,) = settings_problems(search={"learning_rate": {"type": "float", "low": 0.0, "high": 1e-3}})
    assert problem.startswith("sweep.yaml:search.learning_rate.low: `learning_rate` = 0.0 cannot be trained")
    assert "greater than 0" in problem
    (problem,) = settings_problems(search={"warmup_ratio": {"type": "float", "low": 0.0, "high": 1.5}})
    assert "search.warmup_ratio.high" in problem and "less than 1" in problem


@pytest.mark.parametrize(("choice", "index"), [(0, 1), (-8, 1), (2.5, 1), (True, 1)])
def test_effective_batch_choices_are_positive_whole_numbers(choice: object, index: int) -> None:
    (problem,) = settings_problems(search={"total_train_batch_size": {"choices": [8, choice]}})
    assert f"search.total_train_batch_size.choices[{index}]" in problem and "whole number" in problem


def test_a_factor_range_needs_a_positive_float_baseline_value() -> None:
    (zero,) = settings_problems(search={"weight_decay": {"factor": [0.5, 2]}})
    assert "search.weight_decay" in zero and "multiplies the baseline's value, which is 0.0" in zero
    (whole,) = settings_problems(search={"per_device_train_batch_size": {"factor": [0.5, 2]}})
    assert "gives fractions; this setting is a whole number" in whole


def test_a_sound_space_yields_the_settings_at_its_bounds() -> None:
    configs, problems = preflight.settings_problems(sweep_with(), Path(), "sweep.yaml")
    assert problems == []
    assert max(config.total_train_batch_size for config in configs) == 16  # the largest choice, for the data check


# --- the model ---------------------------------------------------------------------------------------------------


def model_problems(name: str) -> list[str]:
    sweep = sweep_with(model={"name_or_path": name})
    return [str(problem) for problem in preflight.model_problems(sweep, "sweep.yaml")]


def test_a_model_folder_that_does_not_exist(tmp_path: Path) -> None:
    (problem,) = model_problems(str(tmp_path / "no-such-model"))
    assert "sweep.yaml:model.name_or_path: model folder not found" in problem


def test_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (problem,) = model_problems(str(tmp_path))
    assert "has no config.json" in problem


def test_a_malformed_hub_id() -> None:
    (problem,) = model_problems("not a model id!")
    assert "neither a local folder nor a hub id" in problem


def test_a_hub_model_offline_and_not_cached_is_told_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    (problem,) = model_problems("ftlab-tests/no-such-model")
    assert "not in the local Hugging Face cache and the hub is switched off (HF_HUB_OFFLINE)" in problem
    assert time.monotonic() - started < 10  # a bound, not a benchmark: the old path retried for ~50 s


def test_a_hub_model_without_network_is_told_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine has no route to the hub: the check must say so, not retry for a minute.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    started = time.monotonic()
    (problem,) = model_problems("ftlab-tests/no-such-model")
    assert "cannot reach the Hugging Face hub" in problem
    assert time.monotonic() - started < 30


# --- the services ------------------------------------------------------------------------------------------------


def test_an_unreachable_tracking_server_is_told_within_seconds() -> None:
    started = time.monotonic()
    (problem,) = preflight.tracking_problems("http://127.0.0.1:9", "--tracking-uri")
    assert "--tracking-uri: cannot reach the MLflow tracking server" in str(problem)
    assert time.monotonic() - started < 10


def test_a_storage_that_never_answers_is_not_a_lost_connection() -> None:
    (problem,) = preflight.storage_problems("postgresql://ftlab:secret@127.0.0.1:1/optuna", "--storage")
    assert "cannot connect to the study storage" in str(problem)
    assert "secret" not in str(problem) and "ftlab:***@" in str(problem)


def test_a_storage_url_that_is_no_database_url() -> None:
    (problem,) = preflight.storage_problems("redis://127.0.0.1:6379", "--storage")
    assert "not a database URL ftlab can open" in str(problem)


@pytest.mark.services
def test_the_plain_postgresql_url_users_write_works_and_psycopg2_still_does() -> None:
    server = POSTGRES_SERVER_URL.split("://", 1)[1]
    with postgres_database("ftlab_preflight") as url:  # skips, with the reason, when no server is reachable
        database = url.rsplit("/", 1)[1]
        assert preflight.storage_problems(f"postgresql://{server}/{database}", "--storage") == []
        assert preflight.storage_problems(f"postgresql+psycopg2://{server}/{database}", "--storage") == []
        # A database that does not exist is a storage that never answered, said at once.
        (missing,) = preflight.storage_problems(f"postgresql://{server}/no_such_database", "--storage")
        assert 'database "no_such_database" does not exist' in str(missing)


def test_the_journal_and_grpc_proxy_forms_of_storage_are_checked_not_refused(tmp_path: Path) -> None:
    assert preflight.storage_problems(f"journal:///{tmp_path / 'shared' / 'study.journal'}", "--storage") == []
    problems = preflight.storage_problems("grpc://127.0.0.1:9", "--storage")
    assert len(problems) == 1 and "no gRPC storage proxy answers at 127.0.0.1:9" in str(problems[0])
