"""Which source a run's data comes from: an image folder, synthetic images or tfds."""
from __future__ import annotations

import dataclasses

from tapefit.input_pipeline.batching import without_autotune_model
from tapefit.input_pipeline.common import SPLITS, Splits


def load_splits(cfg) -> Splits:
    """The train, validation and test splits `cfg` names.

    `cfg.data_dir` set: an image folder; `cfg.dataset == "synthetic"`: offline
    generated images; otherwise `cfg.dataset` is a tfds dataset name. Every split
    comes without tf.data's autotuning model thread (`without_autotune_model`).
    """
    splits = _load(cfg)
    return dataclasses.replace(splits, **{split: without_autotune_model(getattr(splits, split))
                                          for split in SPLITS})


def _load(cfg) -> Splits:
    if cfg.data_dir:
        from tapefit.input_pipeline import folders
        return folders.load(cfg)
    if cfg.dataset == "synthetic":
        from tapefit.input_pipeline import synthetic
        return synthetic.load(cfg)
    from tapefit.input_pipeline import tfds_source
    return tfds_source.load(cfg)
