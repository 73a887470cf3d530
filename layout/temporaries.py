"""Temporary files and folders left over by a killed writer: the one rule that says
which are left over, and the one cleanup (no TensorFlow import).

Every temporary tapefit makes records its writer in its name, as `<host>-<pid>`
(`writer_tag`): `layout.atomic.temp_path`'s `.<name>.tmp-<host>-<pid>-<hex>`, the
feature cache's `<split>.<host>-<pid>.tmp.*`, the image cache's
`.tmp-<split>-<host>-<pid>-*` folders. Each user knows its own names (`writer(name)`
gives the (host, pid) a name records, None for any other name); `remove_left_over`
judges and removes them by one rule (`left_over`):

- **This host's writer** (the name's host is this one's): left over when its pid no
  longer runs, or runs a process started over a minute after the temporary last
  changed (a reused pid: a container restarted with the pid it had, say; the minute
  allows for a shared file system whose clock is not this host's). A temporary whose
  writer runs is never removed, this process's own included.
- **Another host's writer** (a shared file system), or a name that records no host
  (older tapefit versions): this host cannot see that process, so the temporary is
  left over only once nothing in it changed for `STALE_S` (an hour; every tapefit
  writer changes its temporary at least every batch, and a run paused that long has
  lost its run lock: `loops.rundir.run_lock`).

Hosts are told apart by their host name: containers that share one host name but
not a pid namespace (`--network=host`) look like one host, and one's live writers'
temporaries like dead ones to the other; give such containers their own host names
(Docker's default). Only regular files, and real folders where the caller asks
(`folders=True`), are removed: never a link, nor through one.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import stat as stat_lib
import time

STALE_S = 3600.0  # Unchanged this long, another host's temporary is left over.
REUSED_S = 60.0  # A process started this long after a temporary last changed is not its writer.
MAX_PID = 2**31 - 1  # pid_t; Linux' pid_max is at most 2**22.


def host_tag() -> str:
    """This host's name as temporaries record it (no "-": the tag's separator)."""
    return socket.gethostname().replace("-", "_") or "host"


def writer_tag() -> str:
    """`<host>-<pid>` of this process, as every temporary's name records its writer."""
    return f"{host_tag()}-{os.getpid()}"


def writer_in(pattern: re.Pattern):
    """`writer(name)` for `remove_left_over`: the (host, pid) that a name matching
    `pattern` records in its groups `host` and `pid` (host may not match: None)."""
    def writer(name):
        match = pattern.match(name)
        return None if match is None else (match["host"], int(match["pid"]))
    return writer


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether process `pid` runs on this host (and, where /proc tells, started no later
    than `since`, epoch seconds: else the pid was reused)."""
    if type(pid) is not int or not 0 < pid <= MAX_PID:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # Exists, owned by another user.
    except OSError:
        return False
    started = _process_start(pid)
    # 2 s: a lock's start is rounded down to seconds, /proc's boot time too.
    return since is None or started is None or started <= since + 2.0


def left_over(path: str, host: str | None, pid: int | None, now: float | None = None) -> bool:
    """Whether the temporary at `path`, whose name records process `pid` on `host` (None:
    the name does not say) as its writer, is left over (the module docstring's rule).
    False when `path` is gone."""
    changed = _last_change(path)
    if changed is None:
        return False
    if host == host_tag() and pid is not None:
        return not pid_alive(pid, since=changed + REUSED_S)
    now = time.time() if now is None else now
    return now - changed > STALE_S


def remove_left_over(folder: str, writer, folders: bool = False,
                     now: float | None = None) -> list[str]:
    """Removes the left-over temporaries in `folder`; returns their paths.

    `writer(name)`: (host, pid) for a name that is one of the caller's temporaries
    (either may be None where the name does not record it), None for any other name.
    Regular files only, and real folders (with what is in them) when `folders`."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        recorded = writer(name)
        if recorded is None:
            continue
        path = os.path.join(folder, name)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        is_folder = stat_lib.S_ISDIR(mode)
        if not (stat_lib.S_ISREG(mode) or (folders and is_folder)):
            continue
        if not left_over(path, *recorded, now=now):
            continue
        try:
            if is_folder:
                shutil.rmtree(path)
            else:
                os.remove(path)
        except OSError:
            continue  # Removed by another process meanwhile, or not ours to remove.
        removed.append(path)
    return removed


def _last_change(path: str) -> float | None:
    """The newest mtime of `path` (a folder: of it and the entries in it), never
    following a link; None when it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    newest = st.st_mtime
    if stat_lib.S_ISDIR(st.st_mode):
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        continue
        except OSError:
            pass
    return newest


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of process `pid` from /proc, None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
