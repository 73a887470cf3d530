"""--seed=0 (and 1..3) trains end to end, and the data order of every seed is a
function of the seed and the epoch only (every other seed's order unchanged).

Each test fails on the code before the fix (see the comment on each).
"""
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tapefit import input_pipeline
from tapefit.input_pipeline import batching
from tapefit.loops import phases

# ---- --seed=0 (and 1..3) -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_seeds_0_to_3_train_end_to_end(tiny_config, seed):
    """Before: --seed=0 raised OperatorNotAllowedInGraphError from Dataset.shuffle."""
    cfg = tiny_config.replace(seed=seed, epochs=1, synthetic_examples=16, backup=False,
                              workdir=f"{tiny_config.workdir}-{seed}")
    result = phases.run(cfg)
    assert math.isfinite(result["last_epoch_logs"]["loss"])
    assert os.path.isfile(os.path.join(cfg.run_dir, "best.weights.h5"))


def numbered(n):
    return tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int32),) * 2)


def stream(seed, n=11, batch_size=4, epochs=3):
    batches, steps = input_pipeline.train_batches(numbered(n), n, batch_size, seed, cache=False)
    iterator = iter(batches)
    return [next(iterator)[1].numpy().tolist() for _ in range(epochs * steps)]


def old_stream(seed, n=11, batch_size=4, epochs=3):
    """The data order before the fix: ds.shuffle with a tensor seed, under the global
    seed a run sets (keras.utils.set_random_seed(cfg.seed))."""
    ds = numbered(n)

    def one_epoch(epoch):
        order_seed = tf.constant(batching.EPOCH_SEED_STRIDE * seed, tf.int64) + epoch
        return ds.shuffle(n, seed=order_seed, reshuffle_each_iteration=False).batch(batch_size)

    batches = tf.data.Dataset.range(0, epochs).flat_map(one_epoch)
    return [b[1].numpy().tolist() for b in batches]


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 2**31 + 7])
def test_data_order_of_every_other_seed_is_unchanged(seed):
    """Parity and resume tests, and every earlier run, depend on these orders."""
    keras.utils.set_random_seed(seed)
    assert stream(seed) == old_stream(seed)


def test_seed_0_order_is_a_function_of_seed_and_epoch_only():
    keras.utils.set_random_seed(0)
    first = stream(0)
    keras.utils.set_random_seed(7)  # The global seed no longer matters.
    assert stream(0) == first
    epochs = [sum(first[i:i + 3], []) for i in (0, 3, 6)]
    assert all(sorted(e) == list(range(11)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert stream(0) != stream(1)
