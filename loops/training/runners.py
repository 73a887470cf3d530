"""One runner per loop, behind one small interface (Orbit's `StandardTrainer` role):

    runner = RUNNERS[cfg.loop](plan)
    train_data, validation_data = runner.data()    # batches, positioned for a resume
    hooks = runner.hooks()                           # the configured hooks, ours or Keras'
    logs = runner.fit(train_data, validation_data, hooks)
    runner.summary(logs)                             # what the phase did, for people

and, for `--phase=evaluate`, `RUNNERS[cfg.loop].score(model, batches, cfg, trained)`:
the loop's own evaluation of a trained model (no plan: nothing trains).

`CustomRunner` trains with `loops.training.custom.CustomLoop` (and the frozen-prefix feature
cache); `FitRunner` with `model.compile()` + `model.fit()` and `keras.callbacks`.
"""
from __future__ import annotations

import csv
import logging
import math
import os

import keras

from tapefit import callbacks as our_callbacks
from tapefit import input_pipeline
from tapefit.flags.errors import ConfigError
from tapefit.layout.atomic import atomic_write_text
from tapefit.layout.paths import BACKUP_DIR, BEST_WEIGHTS, FINAL_WEIGHTS, LOG_CSV, TENSORBOARD_DIR
from tapefit.loops.caches import feature_cache, feature_precision
from tapefit.loops.console import command_flags, keras_verbose, progress_hook
from tapefit.loops.optim.optimizers import make_optimizer
from tapefit.loops.optim.schedules import is_step_schedule
from tapefit.loops.training.checkpointer import BackupError, Checkpointer, Position
from tapefit.loops.training.custom import CustomLoop, make_loss, make_metrics
from tapefit.loops.training.hooks import hook_specs, instantiate
from tapefit.loops.training.strategy import prepare_fit
from tapefit.model.augment import mix_batches, mixes, uncacheable


class Runner:
    """What both loops share: the plan, the optimizer, the hooks from one spec list."""

    module = None  # Where the hook classes come from.

    def __init__(self, plan):
        self.plan = plan
        self.cfg = plan.cfg
        with plan.strategy.scope():
            self.optimizer = make_optimizer(self.cfg, plan.steps_per_epoch, plan.model,
                                            base_rate=plan.learning_rate)
        self.position = plan.state.position
        self._hooks = []

    def _specs(self):
        cfg = self.cfg
        # Only the chief posts to --remote_monitor_url.
        cfg = cfg if self.plan.chief else cfg.replace(remote_monitor_url=None)
        specs = hook_specs(cfg, self.plan.run_dir, resuming=self.position is not None,
                           learning_rate=self.plan.learning_rate)
        if is_step_schedule(cfg):  # The optimizer's own schedule sets the rate every step.
            specs = [spec for spec in specs if spec[0] != "LearningRateScheduler"]
        return specs

    def hooks(self):
        hooks = instantiate(self._specs(), self.module)
        if self.plan.extra_hooks:
            hooks += self.plan.extra_hooks(self.module)
        self._hooks = hooks
        return hooks

    def _batches(self, train_examples, validation_examples, position, features=False):
        # None: images decoded once, kept. Cached features are arrays already.
        cache = False if features or self.cfg.image_cache == "off" else None
        train, _ = input_pipeline.train_batches(
            train_examples, self.plan.splits.sizes["train"], self.cfg.batch_size, self.cfg.seed,
            cache=cache, start_epoch=position.epoch if position else 0,
            skip_batches=position.step if position else 0)
        if mixes(self.cfg.augment):  # --augment=mixup,cutmix: both loops, the same stream.
            train = mix_batches(train, self.cfg.augment, len(self.plan.splits.class_names),
                                self.cfg.seed, first_step=(
                                    position.epoch * self.plan.steps_per_epoch + position.step
                                    if position else 0))
        return train, input_pipeline.eval_batches(validation_examples, self.cfg.batch_size,
                                                  cache=cache)

    def delete_backup(self):
        backup = os.path.join(self.plan.run_dir, BACKUP_DIR)
        if os.path.isdir(backup):
            import shutil
            shutil.rmtree(backup, ignore_errors=True)

    # ---- what the phase did ------------------------------------------------------------
    def _history(self, logs):
        path = os.path.join(self.plan.run_dir, LOG_CSV)
        if self.cfg.csv_log and os.path.exists(path):
            with open(path, newline="") as f:
                return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
        return [dict(logs, epoch=None)] if logs else []

    def summary(self, logs) -> dict:
        cfg, run_dir = self.cfg, self.plan.run_dir
        history = self._history(logs)
        monitor = cfg.monitor
        values = [(row.get(monitor), i) for i, row in enumerate(history)
                  if isinstance(row.get(monitor), float) and math.isfinite(row[monitor])]
        best_value, best_epoch = None, None
        if values:
            pick = min if _mode(cfg.mode, monitor) == "min" else max
            best_value, index = pick(values, key=lambda v: v[0])
            best_epoch = index + 1
        stop_reason, stopped_epoch = "finished", None
        early = next((h for h in self._hooks if type(h).__name__ == "EarlyStopping"), None)
        last_loss = (logs or {}).get("loss")
        if last_loss is not None and not math.isfinite(last_loss):
            stop_reason, stopped_epoch = "nan", len(history)
        elif early is not None and getattr(early, "stopped_epoch", 0):
            stop_reason, stopped_epoch = "early_stopping", early.stopped_epoch + 1
        elif len(history) < cfg.epochs and history:
            stop_reason, stopped_epoch = "stopped", len(history)
        best = os.path.join(run_dir, BEST_WEIGHTS)
        return {
            "phase": cfg.phase, "loop": cfg.loop, "run_dir": run_dir, "workdir": cfg.workdir,
            "epochs_run": len(history), "epochs": cfg.epochs,
            "stop_reason": stop_reason, "stopped_epoch": stopped_epoch,
            "monitor": monitor, "best_value": best_value, "best_epoch": best_epoch,
            "files": {"best": best if os.path.exists(best) else None,
                      "final": os.path.join(run_dir, FINAL_WEIGHTS),
                      "log": os.path.join(run_dir, LOG_CSV) if cfg.csv_log else None,
                      "tensorboard": (os.path.join(run_dir, TENSORBOARD_DIR)
                                      if cfg.tensorboard else None)},
            "last_epoch_logs": logs,
            "command_flags": command_flags(cfg),
        }


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _mode(mode, monitor):
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


def precision_key(key: dict, precision: str) -> dict:
    """The feature cache key of features computed in `precision`: bfloat16 features
    (and each way of computing them) never stand in for float32 ones."""
    if precision == "float32":
        return key
    return dict(key, feature_precision=precision, bfloat16=feature_precision.BF16_HOW)


class CustomRunner(Runner):
    """tf.function + GradientTape (loops/training/custom.py), on cached frozen features
    when it can."""

    module = our_callbacks

    def __init__(self, plan):
        super().__init__(plan)
        self.train_model = None
        self.cache_mode = "off"
        self.unfreeze = None  # Gradual unfreezing: the hook that sets each stage.
        self.loop = None

    def data(self):
        """Batches of images, or of cached frozen-prefix features when the cache
        engages. With gradual unfreezing the model is first put in the stage of the
        epoch the phase starts (or resumes) at, and the cache is cut for that stage."""
        if self.cfg.unfreeze_schedule:
            from tapefit.loops.optim.schedules import UnfreezeSchedule
            model = self.plan.model
            with self.plan.strategy.scope():  # Slots for every weight of every stage.
                self.optimizer.build(model.trainable_variables)
            self.unfreeze = UnfreezeSchedule(model, self.cfg, on_change=self._new_stage)
            self.unfreeze.apply(self.position.epoch if self.position else 0)
        return self._data(self.position)

    def _data(self, position):
        plan, cfg = self.plan, self.cfg
        splits = plan.splits
        train_examples, validation_examples = splits.train, splits.validation
        cut, mode = None, "off"
        self.train_model = None
        if cfg.feature_cache != "off" and uncacheable(cfg.augment):
            logging.info("feature cache off: --augment=%s changes every image", cfg.augment)
        elif cfg.feature_cache != "off":
            cut, reason = feature_cache.find_cut(plan.model)
            mode = feature_cache.resolve(cfg.feature_cache, cut, reason,
                                         splits.sizes["train"] + splits.sizes["validation"])
        self.cache_mode = mode
        if mode != "off":
            self.train_model = cut.suffix
            key = feature_cache.data_key(cfg)
            root = None
            if mode == "disk":
                root = (cfg.feature_cache_dir
                        or os.path.join(cfg.workdir if plan.chief else plan.run_dir,
                                        feature_cache.CACHE_DIR))
            folders = {}

            def folder_of(precision):
                """The disk cache folder of the features in `precision` (hashed once)."""
                if precision not in folders:
                    folders[precision] = os.path.join(root, feature_cache.fingerprint(
                            cut, precision_key(key, precision)))
                return folders[precision]

            chooser, precision = None, "float32"
            if cfg.feature_precision != "float32":  # loops/caches/feature_precision.py
                choice = self._precision(folder_of if root else None)
                precision = choice.precision
                if precision == "auto":  # Probed in the training split's pass.
                    # In training-batch units: with flips a training batch runs each
                    # photo twice, a validation batch once.
                    passes = 2 if cut.flip is not None else 1
                    batches = (math.ceil(splits.sizes["train"] / cfg.batch_size)
                               + math.ceil(splits.sizes["validation"] / cfg.batch_size) / passes)
                    chooser = feature_precision.InPass(cut.prefix, choice.reason, batches)
                else:
                    feature_precision.log_choice(precision, choice.reason)
                    if precision != "float32":
                        cut.forward = feature_precision.forward(cut.prefix, precision)

            def place(split, precision):
                """Where `split`'s features in `precision` live (None: in memory; a
                function of the precision while `auto` has not chosen it)."""
                if root is None:
                    return None
                if precision == "auto":
                    return lambda chosen: place(split, chosen)
                return os.path.join(folder_of(precision), split)

            train_examples = feature_cache.cached_features(
                    cut, splits.train, splits.sizes["train"], place("train", precision),
                    cfg.batch_size, training=True, chooser=chooser)
            if chooser is not None:
                feature_precision.log_choice(chooser.precision, chooser.reason)
                cut.forward, precision = chooser.forward, chooser.precision
            validation_examples = feature_cache.cached_features(
                    cut, splits.validation, splits.sizes["validation"],
                    place("validation", precision), cfg.batch_size, training=False)
        return self._batches(train_examples, validation_examples, position,
                             features=mode != "off")

    def _precision(self, folder_of) -> "feature_precision.Choice":
        """The frozen pass's precision: under `auto` with a disk cache (`folder_of`, the
        folder of a precision's features), the precision whose features an earlier run
        left there (no probe to pay), else `feature_precision.resolve`'s ("auto": probe
        it in the pass)."""
        choice = feature_precision.resolve(self.cfg.feature_precision)
        if choice.precision == "auto" and folder_of:
            for precision in ("float32", "bfloat16"):
                folder = folder_of(precision)
                if feature_cache.on_disk(folder, self.plan.splits.sizes):
                    return feature_precision.Choice(
                            precision, f"the features in {precision} are on disk already, "
                            f"computed by an earlier run ({folder})")
        return choice

    def _new_stage(self, epoch):
        """Gradual unfreezing moved to a new stage at the start of `epoch`: re-cut the
        feature cache just before the new lowest trainable block and train on the new
        features from this epoch's first batch (the same data order: the stream starts
        at `epoch`), or, without the cache, trace the steps for the new trainable set."""
        if self.cache_mode == "off":
            self.loop.retrace()
            return
        self.loop.switch_data(*self._data(Position(epoch, 0)), train_model=self.train_model)

    def _specs(self):
        # Exact resume is the loop's own (loops/training/checkpointer.py, given to fit), not a hook.
        return [spec for spec in super()._specs() if spec[0] != "BackupAndRestore"]

    def hooks(self):
        hooks = super().hooks()
        if self.cfg.verbose:
            hooks.append(progress_hook(our_callbacks))
        return hooks

    def make_loop(self) -> CustomLoop:
        """The phase's `CustomLoop`: its model, optimizer, loss and metrics (`fit`, and the
        learning-rate finder, which takes steps on it)."""
        plan, cfg = self.plan, self.cfg
        with plan.strategy.scope():  # Metric variables must be the strategy's (synced).
            loss_fn, metrics = make_loss(cfg), make_metrics(cfg)
        self.loop = CustomLoop(plan.model, self.optimizer, plan.strategy,
                               jit_compile=cfg.jit_compile,
                               steps_per_execution=cfg.steps_per_execution,
                               train_model=self.train_model, loss_fn=loss_fn, metrics=metrics)
        return self.loop

    @staticmethod
    def score(model, batches, cfg, trained) -> dict:
        """The loss and metrics of `model` on `batches` (`trained`: the trained run's
        config, whose optimizer the loop is built with)."""
        return CustomLoop(model, make_optimizer(trained)).evaluate(batches)

    def fit(self, train_data, validation_data, hooks):
        plan, cfg = self.plan, self.cfg
        loop = self.make_loop()
        if self.unfreeze is not None:  # Gradual unfreezing: first at every epoch start.
            hooks = [self.unfreeze, *hooks]
        try:
            checkpointer = Checkpointer(
                os.path.join(plan.run_dir, BACKUP_DIR),
                save_freq=cfg.backup_every_steps or "epoch") if cfg.backup else None
            return loop.fit(train_data, epochs=cfg.epochs,
                            steps_per_epoch=plan.steps_per_epoch,
                            validation_data=validation_data, callbacks=hooks,
                            verbose=keras_verbose(cfg.verbose), checkpointer=checkpointer)
        except BackupError as e:
            raise ConfigError(f"{e}; pass --overwrite to start the phase over") from None


class FitRunner(Runner):
    """Keras `compile()` + `fit()` with `keras.callbacks` (epoch-level BackupAndRestore)."""

    module = keras.callbacks

    def data(self):
        if self.cfg.feature_cache in ("memory", "disk"):  # Asked for, not "auto": say so.
            logging.info("feature cache off: --loop=fit trains on the images (the cache is "
                         "the custom loop's; pass --loop=custom to use it)")
        # Keras' BackupAndRestore restarts its epoch: the stream starts at that epoch.
        if self.position is not None:
            self.position = type(self.position)(self.position.epoch, 0)
            _keep_csv_rows(os.path.join(self.plan.run_dir, LOG_CSV), self.position.epoch)
        return self._batches(self.plan.splits.train, self.plan.splits.validation,
                             self.position)

    @staticmethod
    def score(model, batches, cfg, trained) -> dict:
        """The loss and metrics of `model` on `batches`: `model.evaluate`."""
        model.compile(loss=make_loss(), metrics=make_metrics(), jit_compile=cfg.jit_compile)
        return model.evaluate(batches, return_dict=True, verbose=0)

    def fit(self, train_data, validation_data, hooks):
        plan, cfg, model = self.plan, self.cfg, self.plan.model
        with plan.strategy.scope():
            model.compile(optimizer=self.optimizer, loss=make_loss(cfg),
                          metrics=make_metrics(cfg),
                          jit_compile=cfg.jit_compile,
                          steps_per_execution=cfg.steps_per_execution)
        prepare_fit(model, plan.strategy, train_data)
        history = model.fit(train_data, epochs=cfg.epochs, steps_per_epoch=plan.steps_per_epoch,
                            validation_data=validation_data, shuffle=False, callbacks=hooks,
                            verbose=keras_verbose(cfg.verbose))
        return {k: v[-1] for k, v in history.history.items()} if history.history else None


def _keep_csv_rows(path: str, rows: int) -> None:
    """Cuts a CSV log back to its header and `rows` rows (Keras' CSVLogger appends)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    keep = lines[:1 + rows] if rows else []
    if keep != lines:
        atomic_write_text(path, "".join(keep))


RUNNERS = {"custom": CustomRunner, "fit": FitRunner}
