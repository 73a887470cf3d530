"""Issue 32: evaluate's interpretation (loops/interpret.py) and a study's per-example flips
(research/flips.py), with exact numbers on hand-made predictions, plus one tiny evaluate
end to end."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from tapefit.flags.config import Config
from tapefit.flags.errors import ConfigError, DataError, RunError
from tapefit.loops import interpret
from tapefit.research import flips, stats

PNGS = ("confusion_matrix.png", "reliability.png", "top_losses.png")


def photos_of(n, size=16):
    images = [np.full((size, size, 3), 10 * i, np.uint8) for i in range(n)]
    return lambda indices: [images[i] for i in indices]


def readable(path):
    with Image.open(path) as image:
        image.load()
        return image.size


# ---- the numbers --------------------------------------------------------------------------------
def test_a_known_two_class_confusion_matrix():
    labels = [0, 0, 0, 0, 1, 1]
    probabilities = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]]
    result = interpret.metrics(labels, probabilities, ["cat", "dog"])
    assert result["confusion_matrix"]["counts"] == [[3, 1], [1, 1]]
    assert result["confusion_matrix"]["row_normalized"] == [[0.75, 0.25], [0.5, 0.5]]
    cat, dog = result["per_class"]
    assert (cat["precision"], cat["recall"], cat["support"]) == (0.75, 0.75, 4)
    assert (dog["precision"], dog["recall"], dog["support"]) == (0.5, 0.5, 2)
    assert cat["f1"] == pytest.approx(0.75) and dog["f1"] == pytest.approx(0.5)
    assert result["macro_avg"]["f1"] == pytest.approx(0.625)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert [(p["true"], p["predicted"], p["count"]) for p in result["most_confused"]] == [
        ("cat", "dog", 1), ("dog", "cat", 1)]


def test_ece_on_a_known_case():
    # Bins of width 1/15: 0.95 is in (14/15, 1], 0.62 in (9/15, 10/15], 0.6 exactly in
    # (8/15, 9/15] (right-closed), 1.0 in the last.
    confidence = [0.95, 0.95, 0.62, 0.62, 0.6, 1.0]
    correct = [1, 0, 1, 1, 0, 1]
    cal = interpret.calibration(confidence, correct)
    counts = [b["count"] for b in cal["bins"]]
    assert len(counts) == 15 and counts[14] == 3 and counts[9] == 2 and counts[8] == 1
    assert sum(counts) == 6
    # |2/3 - 0.9667| * 3/6 + |1 - 0.62| * 2/6 + |0 - 0.6| * 1/6
    expected = (abs(2 / 3 - (0.95 + 0.95 + 1.0) / 3) * 3 + abs(1 - 0.62) * 2 + 0.6) / 6
    assert cal["ece"] == pytest.approx(expected, abs=1e-12)
    assert cal["ece"] == pytest.approx(0.3766666666666667)
    assert cal["mce"] == pytest.approx(0.6)
    assert "15 equal-width bins" in cal["binning"]
    perfect = interpret.calibration([1.0, 1.0, 0.5, 0.5], [1, 1, 1, 0])
    assert perfect["ece"] == pytest.approx(0.0)


def test_mcnemar_on_a_known_table():
    # 8 fixed, 2 broken: two-sided exact p = 2 * P(X >= 8 | n=10, 1/2) = 2 * 56/1024.
    assert stats.mcnemar_exact(8, 2) == pytest.approx(112 / 1024, abs=1e-12)
    assert stats.mcnemar_exact(2, 8) == pytest.approx(112 / 1024, abs=1e-12)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 0) == pytest.approx(2 / 32)


def test_a_three_class_case_writes_every_file(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    probabilities = np.array([[.9, .05, .05], [.62, .28, .1], [.2, .7, .1], [.1, .8, .1],
                              [.5, .4, .1], [.1, .1, .8], [.3, .28, .42], [.1, .65, .25]])
    loss = -np.log(probabilities[np.arange(8), labels])
    ids = [f"test/x/{i}.jpg" for i in range(8)]
    out = str(tmp_path / "evaluate")
    result = interpret.interpret(out, labels, probabilities, loss, ["a", "b", "c"], ids,
                                 photos_of(8), k=3)
    assert result["confusion_matrix"]["counts"] == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]
    assert [row["support"] for row in result["per_class"]] == [3, 2, 3]
    assert result["per_class"][2]["precision"] == 1.0
    assert result["per_class"][2]["recall"] == pytest.approx(2 / 3)
    # The three highest losses, in order: ids 2 (p_true .2), 6 (.42 of c... ) and 7.
    order = np.argsort(-loss, kind="stable")[:3]
    assert [x["id"] for x in result["top_losses"]] == [ids[i] for i in order]
    assert result["top_losses"][0] == {
        "rank": 1, "index": 2, "id": ids[2], "true": "a", "predicted": "b",
        "probability": pytest.approx(0.7), "true_probability": pytest.approx(0.2),
        "loss": pytest.approx(-math.log(0.2))}
    on_disk = json.load(open(os.path.join(out, "interpretation.json")))
    assert on_disk["confusion_matrix"]["counts"] == result["confusion_matrix"]["counts"]
    assert on_disk["calibration"]["ece"] == pytest.approx(result["calibration"]["ece"])
    csv_rows = open(os.path.join(out, "per_class.csv")).read().splitlines()
    assert csv_rows[0] == "class,precision,recall,f1,support"
    assert csv_rows[3].startswith("c,1.000000,0.666667")
    assert open(os.path.join(out, "confusion_matrix.csv")).read().splitlines()[1] == "a,2,1,0"
    for name in PNGS:
        width, height = readable(os.path.join(out, name))
        assert width > 100 and height > 100
    assert not [n for n in os.listdir(out) if ".tmp-" in n]  # Atomic: no temporary left.


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(DataError, match="class 'c' has no example in the test split"):
        interpret.metrics([0, 1, 1], [[.9, .05, .05], [.1, .8, .1], [.2, .7, .1]],
                          ["a", "b", "c"])
    with pytest.raises(DataError, match="--top_losses=0"):
        interpret.top_losses([0], [[0.6, 0.4]], [0.5], ["a", "b"], ["0"], 0)
    with pytest.raises(ConfigError, match="--top_losses=0 must be in"):
        Config(top_losses=0)
    with pytest.raises(ConfigError, match="--interpret_split"):
        Config(interpret_split="train")
    with pytest.raises(RunError, match="no predictions in .*run --phase=evaluate"):
        interpret.read_predictions(str(tmp_path / "evaluate" / "predictions.npz"))
    for error in (DataError, RunError):
        assert "\n" not in str(error("x"))


def test_dataset_photos_decode_only_the_positions_asked_for():
    positions = np.arange(12, dtype=np.float32)[:, None, None, None]  # Pixel = position.
    batches = [(np.broadcast_to(positions[b:b + 4], (4, 8, 8, 3)), np.zeros(4))
               for b in range(0, 12, 4)]
    got = interpret.dataset_photos(batches)([9, 2])
    assert [int(image[0, 0, 0]) for image in got] == [9, 2]
    assert got[0].dtype == np.uint8
    with pytest.raises(RunError, match="the split has 12 examples"):
        interpret.dataset_photos(batches)([20])


@pytest.mark.parametrize("source", ["folders", "synthetic", "tfds"])
def test_photos_are_the_scored_ones_for_every_source(source, tmp_path, monkeypatch, no_network):
    """split_photos (a study's flips, reinterpret) gives the pixels the test split holds:
    the files the ids name (a 3-class folder), or the split re-read by position."""
    import tensorflow_datasets as tfds

    from tapefit.input_pipeline import tfds_source
    from tapefit.input_pipeline.evaluation import load_test_split_with_ids
    from tapefit.loops.predictions import split_description
    from tests.test_input_pipeline import make_split
    flags = {"synthetic": {"dataset": "synthetic", "synthetic_examples": 12},
             "tfds": {"dataset": "cats_vs_dogs", "tfds_data_dir": str(tmp_path / "tfds")},
             "folders": {"data_dir": str(tmp_path / "data")}}[source]
    if source == "folders":
        make_split(str(tmp_path / "data" / "train"), {"a": 3, "b": 3, "c": 3}, 1)
        make_split(str(tmp_path / "data" / "test"), {"a": 2, "b": 1, "c": 2}, 2)
    monkeypatch.setattr(tfds_source, "network_available", lambda hosts: True)
    cfg = Config(**flags, image_size=32, image_cache="off", workdir=str(tmp_path / "w"))
    with tfds.testing.mock_data(num_examples=6):
        test, size, classes, ids = load_test_split_with_ids(cfg)
        images = [x for x, _ in test.as_numpy_iterator()]
        ids = list(ids) if ids is not None else [str(i) for i in range(size)]
        got = interpret.split_photos(split_description(cfg), 32, ids)([size - 1, 0])
    if source == "folders":
        assert len(classes) == 3 and ids[0].startswith("test/a/")
    assert np.array_equal(got[0], images[size - 1]) and np.array_equal(got[1], images[0])


# ---- a study's flips -----------------------------------------------------------------------------
def _predictions(correct, labels=None):
    correct = np.asarray(correct, bool)
    n = len(correct)
    return {"ids": np.asarray([str(i) for i in range(n)]),
            "labels": np.zeros(n, np.int64) if labels is None else np.asarray(labels),
            "correct": correct.astype(np.float64), "loss": np.where(correct, 0.1, 2.0),
            "split": '{"dataset": "synthetic"}', "image_size": 16}


def test_flips_per_seed_and_consistently(tmp_path):
    base = {0: [0, 0, 1, 1, 0, 1], 1: [0, 0, 1, 1, 1, 1], 2: [0, 1, 1, 0, 0, 1]}
    conf = {0: [1, 1, 1, 0, 0, 1], 1: [1, 0, 1, 0, 1, 1], 2: [1, 1, 0, 0, 0, 1]}
    store = {f"{side}{s}": _predictions(v) for side, d in (("a", conf), ("b", base))
             for s, v in d.items()}
    found = flips.compare({s: f"a{s}" for s in conf}, {s: f"b{s}" for s in base}, store.get)
    assert [(r["seed"], r["fixed"], r["broken"]) for r in found["per_seed"]] == [
        (0, 2, 1), (1, 1, 1), (2, 1, 1)]
    assert found["per_seed"][0]["p_mcnemar"] == pytest.approx(1.0)
    assert (found["fixed"], found["broken"]) == (4, 3)
    by_id = {p["id"]: p for p in found["photos"]}
    assert by_id["0"]["fixed_on"] == 3 and by_id["0"]["consistent"] == "fixed"
    assert by_id["3"]["broken_on"] == 2 and by_id["3"]["consistent"] == "broken"
    assert by_id["1"]["consistent"] == ""  # Fixed on 1 seed of 3.
    assert (found["consistently_fixed"], found["consistently_broken"]) == (1, 1)
    files = flips.write(str(tmp_path), found, "a vs b", ["cat", "dog"])
    assert readable(str(tmp_path / "flips.png"))[0] > 100
    assert "0,cat,3,0,fixed" in open(tmp_path / "flips.csv").read()
    text = "\n".join(flips.section(found, "#2 x", "#1 y", files))
    assert "[flips.png](flips.png)" in text and "| 0 | 2 | 1 |" in text
    assert "Consistently fixed: 1 photos; consistently broken: 1." in text


def test_flips_refuse_different_labels_and_say_when_nothing_pairs():
    store = {"a": _predictions([1, 0], labels=[0, 1]), "b": _predictions([1, 0], labels=[1, 1])}
    assert "different labels" in flips.compare({0: "a"}, {0: "b"}, store.get)["problem"]
    assert flips.compare({0: "a"}, {1: "b"}, store.get) is None
    assert "nothing to pair" in "\n".join(flips.section(None, "x", "y", None))


def test_the_study_report_links_the_flips_of_the_selected_configuration(tmp_path):
    from test_study_report import by_value, make, write_trial

    from tapefit.research import grid, report
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    base = np.array([1, 0, 0, 1, 1, 0, 1, 0, 1, 1], float)
    better = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 1], float)  # Fixes 1, 2, 5; breaks 4.
    for lr, t in by_value(grid.expand(s, folder)):
        c = better if lr == 3e-3 else base
        write_trial(t, 0.9 if lr == 3e-3 else 0.7, float(c.mean()), correct=c)
    text = report.write(s, folder)["markdown"]
    assert "## Per-example flips: #2 learning_rate=3e-3 against the baseline" in text
    assert text.count(f"| 3 | 1 | 5 | 1 | {stats.mcnemar_exact(3, 1):.3f} |") == 3
    assert "Consistently fixed: 3 photos; consistently broken: 1." in text
    assert "[flips.png](flips.png)" in text
    assert readable(os.path.join(folder, "flips.png"))[0] > 100



def test_a_pair_the_user_names_gets_its_own_flips_kept_in_sweep_json(tmp_path):
    """--flips='A vs B' (issue 32: "and any pair the user names"): its own section and
    files, the default section unchanged; kept in the study's definition; a bad pair is
    one ConfigError."""
    from test_study_report import by_value, make, write_trial

    from tapefit.flags.config import ConfigError
    from tapefit.research import grid, report
    from tapefit.research import study as study_lib
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3,1e-2"], seeds="0,1,2")
    s = study_lib.with_flips(s, folder, ["learning_rate=1e-2 vs learning_rate=3e-3"])
    assert study_lib.load(folder).flips == s.flips  # Kept in sweep.json,
    plain, _ = make(tmp_path / "again", ["learning_rate=1e-3,3e-3,1e-2"], seeds="0,1,2")
    assert study_lib._with_saved_flips(plain, folder).flips == s.flips  # also by a re-run.
    base = np.array([1, 0, 0, 1, 1, 0, 1, 0, 1, 1], float)
    better = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 1], float)
    best = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 0], float)  # vs better: fixes 4, 7; breaks 9.
    for lr, t in by_value(grid.expand(s, folder)):
        c = {1e-3: base, 3e-3: better, 1e-2: best}[lr]
        write_trial(t, {1e-3: 0.7, 3e-3: 0.8, 1e-2: 0.9}[lr], float(c.mean()), correct=c)
    text = report.write(s, folder)["markdown"]
    assert "## Per-example flips: #3 learning_rate=0.01 against the baseline (#1 " in text
    assert "## Per-example flips: #3 learning_rate=0.01 against #2 learning_rate=3e-3" in text
    assert text.count(f"| 2 | 1 | 7 | 0 | {stats.mcnemar_exact(2, 1):.3f} |") == 3
    assert "[flips-3-vs-2.png](flips-3-vs-2.png)" in text
    assert readable(os.path.join(folder, "flips-3-vs-2.png"))[0] > 100
    assert os.path.isfile(os.path.join(folder, "flips-3-vs-2.csv"))
    for bad, fragment in [("learning_rate=1e-2", "CONFIGURATION vs BASELINE"),
                          ("learning_rate=5 vs learning_rate=1e-3", "--flips="),
                          ("learning_rate=1e-3 vs learning_rate=1e-3", "twice")]:
        with pytest.raises(ConfigError, match=fragment):
            grid.parse_flips(s.axes, [bad])

# ---- end to end ----------------------------------------------------------------------------------
def test_a_tiny_evaluate_interprets_what_it_scored(tiny_config, capsys):
    from tapefit.loops import phases
    cfg = tiny_config.replace(epochs=1, synthetic_examples=24)
    phases.run(cfg)
    result = phases.run(cfg.replace(phase="evaluate", top_losses=4, gradcam=True))
    run_dir = os.path.join(cfg.workdir, "evaluate")
    with np.load(os.path.join(run_dir, "predictions.npz")) as data:
        labels, probabilities, loss = data["labels"], data["probabilities"], data["loss"]
        ids = data["ids"].tolist()
    found = json.load(open(os.path.join(run_dir, "interpretation.json")))
    evaluation = json.load(open(os.path.join(run_dir, "evaluation.json")))
    predicted = probabilities.argmax(axis=1)
    counts = np.zeros((2, 2), int)
    np.add.at(counts, (labels, predicted), 1)
    assert found["confusion_matrix"]["counts"] == counts.tolist()
    assert found["examples"] == len(labels) == evaluation["test_examples"]
    assert found["accuracy"] == pytest.approx(evaluation["accuracy"], abs=1e-6)
    top = np.argsort(-loss, kind="stable")[:4]
    assert [x["id"] for x in found["top_losses"]] == [ids[i] for i in top]
    assert found["gradcam"]
    assert evaluation["interpretation"]["ece"] == pytest.approx(found["calibration"]["ece"])
    assert result["interpretation"]["split"] == "test"
    for name in PNGS:
        assert readable(os.path.join(run_dir, name))[0] > 100
    events = os.listdir(os.path.join(run_dir, "tensorboard"))
    assert any(n.startswith("events.out.tfevents.") for n in events)
    # On validation, without touching the test interpretation's folder.
    phases.run(cfg.replace(phase="evaluate", interpret_split="validation", top_losses=2,
                           tensorboard=False))
    validation = json.load(open(os.path.join(run_dir, "validation", "interpretation.json")))
    assert validation["split"] == "validation" and len(validation["top_losses"]) == 2
    with np.load(os.path.join(run_dir, "validation", "predictions.npz")) as data:
        assert validation["examples"] == len(data["labels"])
    assert readable(os.path.join(run_dir, "validation", "top_losses.png"))[0] > 100
    # Again from predictions.npz alone: the synthetic photos re-read by position.
    assert interpret.main([cfg.workdir, "3"]) == 0
    again = json.load(open(os.path.join(run_dir, "interpretation.json")))
    assert [x["id"] for x in again["top_losses"]] == [ids[i] for i in top[:3]]
    assert again["confusion_matrix"] == found["confusion_matrix"]
    capsys.readouterr()
    assert interpret.main([os.path.join(cfg.workdir, "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no predictions in ") and "\n" not in err



def test_interpreting_validation_does_not_touch_the_test_split(tiny_config):
    """--interpret_split=validation: a look at validation only: the test split is not
    scored (no evaluation.json, no test predictions), the validation files are written."""
    from tapefit.loops import console, phases
    cfg = tiny_config.replace(epochs=1, synthetic_examples=24)
    phases.run(cfg)
    result = phases.run(cfg.replace(phase="evaluate", interpret_split="validation",
                                    top_losses=2, tensorboard=False))
    run_dir = os.path.join(cfg.workdir, "evaluate")
    assert sorted(os.listdir(run_dir)) == ["validation"]
    found = json.load(open(os.path.join(run_dir, "validation", "interpretation.json")))
    assert found["split"] == "validation" and "accuracy" not in result
    assert json.load(open(os.path.join(run_dir, "validation", "summary.json")))[
        "interpretation"]["ece"] == pytest.approx(found["calibration"]["ece"])
    assert "the test split not scored" in console.phase_summary(result)
