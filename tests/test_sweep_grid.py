"""sweep.py without training: axes, trial ids, shards, errors, statistics, the report.

Fast (no TensorFlow model is built); the end-to-end runs are in test_sweep_e2e.py.
"""
import csv
import hashlib
import json
import math
import os
import sys

import numpy as np
import pytest

from tapefit.flags.config import Config
from tapefit.flags.errors import ConfigError
from tapefit.research import grid, report, runner, stats, study

TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 32,
        "dataset": "synthetic", "epochs": 2}


def make(tmp_path, axes, seeds="0,1", baseline=None, phases="head,finetune,evaluate",
         flags=None, sweep_file=None):
    return study.make(str(tmp_path / "study"), dict(TINY, **(flags or {})), phases=phases,
                      axes=axes, seeds=seeds, baseline=baseline, sweep_file=sweep_file)


# ---- grid expansion and ids ------------------------------------------------------------------

def test_grid_expands_axes_times_seeds_seed_major(tmp_path):
    s = make(tmp_path, ["learning_rate=1e-3,3e-3", "unfreeze_from=conv_dw_12,conv_dw_13"],
             seeds="0,1,2")
    trials = grid.expand(s, str(tmp_path / "study"))
    assert len(trials) == 2 * 2 * 3
    assert [t.seed for t in trials] == [0] * 4 + [1] * 4 + [2] * 4
    assert [dict(t.assignment) for t in trials[:4]] == [
        {"learning_rate": 1e-3, "unfreeze_from": "conv_dw_12"},
        {"learning_rate": 1e-3, "unfreeze_from": "conv_dw_13"},
        {"learning_rate": 3e-3, "unfreeze_from": "conv_dw_12"},
        {"learning_rate": 3e-3, "unfreeze_from": "conv_dw_13"}]
    assert len({t.trial_id for t in trials}) == 12
    assert len({t.group_id for t in trials}) == 4
    cfg = trials[5].config("finetune")
    assert (cfg.seed, cfg.learning_rate, cfg.unfreeze_from, cfg.phase) == (
        1, 1e-3, "conv_dw_13", "finetune")
    assert cfg.workdir == os.path.join(str(tmp_path / "study"), "trials", trials[5].trial_id)
    assert cfg.feature_cache_dir == os.path.join(str(tmp_path / "study"), "feature_cache")
    assert cfg.feature_cache == "disk"  # auto -> disk: shared by the trials.
    assert cfg.image_cache_dir == os.path.join(str(tmp_path / "study"), "image_cache")


def test_trial_id_is_readable_and_hashes_the_non_default_flags(tmp_path):
    s = make(tmp_path, ["learning_rate=3e-3", "unfreeze_from=conv_dw_12"], seeds="0")
    trial = grid.expand(s, str(tmp_path / "study"))[0]
    # Independently: sha256 of the sorted flags that differ from train.py's defaults.
    # (verbose, workdir, seed, ... change no result: not part of the id.)
    expected = dict(TINY, learning_rate=3e-3, unfreeze_from="conv_dw_12")
    defaults = Config()
    expected = {k: v for k, v in expected.items() if getattr(defaults, k) != v}
    digest = hashlib.sha256(json.dumps(sorted(expected.items())).encode()).hexdigest()[:8]
    assert trial.trial_id == f"lr3e-3_unfreeze-conv_dw_12-s0-{digest}"
    assert trial.group_id == f"lr3e-3_unfreeze-conv_dw_12-{digest}"


def test_ids_are_stable_when_values_or_default_axes_are_added(tmp_path):
    before = grid.expand(make(tmp_path, ["learning_rate=1e-3,3e-3"]), "s")
    after = grid.expand(make(tmp_path, ["learning_rate=1e-3,3e-3,1e-2"]), "s")
    assert {t.trial_id for t in before} < {t.trial_id for t in after}
    assert len(after) - len(before) == 2
    # A new axis whose values include the current one (dropout 0.2 is the default).
    widened = grid.expand(make(tmp_path, ["learning_rate=1e-3,3e-3", "dropout=0.2,0.5"]), "s")
    assert {t.trial_id for t in before} < {t.trial_id for t in widened}
    # Another base flag is another trial.
    other = grid.expand(make(tmp_path, ["learning_rate=1e-3,3e-3"], flags={"epochs": 3}), "s")
    assert not {t.trial_id for t in before} & {t.trial_id for t in other}


def test_per_phase_and_paired_axes(tmp_path):
    s = make(tmp_path, ["head.learning_rate/finetune.learning_rate=1e-3/1e-4,3e-3/3e-4",
                        "finetune.epochs=1"], seeds="0")
    first, second = grid.expand(s, "s")
    assert (first.config("head").learning_rate, first.config("finetune").learning_rate) == (
        1e-3, 1e-4)
    assert (second.config("head").learning_rate, second.config("finetune").learning_rate) == (
        3e-3, 3e-4)
    assert (second.config("head").epochs, second.config("finetune").epochs) == (2, 1)
    assert second.config("evaluate").learning_rate is None
    assert s.baseline == ((1e-3, 1e-4), (1,))  # Default: the first value of every axis.
    s = make(tmp_path, ["head.learning_rate/finetune.learning_rate=1e-3/1e-4,3e-3/3e-4"],
             baseline="head.learning_rate/finetune.learning_rate=3e-3/3e-4")
    assert s.baseline == ((3e-3, 3e-4),)
    s = make(tmp_path, ["head.learning_rate/finetune.learning_rate=1e-3/1e-4,3e-3/3e-4"],
             baseline="finetune.learning_rate=3e-4")
    assert s.baseline == ((3e-3, 3e-4),)


def test_values_are_parsed_with_the_flag_type(tmp_path):
    s = make(tmp_path, ["early_stopping=true,false", "unfreeze_from=none,conv_dw_13",
                        "batch_size=8"], seeds="0")
    values = [dict(t.assignment) for t in grid.expand(s, "s")]
    assert values[0] == {"early_stopping": True, "unfreeze_from": None, "batch_size": 8}
    assert values[3] == {"early_stopping": False, "unfreeze_from": "conv_dw_13", "batch_size": 8}


def test_sweep_file_is_the_command_line_in_json(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"phases": ["head", "evaluate"],
                                "axes": {"learning_rate": [1e-3, 3e-3],
                                         "head.epochs/dropout": [[1, 0.1], [2, 0.3]]},
                                "seeds": [0, 2], "baseline": {"learning_rate": 3e-3,
                                                              "head.epochs/dropout": "2/0.3"},
                                "flags": {"synthetic_examples": 48}}))
    from_file = make(tmp_path, [], seeds=None, phases=None, sweep_file=str(path))
    from_cli = make(tmp_path, ["learning_rate=1e-3,3e-3", "head.epochs/dropout=1/0.1,2/0.3"],
                    seeds="0,2", phases="head,evaluate", flags={"synthetic_examples": 48},
                    baseline="learning_rate=3e-3,head.epochs/dropout=2/0.3")
    assert from_file == from_cli
    # sweep.json (what --report_only reads back) holds the same study.
    folder = tmp_path / "saved"
    study.save(from_cli, str(folder))
    assert study.load(str(folder)) == dataclasses_replace_workdir(from_cli, str(folder))


def dataclasses_replace_workdir(s, workdir):
    import dataclasses
    return dataclasses.replace(s, base=s.base.replace(workdir=workdir))


@pytest.mark.parametrize("axes, kwargs, message", [
    (["nosuchflag=1,2"], {}, "unknown flag 'nosuchflag'"),
    (["learning_rate=fast"], {}, "not a valid float"),
    (["learning_rate="], {}, "empty grid"),
    (["epochs=1,2,1"], {}, "lists a value twice"),
    (["seed=1,2"], {}, "pass --seeds"),
    (["head.image_size=32,64"], {}, "same in every phase"),
    (["learning_rate/epochs=1e-3"], {}, "one value per name"),
    (["batch_size=0,8"], {}, r"--batch_size=0 must be in \[1, 2\*\*16\]"),
    (["learning_rate=1e-3,3e-3"], {"baseline": "learning_rate=1e-2"}, "not in the grid"),
    (["learning_rate=1e-3,3e-3"], {"baseline": "epochs=3"}, "not an axis"),
    (["learning_rate=1e-3"], {"seeds": ""}, "empty grid"),
    (["learning_rate=1e-3"], {"phases": "finetune,head"}, "in the order"),
    (["lr=1e-3"], {}, "unknown flag 'lr'"),
    (["learning_rate=1e-3", "learning_rate=3e-3"], {}, "on two axes"),
])
def test_bad_studies_are_one_line_errors(tmp_path, axes, kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        make(tmp_path, axes, **kwargs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_shards_cover_every_trial_exactly_once(tmp_path, count):
    s = make(tmp_path, ["learning_rate=1e-3,3e-3,1e-2", "dropout=0.1,0.2"], seeds="0,1,2")
    trials = grid.expand(s, "s")
    shards = [grid.shard(trials, i, count) for i in range(count)]
    ids = [t.trial_id for part in shards for t in part]
    assert sorted(ids) == sorted(t.trial_id for t in trials)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # Deterministic: the same slice every time.
    assert [t.trial_id for t in grid.shard(grid.expand(s, "s"), count - 1, count)] == [
        t.trial_id for t in shards[-1]]


@pytest.mark.parametrize("text", ["1/1", "2/1", "-1/2", "a/b", "1", "0/0"])
def test_bad_shards(text):
    with pytest.raises(ConfigError, match="0 <= I < N"):
        grid.parse_shard(text)


def test_good_shard():
    assert grid.parse_shard("3/8") == (3, 8)


# ---- statistics against values computed by hand -------------------------------------------

VALUES = [0.80, 0.82, 0.85, 0.83]  # seeds 0..3
BASELINE = [0.78, 0.80, 0.84, 0.80]
T_975_DF3 = 3.182446305284263  # Student t quantile, 0.975, 3 degrees of freedom (tables).


def t_cdf_df3(t):
    """Closed form of Student's t CDF for 3 degrees of freedom."""
    return 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi


def test_summary_matches_hand_computation():
    n = len(VALUES)
    mean = sum(VALUES) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in VALUES) / (n - 1))
    half = T_975_DF3 * std / math.sqrt(n)
    s = stats.summarize(VALUES)
    assert s.n == 4
    assert s.mean == pytest.approx(0.825, abs=1e-12)
    assert s.std == pytest.approx(std, rel=1e-9) and std == pytest.approx(0.0208167, rel=1e-5)
    assert (s.low, s.high) == pytest.approx((mean - half, mean + half), rel=1e-9)
    one = stats.summarize([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.std)


def test_paired_difference_matches_hand_computation():
    d = [a - b for a, b in zip(VALUES, BASELINE, strict=True)]  # 0.02, 0.02, 0.01, 0.03
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    p = 2 * (1 - t_cdf_df3(abs(t)))
    half = T_975_DF3 * sd / math.sqrt(n)
    result = stats.paired(dict(enumerate(VALUES)), dict(enumerate(BASELINE)))
    assert result.n == 4
    assert result.mean == pytest.approx(0.02, abs=1e-12)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half), rel=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-6)
    assert 0.01 < result.p_value < 0.05
    # Only the seeds both have count; a pairing is not a two-sample comparison.
    partial = stats.paired({0: 0.9, 1: 0.8, 5: 0.1}, {0: 0.85, 1: 0.7, 2: 0.6})
    assert partial.n == 2 and partial.mean == pytest.approx(0.075)


# ---- the report from trial folders written by hand -------------------------------------------

def fake_trial(trial, test_accuracy, val_losses, status="finished", reason=None):
    folder = trial.trial_dir
    for phase in ("head", "finetune"):
        if phase not in trial.phases:
            continue
        os.makedirs(os.path.join(folder, phase), exist_ok=True)
        with open(os.path.join(folder, phase, "log.csv"), "w") as f:
            f.write("epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n")
            for epoch, loss in enumerate(val_losses):
                f.write(f"{epoch},0.5,0.7,0.001,{test_accuracy},{loss}\n")
        open(os.path.join(folder, phase, "final.weights.h5"), "w").close()
    if "evaluate" in trial.phases and status == "finished":
        os.makedirs(os.path.join(folder, "evaluate"), exist_ok=True)
        with open(os.path.join(folder, "evaluate", "evaluation.json"), "w") as f:
            json.dump({"accuracy": test_accuracy, "loss": 0.5, "test_examples": 20}, f)
    runner.write_trial_json(folder, trial.to_dict())
    content = {"status": status, "wall_s": {"head": 1.5}}
    if reason:
        content.update(reason=reason, phase="head")
    with open(os.path.join(folder, runner.STATUS_JSON), "w") as f:
        json.dump(content, f)


def test_report_tables(tmp_path):
    s = make(tmp_path, ["learning_rate=1e-3,3e-3,1e-2"], seeds="0,1,2,3",
             baseline="learning_rate=3e-3", phases="head,evaluate")
    folder = str(tmp_path / "study")
    trials = grid.expand(s, folder)
    accuracy = {1e-3: VALUES, 3e-3: BASELINE, 1e-2: [0.5, 0.6, 0.55, 0.52]}
    for t in trials:
        lr = dict(t.assignment)["learning_rate"]
        if lr == 1e-2 and t.seed == 3:
            fake_trial(t, 0.0, [float("nan")], status="failed", reason="diverged: boom")
        else:
            fake_trial(t, accuracy[lr][t.seed], [0.9, 0.6 + 0.01 * t.seed, 0.7])
    result = report.write(s, folder)
    with open(os.path.join(folder, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    row = next(r for r in rows if r["learning_rate"] == "1e-3" and r["seed"] == "2")
    assert float(row["test_accuracy"]) == pytest.approx(0.85)
    assert float(row["head_best_val_loss"]) == pytest.approx(0.62)
    assert float(row["head_final_val_loss"]) == pytest.approx(0.7)
    assert row["head_epochs"] == "3" and row["status"] == "finished"
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["reason"] == "diverged: boom" and failed["seed"] == "3"
    entries = {e["label"]: e for e in result["entries"]}
    best = entries["learning_rate=1e-3"]
    assert best["test_accuracy"].n == 4
    assert best["test_accuracy"].mean == pytest.approx(np.mean(VALUES))
    assert best["vs_base"]["paired"].mean == pytest.approx(0.02)
    assert entries["learning_rate=0.01"]["test_accuracy"].n == 3  # The failed one is out.
    text = open(os.path.join(folder, "results.md")).read()
    selection, against_base = [line for line in text.splitlines() if "learning_rate=1e-3" in line
                               and line.startswith("|")]
    # Four seeds: no exact test over seeds reaches 2α/3 (issue 31: the smallest p of 4
    # seeds is 2/16), so no ★, and the report says how many seeds could.
    assert "★ best" not in selection and "+0.0200" in against_base
    assert "no exact test can reach" in text
    base_line = next(line for line in text.splitlines() if "| learning_rate=3e-3" in line)
    assert "baseline" in base_line
    # 1e-3 (0.825 ± 0.033) and 3e-3 (0.805 ± 0.041): separate intervals overlap, but the
    # paired comparison (every seed +0.01..+0.03) separates them: no warning (issue 22).
    assert "overlaps" not in text
    assert "diverged: boom" in text
    assert os.path.getsize(os.path.join(folder, "results.png")) > 1000


def test_no_warning_when_the_best_is_clearly_separated(tmp_path):
    # Six seeds: the fewest whose exact sign-flip test can reach 0.05 (2/2^6).
    s = make(tmp_path, ["learning_rate=1e-3,3e-3"], seeds="0,1,2,3,4,5", phases="head,evaluate")
    folder = str(tmp_path / "study")
    for t in grid.expand(s, folder):
        high = dict(t.assignment)["learning_rate"] == 1e-3
        fake_trial(t, (0.9 if high else 0.6) + 0.001 * t.seed, [0.5])
    text = report.write(s, folder)["markdown"]
    assert "Warning" not in text
    assert "★ best, baseline" in text


def test_divergence_is_read_from_the_phase_summary_not_its_log(tmp_path):
    """The phase's own record decides (summary.json, final weights): a finished phase
    whose log.csv was truncated or holds a non-finite value is not "diverged"."""
    phase = tmp_path / "head"
    phase.mkdir()
    (phase / "summary.json").write_text(json.dumps(
        {"stop_reason": "nan", "stopped_epoch": 2, "files": {"final": None}}))
    assert "diverged: a non-finite loss or weight in epoch 2 of the head phase" in \
        runner.divergence(str(tmp_path), "head")
    # Finished: final weights, a log cut mid-row (a non-finite-looking value).
    (phase / "summary.json").write_text(json.dumps(
        {"stop_reason": "finished", "files": {"final": str(phase / "final.weights.h5")}}))
    (phase / "final.weights.h5").write_bytes(b"x")
    (phase / "log.csv").write_text("epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n"
                                   "0,0.5,0.7,0.001,0.5,0.69\n1,0.5,0.6")
    assert runner.divergence(str(tmp_path), "head") is None
    (phase / "log.csv").write_text("epoch,accuracy,loss,learning_rate,val_accuracy,val_loss\n"
                                   "0,0.5,nan,0.001,0.5,inf\n")
    assert runner.divergence(str(tmp_path), "head") is None


def test_a_trial_locked_elsewhere_is_skipped(tmp_path):
    from tapefit.loops.rundir.run_lock import RunLock
    folder = tmp_path / "trial"
    folder.mkdir()
    with RunLock(str(folder / runner.LOCK_FILE), what="sweep trial"):
        outcome = runner.run_trial(str(folder), ["head"], {"head": None})
    assert outcome == runner.ELSEWHERE
    assert os.listdir(folder) == []


def test_parallel_workers_run_each_trial_once(tmp_path):
    """The orchestration of --parallel with stand-in workers (no TensorFlow)."""
    folders = [str(tmp_path / f"t{i}") for i in range(5)]
    script = ("import json,os,sys; d=sys.argv[1]; n=int(os.path.basename(d)[1:]);"
              "open(os.path.join(d,'ran'),'a').write('x');"
              "sys.exit(75) if n==3 else None;"
              "sys.exit(2) if n==4 else None;"
              "json.dump({'status':'finished'},open(os.path.join(d,'status.json'),'w'))")
    outcomes = {}
    runner.run_parallel(folders, 2, lambda d: [sys.executable, "-c", script, d],
                        lambda d, o: outcomes.__setitem__(os.path.basename(d), o))
    assert outcomes == {"t0": "finished", "t1": "finished", "t2": "finished",
                        "t3": runner.ELSEWHERE, "t4": "failed"}
    assert all(open(os.path.join(d, "ran")).read() == "x" for d in folders)
    assert "exited with code 2" in runner.read_status(folders[4])["reason"]


def test_architecture_fields_match_train_lib():
    """grid keeps a TensorFlow-free copy of train_lib's list."""
    from tapefit.loops import train_lib
    assert set(grid.ARCHITECTURE_FIELDS) == set(train_lib.ARCHITECTURE_FIELDS)


def test_the_readme_sweep_file_is_valid(tmp_path):
    """The sweep file of the README's research section (README.md once it is pasted there)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md")).read()
    if "## Comparative research" not in text:
        text = open(os.path.join(root, "research", "README_SECTION.md")).read()
    section = text.split("## Comparative research", 1)[1]
    block = section.split("```json\n", 1)[1].split("```", 1)[0]
    (tmp_path / "study.json").write_text(block)
    s = study.make(str(tmp_path / "study"), {}, sweep_file=str(tmp_path / "study.json"))
    assert len(grid.expand(s, "s")) == 2 * 2 * 5
    assert s.baseline == ((1e-3, 1e-4), ("block5",))
