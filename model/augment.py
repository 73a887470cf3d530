"""Augmentation: test-time augmentation (`--tta=flip`), and `--augment`'s in-model layers
(`model_layers`, which `model/build.py` adds) and batch mixing (`mix_batches`: mixup, cutmix).
Imports nothing of model/ but the layer names.
"""
from __future__ import annotations

import math

import keras

from tapefit.model.names import AUGMENT_PREFIX

TTA_CHOICES = ("", "flip")


def with_tta(model, tta: str):
    """`model` averaged over test-time augmentations: `flip` averages the class
    probabilities of each image and its mirror image (left-right), and returns
    their log (logits of the averaged distribution: the loss and accuracy of both
    loops apply unchanged). `""`: the model itself."""
    if not tta:
        return model
    if tta != "flip":
        raise ValueError(f"unknown test-time augmentation {tta!r}")
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    mirrored = keras.ops.flip(inputs, axis=2)  # NHWC: the width axis.
    a = keras.ops.log_softmax(model(inputs), axis=-1)
    b = keras.ops.log_softmax(model(mirrored), axis=-1)
    logits = keras.ops.logaddexp(a, b) - math.log(2.0)
    return keras.Model(inputs, logits, name=f"{model.name}_tta_{tta}")


# ---- --augment: the spec -------------------------------------------------------------------
# In the model (training only): flip, rotate, randaugment. Across the examples of a
# batch, in the training data stream of both loops (soft labels): mixup, cutmix.
IN_MODEL = ("flip", "rotate", "randaugment")
IN_BATCH = ("mixup", "cutmix")
MIXUP_ALPHA = 0.4  # fastai's MixUp default.
CUTMIX_ALPHA = 1.0  # fastai's and timm's CutMix default.
MIX_SEED_STRIDE = 7_919


def parse(spec: str) -> tuple[str, ...]:
    """The augmentation names of a normalised `--augment` value (see flags.config)."""
    return tuple(name for name in (spec or "").split(",") if name)


def mixes(spec: str) -> tuple[str, ...]:
    return tuple(name for name in parse(spec) if name in IN_BATCH)


def uncacheable(spec: str) -> bool:
    """Whether `spec` rules out the frozen-prefix feature cache on its own: mixing
    changes the images fed to the prefix, and RandAugment is a random layer that
    `loops.caches.feature_cache.RANDOM_LAYERS` does not list (flip and rotate it does)."""
    return bool(mixes(spec)) or "randaugment" in parse(spec)


def mix_batches(batches, spec: str, num_classes: int, seed: int, first_step: int = 0):
    """`batches` of (images, integer labels) → (mixed images, soft labels) for the
    `mixup`/`cutmix` of `spec` (both: each batch one of them, with probability ½).

    Every random number is drawn from a stateless generator seeded with (`seed`,
    global step), so the stream depends on nothing but its position: both loops see
    the same batches, and a resume (`first_step`: the step the stream starts at)
    continues exactly.
    """
    import tensorflow as tf
    kinds = mixes(spec)
    if not kinds:
        return batches

    def mix(step, batch):
        images, labels = batch
        key = tf.stack([tf.cast(seed, tf.int64), step * MIX_SEED_STRIDE])
        keys = tf.random.experimental.stateless_split(key, 4)
        onehot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
        n = tf.shape(images)[0]
        order = tf.argsort(tf.random.stateless_uniform([n], keys[0]))
        other_images, other_labels = tf.gather(images, order), tf.gather(onehot, order)

        def mixup():
            lam = _beta(keys[1], [n], MIXUP_ALPHA)
            lam = tf.maximum(lam, 1.0 - lam)  # fastai: the example keeps the larger part.
            mixed = lam[:, None, None, None] * images + \
                (1.0 - lam[:, None, None, None]) * other_images
            return mixed, lam[:, None] * onehot + (1.0 - lam[:, None]) * other_labels

        def cutmix():
            lam = _beta(keys[1], [], CUTMIX_ALPHA)
            height, width = tf.shape(images)[1], tf.shape(images)[2]
            cut = tf.sqrt(1.0 - lam)
            cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
            cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
            centre = tf.random.stateless_uniform([2], keys[2])
            cy = tf.cast(centre[0] * tf.cast(height, tf.float32), tf.int32)
            cx = tf.cast(centre[1] * tf.cast(width, tf.float32), tf.int32)
            y0, y1 = tf.maximum(cy - cut_h // 2, 0), tf.minimum(cy + cut_h // 2, height)
            x0, x1 = tf.maximum(cx - cut_w // 2, 0), tf.minimum(cx + cut_w // 2, width)
            rows = tf.logical_and(tf.range(height) >= y0, tf.range(height) < y1)
            cols = tf.logical_and(tf.range(width) >= x0, tf.range(width) < x1)
            box = tf.logical_and(rows[:, None], cols[None, :])[None, :, :, None]
            mixed = tf.where(box, other_images, images)
            kept = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(
                height * width, tf.float32)  # The label weight of the pasted box's area.
            return mixed, kept * onehot + (1.0 - kept) * other_labels

        if len(kinds) == 1:
            return mixup() if kinds[0] == "mixup" else cutmix()
        coin = tf.random.stateless_uniform([], keys[3]) < 0.5
        return tf.cond(coin, mixup, cutmix)

    steps = tf.data.Dataset.range(first_step, 1 << 62)
    return tf.data.Dataset.zip((steps, batches)).map(
        mix, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


def _beta(key, shape, alpha):
    import tensorflow as tf
    keys = tf.random.experimental.stateless_split(key, 2)
    a = tf.random.stateless_gamma(shape, keys[0], alpha=alpha)
    b = tf.random.stateless_gamma(shape, keys[1], alpha=alpha)
    return a / (a + b)


def model_layers(spec: str, seed: int) -> list:
    """The in-model augmentation layers of `spec`, in order (training only; Keras
    draws their seeds at construction). `flip` and `rotate` are the layers the former
    boolean `--augment` added, with the same names and arguments."""
    from keras import layers
    names = parse(spec)
    out = []
    if "flip" in names:
        out.append(layers.RandomFlip("horizontal", seed=seed, name=f"{AUGMENT_PREFIX}flip"))
    if "rotate" in names:
        out.append(layers.RandomRotation(ROTATION, seed=seed, name=f"{AUGMENT_PREFIX}rotate"))
    if "randaugment" in names:
        out.append(layers.RandAugment(value_range=(0, 255), seed=seed,
                                      name=f"{AUGMENT_PREFIX}randaugment"))
    return out


ROTATION = 0.05  # A fraction of a full turn (= model/build.py's AUGMENTATION_ROTATION).
