"""EarlyStopping, ReduceLROnPlateau and LearningRateScheduler against Keras' own.

Every case plays one generated epoch stream on our hook and on the Keras
callback and compares, after every event: stop flag, counters, best value,
learning rate, logs (e.g. the `learning_rate` they add), weights, warnings and
exceptions.
"""
import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import callbacks
from cb_helpers import (CASES, EPOCH_EVENTS, MIN_DELTAS, MODES, MONITORS, SETTINGS, ModelPair,
                        assert_same_records, check_lr, drive, epoch_logs_streams, lr_of, norm,
                        scenario_from_logs, weights_of)


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


def monitor_setup():
    """monitor, mode, min_delta; sometimes an unknown mode (warns, falls back to auto)
    or a monitor that is not in the logs / cannot be resolved in auto mode."""
    return st.tuples(
        st.sampled_from(MONITORS + ("val_loss", "val_accuracy", "val_unknown")),
        st.sampled_from(MODES + ("auto", "bogus")),
        st.sampled_from(MIN_DELTAS))


def _both(pair, make, case, compiled, snapshot, **drive_kwargs):
    """Runs the same scenario on Keras' hook and ours; returns both records."""
    pair.reset(lr=case.get("lr"))
    check_lr(pair, case.get("lr") or pair.LR)
    keras_records = drive(make(keras.callbacks), pair.keras, case["scenario"], snapshot,
                          **drive_kwargs)
    ours_records = drive(make(callbacks), pair.ours_for(compiled), case["scenario"], snapshot,
                         **drive_kwargs)
    return ours_records, keras_records


def _scenario(draw, monitor, min_delta, max_epochs=10, references=()):
    n_epochs = draw(st.integers(1, max_epochs))
    references = tuple(r for r in references if r is not None and abs(r) < 10)
    logs = draw(epoch_logs_streams(n_epochs, "val_loss" if monitor == "val_unknown" else monitor,
                                   min_delta, references=references))
    return scenario_from_logs(logs, seed=draw(st.integers(0, 2**16)),
                              batches=draw(st.integers(0, 2)), val_batches=1)


# ---- EarlyStopping ------------------------------------------------------------
def _early_stopping_snapshot(hook, model, event):
    state = (bool(model.stop_training), hook.wait, norm(hook.best), hook.stopped_epoch,
             getattr(hook, "best_epoch", None))
    if event not in EPOCH_EVENTS:
        return state
    return state + (norm(hook.best_weights), weights_of(model))


def test_early_stopping_conformance(pair):
    count = [0]

    @SETTINGS
    @given(st.data())
    def check(data):
        count[0] += 1
        monitor, mode, min_delta = data.draw(monitor_setup())
        kwargs = dict(
            monitor=monitor, mode=mode, min_delta=min_delta,
            patience=data.draw(st.integers(0, 4)),
            baseline=data.draw(st.sampled_from((None, None, 0.5, 0.75, 0.25, 1e9, -1e9))),
            restore_best_weights=data.draw(st.booleans()),
            start_from_epoch=data.draw(st.sampled_from((0, 0, 1, 2, 5))),
            verbose=data.draw(st.sampled_from((0, 1))))
        case = {"scenario": _scenario(data.draw, monitor, min_delta,
                                      references=(kwargs["baseline"],))}
        compiled = data.draw(st.booleans())
        ours, theirs = _both(pair, lambda m: m.EarlyStopping(**kwargs), case, compiled,
                             _early_stopping_snapshot)
        assert_same_records(ours, theirs, f"{kwargs} compiled={compiled}")

    check()
    assert count[0] >= CASES


# ---- ReduceLROnPlateau --------------------------------------------------------
def _plateau_snapshot(hook, model, event):
    state = (hook.wait, hook.cooldown_counter, norm(hook.best))
    if event not in EPOCH_EVENTS:
        return state
    return state + (norm(lr_of(model)), weights_of(model))


def test_reduce_lr_on_plateau_conformance(pair):
    count = [0]

    @SETTINGS
    @given(st.data())
    def check(data):
        count[0] += 1
        monitor, mode, min_delta = data.draw(monitor_setup())
        kwargs = dict(
            monitor=monitor, mode=mode, min_delta=min_delta,
            factor=data.draw(st.sampled_from((0.1, 0.5, 0.2, 0.9, 0.0))),
            patience=data.draw(st.integers(0, 3)),
            cooldown=data.draw(st.integers(0, 2)),
            min_lr=data.draw(st.sampled_from((0.0, 1e-4, 1e-3, 5e-3, 0.01, 0.05))),
            verbose=data.draw(st.sampled_from((0, 1))))
        # Learning rates at, just above and far above min_lr (float32 rounding edges).
        min_lr = kwargs["min_lr"]
        lr = data.draw(st.sampled_from((0.01, 0.1, 1e-3, 1.0, min_lr or 0.3,
                                        min_lr * 1.0000001 or 0.3, min_lr * 1.5 or 0.3)))
        case = {"scenario": _scenario(data.draw, monitor, min_delta), "lr": lr}
        compiled = data.draw(st.booleans())
        ours, theirs = _both(pair, lambda m: m.ReduceLROnPlateau(**kwargs), case, compiled,
                             _plateau_snapshot)
        assert_same_records(ours, theirs, f"{kwargs} lr={lr} compiled={compiled}")

    check()
    assert count[0] >= CASES


def test_reduce_lr_on_plateau_rejects_factor_one():
    for module in (callbacks, keras.callbacks):
        with pytest.raises(ValueError, match="factor"):
            module.ReduceLROnPlateau(factor=1.0)


# ---- LearningRateScheduler ------------------------------------------------------
def _schedule(kind, rate):
    """A family of schedules, including the one-argument form and bad outputs."""
    if kind == "constant":
        return lambda epoch, lr: lr
    if kind == "step":
        return lambda epoch, lr: lr * rate if epoch and epoch % 2 == 0 else lr
    if kind == "exponential":
        return lambda epoch, lr: float(lr * np.exp(-rate * epoch))
    if kind == "float32":
        return lambda epoch, lr: np.float32(0.1 / (epoch + 1))
    if kind == "float64":
        return lambda epoch, lr: np.float64(rate) ** epoch
    if kind == "one_arg":
        return lambda epoch: 0.5 ** epoch
    if kind == "int":  # Not a float: both raise ValueError.
        return lambda epoch, lr: 1 if epoch > 1 else 0.1
    if kind == "tiny":
        return lambda epoch, lr: 1e-45 * (epoch + 1)
    raise AssertionError(kind)


SCHEDULES = ("constant", "step", "exponential", "float32", "float64", "one_arg", "int", "tiny")


def _scheduler_snapshot(hook, model, event):
    if event not in EPOCH_EVENTS:
        return None
    return norm(lr_of(model)), weights_of(model)


def test_learning_rate_scheduler_conformance(pair):
    count = [0]

    @SETTINGS
    @given(st.data())
    def check(data):
        count[0] += 1
        kind = data.draw(st.sampled_from(SCHEDULES))
        rate = data.draw(st.sampled_from((0.1, 0.5, 0.9, 2.0)))
        lr = data.draw(st.sampled_from((0.01, 0.1, 1.0)))
        verbose = data.draw(st.sampled_from((0, 1)))
        n_epochs = data.draw(st.integers(1, 6))
        logs = data.draw(epoch_logs_streams(n_epochs, "val_loss", 0.0))
        # Sometimes empty logs: Keras then adds learning_rate to a private dict.
        logs = [{} if data.draw(st.integers(0, 5)) == 0 else x for x in logs]
        scenario = scenario_from_logs(logs, seed=data.draw(st.integers(0, 2**16)),
                                      batches=data.draw(st.integers(0, 2)), val_batches=1)
        case = {"scenario": scenario, "lr": lr}
        compiled = data.draw(st.booleans())
        ours, theirs = _both(
            pair, lambda m: m.LearningRateScheduler(_schedule(kind, rate), verbose=verbose),
            case, compiled, _scheduler_snapshot)
        assert_same_records(ours, theirs, f"{kind} rate={rate} lr={lr}")

    check()
    assert count[0] >= CASES
