"""tfds image-classification datasets (features `image` and `label`).

This is what `tfds.load(name, split=[train, validation, test], data_dir=...)` does,
spelled out through the builder so that a dataset that is not prepared yet is
downloaded only once a quick probe shows the download host can be reached:
without network the run stops at once with a `DataError` instead of waiting out
tfds' retries. `cfg.max_examples_per_split` keeps the first N examples of each
split (`ds.take(N)`); tfds shuffled the examples when it prepared the dataset.
`cfg.max_examples_per_class` keeps the first N of each class (before
`max_examples_per_split`).
"""
from __future__ import annotations

import logging
import os
import urllib.parse
import urllib.request

import tensorflow as tf

from tapefit.input_pipeline.common import (
    SPLITS,
    DataError,
    Splits,
    map_examples,
    resize_uint8,
    to_rgb,
)
from tapefit.input_pipeline.network import PROBE_TIMEOUT_S, network_available  # noqa: F401

log = logging.getLogger(__name__)

# Hosts probed for datasets whose download URLs tfds does not list.
FALLBACK_HOSTS = ("storage.googleapis.com",)
_SPLIT_FLAGS = {"train": "train_split", "validation": "validation_split_name",
                "test": "test_split"}
_ALTERNATIVES = ("Pass --data_dir=DIR (an image folder), --tfds_data_dir=DIR where it is "
                 "prepared, or --dataset=synthetic")


def load(cfg) -> Splits:
    import tensorflow_datasets as tfds

    name = cfg.dataset
    try:
        builder = tfds.builder(name, data_dir=cfg.tfds_data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(
                f"unknown tfds dataset {name!r}; list the names with `python -c \"import "
                "tensorflow_datasets as tfds; print(tfds.list_builders())\"` (or see the tfds "
                "catalog), or pass --data_dir=DIR or --dataset=synthetic") from None
    features = builder.info.features
    named = dict(features.items()) if isinstance(features, tfds.features.FeaturesDict) else {}
    if not (isinstance(named.get("image"), tfds.features.Image)
            and isinstance(named.get("label"), tfds.features.ClassLabel)):
        raise DataError(f"tfds dataset {name!r} has no 'image' and ClassLabel 'label' features; "
                        "pick an image-classification dataset, or pass --data_dir=DIR")
    if not builder.is_prepared():
        hosts = download_hosts(builder)
        if not network_available(hosts):
            raise DataError(
                    f"cannot download tfds dataset {name!r}: no network (it is not prepared in "
                    f"{builder.data_dir_root} and {hosts[0]} cannot be reached). {_ALTERNATIVES}")
        builder.download_and_prepare()

    datasets, sizes = {}, {}
    caches = _image_caches(cfg, builder)
    for split in SPLITS:
        spec = getattr(cfg, _SPLIT_FLAGS[split])
        try:
            ds = builder.as_dataset(split=spec, shuffle_files=False,
                                    read_config=tfds.ReadConfig(try_autocache=False))
        except (ValueError, KeyError) as e:
            known = ", ".join(builder.info.splits) or "unknown"
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"--{_SPLIT_FLAGS[split]}={spec!r} is not a split of {name!r} "
                            f"({reason}); its splits are: {known}") from None
        size = _num_examples(builder, spec, ds)
        per_class = getattr(cfg, "max_examples_per_class", 0)
        if per_class > 0:
            ds, size = _take_per_class(builder, spec, ds, per_class)
        if cfg.max_examples_per_split > 0:
            ds = ds.take(cfg.max_examples_per_split)
            size = min(size, cfg.max_examples_per_split)
        datasets[split] = map_examples(ds, _example_fn(cfg.image_size))
        sizes[split] = size
        if caches:
            datasets[split] = caches[split].dataset(datasets[split], size, cfg.image_size)
    return Splits(class_names=tuple(features["label"].names), sizes=sizes, **datasets)


def _take_per_class(builder, spec: str, ds: tf.data.Dataset, per_class: int):
    """(`ds` with the first `per_class` examples of each class, their number): the
    number from one pass over the split's labels (images not decoded)."""
    import tensorflow_datasets as tfds
    num_classes = builder.info.features["label"].num_classes
    labels = builder.as_dataset(split=spec, shuffle_files=False,
                                decoders={"image": tfds.decode.SkipDecoding()},
                                read_config=tfds.ReadConfig(try_autocache=False))
    counts = labels.reduce(tf.zeros([num_classes], tf.int64), lambda counts, features:
                           counts + tf.one_hot(features["label"], num_classes, dtype=tf.int64))
    size = int(tf.reduce_sum(tf.minimum(counts, per_class)))

    def seen(counts, features):  # Keeps an example while its class has fewer than N.
        label = tf.cast(features["label"], tf.int32)
        keep = counts[label] < per_class
        return counts + tf.one_hot(label, num_classes, dtype=tf.int64), (keep, features)

    ds = ds.scan(tf.zeros([num_classes], tf.int64), seen)
    return ds.filter(lambda keep, _: keep).map(lambda _, features: features), size


def _image_caches(cfg, builder) -> dict | None:
    """{split: its `image_cache.SplitCache`} under `--image_cache=disk`, else None; keyed
    by the data flags, the dataset's name, version and config, and its prepared files
    (name, size, time). Without prepared files to fingerprint (e.g. under
    `tfds.testing.mock_data`) nothing is cached on disk."""
    from tapefit.input_pipeline import image_cache
    from tapefit.input_pipeline.folders import data_fingerprint
    if image_cache.resolve(cfg, "tfds") != "disk":
        return None
    try:
        files = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                       for e in os.scandir(builder.data_dir) if e.is_file())
    except OSError:
        files = []
    if not files:
        log.info("image cache: no prepared files of %s to fingerprint; caching decoded "
                 "images in memory only", builder.info.full_name)
        return None
    data = f"tfds {builder.info.full_name} {data_fingerprint(cfg)} {files}"
    folder = os.path.join(image_cache.root(cfg), image_cache.key(cfg, data))
    return {split: image_cache.SplitCache(folder, split) for split in SPLITS}


def _example_fn(image_size: int):
    def example(features):
        image = resize_uint8(to_rgb(features["image"]), image_size)
        return image, tf.cast(features["label"], tf.int32)
    return example


def _num_examples(builder, spec: str, ds: tf.data.Dataset) -> int:
    """The split's size from tfds' metadata, else from the dataset's cardinality."""
    try:
        return int(builder.info.splits[spec].num_examples)
    except (KeyError, ValueError, AssertionError):
        pass  # e.g. under tfds.testing.mock_data, whose info has no splits.
    size = int(ds.cardinality())
    if size >= 0:
        return size
    return int(ds.reduce(0, lambda count, _: count + 1))


# ---- network probe ---------------------------------------------------------------

def download_hosts(builder) -> list:
    """The hosts the builder downloads from (its checksum file), or FALLBACK_HOSTS."""
    try:
        urls = type(builder).url_infos or {}
    except Exception:  # a builder without a checksums file.
        urls = {}
    hosts = sorted({urllib.parse.urlsplit(url).hostname for url in urls} - {None})
    return hosts or list(FALLBACK_HOSTS)


