"""Exact resume for the custom loop: a step-level backup of everything that
decides the rest of a run.

Keras' BackupAndRestore restarts at the beginning of an epoch and forgets the
hooks, the RNG and the data position. A `Backup` saves, every
`every_steps` steps and at each epoch end:
- every variable of the model (Keras' dropout/augmentation seed-generator
  states included), of the optimizer (slots, iterations, learning rate) and of
  the loop's running metrics, bit for bit, in a NumPy `.npz` (no pickle);
- the position: epoch, steps done in it, whether training had stopped;
- every hook's `get_state()` (EarlyStopping's best weights in their own `.npz`).
The data stream is positioned from (epoch, step) by the input pipeline, whose
epoch order depends on (seed, epoch) only.

Layout of `backup_dir`: `state.json` is the commit point, replaced atomically
after the files it names are fully written; older files are removed after it.
A kill at any moment leaves the previous or the new backup, never a mix.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import os
import shutil

import keras
import numpy as np

from callbacks.atomic_io import atomic_save, atomic_write_json, read_json

FORMAT = 1
STATE_JSON = "state.json"


@dataclasses.dataclass(frozen=True)
class Position:
    epoch: int = 0  # The epoch to continue.
    step: int = 0  # Batches of it already trained.
    stopped: bool = False  # A hook had stopped training: only on_train_end is left.


def _save_arrays(path, arrays):
    def write(tmp):
        buffer = io.BytesIO()
        np.savez(buffer, *arrays)
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
    atomic_save(write, path)


def _load_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def remove_partial_files(run_dir: str) -> list[str]:
    """Deletes temporary files a kill left behind mid-save (see callbacks.atomic_io.temp_path)."""
    partial = glob.glob(os.path.join(glob.escape(run_dir), "**", ".*.tmp-*"), recursive=True)
    for path in partial:
        os.remove(path)
    return partial


class Backup:
    """Saves and restores a `CustomLoop`'s full training state in `backup_dir`."""

    def __init__(self, backup_dir: str, every_steps: int = 0):
        self.backup_dir = backup_dir
        self.every_steps = every_steps
        self._state_path = os.path.join(backup_dir, STATE_JSON)
        self._state = read_json(self._state_path) if os.path.exists(self._state_path) else None
        self._index = self._state["index"] if self._state else 0

    @property
    def position(self) -> Position | None:
        """Where the backed-up run stopped, None when there is no backup."""
        if self._state is None:
            return None
        return Position(self._state["epoch"], self._state["step"], self._state["stopped"])

    @property
    def last_logs(self):
        return self._state.get("logs") if self._state else None

    def due(self, global_step: int) -> bool:
        return self.every_steps > 0 and global_step % self.every_steps == 0

    @staticmethod
    def _variables(loop):
        metric_variables = [v for metric in loop.metrics for v in metric.variables]
        return list(loop.model.variables) + list(loop.optimizer.variables) + metric_variables

    # ---- save ---------------------------------------------------------------------
    def save(self, loop, hooks, position: Position, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        self._index += 1
        files = {}
        variables = self._variables(loop)
        files["variables"] = f"variables-{self._index:06d}.npz"
        _save_arrays(os.path.join(self.backup_dir, files["variables"]),
                     [keras.ops.convert_to_numpy(v) for v in variables])
        hook_states = {}
        for i, hook in enumerate(hooks):
            if not hasattr(hook, "get_state"):
                continue
            hook_states[str(i)] = {"class": type(hook).__name__, "state": hook.get_state()}
            best = getattr(hook, "best_weights", None)
            if best is not None:
                files[f"hook{i}_best_weights"] = f"hook{i}-best-{self._index:06d}.npz"
                _save_arrays(os.path.join(self.backup_dir, files[f"hook{i}_best_weights"]), best)
        self._state = {
            "format": FORMAT, "index": self._index, "epoch": position.epoch,
            "step": position.step, "stopped": position.stopped, "logs": logs,
            "files": files, "variable_paths": [v.path for v in variables],
            "hooks": hook_states,
        }
        atomic_write_json(self._state_path, self._state)
        keep = set(files.values()) | {STATE_JSON}
        for path in glob.glob(os.path.join(glob.escape(self.backup_dir), "*")):
            if os.path.basename(path) not in keep and not os.path.basename(path).startswith("."):
                os.remove(path)

    # ---- restore ------------------------------------------------------------------
    def truncate_logs(self, hooks):
        """Drops CSV rows written after the backup (call before on_train_begin)."""
        for i, hook in enumerate(hooks):
            saved = self._state["hooks"].get(str(i)) if self._state else None
            if saved is None or not hasattr(hook, "filename") or not os.path.exists(hook.filename):
                continue
            with open(hook.filename, newline="") as f:
                lines = f.readlines()
            rows = saved["state"].get("rows_written", 0)
            keep = lines[:1 + rows] if rows else []

            def write(tmp, keep=keep):
                with open(tmp, "w", newline="") as f:
                    f.writelines(keep)
            atomic_save(write, hook.filename)

    def restore(self, loop, hooks):
        """Assigns every saved variable and hook state (call after on_train_begin)."""
        variables = self._variables(loop)
        paths = [v.path for v in variables]
        if paths != self._state["variable_paths"]:
            raise ValueError(
                f"the backup in {self.backup_dir} is of another model or optimizer; "
                "pass --overwrite to start over")
        arrays = _load_arrays(os.path.join(self.backup_dir, self._state["files"]["variables"]))
        for variable, value in zip(variables, arrays):
            variable.assign(value)
        for i, hook in enumerate(hooks):
            saved = self._state["hooks"].get(str(i))
            if saved is None:
                continue
            if saved["class"] != type(hook).__name__:
                raise ValueError(f"the backup's hook {i} is a {saved['class']}, not a "
                                 f"{type(hook).__name__}; pass the flags of the backed-up run")
            best_file = self._state["files"].get(f"hook{i}_best_weights")
            if best_file:
                hook.set_state(saved["state"],
                               best_weights=_load_arrays(os.path.join(self.backup_dir, best_file)))
            else:
                hook.set_state(saved["state"])

    def delete(self):
        shutil.rmtree(self.backup_dir, ignore_errors=True)
