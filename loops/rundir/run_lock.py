"""One process per run directory: an exclusive lock file with a heartbeat.

    with RunLock(layout.paths.lock_path(run_dir), what="run") as lock:
        ...  # train; a second process on run_dir gets a one-line RunError

The lock file is created with `O_CREAT | O_EXCL` (atomic, also on NFS v3+) and
holds JSON `{host, pid, start, token}`. While held, a daemon thread touches it
every `lease_s / 4` seconds (its mtime is the heartbeat). A lock is stale, and
taken over, when its holder is gone: on this host, its pid no longer runs (or
runs a process started after the lock: a reused pid); on another host (a shared
file system), its heartbeat is older than `lease_s`. Take-overs are serialised
by a second `O_EXCL` file (`<lock>.takeover`): its holder re-reads the lock,
deletes it only if it is still the same stale one, and then competes for
`O_EXCL` like everyone else — so of two processes taking over at once, exactly
one wins, and a live lock is never deleted.

**Fencing.** A holder paused past the lease (SIGSTOP, a suspended VM, a network
partition) may be taken over by a process on another host. Its token is then no
longer in the lock file, so before every write of a run file (`check()`, or
`check_held()` for every lock of this process; `layout.atomic` calls it
before each save and again before the rename that commits it) it re-reads the file
and, if the token is not its own, raises `LockLost`: the process stops writing and
exits with one line. What this cannot prevent: a write already past its check when
the pause starts (one file at most, committed by a rename), and a take-over by a
host whose clock runs ahead by more than the lease (the heartbeat is an mtime).

**Damaged lock files.** Only a regular file of at most 4 KB is read (never through
a link, never blocking on a FIFO), and only a record `{host: str, pid: int,
start: str, token: str}` counts as a holder. Anything else in the lock's place that
is not a regular file (a folder, a FIFO, a link, a device) is one line naming the
fix (remove it): tapefit never creates one, and never deletes one. A regular file
whose content is not such a record is treated as stale once its mtime is older than
the lease (nobody refreshes it), and is one line naming the fix before that.
"""
from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import socket
import stat
import threading
import time
import uuid

from tapefit.flags.errors import RunError
from tapefit.layout import paths
from tapefit.layout.atomic import json_type_problem
from tapefit.layout.temporaries import MAX_PID, pid_alive

log = logging.getLogger(__name__)

_ATTEMPTS = 200  # Rounds of create / judge / take over before giving up.
_PAUSE_S = 0.05  # Between rounds that found the lock in motion.
_YOUNG_S = 2.0  # A lock file without a record yet, younger than this, is being written.
_TAKEOVER_STALE_S = 30.0  # A take-over takes milliseconds; an older .takeover file is left over.
_HELD = {}  # Token -> RunLock, for the locks this process holds.
_MAX_BYTES = 4096  # A lock record is ~150 bytes; a larger file is not one.


class LockLost(RunError):
    """This process's lock was taken over (or removed): it must stop writing."""


class LockHeld(RunError):
    """Another live process holds the lock (the only refusal a caller may wait on: a
    lock file that is not one, or a folder that does not exist, is a plain RunError)."""


class RunLock:
    """An exclusive, stale-safe lock on a run directory (see the module docstring).

    `path` is the lock file (e.g. `<workdir>/.<phase>.lock`: `layout.paths.lock_path`);
    its folder must exist.
    `what` names the locked thing in the error ("run", "sweep trial", ...).
    """

    def __init__(self, path: str, *, lease_s: float = 120.0, what: str = "run",
                 subject: str | None = None):
        if not lease_s > 0:
            raise ValueError(f"lease_s={lease_s} must be positive")
        self.path = os.path.abspath(path)
        self.lease_s = float(lease_s)
        self.what = what
        self.subject = subject  # What the error names (default: the lock file's folder).
        self._token = None
        self._stop = threading.Event()
        self._thread = None
        self._mutex = threading.Lock()

    # ---- public API -------------------------------------------------------------
    def acquire(self) -> "RunLock":
        """Takes the lock (over a stale one) or raises a one-line RunError naming the
        holder. Acquiring a lock this object holds already is a no-op."""
        if self._token is not None:
            return self
        token = uuid.uuid4().hex
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "start": _now_iso(), "token": token}
        for _ in range(_ATTEMPTS):
            if self._create(record):
                self._token = token
                _HELD[token] = self
                self._start_heartbeat()
                atexit.register(self.release)
                return self
            holder, mtime = self._read()
            if holder is None:
                continue  # Released between our create and our read: try again.
            if "not_a_file" in holder:
                raise RunError(f"{self.path} is {holder['not_a_file']}, not a lock file; "
                               "remove it and run again")
            if holder.get("partial") and mtime is not None \
                    and time.time() - mtime < _YOUNG_S:
                time.sleep(_PAUSE_S)  # Just created, its record not written yet.
                continue
            if not self._is_stale(holder, mtime):
                raise LockHeld(self._message(holder, mtime))
            if not self._take_over(holder):
                time.sleep(_PAUSE_S)  # Another process is taking it over.
        raise LockHeld(self._message(*self._read()))

    def check(self) -> None:
        """Raises `LockLost` unless this object still holds the lock: its token is in the
        lock file (call before each write of a run file)."""
        token = self._token
        if token is None:
            return
        holder, _ = self._read()
        if holder is not None and holder.get("token") == token:
            return
        folder = self.subject or os.path.dirname(self.path)
        if holder is None or "damaged" in holder or "not_a_file" in holder:
            by = "its lock file was removed or replaced"
        else:
            by = (f"pid {holder['pid']} on host {holder['host']} took it over "
                  f"(since {holder['start']})")
        raise LockLost(
            f"lost the lock of {self.what} {folder}: {by} while this process was paused or "
            f"cut off for longer than the {self.lease_s:g} s lease; stopped without writing "
            "more (the other process's files are the run's now)")

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if it is still ours. Idempotent."""
        with self._mutex:
            token, self._token = self._token, None
        if token is None:
            return
        _HELD.pop(token, None)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        try:
            atexit.unregister(self.release)
        except Exception:  # noqa: BLE001  (interpreter shutting down)
            pass
        holder, _ = self._read()
        if holder is not None and holder.get("token") == token:
            # Move it aside before deleting: a lock created by another process after a
            # take-over between our read and the removal is never the one removed.
            aside = f"{self.path}.released-{token}"
            try:
                os.rename(self.path, aside)
            except OSError:
                return
            moved, _ = _read_record(aside)
            if moved is not None and moved.get("token") != token:
                try:  # Not ours after all (taken over in between): put it back.
                    os.link(aside, self.path)
                except OSError:
                    pass
            _remove(aside)

    @property
    def holder(self) -> dict | None:
        """The holder's record (host, pid, start, token) plus `heartbeat` (ISO time of
        the file's last touch), or None when nobody holds the lock."""
        record, mtime = self._read()
        if record is None:
            return None
        return {**record, "heartbeat": _iso(mtime) if mtime is not None else None}

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._token is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- internals --------------------------------------------------------------
    def _create(self, record: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:
            raise RunError(f"cannot lock {os.path.dirname(self.path)}: the folder does not "
                           "exist; pass a writable --workdir") from None
        except PermissionError:
            raise RunError(f"cannot lock {os.path.dirname(self.path)}: permission denied; "
                           "pass a writable --workdir") from None
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            _remove(self.path)
            raise RunError(f"cannot write the lock file {self.path} ({e.strerror}); free some "
                           "space or pass another --workdir") from None
        return True

    def _read(self):
        """(record or None, mtime or None) of the lock file; (None, None) if absent.
        A file that exists but is not (yet) a JSON record reads as ({}, mtime)."""
        return _read_record(self.path)

    def _is_stale(self, holder: dict, mtime: float | None) -> bool:
        if "not_a_file" in holder:
            return False  # Never deleted (see the module docstring).
        pid, host = holder.get("pid"), holder.get("host")
        if "damaged" not in holder and host == socket.gethostname():
            if pid == os.getpid():  # Ours, or a previous process's with our pid.
                return holder.get("token") not in _HELD
            return not pid_alive(pid, _epoch(holder.get("start")))
        # Another host, or a damaged record: go by the heartbeat.
        return mtime is not None and time.time() - mtime > self.lease_s

    def _take_over(self, holder: dict) -> bool:
        """Deletes the lock file if it is still the stale one `holder` read; False when
        another process is taking it over right now."""
        breaker = self.path + paths.TAKEOVER_SUFFIX
        try:
            fd = os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:  # Left over by a process killed in the middle of a take-over?
                if time.time() - os.stat(breaker).st_mtime > _TAKEOVER_STALE_S:
                    os.remove(breaker)
            except OSError:
                pass
            return False
        except OSError:
            return False
        try:
            current, mtime = self._read()
            if current is not None and current == holder and self._is_stale(current, mtime):
                if "damaged" in holder:
                    log.warning("taking over the damaged lock %s (%s; not refreshed for "
                                "over %g s)", self.path, holder["damaged"], self.lease_s)
                else:
                    log.warning("taking over the stale lock %s of pid %s on host %s "
                                "(since %s)", self.path, holder.get("pid"),
                                holder.get("host"), holder.get("start"))
                _remove(self.path)
        finally:
            os.close(fd)
            _remove(breaker)
        return True

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"RunLock {self.path}",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = self.lease_s / 4
        while not self._stop.wait(interval):
            token = self._token
            if token is None:
                return
            holder, _ = self._read()
            if holder is None or holder.get("token") != token:
                log.warning("lost the lock %s (taken over or removed)", self.path)
                return
            try:
                os.utime(self.path)
            except OSError:
                pass  # A full or flaky file system: the next beat tries again.

    def _message(self, holder: dict | None, mtime: float | None = None) -> str:
        holder = holder or {}
        folder = self.subject or os.path.dirname(self.path)
        if "damaged" in holder:
            age = f"{time.time() - mtime:.0f} s ago" if mtime is not None else "recently"
            return (f"the lock file {self.path} is damaged ({holder['damaged']}) and was "
                    f"modified {age}; if no tapefit process uses {folder}, delete it and "
                    "run again")
        return (f"{self.what} {folder} is in use by pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')} since {holder.get('start', '?')}; wait for it "
                "to finish or pass another --workdir")


def _read_record(path: str):
    """(record, mtime) of a lock file; (None, None) when there is none. Reads only a
    regular file, at most _MAX_BYTES, never through a link nor blocking (a FIFO).
    A record that is not a valid holder reads as {"damaged": reason} ("partial": True
    when empty or cut: maybe being written); something that is not a regular file as
    {"not_a_file": what}."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        if os.path.islink(path):
            return {"not_a_file": "a symbolic link"}, None
        return {"damaged": f"unreadable: {e.strerror}"}, None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return {"not_a_file": _kind(info.st_mode)}, info.st_mtime
        data = os.read(fd, _MAX_BYTES + 1)
    except OSError as e:
        return {"damaged": f"unreadable: {e.strerror}"}, None
    finally:
        os.close(fd)
    if not data:
        return {"damaged": "empty", "partial": True}, info.st_mtime
    if len(data) > _MAX_BYTES:
        return {"damaged": f"larger than {_MAX_BYTES} bytes"}, info.st_mtime
    try:
        record = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {"damaged": "not JSON", "partial": True}, info.st_mtime
    problem = _invalid(record)
    return ({"damaged": problem} if problem else record), info.st_mtime


def _invalid(record) -> str | None:
    """Why `record` is not a holder's record (None when it is one)."""
    if not isinstance(record, dict):
        return json_type_problem(record, dict)
    for key in ("host", "start", "token"):
        if not isinstance(record.get(key), str) or not record[key]:
            text = json.dumps(record.get(key))
            return (f"{key} {text if len(text) <= 30 else text[:29] + '…'} is not a "
                    "non-empty string")
    pid = record.get("pid")
    if type(pid) is not int or not 0 < pid <= MAX_PID:
        text = json.dumps(pid)
        return f"pid {text if len(text) <= 30 else text[:29] + '…'} is not a process id"
    return None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_held() -> None:
    """Raises `LockLost` if any lock this process holds was taken over or removed."""
    for lock in list(_HELD.values()):
        lock.check()


def _epoch(iso: str | None) -> float | None:
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _now_iso() -> str:
    return _iso(time.time())


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
