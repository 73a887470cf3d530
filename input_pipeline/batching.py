"""Batching for training and evaluation: the one place the data order is decided."""
from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from tapefit.input_pipeline.common import AUTOTUNE, DataError
from tapefit.layout import paths

log = logging.getLogger(__name__)

# Decoded splits up to this size are cached in memory; larger ones in a file under
# `cache_dir` when one is given, else not at all (decoded again every epoch).
CACHE_BUDGET_BYTES = 2 << 30


# Epoch e is shuffled with the seed pair (seed, EPOCH_SEED_STRIDE * seed + e), each
# modulo _MAXINT32; see `_shuffle_epoch`.
EPOCH_SEED_STRIDE = 1_000_003
_MAXINT32 = 2**31 - 1
_ENOUGH_EPOCHS = 1 << 40
# Elements `read_to_end` reads ahead at most.
READ_AHEAD = 64
# tf.data's autotuning model thread (options.autotune.enabled) on the batches we
# make. Off: destroying an iterator whose pipeline it tunes can block until the
# thread's current wait ends (10 ms * 2**k, up to 60 s; bench/README.md, "teardown
# stall"), and we destroy iterators every epoch (validation) and at every run's
# end. AUTOTUNE parallelism then is the number of cores; prefetch buffers still grow
# on demand.
AUTOTUNE_MODEL = False


def train_batches(ds: tf.data.Dataset, num_examples: int, batch_size: int, seed: int,
                  cache_dir: str | None = None, cache: bool | None = None,
                  start_epoch: int = 0, skip_batches: int = 0):
    """`(batches, steps_per_epoch)`: one infinite stream, epoch after epoch.

    `ds` is a split from `load_splits` (or any `(x, label)` dataset) and
    `num_examples` its exact size. Each run of `steps_per_epoch = ceil(n / batch_size)`
    steps is one epoch: a permutation of all examples, the last batch partial.

    Epoch e's order is a function of (`seed`, e) only, never of how many
    iterators were made before (Keras fit() makes extra ones, and a reshuffling
    dataset would give it other orders than a plain loop). So any loop sees the
    same batches, and a resumed run continues exactly: `start_epoch` and
    `skip_batches` position the stream. Images become float32 in 0..255.
    `cache`: None caches unless `ds` ends in `.cache()` already; see `_cache`.
    """
    if num_examples < 1:
        raise DataError("the training split is empty; add training images")
    ds = _cache(ds, num_examples, cache_dir, cache)

    def one_epoch(epoch):
        return _shuffle_epoch(ds, num_examples, seed, epoch).batch(batch_size)

    batches = tf.data.Dataset.range(start_epoch, _ENOUGH_EPOCHS).flat_map(one_epoch)
    # Cast after batching: the shuffle buffer then holds uint8, a quarter of the memory.
    batches = batches.map(_to_float, num_parallel_calls=AUTOTUNE, deterministic=True)
    batches = batches.skip(skip_batches).prefetch(AUTOTUNE)
    return _shard_by_data(batches), math.ceil(num_examples / batch_size)


def _shuffle_epoch(ds: tf.data.Dataset, num_examples: int, seed: int, epoch) -> tf.data.Dataset:
    """`ds` shuffled for epoch `epoch` (a scalar int64 tensor), from (`seed`, `epoch`) only.

    `ds.shuffle(seed=op_seed)` would take its first seed from TF's global seed (the
    one `keras.utils.set_random_seed(seed)` sets) and crash in graph mode when that
    is 0 or 2**31 - 1 (TF compares `(0, op_seed) == (0, 0)` in Python, and `op_seed`
    is a tensor here). So both seeds are given explicitly, computed as TF computes
    them under the global seed `seed`: the same orders as `ds.shuffle` gave for
    every seed that worked, and nothing depends on the global seed any more.
    """
    seed1 = tf.constant(seed % _MAXINT32, tf.int64)
    seed2 = (tf.constant(EPOCH_SEED_STRIDE * seed, tf.int64) + epoch) % _MAXINT32
    # (0, 0) means "nondeterministic" to the kernel; TF maps it to (0, 2**31 - 1).
    seed2 = tf.where((seed1 == 0) & (seed2 == 0), tf.constant(_MAXINT32, tf.int64), seed2)
    specs = tf.nest.flatten(ds.element_spec)
    if not all(type(spec) is tf.TensorSpec for spec in specs):
        raise TypeError(f"train_batches needs dense tensors, got {ds.element_spec}")
    shuffled = tf.raw_ops.ShuffleDatasetV3(
        input_dataset=tf.data.experimental.to_variant(ds),
        buffer_size=tf.constant(num_examples, tf.int64), seed=seed1, seed2=seed2,
        seed_generator=tf.raw_ops.DummySeedGenerator(), reshuffle_each_iteration=False,
        output_types=[spec.dtype for spec in specs],
        output_shapes=[spec.shape for spec in specs])
    return tf.data.experimental.from_variant(shuffled, ds.element_spec)


def eval_batches(ds: tf.data.Dataset, batch_size: int, cache_dir: str | None = None,
                 cache: bool | None = None) -> tf.data.Dataset:
    """Batches in the split's fixed order, float32 images; one pass per iteration."""
    num_examples = int(ds.cardinality())
    cached = _cache(ds, num_examples, cache_dir, cache)
    if cached is not ds or _is_cache(ds):  # A pass that stops after the last batch must
        cached = read_to_end(cached, num_examples)  # complete the cache (e.g. features).
    ds = cached.batch(batch_size).map(_to_float, num_parallel_calls=AUTOTUNE,
                                      deterministic=True)
    return _shard_by_data(ds.prefetch(AUTOTUNE))


def read_to_end(ds: tf.data.Dataset, num_examples: int) -> tf.data.Dataset:
    """`ds` (of `num_examples` elements) such that its input's end is reached when its
    last element is produced, not only when one more is asked for.

    A `Dataset.cache` completes (writes its index, or keeps its memory copy) only once
    its input ends. A consumer that stops after the known number of batches (the
    custom loop's evaluation) would otherwise leave it incomplete, to be filled again
    by the next pass, unless a prefetch thread happened to ask for one more element
    first (a race). Chunks of a size that does not divide `num_examples` make the
    last chunk partial: producing it reads the end.
    """
    if num_examples <= 0:
        return ds
    chunk = READ_AHEAD
    while num_examples % chunk == 0:
        chunk += 1
    # unbatch() forgets the size; steps and progress bars need it.
    return ds.batch(chunk).unbatch().apply(
        tf.data.experimental.assert_cardinality(num_examples))


def _shard_by_data(ds: tf.data.Dataset) -> tf.data.Dataset:
    """The options of every batch stream we make: no autotuning model
    (`AUTOTUNE_MODEL`), and sharding by data.

    Distributed over several workers (MultiWorkerMirroredStrategy), each worker runs
    this whole pipeline and keeps its replicas' slices of every global batch, so a
    step sees the same examples as on one device. The default (AUTO) would
    give each worker whole input files when it finds them (tfds): other batches,
    and per-worker batch counts that need not agree. No effect on one worker."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    options.autotune.enabled = AUTOTUNE_MODEL
    return ds.with_options(options)


def without_autotune_model(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data's autotuning model thread as `AUTOTUNE_MODEL` says (off).

    `load_splits` applies it to every split, so every stream made from a split
    inherits it (options pass through batch, map, prefetch, cache, ...): the feature
    cache's frozen pass, the precision probe, evaluation. The frozen pass's iterator
    lived ~25 s and its teardown blocked 14-19 s in 2 of 4 real runs with the model
    thread on (1.1 of 2 cores over the pass; bench/README.md, issue 24)."""
    options = tf.data.Options()
    options.autotune.enabled = AUTOTUNE_MODEL
    return ds.with_options(options)


def _is_cache(ds: tf.data.Dataset) -> bool:
    return type(ds).__name__.endswith("CacheDataset")


def _to_float(images, labels):
    return tf.cast(images, tf.float32), labels


def _cache(ds: tf.data.Dataset, num_examples: int, cache_dir: str | None,
           cache: bool | None) -> tf.data.Dataset:
    """`ds.cache()` in memory within CACHE_BUDGET_BYTES, else in a file, else none."""
    if cache is None:  # e.g. the custom loop's feature cache is cached already.
        cache = not _is_cache(ds)
    image_spec = ds.element_spec[0]
    if not cache or num_examples < 0 or not image_spec.shape.is_fully_defined():
        return ds
    size = num_examples * int(np.prod(image_spec.shape)) * image_spec.dtype.size
    if size <= CACHE_BUDGET_BYTES:
        return ds.cache()
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="tapefit-cache-", dir=cache_dir)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        log.info("caching %.1f GiB of decoded images in %s", size / 2**30, folder)
        return ds.cache(os.path.join(folder, paths.IMAGE_CACHE_PREFIX))
    log.info("not caching %.1f GiB of decoded images (over %.1f GiB; pass cache_dir)",
             size / 2**30, CACHE_BUDGET_BYTES / 2**30)
    return ds
