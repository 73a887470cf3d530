"""Shared machinery of the hook conformance tests.

A *scenario* is the event stream of one fit() run (epochs of training batches,
an optional validation run, epoch logs). `drive()` plays it on one hook attached
to one model, like Keras' fit loop does (stopping on `model.stop_training`),
and records after every event: the exception raised (if any), the warnings,
the logs as the hook left them, and a hook-specific snapshot. Running it once on
our hook and once on the Keras namesake, each on its own model with the same
weights, and comparing the two records is the conformance check.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import warnings

import keras
import numpy as np

CASES = 200  # Generated cases per hook.


class Rng(random.Random):
    """A seeded generator of case parameters; its str() names the case."""

    def __init__(self, name, index):
        super().__init__(f"{name}-{index}")
        self.name = f"{name} case #{index}"

    def integer(self, low, high):
        return self.randint(low, high)

    def boolean(self):
        return self.random() < 0.5

    def __str__(self):
        return self.name


def cases(name, n=CASES):
    """`n` seeded generators, one per case (deterministic across runs)."""
    for index in range(n):
        yield Rng(name, index)

LOG_KEYS = ("accuracy", "loss", "val_accuracy", "val_loss")


# ---- models -------------------------------------------------------------------
def tiny_model():
    """Dense(2) on 4 inputs, with fixed names (so both copies serialise the same)."""
    return keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(2, name="dense")],
                            name="tiny")


class ModelPair:
    """The Keras side's model (compiled, like fit's) and ours (uncompiled, optimizer set).

    Both start from the same weights; `ours_compiled` is a third copy compiled
    like the Keras one, to check our hooks on fit's models too.
    """

    LR = 0.01

    def __init__(self, optimizer="adam"):
        keras.utils.set_random_seed(1)
        self.keras = tiny_model()
        self.ours = tiny_model()
        self.ours_compiled = tiny_model()
        self.initial = [np.asarray(w) for w in self.keras.get_weights()]
        x = np.zeros((2, 4), "float32")
        y = np.zeros((2,), "int32")
        for model in (self.keras, self.ours_compiled):
            model.compile(optimizer=self._optimizer(optimizer),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            model.evaluate(x, y, verbose=0)  # Builds the compiled metrics.
        self.ours.optimizer = self._optimizer(optimizer)
        for model in self.models():
            model.optimizer.build(model.trainable_variables)
        self.reset()

    def _optimizer(self, name):
        # A fixed name: legacy .h5 files store it.
        return keras.optimizers.get({"class_name": name,
                                     "config": {"learning_rate": self.LR, "name": name}})

    def models(self):
        return (self.keras, self.ours, self.ours_compiled)

    def reset(self, lr=None, models=None):
        """Initial weights, zeroed optimizer state, learning rate `lr` (all models
        or just `models`)."""
        for model in models or self.models():
            for v, w in zip(model.weights, self.initial):
                v.assign(w)
            model.stop_training = False
            model._initial_epoch = None
            for v in model.optimizer.variables:
                v.assign(np.zeros(v.shape, v.dtype))
            model.optimizer.learning_rate = self.LR if lr is None else lr

    def ours_for(self, compiled):
        return self.ours_compiled if compiled else self.ours


def perturb(model, seed, epoch, batch=-1, optimizer=False):
    """Gives the model weights (and optimizer slots) that identify (seed, epoch, batch)."""
    rng = np.random.default_rng([seed, epoch, batch + 1])
    for v in model.weights:
        v.assign(rng.standard_normal(v.shape).astype(v.dtype))
    if not optimizer:
        return
    for v in model.optimizer.variables:
        if v.name not in ("iteration", "learning_rate"):  # Slots only.
            v.assign(rng.standard_normal(v.shape).astype(v.dtype))


# ---- normalisation for exact comparisons ------------------------------------
def norm(value):
    """Makes values comparable with ==: floats by their bits (NaN == NaN), arrays by bytes."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, np.generic):
        return ("np", value.dtype.str, value.tobytes())
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if keras.ops.is_tensor(value):
        return norm(keras.ops.convert_to_numpy(value))
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(norm(v) for v in value)
    return repr(value)


def weights_of(model):
    return norm([np.asarray(w) for w in model.get_weights()])


def lr_of(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def check_lr(pair, lr):
    """Guards the harness itself: every model starts at the intended learning rate."""
    for model in pair.models():
        assert lr_of(model) == float(np.float32(lr)), (lr_of(model), lr)


# ---- scenarios ------------------------------------------------------------------
@dataclasses.dataclass
class Epoch:
    batch_logs: list   # Running-mean logs after each training batch.
    val_batches: int   # Validation batches (0: no validation this epoch).
    val_logs: dict     # What on_test_end receives.
    logs: dict         # What on_epoch_end receives.


@dataclasses.dataclass
class Scenario:
    epochs: list
    seed: int = 0

    @property
    def n_epochs(self):
        return len(self.epochs)


# Events after which the (costlier) model state is snapshotted.
EPOCH_EVENTS = frozenset(("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end"))


def drive(hook, model, scenario, snapshot=None, params=None, before_epoch_end=None,
          warn_filter=None, interrupt_at=None, initial_epoch=0, after_batch=None):
    """Plays `scenario` on `hook` like Keras fit() does; returns the records.

    `snapshot(hook, model, event)` describes the state after each event.
    `interrupt_at`: stop after that many events without calling on_train_end
    (a crash). `before_epoch_end(model, epoch)` runs before every on_epoch_end
    (defaults to perturbing the weights, so every epoch has its own weights);
    `after_batch(model, epoch, step)` after every training step (default: count
    `optimizer.iterations`).
    """
    records = []
    n_events = [0]
    snapshot = snapshot or (lambda h, m, e: None)
    if after_batch is None:
        def after_batch(m, epoch, step):
            m.optimizer.iterations.assign_add(1)
    if before_epoch_end is None:
        def before_epoch_end(m, epoch):
            perturb(m, scenario.seed, epoch)

    class Crash(Exception):
        pass

    def call(name, *args, logs=None, keyword_logs=False):
        if interrupt_at is not None and n_events[0] >= interrupt_at:
            raise Crash()
        n_events[0] += 1
        logs = copy.deepcopy(logs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            error = None
            try:
                if keyword_logs:
                    getattr(hook, name)(*args, logs=logs)
                else:
                    getattr(hook, name)(*args, logs)
            except Exception as e:  # noqa: BLE001 - recorded and compared.
                error = (type(e).__name__, str(e))
        caught = [(w.category.__name__, str(w.message)) for w in caught
                  if not issubclass(w.category, DeprecationWarning)
                  and (warn_filter is None or warn_filter(w))]
        records.append((name, args, error, caught, norm(logs), snapshot(hook, model, name)))
        return error

    hook.set_model(model)
    hook.set_params(params or {"verbose": 0, "epochs": scenario.n_epochs,
                               "steps": max((len(e.batch_logs) for e in scenario.epochs),
                                            default=0)})
    try:
        if call("on_train_begin"):
            return records
        start = getattr(model, "_initial_epoch", None) or initial_epoch
        last_logs = None
        for epoch in range(start, scenario.n_epochs):
            spec = scenario.epochs[epoch]
            if call("on_epoch_begin", epoch, logs=None):
                return records
            for step, batch_logs in enumerate(spec.batch_logs):
                if call("on_train_batch_begin", step, logs=None, keyword_logs=True):
                    return records
                after_batch(model, epoch, step)
                if call("on_train_batch_end", step, logs=batch_logs, keyword_logs=True):
                    return records
                if model.stop_training:
                    break
            if spec.val_batches:
                if call("on_test_begin", logs=None):
                    return records
                for step in range(spec.val_batches):
                    if call("on_test_batch_begin", step, logs=None, keyword_logs=True):
                        return records
                    if call("on_test_batch_end", step, logs=spec.val_logs, keyword_logs=True):
                        return records
                if call("on_test_end", logs=spec.val_logs):
                    return records
            before_epoch_end(model, epoch)
            if call("on_epoch_end", epoch, logs=spec.logs):
                return records
            last_logs = spec.logs
            if model.stop_training:
                break
        call("on_train_end", logs=last_logs)
    except Crash:
        pass
    return records


def assert_same_records(ours, theirs, context=""):
    """Compares two `drive` records event by event, with a readable message."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, (f"{context}\nevent #{i}: {b[0]}{b[1]}\n  ours:  {a[2:]}\n"
                        f"  keras: {b[2:]}")
    assert len(ours) == len(theirs), (
        f"{context}\nours ran {len(ours)} events, keras {len(theirs)}; "
        f"last: ours {ours[-1][:3] if ours else None}, keras {theirs[-1][:3] if theirs else None}")


# ---- value generators -------------------------------------------------------------
SPECIAL = (math.nan, math.inf, -math.inf)
ANCHORS = (0.25, 0.5, 0.75, 1.0)


def monitored_values(rng, min_delta, n, references=()):
    """`n` values full of ties, min_delta edges, float32-invisible changes and NaN/inf.

    Ties and edges are taken relative to the previous value, the running
    minimum or maximum (the best so far in either mode) or one of `references`
    (e.g. a baseline).
    """
    values = []
    previous = low = high = rng.choice(ANCHORS)
    for _ in range(n):
        kind = rng.choice(
            ["tie", "tie", "delta", "delta", "tiny", "tiny", "anchor", "random", "special"])
        reference = rng.choice((previous, low, high) + tuple(references))
        if kind == "tie":
            value = reference
        elif kind == "delta":
            value = reference + rng.choice((-2, -1, -0.5, 0.5, 1, 2)) * min_delta
        elif kind == "tiny":  # Differs from `reference` only around float32 precision.
            value = reference + rng.choice((-1e-9, 1e-9, -3e-8, 3e-8, -1e-7, 1e-7))
        elif kind == "anchor":
            value = rng.choice(ANCHORS)
        elif kind == "random":
            value = rng.uniform(-2.0, 2.0)
        else:
            value = rng.choice(SPECIAL)
        if not math.isnan(value) and not math.isinf(value):
            previous, low, high = value, min(low, value), max(high, value)
        values.append(value)
    return values


def epoch_logs_streams(rng, n_epochs, monitor, min_delta, missing=True, references=()):
    """Per-epoch logs dicts (sorted keys, like fit's) where `monitor` follows
    `monitored_values` and is sometimes missing."""
    values = monitored_values(rng, min_delta, n_epochs, references)
    streams = []
    for epoch in range(n_epochs):
        logs = {k: rng.choice(ANCHORS) for k in LOG_KEYS}
        logs[monitor] = values[epoch]
        if missing and rng.integer(0, 9) == 0:
            del logs[monitor]
        streams.append(dict(sorted(logs.items())))
    return streams


def scenario_from_logs(logs_list, seed, batches=0, val_batches=0):
    epochs = []
    for logs in logs_list:
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        epochs.append(Epoch(batch_logs=[dict(train)] * batches,
                            val_batches=val_batches if val else 0, val_logs=val, logs=logs))
    return Scenario(epochs=epochs, seed=seed)


MIN_DELTAS = (0, 0, 1e-4, 0.01, 0.1, 0.25, -0.25)
MONITORS = ("val_loss", "loss", "val_accuracy", "accuracy")
MODES = ("auto", "min", "max")
