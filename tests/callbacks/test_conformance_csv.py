"""CSVLogger against Keras' own: the file's bytes after every event."""
import math
import os

import keras
import numpy as np
import pytest
from cb_files import FolderWatcher, TempDirs
from cb_helpers import (
    Epoch,
    ModelPair,
    Scenario,
    assert_same_records,
    cases,
    drive,
    monitored_values,
)

from tapefit import callbacks

KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "lr", "a,b",
        'quo"te', "val_x y", "é")
PREEXISTING = (None, None, "", "epoch,loss\r\n0,1.0\r\n", "no newline", "\n")


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


def csv_value(rng):
    """Every kind of value fit's logs (or a user's) can hold."""
    kind = rng.choice(("float", "float", "float", "special", "int", "np32", "np64", "array0",
                       "array1", "list", "str", "none", "bool"))
    if kind == "float":
        return monitored_values(rng, 0.1, 1)[0]
    if kind == "special":
        return rng.choice((math.nan, math.inf, -math.inf, -0.0, 1e-300, 1e300))
    if kind == "int":
        return rng.integer(-5, 5)
    if kind == "np32":
        return np.float32(rng.uniform(-1, 1))
    if kind == "np64":
        return np.float64(rng.choice((rng.uniform(-1, 1), math.nan)))
    if kind == "array0":
        return np.array(rng.uniform(-1, 1))
    if kind == "array1":
        return np.arange(rng.integer(0, 3), dtype="float32") / 3
    if kind == "list":
        return [rng.integer(0, 3), 0.5, "x"][:rng.integer(0, 3)]
    if kind == "str":
        return rng.choice(("text", "a,b", 'say "hi"', "line\nbreak", "", "tab\there", "é"))
    if kind == "bool":
        return rng.boolean()
    return None


def csv_scenario(rng):
    pool = list(KEYS)
    epochs = []
    for _ in range(rng.integer(1, 4)):
        keys = [k for k in pool if rng.random() < 0.6]
        if rng.random() < 0.2:
            keys = []
        logs = {k: csv_value(rng) for k in keys}
        if rng.boolean():
            logs = dict(sorted(logs.items()))
        epochs.append(Epoch(batch_logs=[], val_batches=0, val_logs={}, logs=logs))
    return Scenario(epochs=epochs, seed=rng.integer(0, 2**16))


def run(module, model, kwargs, scenarios, root, preexisting):
    path = os.path.join(root, "log.csv")
    if preexisting is not None:
        with open(path, "w", newline="") as f:
            f.write(preexisting)
    watcher = FolderWatcher(root)
    watcher()
    hook = module.CSVLogger(path, **kwargs)
    records = []
    for scenario in scenarios:  # The same hook across several trainings.
        records += drive(hook, model, scenario, lambda h, m, e: watcher(),
                         before_epoch_end=lambda m, e: None)
    with open(path, "rb") as f:
        return records, f.read()


def test_csv_logger_conformance(pair, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("csv"))
    for rng in cases("CSVLogger"):
        kwargs = dict(separator=rng.choice((",", ",", ";", "\t", " ", "|", '"')),
                      append=rng.boolean())
        preexisting = rng.choice(PREEXISTING)
        scenarios = [csv_scenario(rng) for _ in range(rng.choice((1, 1, 2)))]
        with TempDirs(base) as (keras_dir, our_dir):
            pair.reset()
            theirs, keras_bytes = run(keras.callbacks, pair.keras, kwargs, scenarios, keras_dir,
                                      preexisting)
            ours, our_bytes = run(callbacks, pair.ours, kwargs, scenarios, our_dir, preexisting)
        context = f"{rng}: {kwargs} preexisting={preexisting!r}\n{scenarios}"
        assert our_bytes == keras_bytes, f"{context}\nours:  {our_bytes!r}\nkeras: {keras_bytes!r}"
        assert_same_records(ours, theirs, context)


def test_csv_logger_rows_look_like_keras_docs(pair, tmp_path):
    """A plain fit-like stream: header, one row per epoch, NA for missing values."""
    path = tmp_path / "log.csv"
    hook = callbacks.CSVLogger(str(path))
    hook.set_model(pair.ours)
    hook.on_train_begin()
    hook.on_epoch_end(0, {"accuracy": 0.5, "loss": 1.0})
    hook.on_epoch_end(1, {"loss": 0.75})
    hook.on_train_end()
    assert path.read_bytes() == (b"epoch,accuracy,loss,val_accuracy,val_loss\r\n"
                                 b"0,0.5,1.0,NA,NA\r\n1,NA,0.75,NA,NA\r\n")
