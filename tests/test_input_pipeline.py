"""Input pipeline: image folders (layouts, carving, dirty files, errors), synthetic data
and the batching that fixes the training order. Tiny images made here with Pillow."""
import hashlib
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tapefit import input_pipeline
from tapefit.flags.config import Config
from tapefit.input_pipeline import DataError, batching, synthetic

S = 32


pytestmark = pytest.mark.usefixtures("no_network")  # From conftest.py.


def config(data_dir=None, **changes):
    return Config(data_dir=str(data_dir) if data_dir else None, image_size=S, batch_size=4,
                  **changes)


# ---- image files ---------------------------------------------------------------------

def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(seed: int, size=(40, 48)) -> Image.Image:
    """A small random picture, different for every seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[0] // 4, size[1] // 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size[1], size[0]), Image.BILINEAR)


def solid(color, mode="RGB", size=(24, 20)) -> Image.Image:
    return Image.new("RGB", size, color).convert(mode)


def write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def make_split(folder, counts: dict, seed: int):
    """`folder/<class>/<i>.jpg` with counts[class] distinct photos; returns the paths."""
    paths = []
    for c, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            paths.append(write(os.path.join(folder, name, f"{i:03d}.jpg"),
                               encode(photo(seed * 1000 + c * 100 + i), "JPEG", quality=95)))
    return paths


def as_arrays(ds):
    items = list(ds.as_numpy_iterator())
    return np.stack([x for x, _ in items]), np.array([y for _, y in items])


def fingerprints(ds):
    return [hashlib.sha1(x.tobytes()).hexdigest() for x, _ in ds.as_numpy_iterator()]


def check_elements(splits):
    for ds in (splits.train, splits.validation, splits.test):
        image_spec, label_spec = ds.element_spec
        assert image_spec.shape == (S, S, 3) and image_spec.dtype == tf.uint8
        assert label_spec.shape == () and label_spec.dtype == tf.int32


# ---- layouts -----------------------------------------------------------------------------

def test_train_validation_test_folders(tmp_path):
    make_split(tmp_path / "train", {"cat": 5, "dog": 4}, seed=1)
    make_split(tmp_path / "validation", {"cat": 2, "dog": 2}, seed=2)
    test_paths = make_split(tmp_path / "test", {"cat": 3, "dog": 1}, seed=3)
    splits = input_pipeline.load_splits(config(tmp_path))
    assert splits.class_names == ("cat", "dog")
    assert splits.sizes == {"train": 9, "validation": 4, "test": 4}
    assert splits.skipped == ()
    check_elements(splits)
    images, labels = as_arrays(splits.test)
    assert labels.tolist() == [0, 0, 0, 1]  # fixed order: by class, then by path
    for image, path in zip(images, sorted(test_paths)):
        np.testing.assert_array_equal(image, input_pipeline.read_image_file(path, S))
    assert len(fingerprints(splits.train)) == 9


def test_val_folder_and_carved_test(tmp_path):
    make_split(tmp_path / "train", {"cat": 10, "dog": 10}, seed=1)
    make_split(tmp_path / "val", {"cat": 3, "dog": 3}, seed=2)
    splits = input_pipeline.load_splits(config(tmp_path, test_split_fraction=0.2))
    assert splits.sizes == {"train": 16, "validation": 6, "test": 4}
    assert sorted(as_arrays(splits.test)[1].tolist()) == [0, 0, 1, 1]
    assert not set(fingerprints(splits.train)) & set(fingerprints(splits.test))


def test_train_and_test_folders_carve_validation(tmp_path):
    make_split(tmp_path / "train", {"cat": 10, "dog": 10}, seed=1)
    make_split(tmp_path / "test", {"cat": 2, "dog": 2}, seed=2)
    splits = input_pipeline.load_splits(config(tmp_path, validation_split=0.1))
    assert splits.sizes == {"train": 18, "validation": 2, "test": 4}
    assert sorted(as_arrays(splits.validation)[1].tolist()) == [0, 1]


@pytest.mark.parametrize("layout", ["train_only", "flat"])
def test_carving_is_stratified_disjoint_and_seeded(tmp_path, layout):
    folder = tmp_path / "train" if layout == "train_only" else tmp_path
    make_split(folder, {"cat": 20, "dog": 10}, seed=1)
    cfg = config(tmp_path, validation_split=0.2, test_split_fraction=0.1)
    splits = input_pipeline.load_splits(cfg)
    assert splits.sizes == {"train": 21, "validation": 6, "test": 3}
    check_elements(splits)
    assert np.bincount(as_arrays(splits.validation)[1]).tolist() == [4, 2]
    assert np.bincount(as_arrays(splits.test)[1]).tolist() == [2, 1]
    prints = {s: fingerprints(getattr(splits, s)) for s in ("train", "validation", "test")}
    everything = prints["train"] + prints["validation"] + prints["test"]
    assert len(set(everything)) == 30  # disjoint, and together every image
    again = input_pipeline.load_splits(cfg)
    assert {s: fingerprints(getattr(again, s)) for s in prints} == prints
    other = input_pipeline.load_splits(cfg.replace(split_seed=7))
    assert set(fingerprints(other.validation)) != set(prints["validation"])


def test_max_examples_per_split_takes_a_seeded_subset(tmp_path):
    make_split(tmp_path, {"cat": 20, "dog": 10}, seed=1)
    cfg = config(tmp_path, validation_split=0.2, test_split_fraction=0.1,
                 max_examples_per_split=5)
    splits = input_pipeline.load_splits(cfg)
    assert splits.sizes == {"train": 5, "validation": 5, "test": 3}
    assert set(as_arrays(splits.train)[1].tolist()) == {0, 1}
    full = input_pipeline.load_splits(cfg.replace(max_examples_per_split=0))
    assert set(fingerprints(splits.train)) < set(fingerprints(full.train))
    assert fingerprints(input_pipeline.load_splits(cfg).train) == fingerprints(splits.train)


# ---- dirty data ----------------------------------------------------------------------

def test_unreadable_files_are_skipped_and_odd_formats_decoded(tmp_path):
    cat, dog = tmp_path / "train" / "cat", tmp_path / "train" / "dog"
    jpeg = encode(photo(5, size=(64, 64)), "JPEG")
    gif = encode(photo(6).convert("P"), "GIF")
    two_frames = [solid((220, 30, 30)).convert("P"), solid((30, 30, 220)).convert("P")]
    # Readable, if odd: path -> the RGB colour it must decode to.
    odd = {
        write(cat / "01_png_named.jpg", encode(solid((10, 200, 30)), "PNG")): (10, 200, 30),
        write(cat / "02_gray.jpg", encode(solid((90, 90, 90), "L"), "JPEG")): (90, 90, 90),
        write(cat / "03_rgba.png", encode(Image.new("RGBA", (20, 20), (250, 120, 0, 100)),
                                          "PNG")): (250, 120, 0),
        write(cat / "04_cmyk.jpg", encode(solid((200, 0, 100), "CMYK"), "JPEG")): (200, 0, 100),
        write(cat / "05_animated.gif", encode(two_frames[0], "GIF", save_all=True,
                                              append_images=two_frames[1:])): (220, 30, 30),
        write(cat / "06_palette.bmp", encode(solid((30, 140, 240), "P"), "BMP")): (30, 140, 240),
        write(cat / "07_tiff_named.jpg", encode(solid((70, 20, 160)), "TIFF")): (70, 20, 160),
        write(cat / "08_16bit.png", encode(Image.fromarray(
                np.full((16, 16), 50000, np.uint16)), "PNG")): (194, 194, 194),
        write(cat / "09_upper.JPG", encode(solid((0, 0, 0)), "JPEG")): (0, 0, 0),
        write(cat / "10_progressive.jpeg", encode(solid((255, 255, 255)), "JPEG",
                                                  progressive=True)): (255, 255, 255),
        write(cat / "sub" / "11_nested.png", encode(solid((1, 2, 3)), "PNG")): (1, 2, 3),
    }
    good_dogs = make_split(tmp_path / "train", {"dog": 2}, seed=9)
    bad = [
        write(dog / "bad_empty.jpg", b""),
        write(dog / "bad_truncated.jpg", jpeg[:len(jpeg) // 2]),
        write(dog / "bad_text.jpg", b"this is not a picture\n"),
        write(dog / "bad_garbage.jpg", np.random.default_rng(0).bytes(3000)),
        write(dog / "bad_gif.gif", gif[:len(gif) // 2]),
        write(dog / "bad_header_only.png", encode(photo(7), "PNG")[:60]),
    ]
    write(cat / "notes.txt", b"not listed: not an image name")
    write(cat / ".DS_Store", b"\0\0")
    write(cat / "._01_png_named.jpg", b"AppleDouble junk: hidden files are ignored")
    for split in ("validation", "test"):
        make_split(tmp_path / split, {"cat": 1, "dog": 1}, seed=3)

    splits = input_pipeline.load_splits(config(tmp_path))
    assert sorted(splits.skipped) == sorted(bad)
    assert splits.sizes == {"train": len(odd) + len(good_dogs), "validation": 2, "test": 2}
    images, labels = as_arrays(splits.train)
    assert labels.tolist() == [0] * len(odd) + [1] * len(good_dogs)
    for image, path in zip(images, sorted(odd)):
        mean = image.reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, odd[path], atol=4, err_msg=path)
        np.testing.assert_array_equal(image, input_pipeline.read_image_file(path, S))
    capped = input_pipeline.load_splits(config(tmp_path, max_examples_per_split=3))
    assert capped.sizes["train"] == 3


def test_read_image_file_rejects_unreadable_files(tmp_path):
    path = write(tmp_path / "x.jpg", b"GIF89a garbage")
    with pytest.raises(DataError, match="not a readable image"):
        input_pipeline.read_image_file(path, S)
    with pytest.raises(DataError, match="no such image file"):
        input_pipeline.read_image_file(str(tmp_path / "missing.jpg"), S)


# ---- errors --------------------------------------------------------------------------

def _missing(root):
    return root / "nope"


def _empty(root):
    root.mkdir(exist_ok=True)
    return root


def _empty_class(root):
    make_split(root / "train", {"cat": 2}, seed=1)
    (root / "train" / "dog").mkdir()
    return root


def _single_class(root):
    make_split(root / "train", {"cat": 3}, seed=1)
    return root


def _classes_differ(root):
    make_split(root / "train", {"cat": 5, "dog": 5}, seed=1)
    make_split(root / "test", {"cat": 1, "dgo": 1}, seed=2)
    return root


def _loose_images(root):
    write(root / "a.jpg", encode(photo(1), "JPEG"))
    return root


def _no_train(root):
    make_split(root / "validation", {"cat": 1, "dog": 1}, seed=1)
    return root


def _too_few(root):
    make_split(root, {"cat": 1, "dog": 1}, seed=1)
    return root


def _all_unreadable(root):
    make_split(root / "train", {"cat": 2, "dog": 2}, seed=1)
    make_split(root / "validation", {"cat": 1, "dog": 1}, seed=1)
    write(root / "test" / "cat" / "a.jpg", b"")
    write(root / "test" / "dog" / "b.jpg", b"junk")
    return root


@pytest.mark.parametrize("make,message", [
    (_missing, "is not a folder"),
    (_empty, "no images in"),
    (_empty_class, "holds no images"),
    (_single_class, "single class folder 'cat'"),
    (_classes_differ, "class folders differ"),
    (_loose_images, "no class sub-folders"),
    (_no_train, "but no train/"),
    (_too_few, "too few to carve"),
    (_all_unreadable, "the test split .* has no readable images"),
])
def test_folder_errors_are_one_line_and_name_the_fix(tmp_path, make, message):
    data_dir = make(tmp_path / "data")
    with pytest.raises(DataError, match=message) as error:
        input_pipeline.load_splits(config(data_dir))
    assert "\n" not in str(error.value)


def test_test_fraction_must_allow_carving(tmp_path):
    make_split(tmp_path, {"cat": 5, "dog": 5}, seed=1)
    with pytest.raises(DataError, match="--test_split_fraction=0.0 must be in"):
        input_pipeline.load_splits(config(tmp_path, test_split_fraction=0.0))


# ---- synthetic -------------------------------------------------------------------------

def test_synthetic_is_seeded_and_learnable():
    cfg = config(dataset="synthetic", synthetic_examples=40)
    splits = input_pipeline.load_splits(cfg)
    assert splits.class_names == ("cat", "dog")
    assert splits.sizes == {"train": 40, "validation": 20, "test": 20}
    check_elements(splits)
    images, labels = as_arrays(splits.train)
    again, _ = as_arrays(input_pipeline.load_splits(cfg).train)
    np.testing.assert_array_equal(images, again)
    other, _ = as_arrays(input_pipeline.load_splits(cfg.replace(split_seed=1)).train)
    assert not np.array_equal(images, other)
    assert not np.array_equal(images[:20], as_arrays(splits.validation)[0])
    assert np.bincount(labels).tolist() == [20, 20]
    means = [images[labels == c].reshape(-1, 3).mean(axis=0) for c in (0, 1)]
    assert means[0][0] > means[1][0] + 30  # cats are redder ...
    assert means[0].mean() > means[1].mean()  # ... and brighter
    capped = input_pipeline.load_splits(cfg.replace(max_examples_per_split=8))
    assert capped.sizes == {"train": 8, "validation": 8, "test": 8}
    assert len(list(capped.test)) == 8


def test_synthetic_needs_two_examples():
    with pytest.raises(DataError, match=r"--synthetic_examples=1 must be in \[2, "):
        input_pipeline.load_splits(config(dataset="synthetic", synthetic_examples=1))


# ---- batching ------------------------------------------------------------------------

def numbered(n):
    """n examples whose image pixels and label are the example's index."""
    ids = np.arange(n)
    images = np.broadcast_to(ids[:, None, None, None], (n, 2, 2, 3)).astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, ids.astype(np.int32)))


def epochs(n, batch_size, seed, count=3, **kwargs):
    ds, steps = input_pipeline.train_batches(numbered(n), n, batch_size, seed, **kwargs)
    iterator = iter(ds)
    out = []
    for _ in range(count):
        batches = [next(iterator) for _ in range(steps)]
        for images, labels in batches:
            assert images.dtype == tf.float32 and labels.dtype == tf.int32
            np.testing.assert_array_equal(images.numpy()[:, 0, 0, 0], labels.numpy())
        out.append([b[1].numpy().tolist() for b in batches])
    return steps, out


def test_train_batches_reshuffle_every_epoch_deterministically():
    steps, runs = epochs(21, 4, seed=3)
    assert steps == 6
    for batches in runs:
        assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 1]  # partial last batch kept
        assert sorted(sum(batches, [])) == list(range(21))  # each epoch: all examples once
    orders = [sum(batches, []) for batches in runs]
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert epochs(21, 4, seed=3)[1] == runs
    assert epochs(21, 4, seed=4)[1] != runs


def labels_of(iterator, steps):
    return [next(iterator)[1].numpy().tolist() for _ in range(steps)]


def test_train_batches_order_does_not_depend_on_how_many_iterators_were_made():
    """Keras fit() makes extra iterators; every iterator must replay the same epochs."""
    batches, steps = input_pipeline.train_batches(numbered(9), 9, 4, seed=5)
    first = iter(batches)
    stream = labels_of(first, 3 * steps)
    assert labels_of(iter(batches), 3 * steps) == stream  # a second iterator: same stream
    rebuilt, _ = input_pipeline.train_batches(numbered(9), 9, 4, seed=5)
    assert labels_of(iter(rebuilt), 3 * steps) == stream


def test_train_batches_resume_at_any_epoch_and_batch():
    batches, steps = input_pipeline.train_batches(numbered(9), 9, 4, seed=5)
    stream = labels_of(iter(batches), 4 * steps)
    for epoch, skip in [(1, 0), (1, 2), (2, 1), (0, 5)]:
        resumed, _ = input_pipeline.train_batches(numbered(9), 9, 4, seed=5,
                                                  start_epoch=epoch, skip_batches=skip)
        position = epoch * steps + skip
        assert labels_of(iter(resumed), 4 * steps - position) == stream[position:]


def test_train_batches_cache_in_a_file_over_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "CACHE_BUDGET_BYTES", 10)
    cached = epochs(10, 3, seed=0, cache_dir=str(tmp_path))[1]
    assert any(name.startswith("tapefit-cache-") for name in os.listdir(tmp_path))
    assert cached == epochs(10, 3, seed=0)[1]  # not cached at all: same data order
    monkeypatch.setattr(batching, "CACHE_BUDGET_BYTES", 2 << 30)
    assert cached == epochs(10, 3, seed=0)[1]  # cached in memory


def test_eval_batches_keep_order_and_cast():
    batches = list(input_pipeline.eval_batches(numbered(10), 4))
    assert [b[1].numpy().tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0][0].dtype == tf.float32
    assert [b[1].numpy().tolist() for b in input_pipeline.eval_batches(numbered(10), 4)] == \
        [b[1].numpy().tolist() for b in batches]


def test_train_batches_rejects_an_empty_split():
    with pytest.raises(DataError, match="empty"):
        input_pipeline.train_batches(numbered(1).take(0), 0, 4, 0)


def test_synthetic_generation_matches_split_sizes():
    images, labels = synthetic.generate(6, 8, seed=0)
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    assert synthetic.split_sizes(3) == {"train": 3, "validation": 2, "test": 2}


def count_caches(ds):
    count = 0
    while ds is not None:
        count += type(ds).__name__.endswith("CacheDataset")
        ds = getattr(ds, "_input_dataset", None)
    return count


def test_an_already_cached_dataset_is_not_cached_twice():
    # train_batches caches through _cache (its epochs are built inside a flat_map).
    assert count_caches(batching._cache(numbered(5), 5, None, None)) == 1
    assert count_caches(batching._cache(numbered(5).cache(), 5, None, None)) == 1
    assert count_caches(batching._cache(numbered(5), 5, None, False)) == 0
    assert count_caches(input_pipeline.eval_batches(numbered(5), 2)) == 1
    assert count_caches(input_pipeline.eval_batches(numbered(5).cache(), 2)) == 1


@pytest.mark.parametrize("source", ["folder", "folder_cached", "synthetic"])
def test_every_split_stream_runs_without_the_autotune_model_thread(tmp_path, source):
    """Issue 24: destroying an iterator tuned by tf.data's autotune model thread can
    block until the thread's wait ends (10 ms * 2**k, up to 60 s); the feature cache's
    frozen pass iterates `split.batch(n).prefetch(1)` once per split and stalled 14-19 s
    at its end. Every split, and every stream made from it, has the thread off."""
    if source == "synthetic":
        cfg = Config(dataset="synthetic", image_size=S, batch_size=4, synthetic_examples=24)
    else:
        make_split(tmp_path / "train", {"cat": 6, "dog": 6}, seed=1)
        cfg = config(tmp_path, image_cache="disk" if source == "folder_cached" else "off",
                     image_cache_dir=str(tmp_path / "image_cache"))
    splits = input_pipeline.load_splits(cfg)
    for ds in (splits.train, splits.validation, splits.test):
        assert ds.options().autotune.enabled is False
        stream = ds.batch(4).prefetch(1)  # What the frozen pass iterates.
        assert stream.options().autotune.enabled is False
        assert sum(int(y.shape[0]) for _, y in stream) == len(list(ds))
    assert batching.eval_batches(splits.validation, 4).options().autotune.enabled is False
