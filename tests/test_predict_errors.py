"""predict's one-line errors: a non-UTF-8 file name read, a missing config.json,
non-finite weights, an unreadable image.

Each test fails on the code before the fix (see the comment on each).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tapefit import input_pipeline
from tapefit.flags.config import Config
from tapefit.input_pipeline import DataError
from tapefit.loops import phases, train_lib
from tests.conftest import ROOT


def write_png(path, tint, size=32):
    pixels = np.full((size, size, 3), tint, np.uint8)
    pixels[::2] //= 2
    Image.fromarray(pixels).save(path, format="PNG")


# ---- predict -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained head run (in-process, seconds) and a good image."""
    base = tmp_path_factory.mktemp("predict")
    cfg = Config(workdir=str(base / "run"), backbone="mobilenet", alpha=0.25, weights="none",
                 image_size=32, dataset="synthetic", synthetic_examples=16, batch_size=8,
                 epochs=1, verbose=0, seed=0, backup=False)
    phases.run(cfg)
    image = os.fsencode(base) + b"/ph\xf6to.png"  # A Latin-1 file name.
    write_png(os.fsdecode(image), (120, 30, 60))
    return base / "run", image


def run_predict(workdir, *paths):
    return subprocess.run([sys.executable, "predict.py", f"--workdir={workdir}", *paths],
                          cwd=ROOT, capture_output=True, timeout=300)


def test_predict_reads_a_non_utf8_file_name(trained):
    """Before: UnicodeEncodeError in tf.io.read_file and print, with a traceback."""
    workdir, image = trained
    out = run_predict(workdir, image)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    name, label, probability = out.stdout.decode().strip().split("\t")
    assert name == image.decode("utf-8", "backslashreplace")  # ...ph\xf6to.png
    assert label in json.loads((workdir / "head" / "classes.json").read_text())
    assert 0.0 <= float(probability) <= 1.0


def assert_predict_error(out, *fragments):
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not out.stdout.strip()


def test_predict_without_config_json_is_one_line(trained, tmp_path):
    """Before: FileNotFoundError traceback."""
    workdir, image = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    os.remove(copy / "head" / "config.json")
    assert_predict_error(run_predict(copy, image), "config.json", "--overwrite")


def test_predict_refuses_non_finite_weights(trained, tmp_path):
    """Before: printed `nan` probabilities with exit code 0."""
    workdir, image = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    model, _, _, _ = train_lib.load_trained_model(str(copy))
    weights = model.get_weights()
    weights[-1] = np.full_like(weights[-1], np.nan)  # The logits' bias.
    model.set_weights(weights)
    model.save_weights(str(copy / "head" / "best.weights.h5"))
    assert_predict_error(run_predict(copy, image), "NaN", "best.weights.h5")


def test_unreadable_image_is_a_one_line_data_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="is not a readable image"):
        input_pipeline.read_image_file(str(path), 32)
    with pytest.raises(DataError, match="no such image file"):
        input_pipeline.read_image_file(str(tmp_path / "missing.png"), 32)
