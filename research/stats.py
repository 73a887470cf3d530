"""Summary statistics over seeds, from `scipy.stats`.

- `summarize(values)`: n, mean, sample standard deviation (ddof=1) and the 95 %
  Student-t interval of the mean (`scipy.stats.t.interval`, n - 1 degrees of freedom).
- `paired(values, baseline)`: over the seeds both have, the mean of the differences
  value - baseline, its 95 % t interval and the two-sided paired t-test's p-value
  (`scipy.stats.ttest_rel`). Pairing by seed removes the seed-to-seed spread the
  two configurations share (same data split, same seed → same data order and, for
  identical layers, the same initial weights).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # nan for n < 2
    low: float  # 95 % interval of the mean; nan for n < 2
    high: float

    def overlaps(self, other: "Summary") -> bool:
        """Whether the two intervals overlap (True when either has none: no evidence)."""
        if not all(map(math.isfinite, (self.low, self.high, other.low, other.high))):
            return True
        return self.low <= other.high and other.low <= self.high


@dataclasses.dataclass(frozen=True)
class Paired:
    n: int  # Seeds both configurations have.
    mean: float  # Mean difference (this - baseline).
    low: float
    high: float
    p_value: float  # nan for n < 2 or when every difference is equal


def t_interval(mean: float, std: float, n: int, confidence: float = CONFIDENCE):
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    if std == 0:
        return mean, mean
    return tuple(float(x) for x in stats.t.interval(confidence, n - 1, loc=mean,
                                                     scale=std / math.sqrt(n)))


def summarize(values) -> Summary:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    low, high = t_interval(mean, std, n)
    return Summary(n, mean, std, low, high)


def paired(values: dict, baseline: dict) -> Paired:
    """`values`, `baseline`: {seed: metric}; pairs the seeds both have with a finite value."""
    seeds = sorted(s for s in values if s in baseline and _finite(values[s])
                   and _finite(baseline[s]))
    n = len(seeds)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    a = np.asarray([values[s] for s in seeds], dtype=float)
    b = np.asarray([baseline[s] for s in seeds], dtype=float)
    d = a - b
    mean = float(d.mean())
    if n < 2:
        return Paired(n, mean, math.nan, math.nan, math.nan)
    std = float(d.std(ddof=1))
    low, high = t_interval(mean, std, n)
    p_value = math.nan
    if std > 0:
        p_value = float(stats.ttest_rel(a, b).pvalue)
    return Paired(n, mean, low, high, p_value)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)
