"""A guard hook before every hook that writes run files, in both loops.

Keras' own hooks (the fit loop's `keras.callbacks`) write their files directly, and
ours append `log.csv` rows and TensorBoard events outside `callbacks.atomic_io`. So
`guarded(hooks, module)` puts a `WriteGuard` first and right before each writing hook
(ModelCheckpoint, CSVLogger, TensorBoard, BackupAndRestore). At each event where
those write (train begin and end, epoch begin and end), the guard
- checks that this process still holds its locks (`loops.rundir.run_lock.check_held`):
  a process paused past its lease and taken over stops here with one line
  (`LockLost`), before the next hook writes anything;
- before a hook that writes a weights file, checks that the folder has room for one
  (`layout.atomic.check_space` with the size of the model's and optimizer's
  variables): a full disk is one line, not an HDF5 failure in the middle of a write
  (Keras' hooks write through h5py straight to disk).

The guard has no state to back up and changes no computation (bitwise parity of the
two loops holds).
"""
from __future__ import annotations

import math
import os

import numpy as np

from tapefit.layout.atomic import check_space
from tapefit.loops.rundir.run_lock import check_held

# Hooks that write files in the run directory, and those of them that write weights.
WRITERS = ("ModelCheckpoint", "CSVLogger", "TensorBoard", "BackupAndRestore")
WEIGHT_WRITERS = ("ModelCheckpoint", "BackupAndRestore")
_PER_VARIABLE = 4096  # HDF5 bytes per variable beyond its data (names, attributes).

_CLASSES = {}


def weights_size(model) -> int:
    """An upper estimate of the size of `model.save_weights`' file (the model's and,
    when it has one, its optimizer's variables)."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        variables += list(optimizer.variables)
    total = 0
    for v in variables:
        try:
            itemsize = np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
        except TypeError:
            itemsize = 8
        total += math.prod(int(d) for d in v.shape) * itemsize + _PER_VARIABLE
    return total


def guard_class(module):
    """The guard as a subclass of `module.Callback` (ours or keras.callbacks')."""
    if module not in _CLASSES:
        class WriteGuard(module.Callback):
            """Checks the run's lock (and the free space before `target`'s weights)."""

            def __init__(self, target=None):
                super().__init__()
                self._folder = None
                if target is not None and type(target).__name__ in WEIGHT_WRITERS:
                    path = getattr(target, "filepath", None) or getattr(
                        target, "backup_dir", None)
                    self._folder = os.path.dirname(str(path)) if path and str(path).endswith(
                        ".h5") else path

            def _check(self, space=False):
                check_held()
                if space and self._folder and "://" not in str(self._folder):
                    folder = str(self._folder)
                    while folder and not os.path.isdir(folder):
                        folder = os.path.dirname(folder)
                    check_space(folder, weights_size(self.model), str(self._folder))

            def on_train_begin(self, logs=None):
                self._check()

            def on_epoch_begin(self, epoch, logs=None):
                self._check()

            def on_epoch_end(self, epoch, logs=None):
                self._check(space=True)

            def on_train_end(self, logs=None):
                self._check()

        _CLASSES[module] = WriteGuard
    return _CLASSES[module]


def guarded(hooks, module) -> list:
    """`hooks` with a guard first and one right before each hook that writes files."""
    guard = guard_class(module)
    out = [guard()]
    for hook in hooks:
        if type(hook).__name__ in WRITERS:
            out.append(guard(hook))
        out.append(hook)
    return out
