"""Decoded-image cache on disk, shared across runs (`--image_cache`).

Every run used to decode and resize every photo again in its first epoch (and
check every file up front). With `--image_cache=disk` (the default for image
folders and tfds datasets) the decoded, resized uint8 images of each split are
kept under `<image_cache_dir>/<key>/<split>/` (default `<workdir>/image_cache`),
in TensorFlow's own `Dataset.cache` file format, so later phases,
`--phase=evaluate` and every trial of a sweep (which passes one shared
`--image_cache_dir`) read them instead of decoding.

The key hashes everything the pixels depend on: the data (an image folder: every
image file's path and a SHA-256 of its bytes, `input_pipeline.data_fingerprint`;
tfds: the dataset's name and version), the data flags (splits, limits, seeds), the
image size, the resize method and the TensorFlow version. A changed photo (even with
its size and time kept), image size or resize gives another key: a stale cache is
never used (old keys stay on disk until deleted).

Atomic: the first iteration of a split that finds no cache writes it into a
private temporary folder next to its final place (`.tmp-<split>-<host>-<pid>-*`),
and only once the whole split has been written (and, for a folder, its files are
unchanged) renames that folder to its final name. Concurrent runs each write their
own; the first rename wins, the others drop theirs. `complete.json` records the
size and SHA-256 of every file of the split and a checksum of itself; a split
folder is used only when it is complete and intact by that record (checked before
TF reads it: a truncated or altered shard or an edited `complete.json` never
reaches TF); anything else is set aside with a warning saying what is wrong and
rebuilt. Temporary folders of processes that died are removed.

`memory` is the in-process cache of `input_pipeline.batching` alone (the decoded
split is cached in memory within 2 GiB, once per process); `off` caches nothing
(every epoch decodes again); `auto` is `disk` except for synthetic data, which is
generated in memory.
"""
from __future__ import annotations

import atexit
import collections
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading

import tensorflow as tf

from tapefit.input_pipeline.batching import read_to_end
from tapefit.input_pipeline.common import content_digest
from tapefit.layout import paths
from tapefit.layout.atomic import json_text
from tapefit.layout.temporaries import host_tag, remove_left_over, writer_in, writer_tag

log = logging.getLogger(__name__)

MODES = ("auto", "off", "memory", "disk")
COMPLETE = paths.IMAGE_CACHE_COMPLETE
PREFIX = paths.IMAGE_CACHE_PREFIX  # TF writes images.index and images.data-00000-of-00001.
# Bump when the stored format or the decoding changes: older caches are then not used.
FORMAT = 2  # 2: complete.json records every file's size and SHA-256, and its own.
MANIFEST_LIMIT = 64 << 20  # A complete.json larger than this is damaged.
RESIZE = "bilinear, rounded to uint8"  # input_pipeline.common.resize_uint8

# What the cache did in this process (tests count these): "hit" a split read from a
# complete cache (counted when its dataset is made, or at a pass that finds the
# cache written since), "write" an iteration that decodes and writes, "published" a cache
# made final, "discarded" a written cache dropped (files changed, lost a race, ...),
# "stale" an incomplete cache or dead temporary folder removed.
counters: collections.Counter = collections.Counter()

_lock = threading.Lock()
_own_temporaries: set = set()


def resolve(cfg, source: str) -> str:
    """off, memory or disk for a data source ("folder", "tfds" or "synthetic")."""
    mode = getattr(cfg, "image_cache", "auto")
    if mode == "auto":
        return "memory" if source == "synthetic" else "disk"
    return mode


def root(cfg) -> str:
    return getattr(cfg, "image_cache_dir", None) or paths.image_cache_dir(cfg.workdir)


def key(cfg, data: str) -> str:
    """The cache key of `cfg`'s data; `data` identifies the source's content (a
    folder's fingerprint, or a tfds dataset's full name with its version)."""
    fields = {"format": FORMAT, "resize": RESIZE, "tensorflow": tf.__version__,
              "image_size": cfg.image_size, "data": data}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def element_spec(image_size: int) -> tuple:
    """What every source's split holds: (uint8[S, S, 3] image, int32 label)."""
    return (tf.TensorSpec((image_size, image_size, 3), tf.uint8), tf.TensorSpec((), tf.int32))


class SplitCache:
    """One split's cache folder: `<root>/<key>/<split>/`."""

    def __init__(self, folder: str, split: str, verify=None):
        self.folder = folder  # <root>/<key>
        self.split = split
        self.path = os.path.join(folder, split)
        # verify() -> bool: whether the data is still what the key says (checked
        # before publishing, so a file changed while it was read is never cached).
        self.verify = verify

    # ---- reading ---------------------------------------------------------------------
    def manifest(self) -> dict | None:
        """The manifest of a complete, intact cache, else None (an incomplete or damaged
        one is set aside, to be rebuilt)."""
        if not os.path.lexists(self.path):
            return None
        manifest, problem = _check(self.path)
        if problem is None:
            return manifest
        self._set_aside(self.path, problem)
        return None

    def dataset(self, source: tf.data.Dataset | None, num_examples: int, image_size: int,
                extra: dict | None = None) -> tf.data.Dataset:
        """The split through the cache: read from it when complete; otherwise
        `source` (the decoding pipeline) is read once and written to it.

        `source` None: the cache is complete (`manifest()` said so): only read. If it
        is removed while in use, the pass fails (TF finds no index, writes nothing
        and the split's cardinality check fails).
        `extra` goes into `complete.json` (e.g. the files a folder skipped).
        """
        spec = element_spec(image_size)
        cardinality = tf.data.experimental.assert_cardinality(num_examples)
        if source is None:  # Complete: read it (a removed cache fails the cardinality).
            counters["hit"] += 1
            placeholder = tf.data.Dataset.from_tensors(
                tuple(tf.zeros(s.shape, s.dtype) for s in spec)).take(0)
            return placeholder.cache(os.path.join(self.path, PREFIX)).apply(cardinality)
        extra = dict(extra or {})

        def begin():
            if self.manifest() is not None:  # Written since (e.g. by an earlier pass).
                counters["hit"] += 1
                return os.path.join(self.path, PREFIX), False
            return os.path.join(self._temporary(), PREFIX), True

        def finish(prefix):
            self._publish(os.path.dirname(prefix.numpy().decode()), num_examples, extra)
            return False

        def body(prefix, writing):
            # When writing, `finish` runs once the cache iterator has written its index
            # (TF does that when its input ends): the whole split is on disk.
            tail = (tf.data.Dataset.from_tensors((prefix, writing))
                    .filter(lambda p, w: w)
                    .map(lambda p, w: tf.py_function(finish, [p], tf.bool))
                    .filter(lambda done: tf.reshape(done, []))
                    .map(lambda _: tuple(tf.zeros(s.shape, s.dtype) for s in spec)))
            return source.cache(prefix).concatenate(tail)

        start = tf.data.Dataset.from_tensors(0).map(
            lambda _: tuple(tf.py_function(begin, [], [tf.string, tf.bool])))
        ds = start.flat_map(lambda prefix, writing: body(tf.reshape(prefix, []),
                                                          tf.reshape(writing, [])))
        # Publish when the last image is read, not when one more is asked for.
        return read_to_end(ds, num_examples).apply(cardinality)

    # ---- writing ---------------------------------------------------------------------
    def _temporary(self) -> str:
        os.makedirs(self.folder, exist_ok=True)
        self._remove_dead_temporaries()
        tag = f".tmp-{self.split}-{writer_tag()}-"
        path = tempfile.mkdtemp(prefix=tag, dir=self.folder)
        with _lock:
            _own_temporaries.add(path)
        counters["write"] += 1
        log.info("image cache: decoding the %s split once into %s", self.split, self.path)
        return path

    def _publish(self, temporary: str, num_examples: int, extra: dict) -> None:
        try:
            if not os.path.isfile(os.path.join(temporary, paths.IMAGE_CACHE_INDEX)):
                return self._discard(temporary, "incomplete")
            if self.verify is not None and not self.verify():
                return self._discard(temporary, "the data changed while it was read")
            manifest = {"format": FORMAT, "split": self.split, "examples": num_examples,
                        **extra, "files": _files(temporary)}
            manifest["checksum"] = _checksum(manifest)
            with open(os.path.join(temporary, COMPLETE), "w", encoding="utf-8") as f:
                f.write(json_text(manifest))
            if self.manifest() is not None:
                return self._discard(temporary, "another run published it first")
            try:
                os.rename(temporary, self.path)
            except OSError:  # Another run renamed its copy there in the meantime.
                return self._discard(temporary, "another run published it first")
            counters["published"] += 1
            log.info("image cache: %s split (%d images) written to %s", self.split,
                     num_examples, self.path)
        finally:
            with _lock:
                _own_temporaries.discard(temporary)

    def _discard(self, temporary: str, reason: str) -> None:
        counters["discarded"] += 1
        log.info("image cache: not keeping the %s split (%s)", self.split, reason)
        shutil.rmtree(temporary, ignore_errors=True)

    def _set_aside(self, path: str, problem: str) -> None:
        """Removes an incomplete or damaged cache folder (renamed first: a concurrent
        reader of the name then finds nothing rather than half a folder)."""
        counters["stale"] += 1
        log.warning("image cache: %s %s; setting it aside and rebuilding it", path, problem)
        aside = f"{path}.stale-{_host()}-{os.getpid()}-{threading.get_ident()}"
        try:
            os.rename(path, aside)
        except OSError:
            return  # Someone else moved it already.
        shutil.rmtree(aside, ignore_errors=True)

    def _remove_dead_temporaries(self) -> None:
        """Temporary folders that killed writers left behind (`layout.temporaries`' one
        rule: never a live writer's)."""
        pattern = re.compile(r"^\.tmp-%s-(?P<host>[^-]+)-(?P<pid>\d+)-" % re.escape(self.split))
        removed = remove_left_over(self.folder, writer_in(pattern), folders=True)
        counters["stale"] += len(removed)


def _files(folder: str) -> dict:
    """{name: [size, SHA-256]} of the files TF wrote in a split's folder."""
    files = {}
    for name in sorted(os.listdir(folder)):
        digest = content_digest(os.path.join(folder, name))
        if digest is not None:
            files[name] = [os.path.getsize(os.path.join(folder, name)), digest]
    return files


def _checksum(manifest: dict) -> str:
    """SHA-256 of the manifest without its "checksum" field."""
    fields = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _check(path: str) -> tuple[dict | None, str | None]:
    """(manifest, None) for an intact, complete split folder, else (None, what is wrong):
    its complete.json must be what `_publish` wrote (its own checksum) and every file it
    lists of the size and SHA-256 it records (a truncated or altered shard is caught
    here, before TF reads it)."""
    complete = os.path.join(path, COMPLETE)
    try:
        fd = os.open(complete, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, f"has no regular {COMPLETE}"
            data = f.read(MANIFEST_LIMIT + 1)
        if len(data) > MANIFEST_LIMIT:
            return None, f"has a damaged {COMPLETE} (over {MANIFEST_LIMIT} bytes)"
        manifest = json.loads(data)
    except FileNotFoundError:
        return None, f"is incomplete (no {COMPLETE})"
    except (OSError, ValueError, RecursionError):
        return None, f"has an unreadable {COMPLETE}"
    if not (isinstance(manifest, dict) and manifest.get("format") == FORMAT
            and manifest.get("checksum") == _checksum(manifest)
            and isinstance(manifest.get("examples"), int) and manifest["examples"] >= 0
            and isinstance(manifest.get("skipped", []), list)
            and isinstance(manifest.get("files"), dict)
            and paths.IMAGE_CACHE_INDEX in manifest["files"]):
        return None, f"has a damaged or outdated {COMPLETE}"
    for name, recorded in sorted(manifest["files"].items()):
        file = os.path.join(path, name)
        if not (isinstance(recorded, list) and len(recorded) == 2
                and name not in ("", ".", "..") and os.path.basename(name) == name):
            return None, f"has a damaged {COMPLETE}"
        try:
            size = os.stat(file).st_size
        except OSError:
            return None, f"lacks {name}"
        if size != recorded[0]:
            return None, f"has a damaged {name} ({size} bytes, {recorded[0]} written)"
        if content_digest(file) != recorded[1]:
            return None, f"has a damaged {name} (its SHA-256 differs from the one written)"
    return manifest, None


_host = host_tag


@atexit.register
def _remove_own_temporaries() -> None:
    """Iterations stopped half-way leave empty temporary folders (TF drops what a
    cache iterator wrote when it is not read to the end)."""
    with _lock:
        paths = list(_own_temporaries)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
