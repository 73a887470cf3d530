"""CallbackList: dispatch order, logs handling, stopping; the hook package itself."""
import ast
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from cb_helpers import ModelPair

from tapefit import callbacks
from tapefit.callbacks.base import _EVENTS, pythonify_logs


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


class Recorder(callbacks.Callback):
    def __init__(self, name, journal):
        super().__init__()
        self.name = name
        self.journal = journal

    def __getattribute__(self, attr):
        if attr.startswith("on_") and attr in _EVENTS:
            def record(*args, **kwargs):
                self.journal.append((self.name, attr, args, kwargs))
            return record
        return super().__getattribute__(attr)


def test_every_event_reaches_every_hook_in_order(pair):
    journal = []
    hooks = callbacks.CallbackList([Recorder("a", journal), Recorder("b", journal)],
                                   model=pair.ours, epochs=1, steps=2, verbose=0)
    hooks.append(Recorder("c", journal))
    for event in _EVENTS:
        journal.clear()
        method = getattr(hooks, event)
        if "batch" in event or "epoch" in event:
            method(3, {"loss": 1.0})
        else:
            method({"loss": 1.0})
        assert [(name, attr) for name, attr, _, _ in journal] == [
            ("a", event), ("b", event), ("c", event)]


def test_calls_are_shaped_like_keras(pair):
    """Batch events pass logs= by keyword, epoch and begin/end events positionally,
    and a missing logs dict becomes {} (as Keras' CallbackList does)."""
    journal = []
    hooks = callbacks.CallbackList([Recorder("a", journal)], model=pair.ours)
    hooks.on_train_begin()
    hooks.on_epoch_begin(0)
    hooks.on_train_batch_end(1, {"loss": 1.0})
    hooks.on_epoch_end(0, {"loss": 1.0})
    assert [(attr, args, kwargs) for _, attr, args, kwargs in journal] == [
        ("on_train_begin", ({},), {}), ("on_epoch_begin", (0, {}), {}),
        ("on_train_batch_end", (1,), {"logs": {"loss": 1.0}}),
        ("on_epoch_end", (0, {"loss": 1.0}), {})]


def test_params_and_model_reach_every_hook(pair):
    first, second = callbacks.Callback(), callbacks.Callback()
    hooks = callbacks.CallbackList([first], model=pair.ours, epochs=3, steps=5, verbose=1)
    hooks.append(second)
    for hook in (first, second):
        assert hook.model is pair.ours
        assert hook.params == {"epochs": 3, "steps": 5, "verbose": 1}


def test_logs_are_pythonified_like_keras():
    logs = {"val_loss": tf.constant(0.5), "accuracy": np.float32(0.25), "loss": np.array(2.0),
            "nested": {"b": tf.constant(1.0), "a": 2}, "name": "text", "vector": [1, 2]}
    ours = pythonify_logs(logs)
    from keras.src.utils.python_utils import pythonify_logs as keras_pythonify
    theirs = keras_pythonify(logs)
    assert list(ours) == list(theirs) == ["accuracy", "loss", "name", "a", "b", "val_loss",
                                          "vector"]
    assert ours == theirs
    assert all(type(ours[k]) is float for k in ("accuracy", "loss", "a", "b", "val_loss"))


def test_a_hook_sees_what_an_earlier_hook_added(pair, tmp_path):
    """As in fit: LearningRateScheduler adds learning_rate to the one shared dict, so
    the CSVLogger after it logs that column."""
    pair.reset()
    path = tmp_path / "log.csv"
    hooks = callbacks.CallbackList([
        callbacks.LearningRateScheduler(lambda epoch, lr: 0.5),
        callbacks.CSVLogger(str(path))], model=pair.ours)
    hooks.on_train_begin()
    hooks.on_epoch_begin(0)
    logs = {"loss": 1.0}
    hooks.on_epoch_end(0, logs)
    hooks.on_train_end()
    assert logs == {"loss": 1.0}  # The loop's own dict is not changed.
    assert path.read_text().splitlines() == [
        "epoch,learning_rate,loss,val_learning_rate,val_loss", "0,0.5,1.0,NA,NA"]


def run_loop(model, hooks, epochs, steps):
    """fit()'s control flow: stop after the batch or epoch where a hook asked to."""
    model.stop_training = False
    hooks.on_train_begin()
    ran = []
    for epoch in range(epochs):
        hooks.on_epoch_begin(epoch)
        for step in range(steps):
            hooks.on_train_batch_begin(step)
            hooks.on_train_batch_end(step, {"loss": 1.0})
            ran.append((epoch, step))
            if model.stop_training:
                break
        hooks.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 1.0})
        if model.stop_training:
            break
    hooks.on_train_end()
    return ran


def test_a_hook_can_stop_training(pair):
    pair.reset()
    stopper = callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: setattr(pair.ours, "stop_training", batch == 1))
    ran = run_loop(pair.ours, callbacks.CallbackList([stopper], model=pair.ours), 5, 3)
    assert ran == [(0, 0), (0, 1)]

    pair.reset()
    early = callbacks.EarlyStopping(patience=1)
    ran = run_loop(pair.ours, callbacks.CallbackList([early], model=pair.ours), 10, 1)
    # Epoch 0 sets the best; epoch 1 does not improve: patience 1 is used up.
    assert [epoch for epoch, _ in ran] == [0, 1] and early.stopped_epoch == 1


def test_the_custom_loop_stops_when_a_hook_says_so(pair):
    """With the project's real custom loop: EarlyStopping on a constant val_loss."""
    custom = pytest.importorskip("tapefit.loops.training.custom")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x = np.zeros((8, 4), "float32")
    y = np.zeros((8,), "int32")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    epochs = []
    hooks = [callbacks.EarlyStopping(monitor="val_accuracy", patience=1),
             callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs.append(epoch))]
    loop = custom.CustomLoop(model, keras.optimizers.SGD(0.0))
    loop.fit(train, epochs=10, steps_per_epoch=2, validation_data=val, callbacks=hooks)
    assert epochs == [0, 1]  # The learning rate is 0: nothing improves after epoch 0.
    assert hooks[0].stopped_epoch == 1


# ---- the package --------------------------------------------------------------------
PACKAGE = os.path.dirname(callbacks.__file__)


def imported_modules(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            yield node.module or ""
            for alias in node.names:
                yield f"{node.module}.{alias.name}"


def test_the_package_uses_no_keras_callbacks_and_no_flags():
    sources = [os.path.join(PACKAGE, n) for n in os.listdir(PACKAGE) if n.endswith(".py")]
    assert len(sources) >= 10
    for path in sources:
        for module in imported_modules(path):
            assert not module.startswith(("keras.callbacks", "keras.src.callbacks", "absl")), (
                path, module)
            assert module != "keras.src.callbacks"


def test_every_keras_namesake_is_exported():
    for name in ("ModelCheckpoint", "EarlyStopping", "LearningRateScheduler",
                 "ReduceLROnPlateau", "CSVLogger", "TensorBoard", "TerminateOnNaN",
                 "ProgbarLogger", "LambdaCallback", "RemoteMonitor", "BackupAndRestore",
                 "Callback", "CallbackList"):
        assert name in callbacks.__all__
        assert hasattr(keras.callbacks, name)
        assert issubclass(getattr(callbacks, name), callbacks.Callback)
