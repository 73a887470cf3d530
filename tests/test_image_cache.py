"""The decoded-image cache on disk (input_pipeline/image_cache.py): reused across runs
(counted: no file checked or decoded again), invalidated by a changed file, image size
or resize method, and never used half-written."""
import os
import subprocess

import numpy as np
import pytest

from tapefit import input_pipeline
from tapefit.flags.config import Config, ConfigError
from tapefit.input_pipeline import folders, image_cache
from tests.test_input_pipeline import encode, make_split, photo

pytestmark = pytest.mark.usefixtures("no_network")  # From conftest.py.

S = 32


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_split(str(root / "train"), {"cat": 6, "dog": 6}, 1)
    make_split(str(root / "test"), {"cat": 2, "dog": 2}, 2)
    return root


@pytest.fixture
def counted(monkeypatch):
    """Counts the files `folders` checks (each is decoded to check it) and resets the
    cache's counters."""
    calls = []
    check = folders._check_file

    def counting(path, image_size):
        calls.append(path)
        return check(path, image_size)

    monkeypatch.setattr(folders, "_check_file", counting)
    image_cache.counters.clear()
    return calls


def config(data, tmp_path, **changes):
    values = dict(data_dir=str(data), image_size=S, batch_size=4,
                  workdir=str(tmp_path / "work"), image_cache="disk")
    values.update(changes)
    return Config(**values)


def read_all(cfg, splits=("train", "validation", "test")):
    """Every split's images and labels as arrays, in the split's order, and the first
    epoch of training batches (what a run reads first)."""
    loaded = input_pipeline.load_splits(cfg)
    out = {}
    for split in splits:
        items = list(getattr(loaded, split).as_numpy_iterator())
        out[split] = (np.stack([x for x, _ in items]), np.array([y for _, y in items]))
    batches, steps = input_pipeline.train_batches(loaded.train, loaded.sizes["train"],
                                                  cfg.batch_size, cfg.seed)
    out["epoch"] = np.concatenate([x for x, _ in batches.take(steps).as_numpy_iterator()])
    return loaded, out


def cache_folders(cfg):
    root = image_cache.root(cfg)
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], tuple):
            for x, y in zip(a[name], b[name], strict=True):
                np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_array_equal(a[name], b[name])


# ---- reuse ---------------------------------------------------------------------------

def test_second_run_reads_the_cache_and_checks_no_file(data, tmp_path, counted):
    cfg = config(data, tmp_path)
    nocache, expected = read_all(cfg.replace(image_cache="off"))
    assert cache_folders(cfg) == []  # off writes nothing.
    counted.clear()

    first, images = read_all(cfg)
    assert len(counted) == 16  # Every file checked once.
    assert image_cache.counters["published"] == 3
    assert_same(images, expected)  # Same pixels, same order, same batches as uncached.

    counted.clear()
    image_cache.counters.clear()
    second, again = read_all(cfg)
    assert counted == []  # Nothing checked (so nothing decoded) in the second run.
    assert image_cache.counters["write"] == 0
    assert image_cache.counters["hit"] == 3  # All 3 splits read from the cache.
    assert second.sizes == first.sizes == nocache.sizes
    assert second.class_names == first.class_names
    assert_same(again, expected)


def test_second_run_gets_its_pixels_from_the_cache_not_the_files(data, tmp_path, counted,
                                                                 monkeypatch):
    """With the key held fixed, a photo rewritten with other pixels: the second run still
    sees the first run's pixels, so they came from the cache. (The real key hashes every
    file's bytes: tests/test_data_identity.py.)"""
    monkeypatch.setattr(folders, "data_fingerprint", lambda cfg: "held fixed")
    cfg = config(data, tmp_path)
    _, first = read_all(cfg)
    path = os.path.join(data, "train", "cat", "000.jpg")
    st = os.stat(path)
    other = encode(photo(999), "JPEG", quality=95)
    with open(path, "wb") as f:
        f.write(other[:st.st_size].ljust(st.st_size, b"\0"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    _, second = read_all(cfg)
    assert_same(second, first)
    _, uncached = read_all(cfg.replace(image_cache="off"))
    assert not np.array_equal(uncached["train"][0], first["train"][0])


def test_nothing_is_written_until_a_split_is_read(data, tmp_path):
    cfg = config(data, tmp_path)
    input_pipeline.load_splits(cfg)
    assert not os.path.exists(cfg.workdir)


@pytest.mark.parametrize("mode", ["memory", "off"])
def test_memory_and_off_write_no_cache(data, tmp_path, mode):
    cfg = config(data, tmp_path, image_cache=mode)
    read_all(cfg)
    assert not os.path.exists(cfg.workdir)


def test_auto_is_disk_for_folders_and_memory_for_synthetic(data, tmp_path):
    read_all(config(data, tmp_path, image_cache="auto"))
    assert len(cache_folders(config(data, tmp_path))) == 1
    synthetic = Config(dataset="synthetic", synthetic_examples=8, image_size=S,
                       workdir=str(tmp_path / "synthetic"), batch_size=4)
    read_all(synthetic)
    assert not os.path.exists(synthetic.workdir)


def test_a_shared_image_cache_dir_serves_other_workdirs(data, tmp_path, counted):
    shared = str(tmp_path / "shared")
    read_all(config(data, tmp_path, workdir=str(tmp_path / "a"), image_cache_dir=shared))
    counted.clear()
    image_cache.counters.clear()
    read_all(config(data, tmp_path, workdir=str(tmp_path / "b"), image_cache_dir=shared))
    assert counted == [] and image_cache.counters["write"] == 0
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


# ---- invalidation ----------------------------------------------------------------------

def test_a_changed_file_gives_a_new_cache(data, tmp_path, counted):
    cfg = config(data, tmp_path)
    _, first = read_all(cfg)
    path = os.path.join(data, "train", "dog", "001.jpg")
    with open(path, "wb") as f:
        f.write(encode(photo(4242), "JPEG", quality=95))
    counted.clear()
    image_cache.counters.clear()
    _, second = read_all(cfg)
    # Every file checked again; read from a cache only by the training batches' pass,
    # after the three splits were written again.
    assert len(counted) == 16 and image_cache.counters["hit"] == 1
    assert image_cache.counters["published"] == 3
    assert len(cache_folders(cfg)) == 2  # The old key's cache is left, never read.
    _, uncached = read_all(cfg.replace(image_cache="off"))
    assert_same(second, uncached)
    assert not np.array_equal(second["train"][0], first["train"][0])


def test_another_image_size_or_resize_gives_a_new_cache(data, tmp_path, counted, monkeypatch):
    cfg = config(data, tmp_path)
    read_all(cfg)
    image_cache.counters.clear()
    _, bigger = read_all(cfg.replace(image_size=40))
    assert image_cache.counters["hit"] == 1 and image_cache.counters["published"] == 3
    assert bigger["train"][0].shape[1:] == (40, 40, 3)
    monkeypatch.setattr(image_cache, "RESIZE", "another resize method")
    image_cache.counters.clear()
    read_all(cfg)
    assert image_cache.counters["hit"] == 1 and image_cache.counters["published"] == 3
    assert len(cache_folders(cfg)) == 3


def test_a_file_changed_while_it_is_read_is_not_cached(data, tmp_path, counted):
    cfg = config(data, tmp_path)
    loaded = input_pipeline.load_splits(cfg)
    with open(os.path.join(data, "train", "cat", "002.jpg"), "wb") as f:
        f.write(encode(photo(4242), "JPEG", quality=95))
    list(loaded.train.as_numpy_iterator())
    assert image_cache.counters["discarded"] == 1 and image_cache.counters["published"] == 0
    key = os.path.join(image_cache.root(cfg), cache_folders(cfg)[0])
    assert os.listdir(key) == []


# ---- half-written caches --------------------------------------------------------------

def dead_pid():
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_half_written_cache_is_ignored_and_rebuilt(data, tmp_path, counted):
    cfg = config(data, tmp_path)
    _, expected = read_all(cfg.replace(image_cache="off"))
    read_all(cfg)
    key = os.path.join(image_cache.root(cfg), cache_folders(cfg)[0])
    # A writer killed mid-way: its temporary folder with a lock file and partial data.
    dead = os.path.join(key, f".tmp-train-{image_cache._host()}-{dead_pid()}-x")
    os.makedirs(dead)
    for name in ("images_0.lockfile", "images_0.data-00000-of-00001"):
        with open(os.path.join(dead, name), "wb") as f:
            f.write(b"partial")
    # A damaged final folder: the data without its index, and one without complete.json.
    os.remove(os.path.join(key, "train", "images.index"))
    os.remove(os.path.join(key, "validation", image_cache.COMPLETE))
    with open(os.path.join(key, "test", "images.data-00000-of-00001"), "r+b") as f:
        f.truncate(10)  # Still "complete" by its files: the reader must not be fooled...
    os.remove(os.path.join(key, "test", image_cache.COMPLETE))  # ...so it lacks its marker.
    counted.clear()
    image_cache.counters.clear()
    _, again = read_all(cfg)
    assert_same(again, expected)
    assert image_cache.counters["published"] == 3  # All three rebuilt...
    assert image_cache.counters["stale"] == 4  # ...after setting aside 3 folders and 1 dead.
    assert not os.path.exists(dead)
    assert sorted(os.listdir(key)) == ["test", "train", "validation"]
    image_cache.counters.clear()
    read_all(cfg)
    assert image_cache.counters["write"] == 0


def test_an_iteration_stopped_half_way_publishes_nothing(data, tmp_path, counted,
                                                          monkeypatch):
    from tapefit.input_pipeline import batching
    monkeypatch.setattr(batching, "READ_AHEAD", 2)  # Else it reads the 10 images at once.
    cfg = config(data, tmp_path)
    loaded = input_pipeline.load_splits(cfg)
    list(loaded.train.take(3).as_numpy_iterator())
    assert image_cache.counters["write"] == 1 and image_cache.counters["published"] == 0
    key = os.path.join(image_cache.root(cfg), cache_folders(cfg)[0])
    assert "train" not in os.listdir(key)
    images = list(loaded.train.as_numpy_iterator())  # A full pass then writes it.
    assert len(images) == loaded.sizes["train"]
    assert image_cache.counters["published"] == 1 and "train" in os.listdir(key)


def test_concurrent_writers_publish_one_complete_cache(data, tmp_path, counted, monkeypatch):
    from tapefit.input_pipeline import batching
    monkeypatch.setattr(batching, "READ_AHEAD", 2)  # Both start before either ends.
    cfg = config(data, tmp_path)
    a = iter(input_pipeline.load_splits(cfg).train)
    b = iter(input_pipeline.load_splits(cfg).train)
    both = []
    for x, _ in a:  # Both iterators write at the same time, each to its own folder.
        y, _ = next(b)
        np.testing.assert_array_equal(x, y)
        both.append(x)
    assert image_cache.counters["published"] == 1
    assert list(b) == []  # b ends too, after a published: it drops its copy.
    assert image_cache.counters["write"] == 2
    assert image_cache.counters["published"] == 1 and image_cache.counters["discarded"] == 1
    key = os.path.join(image_cache.root(cfg), cache_folders(cfg)[0])
    assert os.listdir(key) == ["train"]
    image_cache.counters.clear()
    assert len(list(input_pipeline.load_splits(cfg).train)) == len(both)
    assert image_cache.counters["hit"] == 1


def test_a_cache_removed_while_in_use_fails_rather_than_reading_nothing(data, tmp_path,
                                                                         counted):
    import shutil

    import tensorflow as tf
    cfg = config(data, tmp_path)
    read_all(cfg)
    loaded = input_pipeline.load_splits(cfg)  # Reads from the cache without its files.
    shutil.rmtree(image_cache.root(cfg))
    with pytest.raises(tf.errors.OpError):
        list(loaded.train.as_numpy_iterator())


# ---- flags and runs --------------------------------------------------------------------

def test_flags_are_checked():
    with pytest.raises(ConfigError, match="image_cache"):
        Config(image_cache="sometimes")
    with pytest.raises(ConfigError, match="image_cache_dir"):
        Config(image_cache_dir=" ")
    with pytest.raises(ConfigError, match="feature_precision"):
        Config(feature_precision="float16")


def test_finetune_and_evaluate_reuse_the_head_runs_images(data, tmp_path, counted):
    from tapefit.loops import phases
    cfg = Config(workdir=str(tmp_path / "run"), backbone="mobilenet", alpha=0.25,
                 weights="none", image_size=S, data_dir=str(data), batch_size=4, epochs=1,
                 verbose=0, unfreeze_from="conv_dw_13", tensorboard=False)
    phases.run(cfg)
    assert image_cache.counters["published"] == 2  # train and validation.
    checked_by_head = len(counted)
    counted.clear()
    image_cache.counters.clear()
    phases.run(cfg.replace(phase="finetune"))
    test_dir = os.path.join(str(data), "test")
    # Only the test split, never read before, is checked (not decoded) again.
    assert checked_by_head == 16 and len(counted) == 4
    assert all(path.startswith(test_dir) for path in counted)
    assert image_cache.counters["write"] == 0 and image_cache.counters["hit"] >= 2
    counted.clear()
    # Without the interpretation, which decodes its top-loss photos from their files
    # (loops/interpret.py: only those K; a display, not the scored pass).
    evaluate = cfg.replace(phase="evaluate", interpret_split="none")
    phases.run(evaluate)
    assert len(counted) == 4 and all(path.startswith(test_dir) for path in counted)
    assert image_cache.counters["published"] == 1  # The test split, for later evaluations.
    counted.clear()
    image_cache.counters.clear()
    phases.run(evaluate)
    assert counted == [] and image_cache.counters["write"] == 0
    phases.run(evaluate.replace(interpret_split="test", top_losses=3))
    assert len(counted) == 3 and image_cache.counters["write"] == 0  # The 3 photos shown.


def test_evaluating_a_whole_folder_does_not_reuse_a_training_split(tmp_path, counted):
    """A folder of class folders: training carves train/validation/test from it, while
    `--phase=evaluate --data_dir=DIR` tests on every image in it; both are cached under
    the same data key, as different splits."""
    root = tmp_path / "flat"
    make_split(str(root), {"cat": 5, "dog": 5}, 3)
    cfg = config(root, tmp_path)
    loaded, _ = read_all(cfg)
    image_cache.counters.clear()
    for _ in range(2):  # Written, then read from the cache.
        test, size, _ = input_pipeline.load_test_split(cfg.replace(phase="evaluate"))
        assert size == 10 and len(list(test)) == 10 != loaded.sizes["test"]
    assert image_cache.counters["published"] == 1 and image_cache.counters["hit"] == 1
