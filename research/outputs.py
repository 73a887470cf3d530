"""Writing one report file: never into a folder, FIFO, socket or device in its place, an
OSError of the write caught and recorded (research/report.py prints them in one line
each). The study's report and its flips (research/flips.py) write through it."""
from __future__ import annotations

import os
import stat as stat_lib

_KINDS = ((stat_lib.S_ISDIR, "folder"), (stat_lib.S_ISFIFO, "FIFO"),
          (stat_lib.S_ISSOCK, "socket"), (stat_lib.S_ISCHR, "device"),
          (stat_lib.S_ISBLK, "device"))


def _special_file(path: str) -> str | None:
    """"a folder", "a FIFO", "a link to a device", ... when what is at `path` is not a
    file a report may replace (None: nothing, a regular file, or a link to one)."""
    try:
        st = os.lstat(path)
        prefix = ""
        if stat_lib.S_ISLNK(st.st_mode):
            prefix = "a link to "
            st = os.stat(path)
    except OSError:
        return None  # Nothing there (or a dangling link): the write will tell.
    for test, kind in _KINDS:
        if test(st.st_mode):
            return f"{prefix or 'a '}{kind}"
    return None


def save_file(path: str, write_fn, unwritten: list) -> bool:
    """`write_fn(path)` unless a folder, FIFO, socket or device (or a link to one) is in
    `path`'s place; an OSError of the write is caught. Either is appended to `unwritten`
    as (path, special kind or None, the system's reason or None). True when written."""
    special = _special_file(path)
    if special:
        unwritten.append((path, special, None))
        return False
    try:
        write_fn(path)
    except OSError as e:
        unwritten.append((path, None, e.strerror or type(e).__name__))
        return False
    return True
