"""Latency statistics of a timed loop (docs/measurement.md, "One job, step by step", latency).

Percentiles use numpy's default (linear interpolation); ``std`` is the sample standard
deviation (ddof=1); ``cv = std / mean``. The confidence interval of the median is
distribution-free: the pair of order statistics ``(x_(j), x_(n+1-j))`` whose coverage, from the
Binomial(n, 1/2) law of the number of samples below the true median, is at least ``level``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import bdtr  # binomial CDF; lighter to import than scipy.stats

from device_agent.core.result import LatencyStats


def median_ci_indices(n: int, level: float = 0.95) -> tuple[int, int]:
    """0-based indices ``(lo, hi)`` into the sorted sample bounding the median at ``level``.

    ``lo`` is the largest ``t`` with ``P(Binom(n, .5) <= t) <= (1 - level) / 2``; the interval
    ``[x_(t+1), x_(n-t)]`` (1-based) then covers the median with probability
    ``1 - 2 P(Binom <= t) >= level``. When ``n`` is too small for any such ``t`` the whole
    range ``(0, n - 1)`` is returned (coverage ``1 - 2^(1-n)``, below ``level``).
    """
    if n < 1:
        raise ValueError("need at least one sample")
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    alpha2 = (1.0 - level) / 2.0
    lo, hi = -1, n // 2  # invariant: cdf(lo) <= alpha2 (cdf(-1) = 0), cdf(hi) > alpha2
    while hi - lo > 1:  # the CDF is monotone: bisect for the largest t with cdf(t) <= alpha2
        mid = (lo + hi) // 2
        if bdtr(mid, n, 0.5) <= alpha2:
            lo = mid
        else:
            hi = mid
    if lo < 0:
        return 0, n - 1
    return lo, n - 1 - lo


def median_ci(samples: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median of ``samples``."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    lo, hi = median_ci_indices(len(x), level)
    return float(x[lo]), float(x[hi])


def ci_tight_enough(samples: Sequence[float] | np.ndarray, target_precision: float,
                    level: float = 0.95) -> bool:
    """True when the median CI half-width is below ``target_precision`` x median."""
    if target_precision <= 0 or len(samples) < 2:
        return False
    x = np.asarray(samples, dtype=np.float64)
    lo, hi = median_ci(x, level)
    return (hi - lo) / 2.0 < target_precision * float(np.median(x))


def summarize(samples_ms: Sequence[float] | np.ndarray, *, method: str,
              level: float = 0.95) -> LatencyStats:
    """:class:`LatencyStats` of per-iteration latencies in ms; ``method`` says how they were timed."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("samples must be a non-empty 1-D sequence")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contain non-finite values")
    n = len(x)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    p90, p95, p99 = (float(v) for v in np.percentile(x, [90, 95, 99]))
    lo, hi = median_ci(x, level)
    return LatencyStats(
        median=float(np.median(x)), mean=mean, min=float(x.min()), max=float(x.max()),
        p90=p90, p95=p95, p99=p99, std=std,
        cv=(std / mean) if mean > 0 else math.inf,
        count=n, ci_low=lo, ci_high=hi, ci_level=level, method=method,
    )
