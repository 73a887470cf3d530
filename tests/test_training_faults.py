"""Dirty data, NaN, a full disk and kills during a save: the run stays trustworthy."""
import errno
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tapefit.flags.errors import RunError
from tapefit.loops import phases, train_lib
from tests.conftest import ROOT


def write_folder(root, per_class=6, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, tint in (("cat", (200, 120, 90)), ("dog", (80, 120, 200))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(tint, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    bad = root / "train" / "cat"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not an image")
    (bad / "truncated.jpg").write_bytes((root / "train" / "cat" / "0.jpg").read_bytes()[:200])
    Image.new("RGBA", (30, 30), (255, 0, 0, 128)).save(root / "train" / "dog" / "rgba.png")
    Image.new("RGB", (30, 30), (0, 0, 255)).save(root / "train" / "dog" / "png_named.jpg",
                                                 format="PNG")
    return 3


def test_dirty_image_folder_trains_and_reports_the_skipped_files(tmp_path):
    bad = write_folder(tmp_path / "data")
    workdir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "train.py", f"--data_dir={tmp_path / 'data'}", f"--workdir={workdir}",
         "--backbone=mobilenet", "--alpha=0.25", "--weights=none", "--image_size=32",
         "--batch_size=4", "--epochs=1", "--verbose=0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [l for l in out.stderr.splitlines() if f"skipped {bad} unreadable files" in l]
    assert len(lines) == 1, out.stderr[-2000:]
    listed = (workdir / "head" / "skipped_files.txt").read_text().split()
    assert sorted(os.path.basename(p) for p in listed) == ["empty.jpg", "text.jpg",
                                                           "truncated.jpg"]


def test_nan_stops_at_once_and_the_best_checkpoint_predates_it(tiny_config):
    """Epoch 1 trains normally; from epoch 2 the rate (x1e32 per epoch) blows the weights up."""
    cfg = tiny_config.replace(backbone="vgg16", optimizer="sgd", learning_rate=1e-3,
                              lr_schedule="step", lr_decay_rate=1e32, lr_decay_epochs=1,
                              epochs=4, synthetic_examples=64, batch_size=8,
                              terminate_on_nan=True)
    losses, epoch_weights = [], []

    def recorder(module):
        hook = module.LambdaCallback(
            on_train_batch_end=lambda batch, logs: losses.append(logs["loss"]),
            on_epoch_end=lambda epoch, logs: epoch_weights.append(hook.model.get_weights()))
        return [hook]

    phases.train(cfg, extra_hooks=recorder)
    # Training stopped at the first non-finite loss, in the middle of an epoch.
    assert not np.isfinite(losses[-1]) and np.all(np.isfinite(losses[:-1]))
    steps_per_epoch = 8
    nan_epoch = (len(losses) - 1) // steps_per_epoch
    assert 1 <= nan_epoch < 3 and len(losses) % steps_per_epoch != 0
    rows = open(os.path.join(cfg.run_dir, "log.csv")).read().splitlines()
    assert len(rows) == 1 + nan_epoch + 1  # No epoch after the NaN one.
    best = train_lib.build(cfg, train_lib.make_strategy("default"), 2,
                           os.path.join(cfg.run_dir, "best.weights.h5")).get_weights()
    assert all(np.all(np.isfinite(w)) for w in best)
    assert any(all(np.array_equal(a, b) for a, b in zip(best, weights))
               for weights in epoch_weights[:nan_epoch])  # An epoch before the NaN.


def test_full_disk_while_saving_keeps_the_previous_file(tiny_config, monkeypatch):
    model = phases.train(tiny_config.replace(epochs=1)).model
    final = os.path.join(tiny_config.run_dir, "final.weights.h5")
    before = open(final, "rb").read()

    def full_disk(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(model, "save_weights", full_disk)
    with pytest.raises(RunError, match="no space left") as e:  # Not the user's flags.
        train_lib.save_weights(model, final)
    assert "\n" not in str(e.value)
    assert open(final, "rb").read() == before
    assert not [n for n in os.listdir(tiny_config.run_dir) if ".tmp-" in n]


KILL_DURING_SAVE = """
import sys, time
sys.path.insert(0, {root!r})
from tapefit.callbacks.atomic_io import atomic_save
def slow_save(path):
    with open(path, "wb") as f:
        f.write(b"half a checkpoint")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
atomic_save(slow_save, {target!r})
"""


def test_a_kill_during_a_save_leaves_the_previous_file_loadable(tiny_config):
    model = phases.train(tiny_config.replace(epochs=1)).model
    best = os.path.join(tiny_config.run_dir, "best.weights.h5")
    before = open(best, "rb").read()
    process = subprocess.Popen(
        [sys.executable, "-c", KILL_DURING_SAVE.format(root=ROOT, target=best)],
        stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert open(best, "rb").read() == before
    train_lib.load_weights(model, best)  # Still a valid checkpoint.
