"""`--dataset=synthetic`: a small, offline, seeded two-class dataset.

Class 0 ("cat") is a little brighter and redder than class 1 ("dog"), under
strong per-pixel noise, so a model can learn it but not in one step.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from tapefit.input_pipeline.common import SPLITS, DataError, Splits

CLASS_NAMES = ("cat", "dog")
# Per-class offset added to every pixel (R, G, B): cats redder and brighter.
_TINT = np.array([[30.0, 10.0, -20.0], [-20.0, 0.0, 30.0]], np.float32)


def split_sizes(num_examples: int) -> dict:
    """Train gets `num_examples`; validation and test half of it (at least 2)."""
    small = max(2, num_examples // 2)
    return {"train": num_examples, "validation": small, "test": small}


def load(cfg) -> Splits:
    if cfg.synthetic_examples < 2:
        raise DataError(f"--synthetic_examples={cfg.synthetic_examples} must be at least 2")
    sizes = split_sizes(cfg.synthetic_examples)
    per_class = getattr(cfg, "max_examples_per_class", 0)
    if per_class > 0:  # Labels alternate (`generate`): n examples hold ceil(n/2) of a class.
        sizes = {split: min(n, per_class * len(CLASS_NAMES)) for split, n in sizes.items()}
    if cfg.max_examples_per_split > 0:
        sizes = {split: min(n, cfg.max_examples_per_split) for split, n in sizes.items()}
    datasets = {}
    for index, split in enumerate(SPLITS):
        images, labels = generate(sizes[split], cfg.image_size, cfg.split_seed, index)
        datasets[split] = tf.data.Dataset.from_tensor_slices((images, labels))
    return Splits(class_names=CLASS_NAMES, sizes=sizes, **datasets)


def generate(num_examples: int, image_size: int, seed: int, stream: int = 0):
    """`(uint8[n, S, S, 3], int32[n])`, a function of its arguments only."""
    rng = np.random.default_rng([seed, 100, stream])
    labels = rng.permutation(np.arange(num_examples) % 2).astype(np.int32)
    shape = (num_examples, image_size, image_size, 3)
    brightness = rng.uniform(70.0, 170.0, size=(num_examples, 1, 1, 1)).astype(np.float32)
    images = rng.standard_normal(shape, dtype=np.float32) * 40.0
    images += brightness + _TINT[labels][:, None, None, :]
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels
