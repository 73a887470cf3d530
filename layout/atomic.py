"""Atomic file writes and the one JSON format tapefit writes and reads (no TensorFlow
import: `research/` uses it without loading Keras).

A write goes to a temporary file in the same folder, then `os.replace`: readers see
the old file or the new one, never a partial write, whatever interrupts the writer (an
exception, a kill, a preempted machine). Files are not fsync'ed: like Keras' own
writes, a power loss may still lose the newest one.

The write checks (`add_write_check`: tapefit's run lock registers
`loops.rundir.run_lock.check_held`) run before the file is written and again before the
rename that commits it, so a process that lost its run's lock writes nothing more.
`check_space` is the free-space check `callbacks.atomic_io.atomic_save_weights` and
`loops.rundir.write_guard` use before large writes. A temporary's name records its
writer; `remove_left_over_temporaries` removes those a killed writer left, by the one
rule of `layout.temporaries`.

JSON: `atomic_write_json` writes sorted keys, indent 2; `read_json` reads a file that
must exist (raising); `read_json_file` reads one that may be missing or damaged and says
why, never raising (bounded in size by `read_small_file`, the one bounded reader of small
files, never reading a FIFO or a device), `read_json_or_none` its value alone;
`json_type_problem` is the one wording of a JSON value of the wrong type.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat as stat_lib
import uuid

from tapefit.layout.temporaries import remove_left_over, writer_in, writer_tag

# Suffixes Keras checks on the names given to `save_weights` / `save`.
_SUFFIXES = (".weights.h5", ".weights.json", ".keras", ".h5", ".json")
TEMP_PATTERN = ".*.tmp-*"  # fnmatch pattern of every temporary name `temp_path` makes.


def is_remote(path) -> bool:
    """True for URLs such as gs://..., where there is no atomic rename."""
    return "://" in str(path)


def temp_path(path: str) -> str:
    """A unique hidden name next to `path` that keeps the suffix Keras expects and
    records its writer (`layout.temporaries.writer_tag`)."""
    folder, name = os.path.split(path)
    suffix = next((s for s in _SUFFIXES if name.endswith(s)), "")
    return os.path.join(folder, f".{name}.tmp-{writer_tag()}-{uuid.uuid4().hex[:8]}{suffix}")


def temp_name_pattern(names=None) -> re.Pattern:
    """Matches the file names `temp_path` makes for targets named one of `names` (None:
    any name), older tapefit versions' (no host) too; groups `host` and `pid`."""
    alternatives = ".+" if names is None else "|".join(re.escape(n) for n in names)
    suffixes = "|".join(re.escape(s) for s in _SUFFIXES)
    return re.compile(r"^\.(%s)\.tmp-(?:(?P<host>[^-]+)-)?(?P<pid>\d+)-[0-9a-f]{8}(%s)?$"
                      % (alternatives, suffixes))


def remove_left_over_temporaries(folder: str, names=None) -> list[str]:
    """Removes the `temp_path` files of targets named one of `names` (None: any) in
    `folder` that their writers left over (`layout.temporaries`' one rule)."""
    return remove_left_over(folder, writer_in(temp_name_pattern(names)))


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


def atomic_save(save_fn, path: str) -> None:
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


def check_space(folder: str, size: int, path: str | None = None) -> None:
    """OSError(ENOSPC) naming `path` unless `folder` has `size` bytes free plus a margin."""
    try:
        free = shutil.disk_usage(folder or ".").free
    except OSError:
        return  # Unknown (a remote or odd file system): the write itself will tell.
    if free < size + _SPACE_MARGIN:
        raise OSError(errno.ENOSPC, f"No space left on device: {size / 2**20:.1f} MB to "
                                    f"write, {free / 2**20:.1f} MB free", path or folder)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_save(write, path)


def json_text(obj, default=None) -> str:
    """The one JSON format of every file tapefit writes: sorted keys, indent 2.
    `default`: json.dumps' hook for values JSON has no type for (None: a TypeError)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=default) + "\n"


def atomic_write_json(path: str, obj, default=None) -> None:
    """Writes `obj` to `path` atomically in the one JSON format (`json_text`)."""
    atomic_write_text(path, json_text(obj, default))


def read_json(path: str):
    """The JSON value in `path` (OSError or ValueError when missing or damaged)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---- reading what a run, a trial or a study wrote: typed, bounded, never a traceback --------

MAX_JSON_BYTES = 16 * 2**20


def read_small_file(path: str, max_bytes: int) -> tuple[bytes | None, str | None]:
    """(content, None) of the regular file at `path`, at most `max_bytes` long; (None,
    None) when there is none; else (None, why), one phrase to follow "is": "not a regular
    file (a folder, FIFO or device)" (opened without blocking and judged by the open file:
    a FIFO or a device is never read, so never a hang), "larger than N bytes", or
    "unreadable (the system's reason)". The one bounded reader of small files."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) |
                     getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, None
    except OSError as e:
        return None, _unreadable(e)
    try:
        info = os.fstat(fd)
        if not stat_lib.S_ISREG(info.st_mode):
            return None, "not a regular file (a folder, FIFO or device)"
        if info.st_size > max_bytes:
            return None, f"larger than {max_bytes} bytes ({info.st_size})"
        data = b""
        while len(data) <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        return None, _unreadable(e)
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # It grew since the fstat.
        return None, f"larger than {max_bytes} bytes"
    return data, None


def read_small_text(path: str, max_bytes: int) -> tuple[str | None, str | None]:
    """`read_small_file`, decoded: also (None, "not UTF-8 text (byte K)")."""
    data, problem = read_small_file(path, max_bytes)
    if data is None:
        return None, problem
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {e.start})"


def _unreadable(error: OSError) -> str:
    return f"unreadable ({error.strerror or type(error).__name__})"


def read_json_file(path: str, kind=dict, max_bytes: int = MAX_JSON_BYTES):
    """(value, problem) of the JSON file at `path`, never raising.

    (None, None): no file. (None, "why"): what `read_small_text` says (not a regular
    file, larger than `max_bytes`, unreadable, not UTF-8), not JSON, nested too deeply,
    or not of type `kind` (`json_type_problem`: e.g. "a JSON list, not an object").
    Otherwise (value, None)."""
    text, problem = read_small_text(path, max_bytes)
    if text is None:
        return None, problem
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg}, line {e.lineno})"
    except RecursionError:
        return None, "nested too deeply"
    problem = json_type_problem(value, kind)
    return (None, problem) if problem else (value, None)


def read_json_or_none(path: str):
    """The JSON value in `path` (of any type); None when it is missing or damaged."""
    return read_json_file(path, kind=None)[0]


def json_type_problem(value, kind) -> str | None:
    """The one wording of a JSON value of the wrong type: "a JSON list, not an object"
    (None when `value` is of type `kind`, a type or a tuple of types, or `kind` is None)."""
    if kind is None or isinstance(value, kind):
        return None
    return f"a JSON {_json_type(value)}, not {_json_type_name(kind)}"


def is_number(value) -> bool:
    """An int or float (bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_problem(content: dict, key: str, required: bool = True) -> str | None:
    """Why `content[key]` is not a number (None when it is, or when absent and optional)."""
    if key not in content:
        return f"no {key!r}" if required else None
    value = content[key]
    if not is_number(value):
        return f"{key} is {short(value)}, not a number"
    return None


def short(value) -> str:
    """`value` as JSON, cut to 40 characters (for one-line messages)."""
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
