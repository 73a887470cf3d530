"""The report's calibrated claims (issue 31), from trial folders written by hand (no
training): no ★ on a degenerate statistic, "identical" only for bitwise-identical
predictions, the seeds-needed sentence, the runner-up on test, results.png."""
import os

import numpy as np
from PIL import Image

from tapefit.research import grid, report, stats
from tests.test_study_report import by_value, make, rows_of, write_trial


def test_the_degenerate_triple_gets_no_star_and_says_seeds_cannot_reach_alpha(tmp_path):
    """Equal one-photo differences over 3 seeds: the t-test's p is 0, no exact test can
    reach 0.05 on 3 seeds; no ★, and the report says so."""
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="2,6,7")
    for lr, t in by_value(grid.expand(s, folder)):
        base = 0.5 + 0.01 * t.seed
        write_trial(t, base + (1 / 150 if lr == 1e-3 else 0.0), 0.7)
    result = report.write(s, folder)
    assert not any(e["best"] for e in result["entries"])
    text = result["markdown"]
    assert "★" not in "\n".join(rows_of(text, "learning_rate"))
    assert "with 3 seeds no exact test can reach 0.05" in text
    assert "6 seeds can" in text


def _tie_study(tmp_path, same_predictions):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2")
    n = 20
    for lr, t in by_value(grid.expand(s, folder)):
        correct = np.zeros(n)
        correct[:10 + t.seed] = 1
        if lr == 3e-3 and not same_predictions:
            correct = correct[::-1].copy()  # As many right, other photos.
        write_trial(t, 0.6 + 0.01 * t.seed, float(correct.mean()), correct=correct)
    return report.write(s, folder)["markdown"]


def test_bitwise_identical_predictions_are_identical_and_more_seeds_cannot_help(tmp_path):
    text = _tie_study(tmp_path, same_predictions=True)
    assert "identical predictions" in text and "more seeds cannot help" in text


def test_equal_accuracy_with_other_predictions_is_not_called_identical(tmp_path):
    text = _tie_study(tmp_path, same_predictions=False)
    assert "equal test accuracy on every seed" in text
    assert "equal validation accuracy on every seed" in text
    assert "identical" not in text


def test_no_difference_shown_says_how_many_seeds(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2,3")
    spread = {0: 0.01, 1: 0.03, 2: -0.005, 3: 0.02}
    for lr, t in by_value(grid.expand(s, folder)):
        write_trial(t, 0.7, 0.7 + (spread[t.seed] if lr == 3e-3 else 0.0) + 0.01 * t.seed)
    result = report.write(s, folder)
    line = next(x for x in result["markdown"].splitlines() if x.startswith("How many seeds:"))
    needed = int(line.split("about ")[1].split(" seeds")[0])
    entry = next(e for e in result["entries"] if not e["baseline"])
    assert needed == stats.seeds_needed(entry["vs_base"]["paired"].differences, alpha=0.05)
    assert needed >= 6 and "80 % power" in line


def test_the_selected_configuration_against_the_runner_up_and_the_figure(tmp_path):
    s, folder = make(tmp_path, ["learning_rate=1e-3,3e-3,1e-2"], seeds="0,1,2")
    rng = np.random.default_rng(3)
    for lr, t in by_value(grid.expand(s, folder)):
        c = rng.random(40) < {1e-3: 0.6, 3e-3: 0.8, 1e-2: 0.7}[lr]
        write_trial(t, {1e-3: 0.6, 3e-3: 0.8, 1e-2: 0.7}[lr] + 0.01 * t.seed,
                    float(c.mean()), correct=c)
    text = report.write(s, folder)["markdown"]
    line = next(x for x in text.splitlines() if x.startswith("Against the runner-up"))
    assert "#2 learning_rate=3e-3" in line and "#3 learning_rate=0.01" in line
    assert "two-level bootstrap" in line
    assert "p sign-flip (Holm)" in text
    with Image.open(os.path.join(folder, "results.png")) as image:
        image.load()
        assert image.size[0] > 1000
