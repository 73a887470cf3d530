"""Fault injection: SIGKILL a real training process at random points, re-run the same
command, and get bit-identical weights and logs to an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import ROOT
from tests.conftest import h5_datasets as weights

COMMON = ["--backbone=vgg16", "--weights=none", "--image_size=32", "--dataset=synthetic",
          "--synthetic_examples=40", "--batch_size=8", "--epochs=6", "--dropout=0.3",
          "--learning_rate=0.003", "--deterministic", "--verbose=0", "--backup",
          "--backup_every_steps=2", "--early_stopping", "--early_stopping_patience=3",
          "--reduce_lr_on_plateau", "--reduce_lr_patience=1", "--unfreeze_from=block5_conv3",
          "--nosave_best_only"]
KILLS_PER_PHASE = 4


def command(workdir, phase):
    return [sys.executable, "train.py", f"--phase={phase}", f"--workdir={workdir}", *COMMON]


def run_to_completion(workdir, phase):
    start = time.monotonic()
    out = subprocess.run(command(workdir, phase), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return time.monotonic() - start


def backup_index(workdir, phase):
    try:
        with open(os.path.join(workdir, phase, "backup", "state.json")) as f:
            return json.load(f)["index"]
    except (OSError, ValueError):  # None yet, or being replaced right now.
        return 0


def run_with_kills(workdir, phase, rng, kills):
    """Starts the command and kills it at a random moment after it made 1-3 more
    backups, `kills` times (or until it finishes), then lets it finish."""
    points = []
    for i in range(kills):
        process = subprocess.Popen(command(workdir, phase), cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = backup_index(workdir, phase) + rng.randint(1, 3)
        while process.poll() is None and backup_index(workdir, phase) < target:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))  # Anywhere: mid-step, mid-save, mid-validation.
        if process.poll() is not None:
            break  # Finished on its own.
        # SIGKILL mostly; one Ctrl-C (SIGINT) as a user would press it.
        process.send_signal(signal.SIGINT if i == 1 else signal.SIGKILL)
        process.wait()
        points.append(backup_index(workdir, phase))
    out = subprocess.run(command(workdir, phase), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0 and "is finished" in out.stderr:
        return points  # The last killed attempt had in fact completed.
    assert out.returncode == 0, out.stderr[-3000:]
    return points


def assert_same_run(reference, resumed):
    for name in ("final.weights.h5", "best.weights.h5"):
        a, b = weights(os.path.join(reference, name)), weights(os.path.join(resumed, name))
        assert a.keys() == b.keys()
        for key in a:
            assert np.array_equal(a[key], b[key]), (name, key)
    with open(os.path.join(reference, "log.csv"), "rb") as f, \
            open(os.path.join(resumed, "log.csv"), "rb") as g:
        assert f.read() == g.read()
    assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == \
        sorted(os.listdir(os.path.join(resumed, "checkpoints")))
    assert not os.path.exists(os.path.join(resumed, "backup"))


def test_killed_and_resumed_runs_equal_an_uninterrupted_run(tmp_path):
    rng = random.Random(20261128)
    reference = str(tmp_path / "reference")
    all_points = {"head": [], "finetune": []}
    for round_ in range(3):
        # A loaded machine can let a run finish before its kills land (the suite's
        # other worker): then another round of kills in a fresh folder, each round
        # checked against the same uninterrupted run.
        killed = str(tmp_path / f"killed{round_}")
        for phase in ("head", "finetune"):
            if round_ == 0:
                run_to_completion(reference, phase)
            all_points[phase] += run_with_kills(killed, phase, rng, KILLS_PER_PHASE)
            assert_same_run(os.path.join(reference, phase), os.path.join(killed, phase))
        if sum(len(points) for points in all_points.values()) >= 6:
            break
    assert sum(len(points) for points in all_points.values()) >= 6, all_points
    print("killed after backups number:", all_points)


def test_a_finished_run_is_not_resumed_or_retrained(tmp_path):
    workdir = str(tmp_path / "w")
    run_to_completion(workdir, "head")
    out = subprocess.run(command(workdir, "head"), cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode != 0 and "is finished" in out.stderr and "--overwrite" in out.stderr


def test_resuming_with_other_flags_is_refused(tmp_path):
    workdir = tmp_path / "w"
    (workdir / "head").mkdir(parents=True)
    process = subprocess.Popen(command(str(workdir), "head"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (workdir / "head" / "backup" / "state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.kill()
    process.wait()
    out = subprocess.run(command(str(workdir), "head") + ["--learning_rate=0.1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "cannot resume" in out.stderr
    assert "--learning_rate=0.1" in out.stderr and "Traceback" not in out.stderr
