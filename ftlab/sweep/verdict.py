"""Does a configuration beat the baseline beyond seed noise? The statistics behind ``ftlab confirm``, from scipy.

Each configuration is trained with several seeds. Per configuration: the mean objective with its 95 % confidence
interval (Student's t) and the seeds' spread (sample standard deviation). Against the baseline: the difference of the
means with its 95 % confidence interval by Welch's t-test (unequal variances), and a plain verdict read off that
interval: entirely on the better side → better beyond seed noise; entirely on the worse side → worse; across zero →
not distinguishable. Fewer than two seeds per configuration cannot tell.

Several configurations against the one baseline (:func:`compare_many_to_baseline`): with K tests at 95 % each, the
chance that at least one says "better" by luck grows with K, so the p-values and intervals are corrected for the
family (named in the result), a minimum relative effect can mark a real but tiny difference "not worth it", and a
configuration whose seeds did not all finish, or diverged, is never called better.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
BETTER = "better than the baseline beyond seed noise"
WORSE = "worse than the baseline beyond seed noise"
SAME = "not distinguishable from the baseline"
TOO_FEW = "too few seeds to tell (at least 2 per configuration are needed)"

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class Summary:
    """One configuration's objective over its seeds."""

    n: int
    mean: float
    ci_low: float | None  # the mean's 95 % confidence interval; None below two seeds
    ci_high: float | None
    spread: float | None  # the seeds' sample standard deviation


@dataclass(frozen=True)
class Difference:
    """A configuration against the baseline: mean(config) - mean(baseline), its interval, and the verdict."""

    mean: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    verdict: str


def summarize(values: Sequence[float]) -> Summary:
    """Mean, 95 % confidence interval of the mean and spread of one configuration's seed results."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return Summary(len(data), mean, None, None, None)
    spread = float(data.std(ddof=1))
    if spread == 0:
        return Summary(len(data), mean, mean, mean, 0.0)
    low, high = stats.t.interval(CONFIDENCE, df=len(data) - 1, loc=mean, scale=stats.sem(data))
    return Summary(len(data), mean, float(low), float(high), spread)


def compare_to_baseline(values: Sequence[float], baseline: Sequence[float], direction: Direction) -> Difference:
    """Welch's comparison of a configuration's seed results with the baseline's, and the verdict."""
    config, base = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    mean = float(config.mean() - base.mean())
    if len(config) < 2 or len(base) < 2:
        return Difference(mean, None, None, None, TOO_FEW)
    low, high, p_value = welch(config, base, CONFIDENCE)
    return Difference(mean, low, high, p_value, _verdict(low, high, direction))


def welch(config: np.ndarray, base: np.ndarray, confidence: float) -> tuple[float, float, float | None]:
    """Welch's interval of mean(config) - mean(base) at ``confidence``, and the two-sided p-value (at least 2 each).

    Without any seed noise on either side (a deterministic run) the difference is exact: the interval is that one
    point and the p-value None.
    """
    if config.std(ddof=1) == 0 and base.std(ddof=1) == 0:
        mean = float(config.mean() - base.mean())
        return mean, mean, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical samples: scipy warns, the result holds
        test = stats.ttest_ind(config, base, equal_var=False)
    interval = test.confidence_interval(confidence)
    p_value = None if math.isnan(test.pvalue) else float(test.pvalue)
    return float(interval.low), float(interval.high), p_value


def _verdict(low: float, high: float, direction: Direction) -> str:
    """The verdict from the interval of mean(config) - mean(baseline)."""
    better_below = direction == "minimize"
    if (high < 0) if better_below else (low > 0):
        return BETTER
    if (low > 0) if better_below else (high < 0):
        return WORSE
    return SAME


# --- several configurations against the one baseline ----------------------------------------------------------------

Correction = Literal["dunnett", "holm", "paired"]
METHODS: dict[Correction, str] = {
    "dunnett": "Dunnett's many-to-one test (single step; one pooled variance: assumes equal seed spread everywhere)",
    "holm": "Welch's t-test per configuration, p-values Holm-corrected; intervals Bonferroni-corrected",
    "paired": "paired t-test per configuration on the seeds it shares with the baseline, p-values Holm-corrected; "
    "intervals Bonferroni-corrected",
}
NOT_WORTH_IT = "not worth it: beyond seed noise, but smaller than the minimum effect"
DUNNETT_RNG_SEED = 0  # scipy integrates Dunnett's distribution by quasi-Monte Carlo: a fixed seed, the same p each time

SeedResults = Mapping[int, float]
"""One configuration's results: training seed → objective. A diverged seed is in it with a non-finite value (NaN,
±inf); a seed that has no result (failed, not run yet) is not in it."""


@dataclass(frozen=True)
class SeedCount:
    """How many of a configuration's planned seeds have a result, and how many of those diverged."""

    planned: int
    finished: int  # planned seeds with a result, diverged ones included
    diverged: int

    @property
    def shortfall(self) -> str | None:
        """Why this configuration cannot be called better or worse whatever its numbers say, or None."""
        words = []
        if self.diverged:
            words.append(f"diverged: {self.diverged} of {self.planned} seeds")
        if self.finished < self.planned:
            words.append(f"incomplete: {self.finished} of {self.planned} seeds")
        return "; ".join(words) or None


@dataclass(frozen=True)
class Comparison(Difference):
    """One configuration against the baseline within a family of comparisons.

    ``mean`` is mean(config) - mean(baseline) over the finite seeds (paired: the mean of the per-seed differences over
    the seeds both have; NaN without any), ``ci_low``/``ci_high`` its family-wise interval and ``p_value`` its
    family-wise corrected p-value (None: too few seeds, or no seed noise at all, when the difference is exact).
    """

    p_uncorrected: float | None
    relative: float | None  # mean / |the baseline's mean over the same seeds|; None if that mean is 0 or unknown
    n: int  # the configuration's finite seeds the test used (paired: the seeds matched with the baseline)
    seeds: SeedCount


@dataclass(frozen=True)
class FamilyComparison:
    """K configurations against the baseline, corrected for the K tests at once."""

    correction: Correction
    method: str  # the correction in words, for the output
    family_size: int  # the configurations actually tested (enough seeds): the K the correction is for
    min_effect: float | None
    baseline: SeedCount
    comparisons: list[Comparison]  # in the order the configurations were given


@dataclass(frozen=True)
class _Test:
    """One configuration's test; ``p_family`` None until the family's correction (Holm) sets it."""

    mean: float
    low: float
    high: float
    p_value: float | None  # uncorrected; None: no seed noise, the difference is exact
    reference: float  # the baseline's mean over the seeds the test used
    p_family: float | None = None


def compare_many_to_baseline(
    configs: Sequence[SeedResults],
    baseline: SeedResults,
    direction: Direction,
    *,
    planned_seeds: Collection[int],
    correction: Correction = "holm",
    min_effect: float | None = None,
) -> FamilyComparison:
    """Compare every configuration with the baseline at once, the family-wise error held at 5 %.

    Args:
        configs: each configuration's results by seed (see :data:`SeedResults`); the baseline not among them.
        baseline: the baseline's results by seed. Its diverged or missing seeds leave its statistics (the reference
            is then its finite seeds) and are reported in :attr:`FamilyComparison.baseline`.
        direction: whether a lower (``"minimize"``) or higher (``"maximize"``) objective is better.
        planned_seeds: the seeds every configuration was meant to run; one without a result makes the configuration
            "incomplete: F of P seeds", a non-finite result "diverged: D of P seeds" (its other seeds are still shown):
            neither is ever better or worse.
        correction: ``"dunnett"`` (unpaired, equal variances assumed), ``"holm"`` (Welch's tests, Holm's step-down;
            for K = 1 exactly :func:`compare_to_baseline`) or ``"paired"`` (paired t-tests on the seeds a configuration
            shares with the baseline, Holm's step-down). Holm's intervals are Bonferroni's (level 1 - 0.05 / K):
            simultaneous, so slightly wider than Holm's test, whose p-value decides the verdict.
        min_effect: a relative difference |mean| / |baseline mean| (0.01 = 1 %) below which a difference beyond seed
            noise is "not worth it"; None: any difference beyond seed noise counts.

    Returns:
        The correction, the family size K and one :class:`Comparison` per configuration, its verdict one of
        :data:`BETTER`, :data:`WORSE`, :data:`SAME`, :data:`NOT_WORTH_IT`, :data:`TOO_FEW` (fewer than 2 finite
        seeds, or matched pairs, on a side) or the :attr:`SeedCount.shortfall` words.

    Raises:
        ValueError: an unknown correction or a negative min_effect.
    """
    if correction not in METHODS:
        raise ValueError(f"correction must be one of {', '.join(METHODS)}, got {correction!r}")
    if min_effect is not None and not min_effect >= 0:
        raise ValueError(f"min_effect is a relative difference (0.01 for 1 %) and cannot be negative, got {min_effect}")
    base = _finite(baseline)
    samples = [_paired(config, baseline) if correction == "paired" else _finite(config) for config in configs]
    testable = [index for index, sample in enumerate(samples) if len(sample) >= 2 and len(base) >= 2]
    tests = dict(zip(testable, _tests([samples[index] for index in testable], base, correction), strict=True))
    comparisons = [
        _comparison(tests.get(index), samples[index], base, _count(config, planned_seeds), direction, min_effect)
        for index, config in enumerate(configs)
    ]
    return FamilyComparison(
        correction, METHODS[correction], len(testable), min_effect, _count(baseline, planned_seeds), comparisons
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest p times (K - i + 1), made monotone."""
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def _finite(results: SeedResults) -> np.ndarray:
    return np.asarray([value for value in results.values() if math.isfinite(value)], dtype=float)


def _paired(config: SeedResults, baseline: SeedResults) -> np.ndarray:
    """(config, baseline) for every seed both have a finite result for: shape (n, 2)."""
    seeds = [seed for seed in config if seed in baseline and math.isfinite(config[seed] + baseline[seed])]
    return np.asarray([(config[seed], baseline[seed]) for seed in seeds], dtype=float).reshape(-1, 2)


def _count(results: SeedResults, planned_seeds: Collection[int]) -> SeedCount:
    finished = [seed for seed in planned_seeds if seed in results]
    return SeedCount(len(planned_seeds), len(finished), sum(not math.isfinite(results[seed]) for seed in finished))


def _tests(samples: list[np.ndarray], base: np.ndarray, correction: Correction) -> list[_Test]:
    """Each testable configuration's test, its p-value corrected for the family."""
    if not samples:
        return []
    if correction == "dunnett":
        return _dunnett(samples, base)
    confidence = 1 - (1 - CONFIDENCE) / len(samples)  # Bonferroni: simultaneous intervals for the K configurations
    if correction == "paired":
        tests = [_paired_t(pairs, confidence) for pairs in samples]
    else:
        tests = [_Test(float(s.mean() - base.mean()), *welch(s, base, confidence), float(base.mean())) for s in samples]
    # An exact difference (no seed noise) ranks as p = 0, or 1 if it is zero, in Holm's steps; its p stays None.
    family = holm([test.p_value if test.p_value is not None else float(test.mean == 0) for test in tests])
    return [replace(test, p_family=None if test.p_value is None else p) for test, p in zip(tests, family, strict=True)]


def _paired_t(pairs: np.ndarray, confidence: float) -> _Test:
    differences, reference = pairs[:, 0] - pairs[:, 1], float(pairs[:, 1].mean())
    mean = float(differences.mean())
    if differences.std(ddof=1) == 0:  # every seed moved by the same amount: the difference is exact
        return _Test(mean, mean, mean, None, reference)
    test = stats.ttest_rel(pairs[:, 0], pairs[:, 1])
    interval = test.confidence_interval(confidence)
    return _Test(mean, float(interval.low), float(interval.high), float(test.pvalue), reference)


def _dunnett(samples: list[np.ndarray], base: np.ndarray) -> list[_Test]:
    """Dunnett's single-step test: its p-values and intervals are family-wise already; the raw p is the pooled t's."""
    reference = float(base.mean())
    if base.std(ddof=1) == 0 and all(sample.std(ddof=1) == 0 for sample in samples):
        return [_Test(mean, mean, mean, None, reference) for mean in (float(s.mean()) - reference for s in samples)]
    result = stats.dunnett(*samples, control=base, rng=DUNNETT_RNG_SEED)
    df = len(base) + sum(len(sample) for sample in samples) - len(samples) - 1
    pooled_sd = math.sqrt(sum(((group - group.mean()) ** 2).sum() for group in [base, *samples]) / df)
    critical = _dunnett_critical([len(sample) for sample in samples], len(base), df)
    tests = []
    for index, sample in enumerate(samples):
        mean = float(sample.mean()) - reference
        allowance = critical * pooled_sd * math.sqrt(1 / len(sample) + 1 / len(base))
        p_value = float(2 * stats.t.sf(abs(result.statistic[index]), df))
        tests.append(_Test(mean, mean - allowance, mean + allowance, p_value, reference, float(result.pvalue[index])))
    return tests


def _dunnett_critical(sizes: list[int], n_base: int, df: int) -> float:
    """Dunnett's two-sided critical value: P(max |T_i| <= c) = 95 % for the K correlated t statistics.

    scipy's own interval (``DunnettResult.confidence_interval``) minimises a noisy function and can miss the level,
    with a warning (scipy gh-18150); the root here lies between one test's and Bonferroni's critical values.
    """
    alpha, k = 1 - CONFIDENCE, len(sizes)
    low, high = float(stats.t.ppf(1 - alpha / 2, df)), float(stats.t.ppf(1 - alpha / (2 * k), df))
    if k == 1:
        return low  # one comparison: Student's t with the pooled variance
    ratio = n_base / np.asarray(sizes, dtype=float) + 1
    rho = 1 / np.sqrt(np.outer(ratio, ratio))  # Dunnett (1955), p. 1103: the statistics' correlations
    np.fill_diagonal(rho, 1)
    distribution = stats.multivariate_t(shape=rho, df=df, seed=DUNNETT_RNG_SEED)

    def shortfall(critical: float) -> float:
        bound = np.full(k, critical)
        return float(distribution.cdf(bound, lower_limit=-bound)) - CONFIDENCE

    if shortfall(low) >= 0:  # nearly perfectly correlated statistics: one test's value, up to integration noise
        return low
    if shortfall(high) <= 0:
        return high
    return float(optimize.brentq(shortfall, low, high, xtol=1e-6))


def _comparison(
    test: _Test | None,
    sample: np.ndarray,
    base: np.ndarray,
    seeds: SeedCount,
    direction: Direction,
    min_effect: float | None,
) -> Comparison:
    """One configuration's row: its test's numbers (or the plain difference when it was not tested) and verdict."""
    if test is None:
        if sample.ndim == 2:  # paired: the per-seed differences
            mean, reference = _mean(sample[:, 0] - sample[:, 1]), _mean(sample[:, 1])
        else:
            mean, reference = _mean(sample) - _mean(base), _mean(base)
        relative = _relative(mean, reference)
        return Comparison(mean, None, None, None, seeds.shortfall or TOO_FEW, None, relative, len(sample), seeds)
    relative = _relative(test.mean, test.reference)
    verdict = seeds.shortfall or _family_verdict(test, relative, direction, min_effect)
    return Comparison(
        test.mean, test.low, test.high, test.p_family, verdict, test.p_value, relative, len(sample), seeds
    )


def _family_verdict(test: _Test, relative: float | None, direction: Direction, min_effect: float | None) -> str:
    exact = test.p_value is None
    significant = test.mean != 0 if exact else test.p_family is not None and test.p_family < 1 - CONFIDENCE
    if not significant:
        return SAME
    if min_effect is not None and relative is not None and abs(relative) < min_effect:
        return NOT_WORTH_IT
    return BETTER if (test.mean < 0) == (direction == "minimize") else WORSE


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def _relative(mean: float, reference: float) -> float | None:
    return None if reference == 0 or not math.isfinite(mean + reference) else mean / abs(reference)
