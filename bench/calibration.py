"""Calibration of the study's claims (issue 31): how often each rule claims something
under a null where every configuration is equal (its false-positive rate, with its
Monte-Carlo SE), and how often it finds a known effect (its power).

The rules are the very functions the report and the race call (research/stats.py):
- "best": stats.best on the per-seed validation accuracy (★: better than every other);
- "test verdict": stats.test_verdicts against the baseline on the per-seed test accuracy,
  with the two-level bootstrap (stats.paired_bootstrap, stats.replicates_for replicates)
  on the per-example test outcomes;
- "race drop": the race's rounds (min_seeds 3, then one seed per round up to the cell's
  seeds), race.drops (stats.race_look) after each round; a false positive is any drop in the run;
- "race winner": the race ends with one configuration left.

Synthetic grid (numpy only, no TensorFlow): a run's answer on example i is right when
    z_i + u_s + v_(c,s) + delta_c + e_(s,i) + h_(c,s,i) > 0
z ~ N(1.5, 1.5) the example's ease (accuracy about 0.8), u ~ N(0, 0.3) the seed's, v ~ N(0,
shift) the per-run logit shift (the seed-to-seed spread of a configuration: 0, 0.5, 1.0),
e ~ N(0, 1) shared by the seed's runs (same data order, same initial weights), h ~ N(0, 0.3)
the run's own example-level noise (a handful of photos differ between two same-seed runs:
ties and one-photo coincidences happen). 200 validation and 300 test examples, drawn anew
per replicate. Null: delta = 0 for all; power: the last configuration delta = +1.0 logit
(about +9 accuracy points) — ★ and the race's winner must be it, the test verdict must call
it better, the race must drop one of the others.

`--study DIR`: nulls built from a real study's outputs: for every configuration with enough
finished trials, its seeds split at random into k disjoint groups of n (group g plays
configuration g, paired by position): copies of one configuration, so any claim is false.
Validation accuracy from each trial's log.csv (the scored epoch), test outcomes from
evaluate/predictions.npz.

    python bench/calibration.py --quick --json FILE       # under 10 minutes on 2 cores
    python bench/calibration.py [--reps 2000] [--study DIR]

The table goes to stdout, progress to stderr.
"""
from __future__ import annotations

import os

# One BLAS thread: the bootstrap's small matrix products are 60x slower with threads
# competing for 2 busy cores (the replicates run one after the other anyway).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from tapefit.research import race, stats  # noqa: E402

RULES = ("best", "test verdict", "race drop", "race winner")
MIN_SEEDS = 3
EFFECT = 1.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer replicates (1000 per cell "
                   "under the null, 300 for the power)")
    p.add_argument("--reps", type=int, default=0, help="replicates per cell under the null "
                   "(default 1000 with --quick, else 4000)")
    p.add_argument("--power_reps", type=int, default=0, help="replicates per cell for the "
                   "power (default: reps / 3)")
    p.add_argument("--alpha", type=float, default=stats.ALPHA)
    p.add_argument("--shifts", default="0,0.5,1.0")
    p.add_argument("--configs", default="2,4,6")
    p.add_argument("--seeds", default="3,5,8")
    p.add_argument("--val_examples", type=int, default=200)
    p.add_argument("--test_examples", type=int, default=300)
    p.add_argument("--study", default="", help="a study folder: nulls from its trials too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="", help="write the rows here")
    return p.parse_args(argv)


# ---- the rules, as the report and the race apply them ------------------------------------------

def rule_best(val, alpha, truth=None):
    """val: (k, n) per-seed validation accuracy. True when ★ is claimed (for the power: ★
    on `truth`)."""
    values = {c: dict(enumerate(val[c])) for c in range(val.shape[0])}
    b = stats.best(values, True, alpha)
    return b.star and (truth is None or b.top == truth)


def rule_test(test_acc, test_correct, alpha, truth=None):
    """test_acc: (k, n); test_correct: (k, n, examples) or None. Baseline: configuration 0.
    True when any (power: `truth` called better) claim is made."""
    k, n = test_acc.shape
    values = {c: dict(enumerate(test_acc[c])) for c in range(k)}
    replicates = stats.replicates_for(k - 1, alpha)

    def boot(c):
        if test_correct is None:
            return None
        return stats.paired_bootstrap(dict(enumerate(test_correct[c])),
                                      dict(enumerate(test_correct[0])), replicates=replicates)

    claims = stats.test_verdicts(values, 0, True, alpha,
                                 bootstrap=boot if test_correct is not None else None)
    if truth is None:
        return any(c.verdict in (stats.BETTER, stats.WORSE) for c in claims.values())
    return claims[truth].verdict == stats.BETTER


def run_race(val, alpha, min_seeds=MIN_SEEDS):
    """The race's rounds on val (k, max_seeds): returns (dropped configurations, alive)."""
    k, max_seeds = val.shape
    alive = list(range(k))
    dropped = []
    for count in range(min(min_seeds, max_seeds), max_seeds + 1):
        # The race's own decision function (research/race.py: drops, stats.race_look).
        look, decided = race.drops({c: {s: val[c, s] for s in range(count)} for c in alive},
                                   k, min_seeds, max_seeds, alpha, True)
        for c in decided:
            alive.remove(c)
            dropped.append(c)
        if len(alive) <= 1:
            break
    return dropped, alive


# ---- the synthetic grid --------------------------------------------------------------------------

def simulate(rng, k, n, shift, delta, n_val, n_test):
    """Per-run outcomes: (val accuracy (k, n), test accuracy (k, n), test correct (k, n, m))."""
    out = []
    for m in (n_val, n_test):
        z = rng.normal(1.5, 1.5, size=m)
        e = rng.normal(0.0, 1.0, size=(n, m))
        u = rng.normal(0.0, 0.3, size=n)
        v = rng.normal(0.0, shift, size=(k, n)) if shift > 0 else np.zeros((k, n))
        h = rng.normal(0.0, 0.3, size=(k, n, m))
        latent = (z[None, None, :] + u[None, :, None] + v[:, :, None] + delta[:, None, None]
                  + e[None, :, :] + h)
        out.append((latent > 0).astype(float))
    val, test = out
    return val.mean(axis=2), test.mean(axis=2), test


def synthetic_cell(rng, k, n, shift, reps, alpha, n_val, n_test, power_reps=None):
    counts = {(r, h): 0 for r in RULES for h in ("null", "power")}
    for hypothesis in ("null", "power"):
        runs = reps if hypothesis == "null" else (power_reps or reps)
        delta = np.zeros(k)
        truth = None
        if hypothesis == "power":
            delta[-1] = EFFECT
            truth = k - 1
        for _ in range(runs):
            val, test_acc, test_correct = simulate(rng, k, n, shift, delta, n_val, n_test)
            counts["best", hypothesis] += rule_best(val, alpha, truth)
            counts["test verdict", hypothesis] += rule_test(test_acc, test_correct, alpha,
                                                            truth)
            dropped, alive = run_race(val, alpha)
            if truth is None:
                counts["race drop", hypothesis] += bool(dropped)
                counts["race winner", hypothesis] += len(alive) == 1
            else:
                counts["race drop", hypothesis] += any(c != truth for c in dropped)
                counts["race winner", hypothesis] += alive == [truth]
    return counts


# ---- nulls from a real study -------------------------------------------------------------------

def study_trials(study_dir):
    """{configuration (trial.json's group_id): {seed: (val_accuracy, (ids, correct) | None)}}
    of the study's finished trials (val_accuracy: the last trained phase's at the scored
    epoch, read as the report reads it)."""
    from tapefit.research import report, runner
    out = {}
    root = os.path.join(study_dir, "trials")
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        try:
            with open(os.path.join(folder, "trial.json")) as f:
                meta = json.load(f)
            phases, group, seed = list(meta["phases"]), str(meta["group_id"]), int(meta["seed"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        row = report.trial_metrics(folder, phases)
        if row["status"] != runner.FINISHED or not math.isfinite(row["val_accuracy"]):
            continue
        pred = report.read_predictions(row["_predictions"])
        correct = None
        if pred and "problem" not in pred:
            order = np.argsort(pred["ids"])
            correct = (pred["ids"][order], pred["correct"][order])
        out.setdefault(group, {})[seed] = (row["val_accuracy"], correct)
    return out


def study_cells(study_dir, reps, alpha, rng):
    """Disjoint seed splits of each configuration with at least k n seeds."""
    rows = []
    trials = study_trials(study_dir)
    for (k, n) in itertools.product((2, 3, 4), (3, 4, 5, 6, 8)):
        usable = {g: t for g, t in trials.items() if len(t) >= k * n}
        if not usable:
            continue
        counts = {r: 0 for r in RULES}
        done = 0
        for i in range(reps):
            group = sorted(usable)[i % len(usable)]
            seeds = rng.permutation(sorted(usable[group]))[:k * n].reshape(k, n)
            val = np.asarray([[usable[group][s][0] for s in row] for row in seeds])
            preds = [[usable[group][s][1] for s in row] for row in seeds]
            correct = None
            if all(p is not None for row in preds for p in row):
                ids = preds[0][0][0]
                if all(np.array_equal(p[0], ids) for row in preds for p in row):
                    correct = np.asarray([[p[1] for p in row] for row in preds])
            test_acc = (correct.mean(axis=2) if correct is not None else val)
            counts["best"] += rule_best(val, alpha)
            counts["test verdict"] += rule_test(test_acc, correct, alpha)
            dropped, alive = run_race(val, alpha)
            counts["race drop"] += bool(dropped)
            counts["race winner"] += len(alive) == 1
            done += 1
        cell = f"study {os.path.basename(os.path.normpath(study_dir))}: k={k}, seeds={n}, " \
               f"{len(usable)} configuration(s) split"
        for r in RULES:
            rate = counts[r] / done
            rows.append({"rule": r, "cell": cell, "false_positive_rate": rate,
                         "mc_se": stats.mc_se(rate, done), "alpha": alpha,
                         "power": None, "reps": done})
    return rows


# ---- output --------------------------------------------------------------------------------------

def table(rows) -> str:
    lines = ["| rule | cell | false positives | MC SE | ≤ α + 3 SE | power |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ok = r["false_positive_rate"] <= r["alpha"] + 3 * r["mc_se"]
        power = "–" if r["power"] is None else f"{r['power']:.3f}"
        lines.append(f"| {r['rule']} | {r['cell']} | {r['false_positive_rate']:.4f} | "
                     f"{r['mc_se']:.4f} | {'yes' if ok else '**no**'} | {power} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    reps = args.reps or (1000 if args.quick else 4000)
    power_reps = args.power_reps or max(100, reps // 3)
    rng = np.random.default_rng(args.seed)
    shifts = [float(x) for x in args.shifts.split(",")]
    configs = [int(x) for x in args.configs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    rows = []
    start = time.time()
    for shift, k, n in itertools.product(shifts, configs, seeds):
        t0 = time.time()
        counts = synthetic_cell(rng, k, n, shift, reps, args.alpha, args.val_examples,
                                args.test_examples, power_reps)
        cell = f"shift {shift:g}, k={k}, seeds={n}"
        for r in RULES:
            rate = counts[r, "null"] / reps
            rows.append({"rule": r, "cell": cell, "false_positive_rate": rate,
                         "mc_se": stats.mc_se(rate, reps), "alpha": args.alpha,
                         "power": counts[r, "power"] / power_reps, "reps": reps,
                         "power_reps": power_reps})
        print(f"{cell}: {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    if args.study:
        rows += study_cells(args.study, reps, args.alpha, rng)
    elapsed = time.time() - start
    bad = [r for r in rows if r["false_positive_rate"] > r["alpha"] + 3 * r["mc_se"]]
    print(table(rows))
    print(f"\n{len(rows)} rows; {reps} replicates per cell under the null, {power_reps} for "
          f"the power (effect +{EFFECT:g} logit on the last configuration); α = {args.alpha}; "
          f"{len(bad)} above α + 3 MC SE; {elapsed:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
