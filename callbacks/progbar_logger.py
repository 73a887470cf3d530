"""`ProgbarLogger`: a tqdm progress bar per epoch, with the running metrics."""
from __future__ import annotations

import sys

from tqdm import tqdm

from callbacks.base import Callback


def format_logs(logs):
    """`name: value` pairs, numbers formatted like Keras' Progbar."""
    parts = []
    for name, value in (logs or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            text = f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"
        else:
            text = str(value)
        parts.append(f"{name}: {text}")
    return " - ".join(parts)


class ProgbarLogger(Callback):
    """Prints progress like Keras' ProgbarLogger, with tqdm.

    Reads `verbose`, `epochs` and `steps` from the params the loop passes.
    `verbose=1`: one bar per epoch, updated every batch, running metrics in its
    postfix and the epoch's logs (validation included) when it closes;
    `verbose=2`: one line per epoch; `verbose=0`: nothing. Validation inside
    training is silent; a stand-alone evaluation or prediction gets its own bar.
    Nothing is written when the stream is not a terminal, unless `force=True`.

    Args:
      force: write even when `file` is not a TTY (logs, tests).
      file: the stream (default: `sys.stdout` at the time of writing).
    """

    def __init__(self, force=False, file=None):
        super().__init__()
        self.force = force
        self.file = file
        self.verbose = 1
        self.epochs = 1
        self.target = None
        self.seen = 0
        self.progbar = None
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

    def _enabled(self):
        if not self.verbose:
            return False
        if self.force:
            return True
        try:
            return bool(self._stream().isatty())
        except (AttributeError, ValueError):
            return False

    def _open_bar(self, desc, total):
        self._close_bar()
        self.seen = 0
        if self.verbose == 1 and self._enabled():
            self.progbar = tqdm(total=total, desc=desc, unit="step", file=self._stream(),
                                leave=True, dynamic_ncols=True)

    def _update_bar(self, batch, logs):
        self.seen = batch + 1  # 1-based.
        if self.progbar is not None:
            self.progbar.update(self.seen - self.progbar.n)
            if logs:
                self.progbar.set_postfix_str(format_logs(logs), refresh=False)

    def _finish_bar(self, logs, title):
        if self.target is None:  # Unknown length: learnt from the first run, as Keras.
            self.target = self.seen
        if self.progbar is not None:
            if self.progbar.total is None:
                self.progbar.total = self.seen
            self.progbar.update(max(self.progbar.total - self.progbar.n, 0))
            self.progbar.set_postfix_str(format_logs(logs), refresh=False)
            self._close_bar()
        elif self.verbose == 2 and self._enabled():
            line = f"{title} - {self.seen} steps"
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
