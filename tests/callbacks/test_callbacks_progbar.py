"""ProgbarLogger (tqdm): Keras' ProgbarLogger has no byte-compatible output to
compare with, so these tests check its contract on generated runs instead."""
import io
import math

import pytest
from cb_helpers import Epoch, ModelPair, Scenario, cases, drive, monitored_values

from tapefit import callbacks
from tapefit.callbacks.progbar_logger import format_logs


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def pair():
    return ModelPair("sgd")


def progbar_scenario(rng, n_steps):
    epochs = []
    for _ in range(rng.integer(1, 3)):
        batch_logs = [{"accuracy": 0.5, "loss": monitored_values(rng, 0.1, 1)[0]}
                      for _ in range(n_steps)]
        val = {"loss": rng.choice((0.5, 1e-5, math.nan))} if rng.boolean() else {}
        logs = {"accuracy": 0.5, "loss": rng.choice((0.25, 123.456, -1e-4, math.inf))}
        logs.update({f"val_{k}": v for k, v in val.items()})
        epochs.append(Epoch(batch_logs=batch_logs, val_batches=1 if val else 0, val_logs=val,
                            logs=logs))
    return Scenario(epochs=epochs)


def test_progbar_logger_contract(pair):
    for rng in cases("ProgbarLogger"):
        verbose = rng.choice((0, 1, 1, 2, "auto"))
        force, tty = rng.boolean(), rng.boolean()
        n_steps = rng.integer(1, 3)
        stream = Terminal() if tty else io.StringIO()
        scenario = progbar_scenario(rng, n_steps)
        hook = callbacks.ProgbarLogger(force=force, file=stream)
        # fit passes steps=None when the data's length is unknown.
        params = {"verbose": verbose, "epochs": scenario.n_epochs,
                  "steps": n_steps if rng.random() < 0.8 else None}
        records = drive(hook, pair.ours, scenario, params=params,
                        before_epoch_end=lambda m, e: None)
        context = f"{rng}: verbose={verbose} force={force} tty={tty}\n{scenario}"
        assert all(r[2] is None for r in records), context
        out = stream.getvalue()
        if verbose == 0 or not (force or tty):
            assert out == "", context
            continue
        lines = out.split("\n")
        assert lines[-1] == "", context  # Every bar or line is closed.
        lines = lines[:-1]
        assert len(lines) == scenario.n_epochs, context  # One per epoch.
        assert "Evaluate" not in out, context  # Validation inside fit is silent.
        for epoch, (line, spec) in enumerate(zip(lines, scenario.epochs)):
            final = line.split("\r")[-1]  # What the terminal shows once the bar is done.
            assert final.startswith(f"Epoch {epoch + 1}/{scenario.n_epochs}"), context
            assert final.endswith(format_logs(spec.logs) + ("]" if verbose != 2 else "")), (
                f"{context}\n{final!r}")
            if verbose == 2:
                assert "\r" not in line, context
            else:
                assert f"{n_steps}/{n_steps}" in final, context


def test_format_logs_like_keras_progbar():
    assert format_logs({"loss": 0.25, "accuracy": 1, "tiny": 1e-4, "s": "x"}) == (
        "loss: 0.2500 - accuracy: 1.0000 - tiny: 1.0000e-04 - s: x")


def test_standalone_evaluation_gets_a_bar():
    stream = io.StringIO()
    hook = callbacks.ProgbarLogger(force=True, file=stream)
    hook.set_params({"verbose": 1, "epochs": 1, "steps": None})
    hook.on_test_begin()
    for step in range(4):
        hook.on_test_batch_end(step, {"loss": 0.5})
    hook.on_test_end({"loss": 0.5, "accuracy": 0.75})
    final = stream.getvalue().split("\r")[-1]
    assert final.startswith("Evaluate") and "4/4" in final
    assert final.endswith("loss: 0.5000 - accuracy: 0.7500]\n")


def test_not_a_terminal_writes_nothing_by_default(capsys):
    hook = callbacks.ProgbarLogger()
    hook.set_params({"verbose": 1, "epochs": 2, "steps": 2})
    hook.on_train_begin()
    hook.on_epoch_begin(0)
    hook.on_train_batch_end(0, {"loss": 1.0})
    hook.on_epoch_end(0, {"loss": 1.0})
    hook.on_train_end()
    assert capsys.readouterr().out == ""  # pytest's captured stdout is not a TTY.
