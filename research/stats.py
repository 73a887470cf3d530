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
  equal non-zero differences have an infinite t: p = 0 (`Paired.degenerate`; the rules
  below never use that p: `Paired.sign_flip_p` is the exact sign-flip p of the same
  differences).
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

Calibrated rules (issue 31; bench/calibration.py measures them on nulls), all on the exact
sign-flip test over seeds (`sign_flip_p`; its floor `min_attainable_p(n)` = 2 / 2^n:
3 seeds 0.25, so "with 3 seeds no exact test can reach 0.05", `unreachable_note`):
- `best(values)`: ★ when every other configuration is worse at 2 α / k (the top is chosen
  by the data; the factor pays for it; no claim can rest on zero variance);
- `test_verdicts(values, baseline, bootstrap=...)`: better / worse against the baseline,
  Holm over the configurations, and the two-level bootstrap agreeing;
- `race_levels` / `race_look`: the race's per-round drop rule, α spent over the rounds and
  the pairs so that the whole race drops a configuration that is not worse with
  probability <= α (a winner is only declared through such drops);
- `seeds_needed(differences, effect, alpha)`: seeds for 80 % power under that test;
- `replicates_for(k, alpha)`: bootstrap replicates that let Holm over k reach α;
- `rounded(value, se)` / `decimals_for(se)`: figures to what their Monte-Carlo SE supports.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy import special, stats

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
    # Every difference equal and non-zero (n >= 2): the t statistic is infinite and
    # `p_value` (0) rests on nothing; use `sign_flip_p`.
    degenerate: bool = False
    sign_flip_p: float = math.nan  # Exact two-sided sign-flip p over the seeds (`sign_flip_p`)

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
    # Monte-Carlo standard error of the interval's endpoints (the larger of the two, from
    # 10 batches of the replicates) and of the p-value (sqrt(p (1 - p) / replicates)): what
    # `rounded` may print of them.
    mc_se: float = math.nan
    p_mc_se: float = math.nan


def t_interval(mean: float, std: float, n: int, confidence: float = CONFIDENCE):
    if n < 2 or not math.isfinite(std):
        return math.nan, math.nan
    if std == 0:
        return mean, mean
    # scipy.special.stdtrit: the Student t quantile (what stats.t.interval computes),
    # without the distribution object's overhead (the rules call this thousands of times).
    half = float(special.stdtrit(n - 1, 0.5 + confidence / 2.0)) * std / math.sqrt(n)
    return mean - half, mean + half


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
    common = dict(seeds=tuple(seeds), differences=tuple(float(x) for x in d),
                  sign_flip_p=sign_flip_p(d))
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
        common["degenerate"] = True
    else:
        # The paired t-test (scipy.stats.ttest_rel's statistic and two-sided p), by
        # scipy.special.stdtr directly.
        t = mean / (std / math.sqrt(n))
        p_value = float(min(1.0, 2.0 * special.stdtr(n - 1, -abs(t))))
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
        # (float counts: BLAS, not numpy's integer loop; the counts are exact either way)
        on_test_set = counts.astype(np.float64) @ d.T / n_examples  # (replicates, seeds)
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
    mc_se = quantile_mc_se(means, (tail, 1.0 - tail))
    p_mc_se = math.sqrt(p_value * (1.0 - p_value) / replicates)
    return Bootstrap(n_seeds, n_examples, float(d.mean()), float(low), float(high),
                     float(np.mean(wins)), replicates, float(p_value), mc_se, p_mc_se)


def _finite(value) -> bool:
    if type(value) is float or type(value) is np.float64:  # The common case, fast.
        return math.isfinite(value)
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


# ---- calibrated rules (issue 31) ----------------------------------------------------------------
#
# Every claim below rests on the exact sign-flip test of the per-seed paired differences:
# under "no difference" the two same-seed runs are exchangeable, so each difference is as
# likely to be +d as -d, independently over seeds; the 2^n sign patterns are equally likely
# and the share of them whose |sum| reaches the observed one is an exact p-value, whatever
# the metric's distribution (discrete accuracies, ties, one-photo coincidences). It cannot
# be fooled by zero variance: n equal non-zero differences give the smallest attainable p,
# 2 / 2^n, never 0 (3 seeds: 0.25, so no claim at 0.05 before 6 seeds).
# The p-values it gives are multiples of 2 / 2^n (two-sided): P(p <= x) <= x exactly.

EXACT_SIGN_FLIPS = 16  # Up to 2^16 patterns enumerated; beyond, Monte-Carlo draws.
SIGN_FLIP_DRAWS = 65536
SIGN_FLIP_SEED = 0
UNREACHABLE = "too few seeds for an exact test at this level"  # the verdict's reason


def _sign_patterns(n: int) -> np.ndarray:
    cached = _PATTERNS.get(n)
    if cached is None:
        codes = np.arange(2 ** n, dtype=np.int64)[:, None] >> np.arange(n)[None, :]
        cached = _PATTERNS[n] = np.where(codes & 1, -1.0, 1.0)
    return cached


_PATTERNS: dict = {}


def sign_flip_p(differences, alternative: str = "two-sided",
                exact_max: int = EXACT_SIGN_FLIPS, draws: int = SIGN_FLIP_DRAWS,
                seed: int = SIGN_FLIP_SEED) -> float:
    """Exact sign-flip (paired permutation) p-value of "mean difference 0" over the seeds.

    `differences`: one number per seed (non-finite ones left out). The statistic is the
    sum of the differences; p = share of the 2^n sign patterns whose sum is at least as
    extreme (|sum| >= |observed| for "two-sided"; >= for "greater", <= for "less"), up
    to float rounding. n > `exact_max`: `draws` random patterns, p = (count + 1) /
    (draws + 1) (still valid). 1.0 when every difference is 0; nan with no difference."""
    d = np.asarray([x for x in differences if _finite(x)], dtype=float)
    n = len(d)
    if n == 0:
        return math.nan
    if not np.any(d):
        return 1.0
    observed = float(d.sum())
    tolerance = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if n <= exact_max:
        sums = _sign_patterns(n) @ d
        total, extra = len(sums), 0
    else:
        rng = np.random.default_rng(seed)
        sums = np.where(rng.random((draws, n)) < 0.5, -1.0, 1.0) @ d
        total, extra = draws, 1
    if alternative == "two-sided":
        count = np.sum(np.abs(sums) >= abs(observed) - tolerance)
    elif alternative == "greater":
        count = np.sum(sums >= observed - tolerance)
    elif alternative == "less":
        count = np.sum(sums <= observed + tolerance)
    else:
        raise ValueError(f"alternative {alternative!r}: two-sided, greater or less")
    return float(min(1.0, (count + extra) / (total + extra)))


def min_attainable_p(n: int, alternative: str = "two-sided",
                     exact_max: int = EXACT_SIGN_FLIPS, draws: int = SIGN_FLIP_DRAWS) -> float:
    """The smallest p-value the sign-flip test can give on `n` non-zero paired differences:
    2 / 2^n two-sided (3 seeds: 0.25; 5: 0.0625; 6: 0.03125), 1 / 2^n one-sided; beyond
    `exact_max` seeds the Monte-Carlo floor 1 / (draws + 1) (two-sided: 2 / (draws + 1)).
    A difference that is exactly 0 does not count in `n` (it doubles the floor)."""
    if n <= 0:
        return 1.0
    sides = 2.0 if alternative == "two-sided" else 1.0
    if n > exact_max:
        return min(1.0, max(sides / 2.0 ** n, sides / (draws + 1)))
    return min(1.0, sides / 2.0 ** n)


def min_seeds_for(level: float, alternative: str = "two-sided") -> int:
    """The fewest seeds whose sign-flip test can give p <= `level` (0.05: 6; 0.01: 8)."""
    if not level > 0:
        return math.inf
    n = 1
    while min_attainable_p(n, alternative) > level:
        n += 1
        if n > 64:
            return math.inf
    return n


def unreachable_note(n: int, level: float) -> str:
    """The report's sentence when no exact test on `n` seeds can reach `level`."""
    return (f"with {n} seeds no exact test can reach {_level(level)} (the smallest "
            f"attainable p is {_level(min_attainable_p(n))}; {min_seeds_for(level)} seeds "
            "can)")


def _level(x: float) -> str:
    return f"{x:.3g}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One configuration against another (`against`) under a calibrated rule."""
    config: object
    against: object
    paired: Paired  # paired(values[config], values[against])
    p: float  # Two-sided exact sign-flip p over the paired seeds
    p_adjusted: float  # What the rule compares with its α (see the rule); nan: untested
    level: float  # The level p is judged at (p <= level: significant)
    verdict: str  # config against `against`: better, worse, tie, no difference shown, ...
    reachable: bool  # Whether these seeds can reach `level` at all (min_attainable_p)
    bootstrap_p_adjusted: float = math.nan  # test verdict: the bootstrap's Holm p


def _paired_claim(config, against, c: Paired, level: float, p_adjusted: float,
                  higher_is_better: bool, agrees: bool = True, boot_adj=math.nan) -> Claim:
    p = c.sign_flip_p
    if c.n and c.tie:
        verdict = TIE
    elif c.n < MIN_SEEDS:
        verdict = TOO_FEW
    elif (math.isfinite(p_adjusted) and p <= level and c.mean != 0 and agrees):
        verdict = BETTER if (c.mean > 0) == higher_is_better else WORSE
    else:
        verdict = NO_DIFFERENCE
    return Claim(config, against, c, p, p_adjusted, level, verdict,
                 min_attainable_p(c.n) <= level, boot_adj)


@dataclasses.dataclass(frozen=True)
class Best:
    top: object  # The configuration with the best mean (ties: the first); None: no data
    star: bool  # ★: better than every other configuration (the rule in `best`)
    level: float  # Per-comparison level: 2 α / k
    claims: dict  # other configuration -> Claim (other against top)
    configurations: int  # k: configurations with a value


def best(values: dict, higher_is_better: bool = True, alpha: float = ALPHA) -> Best:
    """★ best: `values` {configuration: {seed: metric}} (dict order = grid order).

    The top is the best mean over its seeds; it is ★ only when *every* other configuration
    is significantly worse in the paired sign-flip test at level 2 α / k (k: the
    configurations with a value), on at least MIN_SEEDS paired seeds. Why this holds α:
    ★ is a claim that the top beats all others, so it is false only if some j is not
    worse than the starred i; P(i starred) <= P(i beats that one j) <= (2 α / k) / 2 (one
    direction of an exact two-sided test), and summed over the k configurations that could
    be starred, <= α — whatever the data chose as top. (An intersection of tests needs no
    Holm across the k - 1 comparisons; the factor k / 2 pays for choosing the top.)
    `Claim.p_adjusted` = min(1, p k / 2), comparable with α."""
    finite = {c: v for c, v in values.items()
              if any(_finite(x) for x in v.values())}
    k = len(finite)
    if not k:
        return Best(None, False, math.nan, {}, 0)
    sign = 1.0 if higher_is_better else -1.0
    means = {c: float(np.mean([x for x in v.values() if _finite(x)])) for c, v in finite.items()}
    top = max(finite, key=lambda c: sign * means[c])  # max keeps the first of equals
    level = 2.0 * alpha / k if k > 1 else alpha
    claims = {}
    for c in finite:
        if c == top:
            continue
        probe = paired(finite[c], finite[top])
        adjusted = min(1.0, probe.sign_flip_p * k / 2.0) if math.isfinite(
            probe.sign_flip_p) else math.nan
        claims[c] = _paired_claim(c, top, probe, level, adjusted, higher_is_better)
    star = bool(claims) and all(cl.verdict == WORSE for cl in claims.values())
    return Best(top, star, level, claims, k)


def test_verdicts(values: dict, baseline, higher_is_better: bool = True,
                  alpha: float = ALPHA, bootstrap=None) -> dict:
    """Every configuration against the baseline (a fixed, named reference: no selection).

    `values`: {configuration: {seed: metric}} including the baseline's. `bootstrap`:
    None (seeds only), a dict {configuration: Bootstrap} or a callable
    configuration -> Bootstrap | None, called only when some sign-flip comparison is
    significant (the bootstrap cannot turn "no difference" into a claim, so it is not
    needed otherwise). Better / worse only when the sign-flip test, Holm-adjusted over
    the compared configurations, is <= α and — when bootstraps are given — the two-level
    bootstrap, Holm-adjusted the same way, is < α with the same sign. Holm controls the
    family-wise error over configurations for any dependence; each sign-flip test is
    exact, so the verdict's chance of any false "better"/"worse" is <= α (the bootstrap
    only removes claims). Returns {configuration: Claim} (baseline left out)."""
    others = [c for c in values if c != baseline]
    probes = [paired(values[c], values[baseline]) for c in others]
    adjusted = holm([p.sign_flip_p for p in probes])
    boot_adj = [math.nan] * len(others)
    boots = [None] * len(others)
    if bootstrap is not None and any(math.isfinite(a) and a <= alpha for a in adjusted):
        get = bootstrap.get if isinstance(bootstrap, dict) else bootstrap
        boots = [get(c) for c in others]
        boot_adj = holm([b.p_value if b is not None else math.nan for b in boots])
    out = {}
    for c, probe, adj, b, badj in zip(others, probes, adjusted, boots, boot_adj):
        agrees = True
        if bootstrap is not None:
            agrees = (b is not None and math.isfinite(badj) and badj < alpha
                      and b.mean != 0 and (b.mean > 0) == (probe.mean > 0))
        claim = _paired_claim(c, baseline, probe, alpha, adj, higher_is_better, agrees, badj)
        # Holm's p is what is judged: re-judge with the adjusted p.
        verdict = claim.verdict
        if verdict in (BETTER, WORSE) and not (math.isfinite(adj) and adj <= alpha):
            verdict = NO_DIFFERENCE
        m = sum(math.isfinite(p.sign_flip_p) for p in probes)
        reachable = min_attainable_p(probe.n) * max(1, m) <= alpha
        out[c] = dataclasses.replace(claim, verdict=verdict, reachable=reachable)
    return out


# ---- the race: whole-run error control -----------------------------------------------------------

def race_pairs(k: int) -> int:
    """The race's multiplicity: k (k - 1) / 2 pairs of its k initial configurations."""
    return max(1, k * (k - 1) // 2)


def race_levels(k: int, min_seeds: int, max_seeds: int, alpha: float = ALPHA,
                exact_max: int = EXACT_SIGN_FLIPS) -> dict:
    return dict(_race_levels(int(k), int(min_seeds), int(max_seeds), float(alpha),
                             int(exact_max)))


@functools.lru_cache(maxsize=256)
def _race_levels(k: int, min_seeds: int, max_seeds: int, alpha: float,
                 exact_max: int) -> tuple:
    """{seeds at the look: per-comparison sign-flip level} for a race of `k`
    configurations, looks at min_seeds, min_seeds + 1, ..., max_seeds (0: that look drops
    nothing). Fixed before any data: it depends on k, the seeds and α only.

    The guarantee: P(ever dropping a configuration that is not worse than the best) <= α.
    A false drop at a look is a configuration c of the best set B found significantly
    *below* some j (the round's best) although c >= j: for each ordered pair (c, j) that
    has probability <= level / 2 at that look (one direction of an exact two-sided test;
    a location shift only makes it smaller), and there are at most k (k - 1) ordered
    pairs, so P(a false drop at the look) <= race_pairs(k) * level = α_look; the α_look
    sum to <= α over the looks (Bonferroni over looks: valid for the correlated,
    nested looks of a race). α is spent only where the sign-flip test can reach it: the
    last L looks, L as large as an equal split allows (every look's level >= its floor
    2 / 2^n), each level snapped down to the p-values the test can give (multiples of
    2 / 2^n) and what is left over handed back to the latest looks."""
    m = race_pairs(k)
    looks = [n for n in range(max(min_seeds, MIN_SEEDS), max_seeds + 1)]
    out = {n: 0.0 for n in range(min_seeds, max_seeds + 1)}
    if not looks or not alpha > 0:
        return tuple(out.items())
    chosen = []
    for size in range(1, len(looks) + 1):
        candidate = looks[-size:]
        if min_attainable_p(candidate[0], exact_max=exact_max) <= alpha / (size * m):
            chosen = candidate
    if not chosen:
        return tuple(out.items())
    budget = alpha / m  # Per-comparison levels over the chosen looks sum to this.

    def snap(n, level):
        if n > exact_max:
            return level
        step = 2.0 / 2.0 ** n
        return math.floor(level / step + 1e-9) * step

    levels = {n: snap(n, budget / len(chosen)) for n in chosen}
    for n in reversed(chosen):  # Hand the rounding's leftover to the latest looks.
        left = budget - sum(levels.values())
        levels[n] = snap(n, levels[n] + max(0.0, left))
    out.update(levels)
    return tuple(out.items())


@dataclasses.dataclass(frozen=True)
class RaceLook:
    best: object  # The round's best mean (ties: the first); None: no data
    level: float  # This look's per-comparison level (race_levels); 0: no drop possible
    claims: dict  # other configuration -> Claim (other against best)
    dropped: list  # configurations dropped at this look (significantly worse), in order


def race_look(values: dict, k: int, min_seeds: int, max_seeds: int,
              alpha: float = ALPHA, higher_is_better: bool = True) -> RaceLook:
    """One round of a race: `values` {configuration still in the race: {seed: metric}} on
    the round's seeds (dict order = grid order); `k` the race's initial configurations,
    `min_seeds`/`max_seeds` its rounds. The best mean is the round's best; another
    configuration is dropped when its exact sign-flip p against it (paired over at least
    MIN_SEEDS seeds, not a tie, worse on average) is <= race_levels(...)[n], n the
    round's seed count. The whole race then drops a configuration that is not worse with
    probability <= α (see race_levels). `Claim.p_adjusted` = p x race_pairs(k) x (α /
    α_look), comparable with α. A winner (one left) is declared only through such drops,
    so a wrong winner is a false drop: <= α too."""
    finite = {c: v for c, v in values.items() if any(_finite(x) for x in v.values())}
    if not finite:
        return RaceLook(None, 0.0, {}, [])
    n = max(len([x for x in v.values() if _finite(x)]) for v in finite.values())
    level = race_levels(k, min_seeds, max_seeds, alpha).get(n, 0.0)
    sign = 1.0 if higher_is_better else -1.0
    means = {c: float(np.mean([x for x in v.values() if _finite(x)])) for c, v in finite.items()}
    top = max(finite, key=lambda c: sign * means[c])
    claims, dropped = {}, []
    for c in finite:
        if c == top:
            continue
        probe = paired(finite[c], finite[top])
        p = probe.sign_flip_p
        adjusted = (min(1.0, p * alpha / level) if level > 0 and math.isfinite(p)
                    else (1.0 if math.isfinite(p) else math.nan))
        claim = _paired_claim(c, top, probe, level if level > 0 else -1.0, adjusted,
                              higher_is_better)
        claim = dataclasses.replace(claim, level=level, reachable=level > 0
                                    and min_attainable_p(probe.n) <= level)
        claims[c] = claim
        if claim.verdict == WORSE:
            dropped.append(c)
    return RaceLook(top, level, claims, dropped)


# ---- how many seeds -----------------------------------------------------------------------------

def t_power(n: int, effect: float, sd: float, level: float) -> float:
    """Power of the two-sided paired t-test at `level` on n seeds, for a true mean
    difference `effect` with per-seed SD `sd` (noncentral t, scipy.stats.nct)."""
    if n < 2:
        return 0.0
    if sd == 0:
        return 1.0 if effect != 0 else level
    df = n - 1
    crit = stats.t.ppf(1.0 - level / 2.0, df)
    nc = abs(effect) / sd * math.sqrt(n)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def sign_flip_power(n: int, effect: float, sd: float, level: float, draws: int = 2000,
                    seed: int = 0) -> float:
    """Power of the exact two-sided sign-flip test at `level` on n seeds whose differences
    are normal(effect, sd), by simulation (seeded; n <= EXACT_SIGN_FLIPS)."""
    if min_attainable_p(n) > level:
        return 0.0
    if sd == 0:
        return 1.0 if effect != 0 else 0.0
    rng = np.random.default_rng(seed)
    d = rng.normal(effect, sd, size=(draws, n))
    sums = d @ _sign_patterns(n).T  # (draws, 2^n)
    observed = np.abs(d.sum(axis=1))[:, None]
    p = np.mean(np.abs(sums) >= observed - 1e-12, axis=1)
    return float(np.mean(p <= level + 1e-12))


def seeds_needed(differences_or_sd, effect: float | None = None, alpha: float = ALPHA,
                 power: float = 0.8, max_seeds: int = 1000) -> float:
    """How many seeds would detect a mean paired difference `effect` (default: the
    observed mean of `differences_or_sd`) with `power` under the exact two-sided
    sign-flip test at `alpha` (pass the level the rule uses: `Best.level`, `Claim.level`,
    α / (configurations - 1) for the first Holm step of the test verdict).

    `differences_or_sd`: the study's per-seed paired differences (their SD, ddof=1, is the
    seed-to-seed spread) or that SD. The paired t-test's power (noncentral t) gives a
    first n; never fewer than the test can resolve (min_seeds_for(alpha)); up to 12 seeds
    the sign-flip test's own power is checked by a seeded simulation and n raised until it
    holds. math.inf when nothing can: an effect of 0 (identical runs: more seeds cannot
    help) or no finite SD; an SD of 0 with an effect needs just the floor."""
    if np.ndim(differences_or_sd) == 0:
        sd = float(differences_or_sd)
        observed = math.nan
    else:
        d = np.asarray([x for x in differences_or_sd if _finite(x)], dtype=float)
        sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
        observed = float(d.mean()) if len(d) else math.nan
    effect = observed if effect is None else float(effect)
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return math.inf
    floor = min_seeds_for(alpha)
    if sd == 0:
        return floor
    n = max(floor, 2)
    while n <= max_seeds and t_power(n, effect, sd, alpha) < power:
        n += 1
    if n > max_seeds:
        return math.inf
    n = max(n, floor)
    while n <= 12 and sign_flip_power(n, effect, sd, alpha) < power:
        n += 1
    return n


# ---- the bootstrap's replicates and Monte-Carlo rounding ---------------------------------------

def replicates_for(k: int, alpha: float = ALPHA, minimum: int = BOOTSTRAP_REPLICATES,
                   margin: float = 4.0) -> int:
    """Bootstrap replicates for `k` comparisons Holm-adjusted together: the smallest
    two-sided bootstrap p is 2 / (B + 1), and Holm's first step multiplies it by k, so B
    must have k x 2 / (B + 1) <= α / margin (room to resolve p-values below α, not just
    the floor): B >= 2 k margin / α - 1, rounded up to a multiple of 500, at least
    `minimum` (2000: 51 configurations at α = 0.05 get 8000)."""
    k = max(1, int(k))
    needed = math.ceil(2.0 * k * margin / alpha - 1.0)
    return max(int(minimum), int(math.ceil(needed / 500.0) * 500))


def quantile_mc_se(samples, quantiles, batches: int = 10) -> float:
    """Monte-Carlo SE of `quantiles` of `samples` (bootstrap replicates): the spread of
    the same quantiles over `batches` equal batches, / sqrt(batches); the larger one."""
    x = np.asarray(samples, dtype=float)
    size = len(x) // batches
    if size < 2:
        return math.nan
    parts = x[:size * batches].reshape(batches, size)
    per = np.quantile(parts, list(quantiles), axis=1)  # (quantiles, batches)
    return float(np.max(per.std(axis=1, ddof=1)) / math.sqrt(batches))


def decimals_for(se: float, most: int = 6, fewest: int = 0) -> int:
    """Decimals a figure with Monte-Carlo SE `se` supports: down to the SE's first
    significant digit (SE 0.003 -> 3 decimals, 0.012 -> 2); `most` for an SE of 0 or nan."""
    if not (se is not None and math.isfinite(se)) or se <= 0:
        return most
    return int(min(most, max(fewest, -math.floor(math.log10(se)))))


def rounded(value: float, se: float, signed: bool = False, most: int = 4) -> str:
    """`value` printed to the decimals its Monte-Carlo SE supports (decimals_for), at most
    `most`; "–" for no value."""
    if value is None or not math.isfinite(value):
        return "–"
    digits = decimals_for(se, most=most)
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def mc_se(rate: float, reps: int) -> float:
    """Monte-Carlo SE of a rate estimated from `reps` independent replicates."""
    return math.sqrt(max(rate * (1.0 - rate), 0.0) / reps) if reps else math.nan
