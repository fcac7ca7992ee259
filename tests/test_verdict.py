"""Several configurations against the baseline at once: the family-wise statistics against hand-computed values.

Each expected number is computed here from first principles (means, variances, Student's t from scipy.stats.t), not
read back from the function under test; Dunnett's test is checked against scipy.stats.dunnett's documented example.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ftlab.sweep.verdict import (
    BETTER,
    NOT_WORTH_IT,
    SAME,
    TOO_FEW,
    WORSE,
    SeedCount,
    compare_many_to_baseline,
    compare_to_baseline,
    holm,
)

SEEDS = [1, 2, 3, 4]
BASELINE = {1: 2.0, 2: 2.3, 3: 1.8, 4: 2.1}
NAN = float("nan")


def _by_seed(values: list[float], seeds: list[int] = SEEDS) -> dict[int, float]:
    return dict(zip(seeds, values, strict=True))


def _welch_by_hand(config: list[float], base: list[float], confidence: float) -> tuple[float, float, float, float]:
    """mean difference, interval and two-sided p of Welch's t-test, from the sample variances."""
    n_c, n_b = len(config), len(base)
    mean = sum(config) / n_c - sum(base) / n_b
    var_c = sum((x - sum(config) / n_c) ** 2 for x in config) / (n_c - 1)
    var_b = sum((x - sum(base) / n_b) ** 2 for x in base) / (n_b - 1)
    se2_c, se2_b = var_c / n_c, var_b / n_b
    se = math.sqrt(se2_c + se2_b)
    df = (se2_c + se2_b) ** 2 / (se2_c**2 / (n_c - 1) + se2_b**2 / (n_b - 1))  # Welch-Satterthwaite
    half = stats.t.ppf(1 - (1 - confidence) / 2, df) * se
    return mean, mean - half, mean + half, 2 * stats.t.sf(abs(mean) / se, df)


# --- Holm's step-down ------------------------------------------------------------------------------------------------


def test_holm_multiplies_the_ith_smallest_p_by_k_minus_i_plus_1_and_keeps_the_order() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (step-down is monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.4, 0.7]) == pytest.approx([0.8, 0.8])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_holm_corrects_welchs_p_values_and_widens_the_intervals_to_bonferronis() -> None:
    configs = [[1.7, 1.8, 1.6, 1.75], [1.0, 1.2, 0.9, 1.1], [2.1, 2.4, 1.9, 2.2]]
    k = len(configs)
    by_hand = [_welch_by_hand(values, list(BASELINE.values()), 1 - 0.05 / k) for values in configs]
    raw = [p for *_, p in by_hand]
    order = sorted(range(k), key=lambda index: raw[index])
    expected, running = [0.0] * k, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (k - rank) * raw[index]))
        expected[index] = running

    found = compare_many_to_baseline(
        [_by_seed(values) for values in configs], BASELINE, "minimize", planned_seeds=SEEDS, correction="holm"
    )

    assert (found.correction, found.family_size) == ("holm", 3)
    assert "Holm" in found.method and "Bonferroni" in found.method
    for row, (mean, low, high, p_raw), p_holm in zip(found.comparisons, by_hand, expected, strict=True):
        assert (row.mean, row.ci_low, row.ci_high) == pytest.approx((mean, low, high))
        assert row.p_uncorrected == pytest.approx(p_raw)
        assert row.p_value == pytest.approx(p_holm)
    # The first gains 0.3375 with p ≈ 0.040 alone, which one test at 5 % calls better; Holm over 3 (· 2) does not.
    assert raw[0] < 0.05 < expected[0]
    assert compare_to_baseline(configs[0], list(BASELINE.values()), "minimize").verdict == BETTER
    assert [row.verdict for row in found.comparisons] == [SAME, BETTER, SAME]


# --- K = 1 is the uncorrected test ----------------------------------------------------------------------------------


def test_one_configuration_with_holm_is_exactly_the_single_welch_comparison() -> None:
    config = [1.0, 1.2, 0.9, 1.1]
    single = compare_to_baseline(config, list(BASELINE.values()), "minimize")

    (row,) = compare_many_to_baseline([_by_seed(config)], BASELINE, "minimize", planned_seeds=SEEDS).comparisons

    assert (row.mean, row.ci_low, row.ci_high, row.p_value) == pytest.approx(
        (single.mean, single.ci_low, single.ci_high, single.p_value)
    )
    assert row.p_value == row.p_uncorrected
    assert row.verdict == single.verdict == BETTER


def test_one_configuration_with_dunnett_is_students_pooled_variance_test() -> None:
    config, base = [1.9, 2.0, 1.7, 1.95, 1.85], list(BASELINE.values())
    pooled = (np.var(config, ddof=1) * 4 + np.var(base, ddof=1) * 3) / 7
    se = math.sqrt(pooled * (1 / 5 + 1 / 4))
    mean = np.mean(config) - np.mean(base)
    half = stats.t.ppf(0.975, 7) * se

    (row,) = compare_many_to_baseline(
        [_by_seed(config, [1, 2, 3, 4, 5])], BASELINE, "minimize", planned_seeds=[1, 2, 3, 4], correction="dunnett"
    ).comparisons

    assert row.mean == pytest.approx(mean)
    assert row.p_uncorrected == pytest.approx(2 * stats.t.sf(abs(mean) / se, 7))
    assert (row.ci_low, row.ci_high) == pytest.approx((mean - half, mean + half))
    # Dunnett's p-value comes from a numerical integration (quasi-Monte Carlo): equal to 3 decimals here.
    assert row.p_value == pytest.approx(row.p_uncorrected, abs=1e-3)


def test_one_configuration_paired_is_the_t_test_on_the_per_seed_differences() -> None:
    config = {1: 1.95, 2: 2.2, 3: 1.78, 4: 2.02}
    differences = [config[seed] - BASELINE[seed] for seed in SEEDS]  # -0.05, -0.1, -0.02, -0.08
    mean = sum(differences) / 4
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / 3 / 4)
    half = stats.t.ppf(0.975, 3) * se

    (row,) = compare_many_to_baseline(
        [config], BASELINE, "minimize", planned_seeds=SEEDS, correction="paired"
    ).comparisons

    assert (row.mean, row.ci_low, row.ci_high) == pytest.approx((mean, mean - half, mean + half))
    assert row.p_value == row.p_uncorrected == pytest.approx(2 * stats.t.sf(abs(mean) / se, 3))
    assert row.n == 4
    assert row.relative == pytest.approx(mean / (sum(BASELINE.values()) / 4))
    assert row.verdict == BETTER


# --- the paired comparison -------------------------------------------------------------------------------------------


def test_paired_sees_a_gain_that_the_seeds_spread_hides_from_the_unpaired_tests() -> None:
    baseline = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}  # the seed moves the result a lot
    config = {1: 0.9, 2: 1.92, 3: 2.88, 4: 3.91}  # every seed a little better
    other = {1: 1.02, 2: 1.97, 3: 3.01, 4: 4.0}

    results = {
        correction: compare_many_to_baseline(
            [config, other], baseline, "minimize", planned_seeds=SEEDS, correction=correction
        )
        for correction in ("holm", "dunnett", "paired")
    }

    assert [row.verdict for row in results["holm"].comparisons] == [SAME, SAME]
    assert [row.verdict for row in results["dunnett"].comparisons] == [SAME, SAME]
    assert [row.verdict for row in results["paired"].comparisons] == [BETTER, SAME]


def test_paired_uses_only_the_seeds_both_ran_and_corrects_with_holm() -> None:
    config = {1: 1.95, 2: 2.2, 3: 1.78, 5: 1.5}  # seed 5 has no baseline partner, seed 4 no config result
    other = {1: 2.05, 2: 2.28, 3: 1.83, 4: 2.06}
    expected = []
    for values in (config, other):
        differences = np.array([values[seed] - BASELINE[seed] for seed in SEEDS if seed in values])
        mean, se, n = differences.mean(), differences.std(ddof=1) / math.sqrt(len(differences)), len(differences)
        half = stats.t.ppf(1 - 0.05 / 2 / 2, n - 1) * se  # Bonferroni for K = 2
        expected.append((mean, mean - half, mean + half, 2 * stats.t.sf(abs(mean) / se, n - 1), n))
    raw = [p for *_, p, _ in expected]
    holm_by_hand = [min(1.0, 2 * min(raw)), max(min(1.0, 2 * min(raw)), max(raw))]  # K = 2: smallest ·2, then ·1
    if raw[0] > raw[1]:
        holm_by_hand.reverse()

    found = compare_many_to_baseline(
        [config, other], BASELINE, "minimize", planned_seeds=[1, 2, 3, 4, 5], correction="paired"
    )

    for row, (mean, low, high, p_raw, n), p_holm in zip(found.comparisons, expected, holm_by_hand, strict=True):
        assert (row.mean, row.ci_low, row.ci_high) == pytest.approx((mean, low, high))
        assert (row.p_uncorrected, row.p_value, row.n) == pytest.approx((p_raw, p_holm, n))
    assert found.comparisons[0].n == 3


# --- Dunnett's many-to-one test --------------------------------------------------------------------------------------


def test_dunnett_reproduces_scipys_documented_example() -> None:
    # scipy.stats.dunnett's docstring: statistic [0.90874545, -0.05007117], p-value [0.58325114, 0.99819341].
    samples = [[3.8, 2.7, 4.0, 2.4], [2.8, 3.4, 3.7, 2.2, 2.0]]
    control = [2.9, 3.0, 2.5, 2.6, 3.2]
    seeds = [1, 2, 3, 4, 5]
    pooled = sum(np.var(values, ddof=1) * (len(values) - 1) for values in [*samples, control]) / (14 - 3)

    found = compare_many_to_baseline(
        [_by_seed(values, seeds[: len(values)]) for values in samples],
        _by_seed(control, seeds),
        "maximize",
        planned_seeds=seeds,
        correction="dunnett",
    )

    assert found.correction == "dunnett" and "pooled variance" in found.method and found.family_size == 2
    assert [row.p_value for row in found.comparisons] == pytest.approx([0.58325114, 0.99819341], abs=1e-3)
    half_widths = []
    for row, values, statistic in zip(found.comparisons, samples, [0.90874545, -0.05007117], strict=True):
        se = math.sqrt(pooled * (1 / len(values) + 1 / 5))
        assert row.mean == pytest.approx(np.mean(values) - np.mean(control))
        assert row.mean / se == pytest.approx(statistic)
        assert row.p_uncorrected == pytest.approx(2 * stats.t.sf(abs(statistic), 11))
        half_widths.append((row.ci_high - row.mean) / se)
        assert row.mean - row.ci_low == pytest.approx(row.ci_high - row.mean)
    # One critical value for the family, between one test's (Student) and Bonferroni's.
    assert half_widths[0] == pytest.approx(half_widths[1])
    assert stats.t.ppf(0.975, 11) < half_widths[0] < stats.t.ppf(1 - 0.025 / 2, 11)
    scipys = stats.dunnett(*samples, control=control, rng=0).confidence_interval()  # numerical: to 3 decimals
    assert [row.ci_low for row in found.comparisons] == pytest.approx(scipys.low, abs=2e-3)
    assert [row.ci_high for row in found.comparisons] == pytest.approx(scipys.high, abs=2e-3)
    assert [row.verdict for row in found.comparisons] == ["incomplete: 4 of 5 seeds", SAME]
    again = compare_many_to_baseline(
        [_by_seed(values, seeds[: len(values)]) for values in samples],
        _by_seed(control, seeds),
        "maximize",
        planned_seeds=seeds,
        correction="dunnett",
    )
    assert again == found  # the integration's seed is fixed: the same numbers every time they are shown


# --- seeds that diverged or are missing ------------------------------------------------------------------------------


def test_a_diverged_seed_is_counted_against_its_configuration_and_not_dropped_from_the_row() -> None:
    config = {1: 1.0, 2: NAN, 3: 0.9, 4: 1.1}  # clearly better on the seeds that finished
    planned = SEEDS

    for correction in ("holm", "dunnett", "paired"):
        (row,) = compare_many_to_baseline(
            [config], BASELINE, "minimize", planned_seeds=planned, correction=correction
        ).comparisons
        assert row.verdict == "diverged: 1 of 4 seeds"
        assert row.seeds == SeedCount(planned=4, finished=4, diverged=1)
        assert row.n == 3  # the statistics shown are the finite seeds'
        assert row.mean == pytest.approx(1.0 - (2.0 + 1.8 + 2.1) / 3 if correction == "paired" else 1.0 - 2.05)
        assert row.p_value is not None and row.p_value < 0.05  # the numbers alone would have said better

    (row,) = compare_many_to_baseline(
        [{1: 1.0, 2: float("inf"), 3: 0.9}], BASELINE, "minimize", planned_seeds=SEEDS
    ).comparisons
    assert row.verdict == "diverged: 1 of 4 seeds; incomplete: 3 of 4 seeds"


def test_a_configuration_with_missing_seeds_is_incomplete_never_better() -> None:
    config = {1: 1.0, 2: 1.2, 3: 0.9}

    (row,) = compare_many_to_baseline([config], BASELINE, "minimize", planned_seeds=SEEDS).comparisons

    assert row.verdict == "incomplete: 3 of 4 seeds"
    assert row.seeds == SeedCount(planned=4, finished=3, diverged=0)
    assert row.p_value is not None and row.p_value < 0.05
    (row,) = compare_many_to_baseline([{1: 1.0}], BASELINE, "minimize", planned_seeds=SEEDS).comparisons
    assert row.verdict == "incomplete: 1 of 4 seeds"  # why it cannot tell, rather than "too few"
    assert row.ci_low is None and row.p_value is None


def test_too_few_seeds_are_left_out_of_the_family() -> None:
    configs = [{1: 1.0}, {1: 1.0, 2: 1.2}]

    found = compare_many_to_baseline(configs, {1: 2.0, 2: 2.3}, "minimize", planned_seeds=[1], correction="holm")

    assert found.family_size == 1
    assert found.comparisons[0].verdict == TOO_FEW
    assert found.comparisons[0].mean == pytest.approx(1.0 - 2.15)
    assert found.comparisons[1].p_value == found.comparisons[1].p_uncorrected  # K = 1: nothing to correct
    one_baseline_seed = compare_many_to_baseline(configs, {1: 2.0}, "minimize", planned_seeds=[1])
    assert one_baseline_seed.family_size == 0
    assert [row.verdict for row in one_baseline_seed.comparisons] == [TOO_FEW, TOO_FEW]


def test_the_baselines_own_diverged_seed_is_reported_and_left_out_of_its_mean() -> None:
    baseline = {**BASELINE, 4: NAN}
    config = [1.0, 1.2, 0.9, 1.1]

    found = compare_many_to_baseline([_by_seed(config)], baseline, "minimize", planned_seeds=SEEDS)

    assert found.baseline == SeedCount(planned=4, finished=4, diverged=1)
    (row,) = found.comparisons
    assert row.p_value == pytest.approx(_welch_by_hand(config, [2.0, 2.3, 1.8], 0.95)[3])
    assert row.verdict == BETTER


# --- the minimum effect ----------------------------------------------------------------------------------------------


def test_a_difference_beyond_seed_noise_but_below_the_minimum_effect_is_not_worth_it() -> None:
    base = {1: 2.0, 2: 2.001, 3: 1.999, 4: 2.0}
    config = {1: 1.98, 2: 1.981, 3: 1.979, 4: 1.98}  # 1 % lower, with almost no seed noise
    relative = (1.98 - 2.0) / 2.0

    for min_effect, verdict in ((0.02, NOT_WORTH_IT), (0.005, BETTER), (None, BETTER)):
        (row,) = compare_many_to_baseline(
            [config], base, "minimize", planned_seeds=SEEDS, min_effect=min_effect
        ).comparisons
        assert row.relative == pytest.approx(relative)
        assert row.verdict == verdict
    worse = {seed: value + 0.04 for seed, value in config.items()}
    (row,) = compare_many_to_baseline([worse], base, "minimize", planned_seeds=SEEDS, min_effect=0.02).comparisons
    assert row.verdict == NOT_WORTH_IT  # +1 %: beyond seed noise, too small to matter either way
    noisy = {1: 1.5, 2: 2.5, 3: 1.7, 4: 2.3}
    (row,) = compare_many_to_baseline([noisy], base, "minimize", planned_seeds=SEEDS, min_effect=0.5).comparisons
    assert row.verdict == SAME  # not beyond seed noise in the first place


def test_the_same_numbers_read_as_accuracy_are_worse() -> None:
    config = [1.0, 1.2, 0.9, 1.1]
    (row,) = compare_many_to_baseline([_by_seed(config)], BASELINE, "maximize", planned_seeds=SEEDS).comparisons
    assert row.verdict == WORSE


def test_seeds_without_any_noise_give_exact_differences() -> None:
    base = {1: 2.0, 2: 2.0}
    configs = [{1: 1.5, 2: 1.5}, {1: 2.0, 2: 2.0}, {1: 2.5, 2: 2.5}]

    for correction in ("holm", "dunnett", "paired"):
        found = compare_many_to_baseline(configs, base, "minimize", planned_seeds=[1, 2], correction=correction)
        assert [(row.mean, row.ci_low, row.ci_high, row.p_value) for row in found.comparisons] == [
            (-0.5, -0.5, -0.5, None),
            (0.0, 0.0, 0.0, None),
            (0.5, 0.5, 0.5, None),
        ]
        assert [row.verdict for row in found.comparisons] == [BETTER, SAME, WORSE]


def test_a_wrong_correction_or_a_negative_minimum_effect_is_refused() -> None:
    with pytest.raises(ValueError, match="correction must be one of dunnett, holm, paired, got 'bonferroni'"):
        compare_many_to_baseline([], BASELINE, "minimize", planned_seeds=SEEDS, correction="bonferroni")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"min_effect .* cannot be negative, got -0.1"):
        compare_many_to_baseline([], BASELINE, "minimize", planned_seeds=SEEDS, min_effect=-0.1)
