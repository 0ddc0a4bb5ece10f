"""Latency statistics: agreement with numpy, and the distribution-free CI of the median."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from device_agent.core.stats import ci_tight_enough, median_ci, median_ci_indices, summarize


def test_summarize_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.lognormal(0.0, 0.3, size=257)
    s = summarize(x, method="test clock")
    assert s.count == 257
    assert s.median == pytest.approx(np.median(x))
    assert s.mean == pytest.approx(x.mean())
    assert s.min == x.min() and s.max == x.max()
    for q, v in ((90, s.p90), (95, s.p95), (99, s.p99)):
        assert v == pytest.approx(np.percentile(x, q))
    assert s.std == pytest.approx(x.std(ddof=1))
    assert s.cv == pytest.approx(x.std(ddof=1) / x.mean())
    assert s.ci_low <= s.median <= s.ci_high
    assert s.method == "test clock" and s.ci_level == 0.95


def test_known_small_sample():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0], method="m")
    assert s.median == 3.0 and s.mean == 22.0 and s.min == 1.0 and s.max == 100.0
    # n=5: no pair of order statistics reaches 95 %, so the whole range is returned
    assert (s.ci_low, s.ci_high) == (1.0, 100.0)


def test_median_ci_indices_textbook_value():
    # n = 100, 95 %: the 40th and 61st order statistics (1-based), the classic table value
    assert median_ci_indices(100) == (39, 60)


@pytest.mark.parametrize("n", [6, 10, 31, 100, 1000, 12345])
def test_median_ci_indices_are_tightest_with_coverage(n):
    lo, hi = median_ci_indices(n)
    assert hi == n - 1 - lo
    coverage = 1 - 2 * binom.cdf(lo, n, 0.5)
    assert coverage >= 0.95
    tighter = 1 - 2 * binom.cdf(lo + 1, n, 0.5)
    assert tighter < 0.95


def test_median_ci_covers_true_median_in_simulation():
    rng = np.random.default_rng(7)
    true_median = np.log(2.0)  # exponential(1)
    hits = 0
    reps = 2000
    samples = rng.exponential(1.0, size=(reps, 60))
    for row in samples:
        lo, hi = median_ci(row)
        hits += lo <= true_median <= hi
    assert hits / reps >= 0.935  # nominal >= 0.95, Monte-Carlo slack


def test_ci_tight_enough():
    tight = np.full(200, 5.0) + np.random.default_rng(0).normal(0, 0.001, 200)
    wide = np.random.default_rng(0).exponential(1.0, 200)
    assert ci_tight_enough(tight, 0.01)
    assert not ci_tight_enough(wide, 0.01)
    assert not ci_tight_enough(tight, 0.0)  # 0 means never stop early


def test_rejects_bad_samples():
    with pytest.raises(ValueError):
        summarize([], method="m")
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")], method="m")
    with pytest.raises(ValueError):
        median_ci_indices(0)
