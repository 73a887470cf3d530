"""EarlyStopping, ReduceLROnPlateau and LearningRateScheduler against Keras' own.

Every case plays one generated epoch stream on our hook and on the Keras
callback and compares, after every event: stop flag, counters, best value,
learning rate, logs (e.g. the `learning_rate` they add), weights, warnings and
exceptions.
"""
import warnings

import keras
import numpy as np
import pytest
from cb_helpers import (
    EPOCH_EVENTS,
    MIN_DELTAS,
    MODES,
    MONITORS,
    ModelPair,
    assert_same_records,
    cases,
    check_lr,
    drive,
    epoch_logs_streams,
    lr_of,
    norm,
    scenario_from_logs,
    weights_of,
)

from tapefit import callbacks


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


def monitor_setup(rng):
    """monitor, mode, min_delta; sometimes an unknown mode (warns, falls back to
    auto) or a monitor that is not in the logs (and cannot be resolved in auto mode)."""
    return (rng.choice(MONITORS + ("val_loss", "val_accuracy", "val_unknown")),
            rng.choice(MODES + ("auto", "bogus")),
            rng.choice(MIN_DELTAS))


def scenario(rng, monitor, min_delta, max_epochs=10, references=()):
    references = tuple(r for r in references if r is not None and abs(r) < 10)
    logs = epoch_logs_streams(rng, rng.integer(1, max_epochs),
                              "val_loss" if monitor == "val_unknown" else monitor, min_delta,
                              references=references)
    return scenario_from_logs(logs, seed=rng.integer(0, 2**16), batches=rng.integer(0, 2),
                              val_batches=1)


def construct(make, module):
    """The hook and the warnings its constructor gave (e.g. for an unknown mode)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hook = make(module)
    return hook, [(w.category.__name__, str(w.message)) for w in caught]


def run_both(pair, make, scenario, compiled, snapshot, lr=None):
    """The same scenario on Keras' hook and on ours; returns (ours, keras) records."""
    pair.reset(lr=lr)
    check_lr(pair, lr or pair.LR)
    keras_hook, keras_warnings = construct(make, keras.callbacks)
    our_hook, our_warnings = construct(make, callbacks)
    assert our_warnings == keras_warnings
    theirs = drive(keras_hook, pair.keras, scenario, snapshot)
    ours = drive(our_hook, pair.ours_for(compiled), scenario, snapshot)
    return ours, theirs


# ---- EarlyStopping ------------------------------------------------------------
def early_stopping_snapshot(hook, model, event):
    state = (bool(model.stop_training), hook.wait, norm(hook.best), hook.stopped_epoch,
             getattr(hook, "best_epoch", None))
    if event not in EPOCH_EVENTS:
        return state
    return state + (norm(hook.best_weights), weights_of(model))


def test_early_stopping_conformance(pair):
    for rng in cases("EarlyStopping"):
        monitor, mode, min_delta = monitor_setup(rng)
        kwargs = dict(
            monitor=monitor, mode=mode, min_delta=min_delta, patience=rng.integer(0, 4),
            baseline=rng.choice((None, None, None, 0.5, 0.75, 0.25, 1e9, -1e9)),
            restore_best_weights=rng.boolean(),
            start_from_epoch=rng.choice((0, 0, 1, 2, 5)), verbose=rng.choice((0, 1)))
        compiled = rng.boolean()
        stream = scenario(rng, monitor, min_delta, references=(kwargs["baseline"],))
        ours, theirs = run_both(pair, lambda m: m.EarlyStopping(**kwargs), stream, compiled,
                                early_stopping_snapshot)
        assert_same_records(ours, theirs, f"{rng}: {kwargs} compiled={compiled}\n{stream}")


# ---- ReduceLROnPlateau --------------------------------------------------------
def plateau_snapshot(hook, model, event):
    state = (hook.wait, hook.cooldown_counter, norm(hook.best))
    if event not in EPOCH_EVENTS:
        return state
    return state + (norm(lr_of(model)), weights_of(model))


def test_reduce_lr_on_plateau_conformance(pair):
    for rng in cases("ReduceLROnPlateau"):
        monitor, mode, min_delta = monitor_setup(rng)
        kwargs = dict(
            monitor=monitor, mode=mode, min_delta=min_delta,
            factor=rng.choice((0.1, 0.5, 0.2, 0.9, 0.0)), patience=rng.integer(0, 3),
            cooldown=rng.integer(0, 2), min_lr=rng.choice((0.0, 1e-4, 1e-3, 5e-3, 0.01, 0.05)),
            verbose=rng.choice((0, 1)))
        # Learning rates at, just above and far above min_lr (float32 rounding edges).
        min_lr = kwargs["min_lr"]
        lr = rng.choice((0.01, 0.1, 1e-3, 1.0, min_lr or 0.3, min_lr * 1.0000001 or 0.3,
                         min_lr * 1.5 or 0.3))
        compiled = rng.boolean()
        stream = scenario(rng, monitor, min_delta)
        ours, theirs = run_both(pair, lambda m: m.ReduceLROnPlateau(**kwargs), stream, compiled,
                                plateau_snapshot, lr=lr)
        assert_same_records(ours, theirs, f"{rng}: {kwargs} lr={lr} compiled={compiled}\n{stream}")


def test_reduce_lr_on_plateau_rejects_factor_one():
    for module in (callbacks, keras.callbacks):
        with pytest.raises(ValueError, match="factor"):
            module.ReduceLROnPlateau(factor=1.0)


# ---- LearningRateScheduler ------------------------------------------------------
def make_schedule(kind, rate):
    """A family of schedules, including the one-argument form and bad outputs."""
    return {
        "constant": lambda epoch, lr: lr,
        "step": lambda epoch, lr: lr * rate if epoch and epoch % 2 == 0 else lr,
        "exponential": lambda epoch, lr: float(lr * np.exp(-rate * epoch)),
        "float32": lambda epoch, lr: np.float32(0.1 / (epoch + 1)),
        "float64": lambda epoch, lr: np.float64(rate) ** epoch,
        "one_arg": lambda epoch: 0.5 ** epoch,
        "int": lambda epoch, lr: 1 if epoch > 1 else 0.1,  # Not a float: ValueError.
        "tiny": lambda epoch, lr: 1e-45 * (epoch + 1),  # float32 subnormals.
    }[kind]


SCHEDULES = ("constant", "step", "exponential", "float32", "float64", "one_arg", "int", "tiny")


def scheduler_snapshot(hook, model, event):
    if event not in EPOCH_EVENTS:
        return None
    return norm(lr_of(model)), weights_of(model)


def test_learning_rate_scheduler_conformance(pair):
    for rng in cases("LearningRateScheduler"):
        kind, rate = rng.choice(SCHEDULES), rng.choice((0.1, 0.5, 0.9, 2.0))
        lr, verbose = rng.choice((0.01, 0.1, 1.0)), rng.choice((0, 1))
        logs = epoch_logs_streams(rng, rng.integer(1, 6), "val_loss", 0.0)
        # Sometimes empty logs: Keras then adds learning_rate to a private dict.
        logs = [{} if rng.integer(0, 5) == 0 else x for x in logs]
        stream = scenario_from_logs(logs, seed=rng.integer(0, 2**16),
                                    batches=rng.integer(0, 2), val_batches=1)
        compiled = rng.boolean()
        ours, theirs = run_both(
            pair, lambda m: m.LearningRateScheduler(make_schedule(kind, rate), verbose=verbose),
            stream, compiled, scheduler_snapshot, lr=lr)
        assert_same_records(ours, theirs, f"{rng}: {kind} rate={rate} lr={lr}\n{stream}")
