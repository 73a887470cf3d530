"""Types and helpers shared by every data source."""
from __future__ import annotations

import dataclasses

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = ("train", "validation", "test")


from flags.errors import DataError  # noqa: E402,F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class Splits:
    """The three splits of a dataset, unbatched, in a fixed order.

    Each element is `(image, label)`: `uint8[S, S, 3]` and `int32[]`.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    class_names: tuple[str, ...]
    sizes: dict
    skipped: tuple[str, ...] = ()


def resize_uint8(image, size: int):
    """Bilinear resize of an RGB image to `size` x `size`, rounded back to uint8.

    Every source goes through this one function, so a picture gives the same
    pixels whether it comes from a folder, tfds or `read_image_file`.
    """
    image = tf.image.resize(image, (size, size), method="bilinear")
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    image.set_shape((size, size, 3))
    return image


def to_rgb(image):
    """Makes a decoded uint8 image 3-channel (grayscale is repeated, alpha dropped)."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 2:  # grayscale + alpha
        return tf.image.grayscale_to_rgb(image[..., :1])
    if channels == 4:
        return image[..., :3]
    return image


def map_examples(ds: tf.data.Dataset, fn) -> tf.data.Dataset:
    """`ds.map(fn)` in parallel, keeping the input order."""
    return ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=True)
