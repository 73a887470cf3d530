"""Exact resume of the custom loop: its step-level checkpointer.

The loop owns it, as Orbit's `Controller` owns its `CheckpointManager`:
`CustomLoop.fit(..., checkpointer=Checkpointer(backup_dir, save_freq))` attaches it
to the loop and the hooks, calls `restore()` after `on_train_begin` and `save(position)`
after the hooks saw a step (every `save_freq` steps) or an epoch end, and positions
the data stream from the restored (epoch, step). The hooks never see it: Keras'
`BackupAndRestore` (callbacks/backup_and_restore.py, and `keras.callbacks`' for
`--loop=fit`) restarts at the beginning of an epoch and forgets the hooks, the RNG
and the data position; this one does not. A backup holds:
- every variable of the model (Keras' dropout/augmentation seed-generator states
  included), of the optimizer (slots, iterations, learning rate) and of the loop's
  running metrics, bit for bit, in a NumPy `.npz` (no pickle);
- the position: epoch, steps done in it, whether training had stopped;
- every hook's `get_state()`, keyed by the hook's stable name (`state_key`, else its
  class name), not by its place in the list; arrays in a state (EarlyStopping's best
  weights) go to their own `.npz`.
The model's non-trainable variables (a frozen backbone) go once to a `base-*.npz`;
each backup's `variables-*.npz` holds only the variables that differ from it.
Layout of `backup_dir`: `state.json` (format 2) is the commit point, replaced
atomically after the files it names are fully written; older files are removed after it.

`backup_position(backup_dir)` is where a run directory stands: the position of the
exact backup (every file it names read through), or the epoch of Keras'
`training_metadata.json` (the fit loop), None without a backup; `BackupError` when
it cannot be read.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import os
import re
import shutil
import zipfile

import numpy as np

from tapefit.layout.atomic import (
    atomic_save,
    atomic_write_json,
    read_json,
    remove_left_over_temporaries,
)
from tapefit.layout.paths import BACKUP_STATE_JSON as STATE_JSON
from tapefit.layout.paths import KERAS_BACKUP_METADATA

EXACT_FORMAT = 2


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: the epoch to continue, the batches of it already trained,
    and whether a hook had stopped training (only on_train_end is left)."""

    epoch: int = 0
    step: int = 0
    stopped: bool = False


class BackupError(ValueError):
    """A backup that cannot be restored (another model, missing or corrupt files)."""


def state_key(hook) -> str:
    """A hook's stable name in a backup: its `state_key` or its class name."""
    return getattr(hook, "state_key", None) or type(hook).__name__


def backup_position(backup_dir: str) -> Position | None:
    """The position of the backup in `backup_dir` (see the module docstring): the exact
    backup's, every file it names read through (a cut file fails here), else Keras'
    epoch (step 0); None without a backup. BackupError when it cannot be read."""
    state_path = os.path.join(backup_dir, STATE_JSON)
    keras_path = os.path.join(backup_dir, KERAS_BACKUP_METADATA)
    try:
        if os.path.exists(state_path):  # The custom loop's exact backup.
            state = read_json(state_path)
            for name in state["files"].values():
                with np.load(os.path.join(backup_dir, name), allow_pickle=False) as data:
                    for key in data.files:
                        data[key]  # Reads every array: a cut file fails here.
            return Position(state["epoch"], state["step"], state["stopped"])
        if os.path.exists(keras_path):  # Keras' BackupAndRestore (fit loop).
            return Position(int(read_json(keras_path)["epoch"]), 0)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise BackupError(str(e)) from None
    return None


def _unnumbered(path: str) -> str:
    return re.sub(r"_\d+(?=/|$)", "", path)


def _is_arrays(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(a, np.ndarray) for a in value)


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


class Checkpointer:
    """Exact backups of a custom loop in `backup_dir`, every `save_freq` steps
    ("epoch" or 0: at epoch ends only) and at every epoch end.

    Reads the last backup's `state.json` when made (BackupError when corrupt);
    `attach(loop, hooks)` says whose variables and hook states it saves and restores
    (`CustomLoop.fit` calls it).
    """

    def __init__(self, backup_dir, save_freq="epoch"):
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self._loop, self._hooks = None, []
        self._state = None
        self._state_path = os.path.join(self.backup_dir, STATE_JSON)
        if os.path.exists(self._state_path):
            try:
                self._state = read_json(self._state_path)
            except ValueError:
                raise BackupError(f"the backup {self._state_path} is corrupt") from None
        self._save_index = self._state["index"] if self._state else 0
        self._base, self._base_indices, self._base_name = None, [], None

    def attach(self, loop, hooks):
        """Saves and restores `loop`'s variables and the states of `hooks`."""
        self._loop, self._hooks = loop, list(hooks)
        return self

    @property
    def position(self) -> Position | None:
        """The saved Position, None when there is no backup."""
        if self._state is None:
            return None
        return Position(self._state["epoch"], self._state["step"], self._state["stopped"])

    @property
    def last_logs(self):
        """The logs of the last finished epoch at the saved position (None: none)."""
        return self._state.get("logs") if self._state else None

    def due(self, global_step: int) -> bool:
        """A step-level backup is due after `global_step` steps."""
        return isinstance(self.save_freq, int) and self.save_freq > 0 and \
            global_step % self.save_freq == 0

    def _variables(self):
        loop = self._loop
        metric_variables = [v for metric in loop.metrics for v in metric.variables]
        return list(loop.model.variables) + list(loop.optimizer.variables) + metric_variables

    def _hook_keys(self):
        keys, seen = [], {}
        for hook in self._hooks:
            if not hasattr(hook, "get_state"):
                keys.append(None)
                continue
            key = state_key(hook)
            seen[key] = seen.get(key, 0) + 1
            keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
        return keys

    def remove_stale_temporaries(self):
        """Temporary files left by a run killed in the middle of a backup (the one rule
        of `layout.temporaries`: never a live writer's)."""
        remove_left_over_temporaries(self.backup_dir)

    def save(self, position, logs=None):
        """Writes a complete backup at `position`."""
        import keras

        os.makedirs(self.backup_dir, exist_ok=True)
        self._save_index += 1
        index = self._save_index
        files = {"variables": f"variables-{index:06d}.npz"}
        variables = self._variables()
        values = [keras.ops.convert_to_numpy(v) for v in variables]
        if self._base is None:
            # The model's non-trainable variables (frozen layers: most of the backbone)
            # rarely change: written once, then each backup holds only what differs.
            frozen = {id(v) for v in self._loop.model.non_trainable_variables}
            self._base_indices = [i for i, v in enumerate(variables) if id(v) in frozen]
            self._base = {i: values[i] for i in self._base_indices}
            self._base_name = f"base-{index:06d}.npz"
            _save_arrays(os.path.join(self.backup_dir, self._base_name),
                         [values[i] for i in self._base_indices])
        files["base"] = self._base_name
        changed = [i for i, value in enumerate(values)
                   if i not in self._base or not np.array_equal(value, self._base[i])]
        _save_arrays(os.path.join(self.backup_dir, files["variables"]),
                     [values[i] for i in changed])
        hook_states = {}
        for n, (hook, key) in enumerate(zip(self._hooks, self._hook_keys())):
            if key is None:
                continue
            state, arrays = {}, {}
            for name, value in hook.get_state().items():
                (arrays if _is_arrays(value) else state)[name] = value
            for name, value in arrays.items():
                files[f"{key}/{name}"] = f"hook{n}-{name}-{index:06d}.npz"
                _save_arrays(os.path.join(self.backup_dir, files[f"{key}/{name}"]), value)
            hook_states[key] = {"class": type(hook).__name__, "state": state,
                                "arrays": sorted(arrays)}
        self._state = {
            "format": EXACT_FORMAT, "index": index, "epoch": position.epoch,
            "step": position.step, "stopped": position.stopped, "logs": logs,
            "files": files, "variable_paths": [v.path for v in variables],
            "base_indices": self._base_indices, "changed_indices": changed,
            "hooks": hook_states,
        }
        atomic_write_json(self._state_path, self._state)
        keep = set(files.values()) | {STATE_JSON}
        for path in glob.glob(os.path.join(glob.escape(self.backup_dir), "*")):
            name = os.path.basename(path)
            if name not in keep and not name.startswith("."):
                os.remove(path)

    def restore(self):
        """Assigns every saved variable and hook state; returns the Position, or None
        when there is no backup (call after the hooks' on_train_begin)."""
        self.remove_stale_temporaries()
        state = self._state
        if state is None:
            return None
        if state.get("format") != EXACT_FORMAT:
            raise BackupError(f"{self._state_path} has format {state.get('format')}, "
                              f"not {EXACT_FORMAT}")
        variables = self._variables()
        # Names up to Keras' per-process numbering ("dense_3"): the same model built
        # after others in one process (a sweep) still fits its backup.
        if [_unnumbered(v.path) for v in variables] != [
                _unnumbered(p) for p in state["variable_paths"]]:
            raise BackupError(f"the backup in {self.backup_dir} is of another model or "
                              "optimizer")
        try:
            base = _load_arrays(os.path.join(self.backup_dir, state["files"]["base"]))
            changed = _load_arrays(os.path.join(self.backup_dir, state["files"]["variables"]))
            self._base = dict(zip(state["base_indices"], base, strict=True))
            self._base_indices, self._base_name = state["base_indices"], state["files"]["base"]
            by_index = {**self._base, **dict(zip(state["changed_indices"], changed, strict=True))}
            if sorted(by_index) != list(range(len(variables))):
                raise BackupError(f"the backup in {self.backup_dir} does not fit this model")
            values = [by_index[i] for i in range(len(variables))]
            if len(values) != len(variables) or any(
                    tuple(value.shape) != tuple(variable.shape)
                    for value, variable in zip(values, variables)):
                raise BackupError(f"the backup in {self.backup_dir} does not fit this model")
            for variable, value in zip(variables, values):
                variable.assign(value)
            keys = self._hook_keys()
            if sorted(k for k in keys if k) != sorted(state["hooks"]):
                raise BackupError(
                    f"the backup's hooks {sorted(state['hooks'])} differ from this run's "
                    f"{sorted(k for k in keys if k)}")
            for hook, key in zip(self._hooks, keys):
                if key is None:
                    continue
                saved = state["hooks"][key]
                if saved["class"] != type(hook).__name__:
                    raise BackupError(f"the backup's hook {key} is a {saved['class']}, not a "
                                      f"{type(hook).__name__}")
                hook_state = dict(saved["state"])
                for name in saved["arrays"]:
                    hook_state[name] = _load_arrays(
                        os.path.join(self.backup_dir, state["files"][f"{key}/{name}"]))
                hook.set_state(hook_state)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            if isinstance(e, BackupError):
                raise
            raise BackupError(f"the backup in {self.backup_dir} cannot be read "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        return self.position

    def delete(self):
        shutil.rmtree(self.backup_dir, ignore_errors=True)
