"""`CSVLogger`: one CSV row per epoch, byte-identical to Keras' CSVLogger."""
from __future__ import annotations

import collections
import collections.abc
import csv
import os

import numpy as np

from tapefit.callbacks.base import Callback
from tapefit.layout.atomic import atomic_save, is_remote


def _open(path, mode):
    if is_remote(path):
        import tensorflow as tf
        return tf.io.gfile.GFile(path, mode=mode)
    return open(path, mode)  # As Keras: default encoding and newline handling.


def _exists(path):
    if is_remote(path):
        import tensorflow as tf
        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def _handle_value(value):
    """Keras' formatting: strings as is, iterables as a quoted "[a, b]" string."""
    is_zero_dim_ndarray = isinstance(value, np.ndarray) and value.ndim == 0
    if isinstance(value, str):
        return value
    if isinstance(value, collections.abc.Iterable) and not is_zero_dim_ndarray:
        return f'"[{", ".join(map(str, value))}]"'
    return value


class CSVLogger(Callback):
    """Streams epoch results to a CSV file (`keras.callbacks.CSVLogger`).

    Columns: `epoch` (0-based), then the sorted keys of the first epoch's logs,
    plus `val_<key>` for each of them when that first epoch had no `val_` key.
    Missing values are written as `NA`. With `append=True` the header is only
    written when the file is missing or empty.
    """

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.sep = separator
        self.filename = os.fspath(filename)
        self.append = append
        self.writer = None
        self.keys = None
        self.append_header = True
        self.csv_file = None
        self.rows_written = 0

    def on_train_begin(self, logs=None):
        if self.append:
            if _exists(self.filename):
                with _open(self.filename, "r") as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        else:
            mode = "w"
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.csv_file = _open(self.filename, mode)
        self.writer = None
        self.keys = None
        self.rows_written = 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs.keys())
            val_keys_found = any(key.startswith("val_") for key in self.keys)
            if not val_keys_found and self.keys:
                self.keys.extend([f"val_{k}" for k in self.keys])

        if not self.writer:
            class CustomDialect(csv.excel):
                delimiter = self.sep

            fieldnames = ["epoch"] + (self.keys or [])
            self.writer = csv.DictWriter(self.csv_file, fieldnames=fieldnames,
                                         dialect=CustomDialect)
            if self.append_header:
                self.writer.writeheader()

        row_dict = collections.OrderedDict({"epoch": epoch})
        row_dict.update((key, _handle_value(logs.get(key, "NA"))) for key in self.keys)
        self.writer.writerow(row_dict)
        self.csv_file.flush()
        self.rows_written += 1

    def on_train_end(self, logs=None):
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        self.writer = None

    # ---- resumable state ----------------------------------------------------
    def get_state(self):
        return {"keys": None if self.keys is None else list(self.keys),
                "rows_written": self.rows_written}

    def set_state(self, state):
        """Restores the columns; call after `on_train_begin` (use `append=True` to resume).

        The file is cut back to the header and the `rows_written` rows of that state:
        rows written after it (by a run killed before its next backup) are dropped, so
        a resumed run never repeats or loses a row.
        """
        self.keys = None if state["keys"] is None else list(state["keys"])
        self.rows_written = state["rows_written"]
        if not self.append or is_remote(self.filename) or not _exists(self.filename):
            return
        if self.csv_file and not self.csv_file.closed:
            self.csv_file.close()
        with open(self.filename, newline="") as f:
            lines = f.readlines()
        keep = lines[:1 + self.rows_written] if self.rows_written else []
        if keep != lines:
            def write(tmp):
                with open(tmp, "w", newline="") as f:
                    f.writelines(keep)
            atomic_save(write, self.filename)
        self.append_header = not keep
        self.writer = None
        self.csv_file = _open(self.filename, "a")
