"""One list of hook specifications, instantiated from `callbacks` (custom loop)
or from `keras.callbacks` (fit loop), so both loops get the same hooks with the
same arguments, in the same order."""
from __future__ import annotations

import os

from loops.schedules import make_schedule

BEST_WEIGHTS = "best.weights.h5"
FINAL_WEIGHTS = "final.weights.h5"
LOG_CSV = "log.csv"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"


def hook_specs(cfg, run_dir: str) -> list[tuple[str, dict]]:
    """(class name, constructor kwargs) for every hook the config asks for."""
    specs = [("LearningRateScheduler", dict(schedule=make_schedule(cfg)))]
    if cfg.reduce_lr_on_plateau:
        specs.append(("ReduceLROnPlateau", dict(
            monitor=cfg.monitor, mode=cfg.mode, factor=cfg.reduce_lr_factor,
            patience=cfg.reduce_lr_patience, min_delta=cfg.min_delta,
            cooldown=cfg.reduce_lr_cooldown, min_lr=cfg.reduce_lr_min_lr)))
    if cfg.terminate_on_nan:
        specs.append(("TerminateOnNaN", {}))
    specs.append(("ModelCheckpoint", dict(
        filepath=os.path.join(run_dir, BEST_WEIGHTS), monitor=cfg.monitor, mode=cfg.mode,
        save_best_only=True, save_weights_only=True)))
    if not cfg.save_best_only:
        specs.append(("ModelCheckpoint", dict(
            filepath=os.path.join(run_dir, "checkpoints", "epoch{epoch:02d}.weights.h5"),
            save_best_only=False, save_weights_only=True)))
    if cfg.early_stopping:
        specs.append(("EarlyStopping", dict(
            monitor=cfg.monitor, mode=cfg.mode, patience=cfg.early_stopping_patience,
            min_delta=cfg.min_delta, restore_best_weights=cfg.restore_best_weights)))
    if cfg.csv_log:
        # A resumed run appends (the custom loop first drops rows written after its backup).
        specs.append(("CSVLogger", dict(filename=os.path.join(run_dir, LOG_CSV),
                                        append=cfg.backup)))
    if cfg.tensorboard:
        specs.append(("TensorBoard", dict(
            log_dir=os.path.join(run_dir, TENSORBOARD_DIR), write_graph=False,
            profile_batch=0)))
    if cfg.remote_monitor_url:
        specs.append(("RemoteMonitor", _remote_monitor_kwargs(cfg.remote_monitor_url)))
    if cfg.backup and cfg.loop == "fit":
        # The custom loop backs up more than this hook can (loops/resume.py): exact,
        # step-level resume. fit() gets Keras' epoch-level BackupAndRestore.
        specs.append(("BackupAndRestore", dict(backup_dir=os.path.join(run_dir, BACKUP_DIR))))
    return specs


def _remote_monitor_kwargs(url: str) -> dict:
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}"
    return dict(root=root, path=parts.path or "/publish/epoch/end/", send_as_json=True)


def instantiate(specs, module) -> list:
    return [getattr(module, name)(**kwargs) for name, kwargs in specs]
