"""TensorBoard against Keras' own: every summary read back (run, tag, step, value)."""
import json
import math
import os

import keras
import pytest
from cb_events import read_scalars
from cb_files import TempDirs
from cb_helpers import (
    ANCHORS,
    Epoch,
    ModelPair,
    Scenario,
    assert_same_records,
    cases,
    drive,
    monitored_values,
)

from tapefit import callbacks


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


def tb_scenario(rng):
    epochs = []
    for _ in range(rng.integer(1, 3)):
        losses = monitored_values(rng, 0.1, rng.integer(0, 3))
        batch_logs = [{"accuracy": rng.choice(ANCHORS), "loss": loss} for loss in losses]
        logs = {"accuracy": rng.choice(ANCHORS), "loss": monitored_values(rng, 0.1, 1)[0]}
        val = {}
        if rng.random() < 0.8:
            val = {"accuracy": rng.choice(ANCHORS), "loss": rng.choice((0.5, math.nan, 0.25))}
            logs.update({f"val_{k}": v for k, v in val.items()})
        if rng.random() < 0.2:  # Another hook added the learning rate already.
            logs["learning_rate"] = 0.5
        epochs.append(Epoch(batch_logs=batch_logs, val_batches=rng.integer(1, 2) if val else 0,
                            val_logs=val, logs=dict(sorted(logs.items()))))
    return Scenario(epochs=epochs, seed=rng.integer(0, 2**16))


def run(module, model, kwargs, scenarios, log_dir):
    hook = module.TensorBoard(log_dir=log_dir, **kwargs)
    records = []
    for scenario in scenarios:
        records += drive(hook, model, scenario)
    return records, read_scalars(log_dir)


def comparable(runs):
    """steps_per_second values depend on the clock: keep their tag and step only.
    The model summary (its JSON config) loses `compile_config`: the custom loop's
    model is not compiled, so that part is legitimately absent."""
    def value_of(tag, plugin, value):
        if "steps_per_second" in tag:
            return None
        if plugin == "graph_keras_model":
            config = json.loads(value[2][0])
            config.pop("compile_config", None)
            return config
        return value
    return {run: [(tag, plugin, step, value_of(tag, plugin, value))
                  for tag, plugin, step, value in events]
            for run, events in runs.items()}


def assert_same_events(ours, theirs, context):
    assert sorted(ours) == sorted(theirs), f"{context}\nruns: {sorted(ours)} vs {sorted(theirs)}"
    for run_name in ours:
        for a, b in zip(ours[run_name], theirs[run_name]):
            assert a == b, f"{context}\n{run_name}:\n  ours:  {a}\n  keras: {b}"
        assert len(ours[run_name]) == len(theirs[run_name]), (
            f"{context}\n{run_name}: {len(ours[run_name])} vs {len(theirs[run_name])} events\n"
            f"ours:  {ours[run_name]}\nkeras: {theirs[run_name]}")


def test_tensorboard_conformance(pair, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("tensorboard"))
    for rng in cases("TensorBoard"):
        histogram_freq = rng.choice((0,) * 8 + (1, 2))  # Histograms are slow to write.
        kwargs = dict(
            update_freq=rng.choice(("epoch", "epoch", "epoch", "batch", 1, 2, 3)),
            histogram_freq=histogram_freq, write_graph=rng.boolean(),
            write_images=histogram_freq > 0 and rng.boolean(),
            write_steps_per_second=rng.random() < 0.15)
        scenarios = [tb_scenario(rng) for _ in range(rng.choice((1, 1, 1, 2)))]
        compiled = rng.boolean()
        with TempDirs(base) as (keras_dir, our_dir):
            pair.reset()
            theirs, keras_events = run(keras.callbacks, pair.keras, kwargs, scenarios, keras_dir)
            ours, our_events = run(callbacks, pair.ours_for(compiled), kwargs, scenarios,
                                   our_dir)
        context = f"{rng}: {kwargs} compiled={compiled}\n{scenarios}"
        assert_same_records(ours, theirs, context)
        assert_same_events(comparable(our_events), comparable(keras_events), context)


def test_tensorboard_epoch_tags(pair, tmp_path):
    """What a fit run shows with the defaults: epoch_* per run, val_ prefix stripped."""
    pair.reset()
    scenario = Scenario(epochs=[Epoch(
        batch_logs=[{"accuracy": 0.5, "loss": 1.0}], val_batches=1,
        val_logs={"accuracy": 0.25, "loss": 2.0},
        logs={"accuracy": 0.5, "loss": 1.0, "val_accuracy": 0.25, "val_loss": 2.0})] * 2)
    _, runs = run(callbacks, pair.ours, {}, [scenario], str(tmp_path))
    tags = {run: sorted({(tag, step) for tag, _, step, _ in events})
            for run, events in runs.items()}
    assert tags == {
        "train": [("epoch_accuracy", 0), ("epoch_accuracy", 1), ("epoch_learning_rate", 0),
                  ("epoch_learning_rate", 1), ("epoch_loss", 0), ("epoch_loss", 1),
                  ("keras", 0)],
        "validation": [("epoch_accuracy", 0), ("epoch_accuracy", 1), ("epoch_loss", 0),
                       ("epoch_loss", 1), ("evaluation_accuracy_vs_iterations", 1),
                       ("evaluation_accuracy_vs_iterations", 2),
                       ("evaluation_loss_vs_iterations", 1),
                       ("evaluation_loss_vs_iterations", 2)]}


def test_tensorboard_embeddings_and_profile(pair, tmp_path):
    """The rarer options: projector config and embedding checkpoints, profiler traces."""
    model = keras.Sequential([keras.Input((3,), dtype="int32"),
                              keras.layers.Embedding(10, 2, name="emb")], name="embedder")
    model.optimizer = keras.optimizers.SGD(0.1)
    model.stop_training = False
    outputs = {}
    for module in (keras.callbacks, callbacks):
        log_dir = tmp_path / module.__name__
        # write_graph creates log_dir first: Keras cannot write the projector
        # config into a missing folder (ours can; DIFFERENCES.md).
        hook = module.TensorBoard(str(log_dir), embeddings_freq=1,
                                  embeddings_metadata={"emb": "meta.tsv"})
        hook.set_model(model)
        hook.on_train_begin()
        for epoch in range(2):
            hook.on_epoch_begin(epoch)
            hook.on_epoch_end(epoch, {"loss": 1.0})
        hook.on_train_end()
        outputs[module.__name__] = (
            (log_dir / "projector_config.pbtxt").read_text(),
            sorted(p for p in os.listdir(log_dir / "train") if not p.startswith("events")))
    assert outputs["tapefit.callbacks"] == outputs["keras.callbacks"]
    assert outputs["tapefit.callbacks"][1] == ["keras_embedding.ckpt-0.weights.h5",
                                               "keras_embedding.ckpt-1.weights.h5"]

    pair.reset()
    hook = callbacks.TensorBoard(str(tmp_path / "profile"), profile_batch=(1, 2))
    scenario = Scenario(epochs=[Epoch(batch_logs=[{"loss": 1.0}] * 3, val_batches=0,
                                      val_logs={}, logs={"loss": 1.0})])
    records = drive(hook, pair.ours, scenario)
    assert all(r[2] is None for r in records), records
    assert os.path.isdir(tmp_path / "profile" / "train" / "plugins" / "profile")
