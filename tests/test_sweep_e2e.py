"""sweep.py end to end on tiny runs (MobileNet alpha 0.25, no weights, 32 px synthetic
images, 1 epoch): seeds 0-3, skipping finished trials, adding values, the shared
feature cache, a failing trial, HParams files, and the exact resume of a trial killed
mid-run by SIGKILL."""
import csv
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tapefit.research import grid, report, runner, study
from tests.conftest import h5_datasets as weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": 32,
        "dataset": "synthetic", "synthetic_examples": 24, "batch_size": 8, "epochs": 1,
        "deterministic": True, "tensorboard": False}


@pytest.fixture
def calls(monkeypatch):
    """Every phases.run call, as (trial id, phase)."""
    from tapefit.loops import phases
    real, seen = phases.run, []

    def run(cfg):
        seen.append((os.path.basename(cfg.workdir), cfg.phase))
        return real(cfg)

    monkeypatch.setattr(phases, "run", run)
    return seen


def sweep(folder, axes, seeds, phases="head,evaluate", **flags):
    s = study.make(folder, dict(TINY, **flags), phases=phases, axes=axes, seeds=seeds)
    return s, study.run(s, folder, progress=False)


def cache_files(folder):
    """{file: (size, mtime_ns)} of every feature-cache file of the study."""
    out = {}
    for path in glob.glob(os.path.join(folder, "feature_cache", "**", "*"), recursive=True):
        if os.path.isfile(path):
            st = os.stat(path)
            out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return out


def test_seeds_skip_add_values_shared_cache_and_hparams(tmp_path, calls):
    folder = str(tmp_path / "study")
    s, outcomes = sweep(folder, ["learning_rate=1e-3"], "0,1,2,3")
    assert sorted(outcomes.values()) == ["finished"] * 4, outcomes
    trials = grid.expand(s, folder)
    # Each phase runs in its (shared) run folder, linked from the trial.
    assert sorted(calls) == sorted((os.path.basename(t.shared_dir(p)), p) for t in trials
                                   for p in ("head", "evaluate"))
    for t in trials:  # Seeds 0-3, each a full tapefit run directory.
        assert os.path.isfile(os.path.join(t.trial_dir, "head", "final.weights.h5"))
        assert os.path.isfile(os.path.join(t.trial_dir, "evaluate", "evaluation.json"))
        config = runner.read_json_or_none(os.path.join(t.trial_dir, "head", "config.json"))
        assert config["seed"] == t.seed
    with open(os.path.join(folder, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], r["status"]) for r in rows] == [(str(i), "finished") for i in range(4)]
    assert "| learning_rate=1e-3 | 4 |" in open(os.path.join(folder, "results.md")).read()
    cache = cache_files(folder)
    assert cache, "the trials wrote no disk feature cache"
    caches = len(os.listdir(os.path.join(folder, "feature_cache")))

    # The same command again trains nothing.
    calls.clear()
    _, outcomes = sweep(folder, ["learning_rate=1e-3"], "0,1,2,3")
    assert calls == [] and sorted(outcomes.values()) == ["finished"] * 4

    # A new value runs only the new trials, on the features the others cached (same
    # backbone, weights, cut and data: for each seed, one frozen pass for all rates).
    s2, outcomes = sweep(folder, ["learning_rate=1e-3,3e-3"], "0,1")
    new = {t.trial_id for t in grid.expand(s, folder)}
    assert set(calls) == {(os.path.basename(t.shared_dir(p)), p)
                          for t in grid.expand(s2, folder) if t.trial_id in set(outcomes) - new
                          for p in ("head", "evaluate")}
    assert len(calls) == 4  # 2 trials × (head, evaluate)
    assert len(os.listdir(os.path.join(folder, "feature_cache"))) == caches
    assert cache_files(folder) == cache  # Read, not written again.

    # HParams: the experiment at the root, one session per trial grouped without the seed.
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    def plugin_data(path):
        acc = event_accumulator.EventAccumulator(path)
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        out = {}
        for tag, raw in content.items():
            data = plugin_data_pb2.HParamsPluginData.FromString(raw)
            out[tag] = data
        return acc, out

    _, root = plugin_data(os.path.join(folder, "hparams"))
    experiment = root["_hparams_/experiment"].experiment
    assert [h.name for h in experiment.hparam_infos] == ["learning_rate"]
    assert "test_accuracy" in [m.name.tag for m in experiment.metric_infos]
    trial = trials[2]
    acc, session = plugin_data(os.path.join(trial.trial_dir, "hparams"))
    start = session["_hparams_/session_start_info"].session_start_info
    assert start.group_name == trial.group_id and "-s2-" not in start.group_name
    assert start.hparams["learning_rate"].number_value == pytest.approx(1e-3)
    evaluation = runner.read_json_or_none(
        os.path.join(trial.trial_dir, "evaluate", "evaluation.json"))
    from tensorboard.util import tensor_util
    value = tensor_util.make_ndarray(acc.Tensors("test_accuracy")[0].tensor_proto)
    assert float(value) == pytest.approx(evaluation["accuracy"], rel=1e-6)


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, calls):
    folder = str(tmp_path / "study")
    missing = str(tmp_path / "no_such_folder")
    s, outcomes = sweep(folder, [f"data_dir={missing},none"], "0", phases="head")
    bad, good = grid.expand(s, folder)
    assert outcomes == {bad.trial_id: "failed", good.trial_id: "finished"}
    status = runner.read_status(bad.trial_dir)
    assert status["phase"] == "head" and "no_such_folder" in status["reason"]
    assert "\n" not in status["reason"]
    text = open(os.path.join(folder, "results.md")).read()
    assert "## Failed trials" in text and bad.trial_id in text
    # Not retried unless asked.
    calls.clear()
    _, outcomes = sweep(folder, [f"data_dir={missing},none"], "0", phases="head")
    assert calls == [] and outcomes[bad.trial_id] == "failed"
    assert report.write(s, folder)["rows"][0]["status"] == "failed"


def test_error_is_one_line_and_nothing_is_written(tmp_path):
    folder = tmp_path / "study"
    proc = subprocess.run([sys.executable, "sweep.py", f"--workdir={folder}",
                           "--axis=learning_rate=1e-3,oops", "--seeds=0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: axis 'learning_rate': 'oops' is not a valid float")
    assert "Traceback" not in proc.stderr
    assert not folder.exists()


RESUME_FLAGS = ["--backbone=mobilenet", "--alpha=0.25", "--weights=none", "--image_size=32",
                "--dataset=synthetic", "--synthetic_examples=64", "--batch_size=8",
                "--epochs=6", "--deterministic", "--feature_cache=off",
                "--backup_every_steps=2", "--notensorboard", "--phases=head", "--seeds=0",
                "--axis=learning_rate=1e-3", "--noprogress"]


def log_rows(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


def test_a_killed_sweep_resumes_the_trial_exactly(tmp_path):
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, "sweep.py", f"--workdir={killed}", *RESUME_FLAGS],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 150
    log_path = state = None
    while time.time() < deadline and proc.poll() is None:
        found = glob.glob(os.path.join(killed, "trials", "*", "head", "log.csv"))
        if found:
            log_path = found[0]
            state = os.path.join(os.path.dirname(log_path), "backup", "state.json")
            if len(log_rows(log_path)) >= 2 and os.path.isfile(state):
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert log_path and os.path.isfile(state), err.decode()[-2000:]
    run_dir = os.path.dirname(log_path)
    assert not os.path.exists(os.path.join(run_dir, "final.weights.h5")), \
        "the trial finished before the kill; the test needs a slower run"
    before = log_rows(log_path)
    assert 2 <= len(before) < 7

    again = subprocess.run([sys.executable, "sweep.py", f"--workdir={killed}", *RESUME_FLAGS],
                           cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    after = log_rows(log_path)
    assert after[:len(before)] == before and len(after) == 7  # Continued, not restarted.

    # The same trial run without interruption (in this process) ends identically.
    straight = str(tmp_path / "straight")
    flags = {"synthetic_examples": 64, "epochs": 6, "feature_cache": "off",
             "backup_every_steps": 2}
    s, outcomes = sweep(straight, ["learning_rate=1e-3"], "0", phases="head", **flags)
    (trial,) = grid.expand(s, straight)
    assert os.path.basename(os.path.dirname(run_dir)) == trial.trial_id
    assert log_rows(os.path.join(trial.trial_dir, "head", "log.csv")) == after
    ours = weights(os.path.join(run_dir, "final.weights.h5"))
    theirs = weights(os.path.join(trial.trial_dir, "head", "final.weights.h5"))
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    # And re-running the finished sweep trains nothing.
    rerun = subprocess.run([sys.executable, "sweep.py", f"--workdir={killed}", *RESUME_FLAGS],
                           cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0 and "1 finished" in rerun.stdout
    assert log_rows(log_path) == after
