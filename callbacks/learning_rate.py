"""`LearningRateScheduler` and `ReduceLROnPlateau`: set `model.optimizer.learning_rate`."""
from __future__ import annotations

import warnings

import numpy as np
from keras import ops

from tapefit.callbacks._monitor import MonitorCallback, to_json_number
from tapefit.callbacks.base import Callback


def _current_lr(optimizer):
    return float(ops.convert_to_numpy(optimizer.learning_rate))


def _optimizers(model):
    """(name, optimizer) pairs; several for Keras' multi-optimizer wrappers."""
    optimizer = model.optimizer
    if hasattr(optimizer, "optimizers"):
        return [(opt.name, opt) for opt in optimizer.optimizers]
    return [(None, optimizer)]


def log_learning_rates(model, logs):
    """Adds the current learning rate(s) to `logs`, under Keras' key names."""
    for name, optimizer in _optimizers(model):
        key = "learning_rate" if name is None else f"learning_rate_{name}"
        logs[key] = _current_lr(optimizer)


class LearningRateScheduler(Callback):
    """Sets the learning rate to `schedule(epoch, lr)` at the start of every epoch.

    `schedule(epoch)` (one argument) is accepted too, as in Keras; the schedule
    must return a float. At epoch end the learning rate is added to the logs
    as `logs["learning_rate"]`.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def _update_optimizer_lr(self, optimizer, epoch):
        if not hasattr(optimizer, "learning_rate"):
            raise ValueError('Optimizer must have a "learning_rate" attribute.')
        try:  # The (epoch, lr) form.
            learning_rate = self.schedule(epoch, _current_lr(optimizer))
        except TypeError:  # The old (epoch) form.
            learning_rate = self.schedule(epoch)
        if not isinstance(learning_rate, (float, np.float32, np.float64)):
            raise ValueError(
                f"The output of the `schedule` function should be a float. Got: {learning_rate}")
        optimizer.learning_rate = learning_rate
        return learning_rate

    def on_epoch_begin(self, epoch, logs=None):
        for name, optimizer in _optimizers(self.model):
            learning_rate = self._update_optimizer_lr(optimizer, epoch)
            if self.verbose > 0:
                which = "learning rate" if name is None else f"{name} learning rate"
                print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting "
                      f"{which} to {learning_rate}.")

    def on_epoch_end(self, epoch, logs=None):
        log_learning_rates(self.model, logs or {})


class ReduceLROnPlateau(MonitorCallback):
    """Multiplies the learning rate by `factor` when `monitor` stops improving.

    Same arguments and behaviour as `keras.callbacks.ReduceLROnPlateau`,
    including `logs["learning_rate"]` (the rate used during the epoch) at epoch end.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0, **kwargs):
        super().__init__(monitor, mode, min_delta=min_delta)
        if factor >= 1.0:
            raise ValueError(
                f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}")
        self.factor = factor
        self.min_lr = min_lr
        self.patience = patience
        self.verbose = verbose
        self.cooldown = cooldown
        self.cooldown_counter = 0
        self.wait = 0

    def _reset(self):
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def _reduce_optimizer_lr(self, optimizer, epoch, name=""):
        old_lr = _current_lr(optimizer)
        if old_lr > np.float32(self.min_lr):
            new_lr = max(old_lr * self.factor, self.min_lr)
            optimizer.learning_rate = new_lr
            if self.verbose > 0:
                name_str = f" {name}" if name else ""
                print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing{name_str} "
                      f"learning rate to {new_lr}.")
            return True
        return False

    def on_train_begin(self, logs=None):
        self._reset()

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        logs = logs or {}
        log_learning_rates(self.model, logs)
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"Learning rate reduction is conditioned on metric `{self.monitor}` "
                "which is not available. Available metrics are: "
                f"{','.join(list(logs.keys()))}.",
                stacklevel=2,
            )
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                reduced = False
                for name, optimizer in _optimizers(self.model):
                    if self._reduce_optimizer_lr(optimizer, epoch, name or ""):
                        reduced = True
                if reduced:
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def in_cooldown(self):
        return self.cooldown_counter > 0

    # ---- resumable state ----------------------------------------------------
    def get_state(self):
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter,
                "best": to_json_number(self.best)}

    def set_state(self, state):
        """Restores `get_state()`; call after `on_train_begin` (which resets it)."""
        self.wait = state["wait"]
        self.cooldown_counter = state["cooldown_counter"]
        self.best = state["best"]
