"""The study's report, from what is on disk: `results.csv` (one row per trial),
`results.md` (one row per configuration) and `results.png`. Any process may rewrite
it at any time (atomic writes): every shard of a study reads every trial directory.

Metrics of a trial:
- `val_accuracy`, `val_loss`: the last trained phase's validation accuracy and loss at
  the epoch whose weights `best.weights.h5` holds (the phase's --monitor best epoch,
  default the lowest val_loss): the weights the evaluate phase scores;
- per trained phase: best (over epochs) and final validation accuracy and loss;
- `test_accuracy`, `test_loss`: the evaluate phase (`evaluation.json`), and its
  per-example predictions (`predictions.npz`: id, label, probabilities, loss).

Select on validation, report on test. The best configuration is the one with the
best mean of the selection metric (`select_by`: `val_accuracy`, the default, or
`val_loss`), and it is called best (★) only when the paired comparison over seeds
(Holm-adjusted over the other configurations) says it is better than every other one.
Test numbers are reported for every configuration and never used to choose. Against
the baseline, the primary comparison is a two-level paired bootstrap over seeds and
test examples (stats.paired_bootstrap), with the seed-only paired t interval beside it.
"""
from __future__ import annotations

import csv
import io
import math
import os
import stat as stat_lib
import sys
import zipfile
import zlib

import numpy as np

from tapefit.layout import atomic as files
from tapefit.layout import paths
from tapefit.layout.atomic import atomic_save, atomic_write_text, read_json_or_none
from tapefit.layout.temporaries import remove_left_over, writer_in
from tapefit.research import grid, stats, trial_files

RESULTS_CSV, RESULTS_MD, RESULTS_PNG = paths.RESULTS_CSV, paths.RESULTS_MD, paths.RESULTS_PNG
TRAINED = ("head", "finetune")
PHASE_METRICS = ("epochs", "best_val_accuracy", "best_val_loss", "final_val_accuracy",
                 "final_val_loss")
# --select_by: {metric: higher is better}.
SELECT_BY = {"val_accuracy": True, "val_loss": False}
DEFAULT_SELECT_BY = "val_accuracy"
DAMAGED, UNFINISHED = "damaged", "unfinished"
NAMES = {"val_accuracy": "validation accuracy", "val_loss": "validation loss",
         "test_accuracy": "test accuracy", "test_loss": "test loss"}
CAUTION = "†"


# ---- one trial ------------------------------------------------------------------------------

def collect(trial: grid.Trial) -> dict:
    """Everything the report shows of one trial, read from its directory."""
    row = {"trial_id": trial.trial_id, "group_id": trial.group_id, "seed": trial.seed}
    row.update({name: grid.format_value(value) for name, value in trial.assignment})
    row.update(trial_metrics(trial.trial_dir, trial.phases))
    return row


def trial_metrics(folder: str, phases) -> dict:
    """Status and metrics of the trial in `folder` (see the module docstring). A file of
    the trial that is not what it should be makes it "damaged", with the file and why."""
    problems = []
    status, problem = files.read_json_file(os.path.join(folder, paths.STATUS_JSON))
    if problem is None and status is not None:
        problem = _status_problem(status)
    if problem:
        problems.append(f"{paths.STATUS_JSON}: {problem}")
        status = None
    status = status or {}
    row = {"status": "", "reason": "", "wall_s": math.nan,
           "val_loss": math.nan, "val_accuracy": math.nan,
           "test_accuracy": math.nan, "test_loss": math.nan, "test_examples": math.nan}
    if status.get("wall_s"):
        row["wall_s"] = float(sum(status["wall_s"].values()))
    curve = []
    for phase in TRAINED:
        log_path = os.path.join(folder, phase, paths.LOG_CSV)
        problem = _not_regular(log_path)
        if problem:  # A FIFO or a device would block or never end: never opened.
            problems.append(f"{phase}/{paths.LOG_CSV}: {problem}")
        rows = [] if problem else trial_files.read_log(log_path)
        val_acc = [r.get("val_accuracy", math.nan) for r in rows]
        val_loss = [r.get("val_loss", math.nan) for r in rows]
        row[f"{phase}_epochs"] = len(rows) if phase in phases else math.nan
        row[f"{phase}_best_val_accuracy"] = _best(val_acc, max)
        row[f"{phase}_best_val_loss"] = _best(val_loss, min)
        row[f"{phase}_final_val_accuracy"] = val_acc[-1] if val_acc else math.nan
        row[f"{phase}_final_val_loss"] = val_loss[-1] if val_loss else math.nan
        curve += [(phase, loss) for loss in val_loss]
        if phase in phases and not problem:
            problem = _log_problem(folder, phase, rows)
            if problem:
                problems.append(problem)
        if phase in phases:
            epoch = _monitored_epoch(os.path.join(folder, phase), rows)
            row["val_accuracy"] = val_acc[epoch] if epoch is not None else math.nan
            row["val_loss"] = val_loss[epoch] if epoch is not None else math.nan
    evaluation_path = paths.run_file(folder, paths.EVALUATE_PHASE, paths.EVALUATION_JSON)
    evaluation, problem = files.read_json_file(evaluation_path)
    if problem is None and evaluation is not None:
        problem = (_number_problem(evaluation, "accuracy")
                   or _number_problem(evaluation, "loss")
                   or _number_problem(evaluation, "test_examples", required=False))
    predictions_path = paths.run_file(folder, paths.EVALUATE_PHASE, paths.PREDICTIONS_NPZ)
    if problem:
        problems.append(f"{paths.EVALUATE_PHASE}/{paths.EVALUATION_JSON}: {problem}")
    elif evaluation is not None:
        row["test_accuracy"] = float(evaluation["accuracy"])
        row["test_loss"] = float(evaluation["loss"])
        row["test_examples"] = evaluation.get("test_examples", math.nan)
        # The per-example predictions, against evaluation.json and the trained phase's
        # classes: the evaluate phase wrote both files, so when they disagree neither is
        # known to be right, and the whole trial is damaged.
        problem = _predictions_problem(folder, phases, evaluation, predictions_path)
        if problem:
            problems.append(f"{paths.EVALUATE_PHASE}/{paths.PREDICTIONS_NPZ}: {problem}")
    done = all(trial_files.phase_done(folder, p) for p in phases)
    if problems:  # Never a number from a damaged trial (results.csv, the race) either.
        row["status"], row["reason"] = DAMAGED, "; ".join(problems)
        row.update({k: math.nan for k in ("val_loss", "val_accuracy", "test_accuracy",
                                          "test_loss", "test_examples")})
    elif status.get("status") == trial_files.FAILED:
        row["status"], row["reason"] = trial_files.FAILED, str(status.get("reason", ""))
    elif done:
        row["status"] = trial_files.FINISHED
    elif os.path.isfile(os.path.join(folder, paths.TRIAL_JSON)):
        row["status"] = UNFINISHED
    else:
        row["status"] = trial_files.PENDING
    row["_curve"] = curve
    row["_predictions"] = predictions_path
    return row


def _predictions_problem(folder: str, phases, evaluation: dict, path: str) -> str | None:
    """Why the trial's predictions.npz is not the evaluate phase's record of what
    evaluation.json says (None when it is, or when there is none: older trials)."""
    trained = evaluation.get("trained_phase")
    if not (isinstance(trained, str) and trained in TRAINED):
        trained = next((p for p in reversed(TRAINED) if p in phases), None)
    classes = None
    if trained is not None:
        classes_path = paths.run_file(folder, trained, paths.CLASSES_JSON)
        classes, problem = files.read_json_file(classes_path, kind=list)
        if problem:
            return f"cannot be checked: {trained}/{paths.CLASSES_JSON} is {problem}"
        if classes is not None and not all(isinstance(c, str) for c in classes):
            return f"cannot be checked: {trained}/{paths.CLASSES_JSON} is not a list of names"
    found = read_predictions(path, classes=classes, classes_file=f"{trained}/"
                             f"{paths.CLASSES_JSON}", evaluation=evaluation,
                             tta=bool(evaluation.get("tta")))
    return None if found is None else found.get("problem")


def _not_regular(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return e.strerror or type(e).__name__
    return None if stat_lib.S_ISREG(st.st_mode) else "not a regular file"


def _status_problem(status: dict) -> str | None:
    if "status" in status and not isinstance(status["status"], str):
        return _must_be("status", "a string", status["status"])
    wall = status.get("wall_s", {})
    if not isinstance(wall, dict) or not all(files.is_number(v) for v in wall.values()):
        return _must_be("wall_s", "an object of numbers", wall)
    if "reason" in status and not isinstance(status["reason"], (str, type(None))):
        return _must_be("reason", "a string", status["reason"])
    return None


def _must_be(key: str, what: str, value) -> str:
    """The one wording of a JSON value of the wrong type in a file the report reads: the
    key as a key, the value as JSON (`"wall_s" must be an object, got "3"`)."""
    return f"{files.short(key)} must be {what}, got {files.short(value)}"


def _number_problem(content: dict, key: str, required: bool = True) -> str | None:
    if key not in content:
        return f"no {files.short(key)}" if required else None
    if not files.is_number(content[key]):
        return _must_be(key, "a number", content[key])
    return None


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _log_problem(folder: str, phase: str, rows) -> str | None:
    """Why the log.csv of a finished phase is not the phase's whole log (None when it
    is, or when the phase left no summary.json to check it against): as many rows as
    summary.json's `epochs_run`, and the summary's best epoch's `monitor` value in its
    row. A truncated log would silently drop (or move) the trial's selection metric."""
    if not trial_files.phase_done(folder, phase):
        return None
    where = f"{phase}/{paths.SUMMARY_JSON}"
    summary, problem = files.read_json_file(paths.run_file(folder, phase, paths.SUMMARY_JSON))
    if problem:
        return f"{where}: {problem}"
    if summary is None:
        return None
    logged = summary.get("files")
    if isinstance(logged, dict) and "log" in logged and logged["log"] is None:
        return None  # --nocsv_log: the phase wrote no log.csv.
    epochs = summary.get("epochs_run")
    if not _whole(epochs) or epochs < 0:
        return f"{where}: {_must_be('epochs_run', 'a whole number', epochs)}"
    log = f"{phase}/{paths.LOG_CSV}"
    if len(rows) < epochs:
        return f"{log} has {len(rows)} of {epochs} epochs ({where})"
    if len(rows) > epochs:
        return f"{log} has {len(rows)} rows for the {epochs} epochs {where} says ran"
    best, value, monitor = (summary.get("best_epoch"), summary.get("best_value"),
                            summary.get("monitor"))
    if _whole(best) and 1 <= best <= epochs and files.is_number(value) \
            and math.isfinite(value) and isinstance(monitor, str):
        logged_value = rows[best - 1].get(monitor, math.nan)
        if not math.isclose(logged_value, value, rel_tol=1e-6, abs_tol=1e-9):
            return (f"{log}: {monitor} of epoch {best} is {logged_value:.6g}, {where} says "
                    f"{value:.6g} (the best)")
    return None


def _monitored_epoch(phase_dir: str, rows) -> int | None:
    """The epoch (index) whose weights evaluate scores: the best of the phase's --monitor
    (best.weights.h5; its config.json; default val_loss, lowest), or with --ema the last."""
    config, _ = files.read_json_file(os.path.join(phase_dir, paths.CONFIG_JSON))
    config = config or {}
    if config.get("ema") and rows:
        # Evaluate scores final.weights.h5, the moving average at the end: the last
        # epoch (whose logged validation numbers are of the raw weights).
        return len(rows) - 1
    monitor = config.get("monitor") if isinstance(config.get("monitor"), str) else "val_loss"
    mode = config.get("mode") if config.get("mode") in ("min", "max") else (
        "max" if "accuracy" in monitor else "min")
    values = [r.get(monitor, math.nan) for r in rows]
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        return None
    # The first epoch reaching the best value (a checkpoint is saved on improvement only).
    best = (min if mode == "min" else max)(v for v, _ in finite)
    return next(i for v, i in finite if v == best)


def _best(values, pick):
    finite = [v for v in values if math.isfinite(v)]
    return pick(finite) if finite else math.nan


PROBABILITY_TOLERANCE = 1e-3  # Rows of float32 softmax sum to 1 within it.


def read_predictions(path: str, classes=None, classes_file: str = paths.CLASSES_JSON,
                     evaluation: dict | None = None, tta: bool = False) -> dict | None:
    """A trial's evaluate/predictions.npz (see loops/predictions.py) as {ids, labels, correct,
    loss, digests, split, image_size, classes}; None when there is none; {"problem": why}
    when it cannot be read or does not hold what it should: one row per example (unique
    ids), a probability column per class of its `classes`, finite probabilities summing to
    1 (± PROBABILITY_TOLERANCE), labels among the classes, each loss the cross-entropy of
    its probabilities; with `classes` (the trained phase's classes.json, named
    `classes_file`) the same class names; with `evaluation` (evaluation.json) as many
    examples and the same accuracy (the same count of right examples; not with --tta,
    whose accuracy averages augmented copies the predictions do not)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat_lib.S_ISREG(st.st_mode):
        return {"problem": "not a regular file"}
    damaged = {"problem": "damaged (not the arrays evaluate writes)"}
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {"ids": np.asarray(data["ids"]).astype(str),
                   "labels": np.asarray(data["labels"]).astype(np.int64),
                   "probabilities": np.asarray(data["probabilities"], dtype=np.float64),
                   "loss": np.asarray(data["loss"], dtype=np.float64),
                   "digests": np.asarray(data["digests"]).astype(str),
                   "split": str(data["split"]), "image_size": int(data["image_size"]),
                   "classes": ([str(c) for c in np.asarray(data["classes"]).tolist()]
                               if "classes" in data.files else None)}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
            zlib.error):
        return damaged
    n = len(out["ids"])
    probabilities = out.pop("probabilities")
    if (out["ids"].ndim != 1 or out["labels"].shape != (n,) or out["loss"].shape != (n,)
            or probabilities.ndim != 2 or probabilities.shape[0] != n
            or out["digests"].shape != (n,) or not np.all(np.isfinite(out["loss"]))):
        return damaged
    if len(set(out["ids"].tolist())) != n:
        return {"problem": f"example ids are not unique ({n - len(set(out['ids'].tolist()))} "
                           "repeated)"}
    problem = _probabilities_problem(out, probabilities, classes, classes_file)
    if problem:
        return {"problem": problem}
    out["correct"] = (np.argmax(probabilities, axis=1) == out["labels"]).astype(np.float64)
    if evaluation is not None:
        examples = evaluation.get("test_examples")
        if files.is_number(examples) and examples != n:
            return {"problem": f"{n} examples; {paths.EVALUATION_JSON} says {examples:g}"}
        accuracy = evaluation.get("accuracy")
        right = int(out["correct"].sum())
        # Less than half an example apart: the same count (float32 rounding aside).
        if files.is_number(accuracy) and n and not tta and abs(right / n - accuracy) >= 0.5 / n:
            return {"problem": f"accuracy {right / n:.4f} ({right} of {n} right) is not "
                               f"{paths.EVALUATION_JSON}'s {accuracy:.4g}"}
    return out


def _probabilities_problem(out, probabilities, classes, classes_file) -> str | None:
    n, k = probabilities.shape
    own = out["classes"]
    if own is not None and len(own) != k:
        return f"{k} probability columns for {len(own)} classes"
    if classes is not None and own is not None and own != list(classes):
        return (f"classes {files.short(own)} are not {classes_file}'s "
                f"{files.short(list(classes))}")
    if classes is not None and own is None and len(classes) != k:
        return f"{k} probability columns for the {len(classes)} classes of {classes_file}"
    bad = ~np.all(np.isfinite(probabilities), axis=1)
    if bad.any():
        return f"probabilities are not finite ({int(bad.sum())} of {n} examples)"
    sums = probabilities.sum(axis=1)
    off = (np.abs(sums - 1.0) > PROBABILITY_TOLERANCE) | np.any(probabilities < 0, axis=1)
    if off.any():
        i = int(np.argmax(off))
        return (f"probabilities do not sum to 1 ({int(off.sum())} of {n} examples; example "
                f"{files.short(out['ids'][i])}: {sums[i]:.4g})")
    labels = out["labels"]
    outside = (labels < 0) | (labels >= k)
    if outside.any():
        return f"label {int(labels[np.argmax(outside)])} is not one of the {k} classes"
    # Each example's loss is the cross-entropy of its probabilities (the same logits):
    # swapped columns break it even where the accuracy does not change. Compared where
    # the probability of the label is not tiny (-log of a float32 softmax saturates).
    if n:
        p_label = probabilities[np.arange(n), labels]
        where = p_label >= 1e-4
        expected = -np.log(np.where(where, p_label, 1.0))
        wrong = where & (np.abs(expected - out["loss"]) > 1e-3 + 1e-3 * np.abs(expected))
        if wrong.any():
            i = int(np.argmax(wrong))
            return (f"losses are not the cross-entropy of the probabilities ({int(wrong.sum())} "
                    f"of {n} examples; example {files.short(out['ids'][i])}: loss "
                    f"{out['loss'][i]:.4g}, -log p(label) {expected[i]:.4g})")
    return None


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


# ---- files ---------------------------------------------------------------------------------------

def _fmt(x, digits=4):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _signed(x, digits=4):
    return "–" if not math.isfinite(x) else f"{x:+.{digits}f}"


def _interval(low, high, digits=4, signed=False, n=None):
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"
    f = _signed if signed else _fmt
    caution = CAUTION if n is not None and n < stats.MIN_SEEDS else ""
    return f"[{f(low, digits)}, {f(high, digits)}]{caution}"


def _p(p):
    if p is None or not math.isfinite(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _mean_std(s: stats.Summary) -> str:
    return f"{_fmt(s.mean)} ± {_fmt(s.std)}" if s.n else "–"


def markdown(study: grid.Study, study_dir: str, rows, entries,
             select_by: str = DEFAULT_SELECT_BY, alpha: float = stats.ALPHA) -> str:
    metric, metric_name = report_metric(study, select_by)
    higher = SELECT_BY[select_by]
    select_name = NAMES[select_by]
    counts = {}
    for row, _ in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    base = next(e for e in entries if e["baseline"])
    top = next((e for e in entries if e["top"]), None)
    lines = [f"# Sweep results: {study_dir}", "",
             f"{len(rows)} trials ({len(entries)} configurations × {len(study.seeds)} seeds "
             f"{', '.join(map(str, study.seeds))}; phases {', '.join(study.phases)}): "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".", ""]

    # ---- selection, on validation
    lines += [f"## Selection: {select_name} ({'higher' if higher else 'lower'} is better)", "",
              f"The configuration with the best mean {select_name} (of the last trained "
              "phase, at the epoch whose weights the evaluate phase scores) is compared with "
              "every other one, paired by seed (paired t-test, p-values Holm-adjusted over "
              f"the {max(0, sum(e['select'] is not None for e in entries))} comparisons); it "
              f"is ★ best only when it is better than each of them at α = {alpha}. Test "
              "numbers never choose.", ""]
    header = ["#", "", "configuration", "n", f"{select_name} mean ± std", "95 % CI",
              "Δ vs top [95 % CI]", "p (Holm)", "verdict vs top"]
    table = []
    for e in entries:
        s = e[select_by]
        mark = ", ".join(m for m in ("★ best" if e.get("best") else
                                     "top mean" if e["top"] else "",
                                     "baseline" if e["baseline"] else "") if m)
        sel = e["select"]
        if e["top"]:
            delta, p, verdict = "(top)", "", ""
        elif sel is None:
            delta, p, verdict = "–", "–", "no finished trial"
        else:
            c = sel["paired"]
            delta = (f"{_signed(c.mean)} {_interval(c.low, c.high, signed=True, n=c.n)} "
                     f"(n={c.n})")
            p, verdict = _p(sel["p_holm"]), sel["verdict"]
        table.append([str(e["number"]), mark, e["label"],
                      str(s.n), _mean_std(s), _interval(s.low, s.high, n=s.n), delta, p,
                      verdict])
    lines += [_md_table(header, table), ""]
    lines += _selection_prose(entries, top, select_name) + [""]

    # ---- against the baseline, on test (or validation)
    evaluated = metric == "test_accuracy"
    k_t = entries[0].get("holm_t", 0)
    k_b = entries[0].get("holm_boot", 0)
    lines += [f"## {metric_name.capitalize()} against the baseline ({base['label']})", ""]
    if evaluated:
        lines += ["Reported for every configuration, never used to choose. Primary: the "
                  "paired difference in test accuracy by a two-level bootstrap (resample the "
                  "seeds, then the test examples, the same draws for both configurations; "
                  f"{stats.BOOTSTRAP_REPLICATES} replicates, seed {stats.BOOTSTRAP_SEED}), "
                  "its 95 % percentile interval, its p-value (Holm-adjusted over the "
                  f"{k_b} configurations compared) and P(A > B), the chance that a run of "
                  "the configuration beats the same-seed run of the baseline on a test set "
                  "drawn like this one. Beside it: the seed-only paired t interval and "
                  f"p-value (Holm over {k_t}). The verdict says better or worse only when "
                  "both agree (with a handful of seeds the bootstrap's seed level "
                  "understates the seed-to-seed spread; the t-test does not)."
                  + ("" if k_b else " No trial has a readable evaluate/predictions.npz: no "
                     "bootstrap, the verdict follows the t-test."), ""]
    else:
        lines += [f"The study does not evaluate (no test split): these are {metric_name} "
                  "numbers, the same data that selects. Paired t over seeds, p-values "
                  f"Holm-adjusted over the {k_t} configurations compared.", ""]
    header = ["#", "configuration", "n", f"{metric_name} mean ± std", "95 % CI"]
    if evaluated:
        header += ["Δ bootstrap [95 % CI]", "P(A > B)", "p boot (Holm)"]
    header += ["Δ seed-only t [95 % CI]", "p t", "p t (Holm)", "verdict vs baseline"]
    if evaluated:
        header += ["test loss mean ± std", "Δ test loss bootstrap [95 % CI]"]
    table = []
    for e in entries:
        s = e[metric]
        row = [str(e["number"]), e["label"],
               str(s.n), _mean_std(s), _interval(s.low, s.high, n=s.n)]
        vs = e["vs_base"]
        if e["baseline"]:
            row += (["(baseline)", "", ""] if evaluated else []) + ["(baseline)", "", "", ""]
            if evaluated:
                row += [_mean_std(e["test_loss"]), "(baseline)"]
            table.append(row)
            continue
        c = vs["paired"]
        boot = vs["bootstrap"] or {}
        if evaluated:
            acc = boot.get("accuracy")
            if acc is not None:
                r = acc
                row += [f"{_signed(r.mean)} {_interval(r.low, r.high, signed=True, n=r.seeds)} "
                        f"(n={r.seeds}×{r.examples})", f"{r.p_improvement:.2f}",
                        _p(vs["bootstrap_p_holm"])]
            else:
                row += [f"– ({boot['problem']})" if "problem" in boot else "–", "–", "–"]
        row += [(f"{_signed(c.mean)} {_interval(c.low, c.high, signed=True, n=c.n)} (n={c.n})"
                 if c.n else "–"), _p(c.p_value), _p(vs["p_holm"]), vs["verdict"]]
        if evaluated:
            loss = boot.get("loss")
            row += [_mean_std(e["test_loss"]),
                    f"{_signed(loss.mean)} "
                    f"{_interval(loss.low, loss.high, signed=True, n=loss.seeds)}"
                    if loss is not None else "–"]
        table.append(row)
    lines += [_md_table(header, table), ""]
    lines += ["Legend: – no value (no finished trial, fewer than 2 paired seeds for an interval "
              "or a p-value, or no readable predictions.npz for the bootstrap); "
              f"{CAUTION} fewer than {stats.MIN_SEEDS} seeds: an interval on 1 degree of "
              "freedom, not enough seeds to tell; p < 0.001 is written <0.001; a tie is every "
              "paired difference exactly 0 (p = 1).", ""]

    failed = [r for r, _ in rows if r["status"] == trial_files.FAILED]
    if failed:
        lines += ["## Failed trials", "",
                  _md_table(["trial", "reason"], [[r["trial_id"], r["reason"]] for r in failed]),
                  ""]
    damaged = [r for r, _ in rows if r["status"] == DAMAGED]
    if damaged:
        lines += ["## Damaged trials (left out)", "",
                  _md_table(["trial", "status"], [[r["trial_id"], f"damaged: {r['reason']}"]
                                                  for r in damaged]), ""]
    ended = (trial_files.FINISHED, trial_files.FAILED, DAMAGED)
    other = [r for r, _ in rows if r["status"] not in ended]
    if other:
        lines += [f"Not finished yet: {', '.join(r['trial_id'] for r in other)}.", ""]
    if study.race is not None:  # research/race.py: rounds, drops, trial-epochs (race.json).
        lines += [race_section(study_dir)]
    return "\n".join(lines)


def race_section(study_dir: str) -> str:
    """The race's part of results.md from race.json ("" when the study is no race)."""
    path = os.path.join(study_dir, paths.RACE_JSON)
    content = read_json_or_none(path)
    if not isinstance(content, dict) or "rounds" not in content:
        return ""
    try:
        return _race_section(content)
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"## Race\n\n{path} is damaged; rerun the sweep.\n"


def _race_section(c: dict) -> str:
    epochs = c["trial_epochs"]
    lines = ["## Race", "",
             f"Seeds added in rounds ({c['min_seeds']} first, then one per round, at most "
             f"{c['max_seeds']}: {', '.join(map(str, c['seeds']))}); after each round every "
             f"configuration significantly worse than the round's best on **{c['metric']}** "
             f"(validation; paired over the round's seeds, Holm-adjusted, α = {c['alpha']}) "
             "is dropped.", ""]
    if c["finished"]:
        outcome = (f"**Winner: {c['winner']}**" if c["winner"] else
                   f"Ended after the last seed with {len(c['alive'])} configurations left: "
                   + "; ".join(c["alive"]) + " (these seeds do not separate them)"
                   if c["alive"] else "Ended with no configuration left (all failed)")
        lines += [f"{outcome} after round {c['round']}.", ""]
    else:
        lines += [f"Running: round {c['round']} (seeds {', '.join(map(str, c['round_seeds']))}), "
                  f"{len(c['alive'])} configurations left, {len(c['pending'])} trials to go.", ""]
    lines += [f"Trial-epochs: {epochs['race']} spent of the full grid's {epochs['full_grid']} "
              f"({_percent(epochs['ratio'])}); trials: {c['trials']['scheduled']} of "
              f"{c['trials']['full_grid']}.", ""]
    rows = [[str(r["round"]), ", ".join(map(str, r["seeds"])), str(r["configurations"]),
             r.get("best") or "–", "; ".join(r["dropped"]) or "–"] for r in c["rounds"]]
    if rows:
        lines += [_md_table(["round", "seeds", "configurations", "best", "dropped"], rows), ""]
    if c["dropped"]:
        lines += [_md_table(["dropped", "round", "seeds", "why"],
                            [[d["configuration"], str(d["round"]), str(d["seeds"]), d["reason"]]
                             for d in c["dropped"]]), ""]
    return "\n".join(lines)


def _percent(x) -> str:
    return f"{100 * x:.0f} %" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _selection_prose(entries, top, select_name) -> list[str]:
    if top is None:
        return ["No configuration has a finished trial yet: nothing to select."]
    others = [e for e in entries if e["select"] is not None]
    if not others:
        return [f"Only one configuration ({top['label']}) has finished trials: nothing to "
                "compare yet."]
    if top.get("best"):
        return [f"**Best: {top['label']}**: better on {select_name} than every other "
                "configuration (paired, Holm-adjusted)."]
    too_few = [e for e in others if e["select"]["verdict"] == stats.TOO_FEW]
    ties = [e for e in others if e["select"]["verdict"] == stats.TIE]
    open_ = [e for e in others if e["select"]["verdict"] == stats.NO_DIFFERENCE]
    text = [f"**No best configuration yet.** {top['label']} has the best mean {select_name}, "
            "but"]
    parts = []
    if too_few:
        parts.append(f"against {_names(too_few)} there are not enough seeds to tell "
                     f"(fewer than {stats.MIN_SEEDS} paired)")
    if ties:
        parts.append(f"it ties exactly with {_names(ties)} (identical results)")
    if open_:
        parts.append(f"these seeds do not separate it from {_names(open_)} (paired p ≥ "
                     "α after Holm)")
    return [" ".join(text) + " " + "; ".join(parts) + ". Run more seeds, or read the "
            "comparisons below as unsettled."]


def _names(entries) -> str:
    return ", ".join(f"#{e['number']} {e['label']}" for e in entries)


def _md_table(header, rows) -> str:
    esc = [[str(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in [header] + rows]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(out)


# ---- results.csv ----------------------------------------------------------------------------

NUMERIC_MISSING = "nan"  # What numpy, pandas and float() all read as NaN.


def csv_text(study: grid.Study, rows) -> str:
    """One row per trial; numbers at full precision (repr), a missing number is `nan`."""
    names = [n for a in study.axes for n in a.names]
    columns = (["trial_id", "group_id", *names, "seed", "status", "reason"]
               + [f"{p}_{m}" for p in TRAINED for m in PHASE_METRICS]
               + ["val_accuracy", "val_loss", "test_accuracy", "test_loss", "test_examples",
                  "wall_s"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row, _ in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items() if not k.startswith("_")})
    return buffer.getvalue()


def _csv_value(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return NUMERIC_MISSING
    return repr(float(v)) if isinstance(v, float) else str(v)


# ---- results.png ----------------------------------------------------------------------------

def _glyphs(font_manager) -> set:
    """The characters the default fonts (with their fallbacks) can draw."""
    props = font_manager.FontProperties()
    try:
        paths = font_manager.fontManager._find_fonts_by_props(props)
    except AttributeError:  # An older matplotlib: the one font.
        paths = [font_manager.findfont(props)]
    out = set()
    for path in paths:
        out.update(font_manager.get_font(path).get_charmap())
    return out


def _renderable(text: str, charmap) -> str:
    """`text` with what the fonts have no glyph for as \\uXXXX and `$` escaped (mathtext):
    no glyph warning, no math parsing of a label."""
    out = []
    for ch in text:
        if ch == "$":
            out.append(r"\$")
        elif ord(ch) in charmap or ch in " \t":
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def plot(study: grid.Study, entries, path: str, select_by: str = DEFAULT_SELECT_BY) -> None:
    import matplotlib.pyplot as plt

    fig = figure(study, entries, select_by)
    try:
        atomic_save(lambda tmp: fig.savefig(tmp, format="png", dpi=100), path)
    finally:
        plt.close(fig)


def figure(study: grid.Study, entries, select_by: str = DEFAULT_SELECT_BY):
    """results.png: the reported metric per configuration (seeds, mean, interval), the
    paired per-seed differences to the baseline with the comparison's interval, and the
    mean validation-loss curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager
    from matplotlib.ticker import MaxNLocator

    glyphs = _glyphs(font_manager)
    metric, metric_name = report_metric(study, select_by)
    accuracy = metric.endswith("accuracy")
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    base = next(e for e in entries if e["baseline"])
    top_values = []
    for x, e in enumerate(entries):
        color = colors[x % len(colors)]
        values = e[f"{metric}_values"]
        seeds = sorted(values)
        jitter = np.linspace(-0.2, 0.0, len(seeds)) if len(seeds) > 1 else [-0.1] * len(seeds)
        if seeds:
            left.scatter([x + j for j in jitter], [values[s] for s in seeds], color=color,
                         alpha=0.6, s=18, zorder=3)
            top_values += [values[s] for s in seeds]
        s = e[metric]
        if s.n:
            if math.isfinite(s.low):
                left.errorbar([x + 0.12], [s.mean], yerr=[[s.mean - s.low], [s.high - s.mean]],
                              fmt="o", color=color, capsize=4, zorder=4)
                top_values.append(s.high)
            else:
                left.plot([x + 0.12], [s.mean], "o", color=color, zorder=4)
        # Paired per-seed differences to the baseline, with the comparison's interval.
        vs = e["vs_base"]
        if vs is not None and vs["paired"].n:
            c = vs["paired"]
            middle.scatter([x - 0.1] * c.n, c.differences, color=color, alpha=0.6, s=18,
                           zorder=3)
            boot = (vs["bootstrap"] or {}).get("accuracy")
            low, high, mean = ((boot.low, boot.high, boot.mean)
                               if boot is not None else (c.low, c.high, c.mean))
            if math.isfinite(low):
                middle.errorbar([x + 0.1], [mean], yerr=[[mean - low], [high - mean]],
                                fmt="s", color=color, capsize=4, zorder=4)
            else:
                middle.plot([x + 0.1], [mean], "s", color=color, zorder=4)
        curves = [[loss for _, loss in c] for c in e["curves"]]
        if curves:
            length = min(map(len, curves))
            if length:
                arr = np.asarray([c[:length] for c in curves], dtype=float)
                mean = arr.mean(axis=0)
                epochs = np.arange(1, length + 1)
                right.plot(epochs, mean, color=color, marker="o", markersize=4,
                           label=f"#{e['number']} {_renderable(_short(e['label']), glyphs)}")
                if len(arr) > 1:
                    std = arr.std(axis=0, ddof=1)
                    right.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)
                head_epochs = sum(1 for p, _ in e["curves"][0][:length] if p == "head")
                if 0 < head_epochs < length:
                    right.axvline(head_epochs + 0.5, color="gray", linestyle=":", linewidth=1)
    ticks = [f"#{e['number']}" + (" (base)" if e["baseline"] else "") for e in entries]
    for ax in (left, middle):
        ax.set_xlim(-0.6, len(entries) - 0.4)
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels(ticks, fontsize=8)
        ax.set_xlabel("configuration (numbers as in results.md)", fontsize=8)
    if accuracy and top_values:  # An interval past [0, 1] is not drawn past it.
        low, high = left.get_ylim()
        left.set_ylim(max(0.0, low), min(1.0, high))
    left.set_ylabel(metric_name)
    left.set_title(f"{metric_name}: seeds (dots), mean and 95 % t interval", fontsize=9)
    middle.axhline(0.0, color="gray", linewidth=1)
    middle.set_ylabel(f"Δ {metric_name} vs #{base['number']} (baseline)")
    middle.set_title("paired per-seed differences (dots) and the comparison's 95 % interval"
                     + (" (bootstrap)" if metric == "test_accuracy" else ""), fontsize=9)
    trained = [p for p in TRAINED if p in study.phases]
    right.set_xlabel("epoch" + (f" ({', then '.join(trained)})" if trained else ""))
    longest = max((min(map(len, e["curves"])) for e in entries if e["curves"]), default=1)
    right.set_xlim(0.5, max(1, longest) + 0.5)
    right.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    right.set_ylabel("validation loss")
    right.set_title("mean validation loss over seeds, band: ± 1 std", fontsize=9)
    if any(e["curves"] for e in entries):
        right.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---- writing --------------------------------------------------------------------------------

_TMP = files.temp_name_pattern((RESULTS_CSV, RESULTS_MD, RESULTS_PNG))


def remove_stale_temporaries(study_dir: str, now: float | None = None) -> list[str]:
    """Removes the report's temporary files that a killed writer left (our names only,
    regular files only, never through a link; `layout.temporaries`' one rule: never a
    live writer's, another host's once unchanged for an hour); returns them."""
    return remove_left_over(study_dir, writer_in(_TMP), now=now)


def write(study: grid.Study, study_dir: str, trials=None, select_by: str = DEFAULT_SELECT_BY,
          alpha: float = stats.ALPHA, flips: bool = True) -> dict:
    """Rewrites results.csv, results.md and results.png; returns the paths and summaries.
    `flips=False` (the report a running study rewrites after each trial) leaves out the
    per-example flips, whose contact sheets cost seconds a write: the last report of the
    run, and every --report_only, has them.

    A report file that cannot be written (a folder or FIFO in its place, a read-only
    study folder) is not written, with one warning line on stderr (once per process)
    and in the result's `unwritten`; the report is computed all the same (its markdown
    returned): a sweep goes on, `--report_only` prints it."""
    trials = trials if trials is not None else grid.expand(study, study_dir)
    rows = [(collect(t), t.config_index) for t in trials]
    entries = summarize(study, rows, select_by, alpha)
    unwritten = []
    try:
        remove_stale_temporaries(study_dir)
    except OSError:
        pass  # A read-only folder: nothing to remove, and nothing will be written.
    csv_content = csv_text(study, rows)
    save_file(os.path.join(study_dir, RESULTS_CSV),
              lambda path: atomic_write_text(path, csv_content), unwritten)
    text = markdown(study, study_dir, rows, entries, select_by, alpha)
    if "evaluate" in study.phases and not flips:
        text += ("\n## Per-example flips\n\nWritten with the report at the end of the study's "
                 "run (or by `tapefit sweep --report_only`).\n")
    elif "evaluate" in study.phases:  # research/flips.py: the paired per-example view.
        text += "\n" + "\n".join(flips_section(study_dir, rows, entries, unwritten=unwritten))
        by_index = {e["index"]: e["number"] for e in entries}
        for a, b in study.flips:  # --flips: the pairs the user names.
            pair = (by_index[study.config_index(a)], by_index[study.config_index(b)])
            text += "\n" + "\n".join(flips_section(study_dir, rows, entries, pair, unwritten))
    save_file(os.path.join(study_dir, RESULTS_MD),
              lambda path: atomic_write_text(path, text + "\n"), unwritten)
    save_file(os.path.join(study_dir, RESULTS_PNG),
              lambda path: plot(study, entries, path, select_by), unwritten)
    return {"rows": [r for r, _ in rows], "entries": entries, "markdown": text,
            "unwritten": _warn_unwritten(study_dir, unwritten)}


_KINDS = ((stat_lib.S_ISDIR, "folder"), (stat_lib.S_ISFIFO, "FIFO"),
          (stat_lib.S_ISSOCK, "socket"), (stat_lib.S_ISCHR, "device"),
          (stat_lib.S_ISBLK, "device"))


def _special_file(path: str) -> str | None:
    """"a folder", "a FIFO", "a link to a device", ... when what is at `path` is not a
    file a report may replace (None: nothing, a regular file, or a link to one)."""
    try:
        st = os.lstat(path)
        prefix = ""
        if stat_lib.S_ISLNK(st.st_mode):
            prefix = "a link to "
            st = os.stat(path)
    except OSError:
        return None  # Nothing there (or a dangling link): the write will tell.
    for test, kind in _KINDS:
        if test(st.st_mode):
            return f"{prefix or 'a '}{kind}"
    return None


def save_file(path: str, write_fn, unwritten: list) -> bool:
    """`write_fn(path)` unless a folder, FIFO, socket or device (or a link to one) is in
    `path`'s place; an OSError of the write is caught. Either is appended to `unwritten`
    as (path, special kind or None, the system's reason or None). True when written."""
    special = _special_file(path)
    if special:
        unwritten.append((path, special, None))
        return False
    try:
        write_fn(path)
    except OSError as e:
        unwritten.append((path, None, e.strerror or type(e).__name__))
        return False
    return True


_WARNED = set()  # Warning lines already printed by this process (a sweep rewrites often).


def _warn_unwritten(study_dir: str, unwritten) -> list[str]:
    """One line per special file in a report file's place, one per reason the other
    writes failed (all the files it stopped); each printed once per process."""
    lines = [f"{path} is {kind}, not a file: the report is not written there; remove it "
             "(the next report writes it)" for path, kind, _ in unwritten if kind]
    by_reason = {}
    for path, kind, why in unwritten:
        if not kind:
            by_reason.setdefault(why, []).append(os.path.relpath(path, study_dir))
    for why, names in by_reason.items():
        lines.append(f"the report could not be written in {study_dir} ({why}): "
                     f"{', '.join(names)} not written; the trials' results are unchanged "
                     "(make the folder writable and run `tapefit sweep "
                     f"--workdir={study_dir} --report_only`)")
    for line in lines:
        if line not in _WARNED:
            _WARNED.add(line)
            print(f"warning: {line}", file=sys.stderr)
    return lines


def flips_section(study_dir: str, rows, entries, pair=None, unwritten=None) -> list[str]:
    """results.md's per-example flips of the selected configuration (the top mean; when
    that is the baseline, the next best) against the baseline, or of `pair` (two
    configuration numbers, 1-based: configuration, baseline); writes flips.csv and
    flips.png (research/flips.py)."""
    from tapefit.research import flips
    by_number = {e["number"]: e for e in entries}
    if pair is not None:
        chosen, base = by_number[pair[0]], by_number[pair[1]]
    else:
        base = next(e for e in entries if e["baseline"])
        ranked = [e for e in entries if e["top"]] + [e for e in entries if not e["top"]]
        chosen = next((e for e in ranked if e is not base and e["seeds"]), None)
        if chosen is None:
            return []
    predictions = {}
    for row, index in rows:
        if row["status"] == trial_files.FINISHED:
            predictions.setdefault(index, {})[row["seed"]] = row["_predictions"]
    found = flips.compare(predictions.get(chosen["index"], {}),
                          predictions.get(base["index"], {}), read_predictions)
    files = None
    if found and "problem" not in found:
        any_path = next(iter(predictions[chosen["index"]].values()))
        files = flips.write(study_dir, found,
                            f"#{chosen['number']} {chosen['label']} vs "
                            f"{'' if pair else 'baseline '}#{base['number']} {base['label']}",
                            flips.classes_of(any_path),
                            suffix=f"{pair[0]}-vs-{pair[1]}" if pair else "",
                            unwritten=unwritten)
    against = f"#{base['number']} {base['label']}"
    return flips.section(found, f"#{chosen['number']} {chosen['label']}",
                         against if pair else f"the baseline ({against})", files)
