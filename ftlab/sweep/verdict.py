"""Does a configuration beat the baseline beyond seed noise? The statistics behind ``ftlab confirm``, from scipy.

Each configuration is trained with several seeds. Per configuration: the mean objective with its 95 % confidence
interval (Student's t) and the seeds' spread (sample standard deviation). Against the baseline: the difference of the
means with its 95 % confidence interval by Welch's t-test (unequal variances), and a plain verdict read off that
interval: entirely on the better side → better beyond seed noise; entirely on the worse side → worse; across zero →
not distinguishable. Fewer than two seeds per configuration cannot tell.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

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
    if config.std(ddof=1) == 0 and base.std(ddof=1) == 0:
        # No seed noise at all (a deterministic run): the difference is exact.
        return Difference(mean, mean, mean, None, _verdict(mean, mean, direction))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical samples: scipy warns, the result holds
        test = stats.ttest_ind(config, base, equal_var=False)
    interval = test.confidence_interval(CONFIDENCE)
    low, high = float(interval.low), float(interval.high)
    p_value = None if math.isnan(test.pvalue) else float(test.pvalue)
    return Difference(mean, low, high, p_value, _verdict(low, high, direction))


def _verdict(low: float, high: float, direction: Direction) -> str:
    """The verdict from the interval of mean(config) - mean(baseline)."""
    better_below = direction == "minimize"
    if (high < 0) if better_below else (low > 0):
        return BETTER
    if (low > 0) if better_below else (high < 0):
        return WORSE
    return SAME
