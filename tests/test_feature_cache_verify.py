"""The disk feature cache is verified like the image cache (issue 30, break 7): what a
split's `<split>.complete.json` records (sizes, SHA-256s, shapes, label range) and what
the run expects (the suffix's input, the split's size, labels in [0, classes)). Anything
else is set aside with one warning and computed again; a FIFO is never opened.

Before: zeroed features or flipped labels were loaded and trained on; label 5 in a
2-class cache or double-width features ended in a TensorFlow traceback; a FIFO in
place of train.features.npy hung the run."""
import glob
import logging
import os
import threading

import keras
import numpy as np
import pytest

from tapefit.layout import paths
from tapefit.layout.atomic import json_text
from tapefit.loops import phases
from tapefit.loops.caches import feature_cache

MANIFEST = paths.FEATURES_MANIFEST_SUFFIX  # <split>.complete.json
N, BATCH = 8, 4  # Full batches only: no padding decision (it depends on timings).


def tiny_cut():
    inputs = keras.Input((4, 4, 3))
    frozen = keras.layers.Conv2D(2, 3, name="frozen")
    frozen.trainable = False
    boundary = keras.layers.GlobalAveragePooling2D()(frozen(inputs))
    prefix = keras.Model(inputs, boundary)
    features = keras.Input((2,))
    suffix = keras.Model(features, keras.layers.Dense(2)(features))  # 2 classes.
    return feature_cache.Cut(prefix, suffix, "dense", "pool")


def tiny_images():
    import tensorflow as tf
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(
        (rng.integers(0, 255, (N, 4, 4, 3), dtype=np.uint8), np.arange(N, dtype=np.int32) % 2))


def rows(cut, path):
    out = feature_cache.cached_features(cut, tiny_images(), N, path, BATCH)
    return [(f, int(y)) for f, y in out.as_numpy_iterator()]


def rewrite(file, change):
    """`file` (a .npy) replaced by `change(its array)`, as another writer would."""
    array = change(np.load(file).copy())
    np.save(file + ".new.npy", array)
    os.replace(file + ".new.npy", file)


def with_label_5(labels):
    labels[2] = 5
    return labels


def consistent_manifest(path):
    """The manifest rewritten to match the (damaged) arrays: only this run's own
    expectations (the suffix's input, the model's classes) can catch them."""
    labels = np.load(path + feature_cache.LABELS)
    features = np.load(path + feature_cache.FEATURES, mmap_mode="r")
    manifest = feature_cache._manifest(path, features.shape, features.dtype, labels, 2)
    with open(path + MANIFEST, "w") as f:
        f.write(json_text(manifest))


DAMAGES = {
    "zeroed features": (feature_cache.FEATURES, lambda p: rewrite(
        p + feature_cache.FEATURES, np.zeros_like)),
    "flipped labels": (feature_cache.LABELS, lambda p: rewrite(
        p + feature_cache.LABELS, lambda y: 1 - y)),
    "label 5 of 2 classes": (feature_cache.LABELS, lambda p: rewrite(
        p + feature_cache.LABELS, with_label_5)),
    "label 5, manifest agreeing": (feature_cache.LABELS, lambda p: (rewrite(
        p + feature_cache.LABELS, with_label_5), consistent_manifest(p))),
    "double-width features": (feature_cache.FEATURES, lambda p: rewrite(
        p + feature_cache.FEATURES, lambda f: np.concatenate([f, f], axis=1))),
    "double-width features, manifest agreeing": (feature_cache.FEATURES, lambda p: (rewrite(
        p + feature_cache.FEATURES, lambda f: np.concatenate([f, f], axis=1)),
        consistent_manifest(p))),
    "truncated features": (feature_cache.FEATURES, lambda p: os.truncate(
        p + feature_cache.FEATURES, os.path.getsize(p + feature_cache.FEATURES) - 8)),
    # An earlier tapefit version's cache, or a writer killed before the manifest.
    "no manifest": (MANIFEST, lambda p: os.remove(p + MANIFEST)
                    if os.path.exists(p + MANIFEST) else None),
    "a folder in place of the features": (feature_cache.FEATURES, lambda p: (
        os.remove(p + feature_cache.FEATURES), os.mkdir(p + feature_cache.FEATURES))),
    "a link to other features": (feature_cache.FEATURES, lambda p: (
        rewrite(p + feature_cache.FEATURES, np.zeros_like),
        os.replace(p + feature_cache.FEATURES, p + ".elsewhere.npy"),
        os.symlink(p + ".elsewhere.npy", p + feature_cache.FEATURES))),
}


def feature_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "feature cache" in r.getMessage()]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_split_is_set_aside_with_one_warning_and_computed_again(tmp_path, caplog,
                                                                          damage):
    cut, path = tiny_cut(), str(tmp_path / "key" / "train")
    clean = rows(cut, path)
    assert os.path.isfile(path + MANIFEST)  # Written with the arrays.
    named, damage_it = DAMAGES[damage]
    damage_it(path)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = rows(cut, path)
    warnings = feature_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert path + named in warnings[0] and "computing them again" in warnings[0]
    if damage == "no manifest":
        assert "earlier tapefit version (unverified)" in warnings[0]
    assert "computed the features" in caplog.text and "loaded the features" not in caplog.text
    for (f, y), (g, z) in zip(clean, again, strict=True):  # What a clean run trains on.
        np.testing.assert_array_equal(f, g)
        assert y == z
    # Rewritten whole: the next run loads it, verified, without a warning.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert [y for _, y in rows(cut, path)] == [y for _, y in clean]
    assert "loaded the features" in caplog.text and not feature_warnings(caplog)
    assert os.path.isfile(path + feature_cache.FEATURES)
    assert not os.path.islink(path + feature_cache.FEATURES)


def without_hanging_on(fifo, fn):
    """`fn()`, failing the test if it blocks (opening `fifo` to read waits for a writer
    forever): run in a thread, which is let go by opening the FIFO's other end."""
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=30)
        pytest.fail(f"opened the FIFO {fifo} and hung")
    return result["value"]


def test_a_fifo_in_place_of_the_features_is_never_opened(tmp_path, caplog):
    cut, path = tiny_cut(), str(tmp_path / "key" / "train")
    clean = rows(cut, path)
    fifo = path + feature_cache.FEATURES
    os.remove(fifo)
    os.mkfifo(fifo)
    with caplog.at_level(logging.INFO):
        again = without_hanging_on(fifo, lambda: rows(cut, path))
    warnings = feature_warnings(caplog)
    assert len(warnings) == 1 and fifo in warnings[0] and "not a regular file" in warnings[0]
    assert os.path.isfile(fifo)  # Computed again in its place.
    for (f, y), (g, z) in zip(clean, again, strict=True):
        np.testing.assert_array_equal(f, g)
        assert y == z


def test_on_disk_reads_only_manifests(tmp_path):
    """`--feature_precision=auto` asks which precision is on disk: a FIFO there is not
    opened, and features without a manifest are not complete."""
    cut, folder = tiny_cut(), str(tmp_path / "key")
    for split in ("train", "validation"):
        rows(cut, os.path.join(folder, split))
    sizes = {"train": N, "validation": N}
    assert feature_cache.on_disk(folder, sizes)
    assert not feature_cache.on_disk(folder, {"train": N, "validation": N + 1})
    fifo = os.path.join(folder, "validation" + feature_cache.FEATURES)
    os.remove(fifo)
    os.mkfifo(fifo)
    assert not without_hanging_on(fifo, lambda: feature_cache.on_disk(folder, sizes))
    os.remove(fifo)
    rows(cut, os.path.join(folder, "validation"))
    os.remove(os.path.join(folder, "train" + MANIFEST))
    assert not feature_cache.on_disk(folder, sizes)


def test_a_run_on_a_damaged_disk_cache_trains_as_on_a_clean_one(tiny_config, tmp_path,
                                                                 caplog, monkeypatch):
    """End to end: zeroed training features and a label 5 among the validation labels
    of a 2-class model; before, the first was trained on (rc 0) and the second a
    TensorFlow traceback."""
    monkeypatch.setattr(feature_cache, "_pad_is_cheaper", lambda *args: True)
    cfg = tiny_config.replace(feature_cache="disk", epochs=1,
                              feature_cache_dir=str(tmp_path / "features"))
    clean = phases.train(cfg, run_dir=str(tmp_path / "clean")).model.get_weights()
    (folder,) = glob.glob(str(tmp_path / "features" / "*"))
    rewrite(os.path.join(folder, "train" + feature_cache.FEATURES), np.zeros_like)
    rewrite(os.path.join(folder, "validation" + feature_cache.LABELS), with_label_5)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = phases.train(cfg, run_dir=str(tmp_path / "again")).model.get_weights()
    warnings = feature_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert "train" + feature_cache.FEATURES in warnings[0]
    assert "validation" + feature_cache.LABELS in warnings[1]
    assert "loaded the features" not in caplog.text
    for a, b in zip(clean, again, strict=True):
        np.testing.assert_array_equal(a, b)
