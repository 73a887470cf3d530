"""One phase of the recipe (head, finetune or evaluate), through either loop.

Entry points turn flags into a `Config` and call `run(cfg)`; everything a phase
needs is derived from that object.
"""
from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import shutil
import tempfile
import zlib

import keras
import tensorflow as tf

import callbacks as hooks_module
import input_pipeline
from flags.config import Config, ConfigError
from callbacks.atomic_io import atomic_save, atomic_write_text
from loops import feature_cache, resume
from loops.custom import CustomLoop
from loops.hooks import BACKUP_DIR, BEST_WEIGHTS, FINAL_WEIGHTS, hook_specs, instantiate
from loops.schedules import make_optimizer
from loops.strategy import (barrier, check_supported, is_chief, make_strategy, prepare_fit,
                            task)
from model import build_model, set_trainable

CONFIG_JSON = "config.json"
CLASSES_JSON = "classes.json"
EVALUATION_JSON = "evaluation.json"
SKIPPED_FILES = "skipped_files.txt"
# Fields that define the network: a finetune or evaluate run must match its head run.
ARCHITECTURE_FIELDS = ("backbone", "alpha", "image_size", "dropout", "augment")


def configure_determinism(cfg: Config) -> None:
    """Seeds Python, NumPy, TF and Keras; with --deterministic also makes TF ops deterministic."""
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy(cfg.mixed_precision)


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    """Atomic: a crash leaves the previous file intact."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def init_checkpoint(cfg: Config) -> str:
    """The weights a finetune run starts from, or a one-line error."""
    path = cfg.init_checkpoint or os.path.join(cfg.phase_dir("head"), BEST_WEIGHTS)
    if not os.path.isfile(path):
        raise ConfigError(
            f"finetune needs head weights, but {path} does not exist: run "
            f"`train.py --phase=head --workdir={cfg.workdir}` first or pass --init_checkpoint=PATH")
    return path


def check_matches_head(cfg: Config) -> None:
    head_config = os.path.join(cfg.phase_dir("head"), CONFIG_JSON)
    if cfg.init_checkpoint or not os.path.isfile(head_config):
        return
    head = read_json(head_config)
    diffs = [f"--{k}={getattr(cfg, k)} (head: {head[k]})"
             for k in ARCHITECTURE_FIELDS if head.get(k) != getattr(cfg, k)]
    if diffs:
        raise ConfigError(
            f"finetune flags differ from the head run in {head_config}: {', '.join(diffs)}; "
            "pass the head run's values")


def check_writable(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --workdir={workdir} ({e.strerror}); pass a "
                          "writable --workdir") from None
    if not os.access(workdir, os.W_OK):
        raise ConfigError(f"--workdir={workdir} is not writable; pass a writable --workdir")


# Flags that may change between a run and its resumption.
RESUMABLE_CHANGES = ("verbose", "overwrite")


def prepare_run_dir(cfg: Config, run_dir: str, writer: bool = True) -> None:
    """Refuses to train over a finished or foreign run unless --overwrite; with
    --backup, an unfinished run of the same flags is resumed. Every worker of a
    multi-worker job checks (and fails alike); only the `writer` needs --workdir."""
    if writer:
        check_writable(cfg.workdir)
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
        return
    if cfg.overwrite:
        return
    if os.path.exists(os.path.join(run_dir, FINAL_WEIGHTS)):
        raise ConfigError(
            f"phase '{cfg.phase}' in {run_dir} is finished; pass --overwrite to train it "
            "again, or another --workdir")
    if not cfg.backup:
        raise ConfigError(
            f"{run_dir} holds an unfinished run; pass --backup to resume it or --overwrite "
            "to start over")
    saved_path = os.path.join(run_dir, CONFIG_JSON)
    if os.path.exists(saved_path):
        saved = read_json(saved_path)
        diffs = [f"--{k}={getattr(cfg, k)} (was {saved.get(k)})" for k in cfg.to_dict()
                 if k not in RESUMABLE_CHANGES and saved.get(k) != getattr(cfg, k)]
        if diffs:
            raise ConfigError(
                f"cannot resume {run_dir} with other flags: {', '.join(diffs)}; pass the "
                "same flags, or --overwrite to start over")


def load_weights(model, path):
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as e:
        raise ConfigError(
            f"checkpoint {path} does not fit this model ({str(e).splitlines()[0][:160]}); "
            "pass the flags of the run that wrote it") from None


def build(cfg: Config, strategy, num_classes: int, checkpoint: str | None = None):
    """Seeds right before building (Keras draws layer seeds at construction)."""
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_model(cfg, num_classes, weights=None if checkpoint else "from_config")
        if checkpoint:
            load_weights(model, checkpoint)
        set_trainable(model, cfg.phase, cfg.resolved_unfreeze_from)
    return model


def plan_feature_cache(cfg: Config, model, sizes):
    """(cut, off|memory|disk) for the custom loop; logs why the cache is off."""
    if cfg.feature_cache == "off":
        return None, "off"
    cut, reason = feature_cache.find_cut(model)
    mode = feature_cache.resolve(cfg.feature_cache, cut, reason,
                                 sizes["train"] + sizes["validation"])
    if mode != "off":
        logging.info("feature cache (%s): training from %s on cached features", mode, cut.layer)
    return cut, mode


def train(cfg: Config) -> dict:
    """Runs the head or finetune phase in <workdir>/<phase>; returns a JSON-able summary."""
    _, logs = train_phase(cfg)
    return {"phase": cfg.phase, "loop": cfg.loop, "last_epoch_logs": logs,
            "run_dir": cfg.run_dir}


def worker_run_dir(cfg: Config, run_dir: str) -> str:
    """A non-chief worker's run directory: a temporary one, deleted at the end,
    holding a copy of the chief's backup (`run_dir` must be on a shared file system
    for that), so every worker resumes from the same state."""
    task_type, index, _ = task()
    folder = tempfile.mkdtemp(prefix=f"tapefit-{task_type}{index}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    backup_dir = os.path.join(run_dir, BACKUP_DIR)
    if cfg.backup and not cfg.overwrite and os.path.isdir(backup_dir):
        shutil.copytree(backup_dir, os.path.join(folder, BACKUP_DIR),
                        ignore=shutil.ignore_patterns(".*"))  # Not files being written.
    return folder


def backup_token(cfg: Config, run_dir: str) -> int:
    """A number that workers resuming from the same backup agree on (0: none)."""
    backup_dir = os.path.join(run_dir, BACKUP_DIR)
    if not cfg.backup or cfg.overwrite or not os.path.isdir(backup_dir):
        return 0
    names = sorted(name for name in os.listdir(backup_dir) if not name.startswith("."))
    listing = [(name, os.path.getsize(os.path.join(backup_dir, name))) for name in names]
    return zlib.crc32(json.dumps(listing).encode()) if names else 0


def train_phase(cfg: Config, run_dir: str | None = None, extra_hooks=None):
    """Trains one phase; returns (model, last epoch logs).

    `run_dir` overrides <workdir>/<phase> (compare.py runs both loops side by side);
    `extra_hooks(module)` returns more hooks built from `callbacks` (custom loop) or
    `keras.callbacks` (fit loop), appended after the configured ones.
    Under --strategy=multi_worker only the chief writes `run_dir`; the other
    workers run the same steps and hooks in a temporary directory.
    """
    configure_determinism(cfg)
    checkpoint = None
    if cfg.phase == "finetune":
        checkpoint = init_checkpoint(cfg)
        check_matches_head(cfg)
    run_dir = run_dir or cfg.run_dir
    check_supported(cfg)
    chief = is_chief(cfg.strategy)
    prepare_run_dir(cfg, run_dir, writer=chief)
    if not chief:
        run_dir = worker_run_dir(cfg, run_dir)
    strategy = make_strategy(cfg.strategy)
    # Every worker has read the chief's backup (the chief may go on), the same one.
    if not barrier(strategy, backup_token(cfg, run_dir)):
        raise ConfigError(
            f"the workers see different backups in --workdir={cfg.workdir}: to resume with "
            "--backup, --workdir must be on a file system that every worker shares")
    splits = input_pipeline.load_splits(cfg)
    if splits.skipped:
        logging.warning("skipped %d unreadable files, e.g. %s (full list in %s)",
                        len(splits.skipped), splits.skipped[0],
                        os.path.join(run_dir, SKIPPED_FILES))
    model = build(cfg, strategy, len(splits.class_names), checkpoint)

    if cfg.overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    resume.remove_partial_files(run_dir)
    write_json(os.path.join(run_dir, CONFIG_JSON), cfg.to_dict())
    write_json(os.path.join(run_dir, CLASSES_JSON), list(splits.class_names))
    if splits.skipped:
        with open(os.path.join(run_dir, SKIPPED_FILES), "w") as f:
            f.write("\n".join(splits.skipped) + "\n")

    train_examples, validation_examples, train_model = splits.train, splits.validation, None
    if cfg.loop == "custom":
        cut, cache_mode = plan_feature_cache(cfg, model, splits.sizes)
        if cache_mode != "off":
            train_model = cut.suffix
            folder = None
            if cache_mode == "disk":
                root = cfg.workdir if chief else run_dir  # Other workers: their own.
                folder = os.path.join(root, feature_cache.CACHE_DIR,
                                      feature_cache.fingerprint(cut, feature_cache.data_key(cfg)))
            train_examples, validation_examples = (
                feature_cache.cached_features(cut, images, splits.sizes[split],
                                              folder and os.path.join(folder, split),
                                              cfg.batch_size)
                for split, images in (("train", splits.train), ("validation", splits.validation)))
    backup = None
    if cfg.backup and cfg.loop == "custom":
        backup = resume.Backup(os.path.join(run_dir, BACKUP_DIR), cfg.backup_every_steps)
    position = (backup and backup.position) or resume.Position()
    if position.epoch or position.step:
        logging.info("resuming from the backup at epoch %d, step %d", position.epoch + 1,
                     position.step)
    train_data, steps_per_epoch = input_pipeline.train_batches(
        train_examples, splits.sizes["train"], cfg.batch_size, cfg.seed,
        start_epoch=position.epoch, skip_batches=position.step)
    if steps_per_epoch % cfg.steps_per_execution:
        # fit() would run whole executions across the epoch boundary, shifting epochs.
        raise ConfigError(
            f"--steps_per_execution={cfg.steps_per_execution} does not divide the "
            f"{steps_per_epoch} steps of an epoch; pass a divisor of {steps_per_epoch}")
    validation_data = input_pipeline.eval_batches(validation_examples, cfg.batch_size)
    # Only the chief posts to --remote_monitor_url (that hook comes after every hook
    # with a state: the others' backups still match the chief's hook by hook).
    specs = hook_specs(cfg if chief else cfg.replace(remote_monitor_url=None), run_dir)
    with strategy.scope():
        optimizer = make_optimizer(cfg)
    if cfg.loop == "custom":
        hooks = instantiate(specs, hooks_module)
        hooks += extra_hooks(hooks_module) if extra_hooks else []
        if cfg.verbose:
            hooks.append(hooks_module.ProgbarLogger())
        loop = CustomLoop(model, optimizer, strategy, jit_compile=cfg.jit_compile,
                          steps_per_execution=cfg.steps_per_execution,
                          train_model=train_model)
        logs = loop.fit(train_data, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=validation_data, callbacks=hooks, verbose=cfg.verbose,
                        backup=backup)
    else:
        hooks = instantiate(specs, keras.callbacks)
        hooks += extra_hooks(keras.callbacks) if extra_hooks else []
        with strategy.scope():
            model.compile(optimizer=optimizer, loss=loss_fn(), metrics=["accuracy"],
                          jit_compile=cfg.jit_compile,
                          steps_per_execution=cfg.steps_per_execution)
        prepare_fit(model, strategy, train_data)
        history = model.fit(train_data, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                            validation_data=validation_data, shuffle=False, callbacks=hooks,
                            verbose=cfg.verbose)
        logs = {k: v[-1] for k, v in history.history.items()} if history.history else None
    save_weights(model, os.path.join(run_dir, FINAL_WEIGHTS))
    if backup is not None:  # Only now: a kill before the final save resumes from it.
        backup.delete()
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
    return model, logs


def save_weights(model, path):
    """Atomic `model.save_weights`; a full disk is a one-line error, the old file survives."""
    try:
        atomic_save(lambda tmp: model.save_weights(tmp, overwrite=True), path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ConfigError(f"no space left on the device while saving {path}; free some "
                              "space or pass another --workdir (the previous file is intact)")
        raise


def run(cfg: Config) -> dict:
    """The phase cfg names; a full disk anywhere (checkpoints, logs) is a one-line error."""
    try:
        return evaluate(cfg) if cfg.phase == "evaluate" else train(cfg)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ConfigError(f"no space left on the device ({e.filename or cfg.workdir}); "
                              "free some space or pass another --workdir; files saved "
                              "earlier are intact") from None
        raise


def newest_phase(workdir: str) -> str:
    for phase in ("finetune", "head"):
        if os.path.isfile(os.path.join(workdir, phase, BEST_WEIGHTS)):
            return phase
    raise ConfigError(
        f"no trained weights in {workdir}: run `train.py --phase=head --workdir={workdir}` first")


def trained_config(workdir: str, phase: str) -> tuple[Config, list[str]]:
    run_dir = os.path.join(workdir, phase)
    cfg = Config.from_dict(read_json(os.path.join(run_dir, CONFIG_JSON)))
    return cfg, read_json(os.path.join(run_dir, CLASSES_JSON))


def load_trained_model(workdir: str):
    """The newest phase's best model, its config and class names (evaluate, predict)."""
    phase = newest_phase(workdir)
    cfg, class_names = trained_config(workdir, phase)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, len(class_names), weights=None)
    load_weights(model, os.path.join(workdir, phase, BEST_WEIGHTS))
    return model, cfg, class_names, phase


def evaluate(cfg: Config) -> dict:
    """Evaluates the newest phase's best weights on the test split."""
    configure_determinism(cfg)
    model, trained, class_names, phase = load_trained_model(cfg.workdir)
    data_cfg = trained.replace(phase="evaluate", workdir=cfg.workdir)
    splits = input_pipeline.load_splits(data_cfg)
    if tuple(splits.class_names) != tuple(class_names):
        raise ConfigError(
            f"test classes {list(splits.class_names)} differ from the trained ones {class_names}")
    test = input_pipeline.eval_batches(splits.test, cfg.batch_size)
    if cfg.loop == "fit":
        model.compile(loss=loss_fn(), metrics=["accuracy"], jit_compile=cfg.jit_compile)
        logs = model.evaluate(test, return_dict=True, verbose=0)
    else:
        logs = CustomLoop(model, make_optimizer(trained)).evaluate(test)
    result = {"phase": phase, "weights": os.path.join(cfg.workdir, phase, BEST_WEIGHTS),
              "test_examples": splits.sizes["test"], **logs}
    if is_chief(cfg.strategy):
        os.makedirs(cfg.run_dir, exist_ok=True)
        write_json(os.path.join(cfg.run_dir, EVALUATION_JSON), result)
    return result

