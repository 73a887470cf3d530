"""Optimizers and per-epoch learning-rate schedules, shared by both loops.

A schedule is a `schedule(epoch, lr) -> lr` function for a
LearningRateScheduler hook, so the fit path (keras.callbacks) and the custom
path (callbacks/) set the same learning rate at the same moment.
"""
from __future__ import annotations

import dataclasses
import math

import keras

OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}


def make_optimizer(cfg) -> keras.optimizers.Optimizer:
    """A fresh optimizer for one phase (never carried across phases).

    Under mixed_float16 it scales the loss dynamically, as `compile()` would
    wrap it, so that both loops step the same way.
    """
    optimizer = OPTIMIZERS[cfg.optimizer](learning_rate=cfg.resolved_learning_rate)
    if cfg.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


@dataclasses.dataclass(frozen=True)
class EpochSchedule:
    """Picklable per-epoch schedule; `constant` keeps the current rate so that
    plateau reductions persist."""

    kind: str
    initial: float
    decay_rate: float
    decay_epochs: int
    epochs: int

    def __call__(self, epoch: int, lr: float) -> float:
        if self.kind == "constant":
            return lr
        if self.kind == "step":
            return self.initial * self.decay_rate ** (epoch // self.decay_epochs)
        if self.kind == "exponential":
            return self.initial * self.decay_rate ** (epoch / self.decay_epochs)
        if self.kind == "cosine":
            return 0.5 * self.initial * (1.0 + math.cos(math.pi * epoch / max(self.epochs, 1)))
        raise ValueError(f"unknown schedule {self.kind!r}")


def make_schedule(cfg) -> EpochSchedule:
    return EpochSchedule(cfg.lr_schedule, cfg.resolved_learning_rate, cfg.lr_decay_rate,
                         max(cfg.lr_decay_epochs, 1), cfg.epochs)
