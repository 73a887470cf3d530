"""The data `--phase=evaluate` tests on.

- The trained run's data, or `--dataset`/`--test_split`: that source's test split.
- `--data_dir=DIR` with `DIR/test/<class>/`: that folder.
- `--data_dir=DIR` with the class folders directly in it (`DIR/<class>/`, e.g. a folder
  of new photos): every image in it, nothing carved off.
"""
from __future__ import annotations

import concurrent.futures
import os

from tapefit.input_pipeline import folders
from tapefit.input_pipeline.common import DataError


def load_test_split(cfg):
    """(dataset of (uint8 image, label), number of examples, class names)."""
    return load_test_split_with_ids(cfg)[:3]


def load_test_split_with_ids(cfg):
    """load_test_split's, and the examples' ids in order (image folders: paths relative
    to the data folder; None: identified by position)."""
    if cfg.data_dir:
        root = os.path.normpath(cfg.data_dir)
        if not os.path.isdir(root):
            raise DataError(f"--data_dir={folders.printable(cfg.data_dir)} is not a folder; "
                            "pass a folder with one sub-folder of images per class")
        names = set(folders.subfolders(root))
        if "train" not in names and "test" not in names:
            return _whole_folder(root, cfg, root)
        if "test" in names:
            return _whole_folder(os.path.join(root, "test"), cfg, root)
    from tapefit.input_pipeline.sources import load_splits
    splits = load_splits(cfg)
    return (splits.test, splits.sizes["test"], tuple(splits.class_names),
            splits.ids.get("test"))


def _whole_folder(folder: str, cfg, root: str):
    skipped = []
    listing = folders._list_classes(folder, skipped)
    class_names = tuple(listing)
    # The decoded images are cached (--image_cache) as the split "whole" of this folder
    # (a training run on the same folder has other splits: train, validation, test).
    caches = folders._image_caches(cfg.replace(data_dir=folder), folder, ("whole",))
    cache = caches["whole"] if caches else None
    manifest = cache.manifest() if cache else None
    if manifest:
        size = manifest["examples"]
        ids = folders.example_ids("whole", manifest, size).get("whole")
        return cache.dataset(None, size, cfg.image_size), size, class_names, ids
    entries = folders._entries(listing, class_names)
    limit = cfg.max_examples_per_split if cfg.max_examples_per_split > 0 else None
    per_class = getattr(cfg, "max_examples_per_class", 0)
    with concurrent.futures.ThreadPoolExecutor(folders._num_workers()) as pool:
        if per_class > 0:  # Then the split's limit: a stratified choice of what it kept.
            kept, bad = folders.check_per_class(pool, entries, cfg.image_size, per_class,
                                                [cfg.split_seed, 3, len(folders.SPLITS)])
            if limit is not None and len(kept) > limit:
                rng = folders.np.random.default_rng([cfg.split_seed, 2, len(folders.SPLITS)])
                kept = [kept[i] for i in folders._stratified_order(kept, rng)[:limit]]
        else:
            kept, bad = folders._check_files(pool, entries, cfg.image_size, limit)
    if not kept:
        raise DataError(f"{folders.printable(folder)} has no readable images; add some")
    kept.sort(key=lambda e: (e[1], e[0]))
    ds = folders._dataset(kept, cfg.image_size)
    ids = folders.relative_ids(kept, root)
    if cache:
        ds = cache.dataset(ds, len(kept), cfg.image_size, {"ids": list(ids)})
    return ds, len(kept), class_names, ids
