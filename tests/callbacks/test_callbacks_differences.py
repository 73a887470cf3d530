"""One test per entry of callbacks/DIFFERENCES.md: the deliberate differences from
Keras, and the Keras quirks we keep on purpose."""
import os

import keras
import pytest
from cb_events import read_scalars
from cb_helpers import Epoch, ModelPair, Scenario, drive

from tapefit import callbacks


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


def improvement_steps(module, model, monitor, values, mode="auto"):
    hook = module.EarlyStopping(monitor=monitor, mode=mode, patience=10)
    hook.set_model(model)
    hook.on_train_begin()
    waits = []
    for epoch, value in enumerate(values):
        hook.on_epoch_end(epoch, {monitor: value})
        waits.append(hook.wait)
    return waits


# ---- differences ------------------------------------------------------------------
@pytest.mark.parametrize("monitor, expected", [
    ("val_accuracy", [0, 0, 1]),  # Higher is better.
    ("val_acc", [0, 0, 1]),  # fit(metrics=["acc"]) names it "acc".
    ("val_auc", [0, 0, 1]),
    ("val_mean_squared_error", [0, 1, 0]),  # Lower is better.
    ("val_loss", [0, 1, 0]),
])
def test_auto_mode_on_an_uncompiled_model(pair, monitor, expected):
    """Keras raises (it only reads compiled metrics); ours uses the direction of
    the Keras metric of that name, which is what fit() would have compiled."""
    assert improvement_steps(callbacks, pair.ours, monitor, [0.5, 0.75, 0.25]) == expected
    if monitor != "val_loss":
        with pytest.raises(ValueError, match="automatically determine"):
            improvement_steps(keras.callbacks, pair.ours, monitor, [0.5])


@pytest.mark.parametrize("module", [callbacks, keras.callbacks])
def test_auto_mode_unknown_metric_raises_in_both(pair, module):
    for model in (pair.ours, pair.keras):
        if module is keras.callbacks and model is pair.ours:
            continue
        with pytest.raises(ValueError, match="automatically determine"):
            improvement_steps(module, model, "val_foo", [0.5])
    # A compiled model is read like Keras reads it: its metric is "accuracy", not "acc".
    with pytest.raises(ValueError):
        improvement_steps(module, pair.keras, "val_acc", [0.5])


def test_projector_config_into_a_missing_log_dir(tmp_path):
    """Keras writes projector_config.pbtxt without creating log_dir (FileNotFoundError
    unless a writer made it first); ours creates the folder."""
    model = keras.Sequential([keras.Input((3,), dtype="int32"),
                              keras.layers.Embedding(10, 2, name="emb")])
    hook = callbacks.TensorBoard(str(tmp_path / "ours"), embeddings_freq=1, write_graph=False)
    hook.set_model(model)
    assert os.path.isfile(tmp_path / "ours" / "projector_config.pbtxt")
    with pytest.raises(FileNotFoundError):
        keras.callbacks.TensorBoard(str(tmp_path / "keras"), embeddings_freq=1,
                                    write_graph=False).set_model(model)


# ---- Keras quirks we keep -----------------------------------------------------------
@pytest.mark.parametrize("module", [callbacks, keras.callbacks])
def test_improvements_are_compared_in_float32(pair, module):
    """0.5 - 1e-9 is 0.5 in float32: not an improvement, in Keras and in ours."""
    assert improvement_steps(module, pair.keras, "val_loss", [0.5, 0.5 - 1e-9, 0.5 - 1e-6]) == [
        0, 1, 0]


@pytest.mark.parametrize("module", [callbacks, keras.callbacks])
def test_values_beyond_float32_raise(pair, module):
    with pytest.raises(ValueError):
        improvement_steps(module, pair.keras, "val_loss", [0.5, 1e39])


def test_integer_update_freq_drops_some_epoch_summaries(pair, tmp_path):
    """With update_freq=N, Keras' batch-level record_if(step % N == 0) is still
    active at epoch end: epoch summaries are written only when the epoch's last
    global step is a multiple of N. Ours writes exactly what Keras writes."""
    scenario = Scenario(epochs=[
        Epoch(batch_logs=[{"loss": 1.0}], val_batches=0, val_logs={}, logs={"loss": 1.0}),
        Epoch(batch_logs=[{"loss": 1.0}], val_batches=0, val_logs={}, logs={"loss": 1.0})])
    tags = {}
    for module in (callbacks, keras.callbacks):
        pair.reset()
        log_dir = str(tmp_path / module.__name__)
        drive(module.TensorBoard(log_dir, update_freq=2, write_graph=False), pair.keras,
              scenario)
        tags[module.__name__] = sorted((tag, step) for tag, _, step, _ in
                                       read_scalars(log_dir)["train"])
    assert tags["tapefit.callbacks"] == tags["keras.callbacks"] == [
        ("batch_loss", 2), ("epoch_learning_rate", 1), ("epoch_loss", 1)]
