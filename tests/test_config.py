import dataclasses
import json
import subprocess
import sys

import pytest
from absl import flags

from flags.config import Config, ConfigError
from flags.definitions import config_from_flags, define_flags
from tests.conftest import ROOT


def parse(*argv):
    values = flags.FlagValues()
    define_flags(values)
    values(["prog", *argv])
    return config_from_flags(values)


def test_defaults_match_the_recipe():
    cfg = parse()
    assert (cfg.phase, cfg.loop, cfg.backbone, cfg.weights) == (
        "head", "custom", "vgg16", "imagenet")
    assert (cfg.image_size, cfg.batch_size, cfg.epochs) == (224, 32, 10)
    assert cfg.train_split == "train[:80%]" and cfg.test_split == "train[90%:]"
    assert cfg.resolved_unfreeze_from == "block5"
    assert parse("--backbone=mobilenet").resolved_unfreeze_from == "block_12"


def test_finetune_learning_rate_defaults_to_a_tenth_of_head():
    head, finetune = parse("--phase=head"), parse("--phase=finetune")
    assert finetune.resolved_learning_rate == pytest.approx(head.resolved_learning_rate / 10)
    assert parse("--phase=finetune", "--learning_rate=0.5").resolved_learning_rate == 0.5


def test_config_round_trips_through_json():
    cfg = parse("--phase=finetune", "--learning_rate=0.003", "--data_dir=/x", "--augment",
                "--mixed_precision=mixed_bfloat16", "--early_stopping")
    again = Config.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["learning_rate"] == 0.003


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse().phase = "finetune"


def test_unknown_json_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown config keys"):
        Config.from_dict({"phse": "head"})


@pytest.mark.parametrize("argv,message", [
    (["--batch_size=0"], r"--batch_size=0 must be in \[1, 2\*\*16\]"),
    (["--dropout=1.5"], "--dropout"),
    (["--mixed_precision=float8"], "mixed_float16"),
])
def test_invalid_values_name_the_fix(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(*argv)


def test_flagfile_and_helpfull_work(tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("--phase=finetune\n--batch_size=7\n")
    assert parse(f"--flagfile={flagfile}").batch_size == 7
    out = subprocess.run([sys.executable, "train.py", "--helpfull"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr  # absl's --helpfull exits with 1.
    assert "--unfreeze_from" in out.stdout and "--early_stopping_patience" in out.stdout
