"""``ftlab confirm``'s verdict on a confirmation study: the current plan's runs only, diverged and missing seeds counted
against their configuration, the family-wise correction and minimum effect, several objectives, and the refusal of a
sweep file that no longer matches its study. Studies are built by hand (in memory); the statistics are checked against
values computed here from their formulas, with only Student's t distribution taken from scipy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from scipy import stats

from ftlab.config import ObjectiveConfig
from ftlab.errors import ConfigError, UserError
from ftlab.record import (
    BASELINE_ATTR,
    FAIL_REASON_ATTR,
    HOLDOUT_ATTR,
    PRUNE_REASON_ATTR,
    SWEEP_ATTR,
    SWEEP_CHANGES_ATTR,
)
from ftlab.sweep.confirm import (
    CONFIRM_FIX,
    CONFIRMS_ATTR,
    SEED_ATTR,
    Candidate,
    candidates,
    confirm_split,
    confirmation,
    enqueue_plan,
    refuse_seen_holdout,
    selection_note,
)
from ftlab.sweep.study import refuse_changes, remember_sweep
from ftlab.sweep.verdict import BETTER, NOT_WORTH_IT, SAME

SEEDS = [8, 9, 10]
DISTRIBUTIONS = {"learning_rate": FloatDistribution(1e-6, 1e-1, log=True)}


def _run(number: int, seed: int, value: float | list[float] | None, state: TrialState = TrialState.COMPLETE,
         **attrs: object) -> optuna.trial.FrozenTrial:  # fmt: skip
    values = None if value is None else (value if isinstance(value, list) else [value])
    return create_trial(
        state=state,
        values=values,
        params={"learning_rate": 1e-3 * (number + 1)},
        distributions=DISTRIBUTIONS,
        user_attrs={CONFIRMS_ATTR: number, SEED_ATTR: seed, BASELINE_ATTR: number == 0, **attrs},
    )


def _planned(study: optuna.Study, numbers: list[int], **settings: object) -> optuna.Study:
    plan = [Candidate(number, {"learning_rate": 1e-3 * (number + 1)}, number == 0) for number in numbers]
    enqueue_plan(study, plan, SEEDS, {"finish": "ftlab confirm sweep.yaml --top 1 --seeds 3", **settings})
    return study


def _study(runs: dict[int, list[float]], **settings: object) -> optuna.Study:
    study = _planned(optuna.create_study(), list(runs), **settings)
    for number, values in runs.items():
        for seed, value in zip(SEEDS, values, strict=True):
            study.add_trial(_run(number, seed, value))
    return study


# --- point 1: a diverged or failed seed counts against its configuration -------------------------------------------


@pytest.mark.parametrize(
    "diverged",
    [
        {"state": TrialState.PRUNED, PRUNE_REASON_ATTR: "pruned: training loss became nan at optimizer step 3"},
        {"state": TrialState.FAIL, FAIL_REASON_ATTR: "diverged: training loss became nan at optimizer step 3"},
    ],
    ids=["pruned", "failed"],
)
def test_a_diverged_seed_counts_against_its_configuration_and_is_shown(diverged: dict[str, object]) -> None:
    study = _planned(optuna.create_study(), [0, 1])
    for seed, value in zip(SEEDS, [5.0, 5.1, 4.9], strict=True):
        study.add_trial(_run(0, seed, value))
    study.add_trial(_run(1, SEEDS[0], 3.0))
    study.add_trial(_run(1, SEEDS[1], 3.1))
    study.add_trial(_run(1, SEEDS[2], None, **diverged))  # type: ignore[arg-type]

    found = confirmation(study, "eval/loss")

    assert found is not None and found.complete  # a diverged seed is a result, not a run still to do
    row = found.rows[1]
    assert row.against_baseline is not None and row.against_baseline.verdict == "diverged: 1 of 3 seeds"
    assert found.table_rows()[1][1] == "2 of 3, 1 diverged"
    assert found.winner is None  # the two surviving seeds look far better, yet an unstable configuration is not
    assert BETTER not in found.sentence() and "none is called better" in found.sentence()
    assert found.as_json()["configurations"][1]["results"][str(SEEDS[2])] == [None]
    assert json.loads(json.dumps(found.as_json(), allow_nan=False))  # plain JSON: a diverged seed is null, not NaN
    # the diverged run is not enqueued again when the plan is run again
    waiting = len(study.get_trials(states=(TrialState.WAITING,)))
    _planned(study, [0, 1])
    assert len(study.get_trials(states=(TrialState.WAITING,))) == waiting


def test_an_incomplete_plan_says_what_is_missing_and_how_to_finish_it() -> None:
    study = _planned(optuna.create_study(), [0, 1])
    for seed, value in zip(SEEDS, [5.0, 5.1, 4.9], strict=True):
        study.add_trial(_run(0, seed, value))
    study.add_trial(_run(1, SEEDS[0], 3.0))
    study.add_trial(_run(1, SEEDS[1], 3.1))
    study.add_trial(_run(1, SEEDS[2], None, state=TrialState.FAIL, **{FAIL_REASON_ATTR: "OSError: disk"}))

    found = confirmation(study, "eval/loss")

    assert found is not None and not found.complete
    assert found.missing == [(1, SEEDS[2])]
    assert found.rows[1].against_baseline is not None
    assert found.rows[1].against_baseline.verdict == "incomplete: 2 of 3 seeds"
    assert "ftlab confirm sweep.yaml --top 1 --seeds 3" in found.sentence()
    shown = found.as_json()
    assert shown["complete"] is False and shown["missing"] == [{"trial": 1, "seed": SEEDS[2]}]


# --- point 3: table, title, JSON and card describe the same runs ----------------------------------------------------


def test_runs_of_an_older_plan_are_left_out_and_every_view_names_the_same_seeds() -> None:
    study = _study({0: [5.0, 5.1, 4.9], 1: [4.0, 4.2, 3.9]})
    study.add_trial(_run(7, 1, 1.0))  # trial 7, seed 1: a plan asked for before this one
    study.add_trial(_run(0, 1, 9.0))  # the baseline on a seed the current plan does not have

    found = confirmation(study, "eval/loss")

    assert found is not None
    assert [row.candidate.trial for row in found.rows] == [0, 1]
    assert found.rows[0].values == [5.0, 5.1, 4.9]
    assert str(SEEDS) in found.title()
    assert "over 3 seeds" in found.sentence()
    shown = found.as_json()
    assert shown["seeds"] == SEEDS and [c["trial"] for c in shown["configurations"]] == [0, 1]
    assert json.loads(json.dumps(shown)) == shown  # plain JSON: no NaN


# --- point 4: several configurations, one family --------------------------------------------------------------------


def _paired_p(config: list[float], base: list[float]) -> tuple[float, float]:
    """Mean of the per-seed differences and the paired t-test's two-sided p, from the formula."""
    diffs = [c - b for c, b in zip(config, base, strict=True)]
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return mean, 2 * stats.t.sf(abs(mean / (sd / math.sqrt(n))), df=n - 1)


def test_the_configurations_are_compared_as_one_family_by_seed_with_holms_steps() -> None:
    base, strong, weak = [5.0, 5.2, 4.9], [4.0, 4.3, 3.8], [4.9, 5.25, 4.8]
    study = _study({0: base, 1: strong, 2: weak})
    (mean_strong, p_strong), (mean_weak, p_weak) = _paired_p(strong, base), _paired_p(weak, base)
    assert p_strong < p_weak
    holm_strong, holm_weak = 2 * p_strong, max(2 * p_strong, p_weak)  # Holm: the smaller p times K, then K - 1

    found = confirmation(study, "eval/loss")

    assert found is not None
    strong_row, weak_row = (row.against_baseline for row in found.rows[1:])
    assert strong_row is not None and weak_row is not None
    assert strong_row.mean == pytest.approx(mean_strong) and weak_row.mean == pytest.approx(mean_weak)
    assert strong_row.p_value == pytest.approx(holm_strong) and weak_row.p_value == pytest.approx(holm_weak)
    assert strong_row.verdict == BETTER and weak_row.verdict == SAME
    assert found.families[0].correction == "paired" and "paired t-test" in found.sentence()
    assert "2 configuration(s) tested" in found.sentence()
    assert f"{holm_strong:.3g}" == found.table_rows()[1][8]


def test_a_difference_below_the_minimum_effect_is_not_worth_it() -> None:
    base, config = [5.0, 5.2, 4.9], [4.0, 4.3, 3.8]  # 1.0 lower: 19.9 % of the baseline's mean
    kept = confirmation(_study({0: base, 1: config}, min_effect=0.19), "eval/loss")
    assert kept is not None and kept.rows[1].against_baseline is not None
    assert kept.rows[1].against_baseline.verdict == BETTER

    found = confirmation(_study({0: base, 1: config}, min_effect=0.25, correction="holm"), "eval/loss")

    assert found is not None and found.rows[1].against_baseline is not None
    assert found.rows[1].against_baseline.verdict == NOT_WORTH_IT
    assert found.families[0].correction == "holm" and "minimum effect 25.0%" in found.sentence()


# --- point 5 (wording) and point 6: several objectives ----------------------------------------------------------------


def test_every_objective_is_reported_and_the_verdict_says_where_it_was_measured() -> None:
    study = _planned(optuna.create_study(directions=["minimize", "maximize"]), [0, 1])
    for seed, loss, accuracy in zip(SEEDS, [5.0, 5.2, 4.9], [0.30, 0.31, 0.29], strict=True):
        study.add_trial(_run(0, seed, [loss, accuracy]))
    for seed, loss, accuracy in zip(SEEDS, [4.0, 4.3, 3.8], [0.30, 0.32, 0.28], strict=True):
        study.add_trial(_run(1, seed, [loss, accuracy]))

    found = confirmation(study, ["eval/loss", "eval/accuracy"])

    assert found is not None
    assert [comparison.verdict for comparison in found.rows[1].against or []] == [BETTER, SAME]
    assert "eval/loss" in found.sentence() and "eval/accuracy" in found.sentence()
    assert "validation split the sweep chose on" in found.sentence()
    assert found.table().count("| configuration |") == 2
    assert [o["metric"] for o in found.as_json()["configurations"][1]["objectives"]] == ["eval/loss", "eval/accuracy"]


def test_top_k_with_several_objectives_fills_past_the_pareto_front_and_says_why() -> None:
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_metric_names(["eval/loss", "eval/accuracy"])
    for number, (loss, accuracy) in enumerate([(5.0, 0.3), (3.0, 0.5), (4.0, 0.4), (4.5, 0.35)]):
        study.add_trial(
            create_trial(
                values=[loss, accuracy],
                params={"learning_rate": 1e-3 * (number + 1)},
                distributions=DISTRIBUTIONS,
                user_attrs={BASELINE_ATTR: number == 0},
            )
        )

    chosen = candidates(study, top=2)  # the front is trial 1 alone; --top 2 still gets 2

    assert [candidate.trial for candidate in chosen] == [0, 1, 2]
    assert "Pareto front" in chosen[1].why and "Pareto front" not in chosen[2].why
    assert "only" not in selection_note(chosen, 2, True)
    assert "--top 5 asked for 5, but the sweep has only 3" in selection_note(candidates(study, top=5), 5, True)


# --- point 2: a sweep file that no longer matches its study -----------------------------------------------------------


def test_a_changed_sweep_file_is_refused_without_an_option_confirm_lacks() -> None:
    sweep, confirm = optuna.create_study(study_name="s"), optuna.create_study(study_name="s-confirm")
    objective = [{"metric": "eval/loss", "direction": "minimize"}]
    before = {"baseline": {"num_train_epochs": 1}, "search": {}, "objective": objective}
    after = {"baseline": {"num_train_epochs": 2}, "search": {}, "objective": objective}
    sweep.set_user_attr(SWEEP_ATTR, before)
    refuse_changes(sweep, before, "sweep.yaml", CONFIRM_FIX)  # unchanged: nothing to say

    with pytest.raises(ConfigError) as refused:
        refuse_changes(sweep, after, "sweep.yaml", CONFIRM_FIX)
    message = str(refused.value)
    assert "baseline.num_train_epochs: 1 → 2" in message and "--accept-changes" not in message

    sweep.set_user_attr(SWEEP_ATTR, after)  # the sweep accepted the change; the confirmation ran before it
    confirm.set_user_attr(SWEEP_ATTR, before)
    with pytest.raises(ConfigError) as refused:
        remember_sweep(confirm, after, "sweep.yaml", accept_changes=False, changes_fix=CONFIRM_FIX)
    message = str(refused.value)
    assert "s-confirm" in message and "num_train_epochs" in message and "--accept-changes" not in message


@pytest.mark.integration
def test_ftlab_confirm_refuses_a_sweep_file_changed_after_the_sweep(tmp_path: Path) -> None:
    from ftlab.demo import load_sweep_with_assets
    from ftlab.settings import resolve_train_config
    from ftlab.sweep.study import sweep_signature
    from tests.helpers import run_ftlab, write_sweep

    path = write_sweep(tmp_path)
    sweep = load_sweep_with_assets(path)
    baseline = resolve_train_config(sweep, tmp_path, source=str(path))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=sweep.name, storage=storage)
    study.set_user_attr(SWEEP_ATTR, sweep_signature(sweep, baseline))
    text = path.read_text().replace("num_train_epochs: 1", "num_train_epochs: 2")
    assert text != path.read_text()
    path.write_text(text)

    result = run_ftlab("confirm", str(path), "--storage", storage, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "num_train_epochs: 1 → 2" in result.stderr + result.stdout
    assert "--accept-changes" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_a_configuration_whose_every_seed_diverged_is_shown_and_its_json_stays_plain() -> None:
    study = _planned(optuna.create_study(), [0, 1])
    for seed, value in zip(SEEDS, [5.0, 5.1, 4.9], strict=True):
        study.add_trial(_run(0, seed, value))
    for seed in SEEDS:
        study.add_trial(_run(1, seed, None, state=TrialState.PRUNED, **{PRUNE_REASON_ATTR: "pruned: loss nan"}))

    found = confirmation(study, "eval/loss")

    assert found is not None and found.rows[1].against_baseline is not None
    assert found.rows[1].against_baseline.verdict == "diverged: 3 of 3 seeds"
    assert found.table_rows()[1][1:3] == ("0 of 3, 3 diverged", "-")
    assert json.loads(json.dumps(found.as_json(), allow_nan=False))["configurations"][1]["summary"]["mean"] is None


# --- issue point 5: the holdout split, and a verdict that claims only what was measured ------------------------------


def test_on_the_holdout_the_runs_are_judged_by_their_holdout_figures_and_the_verdict_says_so() -> None:
    runs = {0: [5.0, 5.2, 4.9], 1: [4.0, 4.3, 3.8]}
    study = _study(runs, split="holdout")
    on_validation = _study(runs)

    found, before = confirmation(study, "eval/loss"), confirmation(on_validation, "eval/loss")

    assert found is not None and before is not None
    waiting = [trial for trial in study.trials if trial.state == TrialState.WAITING]
    assert waiting and all(trial.user_attrs[HOLDOUT_ATTR] is True for trial in waiting)
    assert not [trial for trial in on_validation.trials if HOLDOUT_ATTR in trial.user_attrs]
    assert (found.split, found.metrics, before.split, before.metrics) == (
        "holdout",
        ["holdout/loss"],
        "validation",
        ["eval/loss"],
    )
    assert "holdout/loss" in found.sentence() and "on a held-out split the sweep never saw" in found.sentence()
    assert "chose on" not in found.sentence() and "holdout split" in found.title()
    assert "validation split the sweep chose on" in before.sentence() and "held-out" not in before.sentence()
    shown = found.as_json()
    assert (shown["split"], shown["metric"]) == ("holdout", "holdout/loss")
    assert before.as_json()["split"] == "validation"


def test_an_objective_without_a_holdout_figure_keeps_the_validation_caveat() -> None:
    study = _planned(optuna.create_study(directions=["minimize", "minimize"]), [0, 1], split="holdout")
    for number, losses in {0: [5.0, 5.2, 4.9], 1: [4.0, 4.3, 3.8]}.items():
        for seed, loss in zip(SEEDS, losses, strict=True):
            study.add_trial(_run(number, seed, [loss, loss - 0.1]))

    found = confirmation(study, ["eval/loss", "eval/best_loss"])

    assert found is not None and found.metrics == ["holdout/loss", "eval/best_loss"]
    assert "held-out split the sweep never saw, except eval/best_loss: on the validation split" in found.sentence()
    assert "holdout split" in found.title(0) and "validation split" in found.title(1)


def test_the_split_follows_the_data_and_the_objectives_and_the_runs_values_follow_the_split() -> None:
    from ftlab.config import parse_sweep
    from ftlab.record import TrialRecord
    from ftlab.sweep.trial_process import objective_values

    objectives = [{"metric": "eval/loss"}, {"metric": "train/loss"}]
    base = {"name": "s", "model": {"name_or_path": "gpt2"}, "objective": objectives, "pruner": {"name": "none"}}
    with_holdout = parse_sweep({**base, "data": {"dataset": "x", "holdout_fraction": 0.1}})
    assert confirm_split(parse_sweep({**base, "data": {"dataset": "x"}})) == "validation"
    assert confirm_split(with_holdout) == "holdout"
    # eval/best_loss has no holdout figure: a holdout would have nothing to measure for it.
    assert confirm_split(with_holdout.model_copy(update={"objective": [ObjectiveConfig(metric="eval/best_loss")]})) == (
        "validation"
    )
    record = TrialRecord("COMPLETE", metrics={"eval/loss": 3.0, "train/loss": 2.5, "holdout/loss": 3.4})
    assert objective_values(with_holdout, record) == [3.0, 2.5]
    assert objective_values(with_holdout, record, holdout=True) == [3.4, 2.5]


def test_a_holdout_the_sweep_may_have_trained_on_is_refused() -> None:
    sweep = optuna.create_study(study_name="s")
    sweep.set_user_attr(SWEEP_CHANGES_ATTR, [{"at": "then", "changes": ["search.learning_rate.factor: a → b"]}])
    refuse_seen_holdout(sweep, "sweep.yaml")  # a change of the search space leaves the data as it was

    changed = "data.holdout_fraction: (unset) → 0.1"
    sweep.set_user_attr(SWEEP_CHANGES_ATTR, [{"at": "then", "changes": [changed, "data_fingerprint: a → b"]}])
    with pytest.raises(UserError) as refused:
        refuse_seen_holdout(sweep, "sweep.yaml")
    assert changed in str(refused.value) and "new `name:`" in str(refused.value)


@pytest.mark.integration
def test_ftlab_confirm_refuses_a_holdout_changed_after_the_sweep_with_exit_code_2(tmp_path: Path) -> None:
    from ftlab.demo import load_sweep_with_assets
    from ftlab.settings import resolve_train_config
    from ftlab.sweep.study import sweep_signature
    from tests.helpers import SMALL_SWEEP, run_ftlab, write_sweep

    path = write_sweep(tmp_path, data={**SMALL_SWEEP["data"], "holdout_fraction": 0.1})
    sweep = load_sweep_with_assets(path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name=sweep.name, storage=storage)
    study.set_user_attr(SWEEP_ATTR, sweep_signature(sweep, resolve_train_config(sweep, tmp_path), "aaaa"))
    write_sweep(tmp_path, data={**SMALL_SWEEP["data"], "holdout_fraction": 0.2})

    result = run_ftlab("confirm", str(path), "--storage", storage, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    assert "data.holdout_fraction: 0.1 → 0.2" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
