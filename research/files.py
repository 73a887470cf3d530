"""Atomic writes for the report and the trial records (no TensorFlow import, unlike
`callbacks.atomic_io`): a temporary file next to the target, then a rename, so a
reader or a kill never sees half a file."""
from __future__ import annotations

import json
import os
import uuid


def atomic_save(save_fn, path: str) -> None:
    """Calls `save_fn(temporary_path)`, then renames the result onto `path`."""
    folder, name = os.path.split(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        save_fn(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_save(write, path)


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
