"""get_state()/set_state(): a run split in two (state through JSON) ends like an
uninterrupted one. This is the base of a later exact-resume feature."""
import json
import os

import pytest
from cb_events import read_scalars
from cb_files import FolderWatcher, TempDirs
from cb_helpers import (
    MIN_DELTAS,
    ModelPair,
    cases,
    epoch_logs_streams,
    lr_of,
    monitored_values,
    norm,
    perturb,
    weights_of,
)

from tapefit import callbacks

STATE_CASES = 50
# Missing monitored values are part of the streams; their warnings are checked elsewhere.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


def play(hook, model, logs_list, batches, seed, start, stop, state=None, finish=True,
         **set_state_kwargs):
    """Epochs [start, stop) of a fit-like run; `state` is restored after on_train_begin."""
    hook.set_model(model)
    hook.on_train_begin()
    if state is not None:
        # Through JSON, as a backup stores it (arrays, e.g. best weights, go apart).
        arrays = {k: v for k, v in state.items() if k == "best_weights"}
        state = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
        hook.set_state(state, **set_state_kwargs)
    for epoch in range(start, stop):
        hook.on_epoch_begin(epoch)
        for step, loss in enumerate(batches[epoch]):
            hook.on_train_batch_begin(step)
            hook.on_train_batch_end(step, logs={"loss": loss})
        perturb(model, seed, epoch)
        hook.on_epoch_end(epoch, dict(logs_list[epoch]))
        if model.stop_training:
            break
    if finish:
        hook.on_train_end()
    return hook


def stream(rng, monitor="val_loss", min_delta=0.0):
    n = rng.integer(2, 8)
    logs = epoch_logs_streams(rng, n, monitor, min_delta)
    batches = [monitored_values(rng, 0.1, rng.integer(0, 3)) for _ in range(n)]
    return logs, batches, rng.integer(1, n - 1), rng.integer(0, 2**16)


def test_early_stopping_state(pair):
    for rng in cases("EarlyStopping state", STATE_CASES):
        min_delta = rng.choice(MIN_DELTAS)
        kwargs = dict(patience=rng.integer(0, 3), min_delta=min_delta,
                      restore_best_weights=rng.boolean(),
                      baseline=rng.choice((None, 0.5)), start_from_epoch=rng.choice((0, 1)))
        logs, batches, split, seed = stream(rng, min_delta=min_delta)

        def outcome(hook):
            return (hook.get_state(), pair.ours.stop_training, weights_of(pair.ours))

        pair.reset()
        expected = outcome(play(callbacks.EarlyStopping(**kwargs), pair.ours, logs, batches,
                                seed, 0, len(logs)))
        pair.reset()
        first = play(callbacks.EarlyStopping(**kwargs), pair.ours, logs, batches, seed, 0,
                     split, finish=False)
        if pair.ours.stop_training:
            continue
        second = play(callbacks.EarlyStopping(**kwargs), pair.ours, logs, batches, seed, split,
                      len(logs), state=first.get_state(), best_weights=first.best_weights)
        assert norm(outcome(second)) == norm(expected), f"{rng}: {kwargs} split={split}"


def test_reduce_lr_on_plateau_state(pair):
    for rng in cases("ReduceLROnPlateau state", STATE_CASES):
        kwargs = dict(patience=rng.integer(0, 2), cooldown=rng.integer(0, 2),
                      factor=0.5, min_lr=rng.choice((0.0, 1e-3)))
        logs, batches, split, seed = stream(rng)

        def outcome(hook):
            return hook.get_state(), lr_of(pair.ours)

        pair.reset()
        expected = outcome(play(callbacks.ReduceLROnPlateau(**kwargs), pair.ours, logs,
                                batches, seed, 0, len(logs)))
        pair.reset()
        first = play(callbacks.ReduceLROnPlateau(**kwargs), pair.ours, logs, batches, seed, 0,
                     split, finish=False)
        second = play(callbacks.ReduceLROnPlateau(**kwargs), pair.ours, logs, batches, seed,
                      split, len(logs), state=first.get_state())
        assert norm(outcome(second)) == norm(expected), f"{rng}: {kwargs} split={split}"


def test_model_checkpoint_state(pair, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("checkpoint-state"))
    for rng in cases("ModelCheckpoint state", STATE_CASES // 2):
        kwargs = dict(filepath=rng.choice(("best.weights.h5", "e{epoch}.weights.h5")),
                      monitor="val_loss", save_best_only=rng.boolean(),
                      save_weights_only=True, save_freq=rng.choice(("epoch", 2)))
        logs, batches, split, seed = stream(rng)
        with TempDirs(base) as (whole_dir, split_dir):
            pair.reset()
            make = lambda root: callbacks.ModelCheckpoint(  # noqa: E731
                **dict(kwargs, filepath=os.path.join(root, kwargs["filepath"])))
            whole = play(make(whole_dir), pair.ours, logs, batches, seed, 0, len(logs))
            pair.reset()
            first = play(make(split_dir), pair.ours, logs, batches, seed, 0, split,
                         finish=False)
            second = play(make(split_dir), pair.ours, logs, batches, seed, split, len(logs),
                          state=first.get_state())
            assert norm(second.get_state()) == norm(whole.get_state()), f"{rng}: {kwargs}"
            assert FolderWatcher(split_dir)() == FolderWatcher(whole_dir)(), f"{rng}: {kwargs}"


def test_csv_logger_state(pair, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("csv-state"))
    for rng in cases("CSVLogger state", STATE_CASES):
        logs, batches, split, seed = stream(rng)
        if rng.boolean():  # Later epochs with fewer keys: the columns come from the state.
            logs = [logs[0]] + [{"loss": 0.5} for _ in logs[1:]]
        with TempDirs(base) as (whole_dir, split_dir):
            pair.reset()
            play(callbacks.CSVLogger(os.path.join(whole_dir, "log.csv")), pair.ours, logs,
                 batches, seed, 0, len(logs))
            first = play(callbacks.CSVLogger(os.path.join(split_dir, "log.csv")), pair.ours,
                         logs, batches, seed, 0, split, finish=False)
            first.csv_file.close()  # The process died.
            second = play(callbacks.CSVLogger(os.path.join(split_dir, "log.csv"), append=True),
                          pair.ours, logs, batches, seed, split, len(logs),
                          state=first.get_state())
            with open(os.path.join(whole_dir, "log.csv"), "rb") as f:
                expected = f.read()
            with open(os.path.join(split_dir, "log.csv"), "rb") as f:
                assert f.read() == expected, f"{rng}: split={split}"
            assert second.rows_written == len(logs)


def test_tensorboard_state(pair, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("tensorboard-state"))
    for rng in cases("TensorBoard state", STATE_CASES // 2):
        kwargs = dict(update_freq=rng.choice((1, 2, "epoch")), write_graph=False)
        logs, batches, split, seed = stream(rng)
        with TempDirs(base) as (whole_dir, split_dir):
            pair.reset()
            play(callbacks.TensorBoard(whole_dir, **kwargs), pair.ours, logs, batches, seed, 0,
                 len(logs))
            first = play(callbacks.TensorBoard(split_dir, **kwargs), pair.ours, logs, batches,
                         seed, 0, split)
            play(callbacks.TensorBoard(split_dir, **kwargs), pair.ours, logs, batches, seed,
                 split, len(logs), state=first.get_state())
            whole = {run: sorted(events) for run, events in read_scalars(whole_dir).items()}
            parts = {run: sorted(events) for run, events in read_scalars(split_dir).items()}
            assert parts == whole, f"{rng}: {kwargs} split={split}"


def test_states_are_json_serialisable(pair, tmp_path):
    hooks = [callbacks.EarlyStopping(), callbacks.ReduceLROnPlateau(),
             callbacks.ModelCheckpoint(str(tmp_path / "m.weights.h5"), save_weights_only=True),
             callbacks.CSVLogger(str(tmp_path / "log.csv")),
             callbacks.TensorBoard(str(tmp_path / "tb"), write_graph=False)]
    for hook in hooks:
        hook.set_model(pair.ours)
        hook.on_train_begin()
        hook.on_epoch_end(0, {"loss": float("nan"), "val_loss": 0.5})
        state = hook.get_state()
        assert json.loads(json.dumps(state)) == state
        hook.on_train_end()
