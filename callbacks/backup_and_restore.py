"""`BackupAndRestore`: resume an interrupted training from its last backup.

On-disk layout of `backup_dir` (format 1):

- `training_metadata.json`: `{"format": 1, "epoch": E, "batch": B,
  "weights": "ckpt-000007.weights.h5", "save_index": 7}`. `epoch` is the number
  of finished epochs (the epoch to start from), `batch` the last batch seen
  (for step-level backups), as in Keras' file of the same name. This JSON is
  the commit point: it is replaced atomically after its weights file is fully
  written, so a crash leaves either the old or the new backup, never a mix.
  Later formats may add keys (e.g. `"hooks": {name: hook.get_state()}`); readers
  must ignore keys they do not know.
- `ckpt-NNNNNN.weights.h5`: `model.save_weights` (model and optimizer variables,
  the optimizer's iteration count included).
- with `double_checkpoint=True`, `training_metadata.json.bkp` names the previous
  backup, whose weights file is kept; it is used when the newest one cannot be read.

A Keras backup (`latest.weights.h5` and a metadata without `"weights"`) is read too.

The custom loop's exact, step-level resume (the hooks' states, the RNG, the data
position) is not this hook's: the loop owns it (`loops/training/checkpointer.py`).
"""
from __future__ import annotations

import glob
import os
import shutil

from tapefit.callbacks.atomic_io import atomic_save_weights
from tapefit.callbacks.base import Callback
from tapefit.layout.atomic import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_left_over_temporaries,
)
from tapefit.layout.paths import KERAS_BACKUP_METADATA as METADATA
from tapefit.layout.paths import KERAS_BACKUP_WEIGHTS as KERAS_WEIGHTS

FORMAT = 1


class BackupAndRestore(Callback):
    """Backs up weights, optimizer state and epoch; restores them at train begin.

    Arguments and behaviour are those of `keras.callbacks.BackupAndRestore`:
    `on_train_begin` loads the last backup and sets `model._initial_epoch`, the
    epoch the loop must start from (the custom loop and Keras' fit both read
    it; it is also kept as `self.initial_epoch`, None when nothing was
    restored). Backups are made at every epoch end (`save_freq="epoch"`) or
    every `save_freq` batches; like Keras, a step-level backup still resumes at
    the start of its epoch. With `delete_checkpoint`, `backup_dir` is removed
    when training ends (not when it is interrupted).
    """

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False,
                 delete_checkpoint=True):
        super().__init__()
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = 0
        self._current_epoch = 0
        self._save_index = 0
        self.initial_epoch = None
        self.restored_metadata = None
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        self.backup_dir = os.fspath(backup_dir)
        self._metadata_path = os.path.join(self.backup_dir, METADATA)
        self._prev_metadata_path = f"{self._metadata_path}.bkp"
        if save_freq != "epoch" and not isinstance(save_freq, int):
            raise ValueError(
                "Invalid value for argument `save_freq`. "
                f"Received: save_freq={save_freq}. "
                "Expected either 'epoch' or an integer value.")

    # ---- restore ------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                "To use the BackupAndRestore callback, you model must be built before "
                f"you call `fit()`. Model {self.model} is unbuilt. You can build it "
                "beforehand by calling it on a batch of data.")
        self._remove_stale_temporaries()
        try:
            self._restore(self._metadata_path)
        except (OSError, ValueError, KeyError):  # JSONDecodeError is a ValueError.
            # Unreadable backup: fall back on the previous one, if kept, and make
            # it the current one again (as Keras copies its .bkp files back).
            if not os.path.exists(self._prev_metadata_path):
                raise
            self._restore(self._prev_metadata_path)
            with open(self._prev_metadata_path, encoding="utf-8") as f:
                atomic_write_text(self._metadata_path, f.read())
            self._remove_unreferenced_weights()

    def _restore(self, metadata_path):
        metadata = read_json(metadata_path) if os.path.exists(metadata_path) else None
        weights_name = (metadata or {}).get("weights", KERAS_WEIGHTS)
        weights_path = os.path.join(self.backup_dir, weights_name)
        if os.path.exists(weights_path):
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is not None and not optimizer.built:
                optimizer.build(self.model.trainable_variables)  # Its variables must exist.
            self.model.load_weights(weights_path)
        elif metadata is not None and "weights" in metadata:
            raise OSError(f"Backup weights file {weights_path} is missing")
        if metadata is not None:
            self.restored_metadata = metadata
            self._save_index = int(metadata.get("save_index", 0))
            self.initial_epoch = int(metadata["epoch"])
            self.model._initial_epoch = self.initial_epoch

    # ---- backup -------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        if self.save_freq == "epoch":
            self._save_model()

    def on_train_batch_end(self, batch, logs=None):
        if self._should_save_on_batch(batch):
            self._save_model()

    def _should_save_on_batch(self, batch):
        if self.save_freq == "epoch":
            return False
        if batch <= self._last_batch_seen:  # A new epoch.
            add_batches = batch + 1
        else:
            add_batches = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += add_batches
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _metadata(self, weights_name):
        return {"format": FORMAT, "epoch": self._current_epoch, "batch": self._last_batch_seen,
                "weights": weights_name, "save_index": self._save_index}

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        self._save_index += 1
        weights_name = f"ckpt-{self._save_index:06d}.weights.h5"
        atomic_save_weights(self.model, os.path.join(self.backup_dir, weights_name))
        if self.double_checkpoint and os.path.exists(self._metadata_path):
            with open(self._metadata_path, encoding="utf-8") as f:
                atomic_write_text(self._prev_metadata_path, f.read())
        atomic_write_json(self._metadata_path, self._metadata(weights_name))
        self._remove_unreferenced_weights()

    def _remove_unreferenced_weights(self):
        keep = set()
        for path in (self._metadata_path, self._prev_metadata_path):
            try:
                keep.add(read_json(path).get("weights", KERAS_WEIGHTS))
            except (OSError, ValueError, AttributeError):
                continue
        candidates = glob.glob(os.path.join(glob.escape(self.backup_dir), "ckpt-*.weights.h5"))
        candidates.append(os.path.join(self.backup_dir, KERAS_WEIGHTS))
        for path in candidates:
            if os.path.basename(path) not in keep and os.path.exists(path):
                os.remove(path)

    def _remove_stale_temporaries(self):
        """Temporary files left by a run killed in the middle of a backup (the one rule
        of `layout.temporaries`: never a live writer's)."""
        remove_left_over_temporaries(self.backup_dir)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir)
