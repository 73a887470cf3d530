"""The data a run trains on is the data it names (issue 21, items 1, 4 and 6).

What identifies the data of a run and of every cache: each image file's path under
`--data_dir` and a hash of its bytes (links to folders followed), plus the data flags.
Each test fails on the code before the fix (see the comment on each).
"""
import json
import os
import shutil

import keras
import numpy as np
import pytest

from tapefit import input_pipeline
from tapefit.flags.config import Config
from tapefit.flags.errors import RunError
from tapefit.input_pipeline import data_fingerprint, folders, image_cache
from tapefit.loops import phases
from tapefit.loops.caches import feature_cache
from tests.test_input_pipeline import encode, make_split, photo

pytestmark = pytest.mark.usefixtures("no_network")  # From conftest.py.

S = 32


def config(data, tmp_path, **changes):
    values = dict(data_dir=str(data), image_size=S, batch_size=4,
                  workdir=str(tmp_path / "work"), image_cache="disk",
                  validation_split=0.25, test_split_fraction=0.25)
    values.update(changes)
    return Config(**values)


def pixels(cfg, split="train"):
    """A split's images (as the run reads them: through the image cache)."""
    loaded = input_pipeline.load_splits(cfg)
    return loaded, np.stack([x for x, _ in getattr(loaded, split).as_numpy_iterator()])


def linked_folder(tmp_path, counts=None):
    """data/train/<class> -> elsewhere/<class> (a shared data set linked in)."""
    elsewhere = tmp_path / "elsewhere"
    make_split(str(elsewhere), counts or {"cat": 6, "dog": 6}, 1)
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    for name in sorted(os.listdir(elsewhere)):
        (data / name).symlink_to(elsewhere / name, target_is_directory=True)
    return tmp_path / "data", elsewhere


def keep_size_and_time(path, data: bytes):
    """Rewrites `path` with other bytes of the same size and its old mtime."""
    st = os.stat(path)
    with open(path, "wb") as f:
        f.write(data[:st.st_size].ljust(st.st_size, b"\0"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ---- item 1: symlinked class folders ---------------------------------------------------

def test_files_under_linked_class_folders_are_part_of_the_fingerprint(tmp_path):
    """Before: os.walk did not follow the class folders' links: the fingerprint (and so
    data.json's resume check and every cache key) was that of an empty folder."""
    data, elsewhere = linked_folder(tmp_path)
    cfg = config(data, tmp_path)
    first = data_fingerprint(cfg)
    make_split(str(elsewhere / "cat" / "more"), {"new": 2}, 7)  # Photos added...
    added = data_fingerprint(cfg)
    assert added != first
    os.remove(elsewhere / "dog" / "000.jpg")  # ...and removed.
    assert data_fingerprint(cfg) not in (first, added)


def test_photos_added_under_a_linked_class_folder_are_trained_on(tmp_path):
    """Before: the second load reused the first one's decoded-image cache: 6 of 12
    training images instead of 9 of 18."""
    data, elsewhere = linked_folder(tmp_path)
    cfg = config(data, tmp_path)
    first, _ = pixels(cfg)
    make_split(str(elsewhere), {"cat": 9, "dog": 9}, 1)  # 000-005 rewritten the same.
    second, images = pixels(cfg)
    uncached, expected = pixels(cfg.replace(image_cache="off"))
    assert sum(second.sizes.values()) == sum(uncached.sizes.values()) == 18
    assert sum(first.sizes.values()) == 12
    np.testing.assert_array_equal(images, expected)


def test_a_link_loop_among_the_folders_is_listed_not_followed(tmp_path):
    """Links to a folder the link lies in (itself, its parent, /): walked once, listed
    among the skipped entries (before: not listed)."""
    data, elsewhere = linked_folder(tmp_path)
    (elsewhere / "cat" / "again").symlink_to(elsewhere / "cat", target_is_directory=True)
    (elsewhere / "cat" / "up").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "dog" / "root").symlink_to("/", target_is_directory=True)
    paths, others = folders.image_files(str(data / "train" / "cat"))
    assert len(paths) == 6
    assert [os.path.basename(p) for p in others] == ["again", "up"]
    splits = input_pipeline.load_splits(config(data, tmp_path, image_cache="off"))
    assert sum(splits.sizes.values()) == 12
    assert [os.path.basename(p) for p in splits.skipped] == ["again", "up", "root"]


# ---- item 1: two folders, rewritten pixels ---------------------------------------------

def twin_folders(tmp_path):
    """Two folders whose files agree in name, size and mtime, not in pixels."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_split(str(a / "train"), {"cat": 4, "dog": 4}, 1)
    make_split(str(b / "train"), {"cat": 4, "dog": 4}, 2)
    for path in sorted((a / "train").rglob("*.jpg")):
        pair = (path, b / path.relative_to(a))
        size = max(p.stat().st_size for p in pair)
        for p in pair:  # Zeros after a JPEG's end: ignored by every decoder.
            p.write_bytes(p.read_bytes().ljust(size, b"\0"))
            os.utime(p, ns=(1_600_000_000 * 10**9,) * 2)
    return a, b


def test_two_folders_alike_in_names_sizes_and_times_do_not_share_caches(tmp_path):
    """Before: the second folder's run read the first one's decoded images (and the
    feature cache key was the same but for the folder's spelling)."""
    a, b = twin_folders(tmp_path)
    shared = str(tmp_path / "shared")
    cfg_a = config(a, tmp_path, image_cache_dir=shared)
    cfg_b = config(b, tmp_path, image_cache_dir=shared)
    assert data_fingerprint(cfg_a) != data_fingerprint(cfg_b)
    _, from_a = pixels(cfg_a)
    _, from_b = pixels(cfg_b)
    _, expected_b = pixels(cfg_b.replace(image_cache="off"))
    assert not np.array_equal(from_a, from_b)
    np.testing.assert_array_equal(from_b, expected_b)


def test_pixels_rewritten_with_size_and_time_kept_change_every_key(tmp_path):
    """Before: the fingerprint, the image cache key and the feature cache key were all
    made of names, sizes and times: both caches were reused with the old pixels."""
    data = tmp_path / "data"
    make_split(str(data / "train"), {"cat": 4, "dog": 4}, 1)
    cfg = config(data, tmp_path)
    fingerprint, key = data_fingerprint(cfg), feature_cache.data_key(cfg)
    _, before = pixels(cfg)
    for i, path in enumerate(sorted((data / "train" / "cat").iterdir())):
        keep_size_and_time(path, encode(photo(999 + i), "JPEG", quality=95))
    assert data_fingerprint(cfg) != fingerprint
    assert feature_cache.data_key(cfg) != key
    _, after = pixels(cfg)
    _, expected = pixels(cfg.replace(image_cache="off"))
    np.testing.assert_array_equal(after, expected)
    assert not np.array_equal(after, before)


def test_the_same_bytes_elsewhere_are_the_same_data(tmp_path):
    """A copy (new mtimes) of a folder is the same data: same fingerprint, same caches."""
    data = tmp_path / "data"
    make_split(str(data / "train"), {"cat": 4, "dog": 4}, 1)
    shutil.copytree(data, tmp_path / "copy", copy_function=shutil.copy)
    assert data_fingerprint(config(data, tmp_path)) == data_fingerprint(
        config(tmp_path / "copy", tmp_path))


# ---- item 1: a feature cache holding NaN ------------------------------------------------

def tiny_cut():
    inputs = keras.Input((4, 4, 3))
    frozen = keras.layers.Conv2D(2, 3, name="frozen")
    frozen.trainable = False
    boundary = keras.layers.GlobalAveragePooling2D()(frozen(inputs))
    prefix = keras.Model(inputs, boundary)
    features = keras.Input((2,))
    suffix = keras.Model(features, keras.layers.Dense(2)(features))
    return feature_cache.Cut(prefix, suffix, "dense", "pool")


def tiny_images(n=6):
    import tensorflow as tf
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(
        (rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8), np.arange(n, dtype=np.int32) % 2))


def test_a_feature_cache_holding_nan_is_set_aside_and_computed_again(tmp_path, monkeypatch):
    """Before: the NaN features were trained on; the run then advised a lower rate.
    Whether the last, partial batch is padded depends on measured timings (a batch of
    another shape can round differently in the last bit): fixed here, so the two
    computations are comparable bit for bit on a busy machine too."""
    monkeypatch.setattr(feature_cache, "_pad_is_cheaper", lambda *a, **k: True)
    cut, path = tiny_cut(), str(tmp_path / "features" / "train")
    first = list(feature_cache.cached_features(cut, tiny_images(), 6, path, 4)
                 .as_numpy_iterator())
    damaged = np.load(path + feature_cache.FEATURES)
    damaged[3, 1] = np.nan
    np.save(str(tmp_path / "damaged.npy"), damaged)
    os.replace(tmp_path / "damaged.npy", path + feature_cache.FEATURES)
    again = list(feature_cache.cached_features(cut, tiny_images(), 6, path, 4)
                 .as_numpy_iterator())
    for (f, y), (g, z) in zip(first, again, strict=True):
        np.testing.assert_array_equal(f, g)
        assert y == z
    assert np.isfinite(np.load(path + feature_cache.FEATURES)).all()


@pytest.mark.parametrize("disk", [True, False])
def test_non_finite_features_are_an_error_that_names_the_weights(tmp_path, disk):
    """Before: NaN features were cached and trained on (then "lower --learning_rate")."""
    cut = tiny_cut()
    kernel, bias = cut.prefix.get_layer("frozen").get_weights()
    kernel[0, 0, 0, 0] = np.nan
    cut.prefix.get_layer("frozen").set_weights([kernel, bias])
    path = str(tmp_path / "features" / "train") if disk else None
    with pytest.raises(RunError, match="non-finite.*not the learning rate"):
        feature_cache.cached_features(cut, tiny_images(), 6, path, 4)
    if disk:
        assert not os.path.exists(path + feature_cache.FEATURES)
        assert os.listdir(tmp_path / "features") == []


# ---- item 4: a damaged decoded-image cache ---------------------------------------------

def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip_bytes(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def wrong_count(path):
    complete = os.path.join(os.path.dirname(path), image_cache.COMPLETE)
    with open(complete, encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["examples"] += 1
    with open(complete, "w", encoding="utf-8") as f:
        json.dump(manifest, f)


@pytest.mark.parametrize("damage", [truncate, flip_bytes, wrong_count])
def test_a_damaged_image_cache_is_set_aside_and_rebuilt(tmp_path, damage):
    """Before: InternalError "Read less bytes" / DataLossError / FailedPreconditionError
    in every later run."""
    data = tmp_path / "data"
    make_split(str(data / "train"), {"cat": 6, "dog": 6}, 1)
    cfg = config(data, tmp_path)
    _, expected = pixels(cfg.replace(image_cache="off"))
    pixels(cfg)
    (key,) = os.listdir(image_cache.root(cfg))
    damage(os.path.join(image_cache.root(cfg), key, "train", "images.data-00000-of-00001"))
    image_cache.counters.clear()
    _, again = pixels(cfg)
    np.testing.assert_array_equal(again, expected)
    assert image_cache.counters["stale"] == 1 and image_cache.counters["published"] == 1
    image_cache.counters.clear()
    _, third = pixels(cfg)  # The rebuilt cache is used.
    np.testing.assert_array_equal(third, expected)
    assert image_cache.counters["write"] == 0 and image_cache.counters["stale"] == 0


# ---- item 6: dangling links and link loops with the feature cache on -------------------

def test_dangling_links_and_loops_are_skipped_and_listed_with_the_feature_cache(tmp_path):
    """Before: FileNotFoundError / ELOOP traceback from feature_cache.data_key (which
    stat()ed every entry), with the run's files left behind."""
    data = tmp_path / "data"
    make_split(str(data / "train"), {"cat": 6, "dog": 6}, 1)
    cat = data / "train" / "cat"
    (cat / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (cat / "loop.jpg").symlink_to(cat / "loop.jpg")
    (cat / "notes").symlink_to(tmp_path / "nowhere")  # Not named like an image: ignored.
    cfg = Config(workdir=str(tmp_path / "run"), backbone="mobilenet", alpha=0.25,
                 weights="none", image_size=S, data_dir=str(data), batch_size=4, epochs=1,
                 verbose=0, unfreeze_from="conv_dw_13", tensorboard=False,
                 feature_cache="disk", validation_split=0.25, test_split_fraction=0.25)
    phases.run(cfg)
    listed = open(os.path.join(cfg.run_dir, "skipped_files.txt"), encoding="utf-8").read()
    assert sorted(os.path.basename(p) for p in listed.split()) == ["gone.jpg", "loop.jpg"]
    assert os.listdir(os.path.join(cfg.workdir, feature_cache.CACHE_DIR))


def test_the_fingerprint_covers_the_files_the_run_lists_and_no_other(tmp_path):
    """The fingerprint walks the class folders as `load` does. Before: it walked the whole
    folder on its own, so an image outside every class folder (never read) changed it
    and refused a resume."""
    data = tmp_path / "data"
    make_split(str(data / "train"), {"cat": 4, "dog": 4}, 1)
    cfg = config(data, tmp_path)
    first = data_fingerprint(cfg)
    (data / "train" / "stray.jpg").write_bytes(encode(photo(5), "JPEG"))
    (data / "README.png").write_bytes(encode(photo(6), "PNG"))
    assert data_fingerprint(cfg) == first
    assert sum(input_pipeline.load_splits(cfg).sizes.values()) == 8
