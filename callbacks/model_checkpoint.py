"""`ModelCheckpoint`: save the model or its weights every epoch or every N batches."""
from __future__ import annotations

import os
import warnings

import numpy as np
from keras import ops

from tapefit.callbacks._monitor import MonitorCallback, to_json_number
from tapefit.callbacks.atomic_io import atomic_save_weights
from tapefit.layout.atomic import atomic_save


class ModelCheckpoint(MonitorCallback):
    """Saves the model (`.keras`/`.h5`) or its weights (`.weights.h5`), as Keras does.

    `filepath` may hold `str.format` fields: `{epoch}` (1-based), `{batch}`
    (1-based, with an integer `save_freq`) and any logs key, e.g.
    `"ckpt-{epoch:02d}-{val_loss:.4f}.weights.h5"`. Arguments and behaviour are
    those of `keras.callbacks.ModelCheckpoint`, except that every file is written
    to a temporary name in the same folder and renamed into place (a crash never
    leaves a half-written checkpoint; a weights file is serialised in memory and
    checked against the free space first, `atomic_io.atomic_save_weights`) and
    that batch-level `save_best_only` works before the first epoch end (see
    DIFFERENCES.md).
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False,
                 save_weights_only=False, mode="auto", save_freq="epoch",
                 initial_value_threshold=None):
        super().__init__(monitor, mode, initial_value_threshold)
        self.verbose = verbose
        self.filepath = os.fspath(filepath)
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = None
        self._current_epoch = 0

        if self.save_freq != "epoch" and not isinstance(self.save_freq, int):
            raise ValueError(
                f"Unrecognized save_freq: {self.save_freq}. "
                "Expected save_freq are 'epoch' or integer values")
        if save_weights_only:
            if not self.filepath.endswith(".weights.h5"):
                raise ValueError(
                    "When using `save_weights_only=True` in `ModelCheckpoint`, the "
                    "filepath provided must end in `.weights.h5` (Keras weights "
                    f"format). Received: filepath={self.filepath}")
        elif not self.filepath.endswith((".keras", ".h5")):
            raise ValueError(
                "The filepath provided must end in `.keras` (Keras model format). "
                f"Received: filepath={self.filepath}")

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model(epoch=self._current_epoch, batch=batch, logs=logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        if self.save_freq == "epoch":
            self._save_model(epoch=epoch, batch=None, logs=logs)

    def _should_save_on_batch(self, batch):
        if self.save_freq == "epoch":
            return False
        if self._last_batch_seen is None or batch <= self._last_batch_seen:
            add_batches = batch + 1  # A new epoch; batches are 0-based.
        else:
            add_batches = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add_batches
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _should_save_model(self, epoch, batch, logs, filepath):
        logs = logs or {}
        if not self.save_best_only:
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available.",
                          stacklevel=2)
            return True
        if (isinstance(current, np.ndarray) or ops.is_tensor(current)) and len(current.shape) > 0:
            warnings.warn(  # noqa: B028  (as Keras: the default stacklevel)
                "Can save best model only when `monitor` is a scalar value. "
                f"Received: {current}. Falling back to `save_best_only=False`.")
            return True
        if self.monitor_op is None and self.best is not None:
            # Batch-level saving before the first epoch end: Keras would call
            # the unset comparison and crash (see DIFFERENCES.md).
            self._set_monitor_op()
        best_str = "None" if self.best is None else f"{self.best:.5f}"
        if self._is_improvement(current, self.best):
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {best_str} "
                      f"to {current:.5f}, saving model to {filepath}")
            self.best = current
            return True
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best_str}")
        return False

    def _save_model(self, epoch, batch, logs):
        filepath = self._get_file_path(epoch, batch, logs)
        if not self._should_save_model(epoch, batch, logs, filepath):
            return
        if os.path.isdir(filepath):
            raise IOError(
                "Please specify a non-directory filepath for ModelCheckpoint. "
                f"Filepath used is an existing directory: {filepath}")
        if self.save_weights_only:
            atomic_save_weights(self.model, filepath)
        else:
            atomic_save(lambda path: self.model.save(path, overwrite=True), filepath)
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: finished saving model to {filepath}")

    def _get_file_path(self, epoch, batch, logs):
        logs = logs or {}
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as e:
            raise KeyError(  # noqa: B904  (as Keras)
                f'Failed to format this callback filepath: "{self.filepath}". Reason: {e}')

    # ---- resumable state ----------------------------------------------------
    @property
    def state_key(self):
        """Names this hook's state in a backup: one per file pattern."""
        return f"ModelCheckpoint:{os.path.basename(str(self.filepath))}"

    def get_state(self):
        return {
            "best": to_json_number(self.best),
            "current_epoch": self._current_epoch,
            "batches_seen_since_last_saving": self._batches_seen_since_last_saving,
            "last_batch_seen": self._last_batch_seen,
        }

    def set_state(self, state):
        self.best = state["best"]
        self._current_epoch = state["current_epoch"]
        self._batches_seen_since_last_saving = state["batches_seen_since_last_saving"]
        self._last_batch_seen = state["last_batch_seen"]
