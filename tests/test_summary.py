"""The best trial and the gain over the baseline, chosen one way everywhere, whatever the direction."""

from __future__ import annotations

import optuna
import pytest
from optuna.study import StudyDirection

from ftlab.record import BASELINE_ATTR
from ftlab.sweep.summary import baseline_trial, best_trial, compare, gain, pareto_front


def study_with(values: list[float | list[float] | None], directions: list[str], baseline: int | None = 0):
    """A study whose trial i completed with values[i] (None: pruned); trial ``baseline`` is the baseline."""
    study = optuna.create_study(directions=directions)
    for number, value in enumerate(values):
        trial = study.ask()
        if number == baseline:
            trial.set_user_attr(BASELINE_ATTR, True)
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return study


def test_gain_is_positive_when_better_in_either_direction() -> None:
    assert gain(4.0, 5.0, StudyDirection.MINIMIZE).absolute == pytest.approx(1.0)
    assert gain(4.0, 5.0, StudyDirection.MINIMIZE).relative == pytest.approx(0.2)
    assert gain(6.0, 5.0, StudyDirection.MAXIMIZE).absolute == pytest.approx(1.0)
    assert gain(6.0, 5.0, StudyDirection.MAXIMIZE).relative == pytest.approx(0.2)
    assert gain(6.0, 5.0, StudyDirection.MINIMIZE).absolute == pytest.approx(-1.0)  # worse is negative
    assert gain(1.0, 0.0, StudyDirection.MAXIMIZE).relative is None  # no relative gain over zero
    assert gain(-2.0, -4.0, StudyDirection.MAXIMIZE).relative == pytest.approx(0.5)  # relative to |baseline|


def test_best_and_comparison_when_minimizing() -> None:
    study = study_with([5.0, 4.0, None, 4.5], ["minimize"])
    assert best_trial(study).number == 1
    comparison = compare(study, "eval/loss")
    assert (comparison.best.number, comparison.baseline.number) == (1, 0)
    assert comparison.gain.relative == pytest.approx(0.2)
    assert "+20.0% better" in comparison.sentence()


def test_best_and_comparison_when_maximizing() -> None:
    study = study_with([5.0, 4.0, 6.0], ["maximize"])
    assert best_trial(study).number == 2
    comparison = compare(study, "score")
    assert comparison.gain.absolute == pytest.approx(1.0)
    assert comparison.as_json()["relative_gain"] == pytest.approx(0.2)


def test_the_baseline_still_best_and_the_baseline_not_completed() -> None:
    assert "still the best" in compare(study_with([3.0, 4.0], ["minimize"]), "eval/loss").sentence()
    missing = compare(study_with([None, 4.0], ["minimize"]), "eval/loss")
    assert missing.baseline is None and missing.gain is None
    assert "has not completed" in missing.sentence()
    assert baseline_trial(study_with([None, 4.0], ["minimize"])) is None


def test_nothing_completed() -> None:
    study = study_with([None], ["minimize"])
    assert best_trial(study) is None and compare(study, "eval/loss") is None and pareto_front(study) == []


def test_several_objectives_pick_from_the_pareto_front_by_the_first() -> None:
    study = study_with([[5.0, 1.0], [4.0, 3.0], [4.5, 2.0], [6.0, 4.0]], ["minimize", "minimize"])
    assert sorted(trial.number for trial in pareto_front(study)) == [0, 1, 2]
    assert best_trial(study).number == 1


def test_one_json_shape_for_status_best_and_the_export() -> None:
    # `ftlab status --json` ("best"), `ftlab best --json` and the export's card read the same object.
    study = study_with([[5.0, 1.0], [4.0, 3.0], [4.5, 2.0], [6.0, 4.0]], ["minimize", "minimize"])
    shown = compare(study, "eval/loss").as_json()
    assert (shown["trial"], shown["best_trial"], shown["best_value"], shown["values"]) == (1, 1, 4.0, [4.0, 3.0])
    assert (shown["baseline"]["trial"], shown["baseline_trial"], shown["baseline_value"]) == (0, 0, 5.0)
    assert shown["gain"] == {"absolute": shown["absolute_gain"], "relative": shown["relative_gain"]}
    assert shown["gain"]["absolute"] == pytest.approx(1.0)
    assert sorted(shown["pareto_front"]) == [0, 1, 2]
