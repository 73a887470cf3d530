"""research/stats.py against hand-computed cases (issue 22): a tie, n = 2, a known large
effect, a known null on identical runs, Holm on a known p-vector, and the two-level
paired bootstrap recomputed by plain loops. Pure Python + numpy/scipy, no TensorFlow."""
import math

import numpy as np
import pytest

from tapefit.research import stats


def test_a_tie_is_a_tie_not_a_winner():
    runs = {0: 0.8125, 1: 0.75, 2: 0.875}
    result = stats.paired(runs, dict(runs))
    assert result.n == 3 and result.mean == 0.0 and result.tie
    assert result.p_value == 1.0  # Nothing against "no difference".
    assert stats.verdict(result) == stats.TIE
    assert stats.verdict(result, higher_is_better=False) == stats.TIE


def test_two_seeds_are_not_enough_to_tell():
    # d = 0.1, 0.2: mean 0.15, sd = 0.1/sqrt(2), se = 0.05, t = 3 on 1 degree of freedom.
    result = stats.paired({0: 0.8, 1: 0.9}, {0: 0.7, 1: 0.7})
    t_975_df1 = math.tan(math.pi * (0.975 - 0.5))  # Cauchy quantile: 12.7062...
    assert result.n == 2 and result.mean == pytest.approx(0.15)
    assert (result.low, result.high) == pytest.approx((0.15 - t_975_df1 * 0.05,
                                                       0.15 + t_975_df1 * 0.05))
    assert result.p_value == pytest.approx(1 - 2 * math.atan(3) / math.pi)  # 0.2048
    assert stats.verdict(result) == stats.TOO_FEW
    # Even a p-value below alpha does not decide on two seeds.
    assert stats.verdict(result, alpha=0.5) == stats.TOO_FEW


def test_a_known_large_effect():
    d = [0.30, 0.31, 0.29, 0.32, 0.28]
    baseline = {s: 0.5 + 0.01 * s for s in range(5)}
    values = {s: baseline[s] + d[s] for s in range(5)}
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))  # 0.30 / (0.0158/2.236) = 42.4
    result = stats.paired(values, baseline)
    assert result.mean == pytest.approx(0.30)
    assert result.differences == pytest.approx(tuple(d))
    # Student t, 4 degrees of freedom: two-sided p = I_x(2, 1/2), x = 4 / (4 + t^2),
    # whose closed form is 1 - sqrt(1 - x) (1 + x / 2).
    x = 4 / (4 + t * t)
    p = 1 - (1 - x) ** 0.5 * (1 + x / 2)
    assert result.p_value == pytest.approx(p, rel=1e-6)
    assert result.p_value < 1e-5
    assert stats.verdict(result) == stats.BETTER
    # The same numbers as a loss (lower is better): worse.
    assert stats.verdict(result, higher_is_better=False) == stats.WORSE
    # Constant non-zero differences: t is infinite, p = 0.
    assert stats.paired({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.8, 1: 0.7, 2: 0.6}).p_value < 1e-12


def test_a_known_null_on_identical_runs():
    rng = np.random.default_rng(3)
    correct = {s: (rng.random(50) < 0.8).astype(float) for s in range(4)}
    same = {s: v.copy() for s, v in correct.items()}
    boot = stats.paired_bootstrap(correct, same, replicates=300)
    assert (boot.mean, boot.low, boot.high) == (0.0, 0.0, 0.0)
    assert boot.p_improvement == 0.5 and boot.p_value == 1.0
    per_seed = stats.paired({s: v.mean() for s, v in correct.items()},
                            {s: v.mean() for s, v in same.items()})
    assert per_seed.tie and stats.verdict(per_seed) == stats.TIE


def test_holm_on_a_known_vector():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (monotone).
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # Capped at 1.
    adjusted = stats.holm([0.2, math.nan, 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.02)  # nan does not count in m.
    assert stats.holm([]) == []
    # A Holm-adjusted p-value decides the verdict when given.
    large = stats.paired({s: 0.9 + 0.01 * s for s in range(3)},
                         {s: 0.88 + 0.011 * s for s in range(3)})
    assert stats.verdict(large, p_value=0.5) == stats.NO_DIFFERENCE


def test_bootstrap_against_a_hand_recomputation():
    a = {0: [1, 1, 0, 1, 0], 1: [1, 0, 0, 1, 1], 2: [1, 1, 1, 1, 0]}
    b = {0: [1, 0, 0, 1, 0], 1: [0, 0, 1, 1, 1], 2: [1, 0, 1, 0, 0]}
    result = stats.paired_bootstrap(a, b, replicates=200, seed=7)
    # The same draws, by plain loops: seeds first, then one draw of the test examples
    # for every seed and both configurations.
    rng = np.random.default_rng(7)
    seed_draws = rng.integers(0, 3, size=(200, 3))
    example_draws = rng.integers(0, 5, size=(200, 5))
    means, wins = [], []
    for r in range(200):
        per_seed = []
        for s in seed_draws[r]:
            total = 0.0
            for i in example_draws[r]:
                total += a[int(s)][int(i)] - b[int(s)][int(i)]
            per_seed.append(total / 5)
        means.append(sum(per_seed) / 3)
        wins.append(sum(1.0 if x > 0 else 0.5 if x == 0 else 0.0 for x in per_seed) / 3)
    means.sort()
    assert result.seeds == 3 and result.examples == 5 and result.replicates == 200
    assert result.mean == pytest.approx((sum(map(sum, a.values())) - sum(map(sum, b.values())))
                                        / 15)
    assert result.low == pytest.approx(np.quantile(means, 0.025))
    assert result.high == pytest.approx(np.quantile(means, 0.975))
    assert result.p_improvement == pytest.approx(sum(wins) / 200)
    side = min(sum(m <= 0 for m in means), sum(m >= 0 for m in means))
    assert result.p_value == pytest.approx(min(1.0, 2 * (side + 1) / 201))
    # Seeded: the same numbers again.
    assert stats.paired_bootstrap(a, b, replicates=200, seed=7) == result


def test_bootstrap_counts_the_test_set_noise():
    """One seed, many examples: the seed-only t interval does not exist, the bootstrap's
    interval is the test set's sampling error (about ±2 sd/sqrt(n))."""
    rng = np.random.default_rng(0)
    a = {0: (rng.random(400) < 0.9).astype(float)}
    b = {0: (rng.random(400) < 0.8).astype(float)}
    boot = stats.paired_bootstrap(a, b, replicates=1000)
    d = a[0] - b[0]
    half = 1.96 * d.std(ddof=1) / math.sqrt(400)
    assert boot.high - boot.low == pytest.approx(2 * half, rel=0.2)
    assert boot.low > 0 and boot.p_improvement > 0.99
    assert math.isnan(stats.paired({0: a[0].mean()}, {0: b[0].mean()}).low)
