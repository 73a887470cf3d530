"""Shared logic of the hooks that watch a metric (Keras' `MonitorCallback`).

Improvements are decided with `keras.ops.less` / `keras.ops.greater`, exactly as
Keras does: Python floats become float32 tensors before the comparison, so two
values that differ only beyond float32 precision compare equal (a Keras quirk we
keep; see DIFFERENCES.md).
"""
from __future__ import annotations

import warnings

import keras
from keras import ops

from tapefit.callbacks.base import Callback

try:  # Where Keras 3 keeps the containers of compiled metrics.
    from keras.src.trainers.compile_utils import CompileMetrics, MetricsList
    _METRIC_CONTAINERS = (CompileMetrics, MetricsList)
except ImportError:  # pragma: no cover - other Keras layouts.
    _METRIC_CONTAINERS = ()


def metric_direction(model, metric_name):
    """The direction ("up", "down" or None) of the compiled metric `metric_name`.

    Looks into the model's compiled metrics exactly like Keras (the last match wins).
    """
    direction = None
    if not hasattr(model, "metrics"):
        return None
    for metric in model.metrics:
        # Keras only looks inside the `CompileMetrics` / `MetricsList` containers.
        if not isinstance(metric, _METRIC_CONTAINERS):
            continue
        for m in metric.metrics:
            if m.name == metric_name and hasattr(m, "_direction"):
                direction = m._direction
    return direction


def registered_direction(metric_name):
    """The direction of Keras' built-in metric `metric_name` ("acc" means accuracy)."""
    if metric_name == "acc":
        metric_name = "accuracy"
    try:
        metric = keras.metrics.get(metric_name)
    except (ValueError, TypeError):
        return None
    return getattr(metric, "_direction", None)


class MonitorCallback(Callback):
    """Base of the hooks that monitor a quantity (monitor, mode, best, min_delta)."""

    def __init__(self, monitor="val_loss", mode="auto", baseline=None, min_delta=0):
        super().__init__()
        if mode not in ["auto", "min", "max"]:
            warnings.warn(
                f"{self.__class__.__name__} mode '{mode}' is unknown, fallback "
                "to auto mode.",
                stacklevel=2,
            )
            mode = "auto"
        self.monitor = monitor
        self.mode = mode
        self.best = baseline
        self.min_delta = abs(min_delta)
        self.monitor_op = None

    def _set_monitor_op(self):
        if self.mode == "min":
            self.monitor_op = ops.less
        elif self.mode == "max":
            self.monitor_op = ops.greater
        else:
            metric_name = self.monitor.removeprefix("val_")
            if metric_name == "loss":
                self.monitor_op = ops.less
            direction = metric_direction(self.model, metric_name)
            if direction is None and not getattr(self.model, "compiled", False):
                # The custom loop's model is not compiled: Keras would find no
                # metric and raise; use the direction of the metric fit() would
                # have compiled under that name (see DIFFERENCES.md).
                if self.monitor_op is None:
                    direction = registered_direction(metric_name)
            if direction is not None:
                self.monitor_op = ops.greater if direction == "up" else ops.less
            if self.monitor_op is None:
                raise ValueError(
                    f"{self.__class__.__name__} callback received "
                    f"monitor={self.monitor}, but Keras isn't able to "
                    "automatically determine whether that metric should be "
                    "maximized or minimized. Pass `mode='max'` in order to "
                    "monitor based on the highest metric value, or pass "
                    "`mode='min'` in order to use the lowest value."
                )
        if self.monitor_op == ops.less:
            self.min_delta *= -1

    def _is_improvement(self, monitor_value, reference_value):
        if reference_value is None:
            return True
        return bool(self.monitor_op(monitor_value - self.min_delta, reference_value))


def to_json_number(value):
    """A JSON-friendly copy of a monitored value (None stays None)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return value

