"""``ftlab confirm``: the statistics on fixed inputs, the plan and verdict on a study, and real confirmation runs.

The statistics are checked against values computed here by hand (Student's t and Welch's formulas, with only the t
quantile taken from scipy); the runs check the two verdicts that must come out of real training: a configuration
identical to the baseline is "not distinguishable", a learning rate 300× the baseline's tiny one is "better".
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from ftlab.record import BASELINE_ATTR
from ftlab.sweep.confirm import (
    CONFIRMS_ATTR,
    SEED_ATTR,
    Candidate,
    candidates,
    confirmation,
    seeds_for,
)
from ftlab.sweep.verdict import BETTER, SAME, TOO_FEW, WORSE, compare_to_baseline, summarize
from tests.helpers import (
    SMALL_SWEEP,
    confirm_in_process,
    local_client,
    run_ftlab,
    runs_of,
    sweep_in_process,
    write_sweep,
)

# --- the statistics, against hand-computed values --------------------------------------------------------------------


def test_a_configurations_mean_interval_and_spread_are_students() -> None:
    values = [1.0, 2.0, 3.0, 6.0]
    mean = 3.0
    sd = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)  # sqrt(14/3)
    half_width = stats.t.ppf(0.975, df=3) * sd / math.sqrt(4)

    summary = summarize(values)

    assert summary.n == 4
    assert summary.mean == pytest.approx(mean)
    assert summary.spread == pytest.approx(sd)
    assert summary.ci_low == pytest.approx(mean - half_width)
    assert summary.ci_high == pytest.approx(mean + half_width)


def test_the_difference_to_the_baseline_is_welchs() -> None:
    config, base = [1.0, 1.2, 0.9, 1.1], [2.0, 2.3, 1.8, 2.1]
    var_c = sum((x - 1.05) ** 2 for x in config) / 3
    var_b = sum((x - 2.05) ** 2 for x in base) / 3
    se = math.sqrt(var_c / 4 + var_b / 4)
    df = (var_c / 4 + var_b / 4) ** 2 / ((var_c / 4) ** 2 / 3 + (var_b / 4) ** 2 / 3)  # Welch-Satterthwaite
    half_width = stats.t.ppf(0.975, df=df) * se

    found = compare_to_baseline(config, base, "minimize")

    assert found.mean == pytest.approx(-1.0)
    assert found.ci_low == pytest.approx(-1.0 - half_width)
    assert found.ci_high == pytest.approx(-1.0 + half_width)
    assert found.verdict == BETTER  # the whole interval is below zero: a lower loss beyond seed noise
    assert compare_to_baseline(base, config, "minimize").verdict == WORSE
    assert compare_to_baseline(config, base, "maximize").verdict == WORSE  # the same numbers, read as accuracy


def test_an_interval_across_zero_is_not_distinguishable_and_one_seed_cannot_tell() -> None:
    assert compare_to_baseline([1.0, 1.4, 0.8], [1.1, 0.9, 1.3], "minimize").verdict == SAME
    assert compare_to_baseline([1.0], [1.1, 0.9], "minimize").verdict == TOO_FEW
    assert summarize([2.5]).ci_low is None


def test_seeds_without_any_noise_give_an_exact_difference() -> None:
    found = compare_to_baseline([2.0, 2.0], [2.0, 2.0], "minimize")
    assert (found.mean, found.ci_low, found.ci_high, found.verdict) == (0.0, 0.0, 0.0, SAME)


# --- the plan and the verdict on a study ------------------------------------------------------------------------------


def _trial(value: float, lr: float, **attrs: object) -> optuna.trial.FrozenTrial:
    return create_trial(
        value=value,
        params={"learning_rate": lr},
        distributions={"learning_rate": FloatDistribution(1e-6, 1e-1, log=True)},
        user_attrs=attrs,
    )


def test_candidates_are_the_baseline_and_the_best_distinct_configurations() -> None:
    study = optuna.create_study()
    study.add_trials(
        [
            _trial(5.0, 1e-3, **{BASELINE_ATTR: True}),
            _trial(4.0, 2e-3),
            _trial(4.5, 1e-3),  # the baseline's configuration again: not a candidate of its own
            _trial(3.0, 5e-3),
            _trial(6.0, 1e-4),
        ]
    )

    chosen = candidates(study, top=2)

    assert [(c.trial, c.baseline) for c in chosen] == [(0, True), (3, False), (1, False)]
    assert seeds_for(42, 3) == [43, 44, 45]  # never the sweep's own seed, whose luck picked the winner


def test_the_winner_is_chosen_by_its_confirmed_mean_not_its_luckiest_seed() -> None:
    study = optuna.create_study()
    runs = {0: [5.0, 5.2, 4.9], 3: [3.0, 4.6, 4.7], 1: [4.0, 4.1, 3.9]}  # trial 3 has the luckiest seed
    for number, values in runs.items():
        for seed, value in zip(seeds_for(7, 3), values, strict=True):
            study.add_trial(_trial(value, 1e-3 * (number + 1), **{CONFIRMS_ATTR: number, SEED_ATTR: seed,
                                                                    BASELINE_ATTR: number == 0}))  # fmt: skip

    found = confirmation(study, "eval/loss")

    assert found is not None and found.winner is not None
    assert found.winner.candidate == Candidate(1, {"learning_rate": 2e-3}, False)
    assert [row.candidate.trial for row in found.rows] == [0, 1, 3]  # the baseline first, the reference
    assert found.winner.against_baseline is not None and found.winner.against_baseline.verdict == BETTER
    assert "trial 1" in found.sentence() and BETTER in found.sentence()
    assert found.table().count("\n") == 4  # header, rule and one row per configuration


def test_a_card_with_a_confirmation_still_reads_as_a_trainer_card() -> None:
    from ftlab.export.card import confirmation_section
    from tests.test_card_format import ACCUMULATING_BF16, read_back

    study = optuna.create_study()
    for number, values in {0: [5.0, 5.1], 2: [4.0, 4.2]}.items():
        for seed, value in zip(seeds_for(7, 2), values, strict=True):
            study.add_trial(_trial(value, 1e-3, **{CONFIRMS_ATTR: number, SEED_ATTR: seed, BASELINE_ATTR: number == 0}))
    found = confirmation(study, "eval/loss")
    assert found is not None

    section = confirmation_section(found, exported_trial=5)

    assert section.startswith("### Confirmation over seeds") and found.table() in section
    assert "by mean over seeds the best configuration is trial 2's" in section  # not the exported trial 5
    assert read_back(ACCUMULATING_BF16, [section]) == read_back(ACCUMULATING_BF16)


# --- real confirmation runs -------------------------------------------------------------------------------------------

# Few blocks and steps: each run takes a few seconds. The baseline's learning rate is so small that it barely trains.
TINY = {**SMALL_SWEEP["data"], "max_train_blocks": 96}


@pytest.mark.integration
def test_a_configuration_identical_to_the_baseline_is_not_distinguishable(tmp_path: Path) -> None:
    write_sweep(tmp_path, data=TINY, budget={"n_trials": 1})
    outcome = sweep_in_process(tmp_path)
    baseline = next(trial for trial in outcome.study.trials if trial.user_attrs.get(BASELINE_ATTR))
    twin = Candidate(trial=99, params=dict(baseline.params), baseline=False)  # the same settings, another label
    plan = [Candidate(baseline.number, dict(baseline.params), True), twin]

    found = confirm_in_process(tmp_path, seeds=3, configurations=plan)

    assert found is not None
    twin_row = next(row for row in found.rows if row.candidate.trial == 99)
    baseline_row = next(row for row in found.rows if row.candidate.baseline)
    assert len(twin_row.values) == len(baseline_row.values) == 3
    assert twin_row.summary.spread and twin_row.summary.spread > 0  # the seeds do change the result
    assert twin_row.against_baseline is not None and twin_row.against_baseline.verdict == SAME


@pytest.mark.slow  # a sweep and 4 confirmation runs (~1 min): `make test-slow`, run by CI after `make test`
@pytest.mark.integration
def test_confirm_on_a_holdout_compares_final_holdout_losses_no_sweep_trial_has(tmp_path: Path) -> None:
    write_sweep(tmp_path, data={**TINY, "holdout_fraction": 0.1}, budget={"n_trials": 1})
    outcome = sweep_in_process(tmp_path)
    baseline = next(trial for trial in outcome.study.trials if trial.user_attrs.get(BASELINE_ATTR))
    plan = [Candidate(baseline.number, dict(baseline.params), True), Candidate(99, dict(baseline.params), False)]

    found = confirm_in_process(tmp_path, seeds=2, configurations=plan)

    assert found is not None and found.complete
    shown = found.as_json()
    assert (found.split, shown["split"], shown["metric"]) == ("holdout", "holdout", "holdout/loss")
    assert "on a held-out split the sweep never saw" in shown["sentence"]
    # The numbers compared are the runs' final holdout losses, in MLflow and in their trial records.
    runs = runs_of(tmp_path, "small")
    by_seed = {(run.data.tags["ftlab.confirms_trial"], run.data.tags["ftlab.seed"]): run for run in runs
               if "ftlab.confirms_trial" in run.data.tags}  # fmt: skip
    records = optuna.load_study(study_name="small-confirm", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    stored = {(t.user_attrs[CONFIRMS_ATTR], t.user_attrs[SEED_ATTR]): t.user_attrs for t in records.trials}
    assert len(by_seed) == len(stored) == 4
    for row in found.rows:
        for seed, values in row.results.items():
            metrics = by_seed[(str(row.candidate.trial), str(seed))].data.metrics
            record = stored[(row.candidate.trial, seed)]
            assert values == [metrics["final/holdout/loss"]] == [record["final/holdout/loss"]]
            assert metrics["final/holdout/perplexity"] == pytest.approx(math.exp(values[0]))
            assert metrics["final/eval/loss"] != values[0]  # the validation figure, under its own name
    # No sweep trial was evaluated on the holdout: no such figure in its run or its record.
    sweep_runs = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    assert sweep_runs and not [key for run in sweep_runs for key in run.data.metrics if "holdout" in key]
    assert not [key for trial in outcome.study.trials for key in trial.user_attrs if "holdout" in key]

    # Another holdout is other data: the sweep and its confirmation refuse the file (exit code 2).
    write_sweep(tmp_path, data={**TINY, "holdout_fraction": 0.2}, budget={"n_trials": 1})
    for command in ("sweep", "confirm"):
        refused = run_ftlab(command, "sweep.yaml", cwd=tmp_path)
        assert refused.returncode == 2, (command, refused.stderr)
        assert "data.holdout_fraction: 0.1 → 0.2" in refused.stderr, (command, refused.stderr)


@pytest.mark.slow  # chaos tier (a kill, a resume; ~1.5 min of CPU): `make test-slow`, run by CI
@pytest.mark.integration
def test_confirm_finds_a_real_gain_a_worker_finishes_it_after_a_kill_and_nothing_repeats(tmp_path: Path) -> None:
    write_sweep(
        tmp_path,
        data=TINY,
        baseline={**SMALL_SWEEP["baseline"], "learning_rate": 1e-5},
        search={"learning_rate": {"choices": [1e-5, 3e-3]}},
        sampler={"name": "grid"},
        budget={"n_trials": 2},
        storage={"heartbeat_interval": 1, "grace_period": 3},
    )
    sweep_in_process(tmp_path)

    # Killed (the whole process group, as a dying machine) once its first run has completed.
    process = subprocess.Popen(
        [sys.executable, "-m", "ftlab.cli", "confirm", "sweep.yaml", "--top", "1", "--seeds", "3"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    study_name, storage = "small-confirm", f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if _complete(storage, study_name) >= 1:
            break
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()[0]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = _complete(storage, study_name)
    time.sleep(4)  # past the grace period: the killed run is stale and will be reaped and retried

    # A worker from another machine finishes the plan (the killed run reaped and retried); then `confirm` again.
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    worker = run_ftlab("worker", "sweep.yaml", "--confirm", "--storage", storage, "--tracking-uri", tracking,
                       cwd=tmp_path)  # fmt: skip
    study = optuna.load_study(study_name=study_name, storage=storage)
    resumed = confirm_in_process(tmp_path, top=1, seeds=3)
    again = confirm_in_process(tmp_path, top=1, seeds=3)

    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert BETTER in worker.stdout
    assert resumed is not None and resumed.winner is not None
    assert resumed.winner.against_baseline is not None and resumed.winner.against_baseline.verdict == BETTER
    assert len(optuna.load_study(study_name=study_name, storage=storage).trials) == len(study.trials)
    complete = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    keys = [(trial.user_attrs[CONFIRMS_ATTR], trial.user_attrs[SEED_ATTR]) for trial in complete]
    assert sorted(keys) == sorted({(number, seed) for number in (0, 1) for seed in (8, 9, 10)})  # each once
    assert done_before >= 1 and len(complete) == 6
    assert not [trial for trial in study.trials if trial.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Run again: nothing enqueued, nothing run, the same verdict.
    assert len(optuna.load_study(study_name=study_name, storage=storage).trials) == len(study.trials)
    assert again is not None and again.as_json() == resumed.as_json()
    _check_tracking(tmp_path, complete)

    shown = run_ftlab("best", "sweep.yaml", "--export", "out", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert BETTER in shown.stdout
    assert "### Confirmation over seeds" in (tmp_path / "out" / "README.md").read_text()
    status = run_ftlab("status", "sweep.yaml", "--json", cwd=tmp_path)
    assert json.loads(status.stdout)["confirmation"]["winner_beats_baseline"] is True


def _complete(storage: str, study_name: str) -> int:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    return sum(trial.state == TrialState.COMPLETE for trial in study.get_trials(deepcopy=False))


def _check_tracking(folder: Path, complete: list[optuna.trial.FrozenTrial]) -> None:
    """One "confirm" parent run with the table and plot, a FINISHED child per completed run naming trial and seed."""
    client = local_client(folder)
    experiment = client.get_experiment_by_name("small")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    parents = [run for run in runs if run.info.run_name == "confirm"]
    assert len(parents) == 1
    artifacts = {item.path for item in client.list_artifacts(parents[0].info.run_id, "confirm")}
    assert {"confirm/confirmation.md", "confirm/confirmation.png", "confirm/confirmation.html"} <= artifacts
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    finished = {
        (run.data.tags["ftlab.confirms_trial"], run.data.tags["ftlab.seed"])
        for run in children
        if run.info.status == "FINISHED"
    }
    assert finished == {(str(t.user_attrs[CONFIRMS_ATTR]), str(t.user_attrs[SEED_ATTR])) for t in complete}
