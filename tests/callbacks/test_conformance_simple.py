"""TerminateOnNaN and LambdaCallback against Keras' own."""
import math

import keras
import numpy as np
import pytest
from cb_helpers import ANCHORS, Epoch, ModelPair, Scenario, assert_same_records, cases, drive, norm

from tapefit import callbacks


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


# ---- TerminateOnNaN -------------------------------------------------------------
LOSSES = (0.5, 0.25, 1.0, math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"),
          np.float32(0.5), None, "missing")


def nan_scenario(rng):
    epochs = []
    for _ in range(rng.integer(1, 4)):
        batch_logs = []
        for _ in range(rng.integer(0, 4)):
            loss = rng.choice(LOSSES if rng.random() < 0.3 else ANCHORS)
            logs = {"accuracy": 0.5}
            if not (isinstance(loss, str) and loss == "missing"):
                logs["loss"] = loss
            batch_logs.append(logs)
        logs = {"loss": rng.choice(LOSSES[:6]), "val_loss": 0.5}
        epochs.append(Epoch(batch_logs=batch_logs, val_batches=1, val_logs={"loss": 0.5},
                            logs=logs))
    return Scenario(epochs=epochs, seed=rng.integer(0, 2**16))


def test_terminate_on_nan_conformance(pair):
    for rng in cases("TerminateOnNaN"):
        kwargs = {"raise_error": True} if rng.random() < 0.3 else {}
        stream = nan_scenario(rng)
        compiled = rng.boolean()
        records = []
        for module, model in ((keras.callbacks, pair.keras),
                              (callbacks, pair.ours_for(compiled))):
            pair.reset()
            records.append(drive(module.TerminateOnNaN(**kwargs), model, stream,
                                 lambda h, m, e: bool(m.stop_training),
                                 before_epoch_end=lambda m, e: None))
        theirs, ours = records
        assert_same_records(ours, theirs, f"{rng}: {kwargs}\n{stream}")


# ---- LambdaCallback -------------------------------------------------------------
LAMBDA_KWARGS = (
    "on_epoch_begin", "on_epoch_end", "on_train_begin", "on_train_end", "on_train_batch_begin",
    "on_train_batch_end", "on_batch_begin", "on_batch_end", "on_test_begin", "on_test_end",
    "on_test_batch_begin", "on_test_batch_end", "on_predict_begin", "on_predict_end",
    "on_predict_batch_begin", "on_predict_batch_end")


def recorder(calls, name):
    def record(*args, **kwargs):
        calls.append((name, norm(args), norm(kwargs)))
    return record


def lambda_scenario(rng):
    epochs = []
    for _ in range(rng.integer(1, 3)):
        batch_logs = [{"loss": rng.choice(ANCHORS)} for _ in range(rng.integer(0, 3))]
        val = {"loss": 0.5} if rng.boolean() else {}
        logs = {"loss": 0.5, **{f"val_{k}": v for k, v in val.items()}}
        epochs.append(Epoch(batch_logs=batch_logs, val_batches=rng.integer(1, 2) if val else 0,
                            val_logs=val, logs=logs))
    return Scenario(epochs=epochs, seed=rng.integer(0, 2**16))


def run_lambda(module, model, names, scenario, stop_epoch, extra):
    calls = []
    kwargs = {name: recorder(calls, name) for name in names}
    if stop_epoch is not None:  # One hook stops the training from its on_epoch_end.
        def on_epoch_end(epoch, logs=None):
            calls.append(("on_epoch_end", epoch, norm(logs)))
            if epoch == stop_epoch:
                model.stop_training = True
        kwargs["on_epoch_end"] = on_epoch_end
    hook = module.LambdaCallback(**kwargs, **extra)
    records = drive(hook, model, scenario, lambda h, m, e: list(calls),
                    before_epoch_end=lambda m, e: None)
    # Prediction events are not part of fit: play them too.
    for name, args in (("on_predict_begin", ({},)), ("on_predict_batch_begin", (0,)),
                       ("on_predict_batch_end", (0, {"outputs": 1.0})),
                       ("on_predict_end", ({},))):
        getattr(hook, name)(*args)
    return records, calls, sorted(k for k in vars(hook) if not k.startswith("_"))


def test_lambda_callback_conformance(pair):
    for rng in cases("LambdaCallback"):
        names = [n for n in LAMBDA_KWARGS if rng.random() < 0.4]
        stop_epoch = rng.choice((None, None, 0, 1))
        extra = {"custom_attribute": 3} if rng.random() < 0.2 else {}
        stream = lambda_scenario(rng)
        pair.reset()
        theirs = run_lambda(keras.callbacks, pair.keras, names, stream, stop_epoch, extra)
        pair.reset()
        ours = run_lambda(callbacks, pair.ours, names, stream, stop_epoch, extra)
        context = f"{rng}: {names} stop_epoch={stop_epoch}\n{stream}"
        assert_same_records(ours[0], theirs[0], context)
        assert ours[1:] == theirs[1:], context
