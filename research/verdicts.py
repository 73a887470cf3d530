"""Deciding the report's verdicts: one entry per configuration (`summarize`), the
selection on validation (★ best, stats.best) and the comparison with the baseline on test
(stats.test_verdicts: exact sign-flip over seeds, Holm, and the two-level bootstrap
agreeing), with the numbers the words rest on (identical predictions, seeds needed)."""
from __future__ import annotations

import math
import os

import numpy as np

from tapefit.layout import paths
from tapefit.research import grid, stats, trial_files
from tapefit.research.collect import read_predictions

# --select_by: {metric: higher is better}.
SELECT_BY = {"val_accuracy": True, "val_loss": False}
DEFAULT_SELECT_BY = "val_accuracy"
NAMES = {"val_accuracy": "validation accuracy", "val_loss": "validation loss",
         "test_accuracy": "test accuracy", "test_loss": "test loss"}

# ---- per configuration ------------------------------------------------------------------------

def report_metric(study: grid.Study, select_by: str = DEFAULT_SELECT_BY) -> tuple[str, str]:
    """What is reported against the baseline: test accuracy when the study evaluates, else
    the selection metric (then the same data chose and reports: the report says so)."""
    if "evaluate" in study.phases:
        return "test_accuracy", NAMES["test_accuracy"]
    return select_by, NAMES[select_by]


def primary_metric(study: grid.Study) -> tuple[str, str]:  # Kept for callers.
    return report_metric(study)


def label(assignment, study: grid.Study | None = None) -> str:
    """`name=value, ...` of the axes with more than one value (one-value axes are constants)."""
    varying = None if study is None else {n for a in study.axes if len(a.values) > 1
                                          for n in a.names}
    varying = varying or None  # No axis varies: name them all.
    return ", ".join(f"{n}={grid.format_value(v)}" for n, v in assignment
                     if varying is None or n in varying) or "(base flags)"


def summarize(study: grid.Study, rows: list[dict], select_by: str = DEFAULT_SELECT_BY,
              alpha: float = stats.ALPHA) -> list[dict]:
    """One entry per configuration, grid order: stats of the finished trials' metrics, the
    paired comparison with the best on `select_by` and with the baseline."""
    higher = SELECT_BY[select_by]
    metric, _ = report_metric(study, select_by)
    configs = grid.configurations(study)
    base_key = grid.baseline_assignment(study)
    by_config = {i: {} for i in range(len(configs))}
    groups = {}
    for row, index in rows:
        groups.setdefault(index, row["group_id"])
        if row["status"] == trial_files.FINISHED:
            by_config[index][row["seed"]] = row
    base_index = configs.index(base_key)
    out = []
    for index, assignment in enumerate(configs):
        done = by_config[index]
        entry = {"index": index, "number": index + 1, "label": label(assignment, study),
                 "group_id": groups.get(index, ""), "baseline": index == base_index,
                 "seeds": sorted(done), "curves": [r["_curve"] for r in done.values()]}
        for name in dict.fromkeys((select_by, "val_accuracy", "val_loss", metric,
                                   "test_accuracy", "test_loss")):
            entry[f"{name}_values"] = {s: r[name] for s, r in done.items()}
            entry[name] = stats.summarize(list(entry[f"{name}_values"].values()))
        out.append(entry)
    base = out[base_index]
    _select(out, select_by, higher, alpha)
    _against_baseline(out, base, metric, by_config, alpha)
    return out


def _select(entries, select_by, higher, alpha):
    """The best mean on the selection metric, and the paired comparison of every other
    configuration with it (Holm over those comparisons)."""
    ranked = sorted((e for e in entries if e[select_by].n),
                    key=lambda e: -e[select_by].mean if higher else e[select_by].mean)
    top = ranked[0] if ranked else None
    others = [e for e in entries if e is not top and e[select_by].n]
    for e in entries:
        e["top"] = e is top
        e["select"] = None
    if top is None:
        return
    comparisons = [stats.paired(e[f"{select_by}_values"], top[f"{select_by}_values"])
                   for e in others]
    adjusted = stats.holm([c.p_value for c in comparisons])
    for e, c, p in zip(others, comparisons, adjusted):
        # verdict of the other configuration against the top one: worse, tie, ...
        e["select"] = {"paired": c, "p_holm": p,
                       "verdict": stats.verdict(c, alpha, higher, p_value=p)}
    top["best"] = bool(others) and all(e["select"]["verdict"] == stats.WORSE for e in others)
    for e in entries:
        e.setdefault("best", False)


def _against_baseline(entries, base, metric, by_config, alpha):
    """Paired comparison with the baseline on the reported metric: seed-only t (Holm over
    the configurations compared), and the two-level bootstrap on the test examples."""
    higher = metric != "val_loss" and metric != "test_loss"
    others = [e for e in entries if not e["baseline"]]
    for e in entries:
        e["vs_base"] = None
    comparisons = [stats.paired(e[f"{metric}_values"], base[f"{metric}_values"])
                   for e in others]
    t_holm = stats.holm([c.p_value for c in comparisons])
    boots = [_bootstrap(by_config[e["index"]], by_config[base["index"]])
             if metric == "test_accuracy" else None for e in others]
    boot_p = [b["accuracy"].p_value if b and b.get("accuracy") else math.nan for b in boots]
    boot_holm = stats.holm(boot_p)
    for e, c, p, b, bp in zip(others, comparisons, t_holm, boots, boot_holm):
        vs = {"paired": c, "p_holm": p, "bootstrap": b, "bootstrap_p_holm": bp,
              "verdict": stats.verdict(c, alpha, higher, p_value=p)}
        if b and b.get("accuracy"):
            vs["verdict"] = _bootstrap_verdict(c, b["accuracy"], bp, p, alpha)
        val = stats.paired(e["val_loss_values"], base["val_loss_values"])
        vs["val_loss"] = val
        e["vs_base"] = vs
    for name, count in (("holm_t", sum(math.isfinite(c.p_value) for c in comparisons)),
                        ("holm_boot", sum(math.isfinite(p) for p in boot_p))):
        for e in entries:
            e[name] = count


def _bootstrap(rows_a: dict, rows_b: dict) -> dict | None:
    """The two-level paired bootstrap of A - B on the test examples both configurations'
    paired seeds scored (matched by example id). None when a trial has no readable
    predictions.npz; {"problem": why} when the examples cannot be matched."""
    seeds = sorted(s for s in rows_a if s in rows_b)
    if not seeds:
        return None
    loaded = {}
    for side, rows in (("a", rows_a), ("b", rows_b)):
        for s in seeds:
            p = read_predictions(rows[s]["_predictions"])
            if p is None:
                return None
            if "problem" in p:
                where = os.path.join(rows[s]["trial_id"], paths.EVALUATE_PHASE,
                                     paths.PREDICTIONS_NPZ)
                return {"problem": f"{where}: {p['problem']}"}
            loaded[side, s] = p
    first = next(iter(loaded.values()))
    if any(p["split"] != first["split"] for p in loaded.values()):
        return {"problem": "the trials' test splits differ (data flags)"}
    common = None
    for p in loaded.values():
        common = set(p["ids"].tolist()) if common is None else common & set(p["ids"].tolist())
    order = sorted(common, key=lambda x: (len(x), x))
    if not order:
        return {"problem": "the trials' predictions share no test example"}
    from tapefit.research import flips
    rows = {"a": rows_a, "b": rows_b}
    problem = flips.unpaired(
        [(os.path.join(rows[side][s]["trial_id"], paths.EVALUATE_PHASE, paths.PREDICTIONS_NPZ),
          p["ids"]) for (side, s), p in loaded.items()], len(order))
    if problem:
        return {"problem": problem}
    aligned, reference = {}, {}
    for key, p in loaded.items():
        where = {x: i for i, x in enumerate(p["ids"].tolist())}
        index = np.asarray([where[x] for x in order])
        labels, digests = p["labels"][index], p["digests"][index]
        if "labels" not in reference:
            reference["labels"] = labels
        elif not np.array_equal(reference["labels"], labels):
            return {"problem": "the same test example has different labels in two trials"}
        if p["image_size"] not in reference:
            reference[p["image_size"]] = digests
        elif not np.array_equal(reference[p["image_size"]], digests):
            return {"problem": "the trials scored different images (the data changed "
                               "between them)"}
        aligned[key] = (p["correct"][index], p["loss"][index])
    out = {"examples": len(order)}
    for name, column in (("accuracy", 0), ("loss", 1)):
        a = {s: aligned["a", s][column] for s in seeds}
        b = {s: aligned["b", s][column] for s in seeds}
        out[name] = stats.paired_bootstrap(a, b)
    return out


def _bootstrap_verdict(c: stats.Paired, boot: stats.Bootstrap, p_holm: float, t_holm: float,
                       alpha) -> str:
    """Better or worse only when the bootstrap (test-set and seed noise) and the seed-only
    t-test (each Holm-adjusted) both say so, in the same direction: with a handful of
    seeds the bootstrap's seed level underestimates the seed-to-seed spread (3 seeds
    whose differences share a sign put every replicate on that side), which the t
    distribution accounts for."""
    if c.n and c.tie:
        return stats.TIE
    if c.n < stats.MIN_SEEDS:
        return stats.TOO_FEW
    if not (math.isfinite(p_holm) and math.isfinite(t_holm)) or max(p_holm, t_holm) >= alpha:
        return stats.NO_DIFFERENCE
    if boot.mean == 0 or (boot.mean > 0) != (c.mean > 0):
        return stats.NO_DIFFERENCE
    return stats.BETTER if boot.mean > 0 else stats.WORSE
