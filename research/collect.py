"""Collecting trial results for the study's report: one trial's status and metrics from
its directory (`collect`, `trial_metrics`), and its per-example predictions
(`read_predictions`), every file checked against the others; a file that is not what it
should be makes the trial "damaged" (never a number from it).

Metrics of a trial:
- `val_accuracy`, `val_loss`: the last trained phase's validation accuracy and loss at
  the epoch whose weights `best.weights.h5` holds (the phase's --monitor best epoch,
  default the lowest val_loss): the weights the evaluate phase scores;
- per trained phase: best (over epochs) and final validation accuracy and loss;
- `test_accuracy`, `test_loss`: the evaluate phase (`evaluation.json`), and its
  per-example predictions (`predictions.npz`: id, label, probabilities, loss).
"""
from __future__ import annotations

import math
import os
import stat as stat_lib
import zipfile
import zlib

import numpy as np

from tapefit.layout import atomic as files
from tapefit.layout import paths
from tapefit.research import grid, trial_files

TRAINED = ("head", "finetune")
PHASE_METRICS = ("epochs", "best_val_accuracy", "best_val_loss", "final_val_accuracy",
                 "final_val_loss")
DAMAGED, UNFINISHED = "damaged", "unfinished"

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
    # Each phase the trial reaches is the run its trial.json names (flags/identity.py): a
    # link to another seed's run, a head of other photos, an evaluation of other data.
    problems += trial_files.identity_problems(folder, phases)
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
