"""Types and helpers shared by every data source."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import stat

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
SPLITS = ("train", "validation", "test")


from tapefit.flags.errors import DataError  # noqa: E402,F401  (re-exported)


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
    # {split: one id per example, in the split's order}: image folders give each
    # image's path relative to the data folder; a split absent here (tfds, synthetic,
    # an image cache written before ids were recorded) is identified by position.
    ids: dict = dataclasses.field(default_factory=dict)


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


# content_digest's memo: (path, device, inode, size, mtime, ctime) -> digest. Writing to a
# file (or setting its mtime back) sets its ctime to now: a rewritten file is hashed again.
_digests: dict = {}


def content_digest(path: str) -> str | None:
    """SHA-256 of a regular file's bytes ("unreadable" if it cannot be read; None if it
    is gone or no regular file). Read once per process while the file is unchanged
    (`_digests`: a stat, no read)."""
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        known = _digests.get(_memo_key(path, st))
        if known is not None:
            return known
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return "unreadable"
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        memo = _memo_key(path, st)
        try:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return "unreadable"
    _digests[memo] = content
    return content


def _memo_key(path: str, st: os.stat_result) -> tuple:
    return path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
