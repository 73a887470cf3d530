"""Atomic file writes: write a temporary file in the same folder, then `os.replace`.

Readers see the old file or the new one, never a partial write, whatever
interrupts the writer (an exception, a kill, a preempted machine). Files are
not fsync'ed: like Keras' own writes, a power loss may still lose the newest one.
"""
from __future__ import annotations

import json
import os
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


def atomic_save(save_fn, path):
    """Calls `save_fn(temporary_path)`, then renames the result onto `path`."""
    if is_remote(path):
        save_fn(path)
        return
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = temp_path(path)
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


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
