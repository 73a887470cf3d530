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

**Exact mode** (tapefit's custom loop, `bind(loop, hooks)`): Keras' hook restarts at
the beginning of an epoch and forgets the hooks, the RNG and the data position. Bound
to a loop, the same hook saves, every `save_freq` steps and at each epoch end:
- every variable of the model (Keras' dropout/augmentation seed-generator states
  included), of the optimizer (slots, iterations, learning rate) and of the loop's
  running metrics, bit for bit, in a NumPy `.npz` (no pickle);
- the position: epoch, steps done in it, whether training had stopped;
- every hook's `get_state()`, keyed by the hook's stable name (`state_key`, else its
  class name), not by its place in the list; arrays in a state (EarlyStopping's best
  weights) go to their own `.npz`.
The loop drives it (`restore()` after `on_train_begin`, `save(position)` after the
hooks saw a step or an epoch end) and positions the data stream from (epoch, step).
The model's non-trainable variables (a frozen backbone) go once to a `base-*.npz`;
each backup's `variables-*.npz` holds only the variables that differ from it.
Layout: `state.json` is the commit point, replaced atomically after the files it
names are fully written; older files are removed after it.
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

from callbacks.atomic_io import (
    atomic_save,
    atomic_save_weights,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from callbacks.base import Callback

FORMAT = 1
METADATA = "training_metadata.json"
KERAS_WEIGHTS = "latest.weights.h5"
EXACT_FORMAT = 2
STATE_JSON = "state.json"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: the epoch to continue, the batches of it already trained,
    and whether a hook had stopped training (only on_train_end is left)."""

    epoch: int = 0
    step: int = 0
    stopped: bool = False


def state_key(hook) -> str:
    """A hook's stable name in a backup: its `state_key` or its class name."""
    return getattr(hook, "state_key", None) or type(hook).__name__


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


class BackupError(ValueError):
    """A backup that cannot be restored (another model, missing or corrupt files)."""


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
        if self.bound:  # Exact mode: the loop calls restore().
            self._remove_stale_temporaries()
            return
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
        if self.bound:  # Exact mode: the loop calls save() after every hook saw the epoch.
            return
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        if self.save_freq == "epoch":
            self._save_model()

    def on_train_batch_end(self, batch, logs=None):
        if self.bound:
            return
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
        """Temporary files left by a run killed in the middle of a backup."""
        pattern = os.path.join(glob.escape(self.backup_dir), ".*.tmp-*")
        for path in glob.glob(pattern):
            os.remove(path)

    def on_train_end(self, logs=None):
        if self.bound:  # Exact mode: deleted by the phase after its final save.
            return
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir)

    # ---- exact mode (bound to tapefit's custom loop) -----------------------------
    def bind(self, loop, hooks):
        """Exact mode: back up `loop`'s whole state and `hooks`' states. The loop then
        calls `restore()` and `save()`; the hook's own events do nothing."""
        self._loop, self._hooks = loop, [h for h in hooks if h is not self]
        self._exact_state = None
        self._state_path = os.path.join(self.backup_dir, STATE_JSON)
        if os.path.exists(self._state_path):
            try:
                self._exact_state = read_json(self._state_path)
            except ValueError:
                raise BackupError(f"the backup {self._state_path} is corrupt") from None
        self._save_index = self._exact_state["index"] if self._exact_state else 0
        self._base, self._base_indices, self._base_name = None, [], None
        return self

    @property
    def bound(self) -> bool:
        return getattr(self, "_loop", None) is not None

    @property
    def position(self):
        """The saved Position (exact mode), None when there is no backup."""
        state = getattr(self, "_exact_state", None)
        if state is None:
            return None
        return Position(state["epoch"], state["step"], state["stopped"])

    @property
    def last_logs(self):
        state = getattr(self, "_exact_state", None)
        return state.get("logs") if state else None

    def due(self, global_step: int) -> bool:
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

    def save(self, position, logs=None):
        """Writes a complete backup at `position` (exact mode)."""
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
        self._exact_state = {
            "format": EXACT_FORMAT, "index": index, "epoch": position.epoch,
            "step": position.step, "stopped": position.stopped, "logs": logs,
            "files": files, "variable_paths": [v.path for v in variables],
            "base_indices": self._base_indices, "changed_indices": changed,
            "hooks": hook_states,
        }
        atomic_write_json(self._state_path, self._exact_state)
        keep = set(files.values()) | {STATE_JSON}
        for path in glob.glob(os.path.join(glob.escape(self.backup_dir), "*")):
            name = os.path.basename(path)
            if name not in keep and not name.startswith("."):
                os.remove(path)

    def restore(self):
        """Assigns every saved variable and hook state; returns the Position, or None
        when there is no backup (exact mode; call after on_train_begin)."""
        state = self._exact_state
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
