"""The calibrated rules of research/stats.py (issue 31): the exact sign-flip test and its
floor, the ★ and test-verdict rules, the race's whole-run error control, seeds_needed,
replicates_for and Monte-Carlo rounding. numpy/scipy only, a few seconds in all."""
import itertools
import math

import numpy as np
import pytest

from tapefit.research import stats

ONE_PHOTO = 1 / 150


def test_sign_flip_p_is_the_share_of_sign_patterns():
    d = [0.02, -0.01, 0.03, 0.005, 0.04]
    observed = abs(sum(d))
    patterns = list(itertools.product((1, -1), repeat=len(d)))
    extreme = sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-12
                  for signs in patterns)
    assert stats.sign_flip_p(d) == pytest.approx(extreme / 32)
    assert stats.sign_flip_p(d, "greater") == pytest.approx(
        sum(sum(s * x for s, x in zip(signs, d)) >= sum(d) - 1e-12 for signs in patterns) / 32)
    assert stats.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(stats.sign_flip_p([]))
    # Beyond the exact range: Monte-Carlo, seeded, never 0.
    p = stats.sign_flip_p([0.01] * 20)
    assert 0 < p <= 2 / 1000 and p == stats.sign_flip_p([0.01] * 20)


def test_min_attainable_p():
    assert stats.min_attainable_p(3) == 0.25
    assert stats.min_attainable_p(5) == 0.0625
    assert stats.min_attainable_p(6) == 0.03125
    assert stats.min_attainable_p(3, "greater") == 0.125
    assert stats.min_seeds_for(0.05) == 6 and stats.min_seeds_for(0.01) == 8
    assert "with 3 seeds no exact test can reach 0.05" in stats.unreachable_note(3, 0.05)


def test_the_degenerate_triple_is_no_claim():
    """Equal one-photo differences over 3 seeds: the t statistic is infinite (p = 0), the
    sign-flip p is 0.25; no ★, no race drop, no winner, no test verdict."""
    base = {2: 0.80, 6: 0.78, 7: 0.82}
    other = {s: v - ONE_PHOTO for s, v in base.items()}
    c = stats.paired(other, base)
    assert c.degenerate and c.p_value == 0.0  # The old statistic, kept for its callers.
    assert c.sign_flip_p == pytest.approx(0.25)
    b = stats.best({"jit=false": base, "jit=true": other})
    assert b.top == "jit=false" and not b.star
    assert b.claims["jit=true"].verdict == stats.NO_DIFFERENCE
    assert not b.claims["jit=true"].reachable
    look = stats.race_look({"jit=false": base, "jit=true": other}, k=2, min_seeds=3,
                           max_seeds=3)
    assert look.dropped == [] and look.level == 0.0  # Nothing could reach α: no winner.
    for max_seeds in (5, 8, 10):
        look = stats.race_look({"a": base, "b": other}, 2, 3, max_seeds)
        assert look.dropped == []
    verdicts = stats.test_verdicts({"base": base, "other": other}, "base")
    assert verdicts["other"].verdict == stats.NO_DIFFERENCE
    # Equal accuracy on every seed: a tie, whatever the runs were.
    assert stats.best({"a": base, "b": dict(base)}).claims["b"].verdict == stats.TIE


def test_best_and_verdict_on_a_clear_effect():
    rng = np.random.default_rng(0)
    base = {s: 0.8 + rng.normal(0, 0.01) for s in range(8)}
    better = {s: v + 0.05 + rng.normal(0, 0.005) for s, v in base.items()}
    b = stats.best({"base": base, "better": better, "same": dict(base)})
    # 3 configurations: level 2 α / 3; 8 agreeing seeds give 2/256.
    assert b.top == "better" and b.level == pytest.approx(2 * 0.05 / 3)
    assert b.claims["same"].verdict == stats.WORSE and b.star
    assert b.claims["base"].p == pytest.approx(2 / 256)
    assert b.claims["base"].p_adjusted == pytest.approx(min(1, 2 / 256 * 3 / 2))
    v = stats.test_verdicts({"base": base, "better": better, "same": dict(base)}, "base")
    assert v["better"].verdict == stats.BETTER and v["same"].verdict == stats.TIE
    # The bootstrap must agree: one that does not see the effect removes the claim.
    null_boot = stats.Bootstrap(8, 100, 0.0, -0.01, 0.01, 0.5, 2000, 1.0)
    v = stats.test_verdicts({"base": base, "better": better}, "base",
                            bootstrap={"better": null_boot})
    assert v["better"].verdict == stats.NO_DIFFERENCE
    # Five seeds: no exact test reaches α, whatever the effect.
    five = stats.best({"base": {s: base[s] for s in range(5)},
                       "better": {s: better[s] for s in range(5)}})
    assert not five.star and not five.claims["base"].reachable


def test_race_levels_spend_at_most_alpha():
    for k, lo, hi in [(2, 3, 8), (2, 3, 10), (3, 3, 12), (4, 3, 10), (6, 3, 12), (2, 2, 20)]:
        levels = stats.race_levels(k, lo, hi)
        assert set(levels) == set(range(lo, hi + 1))
        assert sum(levels.values()) * stats.race_pairs(k) <= 0.05 + 1e-12
        for n, level in levels.items():  # Spent only where the test can reach it.
            assert level == 0 or stats.min_attainable_p(n) <= level
    assert stats.race_levels(2, 3, 8)[5] == 0.0  # Fewer than 6 seeds: never.
    assert any(stats.race_levels(2, 3, 8).values())


def _race(values, k, lo, hi):
    alive = list(range(k))
    dropped = []
    for count in range(lo, hi + 1):
        look = stats.race_look({c: {s: values[c][s] for s in range(count)} for c in alive},
                               k, lo, hi)
        for c in look.dropped:
            alive.remove(c)
            dropped.append(c)
        if len(alive) <= 1:
            break
    return dropped, alive


def test_the_race_controls_its_whole_run():
    """A seeded simulation: 3 equal configurations, seeds 3..10, accuracy on 150 photos
    (discrete: ties, one-photo coincidences). The chance of ever dropping one is <= α +
    3 MC SE; with a real effect the race does drop (the rule is not silent)."""
    rng = np.random.default_rng(31)
    k, lo, hi, reps = 3, 3, 10, 400

    def draw(shift):
        seed_level = rng.normal(0, 0.3, size=hi)
        logits = 1.4 + seed_level[None, :] + rng.normal(0, 0.4, size=(k, hi))
        logits[0] += shift
        return rng.binomial(150, 1 / (1 + np.exp(-logits))) / 150

    false = sum(bool(_race(draw(0.0), k, lo, hi)[0]) for _ in range(reps))
    rate = false / reps
    assert rate <= 0.05 + 3 * stats.mc_se(max(rate, 0.05), reps)
    found = sum(bool(_race(draw(1.5), k, lo, hi)[0]) for _ in range(50))
    assert found >= 15


def test_seeds_needed_against_the_t_power():
    # One-sample/paired t, two-sided α = 0.05, effect size 0.5: 34 seeds give 0.808
    # (Cohen's tables, G*Power); 33 fall short of 0.8.
    assert stats.t_power(34, 0.5, 1.0, 0.05) == pytest.approx(0.8078, abs=2e-3)
    assert stats.t_power(33, 0.5, 1.0, 0.05) < 0.8
    assert stats.seeds_needed(1.0, effect=0.5) == 34
    # Effect size 1: 10 seeds give 0.803 under the t; the sign-flip test, discrete, needs
    # its own check (never fewer).
    assert stats.t_power(10, 1.0, 1.0, 0.05) == pytest.approx(0.8031, abs=2e-3)
    n = stats.seeds_needed(1.0, effect=1.0)
    assert n >= 10 and stats.sign_flip_power(n, 1.0, 1.0, 0.05) >= 0.8
    # A huge effect still needs the test's floor (6 seeds at 0.05).
    assert stats.seeds_needed(0.01, effect=1.0) == 6
    assert stats.seeds_needed([0.01, 0.01, 0.01]) == 6  # SD 0: the floor.
    assert stats.seeds_needed([0.0, 0.0, 0.0]) == math.inf  # Identical: never.
    d = [0.01, 0.03, -0.005, 0.02]
    assert stats.seeds_needed(d) == stats.seeds_needed(np.std(d, ddof=1),
                                                       effect=float(np.mean(d)))


def test_replicates_for_lets_holm_reach_alpha():
    assert stats.replicates_for(1) == 2000
    for k in (1, 5, 50, 51, 200):
        b = stats.replicates_for(k)
        assert b >= 2000 and k * 2 / (b + 1) <= 0.05 / 4
    assert stats.replicates_for(51) > 2000


def test_rounding_to_the_monte_carlo_error():
    assert stats.decimals_for(0.003) == 3 and stats.decimals_for(0.012) == 2
    assert stats.rounded(0.012345, 0.003) == "0.012"
    assert stats.rounded(0.012345, 0.0004, signed=True) == "+0.0123"
    assert stats.rounded(math.nan, 0.1) == "–"
    rng = np.random.default_rng(0)
    a = {s: (rng.random(200) < 0.8).astype(float) for s in range(4)}
    b = {s: (rng.random(200) < 0.8).astype(float) for s in range(4)}
    boot = stats.paired_bootstrap(a, b)
    assert 0 < boot.mc_se < 0.01 and 0 <= boot.p_mc_se < 0.02
