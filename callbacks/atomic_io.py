"""Atomic weights files: `atomic_save_weights` (the Keras-dependent part of tapefit's
atomic writes; the rest lives in `layout.atomic`, re-exported here).

`atomic_save_weights` serialises a Keras weights file in memory first, then checks
that the folder has room for it (`layout.atomic.check_space`) and writes it with plain
Python I/O through `layout.atomic.atomic_save` (so the write checks of
`loops.rundir.run_lock` guard it too): a full disk is an `OSError(ENOSPC)` before anything
is replaced, and HDF5 never sees a failed write (on a full disk h5py prints hundreds
of lines and the interpreter then crashes with a segmentation fault at exit).
"""
from __future__ import annotations

import io
import os

from tapefit.layout.atomic import (  # noqa: F401  (re-exported: the hooks' one import)
    add_write_check,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    check_space,
    check_writes,
    is_remote,
    read_json,
    temp_path,
)


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
