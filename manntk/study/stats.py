"""The statistics of a study: small, exact, and checked by hand in the tests.

- [`wilson_interval`][manntk.study.stats.wilson_interval]: the 95% interval of a solve
  rate (Wilson's score interval: sound at 0 or n successes out of a few, where the normal
  approximation gives nonsense).
- [`quartiles`][manntk.study.stats.quartiles]: median and IQR by linear interpolation
  between order statistics (numpy's default, type 7).
- [`paired_bootstrap`][manntk.study.stats.paired_bootstrap]: the confidence interval of the
  mean difference between two arms over the seeds both ran (each seed trains both arms on
  the same data, so the pairs share their luck), by the percentile bootstrap.
- [`ecdf`][manntk.study.stats.ecdf]: the empirical distribution of iterations to solve, with
  the unsolved runs counted in the denominator (right-censored at the budget).
"""

from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054
"""z of a two-sided 95% interval."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; ``(nan, nan)`` for ``n = 0``."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)``, linear interpolation between order statistics; nan when empty."""
    if not values:
        return (math.nan, math.nan, math.nan)
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return (float(q1), float(median), float(q3))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``); the deviation is nan below two values."""
    if not values:
        return (math.nan, math.nan)
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan)


def paired_bootstrap(
    arm: Mapping[int, float], baseline: Mapping[int, float], *, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float, int]:
    """The mean of ``arm - baseline`` over the seeds both have, and its percentile-bootstrap interval.

    Returns:
        ``(mean difference, low, high, pairs)``; nan when no seed is shared (one pair gives
        an interval of zero width: the data say nothing about the spread).
    """
    shared = sorted(set(arm) & set(baseline))
    if not shared:
        return (math.nan, math.nan, math.nan, 0)
    differences = np.array([arm[s] - baseline[s] for s in shared], dtype=float)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), size=(resamples, len(differences)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(differences.mean()), float(low), float(high), len(shared))


def ecdf(solved_at: Sequence[int], runs: int) -> tuple[list[int], list[float]]:
    """The fraction of all ``runs`` solved by each iteration in ``solved_at`` (sorted):
    unsolved runs never count as solved, so the curve ends at the solve rate."""
    steps = sorted(solved_at)
    return steps, [(i + 1) / runs for i in range(len(steps))]
