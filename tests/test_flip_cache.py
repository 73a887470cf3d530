"""The feature cache under `--augment=flip` is exact: both outcomes' features are
cached and picked per example and step by the RandomFlip layer's own random draw."""
import keras
import numpy as np
import tensorflow as tf
from keras import layers

from loops.flip_features import PickFlip, both_outcomes, flip_images

STEPS = 6


def flip_layer(seed=3):
    keras.utils.set_random_seed(0)
    return layers.RandomFlip("horizontal", seed=seed)


def test_pick_flip_flips_the_same_examples_at_the_same_steps_as_random_flip():
    """Per example and step: RandomFlip on images vs PickFlip on [x, flip(x)] with an
    identically seeded layer (the identity as the 'prefix', so the features are the
    images): the same output, hence the same decisions."""
    images = np.random.default_rng(0).uniform(0, 255, (STEPS, 8, 5, 7, 3)).astype("float32")
    on_images, on_features = flip_layer(), flip_layer()
    pick = PickFlip(on_features)
    run_images = tf.function(lambda x: on_images(x, training=True))
    run_pick = tf.function(lambda x: pick(both_outcomes(tf.identity, x), training=True))
    decisions = []
    for step in range(STEPS):
        expected = run_images(images[step]).numpy()
        np.testing.assert_array_equal(run_pick(images[step]).numpy(), expected)
        flipped = [np.array_equal(e, flip_images(images[step][i:i + 1])[0])
                   for i, e in enumerate(expected)]
        decisions.append(flipped)
    decisions = np.array(decisions)
    assert 0 < decisions.mean() < 1  # Both outcomes occur...
    assert len({tuple(d) for d in decisions}) > 1  # ...and change from step to step.
    # The layers' generators advanced alike: the next draws agree too.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(on_images.generator.state),
                                  keras.ops.convert_to_numpy(on_features.generator.state))


def test_pick_flip_in_inference_returns_the_images_features():
    x = np.random.default_rng(1).uniform(0, 255, (4, 5, 6, 3)).astype("float32")
    pick = PickFlip(flip_layer())
    np.testing.assert_array_equal(pick(both_outcomes(tf.identity, x), training=False), x)
