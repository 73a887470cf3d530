"""Exact frozen-prefix feature cache for the custom loop.

When every layer before the first trainable one is frozen and deterministic
(no dropout, no augmentation), its output for an image never changes during a
phase. We compute it once per split, then train only the suffix on it: one
frozen forward pass per image for the whole phase. The suffix shares its layers
(and so its variables, dropout seeds and optimizer slots) with the full model,
which hooks, checkpoints, evaluation and prediction keep using.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf

# Layers whose output depends on an RNG in training mode: they cannot be cached.
RANDOM_LAYERS = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
                 keras.layers.RandomFlip, keras.layers.RandomRotation,
                 keras.layers.RandomTranslation, keras.layers.RandomZoom,
                 keras.layers.RandomContrast, keras.layers.RandomCrop)
MEMORY_BUDGET_BYTES = 2 << 30
CACHE_DIR = "feature_cache"


@dataclasses.dataclass
class Cut:
    """The model split at a single-tensor boundary: model(x) == suffix(prefix(x))."""

    prefix: keras.Model
    suffix: keras.Model
    layer: str  # First layer of the suffix.


def _chain(model):
    """The model's layers if they form a single chain (each feeds only the next), else None."""
    layers = model.layers
    for previous, layer in zip(layers, layers[1:]):
        if len(layer._inbound_nodes) != 1:
            return None
        inputs = layer._inbound_nodes[0].input_tensors
        if len(inputs) != 1 or inputs[0] is not previous.output:
            return None
    return layers if model.outputs[0] is layers[-1].output else None


def find_cut(model) -> tuple[Cut | None, str]:
    """The latest cacheable cut before the first trainable weight, or (None, reason)."""
    layers = _chain(model)
    if layers is None:
        return None, "the model is not a single chain of layers (no single-tensor boundary)"
    first_trainable = next((i for i, l in enumerate(layers) if l.trainable_weights), None)
    if first_trainable is None:
        return None, "nothing is trainable"
    # A random layer (dropout, augmentation) must run in the suffix, every step.
    cut = next((i for i in range(1, first_trainable) if isinstance(layers[i], RANDOM_LAYERS)),
               first_trainable)
    if cut <= 1:
        return None, (f"{layers[1].name} right after the input is random (augmentation) "
                      "or trainable")
    boundary = layers[cut].input
    prefix = keras.Model(model.input, boundary, name="frozen_prefix")
    x = inputs = keras.Input(boundary.shape[1:], dtype=boundary.dtype, name="features")
    for layer in layers[cut:]:
        x = layer(x)
    suffix = keras.Model(inputs, x, name="trainable_suffix")
    return Cut(prefix, suffix, layers[cut].name), ""


def fingerprint(cut: Cut, data_key: dict) -> str:
    """Hash of everything that determines the features: the prefix's weights
    (backbone, weights file, earlier phases), its architecture and cut, and the
    data (source, split, image size, preprocessing is part of the prefix)."""
    h = hashlib.sha256()
    h.update(json.dumps({"cut": cut.layer, "data": data_key,
                         "layers": [l.name for l in cut.prefix.layers],
                         "input": list(cut.prefix.input.shape[1:]),
                         "output": list(cut.prefix.output.shape[1:])},
                        sort_keys=True, default=str).encode())
    for variable in cut.prefix.weights:
        h.update(variable.path.encode())
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return h.hexdigest()[:16]


def feature_bytes(cut: Cut, num_examples: int) -> int:
    return int(np.prod(cut.prefix.output.shape[1:])) * 4 * num_examples


def cached_features(cut: Cut, images: tf.data.Dataset, num_examples: int,
                    path: str | None, batch_size: int) -> tf.data.Dataset:
    """(features, label) in the order of `images` (unbatched), computed on first
    iteration and cached in memory (path None) or in files at `path`."""
    prefix = tf.function(lambda x: cut.prefix(x, training=False))
    # The run's batch size: the feature pass needs no more memory than training.
    features = (images.batch(batch_size)
                .map(lambda x, y: (prefix(tf.cast(x, tf.float32)), y))
                .unbatch()
                .apply(tf.data.experimental.assert_cardinality(num_examples)))
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # A run killed while writing the cache leaves a lock file and no index:
        # drop the partial files so this run writes the cache again.
        if glob.glob(glob.escape(path) + "*.lockfile"):
            for stale in glob.glob(glob.escape(path) + "*"):
                os.remove(stale)
    return features.cache(path or "")


DATA_FIELDS = ("dataset", "data_dir", "tfds_data_dir", "train_split", "validation_split_name",
               "test_split", "validation_split", "test_split_fraction",
               "max_examples_per_split", "synthetic_examples", "split_seed", "image_size")


def data_key(cfg) -> dict:
    """What determines the images of every split: the data flags and, for an image
    folder, every file's path, size and modification time."""
    key = {f: getattr(cfg, f) for f in DATA_FIELDS}
    if cfg.data_dir:
        files = []
        for root, _, names in os.walk(cfg.data_dir):
            for name in sorted(names):
                st = os.stat(os.path.join(root, name))
                files.append((os.path.relpath(os.path.join(root, name), cfg.data_dir),
                              st.st_size, st.st_mtime_ns))
        key["files"] = hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()
    return key


def resolve(mode: str, cut: Cut | None, reason: str, num_examples: int) -> str:
    """off, memory or disk, logging why the cache is off when it cannot be used."""
    if mode == "off":
        return "off"
    if cut is None:
        logging.info("feature cache off: %s", reason)
        return "off"
    if mode != "auto":
        return mode
    return "memory" if feature_bytes(cut, num_examples) <= MEMORY_BUDGET_BYTES else "disk"
