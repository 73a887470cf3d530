"""Atomic file writes: write a temporary file in the same folder, then `os.replace`.

Readers see the old file or the new one, never a partial write, whatever
interrupts the writer (an exception, a kill, a preempted machine). Files are
not fsync'ed: like Keras' own writes, a power loss may still lose the newest one.

Two guards around every write:
- the write checks (`add_write_check`: tapefit's run lock registers
  `loops.run_lock.check_held`) run before the file is written and again before the
  rename that commits it, so a process that lost its run's lock writes nothing more;
- `atomic_save_weights` serialises a Keras weights file in memory first, then checks
  that the folder has room for it and writes it with plain Python I/O: a full disk is
  an `OSError(ENOSPC)` before anything is replaced, and HDF5 never sees a failed
  write (on a full disk h5py prints hundreds of lines and the interpreter then
  crashes with a segmentation fault at exit).
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import uuid

# Suffixes Keras checks on the names given to `save_weights` / `save`.
_SUFFIXES = (".weights.h5", ".weights.json", ".keras", ".h5", ".json")


def is_remote(path):
    """True for URLs such as gs://..., where there is no atomic rename."""
    return "://" in str(path)


def temp_path(path):
    """A unique hidden name next to `path` that keeps the suffix Keras expects."""
    folder, name = os.path.split(path)
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), "")
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


_WRITE_CHECKS = []  # Called before each write; raise to stop it.
_SPACE_MARGIN = 1 << 20  # Bytes left free after a weights file (metadata, other files).


def add_write_check(check) -> None:
    """Registers `check()`, called before every atomic write and before its commit
    (raising stops the write; the target is left as it was). Idempotent."""
    if check not in _WRITE_CHECKS:
        _WRITE_CHECKS.append(check)


def check_writes() -> None:
    """Runs the write checks (also for writes that do not go through `atomic_save`)."""
    for check in list(_WRITE_CHECKS):
        check()


def atomic_save(save_fn, path):
    """Calls `save_fn(temporary_path)`, then renames the result onto `path`."""
    check_writes()
    if is_remote(path):
        save_fn(path)
        return
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = temp_path(path)
    try:
        save_fn(tmp)
        check_writes()  # The commit point: after a pause, the lock may be another's.
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def check_space(folder, size, path=None):
    """OSError(ENOSPC) naming `path` unless `folder` has `size` bytes free plus a margin."""
    try:
        free = shutil.disk_usage(folder or ".").free
    except OSError:
        return  # Unknown (a remote or odd file system): the write itself will tell.
    if free < size + _SPACE_MARGIN:
        raise OSError(errno.ENOSPC, f"No space left on device: {size / 2**20:.1f} MB to "
                                    f"write, {free / 2**20:.1f} MB free", path or folder)


def weights_bytes(model):
    """`model.save_weights`' file as bytes, written by h5py in memory (None where this
    Keras has no in-memory weights store, or where the model has its own
    `save_weights`: then save to a file, through it)."""
    try:
        import keras
        from keras.src.saving import saving_lib
        store_class, save_state = saving_lib.H5IOStore, saving_lib._save_state
    except (ImportError, AttributeError):
        return None
    if "save_weights" in vars(model) or \
            getattr(type(model), "save_weights", None) is not keras.Model.save_weights:
        return None  # Overridden (a subclass, or patched on the instance): honour it.
    if not model.built:
        raise ValueError("You are saving a model that has not yet been built.")
    buffer = io.BytesIO()
    store = store_class(buffer, mode="w")
    try:
        save_state(model, weights_store=store, assets_store=None, inner_path="",
                   visited_saveables=set())
    finally:
        store.close()
    return buffer.getvalue()


def atomic_save_weights(model, path):
    """Atomic `model.save_weights(path)` that checks the free space first (see the
    module docstring): a full disk is an OSError(ENOSPC), the previous file intact."""
    data = None if is_remote(path) else weights_bytes(model)
    if data is None:
        atomic_save(lambda tmp: model.save_weights(tmp, overwrite=True), path)
        return
    check_writes()
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    check_space(folder, len(data), path)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_save(write, path)


def atomic_write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_save(write, path)


def atomic_write_json(path, obj):
    """The one JSON format of every file tapefit writes: sorted keys, indent 2."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
