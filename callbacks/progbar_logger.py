"""`ProgbarLogger`: a tqdm progress bar per epoch, with the running metrics."""
from __future__ import annotations

import io
import os
import sys
import time

from tqdm import tqdm

from tapefit.callbacks.base import Callback

# tqdm's default without the rate (room for the metrics); known and unknown length.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def log_items(logs):
    """`name: value` texts, numbers formatted like Keras' Progbar."""
    parts = []
    for name, value in (logs or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            text = f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"
        else:
            text = str(value)
        parts.append(f"{name}: {text}")
    return parts


def format_logs(logs):
    """`name: value - name: value`, numbers formatted like Keras' Progbar."""
    return " - ".join(log_items(logs))


def fit_items(items, room):
    """(the leading items whose " - "-joined text fits in `room` columns, the others);
    `room=None`: all fit."""
    if room is None:
        return list(items), []
    shown, used = [], 0
    for i, item in enumerate(items):
        used += len(item) + (3 if shown else 0)
        if used > room:
            return shown, list(items[i:])
        shown.append(item)
    return shown, []


def wrap_items(items, width, indent=""):
    """Lines of " - "-joined items, each within `width` columns (an item longer than the
    line gets one of its own); `width=None`: one line."""
    lines, current = [], ""
    for item in items:
        candidate = f"{current} - {item}" if current else indent + item
        if current and width is not None and len(candidate) > width - 1:
            lines.append(current)
            candidate = indent + item
        current = candidate
    if current:
        lines.append(current)
    return lines


class ProgbarLogger(Callback):
    """Prints progress like Keras' ProgbarLogger, with tqdm.

    Reads `verbose`, `epochs` and `steps` from the params the loop passes.
    `verbose=1`: one bar per epoch, updated every batch, running metrics in its
    postfix and the epoch's logs (validation included) when it closes;
    `verbose=2`: one line per epoch; `verbose=0`: nothing. Validation inside
    training is silent; a stand-alone evaluation or prediction gets its own bar.
    Nothing is written when the stream is not a terminal, unless `force=True`
    or `lines_when_not_tty=True`.

    A bar never runs past the terminal's width: the metrics that do not fit next to
    it are left out while it runs, and at epoch end the epoch's logs that do not fit
    (validation first) follow on their own line(s) under the closed bar.

    Args:
      force: write even when `file` is not a TTY (logs, tests): bars as on a terminal.
      file: the stream (default: `sys.stdout` at the time of writing).
      lines_when_not_tty: when `file` is not a TTY (a log file, a pipe, a batch job),
        write exactly one plain line per epoch (`Epoch 3/10 - 40 steps - 12.3s -
        loss: ...`) whatever `verbose` (> 0) is: no carriage returns, no ANSI codes.
    """

    MIN_BAR_WIDTH = 5

    def __init__(self, force=False, file=None, lines_when_not_tty=False):
        super().__init__()
        self.force = force
        self.file = file
        self.lines_when_not_tty = lines_when_not_tty
        self.verbose = 1
        self.epochs = 1
        self.target = None
        self.seen = 0
        self.progbar = None
        self._started = None
        self._running = set()  # Names shown while the bar runs.
        self._called_in_fit = False

    def set_params(self, params):
        super().set_params(params)
        params = params or {}
        verbose = params.get("verbose", 1)
        self.verbose = 1 if verbose == "auto" else verbose
        self.epochs = params.get("epochs", 1)
        self.target = params.get("steps")

    # ---- output -------------------------------------------------------------
    def _stream(self):
        return self.file if self.file is not None else sys.stdout

    def _is_tty(self):
        try:
            return bool(self._stream().isatty())
        except (AttributeError, ValueError):
            return False

    def _mode(self):
        """"bar", "line" (one line per epoch) or None (silent)."""
        if not self.verbose:
            return None
        if self._is_tty():
            return "bar" if self.verbose == 1 else "line"
        if self.lines_when_not_tty:
            return "line"
        if self.force:
            return "bar" if self.verbose == 1 else "line"
        return None

    def _enabled(self):
        return self._mode() is not None

    def _width(self):
        """The terminal's width in columns, None when unknown (not a real terminal)."""
        try:
            return os.get_terminal_size(self._stream().fileno()).columns
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None

    def _postfix_room(self):
        """Columns left for the postfix next to the bar (None: unlimited)."""
        width = self._width()
        if width is None or self.progbar is None:
            return None
        # Without ncols tqdm draws a 10-column bar.
        meter = dict(self.progbar.format_dict, postfix=None, ncols=None)
        fixed = len(self.progbar.format_meter(**meter)) - 10
        # ", " before the postfix, one column spare (the cursor).
        return width - fixed - self.MIN_BAR_WIDTH - 3

    def _open_bar(self, desc, total):
        self._close_bar()
        self.seen = 0
        self._started = time.monotonic()
        self._running = set()
        if self._mode() == "bar":
            self.progbar = tqdm(total=total, desc=desc, unit="step", file=self._stream(),
                                leave=True, dynamic_ncols=True, bar_format=BAR_FORMAT)

    def _update_bar(self, batch, logs):
        self.seen = batch + 1  # 1-based.
        if self.progbar is not None:
            self.progbar.update(self.seen - self.progbar.n)
            if logs:
                self._running = set(logs)
                shown, _ = fit_items(log_items(logs), self._postfix_room())
                self.progbar.set_postfix_str(" - ".join(shown), refresh=False)

    def _finish_bar(self, logs, title):
        if self.target is None:  # Unknown length: learnt from the first run, as Keras.
            self.target = self.seen
        if self.progbar is not None:
            if self.progbar.total is None:
                self.progbar.total = self.seen
            self.progbar.update(max(self.progbar.total - self.progbar.n, 0))
            names, items = list(logs or {}), log_items(logs)
            room = self._postfix_room()
            shown, rest = fit_items(items, room)
            below = [rest]
            if rest:  # The running metrics stay on the bar; the others (validation) below.
                running = [i for n, i in zip(names, items, strict=True) if n in self._running]
                shown, rest = fit_items(running, room)
                below = [rest, [i for n, i in zip(names, items, strict=True)
                                  if n not in self._running]]
            self.progbar.set_postfix_str(" - ".join(shown), refresh=False)
            self._close_bar()
            lines = [line for group in below
                     for line in wrap_items(group, self._width(), indent="  ")]
            if lines:
                self._stream().write("".join(line + "\n" for line in lines))
                self._stream().flush()
        elif self._mode() == "line":
            line = f"{title} - {self.seen} steps"
            if self._started is not None:
                line += f" - {time.monotonic() - self._started:.1f}s"
            if logs:
                line += " - " + format_logs(logs)
            print(line, file=self._stream(), flush=True)

    def _close_bar(self):
        if self.progbar is not None:
            self.progbar.close()
            self.progbar = None

    # ---- events -------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._called_in_fit = True  # Validation inside fit is silent.

    def on_train_end(self, logs=None):
        self._close_bar()
        self._called_in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self._open_bar(f"Epoch {epoch + 1}/{self.epochs}", self.target)

    def on_train_batch_end(self, batch, logs=None):
        self._update_bar(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._finish_bar(logs, f"Epoch {epoch + 1}/{self.epochs}")

    def on_test_begin(self, logs=None):
        if not self._called_in_fit:
            self._open_bar("Evaluate", None)

    def on_test_batch_end(self, batch, logs=None):
        if not self._called_in_fit:
            self._update_bar(batch, logs)

    def on_test_end(self, logs=None):
        if not self._called_in_fit:
            self._finish_bar(logs, "Evaluate")

    def on_predict_begin(self, logs=None):
        self._open_bar("Predict", None)

    def on_predict_batch_end(self, batch, logs=None):
        self._update_bar(batch, None)  # Prediction results are not shown.

    def on_predict_end(self, logs=None):
        self._finish_bar(None, "Predict")
