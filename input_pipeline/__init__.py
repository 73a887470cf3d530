"""Input pipeline: image folders, tfds datasets or synthetic data, as `Splits`.

    splits = load_splits(cfg)
    train, steps_per_epoch = train_batches(splits.train, splits.sizes["train"],
                                           cfg.batch_size, cfg.seed)
    validation = eval_batches(splits.validation, cfg.batch_size)

Split elements are `(uint8[S, S, 3], int32[])` with `S = cfg.image_size`; the
batches hold float32 images in 0..255 (the model does its own preprocessing).
"""
from __future__ import annotations

from tapefit.input_pipeline.batching import CACHE_BUDGET_BYTES, eval_batches, train_batches
from tapefit.input_pipeline.common import DataError, Splits
from tapefit.input_pipeline.folders import (
    IMAGE_EXTENSIONS,
    data_fingerprint,
    printable,
    read_image_file,
)
from tapefit.input_pipeline.sources import load_splits

__all__ = ["CACHE_BUDGET_BYTES", "DataError", "IMAGE_EXTENSIONS", "Splits", "data_fingerprint",
           "eval_batches", "load_splits", "printable", "read_image_file", "train_batches"]


def load_test_split(cfg):
    """What `--phase=evaluate` tests on: (dataset, size, class names); see evaluation.py."""
    from tapefit.input_pipeline.evaluation import load_test_split as load
    return load(cfg)
