"""The statistics of a study: numpy and `scipy.stats`, nothing estimated by hand
that a well-kept library computes.

Over seeds (one number per trial):
- `summarize(values)`: n, mean, sample standard deviation (ddof=1) and the 95 %
  Student-t interval of the mean (`scipy.stats.t.interval`, n - 1 degrees of freedom).
- `paired(values, baseline)` (alias `compare`): over the seeds both have, the mean of
  the differences value - baseline, its 95 % t interval and the two-sided paired
  t-test's p-value (`scipy.stats.ttest_rel`). Pairing by seed removes the seed-to-seed
  spread the two configurations share (same data split, same seed → same data order
  and, for identical layers, the same initial weights). Works on any per-seed metric
  (validation or test). Exactly equal runs (every difference 0) are a *tie*: p = 1;
  equal non-zero differences have an infinite t: p = 0.
- `verdict(paired, alpha, higher_is_better, p_value=None)`: what a comparison may
  say: "better", "worse", "tie", "no difference shown", or "not enough seeds to tell"
  (fewer than `MIN_SEEDS` = 3 pairs: a t interval on 1 degree of freedom says nothing
  a reader should act on).
- `holm(p_values)`: Holm–Bonferroni step-down adjusted p-values (family-wise error
  for several configurations compared with one baseline or one best).

Over seeds *and* test examples (each trial's `predictions.npz`):
- `paired_bootstrap(a, b)`: `a`, `b`: {seed: per-example values} on the same test
  examples (e.g. 1.0/0.0 correct, or per-example loss). A two-level bootstrap: each
  replicate resamples the seeds, then the test examples (one draw of the test set per
  replicate, the same draws for both configurations and every seed), and takes the
  mean difference a - b. Returns the mean difference, its 95 % percentile interval and
  the probability of improvement P(A > B): over replicates and seeds, the chance that a
  run of A scores higher than the same-seed run of B on a test set drawn like ours
  (ties count one half; Bouthillier et al., MLSys 2021), and a two-sided bootstrap
  p-value of "no difference" (twice the smaller share of replicates on either side of 0).
  For a loss (lower is better) P(A > B) is the chance A's loss is *higher*. numpy,
  seeded: the same inputs give the same numbers. (`scipy.stats.bootstrap` resamples one
  level only.)
- `mcnemar_exact(fixed, broken)`: per seed, the exact McNemar test of two runs' right/wrong
  on the same examples: the discordant pairs (fixed: wrong under B, right under A;
  broken: the reverse) against a fair coin (`scipy.stats.binomtest`, two-sided).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
# Fewer paired seeds than this: "not enough seeds to tell", whatever the numbers.
MIN_SEEDS = 3
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 0

BETTER, WORSE, TIE = "better", "worse", "tie"
NO_DIFFERENCE = "no difference shown"
TOO_FEW = "not enough seeds to tell"


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # nan for n < 2
    low: float  # 95 % interval of the mean; nan for n < 2
    high: float


@dataclasses.dataclass(frozen=True)
class Paired:
    n: int  # Seeds both configurations have.
    mean: float  # Mean difference (this - baseline).
    low: float  # 95 % t interval of the mean difference; nan for n < 2
    high: float
    p_value: float  # Two-sided paired t-test; 1.0 for a tie, 0.0 for equal non-zero
    #                 differences (t infinite); nan for n < 2
    seeds: tuple = ()  # The paired seeds, sorted.
    differences: tuple = ()  # this - baseline, per paired seed.

    @property
    def tie(self) -> bool:
        """Every paired difference is exactly 0 (e.g. identical runs)."""
        return self.n > 0 and all(d == 0 for d in self.differences)


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    seeds: int  # Paired seeds used.
    examples: int  # Common test examples used.
    mean: float  # Mean difference a - b over seeds and examples.
    low: float  # 95 % percentile interval of the two-level bootstrap
    high: float
    p_improvement: float  # P(A > B), see the module docstring
    replicates: int
    p_value: float = math.nan  # Two-sided: 2 x the smaller share of replicates on either
    #                            side of 0, (count + 1) / (replicates + 1); 1.0 for a tie


def t_interval(mean: float, std: float, n: int, confidence: float = CONFIDENCE):
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    if std == 0:
        return mean, mean
    return tuple(float(x) for x in stats.t.interval(confidence, n - 1, loc=mean,
                                                     scale=std / math.sqrt(n)))


def summarize(values) -> Summary:
    x = np.asarray([v for v in values if _finite(v)], dtype=float)
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
    common = dict(seeds=tuple(seeds), differences=tuple(float(x) for x in d))
    if n < 2:
        return Paired(n, mean, math.nan, math.nan, math.nan, **common)
    std = float(d.std(ddof=1))
    low, high = t_interval(mean, std, n)
    if not np.any(d):
        p_value = 1.0  # A tie: nothing against "no difference".
    elif std <= 1e-12 * max(1.0, abs(mean)):
        # Every difference equal and non-zero (up to float rounding, e.g. 0.9 - 0.8 and
        # 0.8 - 0.7): t is infinite.
        p_value = 0.0
    else:
        p_value = float(stats.ttest_rel(a, b).pvalue)
    return Paired(n, mean, low, high, p_value, **common)


compare = paired


def holm(p_values) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order: the k-th smallest of m
    finite p-values becomes max over j <= k of min(1, (m - j + 1) p_(j)) (monotone,
    capped at 1). nan stays nan and does not count in m."""
    p = [float(x) if x is not None else math.nan for x in p_values]
    finite = [i for i, x in enumerate(p) if math.isfinite(x)]
    m = len(finite)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(finite, key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def verdict(comparison: Paired, alpha: float = ALPHA, higher_is_better: bool = True,
            p_value: float | None = None) -> str:
    """better / worse (than the reference), tie, no difference shown, or not enough
    seeds to tell. `p_value`: an adjusted p-value to use instead of the comparison's."""
    if comparison.n and comparison.tie:
        return TIE
    if comparison.n < MIN_SEEDS:
        return TOO_FEW
    p = comparison.p_value if p_value is None else p_value
    if not (p is not None and math.isfinite(p)) or p >= alpha or comparison.mean == 0:
        return NO_DIFFERENCE
    return BETTER if (comparison.mean > 0) == higher_is_better else WORSE


def paired_bootstrap(a: dict, b: dict, replicates: int = BOOTSTRAP_REPLICATES,
                     seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
                     chunk: int = 250) -> Bootstrap:
    """Two-level paired bootstrap of mean(a - b) (see the module docstring).

    `a`, `b`: {seed: 1-D array of per-example values}, every array over the same
    examples in the same order. Only the seeds both have are used."""
    seeds = sorted(s for s in a if s in b)
    if not seeds:
        return Bootstrap(0, 0, math.nan, math.nan, math.nan, math.nan, 0)
    d = np.stack([np.asarray(a[s], dtype=float) - np.asarray(b[s], dtype=float)
                  for s in seeds])  # (seeds, examples)
    n_seeds, n_examples = d.shape
    if n_examples == 0:
        return Bootstrap(n_seeds, 0, math.nan, math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(chunk, 2_000_000 // n_examples))  # Bounded memory per chunk.
    means, wins = [], []
    done = 0
    while done < replicates:
        size = min(chunk, replicates - done)
        seed_draw = rng.integers(0, n_seeds, size=(size, n_seeds))
        example_draw = rng.integers(0, n_examples, size=(size, n_examples))
        # How often each example is drawn in each replicate, then every seed's mean
        # difference on that replicate's test set (one matrix product) ...
        offsets = (np.arange(size)[:, None] * n_examples + example_draw).ravel()
        counts = np.bincount(offsets, minlength=size * n_examples).reshape(size, n_examples)
        on_test_set = counts @ d.T / n_examples  # (replicates, seeds)
        # ... then the replicate's resampled seeds.
        per_seed = np.take_along_axis(on_test_set, seed_draw, axis=1)
        means.append(per_seed.mean(axis=1))
        wins.append((np.sign(per_seed) * 0.5 + 0.5).mean(axis=1))
        done += size
    means = np.concatenate(means)
    wins = np.concatenate(wins)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    if not np.any(d):
        p_value = 1.0  # A tie: every example, every seed the same.
    else:
        side = min(np.sum(means <= 0), np.sum(means >= 0))
        p_value = min(1.0, 2.0 * (side + 1) / (replicates + 1))
    return Bootstrap(n_seeds, n_examples, float(d.mean()), float(low), float(high),
                     float(np.mean(wins)), replicates, float(p_value))


def _finite(value) -> bool:
    return (value is not None and not isinstance(value, bool)
            and isinstance(value, (int, float, np.floating, np.integer))
            and math.isfinite(value))


def mcnemar_exact(fixed: int, broken: int) -> float:
    """The exact (binomial) McNemar test of paired right/wrong outcomes: two-sided p of
    `fixed` successes in `fixed + broken` discordant pairs at one half
    (`scipy.stats.binomtest`); 1.0 when no pair is discordant."""
    n = int(fixed) + int(broken)
    if n == 0:
        return 1.0
    return float(stats.binomtest(int(fixed), n, 0.5).pvalue)
