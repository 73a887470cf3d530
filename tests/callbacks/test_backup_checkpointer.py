"""The custom loop's own exact backups (loops/training/checkpointer.py), next to the
Keras-conformant `BackupAndRestore` hook (test_conformance_backup.py): the loop owns them,
no hook does.

- `CustomLoop.fit(checkpointer=)` interrupted mid-epoch and resumed by a fresh loop ends
  bit for bit as an uninterrupted run (weights, optimizer, hook states, logs);
- `backup_position` reads both backup formats (the run directory's only reader) and
  says `BackupError` for a cut file, as `Checkpointer` does for a corrupt state.json.
"""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tapefit import callbacks
from tapefit.loops.training.checkpointer import BackupError, Checkpointer, Position, backup_position
from tapefit.loops.training.custom import CustomLoop

STEPS, EPOCHS = 4, 3


class Interrupted(Exception):
    pass


def new_loop():
    keras.backend.clear_session()  # Same variable paths in every loop.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="a"),
                              keras.layers.Dropout(0.5, name="drop"),
                              keras.layers.Dense(2, name="b")], name="m")
    return CustomLoop(model, keras.optimizers.Adam(0.05))


def batches(skip=0):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat().skip(skip)


def validation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 6)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, (x[:, 1] > 0).astype("int32"))).batch(8)


def run(backup_dir, interrupt_at=None):
    """Trains EPOCHS epochs (every step backed up when `backup_dir`); `interrupt_at`:
    (epoch, step) whose batch raises. Resumes from the backup's position."""
    loop = new_loop()
    early = callbacks.EarlyStopping(monitor="val_loss", patience=10)

    def stop(batch, logs=None):
        if (epochs_begun[-1], batch) == interrupt_at:
            raise Interrupted()

    epochs_begun = []
    hooks = [early, callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs=None: epochs_begun.append(epoch),
        on_train_batch_begin=stop)]
    checkpointer = Checkpointer(backup_dir, save_freq=1) if backup_dir else None
    position = checkpointer.position if checkpointer else None
    skip = position.epoch * STEPS + position.step if position else 0
    logs = loop.fit(batches(skip), epochs=EPOCHS, steps_per_epoch=STEPS,
                    validation_data=validation(), callbacks=hooks, checkpointer=checkpointer)
    weights = [np.array(v) for v in loop.model.variables + loop.optimizer.variables]
    return weights, logs, early.get_state()


def test_fit_with_a_checkpointer_resumes_mid_epoch_bit_for_bit(tmp_path):
    reference = run(None)
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(Interrupted):
        run(backup_dir, interrupt_at=(1, 2))
    assert Checkpointer(backup_dir).position == Position(1, 2, False)
    with pytest.raises(Interrupted):  # Again, from the resumed run: epoch 2 step 1.
        run(backup_dir, interrupt_at=(2, 1))
    assert backup_position(backup_dir) == Position(2, 1, False)
    weights, logs, early_state = run(backup_dir)
    assert len(weights) == len(reference[0])
    assert all(np.array_equal(a, b) for a, b in zip(weights, reference[0]))
    assert logs == reference[1]
    assert early_state["best"] == reference[2]["best"]
    assert backup_position(backup_dir) == Position(EPOCHS, 0, False)


def test_the_hooks_do_not_back_up_when_the_loop_does(tmp_path):
    """Exact resume is the loop's: no hook event writes into its folder."""
    backup_dir = tmp_path / "backup"
    loop = new_loop()
    files = []
    seen = callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs=None: files.append(sorted(os.listdir(backup_dir))
                                                           if backup_dir.exists() else []))
    loop.fit(batches(), epochs=2, steps_per_epoch=STEPS, callbacks=[seen],
             checkpointer=Checkpointer(str(backup_dir)))
    assert files[0] == []  # Hooks see epoch 0 end before its backup exists.
    assert "state.json" in files[1] and not any(n.startswith("ckpt-") for n in files[1])


def test_backup_position_reads_both_formats_and_refuses_a_cut_file(tmp_path):
    assert backup_position(str(tmp_path)) is None
    keras_dir = tmp_path / "keras"
    keras_dir.mkdir()
    (keras_dir / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": 5}))
    assert backup_position(str(keras_dir)) == Position(3, 0)
    exact = tmp_path / "exact"
    exact.mkdir()
    np.savez(exact / "variables.npz", np.arange(1000.0), np.ones((30, 30)))
    (exact / "state.json").write_text(json.dumps(
        {"format": 2, "epoch": 2, "step": 3, "stopped": True,
         "files": {"variables": "variables.npz"}}))
    assert backup_position(str(exact)) == Position(2, 3, True)
    data = (exact / "variables.npz").read_bytes()
    (exact / "variables.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(BackupError):
        backup_position(str(exact))
    (exact / "state.json").write_text("{")
    with pytest.raises(BackupError):
        backup_position(str(exact))
    with pytest.raises(BackupError, match="corrupt"):
        Checkpointer(str(exact))
