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
from tapefit.research.options import DEFAULT_SELECT_BY, SELECT_BY  # noqa: F401  (re-exported)

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
    with _one_blas_thread():
        _select(out, select_by, higher, alpha, by_config)
        _against_baseline(out, base, metric, by_config, alpha)
        top = next((e for e in out if e["top"]), None)
        if top is not None:
            top["runner_up"] = _runner_up(out, select_by, higher, by_config, metric)
    return out


def _one_blas_thread():
    """The bootstrap's matrix products on one BLAS thread (threadpoolctl, when installed):
    several threads on a busy machine made them ~60x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _select(entries, select_by, higher, alpha, by_config=None):
    """★ best (stats.best): the best mean on the selection metric, and the exact sign-flip
    comparison of every other configuration with it, each at level 2 α / k; ★ only when
    every other one is worse. With the words' facts: identical predictions, seeds needed."""
    values = {e["index"]: e[f"{select_by}_values"] for e in entries if e[select_by].n}
    b = stats.best(values, higher, alpha)
    for e in entries:
        e["top"] = e["index"] == b.top
        e["select"] = None
        e["best"] = False
        e["best_rule"] = {"level": b.level, "configurations": b.configurations}
    if b.top is None:
        return
    top = entries[b.top]
    top["best"] = b.star
    for index, claim in b.claims.items():
        entries[index]["select"] = _claim_facts(claim, b.level, by_config, index, b.top)


def _claim_facts(claim: stats.Claim, level: float, by_config, index, against) -> dict:
    c = claim.paired
    identical = (claim.verdict == stats.TIE and by_config is not None
                 and identical_predictions(by_config[index], by_config[against]))
    needed = math.nan
    if claim.verdict == stats.NO_DIFFERENCE and c.n >= 2:
        needed = stats.seeds_needed(c.differences, alpha=level)
    return {"paired": c, "p": claim.p, "p_holm": claim.p_adjusted, "verdict": claim.verdict,
            "claim": claim, "level": level, "identical": identical, "seeds_needed": needed,
            "unreachable": (stats.unreachable_note(c.n, level)
                            if c.n and not claim.reachable else "")}


def identical_predictions(rows_a: dict, rows_b: dict) -> bool:
    """Whether two configurations' evaluate/predictions.npz hold bitwise the same
    predictions (ids, labels, probabilities, losses) on every seed, the same seeds."""
    if not rows_a or set(rows_a) != set(rows_b):
        return False
    for seed in rows_a:
        arrays = []
        for rows in (rows_a, rows_b):
            path = rows[seed].get("_predictions")
            try:
                with np.load(path, allow_pickle=False) as data:
                    arrays.append({k: np.asarray(data[k]) for k in
                                   ("ids", "labels", "probabilities", "loss")})
            except (OSError, ValueError, KeyError, TypeError, EOFError):
                return False
        if not all(arrays[0][k].shape == arrays[1][k].shape
                   and arrays[0][k].dtype == arrays[1][k].dtype
                   and arrays[0][k].tobytes() == arrays[1][k].tobytes() for k in arrays[0]):
            return False
    return True


def _against_baseline(entries, base, metric, by_config, alpha):
    """Every configuration against the baseline on the reported metric
    (stats.test_verdicts): the exact sign-flip test over seeds, Holm-adjusted over the
    configurations compared, and — on test accuracy — the two-level bootstrap on the test
    examples (Holm-adjusted the same way) agreeing in sign. The seed-only t interval and
    its Holm p are kept as descriptive columns."""
    higher = metric != "val_loss" and metric != "test_loss"
    others = [e for e in entries if not e["baseline"]]
    for e in entries:
        e["vs_base"] = None
    comparisons = [stats.paired(e[f"{metric}_values"], base[f"{metric}_values"])
                   for e in others]
    t_holm = stats.holm([c.p_value for c in comparisons])
    replicates = stats.replicates_for(max(1, len(others)), alpha)
    boots = [_bootstrap(by_config[e["index"]], by_config[base["index"]], replicates)
             if metric == "test_accuracy" else None for e in others]
    boot_p = [b["accuracy"].p_value if b and b.get("accuracy") else math.nan for b in boots]
    boot_holm = stats.holm(boot_p)
    by_index = {e["index"]: b for e, b in zip(others, boots)}
    readable = any(b and b.get("accuracy") for b in boots)
    values = {e["index"]: e[f"{metric}_values"] for e in entries}
    claims = stats.test_verdicts(
        values, base["index"], higher, alpha,
        bootstrap=(lambda c: (by_index.get(c) or {}).get("accuracy")) if readable else None)
    compared = max(1, sum(math.isfinite(c.sign_flip_p) for c in comparisons))
    level = alpha / compared
    for e, c, p, b, bp in zip(others, comparisons, t_holm, boots, boot_holm):
        claim = claims[e["index"]]
        vs = {"paired": c, "p_holm": p, "bootstrap": b, "bootstrap_p_holm": bp,
              "verdict": claim.verdict, "claim": claim, "p_exact_holm": claim.p_adjusted,
              "replicates": replicates}
        facts = _claim_facts(claim, level, by_config, e["index"], base["index"])
        vs.update({k: facts[k] for k in ("identical", "seeds_needed", "unreachable", "level")})
        vs["val_loss"] = stats.paired(e["val_loss_values"], base["val_loss_values"])
        e["vs_base"] = vs
    for name, count in (("holm_t", sum(math.isfinite(c.p_value) for c in comparisons)),
                        ("holm_boot", sum(math.isfinite(p) for p in boot_p)),
                        ("holm_exact", sum(math.isfinite(c.sign_flip_p) for c in comparisons))):
        for e in entries:
            e[name] = count
    for e in entries:
        e["replicates"] = replicates


def _runner_up(entries, select_by, higher, by_config, metric):
    """The selected configuration (top mean) against the runner-up (second-best mean on
    the selection metric) on the reported metric: paired t and, on test accuracy, the
    two-level bootstrap. Descriptive: test never chooses."""
    ranked = sorted((e for e in entries if e[select_by].n),
                    key=lambda e: -e[select_by].mean if higher else e[select_by].mean)
    top = next((e for e in entries if e["top"]), None)
    if top is None or len(ranked) < 2:
        return None
    second = next(e for e in ranked if e is not top)
    c = stats.paired(top[f"{metric}_values"], second[f"{metric}_values"])
    boot = (_bootstrap(by_config[top["index"]], by_config[second["index"]])
            if metric == "test_accuracy" else None)
    return {"entry": second, "paired": c,
            "bootstrap": boot.get("accuracy") if isinstance(boot, dict) else None}


def _bootstrap(rows_a: dict, rows_b: dict,
               replicates: int = stats.BOOTSTRAP_REPLICATES) -> dict | None:
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
        out[name] = stats.paired_bootstrap(a, b, replicates=replicates)
    return out
