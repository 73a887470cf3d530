"""Exact frozen-prefix feature cache for the custom loop.

When every layer before the first trainable one is frozen and deterministic
(no dropout, no augmentation), its output for an image never changes during a
phase. We compute it once per split, then train only the suffix on it: one
frozen forward pass per image for the whole phase, kept in memory or in .npy files
(`--feature_cache=disk`, reused by later runs with the same fingerprint). The
suffix shares its layers (and so its variables, dropout seeds and optimizer slots)
with the full model, which hooks, checkpoints, evaluation and prediction keep using.

A horizontal flip on the input (`--augment=flip`) does not turn the cache off: both
outcomes' features are cached and the suffix picks, per example and step, the one
the flip layer's own random draw selects (loops/caches/flip_features.py): exact as well.

On disk a split is verified like the image cache: `<split>.complete.json`, written
after both arrays, records each one's size, SHA-256, shape and dtype, the number of
examples and classes and the labels' range (and a checksum of itself). A split is read
only when its manifest is there and intact, both arrays are regular files (checked
before they are opened, and opened without blocking: a FIFO or a device is never
read) of the recorded size and SHA-256, and their shapes, dtypes and labels are what
this run expects (the features the suffix takes, one row per example of the split,
integer labels in [0, classes)). Anything else (damaged, truncated, edited, a killed
writer's entry without manifest, or an earlier tapefit version's, unverified) is set
aside with one warning naming the file and why, and computed again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time

import keras
import numpy as np
import tensorflow as tf

from tapefit.flags.errors import RunError
from tapefit.layout import paths
from tapefit.layout.atomic import json_text, read_json_file
from tapefit.layout.temporaries import remove_left_over, writer_in, writer_tag
from tapefit.loops.caches import flip_features
from tapefit.model import graph

# Layers whose output depends on an RNG in training mode: they cannot be cached.
RANDOM_LAYERS = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
                 keras.layers.RandomFlip, keras.layers.RandomRotation,
                 keras.layers.RandomTranslation, keras.layers.RandomZoom,
                 keras.layers.RandomContrast, keras.layers.RandomCrop)
MEMORY_BUDGET_BYTES = 2 << 30
CACHE_DIR = paths.FEATURE_CACHE_DIR  # Under --workdir unless --feature_cache_dir.


@dataclasses.dataclass
class Cut:
    """The model split at a single-tensor boundary: model(x) == suffix(prefix(x))."""

    prefix: keras.Model
    suffix: keras.Model
    layer: str  # First layer of the suffix.
    after: str = ""  # The layer whose output is cached (the prefix's last layer).
    # A RandomFlip("horizontal") on the input, in the prefix: both outcomes' features
    # are cached and the suffix picks per example and step (loops/caches/flip_features.py).
    flip: object = None
    # The compiled prefix forward, traced once for every split (a large backbone's
    # graph takes seconds to trace).
    forward: object = dataclasses.field(default=None, init=False, repr=False, compare=False)


def is_random(layer) -> bool:
    """Whether the layer draws random numbers in training mode (a frozen backbone's
    dropout has rate 0: model.freeze.set_trainable)."""
    return isinstance(layer, RANDOM_LAYERS) and getattr(layer, "rate", None) != 0


def find_cut(model) -> tuple[Cut | None, str]:
    """The latest cacheable cut, or (None, reason).

    The cut is a tensor every path from the input to the output passes through (a
    dominator of the output in the layer graph), such that no layer up to it has
    trainable weights or is random: its output, computed once, is what the suffix
    would see at every step.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None, "the model has more than one input or output"
    nodes = graph.topological_nodes(model)
    layers = [node.operation for node in nodes]
    flip = next((layer for node, layer in zip(nodes, layers, strict=True)
                 if flip_features.is_cacheable_flip(layer, node, model)), None)
    blocker = next((i for i, layer in enumerate(layers) if layer is not flip and (
        getattr(layer, "trainable_weights", None) or is_random(layer))), None)
    if blocker is None:
        return None, "nothing is trainable"
    is_boundary = graph.boundaries(nodes)
    cut = max(i for i in range(blocker) if is_boundary[i])  # 0: the input itself.
    if flip is not None and layers[cut] is flip:
        cut = 0  # The flip's output is the images: nothing to cache.
    if cut == 0:
        kind = "random (augmentation, dropout)" if is_random(layers[blocker]) else "trainable"
        return None, (f"{layers[blocker].name} is {kind} and no single-tensor boundary "
                      "comes before it")
    boundary = nodes[cut].outputs[0]
    prefix = keras.Model(model.inputs[0], boundary, name="frozen_prefix")
    if flip is None:
        inputs = keras.Input(boundary.shape[1:], dtype=boundary.dtype, name="features")
        start = inputs
    else:  # [features, features of the mirror image] → the one the flip draws.
        inputs = keras.Input((2, *boundary.shape[1:]), dtype=boundary.dtype, name="features")
        start = flip_features.PickFlip(flip, name="pick_flip")(inputs)
    # Replays the graph after the cut on the new input (as keras' Functional does):
    # the same layer objects, so the suffix shares the model's variables.
    tensors = {id(boundary): start}
    for node in nodes[cut + 1:]:
        if any(id(x) not in tensors for x in node.input_tensors):
            raise AssertionError(f"{node.operation.name} reads from before the cut")
        args, kwargs = node.arguments.fill_in(tensors)
        for x, y in zip(node.outputs, keras.tree.flatten(node.operation(*args, **kwargs)),
                        strict=True):
            tensors[id(x)] = y
    suffix = keras.Model(inputs, tensors[id(model.outputs[0])], name="trainable_suffix")
    return Cut(prefix, suffix, layers[cut + 1].name, layers[cut].name, flip), ""


def forward_function(prefix: keras.Model, fn=None):
    """`fn(x)` (default: the prefix in inference mode) traced once for float32 image
    batches of any size: a large backbone's graph takes seconds to trace, and the
    last, partial batch of each split would otherwise trace it again."""
    signature = tf.TensorSpec((None, *prefix.input.shape[1:]), tf.float32)
    return tf.function(fn or (lambda x: prefix(x, training=False)),
                       input_signature=[signature])


def fingerprint(cut: Cut, data_key: dict) -> str:
    """Hash of everything that determines the features: the prefix's weights
    (backbone, weights file, earlier phases), its architecture and cut, and the
    data (source, split, image size, preprocessing is part of the prefix).

    Layer classes and positions stand for the architecture, not layer names: Keras
    numbers unnamed layers per process (`conv2d_97`), and the same prefix must find
    its cache again in the next run."""
    h = hashlib.sha256()
    fields = {"data": data_key,
              "layers": [type(layer).__name__ for layer in cut.prefix.layers],
              "input": list(cut.prefix.input.shape[1:]),
              "output": list(cut.prefix.output.shape[1:])}
    if cut.flip is not None:  # The training split holds both outcomes' features.
        fields["flip"] = "horizontal"
    h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for variable in cut.prefix.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:16]


def feature_bytes(cut: Cut, num_examples: int) -> int:
    outcomes = 1 if cut.flip is None else 2
    return int(np.prod(cut.prefix.output.shape[1:])) * 4 * num_examples * outcomes


FEATURES, LABELS = paths.FEATURES_SUFFIX, paths.LABELS_SUFFIX
MANIFEST = paths.FEATURES_MANIFEST_SUFFIX  # <split>.complete.json, written last.
FORMAT = 1  # Of the manifest; bump when the stored format changes (older ones: recomputed).
MANIFEST_LIMIT = 1 << 20  # A manifest larger than this is damaged.
READ_ROWS = 256  # Rows per read from the arrays (tf.data then unbatches them).
HASH_CHUNK = 4 << 20


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a split's arrays must be for this run: features of `features` shape
    (examples first; None: any size there) and `dtype`, labels of `labels` shape and
    `label_dtype`, integer labels in [0, `classes`) (None: unchecked)."""

    features: tuple
    dtype: object
    labels: tuple
    label_dtype: object
    classes: int | None


def _classes(cut: Cut) -> int | None:
    """The number of classes the suffix scores (its logits' width)."""
    width = cut.suffix.output.shape[-1]
    return int(width) if isinstance(width, int) else None


def _feature_dtype(cut: Cut) -> np.dtype:
    return np.dtype(keras.backend.standardize_dtype(cut.prefix.output.dtype))


def expected(cut: Cut, images: tf.data.Dataset, num_examples: int, both: bool) -> Expected:
    """What the cached arrays of `images` (`num_examples` of them) must be."""
    _, label_spec = images.element_spec
    return Expected((num_examples, *((2,) if both else ()), *cut.prefix.output.shape[1:]),
                    _feature_dtype(cut), (num_examples, *label_spec.shape),
                    np.dtype(label_spec.dtype.as_numpy_dtype), _classes(cut))


def cached_features(cut: Cut, images: tf.data.Dataset, num_examples: int,
                    path, batch_size: int, training: bool = True, chooser=None
                    ) -> tf.data.Dataset:
    """(features, label) in the order of `images` (unbatched): the frozen pass runs
    now, in this thread, into arrays in memory (path None) or into two .npy files
    at `path` (`path + FEATURES`, `path + LABELS`, then `path + MANIFEST`), which a
    later run with the same path reads instead of running the pass once they verify
    (`_load`: anything else is set aside with a warning and computed again).

    With a flip in the prefix (`cut.flip`) the features are `[features(x),
    features(mirror x)]` for the training split (`training`), and the image's
    features twice for the others (stacked when read).

    `chooser` (a `feature_precision.InPass`): `--feature_precision=auto`'s probe, made
    in this pass; `path` is then None or `path(precision)`, the place for the features
    of the precision chosen."""
    both = cut.flip is not None and training
    arrays = (_load(path, num_examples, expected(cut, images, num_examples, both))
              if path and not callable(path) else None)
    if arrays is None:
        start, cpu = time.perf_counter(), time.process_time()
        arrays = _compute(cut, images, num_examples, batch_size, both, path,
                          "training" if training else "validation", chooser)
        if callable(path):
            path = path(chooser.precision)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        # The cores the pass kept busy (CPU seconds of the whole process over wall
        # seconds): on 2 cores a healthy pass shows ~1.9 (bench/README.md, issue 24).
        logging.info("feature cache: computed the features of %d examples in %.1f s, "
                     "%.1f CPU s: %.2f cores (%s)", num_examples, seconds, cpu,
                     cpu / max(seconds, 1e-9),
                     f"saved to {path}{FEATURES}" if path else "kept in memory")
    else:
        logging.info("feature cache: loaded the features of %d examples from %s%s (computed "
                     "by an earlier run)", num_examples, path, FEATURES)
    features = _read(*arrays)
    if cut.flip is not None and not training:
        features = features.map(lambda f, y: (flip_features.same_outcome(f), y))
    return features


def _compute(cut, images, num_examples, batch_size, both, path, split="training",
             chooser=None):
    """The frozen pass over `images`, batch by batch, as an ordinary call of the
    traced prefix in this thread, not inside a tf.data map: tf.data runs a map
    function's ops on one intra-op thread and without grappler's fusions, 2-4x
    slower here (bench/README.md). The run's batch size: no more memory than
    training. A split's last, partial batch is padded to the full size when that
    is cheaper than a batch of a new size, for which oneDNN creates new primitives
    for every layer (5 s for EfficientNet-B0's 238 layers here): `_pad_is_cheaper`.
    In inference mode each example's features do not depend on the others in its
    batch. Features that are not finite (NaN, inf) are an error, never cached: the
    frozen weights or the images are broken, and training on them cannot work.
    With a `chooser` its probe runs after the first two full batches (see
    `feature_precision.InPass`); `path` may then be `path(precision)`."""
    if cut.forward is None:
        cut.forward = forward_function(cut.prefix)
    prefix = cut.forward
    _, label_spec = images.element_spec
    dtype = tf.as_dtype(keras.backend.standardize_dtype(cut.prefix.output.dtype))
    shape = (num_examples, *((2,) if both else ()), *cut.prefix.output.shape[1:])
    labels = np.empty((num_examples, *label_spec.shape), label_spec.dtype.as_numpy_dtype)
    if path:
        # A `path(precision)`'s folder is known once the precision is chosen: until
        # then the features go to a temporary in the cache's root.
        folder = (os.path.dirname(os.path.dirname(path("float32"))) if callable(path)
                  else os.path.dirname(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create the feature cache folder {folder} "
                           f"({e.strerror}); pass a writable --feature_cache_dir") from None
        base = os.path.join(folder, f".auto-{split}") if callable(path) else path
        _remove_dead_temporaries(base)  # Also the root's `.auto-*` of killed runs.
        temporary = f"{base}.{writer_tag()}.tmp"
        features = np.lib.format.open_memmap(temporary + FEATURES, "w+", dtype.as_numpy_dtype,
                                             shape)
    else:
        features = np.empty(shape, dtype.as_numpy_dtype)
    done, seconds, non_finite = 0, [], []  # Seconds and non-finite rows per full batch.
    probe = []  # (images, rows) of the first two full batches, for `chooser`.

    def run(fn, x, n):
        f = flip_features.both_outcomes(fn, x) if both else fn(x)
        return tf.cast(f[:n], dtype).numpy()

    def bad_rows(f, n):
        return n - int(np.isfinite(f.reshape(n, -1)).all(axis=1).sum())

    for x, y in images.batch(batch_size).prefetch(1):
        n = int(tf.shape(y)[0])
        if done + n > num_examples:
            break
        x = tf.cast(x, tf.float32)
        if n < batch_size and _pad_is_cheaper(batch_size - n, batch_size, seconds,
                                              len(cut.prefix.layers)):
            x = tf.pad(x, [[0, batch_size - n]] + [[0, 0]] * (len(x.shape) - 1))
        start = time.perf_counter()
        features[done:done + n] = f = run(prefix, x, n)
        non_finite.append(bad_rows(f, n))
        if n == batch_size:
            seconds.append(time.perf_counter() - start)
            if chooser is not None and chooser.precision is None:
                probe.append((x, slice(done, done + n), len(non_finite) - 1))
                if len(probe) == 2:
                    outputs = chooser.decide(lambda fn, x, n=n: run(fn, x, n),
                                             [x for x, _, _ in probe], seconds[-2:], prefix)
                    for (_, rows, index), f in zip(probe, outputs or (), strict=False):
                        features[rows] = f  # One precision in the cache.
                        non_finite[index] = bad_rows(f, n)
                    prefix, probe = chooser.forward, []
        labels[done:done + n] = y.numpy()
        done += n
    if chooser is not None and chooser.precision is None:
        chooser.settle(prefix)  # Fewer than two full batches: nothing to probe on.
    non_finite = sum(non_finite)
    if done != num_examples:
        raise RuntimeError(f"the split has {done} examples, not {num_examples}: its files "
                           "changed during the run; run again")
    if non_finite:
        if path:
            del features
            _remove(temporary + FEATURES)
        raise RunError(
                f"the frozen layers up to {cut.after} give non-finite features (NaN or inf) "
                f"for {non_finite} of {num_examples} images of the {split} split: not the "
                "learning rate; the weights they start from (--weights, or the earlier "
                "phase's checkpoint) or those images are damaged")
    if not path:
        return features, labels
    features.flush()
    del features
    if callable(path):
        path = path(chooser.precision)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _remove_dead_temporaries(path)
    np.save(temporary + LABELS, labels)
    manifest = _manifest(temporary, shape, dtype.as_numpy_dtype, labels, _classes(cut))
    # Mapped before the rename: this run reads what it wrote, whatever happens to the
    # names since (another run may set an entry aside and write its own).
    stored = np.load(temporary + FEATURES, mmap_mode="r")
    os.replace(temporary + LABELS, path + LABELS)
    os.replace(temporary + FEATURES, path + FEATURES)
    # Last: its presence means complete (a kill before it leaves an entry set aside).
    with open(temporary + MANIFEST, "w", encoding="utf-8") as f:
        f.write(json_text(manifest))
    os.replace(temporary + MANIFEST, path + MANIFEST)
    return stored, labels


# What a batch of a new size costs per layer of the prefix, measured here: the
# first pass over 500 photos (15 batches of 32, one of 20) through EfficientNet-B0's
# 238 frozen layers took 5.1 s longer than the second.
NEW_SHAPE_SECONDS_PER_LAYER = 0.02


def _pad_is_cheaper(padding: int, batch_size: int, seconds: list, layers: int) -> bool:
    """Whether `padding` extra examples cost less than a batch of a new size: by the
    time per example of this split's full batches (the first, which traced, left
    out when there are others); with none timed, pad (a split of one batch)."""
    timed = seconds[1:] or seconds
    if not timed:
        return True
    per_example = sorted(timed)[len(timed) // 2] / batch_size
    return padding * per_example < NEW_SHAPE_SECONDS_PER_LAYER * layers


def on_disk(folder: str, sizes: dict) -> bool:
    """Whether complete features of both splits (`sizes`: examples per split) are in
    `folder`: their manifests say so and both arrays are regular files (their content
    is checked when they are read; nothing but the manifests is read here)."""
    for split in ("train", "validation"):
        path = os.path.join(folder, split)
        manifest, _ = read_json_file(path + MANIFEST, dict, MANIFEST_LIMIT)
        if manifest is None or manifest.get("examples") != sizes[split]:
            return False
        if not all(_regular(path + suffix) is None for suffix in (FEATURES, LABELS)):
            return False
    return True


def _manifest(base, shape, dtype, labels, classes) -> dict:
    """The record of the arrays at `base` + FEATURES / LABELS (`labels` in memory)."""
    integer = labels.dtype.kind in "iu" and labels.size > 0
    manifest = {"format": FORMAT, "examples": int(shape[0]), "classes": classes,
                "features": {**_file_record(base + FEATURES), "shape": list(shape),
                             "dtype": np.dtype(dtype).str},
                "labels": {**_file_record(base + LABELS), "shape": list(labels.shape),
                           "dtype": labels.dtype.str,
                           "min": int(labels.min()) if integer else None,
                           "max": int(labels.max()) if integer else None}}
    manifest["checksum"] = _checksum(manifest)
    return manifest


def _file_record(file) -> dict:
    with open(file, "rb") as f:
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": _sha256(f)}


def _sha256(f) -> str:
    h = hashlib.sha256()
    while chunk := f.read(HASH_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _checksum(manifest: dict) -> str:
    """SHA-256 of the manifest without its "checksum" field."""
    fields = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class _Damaged(Exception):
    """A cached file is not what its manifest or this run says: (file, why)."""


def _load(path, num_examples, expect: Expected | None = None):
    """The verified arrays at `path` (features memory-mapped, labels in memory), or None
    when there are none or they are set aside (one warning naming the file and why):
    see the module's docstring. `expect` None: only what the manifest records."""
    manifest_file = path + MANIFEST
    if not any(os.path.lexists(path + suffix) for suffix in (FEATURES, MANIFEST)):
        return None  # Nothing there (or a killed writer's labels alone: overwritten).
    try:
        manifest, problem = read_json_file(manifest_file, dict, MANIFEST_LIMIT)
        if manifest is None:
            raise _Damaged(manifest_file, f"is {problem}" if problem else (
                    "is missing: the features next to it were written by an earlier tapefit "
                    "version (unverified) or by a run stopped mid-write"))
        problem = _manifest_problem(manifest)
        if problem:
            raise _Damaged(manifest_file, problem)
        if manifest["examples"] != num_examples:
            raise _Damaged(manifest_file, f"records {manifest['examples']} examples, the "
                                          f"split has {num_examples}")
        if expect is not None and expect.classes is not None \
                and manifest.get("classes") not in (None, expect.classes):
            raise _Damaged(manifest_file, f"records {manifest.get('classes')} classes, the model "
                                          f"has {expect.classes}")
        features = _verified(path + FEATURES, manifest["features"],
                             expect and (expect.features, expect.dtype), mmap=True)
        labels = _verified(path + LABELS, manifest["labels"],
                           expect and (expect.labels, expect.label_dtype), mmap=False)
        _check_labels(path + LABELS, labels, manifest, expect)
    except _Damaged as e:
        file, why = e.args
        logging.warning("feature cache: %s %s; setting the %s split's features aside and "
                        "computing them again", file, why, os.path.basename(path))
        _set_aside(path)
        return None
    return features, labels


def _manifest_problem(manifest: dict) -> str | None:
    if manifest.get("format") != FORMAT:
        return f"is of another format ({manifest.get('format')!r}, this version writes {FORMAT})"
    if manifest.get("checksum") != _checksum(manifest):
        return "is damaged (its checksum differs from the one written)"
    records = [manifest.get(name) for name in ("features", "labels")]
    if not (isinstance(manifest.get("examples"), int) and all(
            isinstance(r, dict) and isinstance(r.get("bytes"), int)
            and isinstance(r.get("sha256"), str) and isinstance(r.get("shape"), list)
            and isinstance(r.get("dtype"), str) for r in records)):
        return "is damaged (fields missing or of the wrong type)"
    return None


def _regular(file) -> str | None:
    """Why `file` cannot be read as a cached array (None: it is a regular file). By
    lstat, before anything opens it: a FIFO, device, folder or link is never opened."""
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"is unreadable ({e.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a folder, link, FIFO or device; not read)"
    return None


def _verified(file, record: dict, expect, mmap: bool):
    """The array in `file` if it is the regular file `record` describes (size, shape,
    dtype, SHA-256) and of `expect` (shape, dtype) when given; else `_Damaged`."""
    problem = _regular(file)
    if problem:
        raise _Damaged(file, problem)
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(file, flags)
    except OSError as e:
        raise _Damaged(file, f"is unreadable ({e.strerror})") from None
    with open(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # Replaced since the lstat.
            raise _Damaged(file, "is not a regular file (a folder, link, FIFO or device)")
        if info.st_size != record["bytes"]:
            raise _Damaged(file, f"has {info.st_size} bytes, {record['bytes']} written")
        try:
            shape, order, dtype, offset = _header(f)
        except (OSError, ValueError) as e:
            raise _Damaged(file, f"is not a .npy array ({e})") from None
        if dtype.str != record["dtype"] or list(shape) != record["shape"]:
            raise _Damaged(file, f"holds {dtype.str}{list(shape)}, its manifest records "
                                 f"{record['dtype']}{record['shape']}")
        if expect is not None:
            want_shape, want_dtype = expect
            if dtype != want_dtype or len(shape) != len(want_shape) or any(
                    w is not None and w != s for s, w in zip(shape, want_shape, strict=True)):
                raise _Damaged(file, f"holds {dtype}{list(shape)}, this run expects "
                                     f"{np.dtype(want_dtype)}{list(want_shape)}")
        if offset + int(np.prod(shape)) * dtype.itemsize != info.st_size:
            raise _Damaged(file, "is truncated or padded (its size does not match its shape)")
        f.seek(0)
        try:
            if _sha256(f) != record["sha256"]:
                raise _Damaged(file, "is damaged (its SHA-256 differs from the one written)")
            f.seek(offset)
            if mmap and int(np.prod(shape)):
                return np.memmap(f, dtype=dtype, mode="r", shape=shape, order=order,
                                 offset=offset)
            data = f.read(info.st_size - offset)
        except OSError as e:
            raise _Damaged(file, f"is unreadable ({e.strerror})") from None
        return np.frombuffer(data, dtype).reshape(shape, order=order).copy()


def _header(f) -> tuple:
    """(shape, order, dtype, data offset) of the .npy file `f` (no pickled objects)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"format version {version}")
    if dtype.hasobject:
        raise ValueError("it holds Python objects")
    return shape, "F" if fortran else "C", dtype, f.tell()


def _check_labels(file, labels, manifest, expect: Expected | None) -> None:
    """Integer labels: within the manifest's range and [0, classes)."""
    if labels.dtype.kind not in "iu" or not labels.size:
        return
    low, high = int(labels.min()), int(labels.max())
    record = manifest["labels"]
    if (record.get("min"), record.get("max")) != (low, high):
        raise _Damaged(file, f"holds labels {low}..{high}, its manifest records "
                             f"{record.get('min')}..{record.get('max')}")
    classes = expect.classes if expect is not None else manifest.get("classes")
    if isinstance(classes, int) and (low < 0 or high >= classes):
        raise _Damaged(file, f"holds labels {low}..{high}, not in [0, {classes}) (the model "
                             f"has {classes} classes)")


def _set_aside(path) -> None:
    """Removes a split's entry (manifest first: no reader trusts the rest meanwhile). A
    FIFO, device or link is unlinked itself (never opened, nor followed); a real folder
    in an array's place is removed."""
    for suffix in (MANIFEST, FEATURES, LABELS):
        file = path + suffix
        try:
            if stat.S_ISDIR(os.lstat(file).st_mode):
                aside = f"{file}.{writer_tag()}.stale"
                os.rename(file, aside)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.remove(file)
        except FileNotFoundError:
            pass


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_dead_temporaries(path):
    """Drops what a killed run left half-written at `path` (`<path>.<host>-<pid>.tmp.*`;
    `layout.temporaries`' one rule: never a live writer's)."""
    folder, name = os.path.split(path)
    pattern = re.compile(r"^%s\.(?:(?P<host>[^-]+)-)?(?P<pid>\d+)\.tmp\." % re.escape(name))
    remove_left_over(folder, writer_in(pattern))


def _read(features, labels) -> tf.data.Dataset:
    """The rows of `features` and `labels` (numpy arrays, or memory-mapped files),
    read in chunks: nothing is copied into a TensorFlow constant up front."""
    n = len(labels)
    feature_dtype, label_dtype = tf.as_dtype(features.dtype), tf.as_dtype(labels.dtype)

    def rows(start):
        start = int(start)
        return (np.ascontiguousarray(features[start:start + READ_ROWS]),
                np.ascontiguousarray(labels[start:start + READ_ROWS]))

    def read(start):
        f, y = tf.numpy_function(rows, [start], (feature_dtype, label_dtype), stateful=False)
        f.set_shape((None, *features.shape[1:]))
        y.set_shape((None, *labels.shape[1:]))
        return f, y

    return (tf.data.Dataset.range(0, n, READ_ROWS).map(read).unbatch()
            .apply(tf.data.experimental.assert_cardinality(n)))


def data_key(cfg) -> dict:
    """What determines the images of every split: `input_pipeline.data_fingerprint`
    (the data flags and, for an image folder, every image file's path and a hash of
    its bytes; the folder's own path left out: the same bytes are the same data)."""
    from tapefit.input_pipeline import data_fingerprint
    return {"data": data_fingerprint(cfg)}


def resolve(mode: str, cut: Cut | None, reason: str, num_examples: int) -> str:
    """off, memory or disk, logging why the cache is off when it cannot be used."""
    if mode == "off":
        return "off"
    if cut is None:
        logging.info("feature cache off: %s", reason)
        return "off"
    if mode == "auto":
        mode = "memory" if feature_bytes(cut, num_examples) <= MEMORY_BUDGET_BYTES else "disk"
    logging.info("feature cache (%s): cut after %s (%d frozen layers run once per image); "
                 "training from %s", mode, cut.after, len(cut.prefix.layers), cut.layer)
    if cut.flip is not None:
        logging.info("feature cache: %s's two outcomes cached (each training image and its "
                     "mirror image); the layer's own draw picks one per example and step",
                     cut.flip.name)
    return mode
