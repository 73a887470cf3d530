"""Special files and non-UTF-8 names in a data folder: FIFOs, sockets and dangling
links skipped (never read), non-UTF-8 names read and listed escaped, the data
fingerprint following the image files.

Each test fails on the code before the fix (see the comment on each).
"""
import os
import threading

import numpy as np
import pytest
from PIL import Image

from tapefit import input_pipeline
from tapefit.flags.config import Config
from tapefit.input_pipeline import DataError, data_fingerprint
from tapefit.loops import phases

# ---- special files and non-UTF-8 names in a data folder ----------------------------------------

def write_png(path, tint, size=32):
    pixels = np.full((size, size, 3), tint, np.uint8)
    pixels[::2] //= 2
    Image.fromarray(pixels).save(path, format="PNG")


def image_folder(root, per_class=4):
    for label, tint in (("cat", (200, 120, 90)), ("dog", (80, 120, 200))):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            write_png(folder / f"{i}.png", tint)
    return root


class FifoGuard:
    """Opens `path` (a FIFO) for writing after `seconds` if a reader still blocks on it,
    so a test of code that hangs on the FIFO fails instead of hanging forever."""

    def __init__(self, path, seconds=30.0):
        self.path, self.fired, self._done = path, False, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)

    def _run(self, seconds):
        if self._done.wait(seconds):
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # No reader.
        self.fired = True
        os.close(fd)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def folder_config(data_dir, **kwargs):
    return Config(data_dir=str(data_dir), image_size=32, workdir="unused", **kwargs)


def test_fifo_socket_and_dangling_link_are_skipped_not_read(tmp_path):
    """Before: a FIFO named like an image blocked the run forever (open + read)."""
    data = image_folder(tmp_path / "data")
    fifo = data / "train" / "cat" / "fifo.jpg"
    os.mkfifo(fifo)
    (data / "train" / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (data / "train" / "dog" / "folder.png").mkdir()  # A folder named like an image.
    write_png(data / "train" / "dog" / "folder.png" / "nested.png", (1, 2, 3))
    with FifoGuard(str(fifo)) as guard:
        splits = input_pipeline.load_splits(folder_config(data, validation_split=0.25,
                                                          test_split_fraction=0.25))
    assert not guard.fired, "the FIFO was opened for reading and blocked"
    skipped = sorted(os.path.basename(p) for p in splits.skipped)
    assert skipped == ["fifo.jpg", "gone.png"]
    assert sum(splits.sizes.values()) == 9  # 8 images + the one in folder.png/
    with FifoGuard(str(fifo)) as guard, pytest.raises(DataError, match="not a regular file"):
        input_pipeline.read_image_file(str(fifo), 32)
    assert not guard.fired


def test_non_utf8_file_names_are_read_and_listed_escaped(tmp_path, tiny_config):
    """Before: UnicodeEncodeError (tf.constant of the paths) with a traceback."""
    data = image_folder(tmp_path / "data")
    cat = os.fsencode(data / "train" / "cat")
    write_png(os.fsdecode(cat + b"/caf\xe9.png"), (200, 120, 90))  # Latin-1 'café'.
    with open(cat + b"/bad\xff.jpg", "wb") as f:
        f.write(b"not an image")
    cfg = tiny_config.replace(data_dir=str(data), dataset="cats_vs_dogs", validation_split=0.25,
                              test_split_fraction=0.25, epochs=1, backup=False)
    splits = input_pipeline.load_splits(cfg)
    assert sum(splits.sizes.values()) == 9  # The Latin-1 named image is read.
    assert len(list(splits.train)) == splits.sizes["train"]
    assert [os.path.basename(p) for p in splits.skipped] == ["bad\\xff.jpg"]
    image = input_pipeline.read_image_file(os.fsdecode(cat + b"/caf\xe9.png"), 32)
    assert image.shape == (32, 32, 3)
    # The whole run, skipped_files.txt included.
    phases.run(cfg)
    listed = open(os.path.join(cfg.run_dir, "skipped_files.txt"), encoding="utf-8").read()
    assert listed.strip().endswith("bad\\xff.jpg")


def test_data_fingerprint_follows_the_image_files(tmp_path):
    data = image_folder(tmp_path / "data")
    cfg = folder_config(data)
    first = data_fingerprint(cfg)
    assert data_fingerprint(folder_config(str(data) + "/")) == first  # Spelling: same data.
    os.mkfifo(data / "train" / "cat" / "fifo.png")  # Not a regular file: not data.
    (data / "train" / "notes.txt").write_text("not an image")
    assert data_fingerprint(cfg) == first
    write_png(os.fsdecode(os.fsencode(data / "train" / "dog") + b"/\xff.png"), (9, 9, 9))
    added = data_fingerprint(cfg)
    assert added != first
    stat = os.stat(data / "train" / "cat" / "0.png")
    os.utime(data / "train" / "cat" / "0.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert data_fingerprint(cfg) == added  # Its bytes identify a file, not its time.
    write_png(data / "train" / "cat" / "0.png", (1, 2, 3))
    assert data_fingerprint(cfg) not in (first, added)
    synthetic = Config(dataset="synthetic")
    assert data_fingerprint(synthetic) == data_fingerprint(Config(dataset="synthetic"))
    assert data_fingerprint(synthetic) != data_fingerprint(synthetic.replace(split_seed=1))
