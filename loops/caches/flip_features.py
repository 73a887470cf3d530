"""Exact feature cache under horizontal-flip augmentation (loops/caches/feature_cache.py).

A `RandomFlip("horizontal")` layer right after the input has two outcomes per
image: the image or its mirror image. Both outcomes' frozen-prefix features are
cached, stacked on axis 1 (`[features(x), features(flip(x))]`), and `PickFlip`
picks one per example and step by calling that very layer's random draw
(`get_random_transformation`, its own seed generator): the same numbers the layer
would draw if it ran on the images, so the same examples are flipped at the same
steps, and the layer's generator state (checkpointed with the model) advances as
it would. In inference mode the layer is the identity: `PickFlip` returns the
image's features.
"""
from __future__ import annotations

import keras
import tensorflow as tf


def is_cacheable_flip(layer, node, model) -> bool:
    """Whether `layer` (at graph `node`) is a horizontal RandomFlip reading the model's
    input: its two outcomes can be cached."""
    return (isinstance(layer, keras.layers.RandomFlip) and layer.mode == "horizontal"
            and len(node.input_tensors) == 1
            and node.input_tensors[0] is model.inputs[0])


def flip_images(images):
    """What RandomFlip("horizontal") does to a flipped NHWC batch: mirror the width."""
    return tf.reverse(images, axis=[2])


def both_outcomes(prefix_fn, images):
    """`[prefix(images), prefix(mirrored images)]` stacked on axis 1."""
    return tf.stack([prefix_fn(images), prefix_fn(flip_images(images))], axis=1)


def same_outcome(features):
    """One example's features with no flip to choose from (validation): both slots
    the same, as `[features, features]` (axis 0: the example's own first axis)."""
    return tf.stack([features, features], axis=0)


class PickFlip(keras.layers.Layer):
    """`[features, flipped features]` → the features `flip` would lead to.

    Training: per example, where `flip`'s own random draw flips the image, the
    flipped image's features. Inference: the image's features (`flip` is inactive).
    The layer only calls `flip.get_random_transformation`; it holds no state and does
    not track `flip` (the model owns it)."""

    def __init__(self, flip, **kwargs):
        super().__init__(**kwargs)
        self._draw = flip.get_random_transformation

    def call(self, inputs, training=None):
        if not training:
            return inputs[:, 0]
        # The draw sees only the batch size (as on the images: flips of shape [B,1,1,1]).
        probe = tf.zeros(tf.stack([tf.shape(inputs)[0], 1, 1, 1]), inputs.dtype)
        flips = self._draw(probe, training=True)["flips"]
        flips = tf.reshape(flips, [-1] + [1] * (len(inputs.shape) - 2))
        return tf.where(flips, inputs[:, 1], inputs[:, 0])

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + tuple(input_shape[2:])
