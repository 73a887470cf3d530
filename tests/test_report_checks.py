"""What the study report (research/report.py) checks in the files it reads (issue 30,
breaks 6, 8 and 11): per-example predictions against the study and evaluation.json, a
finished phase's log.csv against its summary.json, and report files that cannot be
written. Trial folders written by hand; no training, no TensorFlow."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tapefit.research import grid, report
from tests.test_study_report import ROOT, by_value, make, rows_of, write_trial


def npz(path, **changes):
    """Rewrites the predictions.npz at `path` with some arrays changed."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def predictions_path(trial):
    return os.path.join(trial.trial_dir, "evaluate", "predictions.npz")


def evaluation(trial, **changes):
    path = os.path.join(trial.trial_dir, "evaluate", "evaluation.json")
    with open(path) as f:
        content = json.load(f)
    content.update(changes)
    with open(path, "w") as f:
        json.dump(content, f)


def study_of_six(tmp_path, correct=None):
    """Two configurations × three seeds, finished, with predictions.npz on 20 examples."""
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    correct = [1, 0, 1, 1] * 5 if correct is None else correct
    trials = grid.expand(s, folder)
    for _, t in by_value(trials):
        write_trial(t, 0.8 + 0.01 * t.seed, float(np.mean(correct)), correct=correct)
    return s, folder, trials


def the_other(trials):
    """The seed-2 trial of the non-baseline configuration."""
    return next(t for lr, t in by_value(trials) if lr == 3e-3 and t.seed == 2)


# ---- break 6: predictions.npz is checked against the study ---------------------------------

@pytest.mark.parametrize("damage, why", [
    ("nan", "probabilities are not finite (20 of 20 examples)"),
    ("third_column", "3 probability columns for 2 classes"),
    ("swapped", "losses are not the cross-entropy of the probabilities"),
    ("not_one", "probabilities do not sum to 1"),
    ("label", "label 2 is not one of the 2 classes"),
    ("short", "19 examples; evaluation.json says 20"),
    ("accuracy", "accuracy 0.7500 (15 of 20 right) is not evaluation.json's 0.9"),
])
def test_damaged_predictions_damage_the_trial(tmp_path, damage, why):
    s, folder, trials = study_of_six(tmp_path)
    t = the_other(trials)
    path = predictions_path(t)
    with np.load(path) as data:
        p, labels = data["probabilities"].copy(), data["labels"].copy()
        ids, loss, digests = data["ids"], data["loss"], data["digests"]
    if damage == "nan":
        npz(path, probabilities=np.full_like(p, np.nan))
    elif damage == "third_column":  # Every real difference is 0: Δ must not be −0.1667.
        npz(path, probabilities=np.concatenate([p * 0.5, np.full((20, 1), 0.5, p.dtype)], 1))
    elif damage == "swapped":
        npz(path, probabilities=p[:, ::-1].copy())
    elif damage == "not_one":
        npz(path, probabilities=p * 1.5)
    elif damage == "label":
        labels[3] = 2
        npz(path, labels=labels)
    elif damage == "short":
        npz(path, ids=ids[1:], labels=labels[1:], probabilities=p[1:], loss=loss[1:],
            digests=digests[1:])
    elif damage == "accuracy":
        evaluation(t, accuracy=0.9)
    result = report.write(s, folder)
    row = next(r for r in result["rows"] if r["trial_id"] == t.trial_id)
    assert row["status"] == "damaged", row
    assert row["reason"].startswith("evaluate/predictions.npz: "), row["reason"]
    assert why in row["reason"]
    assert "damaged: evaluate/predictions.npz: " in result["markdown"]
    # Never a number from it: the bootstrap pairs the two other seeds only, on 20 examples,
    # and every real difference is 0.
    entry = next(e for e in result["entries"] if not e["baseline"])
    boot = entry["vs_base"]["bootstrap"]["accuracy"]
    assert (boot.seeds, boot.examples) == (2, 20)
    assert boot.mean == 0.0
    assert "−0.1667" not in result["markdown"] and "-0.1667" not in result["markdown"]
    assert np.isnan(row["test_accuracy"]) and np.isnan(row["val_accuracy"])


def test_classes_are_the_trained_phases(tmp_path):
    s, folder, trials = study_of_six(tmp_path)
    for t in trials:
        with open(os.path.join(t.trial_dir, "head", "classes.json"), "w") as f:
            json.dump(["cat", "dog"], f)
    t = the_other(trials)
    npz(predictions_path(t), classes=np.asarray(["dog", "cat"]))  # Swapped names.
    rows = report.write(s, folder)["rows"]
    damaged = [r for r in rows if r["status"] == "damaged"]
    assert [r["trial_id"] for r in damaged] == [t.trial_id]
    assert damaged[0]["reason"] == ('evaluate/predictions.npz: classes ["dog", "cat"] are '
                                    'not head/classes.json\'s ["cat", "dog"]')


def test_good_predictions_stay_finished(tmp_path):
    """float32 probabilities that sum to 1 within float32 rounding, a saturated example
    (p = 1.0, loss 1e-8), and an accuracy that is the npz's: finished, bootstrapped."""
    s, folder, trials = study_of_six(tmp_path)
    t = the_other(trials)
    path = predictions_path(t)
    with np.load(path) as data:
        p, loss = data["probabilities"].copy(), data["loss"].copy()
    p[0] = [1.0, 0.0]  # Label 0, right.
    loss[0] = 1e-8
    p[1] = [0.6999998, 0.3000001]  # Label 1, wrong (was 0.8/0.2); sums to 1 - 1e-7.
    loss[1] = -np.log(np.float32(0.3000001))
    npz(path, probabilities=p, loss=loss)
    result = report.write(s, folder)
    assert {r["status"] for r in result["rows"]} == {"finished"}
    entry = next(e for e in result["entries"] if not e["baseline"])
    assert entry["vs_base"]["bootstrap"]["accuracy"].seeds == 3


def test_a_pairing_that_loses_examples_refuses_and_says_how_many(tmp_path):
    """A trial that scored 10 of the 20 test examples (its evaluation.json agrees): the
    bootstrap and the flips refuse to pair on the intersection ("n=3×10"), and say so."""
    s, folder, trials = study_of_six(tmp_path)
    t = the_other(trials)
    path = predictions_path(t)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    keep = slice(0, 10)
    npz(path, **{k: arrays[k][keep] for k in ("ids", "labels", "probabilities", "loss",
                                                  "digests")})
    correct = np.argmax(arrays["probabilities"][keep], 1) == arrays["labels"][keep]
    evaluation(t, test_examples=10, accuracy=float(correct.mean()))
    result = report.write(s, folder)
    assert {r["status"] for r in result["rows"]} == {"finished"}
    text = result["markdown"]
    assert "n=3×10" not in text
    why = (f"{t.trial_id}/evaluate/predictions.npz has 10 of the 20 test examples the other "
           "trials scored: not paired on the 10 they share")
    assert why in rows_of(text, "learning_rate=3e-3")[-1]
    flips = text.split("## Per-example flips")[1]
    assert why in flips


# ---- break 8: a truncated log.csv of a finished phase ---------------------------------------

def summary(trial, phase="head", **content):
    content = {"epochs_run": 3, "epochs": 3, "monitor": "val_loss", "best_epoch": 3,
               "best_value": 0.5, "stop_reason": "finished", **content}
    with open(os.path.join(trial.trial_dir, phase, "summary.json"), "w") as f:
        json.dump(content, f)


def truncate(trial, rows, phase="head"):
    path = os.path.join(trial.trial_dir, phase, "log.csv")
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "w") as f:
        f.write("".join(lines[:1 + rows]))


def grid_of_three(tmp_path):
    """Two configurations × three seeds, 3 epochs; 1e-3 is the top on validation."""
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2", phases="head")
    trials = grid.expand(s, folder)
    for lr, t in by_value(trials):
        write_trial(t, (0.9 if lr == 1e-3 else 0.8) + 0.01 * t.seed, None, epochs=3)
        summary(t)
    return s, folder, trials


def test_a_truncated_log_of_a_finished_phase_damages_the_trial(tmp_path):
    s, folder, trials = grid_of_three(tmp_path)
    t = next(t for lr, t in by_value(trials) if lr == 1e-3 and t.seed == 1)
    truncate(t, 1)  # The lowest val_loss is on the last epoch: gone.
    metrics = report.trial_metrics(t.trial_dir, t.phases)  # What the race reads too.
    assert metrics["status"] == report.DAMAGED
    assert metrics["reason"] == "head/log.csv has 1 of 3 epochs (head/summary.json)"
    result = report.write(s, folder)
    assert "damaged: head/log.csv has 1 of 3 epochs (head/summary.json)" in result["markdown"]
    assert "Damaged trials (left out)" in result["markdown"]
    truncate(t, 0)  # Only the header.
    assert report.trial_metrics(t.trial_dir, t.phases)["reason"] == \
        "head/log.csv has 0 of 3 epochs (head/summary.json)"
    os.remove(os.path.join(t.trial_dir, "head", "log.csv"))
    assert report.trial_metrics(t.trial_dir, t.phases)["reason"] == \
        "head/log.csv has 0 of 3 epochs (head/summary.json)"


def test_a_log_whose_best_epoch_is_not_the_summarys_damages_the_trial(tmp_path):
    s, folder, trials = grid_of_three(tmp_path)
    t = trials[0]
    path = os.path.join(t.trial_dir, "head", "log.csv")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:  # The last row cut in the middle: its val_loss is gone.
        f.write(text.rstrip("\n").rsplit(",", 1)[0] + "\n")
    metrics = report.trial_metrics(t.trial_dir, t.phases)
    assert metrics["status"] == report.DAMAGED
    assert metrics["reason"] == ("head/log.csv: val_loss of epoch 3 is nan, "
                                 "head/summary.json says 0.5 (the best)")


def test_a_log_with_more_rows_than_epochs_damages_the_trial(tmp_path):
    s, folder, trials = grid_of_three(tmp_path)
    t = trials[0]
    summary(t, epochs_run=2, best_epoch=2, best_value=0.6)
    assert report.trial_metrics(t.trial_dir, t.phases)["reason"] == \
        "head/log.csv has 3 rows for the 2 epochs head/summary.json says ran"


def test_a_summary_of_the_wrong_types_is_named_as_json(tmp_path):
    s, folder, trials = grid_of_three(tmp_path)
    t = trials[0]
    summary(t, epochs_run="3")
    assert report.trial_metrics(t.trial_dir, t.phases)["reason"] == \
        'head/summary.json: "epochs_run" must be a whole number, got "3"'


def test_status_and_evaluation_type_errors_are_named_as_json(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3"], seeds="0,1")
    trials = grid.expand(s, folder)
    for t in trials:
        write_trial(t, 0.8, 0.7)
    with open(os.path.join(trials[0].trial_dir, "status.json"), "w") as f:
        json.dump({"status": "finished", "wall_s": "3"}, f)
    evaluation(trials[1], accuracy="abc")
    rows = report.write(s, folder)["rows"]
    assert rows[0]["reason"] == 'status.json: "wall_s" must be an object of numbers, got "3"'
    assert rows[1]["reason"] == \
        'evaluate/evaluation.json: "accuracy" must be a number, got "abc"'


def test_without_a_summary_the_log_is_read_as_before(tmp_path):
    """A phase folder without summary.json (written by hand, or by an older tapefit):
    nothing to check the log against; the trial is finished."""
    s, folder, trials = grid_of_three(tmp_path)
    for t in trials:
        os.remove(os.path.join(t.trial_dir, "head", "summary.json"))
    truncate(trials[0], 2)
    rows = report.write(s, folder)["rows"]
    assert {r["status"] for r in rows} == {"finished"}


# ---- break 11: report files that cannot be written -------------------------------------------

@pytest.mark.parametrize("name, kind", [("results.md", "folder"), ("results.csv", "FIFO"),
                                        ("results.png", "folder")])
def test_a_special_file_in_place_of_a_report_file_is_one_line(tmp_path, capsys, name, kind):
    s, folder, _ = study_of_six(tmp_path)
    target = os.path.join(folder, name)
    os.mkdir(target) if kind == "folder" else os.mkfifo(target)
    result = report.write(s, folder)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"warning: {target} is a {kind}, not a file: the report is not written "
                     f"there; remove it (the next report writes it)"], err
    assert result["unwritten"] == [lines[0][len("warning: "):]]
    assert "# Sweep results" in result["markdown"]
    for other in {"results.md", "results.csv", "results.png"} - {name}:
        assert os.path.isfile(os.path.join(folder, other))
    assert os.path.isdir(target) if kind == "folder" else not os.path.isfile(target)
    report.write(s, folder)  # Warned once per process: a sweep does not repeat it.
    assert capsys.readouterr().err == ""


def test_a_read_only_study_still_computes_its_report(tmp_path, capsys, monkeypatch):
    """A read-only study folder (simulated: the tests may run as root): every write fails
    with EROFS; the markdown is returned, one warning line says the files are unwritten."""
    import errno

    s, folder, _ = study_of_six(tmp_path)

    def read_only(save_fn, path):
        raise OSError(errno.EROFS, "Read-only file system", path)
    monkeypatch.setattr(report, "atomic_save", read_only)
    monkeypatch.setattr(report.files, "atomic_save", read_only)
    result = report.write(s, folder)
    assert "# Sweep results" in result["markdown"]
    assert "## Per-example flips" in result["markdown"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: the report could not be written in {folder} "
                               "(Read-only file system):")
    assert "results.md" in lines[0] and "results.csv" in lines[0]
    assert not os.path.exists(os.path.join(folder, "results.md"))


def test_report_only_with_a_folder_in_place_of_results_md(tmp_path):
    s, folder, _ = study_of_six(tmp_path)
    os.mkdir(os.path.join(folder, "results.md"))
    proc = subprocess.run([sys.executable, "sweep.py", f"--workdir={folder}", "--report_only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "# Sweep results" in proc.stdout
    assert "Traceback" not in proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "results.md" in line]
    assert warned == [f"warning: {folder}/results.md is a folder, not a file: the report is "
                      "not written there; remove it (the next report writes it)"]
