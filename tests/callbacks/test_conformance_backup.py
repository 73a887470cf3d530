"""BackupAndRestore against Keras' own: runs interrupted at random events, then resumed.

Each case trains (weights and optimizer slots change every batch), "crashes"
after a random event (no on_train_end), restarts from fresh weights with a new
hook on the same folder, possibly crashes again, and finally completes. After
every event we compare the model and optimizer state, `model._initial_epoch`,
the backup's epoch/batch and whether the folder exists.
"""
import json
import os

import keras
import pytest
from cb_files import TempDirs
from cb_helpers import (
    ANCHORS,
    Epoch,
    ModelPair,
    Scenario,
    assert_same_records,
    cases,
    drive,
    norm,
    perturb,
    tiny_model,
    weights_of,
)

from tapefit import callbacks
from tapefit.callbacks.backup_and_restore import METADATA
from tapefit.layout import temporaries


@pytest.fixture(scope="module")
def pair():
    return ModelPair("adam")


def backup_scenario(rng):
    epochs = []
    for _ in range(rng.integer(1, 3)):
        batch_logs = [{"loss": rng.choice(ANCHORS)} for _ in range(rng.integer(1, 2))]
        epochs.append(Epoch(batch_logs=batch_logs, val_batches=rng.integer(0, 1),
                            val_logs={"loss": 0.5}, logs={"loss": 0.5, "val_loss": 0.5}))
    return Scenario(epochs=epochs, seed=rng.integer(0, 2**16))


def newest_weights(backup_dir):
    """The weights file a restore reads first (Keras' name, or the one ours commits to)."""
    try:
        with open(os.path.join(backup_dir, METADATA)) as f:
            return os.path.join(backup_dir, json.load(f).get("weights", "latest.weights.h5"))
    except FileNotFoundError:
        return os.path.join(backup_dir, "latest.weights.h5")


def state_snapshot(backup_dir):
    def snapshot(hook, model, event):
        metadata = None
        if os.path.exists(os.path.join(backup_dir, METADATA)):
            with open(os.path.join(backup_dir, METADATA)) as f:
                data = json.load(f)
            metadata = (data["epoch"], data["batch"])  # Keras' keys (ours has more).
        state = (getattr(model, "_initial_epoch", None), os.path.isdir(backup_dir), metadata,
                 # Same private counters as Keras (when to back up at batch level).
                 hook._batches_seen_since_last_saving, hook._last_batch_seen,
                 hook._current_epoch)
        if event == "on_train_begin":  # The restored state.
            state += (weights_of(model),
                      norm([v.numpy() for v in model.optimizer.variables]))
        return state
    return snapshot


def error_types(records):
    """Keeps the exception type only: messages hold paths and h5py's wording."""
    return [r[:2] + ((r[2][0] if r[2] else None),) + r[3:] for r in records]


def run_phases(module, model, kwargs, scenario, backup_dir, plan, pair):
    records = []
    for phase, (interrupt_at, corrupt) in enumerate(plan):
        pair.reset(models=[model])
        if corrupt and os.path.exists(newest_weights(backup_dir)):
            with open(newest_weights(backup_dir), "wb") as f:
                f.write(b"not an hdf5 file")
        hook = module.BackupAndRestore(backup_dir, **kwargs)

        def after_batch(m, epoch, step):
            m.optimizer.iterations.assign_add(1)
            perturb(m, scenario.seed + phase, epoch, step, optimizer=True)

        phase_records = drive(hook, model, scenario, state_snapshot(backup_dir),
                              interrupt_at=interrupt_at, after_batch=after_batch,
                              before_epoch_end=lambda m, e: perturb(m, scenario.seed, e,
                                                                    optimizer=True))
        records += [("phase", phase)] + error_types(phase_records)
        if any(r[2] for r in phase_records):
            break
    return records


def test_backup_and_restore_conformance(pair, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("backup"))
    for rng in cases("BackupAndRestore"):
        kwargs = dict(save_freq=rng.choice(("epoch", "epoch", "epoch", 1, 2, 3)),
                      delete_checkpoint=rng.random() < 0.8,
                      double_checkpoint=rng.boolean())
        stream = backup_scenario(rng)
        n_events = sum(4 + 2 * len(e.batch_logs) + 3 * e.val_batches for e in stream.epochs)
        plan = [(rng.integer(1, n_events), rng.random() < 0.15)
                for _ in range(rng.choice((0, 1, 1, 2)))]
        plan.append((None, rng.random() < 0.15))  # The last run completes.
        compiled = rng.boolean()
        with TempDirs(base) as (keras_dir, our_dir):
            theirs = run_phases(keras.callbacks, pair.keras, kwargs, stream,
                                os.path.join(keras_dir, "backup"), plan, pair)
            ours = run_phases(callbacks, pair.ours_for(compiled), kwargs, stream,
                              os.path.join(our_dir, "backup"), plan, pair)
        assert_same_records(ours, theirs, f"{rng}: {kwargs} plan={plan}\n{stream}")


def test_ours_resumes_from_a_keras_backup(pair, tmp_path):
    """The folder layouts differ, but ours reads Keras' (latest.weights.h5 + metadata),
    into a fresh model whose optimizer is not built yet, as after a restart."""
    stream = Scenario(epochs=[Epoch(batch_logs=[{"loss": 1.0}] * 2, val_batches=0, val_logs={},
                                    logs={"loss": 1.0})] * 3, seed=7)
    backup_dir = str(tmp_path / "backup")
    pair.reset()
    drive(keras.callbacks.BackupAndRestore(backup_dir), pair.keras, stream, interrupt_at=14,
          before_epoch_end=lambda m, e: perturb(m, 7, e, optimizer=True))
    saved = weights_of(pair.keras)  # Nothing changed them since the last backup.
    restored = {}
    for module in (keras.callbacks, callbacks):
        keras.utils.set_random_seed(5)
        model = tiny_model()
        model.optimizer = keras.optimizers.Adam(0.5, name="adam")
        hook = module.BackupAndRestore(backup_dir, delete_checkpoint=False)
        hook.set_model(model)
        hook.on_train_begin()
        restored[module.__name__] = (model._initial_epoch, weights_of(model),
                                     norm([v.numpy() for v in model.optimizer.variables]))
    assert restored["tapefit.callbacks"] == restored["keras.callbacks"]
    assert restored["tapefit.callbacks"][:2] == (2, saved)


def test_backup_is_atomic(pair, tmp_path, monkeypatch):
    """A backup that fails half-way leaves the previous one whole and readable."""
    backup_dir = str(tmp_path / "backup")
    pair.reset()
    hook = callbacks.BackupAndRestore(backup_dir)
    hook.set_model(pair.ours)
    hook.on_train_begin()
    perturb(pair.ours, 1, 0, optimizer=True)
    saved = (weights_of(pair.ours), norm([v.numpy() for v in pair.ours.optimizer.variables]))
    hook.on_epoch_end(0)

    def broken_save(filepath, overwrite=True):
        with open(filepath, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(pair.ours, "save_weights", broken_save)
    with pytest.raises(OSError):
        hook.on_epoch_end(1)
    monkeypatch.undo()
    assert sorted(os.listdir(backup_dir)) == ["ckpt-000001.weights.h5", METADATA]
    stale = os.path.join(backup_dir, f".ckpt-000009.weights.h5.tmp-{temporaries.host_tag()}-"
                                     f"{2**22 + 12345}-0123abcd.weights.h5")  # No such pid.
    with open(stale, "wb") as f:  # Left by a process killed while backing up.
        f.write(b"half")
    pair.reset()
    restorer = callbacks.BackupAndRestore(backup_dir)
    restorer.set_model(pair.ours)
    restorer.on_train_begin()
    assert not os.path.exists(stale)
    assert restorer.initial_epoch == pair.ours._initial_epoch == 1
    assert (weights_of(pair.ours),
            norm([v.numpy() for v in pair.ours.optimizer.variables])) == saved
