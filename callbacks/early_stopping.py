"""`EarlyStopping`: stop when the monitored quantity stops improving (Keras 3)."""
from __future__ import annotations

import warnings

from tapefit.callbacks._monitor import MonitorCallback, to_json_number


class EarlyStopping(MonitorCallback):
    """Stops training when `monitor` has not improved for `patience` epochs.

    Same arguments and behaviour as `keras.callbacks.EarlyStopping` (Keras 3):
    with `restore_best_weights`, the best epoch's weights are restored at train
    end whether or not training was stopped early; `stopped_epoch` is the
    0-based epoch at which training was stopped (0 if it was not).
    """

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta=min_delta)
        self.patience = patience
        self.verbose = verbose
        self.baseline = baseline
        self.wait = 0
        self.stopped_epoch = 0
        self.restore_best_weights = restore_best_weights
        self.best_weights = None
        self.start_from_epoch = start_from_epoch
        self.best_epoch = 0

    def on_train_begin(self, logs=None):
        # Instances may be re-used across trainings.
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor_op is None:
            self._set_monitor_op()
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Nothing saved yet: the current weights are the best so far.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch

        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Restart the count only when both the previous best and the
            # baseline are beaten.
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return

        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print("Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)

    def get_monitor_value(self, logs):
        logs = logs or {}
        monitor_value = logs.get(self.monitor)
        if monitor_value is None:
            warnings.warn(
                f"Early stopping conditioned on metric `{self.monitor}` "
                "which is not available. "
                f"Available metrics are: {','.join(list(logs.keys()))}",
                stacklevel=2,
            )
        return monitor_value

    # ---- resumable state ----------------------------------------------------
    def get_state(self):
        """Counters (JSON numbers) and, under `best_weights`, the best epoch's weights
        (a list of arrays, or None)."""
        return {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": to_json_number(self.best),
            "best_epoch": self.best_epoch,
            "has_best_weights": self.best_weights is not None,
            "best_weights": self.best_weights,
        }

    def set_state(self, state, best_weights=None):
        """Restores `get_state()`; call after `on_train_begin` (which resets it).

        The best weights come from `state["best_weights"]` or, when the state went
        through JSON without them, from `best_weights`.
        """
        self.wait = state["wait"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        if best_weights is None:
            best_weights = state.get("best_weights")
        if state.get("has_best_weights") and best_weights is None:
            raise ValueError("This EarlyStopping state had best weights: pass `best_weights`.")
        self.best_weights = list(best_weights) if state.get("has_best_weights") else None
