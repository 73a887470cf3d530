"""Start-up noise: TensorFlow's native (C++) log lines, silenced before TensorFlow loads.

Call `silence_native_logs()` at the very top of an entry point, before anything
imports TensorFlow. It does two things:

1. `TF_CPP_MIN_LOG_LEVEL=2` (unless already set): TensorFlow's own C++ INFO and
   WARNING messages (oneDNN, CPU-instruction notes, device creation) are not
   printed; errors are.
2. Since TF 2.16 parts of TensorFlow/XLA log through absl's C++ logging, which
   ignores that variable until `absl::InitializeLog()` is called (TensorFlow never
   calls it) and then writes everything to stderr, preceded by
   "WARNING: All log messages before absl::InitializeLog() is called are written to
   STDERR" -- once per shared library. Neither absl nor TensorFlow offers a setting
   for these, so stderr (file descriptor 2) is passed through a small filter
   process that drops exactly these lines: absl's warning above, native
   INFO/WARNING lines (absl format, from a C/C++ source file: `I0000 00:00:... x.cc:31]`)
   and two known-harmless errors ("failed call to cuInit" after "Could not find
   cuda drivers" -- a machine without a GPU --, duplicate cuDNN/cuFFT/cuBLAS factory
   registrations). Every other byte passes unchanged, in order, Python's own
   logging (`I1129 12:00:00.1 123 train_lib.py:157] ...`) included. The filter is a
   separate process so that nothing is lost when this one crashes (a segfault's
   report still arrives); it exits when the last writer closes stderr, and this
   process waits for it at exit.

`--verbose=2` on the command line or `TAPEFIT_TF_LOGS=1` in the environment keeps
everything (and leaves `TF_CPP_MIN_LOG_LEVEL` unset, TensorFlow's default: all).

No TensorFlow import here (it would be too late).
"""
from __future__ import annotations

import atexit
import os
import re
import subprocess
import sys

ENV_KEEP_LOGS = "TAPEFIT_TF_LOGS"

# Lines the filter drops (bytes, whole lines without the newline).
_ABSL_PREINIT = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR")
# absl's C++ format: severity, date, time, thread, file:line] text; before InitializeLog the
# date is 0000 and the time 00:00:<seconds since 1970>.
# Python's absl logging has the same format with a `.py` file: never dropped.
_NATIVE = re.compile(
    rb"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+\.(?:cc|cpp|c|h):\d+\] (.*)")
_NO_DRIVER = re.compile(rb"Could not find cuda drivers on your machine")
_HARMLESS_WITHOUT_DRIVER = re.compile(rb"failed call to cuInit")
_HARMLESS_ERRORS = re.compile(
    rb"Unable to register cu(?:DNN|FFT|BLAS) factory|computation placer already registered")


class NoiseFilter:
    """Decides line by line what reaches the real stderr (state: whether the CUDA
    driver was reported missing, which makes the cuInit error expected)."""

    def __init__(self):
        self.no_driver = False

    def keep(self, line: bytes) -> bool:
        line = line.rstrip(b"\r\n")
        if _ABSL_PREINIT.fullmatch(line):
            return False
        native = _NATIVE.fullmatch(line)
        if native is None:
            return True
        severity, text = native.groups()
        if _NO_DRIVER.search(text):
            self.no_driver = True
        if severity in b"IW":
            return False
        if severity == b"E":
            if _HARMLESS_ERRORS.search(text):
                return False
            if self.no_driver and _HARMLESS_WITHOUT_DRIVER.search(text):
                return False
        return True

    def run(self, read_fd=0, write_fd=1):
        """Copies `read_fd` to `write_fd` until EOF, without the dropped lines. A
        partial line is passed at once (a prompt) unless it may become a dropped one."""
        pending = b""
        while True:
            try:
                chunk = os.read(read_fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            kept = b"".join(line + b"\n" for line in lines if self.keep(line))
            if pending and not _may_become_dropped(pending):
                kept, pending = kept + pending, b""
            _write_all(write_fd, kept)
        if pending and self.keep(pending):
            _write_all(write_fd, pending)


_PREINIT_TEXT = b"WARNING: All log messages before absl::InitializeLog()"


def _may_become_dropped(partial: bytes) -> bool:
    """Whether a line's beginning may be that of a native log line (held until its end)."""
    if partial[:1] in (b"I", b"W", b"E", b"F") and partial[1:2] in b"0123456789":
        return True  # Includes a lone severity letter.
    n = min(len(partial), len(_PREINIT_TEXT))
    return partial[:n] == _PREINIT_TEXT[:n]


def _write_all(fd, data):
    while data:
        try:
            data = data[os.write(fd, data):]
        except InterruptedError:
            continue
        except OSError:  # The reader went away: nothing more to show.
            return


_filter_process = None
_saved_stderr = None


def keep_native_logs(argv=None, environ=None) -> bool:
    """True when the user asked for TensorFlow's native logs (`--verbose=2` or
    `TAPEFIT_TF_LOGS=1`)."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if environ.get(ENV_KEEP_LOGS, "").strip().lower() in ("1", "true", "yes"):
        return True
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        if arg in ("--verbose=2", "-verbose=2"):
            return True
        if arg in ("--verbose", "-verbose") and i + 1 < len(argv) and argv[i + 1] == "2":
            return True
    return False


def silence_native_logs(argv=None) -> bool:
    """Silences TensorFlow's native start-up noise (see the module docstring).

    Must run before TensorFlow is imported. Returns True when it did something.
    Idempotent; does nothing when the user asked for the logs, or when stderr
    cannot be redirected (no file descriptor 2).
    """
    global _filter_process, _saved_stderr
    if keep_native_logs(argv):
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _filter_process is not None:
        return True
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return True
    try:
        read_end, write_end = os.pipe()
        process = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)],
                                   stdin=read_end, stdout=saved, stderr=subprocess.DEVNULL,
                                   close_fds=True)
    except OSError:
        os.close(saved)
        return True
    os.close(read_end)
    os.dup2(write_end, 2)  # Inheritable: child processes' stderr is filtered too.
    os.close(write_end)
    _filter_process, _saved_stderr = process, saved
    atexit.register(_restore_stderr)
    return True


def stderr_is_terminal() -> bool:
    """Whether the real stderr is a terminal (where a progress bar belongs): behind the
    filter, file descriptor 2 is its pipe, never a terminal."""
    try:
        if _saved_stderr is not None:
            return os.isatty(_saved_stderr)
        return bool(sys.stderr.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _restore_stderr():
    """At exit: stderr back to the real one; the filter drains what it has and exits."""
    global _filter_process, _saved_stderr
    if _filter_process is None:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_saved_stderr, 2)  # Closes our pipe end: the filter sees EOF.
    os.close(_saved_stderr)
    try:
        _filter_process.wait(timeout=2)
    except subprocess.TimeoutExpired:  # A child process still holds the pipe.
        pass
    _filter_process = _saved_stderr = None


if __name__ == "__main__":  # The filter process (`python -I -S flags/quiet.py`).
    import signal

    # Ctrl-C, a closed terminal or a batch system's SIGTERM reach the whole process
    # group: the filter outlives them to pass on what its writers still say (it ends
    # at EOF, when they have all exited).
    for _name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"):
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), signal.SIG_IGN)
    NoiseFilter().run()
