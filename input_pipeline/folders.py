"""Image folders: `DIR/{train,validation|val,test}/<class>/*`, or `DIR/<class>/*`.

Class names are the sorted sub-folder names and a label is a class's index, as in
`keras.utils.image_dataset_from_directory`. Missing validation and test splits are
carved from train (stratified by class, seeded with `cfg.split_seed`).
`--max_examples_per_class` keeps at most N readable images of each class per split
(a seeded choice: `check_per_class`), `--max_examples_per_split` at most N per split
(a seeded, class-stratified choice); with both, the split's limit applies to what
the class limit kept.

Every file is checked once, up front, in a thread pool: a file TensorFlow decodes
is read by `tf.io.decode_image` in the pipeline; a valid picture that TensorFlow
cannot decode correctly (e.g. a TIFF or palette BMP named .jpg) is decoded by
Pillow, resized, and kept in memory as PNG; anything else is skipped and listed
in `Splits.skipped`. So the pipeline never meets a file it cannot decode.

Only regular files are read (a symbolic link to one counts): a FIFO, socket,
device, dangling link or link in a loop named like an image is skipped and listed
too, never opened in a way that could block. Links to folders are followed, except
one back to a folder it lies in (a loop: listed, not followed). The same listing
(`image_files`) gives `data_fingerprint`, which identifies an image by its path and
the SHA-256 of its bytes. File names need not be UTF-8: they are read
through their bytes (`os.fsencode`) and listed with undecodable bytes escaped
(`printable`).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import logging
import os
import stat
import time
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

from tapefit.flags.config import DATA, key_values
from tapefit.input_pipeline.common import (
    SPLITS,
    DataError,
    Splits,
    content_digest,
    map_examples,
    resize_uint8,
)

log = logging.getLogger(__name__)

# The extensions keras.utils.image_dataset_from_directory lists (case-insensitive).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
_VALIDATION_DIRS = ("validation", "val")
# Pillow's (format, mode) pairs that tf.io.decode_image decodes to the right RGB
# pixels; others go through Pillow (TF reads palette BMPs as gray, fails on TIFF).
_TF_FORMATS = {"JPEG": None, "PNG": None, "GIF": None, "WEBP": None,
               "BMP": ("RGB", "RGBA", "L")}


def load(cfg) -> Splits:
    """Loads `cfg.data_dir` (see the module docstring)."""
    root = os.path.normpath(cfg.data_dir)
    if not os.path.isdir(root):
        raise DataError(
                f"--data_dir={cfg.data_dir} is not a folder; pass an image folder "
                "(DIR/train, DIR/validation, DIR/test with one sub-folder per class) "
                "or --dataset=synthetic")
    folders = _find_layout(root)
    skipped, listings = [], {}
    for split, folder in folders.items():
        if folder:
            listings[split] = _list_classes(folder, skipped)
    class_names = _check_classes(listings, folders)
    entries = {split: _entries(listing, class_names) for split, listing in listings.items()}
    entries = _carve_missing(entries, folders, cfg)

    t0 = time.perf_counter()
    datasets, sizes, ids = {}, {}, {}
    caches = _image_caches(cfg, root)
    with concurrent.futures.ThreadPoolExecutor(_num_workers()) as pool:
        for index, split in enumerate(SPLITS):
            manifest = caches[split].manifest() if caches else None
            if manifest:  # Decoded before: neither checked nor decoded again.
                skipped += [os.path.join(root, path) for path in manifest["skipped"]]
                sizes[split] = manifest["examples"]
                datasets[split] = caches[split].dataset(None, sizes[split], cfg.image_size)
                ids.update(example_ids(split, manifest, sizes[split]))
                continue
            candidates = entries[split]
            limit = cfg.max_examples_per_split if cfg.max_examples_per_split > 0 else None
            per_class = getattr(cfg, "max_examples_per_class", 0)
            if per_class > 0:  # Then --max_examples_per_split of what it keeps.
                kept, bad = check_per_class(pool, candidates, cfg.image_size, per_class,
                                            [cfg.split_seed, 3, index])
                if limit is not None and len(kept) > limit:
                    rng = np.random.default_rng([cfg.split_seed, 2, index])
                    kept = [kept[i] for i in _stratified_order(kept, rng)[:limit]]
            else:
                if limit is not None and len(candidates) > limit:
                    rng = np.random.default_rng([cfg.split_seed, 2, index])
                    candidates = [candidates[i] for i in _stratified_order(candidates, rng)]
                kept, bad = _check_files(pool, candidates, cfg.image_size, limit)
            skipped += bad
            if not kept:
                source = folders[split] or f"carved from {folders['train']}"
                raise DataError(
                        f"the {split} split ({source}) has no readable images "
                        f"({len(bad)} unreadable skipped, e.g. "
                        f"{printable(bad[0]) if bad else 'none'}); "
                        "add readable images")
            kept.sort(key=lambda e: (e[1], e[0]))
            datasets[split] = _dataset(kept, cfg.image_size)
            sizes[split] = len(kept)
            ids[split] = relative_ids(kept, root)
            if caches:
                datasets[split] = caches[split].dataset(
                    datasets[split], len(kept), cfg.image_size,
                    {"skipped": sorted(os.path.relpath(path, root) for path in bad),
                     "ids": list(ids[split])})
    log.info("checked image files in %.1fs: sizes %s, %d skipped",
             time.perf_counter() - t0, sizes, len(skipped))
    return Splits(class_names=class_names, sizes=sizes,
                  skipped=tuple(sorted(printable(path) for path in skipped)), ids=ids,
                  **datasets)


def relative_ids(kept, root: str) -> tuple:
    """The examples' ids (evaluate's predictions.npz): paths relative to `root`."""
    return tuple(printable(os.path.relpath(entry[0], root)) for entry in kept)


def example_ids(split: str, manifest: dict, size: int) -> dict:
    """{split: ids} from an image cache's complete.json ({} when it has none)."""
    found = manifest.get("ids")
    if isinstance(found, list) and len(found) == size and all(isinstance(i, str)
                                                              for i in found):
        return {split: tuple(found)}
    return {}


def _image_caches(cfg, root: str, splits=SPLITS) -> dict | None:
    """{split: its `image_cache.SplitCache`} under `--image_cache=disk`, else None."""
    from tapefit.input_pipeline import image_cache
    if image_cache.resolve(cfg, "folder") != "disk":
        return None
    fingerprint = data_fingerprint(cfg)

    def unchanged() -> bool:
        try:
            return data_fingerprint(cfg) == fingerprint
        except DataError:
            return False

    folder = os.path.join(image_cache.root(cfg), image_cache.key(cfg, "folder " + fingerprint))
    return {split: image_cache.SplitCache(folder, split, unchanged) for split in splits}


def printable(path: str) -> str:
    """`path` with the bytes of a non-UTF-8 file name escaped (`\\xff`): safe to print,
    log or write to a UTF-8 file."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def image_files(folder: str) -> tuple[list, list]:
    """(regular image files, other entries) under `folder`, sorted.

    Recursive; hidden files and folders (".name") are left out. Links to folders are
    followed (a class folder linked from a shared data set is data like any other),
    except a link to a folder that the one it is in lies inside of (a loop: `up ->
    ..`, `all -> /`), which is listed among the others. The others are also entries
    named like images that are no regular files: FIFOs, sockets, devices, dangling
    links and links in a loop: nothing to read.
    """
    paths, others = [], []

    def walk(directory: str, real: str, ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:  # Unreadable, or removed meanwhile: nothing in it is read.
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                identity = _identity(os.stat(entry.path)) if is_dir else None
            except OSError:  # A link in a loop (ELOOP) or removed meanwhile.
                is_dir = False
            if not is_dir:
                if _is_image_name(entry.name):
                    (paths if os.path.isfile(entry.path) else others).append(entry.path)
                continue
            target = os.path.realpath(entry.path)
            if identity in ancestors or _inside(real, target):
                others.append(entry.path)
            else:
                walk(entry.path, target, ancestors | {identity})

    try:
        walk(folder, os.path.realpath(folder), frozenset({_identity(os.stat(folder))}))
    except OSError:
        pass
    return sorted(paths), sorted(others)


def _inside(path: str, folder: str) -> bool:
    """Whether real path `path` is `folder` or lies inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino


def data_fingerprint(cfg) -> str:
    """A hex digest that changes when the data `cfg` names changes.

    An image folder: every image file's path (relative to `cfg.data_dir`, as bytes)
    and a SHA-256 of its bytes (`content_digest`) — the files `load` lists, by the
    same walks (`_listed_files`) — so images added, removed, renamed or rewritten
    change it, whatever their size and modification time say; the folder's own path
    and the files' times do not (a copy of the folder is the same data). tfds and
    synthetic data: a hash of the data flags (what the run sees is a function of
    them). The data flags are the `Config` fields with the DATA role
    (`flags.config.key_values`); with an image folder, every flag but --data_dir
    enters the hash too.
    """
    digest = hashlib.sha256()
    flags = {name: value for name, value in key_values(cfg, DATA).items()
             if name != "data_dir"}
    digest.update(json.dumps(flags, sort_keys=True).encode())
    if cfg.data_dir:
        root = os.path.normpath(cfg.data_dir)
        if not os.path.isdir(root):
            raise DataError(f"--data_dir={printable(cfg.data_dir)} is not a folder; pass the "
                            "image folder the run was trained on")
        paths = _listed_files(root)
        with concurrent.futures.ThreadPoolExecutor(_num_workers()) as pool:
            contents = pool.map(content_digest, paths)
            for path, content in zip(paths, contents, strict=True):
                if content is None:  # Removed while listing: not part of the data.
                    continue
                relative = os.fsencode(os.path.relpath(path, root))
                digest.update(b"%s\0%s\n" % (relative, content.encode()))
    return digest.hexdigest()


def _listed_files(root: str) -> list:
    """The image files `load` lists under `root`: those of every class folder of every
    split folder (the same walks, so the same links followed)."""
    paths = []
    for folder in _find_layout(root).values():
        if folder:
            for name in subfolders(folder):
                paths += image_files(os.path.join(folder, name))[0]
    return sorted(paths)


def read_image_file(path: str, image_size: int) -> np.ndarray:
    """One image file as `uint8[S, S, 3]`, decoded and resized as in `load`."""
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.lexists(path) else "no such image file"
        raise DataError(f"{what}: {printable(path)}; pass the path of a JPEG, PNG, GIF or BMP")
    override = _check_file(path, image_size)
    if override is None:
        raise DataError(f"{printable(path)} is not a readable image; pass a JPEG, PNG, GIF "
                        "or BMP file")
    data = override or tf.io.read_file(os.fsencode(path))
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return resize_uint8(image, image_size).numpy()


# ---- layout ----------------------------------------------------------------------

def _find_layout(root: str) -> dict:
    """Maps each split to its folder, or to None where it is to be carved from train."""
    names = set(subfolders(root))
    validation = [n for n in _VALIDATION_DIRS if n in names]
    if len(validation) > 1:
        raise DataError(f"{root} has both validation/ and val/; keep one of them")
    if "train" in names:
        return {"train": os.path.join(root, "train"),
                "validation": os.path.join(root, validation[0]) if validation else None,
                "test": os.path.join(root, "test") if "test" in names else None}
    if validation or "test" in names:
        present = "/, ".join(validation + ["test"] * ("test" in names))
        raise DataError(f"{root} has {present}/ but no train/; add {root}/train/<class>/ "
                        "or put the class folders directly in the data folder")
    return {"train": root, "validation": None, "test": None}


def subfolders(folder: str) -> list:
    """The sorted names of `folder`'s sub-folders (links to folders included), hidden
    ones left out; a dangling link or a link in a loop is no folder."""
    names = []
    for entry in os.scandir(folder):
        try:
            if not entry.name.startswith(".") and entry.is_dir():
                names.append(entry.name)
        except OSError:  # ELOOP
            pass
    return sorted(names)


def _is_file(entry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # ELOOP
        return False


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_classes(folder: str, skipped: list) -> dict:
    """{class name: sorted image paths} for the class sub-folders of `folder`; appends
    entries named like images that are no regular files to `skipped`."""
    classes = subfolders(folder)
    for name in classes:
        if printable(name) != name:
            raise DataError(f"class folder name {printable(os.path.join(folder, name))} is not "
                            "valid UTF-8; rename the folder (class names are written to "
                            "classes.json and printed)")
    if not classes:
        if any(_is_image_name(e.name) and _is_file(e) for e in os.scandir(folder)):
            raise DataError(f"{folder} holds images but no class sub-folders; move them into "
                            f"{folder}/<class name>/ (e.g. cat/ and dog/)")
        raise DataError(f"no images in {folder}: put them in one sub-folder per class "
                        "(e.g. cat/ and dog/), or pass --dataset=synthetic")
    listing = {}
    for name in classes:
        class_dir = os.path.join(folder, name)
        paths, others = image_files(class_dir)
        skipped += others
        if not paths:
            raise DataError(f"class folder {printable(class_dir)} holds no images "
                            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        listing[name] = paths
    return listing


def _check_classes(listings: dict, folders: dict) -> tuple:
    train = tuple(listings["train"])
    if len(train) < 2:
        raise DataError(f"{folders['train']} has a single class folder '{train[0]}'; "
                        "add one sub-folder per class (at least 2)")
    for split, listing in listings.items():
        if tuple(listing) != train:
            raise DataError(
                    f"class folders differ: {folders['train']} has {list(train)} but "
                    f"{folders[split]} has {list(listing)}; "
                    "give every split the same class folders")
    return train


def _entries(listing: dict, class_names: tuple) -> list:
    return [(path, label) for label, name in enumerate(class_names) for path in listing[name]]


# ---- carving ---------------------------------------------------------------------

def _stratified_order(entries: list, rng: np.random.Generator) -> np.ndarray:
    """A seeded permutation whose every prefix holds the classes in proportion."""
    labels = np.array([entry[1] for entry in entries])
    keys = np.empty(len(entries))
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        keys[where] = (rng.permutation(len(where)) + rng.random(len(where))) / len(where)
    return np.argsort(keys, kind="stable")


def _carve_missing(entries: dict, folders: dict, cfg) -> dict:
    """Carves the splits that have no folder out of train: disjoint and seeded."""
    missing = [s for s in ("validation", "test") if folders[s] is None]
    if not missing:
        return entries
    flags = {"validation": ("validation_split", cfg.validation_split),
             "test": ("test_split_fraction", cfg.test_split_fraction)}
    for split in missing:
        name, fraction = flags[split]
        if not 0.0 < fraction < 1.0:
            raise DataError(f"--{name}={fraction} must be in (0, 1) to carve a {split} split "
                            f"from {folders['train']}; or add a {split} folder")
    pool = entries["train"]
    counts = [max(1, round(len(pool) * flags[s][1])) for s in missing]
    if sum(counts) >= len(pool):
        raise DataError(
                f"{folders['train']} has only {len(pool)} images, too few to carve "
                f"{' and '.join(missing)} splits from; add images or lower "
                f"{' and '.join('--' + flags[s][0] for s in missing)}")
    order = _stratified_order(pool, np.random.default_rng([cfg.split_seed, 1]))
    out, start = dict(entries), 0
    for split, count in zip(missing, counts, strict=True):
        out[split] = [pool[i] for i in order[start:start + count]]
        start += count
    out["train"] = [pool[i] for i in order[start:]]
    for split in out:
        out[split] = sorted(out[split], key=lambda e: (e[1], e[0]))
    return out


# ---- checking and decoding -------------------------------------------------------

def _num_workers() -> int:
    return min(16, 2 * (os.cpu_count() or 1) + 2)


def _check_files(pool, entries: list, image_size: int, limit=None):
    """Checks `entries` in order until `limit` are readable; returns (kept, skipped paths).

    A kept entry is `(path, label, override)`: `override` is b"" where TF decodes the
    file, else a resized PNG of Pillow's decoding.
    """
    kept, skipped, start = [], [], 0
    while start < len(entries) and (limit is None or len(kept) < limit):
        if limit is None:
            chunk = entries[start:]
        else:
            chunk = entries[start:start + max(32, 2 * (limit - len(kept)))]
        start += len(chunk)
        results = pool.map(lambda e: _check_file(e[0], image_size), chunk)
        for (path, label), override in zip(chunk, results, strict=True):
            if limit is not None and len(kept) >= limit:
                break
            if override is None:
                skipped.append(path)
            else:
                kept.append((path, label, override))
    return kept, skipped


def check_per_class(pool, entries: list, image_size: int, per_class: int, seed: list):
    """`_check_files` of each class's entries until `per_class` are readable
    (--max_examples_per_class): a class with more entries is checked in a seeded order
    (`seed` and the label), so the choice is the same on every run. Returns (kept,
    skipped paths), classes in label order."""
    by_class = {}
    for entry in entries:
        by_class.setdefault(entry[1], []).append(entry)
    kept, skipped = [], []
    for label, members in sorted(by_class.items()):
        if len(members) > per_class:
            order = np.random.default_rng([*seed, label]).permutation(len(members))
            members = [members[i] for i in order]
        some, bad = _check_files(pool, members, image_size, per_class)
        kept += some
        skipped += bad
    return kept, skipped


def _check_file(path: str, image_size: int):
    """None for an unreadable file, b"" where TF decodes it, else PNG bytes (Pillow).

    Only a regular file is read: opened without blocking (a FIFO would wait for a
    writer) and checked on the open descriptor (no race with a swapped file).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = f.read()
        if not data:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                kind = (image.format, image.mode)
    except Exception:  # Pillow raises many types for garbage input.
        return None
    modes = _TF_FORMATS.get(kind[0], ())
    if modes is None or kind[1] in modes:
        try:
            tf.io.decode_image(data, channels=3, expand_animations=False)
            return b""
        except tf.errors.OpError:
            pass  # Pillow may still read it (e.g. a JPEG TF finds corrupt).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                rgb = np.asarray(image.convert("RGB"))
    except Exception:
        return None
    buffer = io.BytesIO()
    Image.fromarray(resize_uint8(rgb, image_size).numpy()).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _dataset(kept: list, image_size: int) -> tf.data.Dataset:
    paths, labels, overrides = zip(*kept, strict=True)
    ds = tf.data.Dataset.from_tensor_slices((
            tf.constant([os.fsencode(p) for p in paths], tf.string),
            tf.constant(overrides, tf.string),
            tf.constant(labels, tf.int32)))

    def decode(path, override, label):
        data = tf.cond(tf.strings.length(override) > 0,
                       lambda: override, lambda: tf.io.read_file(path))
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image.set_shape((None, None, 3))
        return resize_uint8(image, image_size), label

    return map_examples(ds, decode)
