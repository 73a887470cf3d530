"""The run-directory policy of a phase (issues 10 and 11), end to end.

One process per run directory; `--phase=evaluate --data_dir` evaluates that data; a kill
at any moment never duplicates a CSV row; a non-finite run never writes a non-finite
checkpoint; every one-line error is raised before anything in the workdir changes;
hooks carry their own state, keyed by name, whatever their order; backups are on by
default. Tiny runs: MobileNet(alpha=0.25), 32 px, synthetic data or a few PNGs.
"""
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tapefit.flags.config import Config
from tapefit.flags.errors import ConfigError, TapefitError
from tapefit.loops import phases, train_lib
from tests.conftest import ROOT
from tests.conftest import h5_datasets as weights
from tests.test_errors import TINY, assert_one_line_error, run_train

# The reference run of the resume tests: 5 steps per epoch, 3 epochs, default hooks.
REFERENCE = dict(synthetic_examples=40, epochs=3)


class Interrupted(BaseException):
    """Raised by a test hook to stop a run the way a Ctrl-C would."""


def tiny(workdir, **changes) -> Config:
    values = dict(workdir=str(workdir), backbone="mobilenet", alpha=0.25, weights="none",
                  image_size=32, dataset="synthetic", synthetic_examples=16, batch_size=8,
                  epochs=1, verbose=0, deterministic=True)
    values.update(changes)
    return Config(**values)


def flags_of(cfg: Config) -> list[str]:
    """train.py flags that give exactly `cfg` (every field that differs from the default)."""
    default, argv = Config(), []
    for field in dataclasses.fields(Config):
        value = getattr(cfg, field.name)
        if value == getattr(default, field.name):
            continue
        if isinstance(value, bool):
            argv.append(f"--{field.name}" if value else f"--no{field.name}")
        else:
            argv.append(f"--{field.name}={value}")
    return argv


def snapshot(root) -> dict:
    """Every file (name -> bytes) and folder (name -> None) under `root`, hidden ones too."""
    tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            tree[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                tree[os.path.relpath(path, root)] = f.read()
    return tree


def without_locks(tree: dict) -> dict:
    """A snapshot without lock files: a stale lock of a killed process may be taken over."""
    return {k: v for k, v in tree.items() if not os.path.basename(k).endswith(".lock")}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert np.array_equal(wa[key], wb[key]), key


def all_finite(path) -> bool:
    return all(np.isfinite(v).all() for v in weights(path).values()
               if np.issubdtype(np.asarray(v).dtype, np.floating))


def csv_epochs(path) -> list[str]:
    with open(path) as f:
        return [line.split(",")[0] for line in f.read().splitlines()[1:]]


def csv_epochs_from(data: bytes) -> list[str]:
    return [line.split(",")[0] for line in data.decode().splitlines()[1:]]


def assert_one_line(excinfo, *fragments):
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def write_png(path, tint, size=32):
    pixels = np.full((size, size, 3), tint, np.uint8)
    pixels[::2] //= 2
    Image.fromarray(pixels).save(path, format="PNG")


def png_folder(root, counts: dict):
    """root/<class>/<i>.png, `counts[class]` images each; returns root."""
    for label, count in counts.items():
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(count):
            write_png(folder / f"{i}.png", (40 + 50 * i % 200, 120, 200 - 30 * i % 150))
    return root


# A process that trains `cfg` (JSON in argv[1]) with two extra hooks after the configured
# ones: a hook holding a `filename` that is not a CSV, and one that kills the process
# (os._exit: no cleanup at all) at the end of epoch argv[2] (0-based), i.e. after CSVLogger
# wrote that epoch's row and before the loop saves that epoch's backup.
KILLER = """
import json, os, sys
sys.path.insert(0, {root!r})
from tapefit.flags.quiet import silence_native_logs
silence_native_logs()
from tapefit.flags.config import Config
from tapefit.loops import phases, train_lib
cfg = Config.from_dict(json.loads(sys.argv[1]))
kill_epoch, notes = int(sys.argv[2]), sys.argv[3]

def extra_hooks(module):
    class Notes(module.LambdaCallback):
        filename = notes
    kill = module.LambdaCallback(
        on_epoch_end=lambda epoch, logs: os._exit(9) if epoch == kill_epoch else None)
    return [Notes(), kill]

phases.train(cfg, extra_hooks=extra_hooks)
sys.exit(3)  # Not killed: the test's premise is broken.
"""


def run_killed(cfg: Config, kill_epoch: int, notes) -> None:
    out = subprocess.run(
        [sys.executable, "-c", KILLER.format(root=ROOT), json.dumps(cfg.to_dict()),
         str(kill_epoch), str(notes)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 9, out.stderr[-3000:]


def notes_hooks(notes):
    def extra_hooks(module):
        class Notes(module.LambdaCallback):
            filename = str(notes)
        return [Notes()]
    return extra_hooks


def interrupt_at_epoch_begin(epoch_to_stop):
    """Extra hooks that stop the run as an epoch begins (after the previous epoch's backup)."""
    def stop(epoch, logs=None):
        if epoch == epoch_to_stop:
            raise Interrupted(f"epoch {epoch}")

    def extra_hooks(module):
        return [module.LambdaCallback(on_epoch_begin=stop)]
    return extra_hooks


def fresh_session():
    """As one process per phase (and research/runner.py between phases): Keras' layer
    names, which a backup's variable paths hold, start from scratch."""
    import keras
    keras.backend.clear_session()


@pytest.fixture(autouse=True)
def _fresh_session():
    fresh_session()


# ---- shared runs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """A finished head phase (1 epoch, 16 synthetic examples): a template, copied by tests."""
    workdir = tmp_path_factory.mktemp("head") / "w"
    phases.run(tiny(workdir))
    assert os.path.isfile(workdir / "head" / "final.weights.h5")
    return workdir


@pytest.fixture
def head_copy(head_run, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(head_run, workdir)
    return workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the resume tests' configuration: its head directory."""
    workdir = tmp_path_factory.mktemp("reference") / "w"
    phases.run(tiny(workdir, **REFERENCE))
    return workdir / "head"


@pytest.fixture(scope="module")
def killed_at_epoch_2(tmp_path_factory):
    """A run killed (os._exit) right after epoch 2's CSV row, before epoch 2's backup;
    epoch 1's backup exists. A template: tests copy it. Returns (workdir, notes file)."""
    base = tmp_path_factory.mktemp("killed")
    notes = base / "notes.txt"
    notes.write_text("my own notes\nnot a CSV, 3 lines\nkeep them\n")
    workdir = base / "w"
    run_killed(tiny(workdir, **REFERENCE), 1, notes)
    return workdir, notes


@pytest.fixture(scope="module")
def resumed_after_kill(killed_at_epoch_2, tmp_path_factory):
    """The killed run, before and after re-running the same configuration."""
    template, notes = killed_at_epoch_2
    workdir = tmp_path_factory.mktemp("resumed") / "w"
    shutil.copytree(template, workdir)
    before = snapshot(workdir)
    notes_before = (notes.read_bytes(), os.stat(notes).st_mtime_ns)
    fresh_session()
    phases.train(tiny(workdir, **REFERENCE), extra_hooks=notes_hooks(notes))
    return workdir / "head", before, notes, notes_before


# ---- 1. one process per run directory ---------------------------------------------------

def test_two_processes_on_one_workdir_one_refuses_and_the_winners_files_are_intact(tmp_path):
    """Before: both exited 0; config.json was the second's, log.csv interleaved both."""
    workdir = tmp_path / "w"
    configs = [tiny(workdir, epochs=2), tiny(workdir, epochs=3, learning_rate=0.01)]
    processes = []
    for cfg in configs:
        processes.append(subprocess.Popen(
            [sys.executable, "train.py", *flags_of(cfg)], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        time.sleep(0.5)
    outs = [subprocess.CompletedProcess(p.args, None, *p.communicate(timeout=300))
            for p in processes]
    for out, p in zip(outs, processes):
        out.returncode = p.returncode
    assert sorted(out.returncode for out in outs) == [0, 1], [o.stderr[-2000:] for o in outs]
    win = 0 if outs[0].returncode == 0 else 1
    winner, loser = configs[win], outs[1 - win]
    assert_one_line_error(loser, "in use by pid", f"pid {processes[win].pid} ")

    run_dir = workdir / "head"
    saved = json.loads((run_dir / "config.json").read_text())
    assert Config.from_dict(saved) == winner
    assert csv_epochs(run_dir / "log.csv") == [str(e) for e in range(winner.epochs)]
    header, *rows = (run_dir / "log.csv").read_text().splitlines()
    assert all(len(row.split(",")) == len(header.split(",")) for row in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == summary["epochs_run"] == winner.epochs
    assert not os.path.exists(run_dir / "backup")
    assert not [n for n in os.listdir(workdir) if n.endswith(".lock")]  # Released.
    # The final weights are the winner's run, bit for bit (--deterministic).
    alone = tmp_path / "alone"
    phases.run(winner.replace(workdir=str(alone)))
    assert_same_weights(alone / "head" / "final.weights.h5", run_dir / "final.weights.h5")


# ---- 2. --phase=evaluate --data_dir -----------------------------------------------------

def test_evaluate_uses_the_data_dir_it_is_given(head_copy, tmp_path):
    """Before: it evaluated the training run's own test split whatever --data_dir said."""
    own = phases.run(Config(phase="evaluate", workdir=str(head_copy), verbose=0))
    assert own["test_examples"] == 8  # 16 synthetic examples: test split of 8.
    other = png_folder(tmp_path / "other", {"cat": 3, "dog": 2})
    result = phases.run(Config(phase="evaluate", workdir=str(head_copy),
                                  data_dir=str(other), verbose=0))
    evaluation = json.loads((head_copy / "evaluate" / "evaluation.json").read_text())
    assert result["test_examples"] == evaluation["test_examples"] == 5
    assert str(other) in evaluation["data"]
    # The numbers are the model's on those 5 images: recompute them by hand.
    import keras
    model, _, class_names, _ = train_lib.load_trained_model(str(head_copy))
    assert class_names == ["cat", "dog"]
    images = np.stack([np.asarray(Image.open(other / c / f"{i}.png").convert("RGB"))
                       for c, n in (("cat", 3), ("dog", 2)) for i in range(n)])
    labels = np.array([0, 0, 0, 1, 1])
    logits = keras.ops.convert_to_numpy(model(images.astype("float32"), training=False))
    assert evaluation["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)))
    loss = keras.ops.convert_to_numpy(train_lib.loss_fn()(labels, logits))
    assert evaluation["loss"] == pytest.approx(float(loss), rel=1e-4)


def test_evaluate_on_a_missing_folder_is_one_line_and_writes_nothing(head_copy, tmp_path):
    """Before: exit 0, evaluated on the training run's own test split."""
    before = snapshot(head_copy)
    with pytest.raises(ConfigError) as e:
        phases.run(Config(phase="evaluate", workdir=str(head_copy),
                             data_dir=str(tmp_path / "nowhere"), verbose=0))
    assert_one_line(e, str(tmp_path / "nowhere"))
    assert snapshot(head_copy) == before


def test_evaluate_on_other_class_names_is_one_line_and_writes_nothing(head_copy, tmp_path):
    other = png_folder(tmp_path / "birds", {"bird": 2, "fish": 2})
    before = snapshot(head_copy)
    with pytest.raises(ConfigError) as e:
        phases.run(Config(phase="evaluate", workdir=str(head_copy), data_dir=str(other),
                             verbose=0))
    assert_one_line(e, "bird", "cat")
    assert snapshot(head_copy) == before


# ---- 3. a kill between an epoch's CSV row and its backup --------------------------------

def test_kill_after_the_first_csv_row_before_any_backup_restarts_cleanly(reference, tmp_path):
    """Before: the re-run appended to log.csv, so epoch 1's row appeared twice."""
    workdir, notes = tmp_path / "w", tmp_path / "notes.txt"
    notes.write_text("notes\n")
    cfg = tiny(workdir, **REFERENCE)
    run_killed(cfg, 0, notes)
    run_dir = workdir / "head"
    assert csv_epochs(run_dir / "log.csv") == ["0"]  # The row is there...
    assert not os.path.exists(run_dir / "backup" / "state.json")  # ...its backup is not.
    phases.run(cfg)
    assert (run_dir / "log.csv").read_bytes() == (reference / "log.csv").read_bytes()
    assert_same_weights(reference / "final.weights.h5", run_dir / "final.weights.h5")
    assert_same_weights(reference / "best.weights.h5", run_dir / "best.weights.h5")


def test_kill_after_a_csv_row_before_its_backup_resumes_without_a_duplicate_row(
        resumed_after_kill, reference):
    run_dir, before, _, _ = resumed_after_kill
    # The premise: two rows, the backup of epoch 1 only.
    assert csv_epochs_from(before["head/log.csv"]) == ["0", "1"]
    assert json.loads(before["head/backup/state.json"])["epoch"] == 1
    assert csv_epochs(run_dir / "log.csv") == ["0", "1", "2"]
    assert (run_dir / "log.csv").read_bytes() == (reference / "log.csv").read_bytes()
    assert_same_weights(reference / "final.weights.h5", run_dir / "final.weights.h5")
    assert not os.path.exists(run_dir / "backup")


# ---- 8. a hook with a `filename` that is not a CSV ----------------------------------------

def test_a_hook_with_a_filename_attribute_is_not_touched_on_resume(resumed_after_kill):
    """Before: resume truncated every hook's `filename` as if it were a CSV log."""
    _, _, notes, (data, mtime_ns) = resumed_after_kill
    assert notes.read_bytes() == data == b"my own notes\nnot a CSV, 3 lines\nkeep them\n"
    assert os.stat(notes).st_mtime_ns == mtime_ns


# ---- 4. non-finite training ----------------------------------------------------------------

def poison_at_first_step(module):
    """Makes the weights NaN after the first step, as a diverging update would."""
    def poison(batch, logs=None):
        model = hook.model
        if batch == 0 and np.isfinite(model.get_weights()[-1]).all():
            values = model.get_weights()
            values[-1] = np.full_like(values[-1], np.nan)  # The logits' bias.
            model.set_weights(values)
    hook = module.LambdaCallback(on_train_batch_end=poison)
    return [hook]


@pytest.mark.parametrize("loop,terminate_on_nan", [("custom", True), ("custom", False),
                                                   ("fit", True)])
def test_nan_in_the_first_epoch_writes_no_checkpoint(tmp_path, loop, terminate_on_nan):
    """Before: best.weights.h5 held NaN and predict printed `nan` with exit code 0."""
    workdir = tmp_path / "w"
    cfg = tiny(workdir, epochs=2, loop=loop, terminate_on_nan=terminate_on_nan)
    phases.train(cfg, extra_hooks=poison_at_first_step)
    run_dir = workdir / "head"
    assert not os.path.exists(run_dir / "best.weights.h5")
    assert not os.path.exists(run_dir / "final.weights.h5")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "nan"
    assert summary["files"]["final"] is None and summary["files"]["best"] is None
    assert not os.path.exists(run_dir / "backup")  # Not resumable into NaN either.
    if loop == "custom" and terminate_on_nan:
        image = tmp_path / "x.png"
        write_png(image, (200, 100, 50))
        out = subprocess.run([sys.executable, "predict.py", f"--workdir={workdir}", str(image)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 1
        assert_one_line_error(out, "no trained weights")
        assert not out.stdout.strip()


@pytest.fixture(scope="module")
def huge_learning_rate(tmp_path_factory):
    """`--optimizer=sgd --learning_rate=3e38`: the loss overflows in epoch 1."""
    workdir = tmp_path_factory.mktemp("huge_lr") / "w"
    phases.run(tiny(workdir, synthetic_examples=40, epochs=2, optimizer="sgd",
                       learning_rate=3e38))
    return workdir


def test_a_huge_learning_rate_never_leaves_non_finite_weights_or_predictions(
        huge_learning_rate, tmp_path):
    workdir = huge_learning_rate
    run_dir = workdir / "head"
    assert json.loads((run_dir / "summary.json").read_text())["stop_reason"] == "nan"
    for name in ("best.weights.h5", "final.weights.h5"):
        assert not os.path.exists(run_dir / name) or all_finite(run_dir / name), name
    image = tmp_path / "x.png"
    write_png(image, (200, 100, 50))
    out = subprocess.run([sys.executable, "predict.py", f"--workdir={workdir}", str(image)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode == 0:  # Finite weights that give finite probabilities.
        assert "nan" not in out.stdout.lower() and "inf" not in out.stdout.lower()
    else:
        assert_one_line_error(out)


def test_an_epoch_with_a_non_finite_loss_is_never_checkpointed(huge_learning_rate):
    run_dir = huge_learning_rate / "head"
    log = (run_dir / "log.csv").read_text()
    assert "inf" in log or "nan" in log  # The premise: epoch 1's loss is not finite.
    assert not os.path.exists(run_dir / "best.weights.h5")
    assert not os.path.exists(run_dir / "final.weights.h5")


# ---- 5. non-finite learning rates ------------------------------------------------------------

def test_infinite_learning_rate_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    out = run_train(*TINY, f"--workdir={tmp_path / 'w'}", "--learning_rate=inf")
    assert out.returncode == 1
    assert_one_line_error(out, "--learning_rate=inf")
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), float("inf")])
def test_non_finite_learning_rates_are_config_errors(tmp_path, value):
    with pytest.raises(ConfigError) as e:
        tiny(tmp_path / "w", learning_rate=value)
    assert_one_line(e, "--learning_rate=")


# ---- 6. every one-line error before anything is written ----------------------------------------

@pytest.mark.parametrize("changes,fragments", [
    (dict(phase="finetune", unfreeze_from="conv_dw_99"), ["conv_dw_99"]),
    # Before: the old run directory was deleted, then the error was raised.
    (dict(overwrite=True, steps_per_execution=3), ["--steps_per_execution=3", "2 steps"]),
    (dict(monitor="val_los"), ["--monitor", "val_loss"]),
    (dict(phase="finetune", dropout=0.3), ["--dropout=0.3", "head"]),
    (dict(phase="finetune", image_size=48), ["--image_size=48", "head"]),
    (dict(), ["is finished", "--overwrite"]),
    (dict(epochs=3), ["is finished", "--overwrite"]),
], ids=["unknown_layer", "steps_per_execution_overwrite", "unknown_monitor",
        "finetune_other_dropout", "finetune_other_image_size", "finished", "finished_other"])
def test_errors_leave_the_workdir_byte_identical(head_copy, changes, fragments):
    cfg = tiny(head_copy)
    before = snapshot(head_copy)
    with pytest.raises(TapefitError) as e:
        phases.run(cfg.replace(**changes))
    assert_one_line(e, *fragments)
    assert snapshot(head_copy) == before


def test_resume_with_other_flags_leaves_the_workdir_byte_identical(killed_at_epoch_2, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(killed_at_epoch_2[0], workdir)
    before = snapshot(workdir)
    with pytest.raises(ConfigError) as e:
        phases.run(tiny(workdir, **REFERENCE, learning_rate=0.5))
    assert_one_line(e, "cannot resume", "--learning_rate=0.5")
    # The killed process's stale lock may be taken over; nothing else changes.
    after = snapshot(workdir)
    assert without_locks(after) == without_locks(before)
    assert set(after) <= set(before)


def test_a_corrupt_backup_is_one_line_and_writes_nothing(killed_at_epoch_2, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(killed_at_epoch_2[0], workdir)
    npz = next((workdir / "head" / "backup").glob("variables-*.npz"))
    npz.write_bytes(npz.read_bytes()[:200])  # Starts like a zip file; cut short.
    before = snapshot(workdir)
    with pytest.raises(TapefitError) as e:
        phases.run(tiny(workdir, **REFERENCE))
    assert_one_line(e, "backup", "--overwrite")
    assert without_locks(snapshot(workdir)) == without_locks(before)


def test_zero_epochs_is_one_line_and_writes_nothing(tmp_path):
    """Before: --epochs=0 left a "finished" head phase without best.weights.h5."""
    with pytest.raises(ConfigError) as e:
        phases.run(tiny(tmp_path / "w", epochs=0))
    assert_one_line(e, "--epochs=0", "--epochs=1")
    assert not os.path.exists(tmp_path / "w")


def test_a_run_that_finishes_while_another_plans_is_not_overwritten(tmp_path, monkeypatch):
    workdir = tmp_path / "w"
    first, second = tiny(workdir, epochs=1), tiny(workdir, epochs=2, learning_rate=0.01)
    real_make_plan = phases.make_plan

    def make_plan(cfg, *args, **kwargs):
        plan = real_make_plan(cfg, *args, **kwargs)
        if cfg == second:  # Another process runs the whole first phase meanwhile.
            phases.run(first)
        return plan

    monkeypatch.setattr(phases, "make_plan", make_plan)
    with pytest.raises(TapefitError):
        phases.run(second)
    saved = json.loads((workdir / "head" / "config.json").read_text())
    assert Config.from_dict(saved) == first


# ---- 7. hooks restored by name, in any order ---------------------------------------------

def test_resume_restores_every_hook_state_whatever_the_hook_order(tmp_path):
    import keras
    import tensorflow as tf

    from tapefit import callbacks
    from tapefit.loops.training.checkpointer import Checkpointer, Position, state_key
    from tapefit.loops.training.custom import CustomLoop
    from tapefit.loops.training.hooks import hook_specs, instantiate

    cfg = tiny(tmp_path / "w", early_stopping=True, early_stopping_patience=10,
               restore_best_weights=True, reduce_lr_on_plateau=True, reduce_lr_patience=10,
               save_best_only=False, tensorboard=False, epochs=4)
    run_dir = cfg.run_dir
    os.makedirs(run_dir)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    validation = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)

    def new_loop():
        fresh_session()  # Same variable paths in both loops.
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, name="d")],
                                 name="m")
        return CustomLoop(model, keras.optimizers.Adam(0.05))

    def with_state(hooks):
        return [h for h in hooks if hasattr(h, "get_state")]

    # A run stopped as epoch 3 begins: the backup holds the hooks after epoch 2.
    loop = new_loop()
    # The custom loop's exact backups are its own, not a hook's (as CustomRunner does).
    def not_a_backup_hook(hooks):
        return [h for h in hooks if not isinstance(h, callbacks.BackupAndRestore)]

    hooks = not_a_backup_hook(instantiate(hook_specs(cfg, run_dir), callbacks))
    saved = {}

    def record(epoch, logs=None):  # After every other hook, just before the backup.
        if epoch == 1:
            saved.update({state_key(h): h.get_state() for h in with_state(hooks)})

    def stop(epoch, logs=None):
        if epoch == 2:
            raise Interrupted()

    hooks.append(callbacks.LambdaCallback(on_epoch_end=record, on_epoch_begin=stop))
    backup_dir = os.path.join(run_dir, "backup")
    with pytest.raises(Interrupted):
        loop.fit(train, epochs=cfg.epochs, steps_per_epoch=4, validation_data=validation,
                 callbacks=hooks, checkpointer=Checkpointer(backup_dir))
    keys = set(saved)
    assert {"EarlyStopping", "CSVLogger", "ReduceLROnPlateau",
            "ModelCheckpoint:best.weights.h5",
            "ModelCheckpoint:epoch{epoch:02d}.weights.h5"} <= keys
    # The saved states are not the fresh ones (else a restore proves nothing).
    assert saved["CSVLogger"]["rows_written"] == 2
    assert np.isfinite(saved["ModelCheckpoint:best.weights.h5"]["best"])
    assert np.isfinite(saved["EarlyStopping"]["best"])
    assert saved["EarlyStopping"]["best_weights"] is not None
    assert np.isfinite(saved["ReduceLROnPlateau"]["best"])

    # A fresh loop whose hooks come in another order (both checkpoints swapped too).
    loop = new_loop()
    fresh = not_a_backup_hook(instantiate(hook_specs(cfg, run_dir, resuming=True), callbacks))
    shuffled = fresh[::-1]
    order = [state_key(h) for h in with_state(shuffled)]
    assert order != [state_key(h) for h in with_state(fresh)]
    backup = Checkpointer(backup_dir).attach(loop, shuffled)
    callback_list = callbacks.CallbackList(shuffled, model=loop.model, epochs=cfg.epochs,
                                           steps=4)
    callback_list.on_train_begin()
    assert backup.restore() == Position(2, 0, False)
    for hook in with_state(shuffled):
        state, expected = hook.get_state(), saved[state_key(hook)]
        assert state.keys() == expected.keys(), state_key(hook)
        for name, value in expected.items():
            if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
                assert len(state[name]) == len(value)
                assert all(np.array_equal(a, b) for a, b in zip(state[name], value))
            else:
                assert state[name] == expected[name], (state_key(hook), name)
    with open(os.path.join(run_dir, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1"]
    callback_list.on_train_end()


# ---- 9. backups on by default -----------------------------------------------------------

def test_default_backups_resume_after_sigkill(reference, tmp_path, caplog):
    workdir = tmp_path / "w"
    cfg = tiny(workdir, **REFERENCE)
    argv = flags_of(cfg)
    names = [a.split("=")[0].lstrip("-") for a in argv]
    assert not [n for n in names if "backup" in n]  # No backup flag at all.
    process = subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = workdir / "head" / "backup" / "state.json"
    deadline = time.monotonic() + 300
    while not state.exists():
        assert process.poll() is None, "finished or failed before its first backup"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (workdir / "head" / "final.weights.h5").exists()
    with caplog.at_level(logging.INFO):
        phases.run(cfg)
    assert "resuming from the backup" in caplog.text
    run_dir = workdir / "head"
    assert_same_weights(reference / "final.weights.h5", run_dir / "final.weights.h5")
    assert (run_dir / "log.csv").read_bytes() == (reference / "log.csv").read_bytes()


# ---- 10. resume: changed data refused, re-spelled paths accepted -------------------------

def test_resume_refuses_changed_data_and_accepts_respelled_paths(tmp_path, monkeypatch,
                                                                   caplog):
    data = tmp_path / "data"
    png_folder(data / "train", {"cat": 8, "dog": 8})
    workdir = tmp_path / "w"
    cfg = tiny(workdir, dataset="cats_vs_dogs", data_dir=str(data), epochs=3)
    with pytest.raises(Interrupted):  # Stopped after epoch 1 and its backup.
        phases.train(cfg, extra_hooks=interrupt_at_epoch_begin(1))
    assert (workdir / "head" / "backup" / "state.json").exists()

    added = data / "train" / "cat" / "new.png"
    write_png(added, (1, 2, 3))
    before = snapshot(workdir)
    with pytest.raises(ConfigError) as e:
        phases.run(cfg)
    assert_one_line(e, "changed", "--overwrite")
    assert snapshot(workdir) == before
    os.remove(added)

    # Trailing slashes: resumes (and is stopped again after epoch 2).
    respelled = cfg.replace(workdir=str(workdir) + "/", data_dir=str(data) + "/")
    caplog.set_level(logging.INFO)
    fresh_session()
    with pytest.raises(Interrupted):
        phases.train(respelled, extra_hooks=interrupt_at_epoch_begin(2))
    assert "resuming from the backup at epoch 2" in caplog.text
    caplog.clear()
    # Relative paths: resumes and finishes.
    monkeypatch.chdir(tmp_path)
    fresh_session()
    phases.run(cfg.replace(workdir="w", data_dir="data"))
    assert "resuming from the backup at epoch 3" in caplog.text
    assert csv_epochs(workdir / "head" / "log.csv") == ["0", "1", "2"]
    assert (workdir / "head" / "final.weights.h5").exists()


def test_the_fix_named_for_an_unfinished_nobackup_run_works(tmp_path):
    cfg = tiny(tmp_path / "w", epochs=2, backup=False)
    with pytest.raises(Interrupted):
        phases.train(cfg, extra_hooks=interrupt_at_epoch_begin(1))
    with pytest.raises(ConfigError) as e:
        phases.run(cfg)
    assert_one_line(e, "--nobackup")
    if "drop --nobackup" in str(e.value):  # Follow the advice.
        fresh_session()
        phases.run(cfg.replace(backup=True))
        assert csv_epochs(tmp_path / "w" / "head" / "log.csv") == ["0", "1"]


def test_evaluate_with_another_dataset_than_the_trained_folder(tmp_path):
    data = png_folder(tmp_path / "data" / "train", {"cat": 8, "dog": 8}).parent
    workdir = tmp_path / "w"
    phases.run(tiny(workdir, dataset="cats_vs_dogs", data_dir=str(data)))
    result = phases.run(Config(phase="evaluate", workdir=str(workdir), dataset="synthetic",
                                  verbose=0))
    assert str(data) not in result["data"]
