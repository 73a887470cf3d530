"""Issue 21 item 9 (edges) and absl's --flagfile (item 7): numeric ranges, compare.py's
arguments, pseudo file systems, predict's output, which weights evaluate/predict score,
advice on divergence. Every user error: one line, exit 1, nothing written."""
import dataclasses
import os
import subprocess
import sys

import pytest

from flags import config as config_lib
from flags.config import RANGES, Config, ConfigError, check_number
from tests.conftest import ROOT
from tests.test_errors import TINY, assert_one_line_error, run_train


def run_script(script, *argv, timeout=300):
    return subprocess.run([sys.executable, script, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ---- one range per numeric flag ---------------------------------------------------------

def _numeric_fields():
    return [f.name for f in dataclasses.fields(Config)
            if f.type in ("int", "float", "Optional[float]")]


def test_every_numeric_field_has_a_range():
    """The whole list, not the reproductions: a new numeric field without a range fails."""
    missing = [name for name in _numeric_fields() if name not in RANGES]
    assert not missing, missing
    for name in _numeric_fields():  # The default is in range, the example too.
        default = getattr(Config(), name)
        if default is not None:
            check_number(name, default, "int" if isinstance(default, int) else "float")
        check_number(name, RANGES[name].example, "float")


@pytest.mark.parametrize("changes,fragment", [
    (dict(batch_size=2**63), "--batch_size=9223372036854775808 must be in [1, 2**16]"),
    (dict(synthetic_examples=10**9), "--synthetic_examples=1000000000 must be in [2, "),
    (dict(alpha=1e308), "--alpha=1e+308 must be in [0.1, 4]"),
    (dict(alpha=1e-300), "--alpha=1e-300 must be in [0.1, 4]"),
    (dict(min_delta=1e308), "--min_delta=1e+308 must be in [-1000, 1000]"),
    (dict(clipnorm=1e-308), "--clipnorm=1e-308 must be 0 (off) or in [1e-06, 1e+06]"),
    (dict(epochs=10**9), "--epochs=1000000000 must be in [0, "),
    (dict(learning_rate=1e308), "--learning_rate=1e+308 must be in (0, 3.40282e+38]"),
    (dict(weight_decay=1e308), "--weight_decay=1e+308 must be in [0, 1]"),
    (dict(layer_lr_decay=1e-300), "--layer_lr_decay=1e-300 must be in [0.001, 1]"),
    (dict(lr_decay_rate=1e308), "--lr_decay_rate=1e+308 must be in (0, 3.40282e+38]"),
    (dict(warmup_epochs=1e308), "--warmup_epochs=1e+308 must be in [0, "),
    (dict(steps_per_execution=2**40), "--steps_per_execution=1099511627776 must be in [1, "),
    (dict(batch_size=2.5), "--batch_size=2.5 must be a whole number in [1, 2**16]"),
    (dict(batch_size=True), "--batch_size=True must be a whole number"),
    (dict(batch_size=20000, image_size=224), "--batch_size=20000 at --image_size=224 needs"),
    (dict(dataset="synthetic", synthetic_examples=100000, image_size=224),
     "--synthetic_examples=100000 at --image_size=224 needs"),
])
def test_out_of_range_numbers_are_one_line_naming_the_fix(changes, fragment):
    with pytest.raises(ConfigError) as error:
        Config(**changes)
    message = str(error.value)
    assert fragment in message and "pass" in message and "\n" not in message


def test_the_range_mechanism_is_the_one_config_uses():
    """check_number is what Config runs: a field's range changed in RANGES changes Config."""
    Config(batch_size=64)
    old = RANGES["batch_size"]
    RANGES["batch_size"] = dataclasses.replace(old, high=32)
    try:
        with pytest.raises(ConfigError, match=r"--batch_size=64 must be in \[1, 32\]"):
            Config(batch_size=64)
    finally:
        RANGES["batch_size"] = old


@pytest.mark.parametrize("flag,fragment", [
    (f"--batch_size={2**63}", "--batch_size=9223372036854775808 must be in"),
    ("--synthetic_examples=1000000000", "--synthetic_examples=1000000000 must be in"),
    ("--alpha=1e308", "--alpha=1e+308 must be in"),
    ("--min_delta=1e308", "--min_delta=1e+308 must be in"),
    ("--clipnorm=1e-308", "--clipnorm=1e-308 must be 0 (off) or in"),
    ("--logical_cpus=100000", "--logical_cpus=100000 must be in [0, 16]"),
])
def test_train_refuses_out_of_range_numbers_before_writing(tmp_path, flag, fragment):
    """Before: a TF traceback after 3 files (batch size), OOM after 41 s (synthetic),
    a raise after epoch 1 (min_delta), a hang after config.json (logical CPUs)."""
    out = run_train(*TINY, f"--workdir={tmp_path / 'run'}", "--early_stopping", flag)
    assert out.returncode == 1
    assert_one_line_error(out, fragment)
    assert not (tmp_path / "run").exists()


# ---- compare.py ---------------------------------------------------------------------------

@pytest.mark.parametrize("flag,fragment", [
    ("--tolerance=nan", "--tolerance=nan must be in [0, 1]"),
    ("--tolerance=-1", "--tolerance=-1.0 must be in [0, 1]"),
    ("--phase=lr_find", "--phase=lr_find trains nothing that is kept"),
    ("--phase=evaluate", "--phase=head or --phase=finetune"),
])
def test_compare_refuses_what_it_cannot_compare_before_running(tmp_path, flag, fragment):
    """Before: --tolerance=nan|-1 ran both loops, then said DIFFERENT at difference 0;
    --phase=lr_find was accepted."""
    out = run_script("compare.py", *TINY, f"--workdir={tmp_path / 'run'}", flag)
    assert out.returncode == 1
    assert_one_line_error(out, fragment)
    assert not (tmp_path / "run").exists()


# ---- --workdir on a pseudo file system -----------------------------------------------------

@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("script,argv", [
    ("train.py", TINY), ("train.py", [*TINY, "--phase=lr_find"]),
    ("compare.py", TINY),
])
def test_workdir_under_proc_is_one_line(script, argv):
    """Before: a FileNotFoundError traceback from os.makedirs (root may 'write' /proc)."""
    out = run_script(script, *argv, "--workdir=/proc/tapefit-x")
    assert out.returncode == 1
    assert_one_line_error(out, "--workdir=/proc/tapefit-x", "pseudo file system")


# ---- --flagfile ------------------------------------------------------------------------------

@pytest.mark.parametrize("script,kind", [
    *[(script, "fifo") for script in ("train.py", "compare.py", "predict.py", "sweep.py")],
    *[("train.py", kind) for kind in ("dev_zero", "nested_fifo", "huge", "binary")],
])
def test_flagfile_is_a_bounded_regular_file(tmp_path, script, kind):
    """Before: a FIFO hung and /dev/zero read until memory ran out (absl reads it whole)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    path = {"fifo": fifo, "dev_zero": "/dev/zero", "nested_fifo": tmp_path / "outer.flags",
            "huge": tmp_path / "huge.flags", "binary": tmp_path / "binary.flags"}[kind]
    (tmp_path / "outer.flags").write_text(f"--batch_size=8\n--flagfile={fifo}\n")
    with open(tmp_path / "huge.flags", "wb") as f:
        f.truncate(2 << 20)
    (tmp_path / "binary.flags").write_bytes(b"--batch_size=8\n\xff\xfe\n")
    out = run_script(script, f"--flagfile={path}", f"--workdir={tmp_path / 'run'}",
                     timeout=120)
    assert out.returncode == 1
    assert_one_line_error(out, "--flagfile=")
    assert not (tmp_path / "run").exists()


def test_flagfile_that_is_a_regular_file_still_works(tmp_path):
    from loops.entry import check_flagfiles
    inner = tmp_path / "inner.flags"
    inner.write_text("--batch_size=8\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"# comment\n--flagfile={inner}\n--flagfile={outer}\n")  # a cycle too
    check_flagfiles([f"--flagfile={outer}", "--flagfile", str(inner)])
    with pytest.raises(ConfigError, match="not a regular file"):
        check_flagfiles(["--flagfile", str(tmp_path)])
    check_flagfiles(["--", "--flagfile=/dev/zero"])  # After --, not a flag.


# ---- predict.py: escaped names, folders ------------------------------------------------------

def test_escape_controls_keeps_one_line_and_distinct_names():
    from flags.errors import escape_controls
    assert escape_controls("a\tb\nc\rd") == "a\\tb\\nc\\rd"
    assert escape_controls("x\x1b[2Jy\u202ez\u2028") == "x\\x1b[2Jy\\u202ez\\u2028"
    assert escape_controls(b"caf\xff.png") == "caf\\xff.png"
    assert escape_controls("é猫.png") == "é猫.png"
    assert escape_controls("a\\tb", backslash=True) != escape_controls("a\tb", backslash=True)
    for name in ("a\tb", "a\nb", b"\xff\n", "\ud800"):
        assert "\n" not in escape_controls(name) and "\t" not in escape_controls(name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished head run (synthetic 32x32) and a folder of photos, one name forged."""
    import numpy as np
    from PIL import Image
    root = tmp_path_factory.mktemp("predict")
    out = run_train(*TINY, f"--workdir={root / 'run'}")
    assert out.returncode == 0, out.stderr[-2000:]
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.png", "x\tdog\t0.9999\nforged.png", "sub/b.jpg", "back\\slash.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            photos / name, format="PNG")
    (photos / "broken.png").write_bytes(b"not an image")
    return root, photos, names


def test_predict_prints_one_escaped_line_per_image_of_a_folder(trained):
    """Before: a folder was refused, and a name with a tab and a newline forged a line."""
    root, photos, names = trained
    out = run_script("predict.py", f"--workdir={root / 'run'}", str(photos))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == len(names), out.stdout
    fields = [line.split("\t") for line in lines]
    assert all(len(f) == 3 and f[1] in ("cat", "dog") for f in fields), out.stdout
    printed = {f[0] for f in fields}
    assert f"{photos}/x\\tdog\\t0.9999\\nforged.png" in printed
    assert f"{photos}/back\\\\slash.png" in printed
    assert f"{photos}/sub/b.jpg" in printed
    assert "skipped 1 unreadable" in out.stderr and "broken.png" in out.stderr


def test_predict_still_refuses_an_unreadable_file_it_is_given(trained):
    root, photos, _ = trained
    out = run_script("predict.py", f"--workdir={root / 'run'}", str(photos / "broken.png"))
    assert_one_line_error(out, "broken.png")
    assert out.stdout == ""


# ---- which weights evaluate and predict score --------------------------------------------------

def test_evaluate_scores_the_ema_weights_and_says_which(tiny_config):
    """Before: --ema's average reached only final.weights.h5 while evaluate and predict
    read best.weights.h5 (the raw weights)."""
    from loops import console, phases, train_lib
    cfg = tiny_config.replace(ema=0.9, epochs=1, synthetic_examples=16, backup=False)
    phases.run(cfg)
    result = phases.run(cfg.replace(phase="evaluate"))
    assert result["weights"] == os.path.join(cfg.workdir, "head", "final.weights.h5")
    assert "EMA" in result["weights_note"]
    assert "EMA" in console.phase_summary(result)
    import numpy as np

    from model import build_model
    scored, trained, classes, _ = train_lib.load_trained_model(cfg.workdir)
    for name, differs in (("final.weights.h5", False), ("best.weights.h5", True)):
        other = build_model(trained, len(classes), weights=None)
        other.load_weights(os.path.join(cfg.workdir, "head", name))
        same = all(np.array_equal(a, b)
                   for a, b in zip(scored.get_weights(), other.get_weights(), strict=True))
        assert same != differs, name  # predict's model: the EMA weights, not the raw ones.


def test_an_unfinished_phase_is_scored_with_a_warning(tiny_config, caplog):
    """Before: evaluate silently scored an unfinished finetune's best weights."""
    import logging

    from loops import phases
    cfg = tiny_config.replace(epochs=1, synthetic_examples=16, backup=False)
    phases.run(cfg)
    os.remove(os.path.join(cfg.workdir, "head", "final.weights.h5"))  # As if killed.
    with caplog.at_level(logging.WARNING):
        result = phases.run(cfg.replace(phase="evaluate"))
    assert result["weights"].endswith("best.weights.h5")
    assert result["weights_note"].startswith("unfinished")
    warned = [r.getMessage() for r in caplog.records if "unfinished" in r.getMessage()]
    assert len(warned) == 1 and "head phase" in warned[0], warned


# ---- non-finite weights: refused up front, no blame on the rate --------------------------------

def test_nan_backbone_weights_are_refused_before_anything_is_written(tmp_path, tiny_config):
    """Before: training ran, the loss was NaN and the advice was "lower --learning_rate"."""
    import keras
    import numpy as np

    from loops import phases
    backbone = keras.applications.MobileNet(weights=None, include_top=False, alpha=0.25,
                                            input_shape=(32, 32, 3))
    values = backbone.get_weights()
    values[0][0, 0, 0, 0] = np.nan
    backbone.set_weights(values)
    path = str(tmp_path / "nan.weights.h5")
    backbone.save_weights(path)
    cfg = tiny_config.replace(weights=path)
    with pytest.raises(ConfigError, match="holds NaN or infinite values") as error:
        phases.run(cfg)
    assert "learning_rate" not in str(error.value)
    assert not os.path.exists(cfg.workdir)


def test_nan_checkpoint_is_refused_without_blaming_the_rate(tiny_config):
    import numpy as np

    from loops import phases, train_lib
    cfg = tiny_config.replace(epochs=1, synthetic_examples=16, backup=False)
    phases.run(cfg)
    model, _, _, _ = train_lib.load_trained_model(cfg.workdir)
    values = model.get_weights()
    values[-1][:] = np.nan
    model.set_weights(values)
    model.save_weights(os.path.join(cfg.workdir, "head", "best.weights.h5"))
    with pytest.raises(ConfigError, match="hold NaN or infinite values") as error:
        train_lib.load_trained_model(cfg.workdir)
    assert "learning_rate" not in str(error.value) and "--overwrite" in str(error.value)


def test_divergence_advice_blames_the_rate_only_when_plausible():
    from loops.console import divergence_advice, phase_summary
    assert "lower --learning_rate (now 0.1" in divergence_advice(Config(learning_rate=0.1))
    tiny = divergence_advice(Config(learning_rate=1e-7))
    assert "lower --learning_rate" not in tiny and "too small to be the cause" in tiny
    fp16 = divergence_advice(Config(learning_rate=1e-8, mixed_precision="mixed_float16"))
    assert "float16 overflows" in fp16
    text = phase_summary({"phase": "head", "stop_reason": "nan", "advice": tiny})
    assert "lower --learning_rate" not in text and tiny in text


# ---- the finetune rate after --learning_rate=auto ------------------------------------------------

def test_readme_states_the_finetune_default_as_the_code_has_it():
    """Before: the README said finetuning defaults to "a tenth of the head rate" (so 3e-4
    after a head run at 3e-3), while the code's default is a constant 1e-4."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "a tenth of the head rate" not in readme
    assert "finetune\ntrains at 1e-4" in readme and config_lib.FINETUNE_LEARNING_RATE == 1e-4
    cfg = Config(phase="finetune")
    assert cfg.resolved_learning_rate == config_lib.FINETUNE_LEARNING_RATE
