"""Per-example test predictions of the evaluate phase: `<workdir>/evaluate/predictions.npz`.

One row per test example, in the test split's fixed order (folders: sorted by class,
then path; tfds and synthetic: the split's order):
- `ids`: image folders: the image's path relative to the data folder
  (`test/cat/1.jpg`); tfds and synthetic data (or an image cache written before ids
  were recorded): the example's position in that order ("0", "1", ...). The same
  example has the same id in every run of one data configuration (`split`, below);
- `labels` (int), `probabilities` (float32 [n, classes]: softmax of the logits),
  `loss` (float32: the example's cross-entropy, the loss evaluation.json averages);
- `digests`: 16 hex digits of SHA-256 of the example's decoded pixels (at `image_size`),
  so a reader can check that two runs scored the same images;
- `split`: JSON of the flags that decide which examples the test split holds and in
  which order (data source, split flags, seed of the split, example limit);
  `image_size`, `classes`.

Small (a few bytes per example) and written atomically. `research/report.py` pairs two
runs' predictions example by example (the paired bootstrap over seeds and examples).
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from tapefit.flags.config import SPLIT, key_values
from tapefit.layout.atomic import atomic_save
from tapefit.layout.paths import PREDICTIONS_NPZ  # noqa: F401  (the name callers know from here)


def split_description(data_cfg) -> str:
    """JSON of the flags that decide the test split's examples and their order (the
    fields of role SPLIT)."""
    return json.dumps(key_values(data_cfg, SPLIT), sort_keys=True, default=str)


def predict(model, batches):
    """(labels, probabilities, loss, digests) over a finite batched dataset of
    (float32 images in 0..255, int labels)."""
    import tensorflow as tf

    @tf.function
    def step(x, y):
        logits = tf.cast(model(x, training=False), tf.float32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int32), logits)
        return tf.nn.softmax(logits), loss

    labels, probabilities, losses, digests = [], [], [], []
    for x, y in batches:
        p, loss = step(x, y)
        labels.append(np.asarray(y).reshape(-1))
        probabilities.append(np.asarray(p))
        losses.append(np.asarray(loss))
        pixels = np.clip(np.rint(np.asarray(x)), 0, 255).astype(np.uint8)
        digests += [hashlib.sha256(image.tobytes()).hexdigest()[:16] for image in pixels]
    if not labels:
        return (np.zeros((0,), np.int64), np.zeros((0, 0), np.float32),
                np.zeros((0,), np.float32), [])
    return (np.concatenate(labels).astype(np.int64),
            np.concatenate(probabilities).astype(np.float32),
            np.concatenate(losses).astype(np.float32), digests)


def write(path: str, labels, probabilities, loss, digests, split: str, image_size: int,
          classes, ids=None) -> None:
    """`ids`: one per example (image folders: paths relative to the data folder); None or
    of another length than the predictions: positions."""
    n = len(labels)
    if ids is None or len(ids) != n:
        ids = [str(i) for i in range(n)]

    def save(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f, ids=np.asarray(list(ids), dtype=str), labels=labels,
                probabilities=probabilities, loss=loss, digests=np.asarray(digests, dtype=str),
                split=np.asarray(split), image_size=np.asarray(image_size),
                classes=np.asarray(list(classes), dtype=str))
    atomic_save(save, path)
