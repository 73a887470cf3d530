"""One list of hook specifications, instantiated from `callbacks` (custom loop)
or from `keras.callbacks` (fit loop), so both loops get the same hooks with the
same arguments, in the same order.

One rule on top of Keras' hooks, in both loops: a checkpoint is never written with
non-finite weights (`FiniteOnly`), so `best.weights.h5` stays the last finite one.
"""
from __future__ import annotations

import os

import numpy as np

from tapefit.layout import paths
from tapefit.layout.paths import BACKUP_DIR, LOG_CSV, TENSORBOARD_DIR  # noqa: F401  (runners' import)
from tapefit.loops.optim.schedules import make_schedule


def hook_specs(cfg, run_dir: str, resuming: bool = False,
               learning_rate: float | None = None) -> list[tuple[str, dict]]:
    """(class name, constructor kwargs) for every hook the config asks for; `resuming`:
    the run continues from a backup (the CSV log is appended to); `learning_rate`: the
    plan's initial rate (`Plan.learning_rate`; None: the configuration's own)."""
    specs = [("LearningRateScheduler", dict(schedule=make_schedule(cfg, learning_rate)))]
    if cfg.reduce_lr_on_plateau:
        specs.append(("ReduceLROnPlateau", dict(
            monitor=cfg.monitor, mode=cfg.mode, factor=cfg.reduce_lr_factor,
            patience=cfg.reduce_lr_patience, min_delta=cfg.min_delta,
            cooldown=cfg.reduce_lr_cooldown, min_lr=cfg.reduce_lr_min_lr)))
    if cfg.terminate_on_nan:
        specs.append(("TerminateOnNaN", {}))
    specs.append(("ModelCheckpoint", dict(
        filepath=os.path.join(run_dir, paths.BEST_WEIGHTS), monitor=cfg.monitor, mode=cfg.mode,
        save_best_only=True, save_weights_only=True)))
    if not cfg.save_best_only:
        specs.append(("ModelCheckpoint", dict(
            filepath=paths.epoch_weights(run_dir),
            save_best_only=False, save_weights_only=True)))
    if cfg.early_stopping:
        specs.append(("EarlyStopping", dict(
            monitor=cfg.monitor, mode=cfg.mode, patience=cfg.early_stopping_patience,
            min_delta=cfg.min_delta, restore_best_weights=cfg.restore_best_weights)))
    if cfg.csv_log:
        # A resumed run appends (its state cuts rows written after the backup).
        specs.append(("CSVLogger", dict(filename=os.path.join(run_dir, paths.LOG_CSV),
                                        append=resuming)))
    if cfg.tensorboard:
        specs.append(("TensorBoard", dict(
            log_dir=os.path.join(run_dir, paths.TENSORBOARD_DIR), write_graph=False,
            profile_batch=0)))
    if cfg.remote_monitor_url:
        specs.append(("RemoteMonitor", _remote_monitor_kwargs(cfg.remote_monitor_url)))
    if cfg.backup:
        # The custom loop binds its BackupAndRestore (exact, step-level resume, every
        # --backup_every_steps); fit() gets Keras' epoch-level one.
        every = cfg.backup_every_steps if cfg.loop == "custom" else 0
        specs.append(("BackupAndRestore", dict(backup_dir=os.path.join(run_dir, paths.BACKUP_DIR),
                                               save_freq=every or "epoch")))
    return specs


def _remote_monitor_kwargs(url: str) -> dict:
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}"
    return dict(root=root, path=parts.path or "/publish/epoch/end/", send_as_json=True)


def weights_are_finite(model) -> bool:
    import keras
    return all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights
               if np.issubdtype(np.dtype(w.dtype), np.floating))


def logs_are_finite(logs) -> bool:
    """No loss in `logs` (loss, val_loss) is NaN or infinite."""
    return all(np.isfinite(value) for key, value in (logs or {}).items()
               if key in ("loss", "val_loss") and isinstance(value, (int, float)))


_FINITE_ONLY = {}


def finite_only(cls):
    """`cls` (a ModelCheckpoint) that skips a save while the weights are not finite."""
    if cls not in _FINITE_ONLY:
        class FiniteOnly(cls):
            skipped_non_finite = None  # The last epoch whose save was skipped.

            def on_epoch_end(self, epoch, logs=None):
                if logs_are_finite(logs) and weights_are_finite(self.model):
                    super().on_epoch_end(epoch, logs)
                else:
                    self.skipped_non_finite = epoch

        FiniteOnly.__name__ = FiniteOnly.__qualname__ = cls.__name__
        _FINITE_ONLY[cls] = FiniteOnly
    return _FINITE_ONLY[cls]


def instantiate(specs, module) -> list:
    hooks = []
    for name, kwargs in specs:
        cls = getattr(module, name)
        hooks.append((finite_only(cls) if name == "ModelCheckpoint" else cls)(**kwargs))
    return hooks
