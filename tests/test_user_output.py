"""What a user sees: `--help` grouped by purpose, no native start-up noise, one plain
line per epoch when stdout is not a terminal, and the end-of-phase summary."""
import dataclasses
import io
import json
import os
import re
import subprocess
import sys

import pytest
from absl import flags

from tapefit.flags import definitions
from tapefit.flags.config import Config
from tapefit.flags.quiet import NoiseFilter, keep_native_logs
from tapefit.loops import console
from tests.conftest import ROOT

TINY = ["--backbone=mobilenet", "--alpha=0.25", "--weights=none", "--image_size=32",
        "--dataset=synthetic", "--synthetic_examples=16", "--batch_size=8"]


def run(program, *argv, env=None):
    environ = {k: v for k, v in os.environ.items() if k != "TAPEFIT_TF_LOGS"}
    environ.update(env or {})
    return subprocess.run([sys.executable, program, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=environ)


# ---- --help -----------------------------------------------------------------------
def test_help_lists_every_config_field_under_its_group():
    out = run("train.py", "--help")
    assert out.returncode in (0, 1), out.stderr  # absl's help exits with 1.
    text = out.stdout
    headings = [m.group(1) for m in re.finditer(r"^(\S[^:\n]*):$", text, re.M)]
    assert headings[headings.index("flags") + 1:] == list(definitions.GROUPS), headings
    sections = dict(zip(headings, re.split(r"^\S[^:\n]*:$", text, flags=re.M)[1:],
                        strict=True))
    for group, names in definitions.GROUPS.items():
        for name in names:
            flag = re.compile(rf"^  --(\[no\])?{name}: .*?\n    \(default: [^\n]+\)$",
                              re.M | re.S)
            assert flag.search(sections[group]), f"--{name} not under {group!r}:\n{text}"
    shown = set(re.findall(r"^  --(?:\[no\])?(\w+):", text, re.M))
    assert {f.name for f in dataclasses.fields(Config)} <= shown
    assert "json" in shown and "helpfull" not in shown  # Ours only; absl's in --helpfull.


def test_compare_help_shows_its_own_flag_in_a_group():
    out = run("compare.py", "--helpshort")
    assert "\ncomparison:\n  --tolerance: " in out.stdout, out.stdout
    assert "\nphase and paths:\n  --phase: " in out.stdout, out.stdout


def test_a_field_without_a_help_group_fails(monkeypatch):
    name = dataclasses.fields(Config)[-1].name
    groups = {h: tuple(n for n in names if n != name)
              for h, names in definitions.GROUPS.items()}
    monkeypatch.setattr(definitions, "GROUPS", groups)
    with pytest.raises(ValueError, match=rf"'{name}'.*GROUPS"):
        definitions.define_flags(flags.FlagValues())
    monkeypatch.setattr(definitions, "GROUPS", {**groups, "a": (name,), "b": (name,)})
    with pytest.raises(ValueError, match=rf"'{name}' is in 2"):
        definitions.define_flags(flags.FlagValues())


def test_grouped_help_of_a_flag_set():
    values = flags.FlagValues()
    definitions.define_flags(values)
    definitions.define_output_flags(values)
    text = definitions.grouped_help(values, module="nothing", groups={"extra": ("nope",)})
    assert text.index("\nphase and paths:\n") < text.index("\noutput:\n")
    assert "  --[no]json: " in text and "extra:" not in text  # Empty groups are left out.
    assert "  --init_checkpoint: " in text and "(default: unset)" in text


# ---- start-up noise -----------------------------------------------------------------
NATIVE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    (b"I0000 00:00:1795910962.741383    5026 cudart_stub.cc:31] Could not find cuda drivers "
     b"on your machine, GPU will not be used."),
    (b"E0000 00:00:1795910964.365054    5026 cuda_platform.cc:52] failed call to cuInit: "
     b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"),
    b"I0000 00:00:1795910963.1   12 port.cc:153] oneDNN custom operations are on.",
]


def test_noise_filter_drops_native_noise_and_keeps_everything_else():
    noise = NoiseFilter()
    assert not any(noise.keep(line) for line in NATIVE)
    for line in (b"error: --data_dir=/x does not exist; pass an image folder",
                 b"I1129 00:09:27.238620 140335282133888 train_lib.py:157] ours",
                 b"E1129 00:09:27.1 77 gpu_device.cc:2] a real native error",
                 b"Traceback (most recent call last):", b""):
        assert noise.keep(line), line
    # cuInit failing is only expected when the driver was reported missing.
    assert NoiseFilter().keep(NATIVE[2])


def test_noise_filter_process_passes_partial_lines(tmp_path):
    data = b"\n".join(NATIVE) + b"\nkept line\nI0000 00:00:1.2 3 a.cc:1] x\nprompt> "
    out = subprocess.run([sys.executable, "-I", "-S", os.path.join(ROOT, "flags", "quiet.py")],
                         input=data, capture_output=True, timeout=60)
    assert out.stdout == b"kept line\nprompt> "


def test_native_logs_are_kept_when_asked():
    assert keep_native_logs(["train.py", "--verbose=2"], {})
    assert keep_native_logs(["train.py", "--verbose", "2"], {})
    assert keep_native_logs(["train.py"], {"TAPEFIT_TF_LOGS": "1"})
    assert not keep_native_logs(["train.py", "--verbose=1"], {})


# ---- progress -----------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self):
        return True


def drive_epochs(hook, epochs=3, steps=4, validation=True):
    """A fit-shaped event stream, validation included (silent inside fit)."""
    hook.set_params({"verbose": 1, "epochs": epochs, "steps": steps})
    hook.on_train_begin()
    for epoch in range(epochs):
        hook.on_epoch_begin(epoch)
        for step in range(steps):
            hook.on_train_batch_begin(step)
            hook.on_train_batch_end(step, {"accuracy": 0.5, "loss": 0.7 - step / 100})
        logs = {"accuracy": 0.8125, "loss": 0.4123}
        if validation:
            hook.on_test_begin()
            hook.on_test_batch_end(0, {"loss": 0.4})
            hook.on_test_end({"accuracy": 0.83, "loss": 0.399})
            logs.update(val_accuracy=0.83, val_loss=0.399)
        logs["learning_rate"] = 0.001
        hook.on_epoch_end(epoch, logs)
    hook.on_train_end()


def test_not_a_terminal_gets_one_plain_line_per_epoch():
    from tapefit import callbacks
    stream = io.StringIO()
    drive_epochs(callbacks.ProgbarLogger(lines_when_not_tty=True, file=stream))
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 3, text
    for epoch, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"Epoch {epoch}/3 - 4 steps - \d+\.\ds - accuracy: 0\.8125 - "
                            r"loss: 0\.4123 - val_accuracy: 0\.8300 - val_loss: 0\.3990 - "
                            r"learning_rate: 1\.0000e-03", line), line
    quiet = io.StringIO()
    hook = callbacks.ProgbarLogger(lines_when_not_tty=True, file=quiet)
    hook.set_params({"verbose": 0, "epochs": 1, "steps": 1})
    hook.on_epoch_begin(0)
    hook.on_epoch_end(0, {"loss": 1.0})
    assert quiet.getvalue() == ""


def test_bar_fits_the_terminal_and_validation_goes_below():
    from tapefit import callbacks
    stream = Terminal()
    hook = callbacks.ProgbarLogger(file=stream, lines_when_not_tty=True)
    hook._width = lambda: 80
    drive_epochs(hook, epochs=2)
    lines = stream.getvalue().split("\n")
    assert lines[-1] == ""
    shown = [line.split("\r")[-1] for line in lines[:-1]]  # What the terminal keeps.
    assert len(shown) == 4, shown
    for epoch in (0, 1):
        bar, below = shown[2 * epoch], shown[2 * epoch + 1]
        assert bar.startswith(f"Epoch {epoch + 1}/2") and "4/4" in bar, bar
        assert bar.endswith("accuracy: 0.8125 - loss: 0.4123]"), bar
        assert below == "  val_accuracy: 0.8300 - val_loss: 0.3990 - learning_rate: 1.0000e-03"
    for line in lines:
        assert all(len(part) <= 80 for part in line.split("\r")), line


def test_keras_verbose():
    assert console.keras_verbose(1, io.StringIO()) == 2
    assert console.keras_verbose(2, io.StringIO()) == 2
    assert console.keras_verbose(1, Terminal()) == 1
    assert console.keras_verbose(2, Terminal()) == 1
    assert console.keras_verbose(0, Terminal()) == 0
    assert not console.is_interactive(io.StringIO()) and console.is_interactive(Terminal())


# ---- end-of-phase summary -------------------------------------------------------------
HEAD = {
    "phase": "head", "loop": "custom", "run_dir": "runs/x/head", "workdir": "runs/x",
    "epochs_run": 7, "epochs": 10, "stop_reason": "early_stopping", "stopped_epoch": 7,
    "monitor": "val_loss", "best_value": 0.39901, "best_epoch": 4,
    "files": {"best": "runs/x/head/best.weights.h5", "final": "runs/x/head/final.weights.h5",
              "log": "runs/x/head/log.csv", "tensorboard": "runs/x/head/tensorboard"},
    "last_epoch_logs": {"loss": 0.41, "accuracy": 0.8, "val_loss": 0.42, "val_accuracy": 0.8},
    "command_flags": ["--workdir=runs/x", "--backbone=mobilenet", "--alpha=0.25",
                      "--data_dir=my photos"],
}


def test_summary_names_the_stop_the_best_epoch_the_files_and_the_next_command():
    text = console.phase_summary(HEAD)
    assert "7/10 epochs" in text and "early stopping at epoch 7" in text
    assert "best val_loss: 0.3990 at epoch 4" in text
    for path in HEAD["files"].values():
        assert path in text
    assert text.splitlines()[-1] == ("  tapefit train --phase=finetune --workdir=runs/x "
                                     "--backbone=mobilenet --alpha=0.25 '--data_dir=my photos'")
    finetune = dict(HEAD, phase="finetune", stop_reason="finished", stopped_epoch=None,
                    epochs_run=10)
    text = console.phase_summary(finetune)
    assert "10/10 epochs, finished" in text
    assert console.next_command(finetune).startswith("tapefit train --phase=evaluate ")
    nan = dict(HEAD, stop_reason="nan", stopped_epoch=3, best_value=None, best_epoch=None)
    assert "stopped at epoch 3: the loss became NaN" in console.phase_summary(nan)
    assert console.next_command(nan).startswith("tapefit train --phase=head ")
    assert console.next_command(nan).endswith(" --overwrite")


def test_evaluate_summary_points_to_predict():
    result = {"phase": "evaluate", "workdir": "runs/x",
              "weights": "runs/x/finetune/best.weights.h5", "trained_phase": "finetune",
              "test_examples": 400, "loss": 0.3, "accuracy": 0.9125,
              "files": {"evaluation": "runs/x/evaluate/evaluation.json"},
              "command_flags": ["--workdir=runs/x"]}
    text = console.phase_summary(result)
    assert "accuracy 0.9125 on 400 test examples" in text
    assert "runs/x/evaluate/evaluation.json" in text
    assert text.splitlines()[-1] == "  tapefit predict --workdir=runs/x IMAGE..."


# ---- a real run, stdout piped -------------------------------------------------------------
def test_piped_run_prints_one_line_per_epoch_no_noise_and_the_summary(tmp_path):
    """Depends on the training path's wiring: the custom loop's progress hook is
    `loops.console.progress_hook()` and the summary printed is `phase_summary` of
    summary.json."""
    out = run("train.py", "--phase=head", "--epochs=2", f"--workdir={tmp_path}", *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    for noise in ("absl::InitializeLog", "oneDNN", "cudart_stub", "cuInit"):
        assert noise not in out.stderr, out.stderr
    assert "\r" not in out.stdout and "\x1b" not in out.stdout
    epochs = [line for line in out.stdout.splitlines() if line.startswith("Epoch ")]
    assert [line.split(" - ")[0] for line in epochs] == ["Epoch 1/2", "Epoch 2/2"], out.stdout
    with open(tmp_path / "head" / "summary.json") as f:
        summary = json.load(f)
    assert console.phase_summary(summary) in out.stdout  # Same numbers as the file.
    assert console.next_command(summary) in out.stdout


def test_next_command_repeats_seed_recipe_and_determinism():
    from tapefit.flags.config import Config
    from tapefit.loops.training.runners import command_flags
    cfg = Config(workdir="runs/x", seed=0, recipe="tuned", deterministic=True,
                 image_cache_dir="/cache/images")
    flags = command_flags(cfg)
    for flag in ("--seed=0", "--recipe=tuned", "--deterministic",
                 "--image_cache_dir=/cache/images"):
        assert flag in flags, flags
    assert not any(f.startswith("--learning_rate") for f in flags)
    assert command_flags(Config(workdir="runs/x")) == ["--workdir=runs/x"]
