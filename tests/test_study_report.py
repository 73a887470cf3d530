"""The study report (research/report.py) from trial folders written by hand (issue 22,
issue 21 items 7 and 9): selection on validation, the paired verdicts, Holm, the
per-example bootstrap, results.csv as numbers, results.png, damaged trial files, stale
temporary files. No training, no TensorFlow."""
import csv
import io
import json
import math
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from tapefit.research import grid, report, runner, stats, study

TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 32,
        "dataset": "synthetic", "epochs": 2}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(tmp_path, axes, seeds="0,1,2", baseline=None, phases="head,evaluate"):
    folder = str(tmp_path / "study")
    s = study.make(folder, dict(TINY), phases=phases, axes=axes, seeds=seeds, baseline=baseline)
    study.save(s, folder)
    return s, folder


def write_trial(trial, val_accuracy, test_accuracy, val_loss=None, correct=None,
                status="finished", epochs=2):
    """A finished trial: log.csv (val_accuracy on every epoch, the lowest val_loss on the
    last), evaluation.json and, with `correct` (per test example 1/0), predictions.npz."""
    folder = trial.trial_dir
    for phase in ("head", "finetune"):
        if phase not in trial.phases:
            continue
        os.makedirs(os.path.join(folder, phase), exist_ok=True)
        with open(os.path.join(folder, phase, "log.csv"), "w") as f:
            f.write("epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n")
            for epoch in range(epochs):
                loss = (val_loss if val_loss is not None else 0.5) + 0.1 * (epochs - 1 - epoch)
                f.write(f"{epoch},0.5,0.7,0.001,{val_accuracy!r},{loss!r}\n")
        open(os.path.join(folder, phase, "final.weights.h5"), "w").close()
    if "evaluate" in trial.phases:
        os.makedirs(os.path.join(folder, "evaluate"), exist_ok=True)
        with open(os.path.join(folder, "evaluate", "evaluation.json"), "w") as f:
            json.dump({"accuracy": test_accuracy, "loss": 0.5,
                       "test_examples": 20 if correct is None else len(correct)}, f)
        if correct is not None:
            write_predictions(os.path.join(folder, "evaluate", "predictions.npz"), correct)
    runner.write_trial_json(folder, trial.to_dict())
    with open(os.path.join(folder, runner.STATUS_JSON), "w") as f:
        json.dump({"status": status, "wall_s": {"head": 1.5}}, f)


def write_predictions(path, correct, split="same", image_size=32):
    correct = np.asarray(correct, dtype=bool)
    n = len(correct)
    labels = np.arange(n) % 2
    predicted = np.where(correct, labels, 1 - labels)
    probabilities = np.full((n, 2), 0.2, np.float32)
    probabilities[np.arange(n), predicted] = 0.8
    loss = -np.log(probabilities[np.arange(n), labels])
    np.savez(path, ids=np.asarray([str(i) for i in range(n)]), labels=labels,
             probabilities=probabilities, loss=loss.astype(np.float32),
             digests=np.asarray([f"{i:016x}" for i in range(n)]), split=np.asarray(split),
             image_size=np.asarray(image_size), classes=np.asarray(["cat", "dog"]))


def by_value(trials, name="learning_rate"):
    return [(dict(t.assignment)[name], t) for t in trials]


def rows_of(text, needle):
    return [line for line in text.splitlines() if line.startswith("|") and needle in line]


# ---- selection and verdicts ------------------------------------------------------------

def test_the_best_is_chosen_on_validation_when_test_disagrees(tmp_path):
    # 6 seeds: the fewest on which the exact sign-flip test can reach 0.05 (issue 31).
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2,3,4,5")
    for lr, t in by_value(grid.expand(s, folder)):
        if lr == 1e-3:  # Better on validation on every seed, worse on test.
            write_trial(t, 0.90 + 0.01 * t.seed, 0.70 + 0.003 * t.seed)
        else:
            write_trial(t, 0.80 + 0.012 * t.seed, 0.85 + 0.002 * t.seed)
    result = report.write(s, folder)
    entries = {e["label"]: e for e in result["entries"]}
    assert entries["learning_rate=1e-3"]["best"] and not entries["learning_rate=3e-3"]["best"]
    text = result["markdown"]
    assert "★ best" in rows_of(text, "learning_rate=1e-3")[0]
    assert not any("★" in line for line in rows_of(text, "learning_rate=3e-3"))
    # Test numbers are still reported: 3e-3 is better there.
    assert entries["learning_rate=3e-3"]["test_accuracy"].mean > \
        entries["learning_rate=1e-3"]["test_accuracy"].mean
    # --select_by=val_loss: lower is better (3e-3 has the lower validation loss here).
    for lr, t in by_value(grid.expand(s, folder)):
        base = 0.9 if lr == 1e-3 else 0.8
        write_trial(t, 0.90 if lr == 1e-3 else 0.80, 0.7, val_loss=base + 0.01 * t.seed)
    result = report.write(s, folder, select_by="val_loss")
    best = [e["label"] for e in result["entries"] if e["best"]]
    assert best == ["learning_rate=3e-3"]
    assert "## Selection: validation loss (lower is better)" in result["markdown"]


def test_paired_separation_is_not_an_overlap_warning(tmp_path):
    """Separate intervals overlap, the paired differences do not: the verdict follows the
    paired test (issue 22: the warning fired at paired p = 0.003)."""
    s, folder = make(tmp_path, ["learning_rate=1e-3,1e-6"], seeds="0,1,2,3,4,5")
    for lr, t in by_value(grid.expand(s, folder)):
        # Large seed-to-seed spread, shared (6 seeds: the exact test can reach 0.05).
        spread = [0.70, 0.80, 0.75, 0.85, 0.72, 0.78][t.seed]
        write_trial(t, spread + (0.02 + 0.001 * t.seed if lr == 1e-3 else 0.0), 0.8)
    text = report.write(s, folder)["markdown"]
    assert "overlap" not in text
    assert "★ best" in rows_of(text, "learning_rate=1e-3")[0]
    assert "worse" in rows_of(text, "learning_rate=1e-6")[0]


def test_a_tie_gets_no_star(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,1e-6"], seeds="0,1,2")
    for _, t in by_value(grid.expand(s, folder)):
        write_trial(t, 0.5 + 0.1 * t.seed, 0.5)  # Identical runs.
    result = report.write(s, folder)
    assert not any(e["best"] for e in result["entries"])
    assert "★" not in "\n".join(rows_of(result["markdown"], "learning_rate"))
    assert "ties exactly with" in result["markdown"]
    assert "| tie |" in rows_of(result["markdown"], "learning_rate=1e-6")[0]


def test_two_seeds_say_not_enough_seeds_to_tell(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,1e-6"], seeds="0,1")
    for lr, t in by_value(grid.expand(s, folder)):
        write_trial(t, (0.9 if lr == 1e-3 else 0.6) + 0.05 * t.seed, 0.7 + 0.1 * t.seed)
    text = report.write(s, folder)["markdown"]
    assert not any("★" in line for line in rows_of(text, "learning_rate"))
    assert "not enough seeds to tell" in rows_of(text, "learning_rate=1e-6")[0]
    assert "not enough seeds to tell" in text.split("## Test")[0]
    # Intervals on 2 seeds carry the caution mark, explained in the legend.
    assert report.CAUTION in rows_of(text, "learning_rate=1e-6")[0]
    assert f"{report.CAUTION} fewer than 3 seeds" in text


def test_holm_adjusts_several_comparisons_with_the_baseline(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3,1e-2,3e-2"], seeds="0,1,2,3")
    shift = {1e-3: 0.0, 3e-3: 0.02, 1e-2: 0.01, 3e-2: -0.01}
    noise = {1e-3: [0, 0, 0, 0], 3e-3: [0.001, -0.004, 0.006, 0.0],
             1e-2: [0.008, -0.006, 0.003, 0.001], 3e-2: [0.0, 0.004, -0.012, 0.002]}
    for lr, t in by_value(grid.expand(s, folder)):
        write_trial(t, 0.8, 0.7 + 0.01 * t.seed + shift[lr] + noise[lr][t.seed])
    result = report.write(s, folder)
    others = [e for e in result["entries"] if not e["baseline"]]
    raw = [e["vs_base"]["paired"].p_value for e in others]
    expected = stats.holm(raw)
    assert [e["vs_base"]["p_holm"] for e in others] == pytest.approx(expected)
    assert expected != pytest.approx(raw)
    text = result["markdown"]
    assert "p t (Holm)" in text and "Holm over 3" in text
    row = rows_of(text, "learning_rate=3e-3")[-1]
    assert report._p(expected[0]) in row and report._p(raw[0]) in row


# ---- the per-example bootstrap -------------------------------------------------------------

def test_the_primary_comparison_is_the_two_level_bootstrap(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    rng = np.random.default_rng(5)
    correct = {}
    for lr, t in by_value(grid.expand(s, folder)):
        c = rng.random(20) < (0.9 if lr == 3e-3 else 0.6)
        correct[lr, t.seed] = c.astype(float)
        write_trial(t, 0.8, float(c.mean()), correct=c)
    result = report.write(s, folder)
    entry = next(e for e in result["entries"] if not e["baseline"])
    boot = entry["vs_base"]["bootstrap"]["accuracy"]
    expected = stats.paired_bootstrap({s_: correct[3e-3, s_] for s_ in range(3)},
                                      {s_: correct[1e-3, s_] for s_ in range(3)})
    assert boot == expected
    assert boot.examples == 20 and boot.seeds == 3
    row = rows_of(result["markdown"], "learning_rate=3e-3")[-1]
    assert f"{boot.p_improvement:.2f}" in row and "(n=3×20)" in row
    # The same files give the same report (seeded).
    assert report.write(s, folder)["markdown"] == result["markdown"]


def test_the_bootstrap_refuses_to_pair_different_examples(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    for lr, t in by_value(grid.expand(s, folder)):
        write_trial(t, 0.8, 0.5, correct=[1, 0] * 10)
        if lr == 3e-3 and t.seed == 1:
            write_predictions(os.path.join(t.trial_dir, "evaluate", "predictions.npz"),
                              [1, 0] * 10, split="other data")
    text = report.write(s, folder)["markdown"]
    assert "test splits differ" in rows_of(text, "learning_rate=3e-3")[-1]


# ---- results.csv, legend ---------------------------------------------------------------------

def test_results_csv_is_numbers_at_full_precision(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    trials = grid.expand(s, folder)
    for lr, t in by_value(trials):
        if lr == 3e-3 and t.seed == 2:
            continue  # Pending: no numbers at all.
        write_trial(t, 0.123456789012345, 0.987654321098765)
    report.write(s, folder)
    text = open(os.path.join(folder, "results.csv")).read()
    assert "–" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert float(rows[0]["head_final_val_accuracy"]) == 0.123456789012345
    assert float(rows[0]["test_accuracy"]) == 0.987654321098765
    pending = next(r for r in rows if r["status"] == "pending")
    assert math.isnan(float(pending["test_accuracy"]))
    assert math.isnan(float(rows[0]["finetune_epochs"]))  # No finetune phase in this study.
    table = np.genfromtxt(io.StringIO(text), delimiter=",", names=True, dtype=None,
                          encoding="utf-8")
    assert table["test_accuracy"].dtype.kind == "f"
    assert np.isnan(table["test_accuracy"]).sum() == 1
    assert table["head_best_val_loss"].dtype.kind == "f"


def test_the_dash_is_explained(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0")
    for _, t in by_value(grid.expand(s, folder)):
        write_trial(t, 0.8, 0.7)
    text = report.write(s, folder)["markdown"]
    assert "| – |" in text
    assert "Legend: – no value" in text


# ---- damaged trial files (issue 21 item 7) ----------------------------------------------------

def test_a_damaged_trial_is_reported_and_the_rest_go_on(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    trials = grid.expand(s, folder)
    for _, t in by_value(trials):
        write_trial(t, 0.8 + 0.01 * t.seed, 0.7)
    with open(os.path.join(trials[0].trial_dir, runner.STATUS_JSON), "w") as f:
        f.write("[1]")
    with open(os.path.join(trials[1].trial_dir, "evaluate", "evaluation.json"), "w") as f:
        json.dump({"accuracy": "abc", "loss": 0.5}, f)
    os.remove(os.path.join(trials[2].trial_dir, "head", "log.csv"))
    os.mkfifo(os.path.join(trials[2].trial_dir, "head", "log.csv"))  # Would block a reader.
    result = report.write(s, folder)
    statuses = [r["status"] for r in result["rows"]]
    assert statuses.count("damaged") == 3 and statuses.count("finished") == 3
    assert "damaged: head/log.csv: not a regular file" in result["markdown"]
    text = result["markdown"]
    assert "damaged: status.json: a JSON list, not an object" in text
    assert 'damaged: evaluate/evaluation.json: "accuracy" must be a number, got "abc"' in text
    # The same through the command line: one report, exit 0.
    proc = subprocess.run([sys.executable, "sweep.py", f"--workdir={folder}", "--report_only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "damaged: status.json" in proc.stdout
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr


# ---- results.png and its temporary files (issue 21 item 9) -------------------------------------

def test_the_figure(tmp_path):
    import matplotlib.pyplot as plt

    s, folder = make(tmp_path, ["data_dir=/d/日本語 $(x) " + "long" * 30 + ",/d/b"],
                     seeds="0,1,2")
    for value, t in by_value(grid.expand(s, folder), "data_dir"):
        high = value == "/d/b"
        write_trial(t, 0.99 if high else 0.5, 0.999 if high else 0.97 + 0.01 * t.seed,
                    epochs=1)
    rows = [(report.collect(t), t.config_index) for t in grid.expand(s, folder)]
    entries = report.summarize(s, rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # No glyph, mathtext or tight_layout warning.
        report.plot(s, entries, os.path.join(folder, "results.png"))
        fig = report.figure(s, entries)
    try:
        select_ax, left, middle, right = fig.axes
        assert "selection" in select_ax.get_title()  # The selection metric is plotted.
        assert left.get_ylim()[1] <= 1.0  # Accuracy: the axis stops at 1.
        assert "paired per-seed differences" in middle.get_title()
        assert len(middle.collections) >= 1  # The per-seed dots.
        assert right.get_xlabel() == "epoch (head)"  # No "then finetune" in a head study.
        ticks = [t for t in right.get_xticks() if right.get_xlim()[0] <= t <= right.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks)
        lines = [line for line in right.get_lines() if line.get_label().startswith("#")]
        # One epoch: a marker (one per configuration, told apart).
        assert lines and all(line.get_marker() not in (None, "None", "") for line in lines)
        label = lines[0].get_label()
        assert "\\u65e5" in label or "日" in label
    finally:
        plt.close(fig)


def test_stale_report_temporaries_are_removed_and_nothing_else(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3"], seeds="0")
    os.makedirs(folder, exist_ok=True)
    old = time.time() - 7200  # A killed writer's, two hours ago.
    stale = os.path.join(folder, ".results.png.tmp-12345-0123abcd")
    fresh = os.path.join(folder, ".results.md.tmp-12346-0123abce")
    other = os.path.join(folder, ".notes.txt.tmp-12345-0123abcd")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    link = os.path.join(folder, ".results.csv.tmp-12347-0123abcf")
    for path in (stale, fresh, other):
        with open(path, "w") as f:
            f.write("x")
    os.symlink(outside, link)
    for path in (stale, other):
        os.utime(path, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    report.write(s, folder)
    assert not os.path.exists(stale)
    assert os.path.exists(fresh) and os.path.exists(other)  # Young, or not ours.
    assert os.path.islink(link) and outside.read_text() == "keep"  # Never through a link.


# ---- the evaluate phase's predictions.npz (TensorFlow: one tiny study) ----------------------

def test_evaluate_writes_per_example_predictions_that_match_its_numbers(tmp_path):
    folder = str(tmp_path / "study")
    flags = dict(TINY, synthetic_examples=24, batch_size=8, epochs=1, deterministic=True,
                 tensorboard=False)
    s = study.make(folder, flags, phases="head,evaluate", axes=["learning_rate=1e-3,1e-2"],
                   seeds="0")
    outcomes = study.run(s, folder, progress=False)
    assert sorted(outcomes.values()) == ["finished", "finished"]
    loaded = []
    for t in grid.expand(s, folder):
        evaluation = runner.read_json_or_none(
            os.path.join(t.trial_dir, "evaluate", "evaluation.json"))
        with np.load(os.path.join(t.trial_dir, "evaluate", "predictions.npz"),
                     allow_pickle=False) as data:
            p = {k: data[k] for k in data.files}
        n = evaluation["test_examples"]
        assert p["probabilities"].shape == (n, 2) and p["labels"].shape == (n,)
        assert np.allclose(p["probabilities"].sum(axis=1), 1.0, atol=1e-5)
        correct = np.argmax(p["probabilities"], axis=1) == p["labels"]
        assert correct.mean() == pytest.approx(evaluation["accuracy"], abs=1e-6)
        assert p["loss"].mean() == pytest.approx(evaluation["loss"], rel=1e-4)
        loaded.append(p)
    # The same examples, in the same order, in every trial: ids, labels, pixels, split.
    for key in ("ids", "labels", "digests", "split"):
        assert np.array_equal(loaded[0][key], loaded[1][key])
    entry = next(e for e in report.write(s, folder)["entries"] if not e["baseline"])
    boot = entry["vs_base"]["bootstrap"]["accuracy"]
    assert boot.examples == len(loaded[0]["ids"]) and boot.seeds == 1
    assert entry["vs_base"]["verdict"] in (stats.TOO_FEW, stats.TIE)  # One seed.


def test_a_damaged_predictions_file_is_named(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    for lr, t in by_value(grid.expand(s, folder)):
        write_trial(t, 0.8, 0.5, correct=[1, 0] * 10)
        if lr == 3e-3 and t.seed == 2:
            with open(os.path.join(t.trial_dir, "evaluate", "predictions.npz"), "wb") as f:
                f.write(b"PK\x03\x04 not a zip")
    text = report.write(s, folder)["markdown"]
    # The evaluate phase's record is damaged: the whole trial is (issue 30 break 6), and
    # the bootstrap pairs the other seeds.
    assert "damaged: evaluate/predictions.npz: damaged (not the arrays evaluate writes)" in text
    assert "(n=2×20)" in rows_of(text, "learning_rate=3e-3")[-1]


@pytest.mark.parametrize("layout", ["carved", "test_folder"])
def test_folder_examples_are_identified_by_their_path(tmp_path, layout, no_network):
    """predictions.npz ids of an image folder: the path relative to the data folder, the
    same when the split comes from the image cache (complete.json keeps them)."""
    from tapefit.flags.config import Config
    from tapefit.input_pipeline.evaluation import load_test_split_with_ids
    from tests.test_input_pipeline import make_split

    root = tmp_path / "data"
    make_split(str(root / "train"), {"cat": 6, "dog": 6}, 1)
    if layout == "test_folder":
        make_split(str(root / "test"), {"cat": 2, "dog": 3}, 2)
    cfg = Config(data_dir=str(root), image_size=32, batch_size=4, image_cache="disk",
                 workdir=str(tmp_path / "work"), phase="evaluate")
    seen = []
    for _ in range(2):  # Decoded (and cached), then read from the image cache.
        ds, size, _, ids = load_test_split_with_ids(cfg)
        labels = [int(y) for _, y in ds.as_numpy_iterator()]
        assert ids is not None and len(ids) == size == len(labels)
        for example_id, label in zip(ids, labels, strict=True):
            assert os.path.isfile(root / example_id)
            assert example_id.split("/")[-2] == ("cat", "dog")[label]
        seen.append(ids)
    assert seen[0] == seen[1]
    if layout == "test_folder":
        assert all(i.startswith("test/") for i in seen[0]) and len(seen[0]) == 5


def test_the_verdict_needs_the_seed_level_test_too(tmp_path):
    """Three seeds whose test-accuracy differences share a sign but spread widely
    (+0.40, +0.05, +0.05): every bootstrap replicate is positive (p < 0.01), the seed-only
    t-test is far from it (p ≈ 0.4): not "better"."""
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    n = 200
    for lr, t in by_value(grid.expand(s, folder)):
        wins = {0: 80, 1: 10, 2: 10}[t.seed] if lr == 3e-3 else 0
        correct = np.zeros(n)
        correct[:100 + wins] = 1  # The baseline gets 100 of 200 right; 3e-3 more.
        write_trial(t, 0.8, correct.mean(), correct=correct)
    entry = next(e for e in report.write(s, folder)["entries"] if not e["baseline"])
    vs = entry["vs_base"]
    assert vs["bootstrap"]["accuracy"].p_value < 0.01
    assert vs["paired"].p_value > 0.2
    assert vs["verdict"] == stats.NO_DIFFERENCE


@pytest.mark.parametrize("config, epoch", [({}, 1), ({"monitor": "val_accuracy"}, 2),
                                           ({"monitor": "val_loss", "ema": 0.99}, 3)])
def test_the_selection_metric_is_read_at_the_epoch_evaluate_scores(tmp_path, config, epoch):
    """best.weights.h5 is the --monitor best epoch (default: lowest val_loss); with --ema
    evaluate scores the final (averaged) weights: the last epoch."""
    phase = tmp_path / "head"
    phase.mkdir()
    (phase / "log.csv").write_text("epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n"
                                   "0,0.5,0.7,0.001,0.60,0.70\n1,0.5,0.7,0.001,0.70,0.40\n"
                                   "2,0.5,0.7,0.001,0.90,0.50\n3,0.5,0.7,0.001,0.80,0.60\n")
    (phase / "config.json").write_text(json.dumps(config))
    metrics = report.trial_metrics(str(tmp_path), ("head",))
    accuracies, losses = [0.60, 0.70, 0.90, 0.80], [0.70, 0.40, 0.50, 0.60]
    assert metrics["val_accuracy"] == accuracies[epoch]
    assert metrics["val_loss"] == losses[epoch]
