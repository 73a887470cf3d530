"""Config's values: one range per numeric flag (the mechanism Config uses), one-line
refusals before anything runs, the values at the edges accepted, and the finetune
default README states. Every user error: one line, exit 1, nothing written.
"""
import dataclasses
import os

import pytest

from tapefit.flags import config as config_lib
from tapefit.flags.config import MODES, MONITORS, RANGES, Config, ConfigError, check_number
from tapefit.flags.definitions import _CHOICES
from tests.conftest import ROOT
from tests.test_errors import TINY, assert_one_line_error, run_train

# ---- one range per numeric flag ----------------------------------------------------------------

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


# ---- the finetune rate after --learning_rate=auto ----------------------------------------------

def test_readme_states_the_finetune_default_as_the_code_has_it():
    """Before: the README said finetuning defaults to "a tenth of the head rate" (so 3e-4
    after a head run at 3e-3), while the code's default is a constant 1e-4."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "a tenth of the head rate" not in readme
    assert "finetune\ntrains at 1e-4" in readme and config_lib.FINETUNE_LEARNING_RATE == 1e-4
    cfg = Config(phase="finetune")
    assert cfg.resolved_learning_rate == config_lib.FINETUNE_LEARNING_RATE


# ---- Config validation, before anything runs ---------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    (dict(alpha=0.0), r"--alpha=0.0 must be in \[0.1, 4\]"),
    (dict(alpha=-0.5), r"--alpha=-0.5 must be in \[0.1, 4\]"),
    (dict(alpha=float("nan")), r"--alpha=nan must be in \[0.1, 4\]"),
    (dict(seed=-1), r"--seed=-1 must be in \[0, 2\*\*32\)"),
    (dict(seed=2**32), r"--seed=4294967296 must be in \[0, 2\*\*32\)"),
    (dict(split_seed=-3), r"--split_seed=-3 must be in \[0, 2\*\*32\)"),
    (dict(reduce_lr_factor=1.0), r"--reduce_lr_factor=1.0 must be in \(0, 1\)"),
    (dict(reduce_lr_factor=0.0), r"--reduce_lr_factor=0.0 must be in \(0, 1\)"),
    (dict(reduce_lr_factor=float("nan")), r"--reduce_lr_factor=nan must be in \(0, 1\)"),
    (dict(learning_rate=float("inf")), r"--learning_rate=inf must be in \(0, 3.40282e\+38\]"),
    (dict(learning_rate=float("nan")), r"--learning_rate=nan must be in \(0, 3.40282e\+38\]"),
    (dict(monitor="val_acc"), "unknown --monitor='val_acc'; choose one of: loss, accuracy"),
    (dict(image_size=4096), r"--image_size=4096 must be in \[1, 1024\]"),
    (dict(backup_every_steps=-1), r"--backup_every_steps=-1 must be in \[0, "),
    (dict(min_delta=float("nan")), r"--min_delta=nan must be in \[-1000, 1000\]"),
    (dict(dropout=float("nan")), r"--dropout=nan must be in \[0, 1\)"),
    (dict(early_stopping_patience=-1), r"--early_stopping_patience=-1 must be in \[0, "),
    (dict(reduce_lr_min_lr=-1e-3), r"--reduce_lr_min_lr=-0.001 must be in \[0, 3.40282e\+38\]"),
    (dict(lr_decay_rate=0.0), r"--lr_decay_rate=0.0 must be in \(0, 3.40282e\+38\]"),
    (dict(lr_decay_epochs=0), r"--lr_decay_epochs=0 must be in \[1, "),
    (dict(verbose=5), r"--verbose=5 must be in \[0, 2\]"),
    (dict(workdir=""), "--workdir is empty"),
    (dict(remote_monitor_url="file:///etc/hostname"), "is not an http:// or https:// URL"),
    (dict(remote_monitor_url="ftp://example.com/x"), "is not an http:// or https:// URL"),
    (dict(remote_monitor_url="localhost:9000"), "is not an http:// or https:// URL"),
    (dict(remote_monitor_url="http://"), "is not an http:// or https:// URL with a host"),
    (dict(remote_monitor_url="http://host:port/"), "is not an http:// or https:// URL"),
])
def test_config_refuses_out_of_range_values_in_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as error:
        Config(**changes)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("changes", [
    dict(seed=0), dict(seed=2**32 - 1), dict(split_seed=0), dict(alpha=0.25),
    dict(reduce_lr_factor=0.5), dict(image_size=1024), dict(min_delta=-0.1),
    dict(remote_monitor_url="http://localhost:9000"),
    dict(remote_monitor_url="https://monitor.example.com/publish/epoch/end/"),
    *[dict(monitor=m) for m in MONITORS], *[dict(mode=m) for m in MODES],
])
def test_config_accepts_the_values_at_the_edges(changes):
    Config(**changes)


def test_mode_choices_are_one_constant():
    assert _CHOICES["mode"] is MODES


@pytest.mark.parametrize("flag,fragments", [
    ("--seed=-1", ["--seed=-1 must be in [0, 2**32)"]),
    ("--remote_monitor_url=file:///etc/hostname", ["file:///etc/hostname", "http://"]),
])
def test_train_prints_validation_errors_in_one_line_and_writes_nothing(tmp_path, flag,
                                                                       fragments):
    """Before: --seed=-1 crashed with a traceback; file:// was opened after an epoch."""
    out = run_train(*TINY, f"--workdir={tmp_path / 'run'}", flag)
    assert_one_line_error(out, *fragments)
    assert not (tmp_path / "run").exists()
