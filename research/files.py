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


# ---- reading what a trial or a study wrote: typed, bounded, never a traceback --------------

MAX_JSON_BYTES = 16 * 2**20


def read_json_file(path: str, kind=dict, max_bytes: int = MAX_JSON_BYTES):
    """(value, problem) of the JSON file at `path`.

    (None, None): no file. (None, "why"): not a regular file (a FIFO, a device: never
    opened, so never a hang), larger than `max_bytes`, not UTF-8, not JSON, nested too
    deeply, or not of type `kind` (e.g. a list where an object belongs). Otherwise
    (value, None)."""
    import stat as stat_lib
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, e.strerror or type(e).__name__
    if not stat_lib.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size > max_bytes:
        return None, f"larger than {max_bytes} bytes"
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        return None, e.strerror or type(e).__name__
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg}, line {e.lineno})"
    except RecursionError:
        return None, "nested too deeply"
    if kind is not None and not isinstance(value, kind):
        return None, f"a JSON {_json_type(value)}, not {_json_type_name(kind)}"
    return value, None


def is_number(value) -> bool:
    """An int or float (bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_problem(content: dict, key: str, required: bool = True) -> str | None:
    """Why `content[key]` is not a number (None when it is, or when absent and optional)."""
    if key not in content:
        return f"no {key!r}" if required else None
    value = content[key]
    if not is_number(value):
        return f"{key} is {_short(value)}, not a number"
    return None


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_type(value) -> str:
    for kind, name in ((dict, "object"), (list, "list"), (str, "string"), (bool, "boolean"),
                       (int, "number"), (float, "number"), (type(None), "null")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _json_type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "an object", list: "a list", str: "a string", int: "a number",
             float: "a number", bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
