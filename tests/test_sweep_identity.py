"""A study remembers the model and the data its trials were trained on (settings and the prepared data's
fingerprint): a resume, a worker or ``ftlab confirm`` on another model or data is refused, not ranked against the
old trials; a study written before ftlab remembered them is resumed and they are recorded."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import pytest

from ftlab.config import load_sweep
from ftlab.demo import load_sweep_with_assets
from ftlab.errors import ConfigError
from ftlab.record import SWEEP_ATTR, SWEEP_CHANGES_ATTR
from ftlab.settings import resolve_train_config
from ftlab.sweep import identity
from ftlab.sweep.study import ACCEPT_CHANGES_FIX, refuse_changes, remember_sweep, sweep_signature
from tests.helpers import SMALL_SWEEP, run_ftlab, write_sweep

CONFIRM_FIX = "put the file back"


def _signature(tmp_path: Path, fingerprint: str | None = "aaaa", **changes: Any) -> dict[str, Any]:
    sweep = load_sweep(write_sweep(tmp_path, **changes))
    return sweep_signature(sweep, resolve_train_config(sweep, tmp_path), fingerprint)


def _study(signature: dict[str, Any] | None) -> optuna.Study:
    study = optuna.create_study(study_name="small")
    if signature is not None:
        study.set_user_attr(SWEEP_ATTR, signature)
    return study


def _refusal(study: optuna.Study, signature: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as refused:
        remember_sweep(study, signature, "sweep.yaml", accept_changes=False)
    return str(refused.value)


def test_a_changed_block_size_or_model_is_refused_with_what_changed(tmp_path: Path) -> None:
    study = _study(_signature(tmp_path))
    smaller = _signature(tmp_path, "bbbb", data={**SMALL_SWEEP["data"], "block_size": 32})
    message = _refusal(study, smaller)
    assert "data.block_size: 64 → 32" in message and "data_fingerprint: aaaa → bbbb" in message, message
    assert "--accept-changes" in message
    other_model = _signature(tmp_path, model={"name_or_path": "gpt2"})
    assert "model.name_or_path: demo://tiny-gpt2 → gpt2" in _refusal(study, other_model)


def test_an_edited_data_file_of_the_same_name_is_refused_by_its_fingerprint(tmp_path: Path) -> None:
    study = _study(_signature(tmp_path, "aaaa"))
    message = _refusal(study, _signature(tmp_path, "cccc"))
    assert "data_fingerprint: aaaa → cccc" in message and "data.block_size" not in message, message


def test_an_accepted_change_is_recorded(tmp_path: Path) -> None:
    study = _study(_signature(tmp_path, "aaaa"))
    remember_sweep(study, _signature(tmp_path, "dddd"), "sweep.yaml", accept_changes=True)
    assert study.user_attrs[SWEEP_ATTR][identity.FINGERPRINT_KEY] == "dddd"
    assert study.user_attrs[SWEEP_CHANGES_ATTR][0]["changes"] == ["data_fingerprint: aaaa → dddd"]


def test_a_study_from_before_model_and_data_were_remembered_resumes_and_records_them(tmp_path: Path) -> None:
    current = _signature(tmp_path, "aaaa")
    old = {key: value for key, value in current.items() if key not in identity.IDENTITY_KEYS}
    study = _study(old)
    remember_sweep(study, current, "sweep.yaml", accept_changes=False)  # nothing to compare them with: no refusal
    assert study.user_attrs[SWEEP_ATTR] == current and SWEEP_CHANGES_ATTR not in study.user_attrs
    # From then on they are compared.
    assert "data_fingerprint: aaaa → eeee" in _refusal(study, _signature(tmp_path, "eeee"))
    # But the rest of an old signature still is, at once.
    changed_search = copy.deepcopy(old)
    changed_search["search"]["learning_rate"]["factor"] = [0.5, 2]
    assert "search.learning_rate" in _refusal(_study(changed_search), current)


def test_an_unknown_fingerprint_keeps_the_remembered_one(tmp_path: Path) -> None:
    study = _study(_signature(tmp_path, "aaaa"))
    remember_sweep(study, _signature(tmp_path, None), "sweep.yaml", accept_changes=False)
    assert study.user_attrs[SWEEP_ATTR][identity.FINGERPRINT_KEY] == "aaaa"


def test_confirm_s_refusal_offers_only_what_confirm_has(tmp_path: Path) -> None:
    study = _study(_signature(tmp_path, "aaaa"))
    refuse_changes(study, _signature(tmp_path, "aaaa"), "sweep.yaml", CONFIRM_FIX)  # unchanged: nothing said
    with pytest.raises(ConfigError) as refused:
        refuse_changes(study, _signature(tmp_path, "ffff"), "sweep.yaml", CONFIRM_FIX)
    assert CONFIRM_FIX in str(refused.value) and ACCEPT_CHANGES_FIX not in str(refused.value)
    assert study.user_attrs[SWEEP_ATTR][identity.FINGERPRINT_KEY] == "aaaa"  # a refusal records nothing


def test_a_holdout_is_remembered_only_when_set_and_a_changed_one_is_refused(tmp_path: Path) -> None:
    before = _signature(tmp_path)
    assert "holdout_fraction" not in before[identity.DATA_KEY]  # a study from before there were holdouts still matches
    study = _study(before)
    refuse_changes(study, _signature(tmp_path, data={**SMALL_SWEEP["data"], "holdout_fraction": 0}), "s", CONFIRM_FIX)
    with_holdout = _signature(tmp_path, "bbbb", data={**SMALL_SWEEP["data"], "holdout_fraction": 0.1})
    message = _refusal(study, with_holdout)
    assert "data.holdout_fraction: (unset) → 0.1" in message and "data_fingerprint: aaaa → bbbb" in message, message
    smaller = _signature(tmp_path, "cccc", data={**SMALL_SWEEP["data"], "holdout_fraction": 0.05})
    assert "data.holdout_fraction: 0.1 → 0.05" in _refusal(_study(with_holdout), smaller)


def test_a_local_model_folder_is_named_alike_on_every_machine(tmp_path: Path) -> None:
    for machine in ("a", "b"):
        (tmp_path / machine / "tiny").mkdir(parents=True)
        (tmp_path / machine / "tiny" / "config.json").write_text('{"n_positions": 64}')
    sweeps = [
        load_sweep(write_sweep(tmp_path, model={"name_or_path": str(tmp_path / machine / "tiny")}))
        for machine in ("a", "b")
    ]
    first, second = (identity.model_identity(sweep) for sweep in sweeps)
    assert first == second and "tiny" in first["name_or_path"]
    (tmp_path / "b" / "tiny" / "config.json").write_text('{"n_positions": 128}')
    assert identity.model_identity(sweeps[1]) != first


def test_the_preflight_gives_the_data_fingerprint_that_an_edit_changes(tmp_path: Path) -> None:
    from ftlab.sweep import preflight

    text = tmp_path / "text.txt"
    demo = load_sweep_with_assets(write_sweep(tmp_path)).data.train_files  # the demo text, as a local path
    assert demo is not None
    text.write_text(Path(demo[0]).read_text()[:200_000])
    data = {**SMALL_SWEEP["data"], "train_files": [str(text)], "cache_dir": str(tmp_path / "cache")}
    file = write_sweep(tmp_path, data=data)
    problems, before = preflight.trial_check(load_sweep_with_assets(file), tmp_path, str(file))
    assert problems == [] and before
    text.write_text(text.read_text() + "\nOne more line of the same file.\n")
    problems, after = preflight.trial_check(load_sweep_with_assets(file), tmp_path, str(file))
    assert problems == [] and after and after != before


@pytest.mark.slow
def test_sweep_worker_and_confirm_refuse_edited_data(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    paragraphs = (f"Paragraph {index} of a small text to train on, with some words in it." for index in range(6000))
    text.write_text("\n\n".join(paragraphs))
    data = {**SMALL_SWEEP["data"], "train_files": ["text.txt"]}
    file = write_sweep(tmp_path, data=data, budget={"n_trials": 1}, search={"learning_rate": {"factor": [0.3, 3]}})
    first = run_ftlab("sweep", str(file), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    text.write_text(text.read_text().replace("Paragraph 1 ", "Paragraph one "))
    # A worker names the shared stores.
    stores = [
        "--storage",
        f"sqlite:///{tmp_path}/mlruns/optuna.db",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/mlruns/mlflow.db",
    ]
    for command in (["sweep"], ["worker", *stores], ["confirm", "--top", "1", "--seeds", "1"]):
        refused = run_ftlab(*command, str(file), cwd=tmp_path)
        assert refused.returncode == 2, (command, refused.stderr)
        assert "data_fingerprint" in refused.stderr and "Traceback" not in refused.stderr, (command, refused.stderr)
        assert ("--accept-changes" in refused.stderr) == (command[0] != "confirm"), (command, refused.stderr)
