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


# ---- one declaration per flag (issue 23): each role is the list it replaced -------------
# The lists as they were hand-kept before the roles (loops/train_lib.py, research/grid.py,
# input_pipeline/folders.py, loops/run_dir.py, loops/runners.py, loops/lr_find.py,
# loops/predictions.py, flags/config.py). A flag's role changes only with a change here.
ROLE_MEMBERS = {
    "ARCHITECTURE": ("backbone", "alpha", "image_size", "dropout", "augment"),
    "EVALUATION_DATA": ("data_dir", "dataset", "tfds_data_dir", "test_split",
                        "max_examples_per_split"),
    "DATA": ("dataset", "data_dir", "tfds_data_dir", "train_split", "validation_split_name",
             "test_split", "validation_split", "test_split_fraction", "max_examples_per_split",
             "synthetic_examples", "split_seed", "image_size"),
    "PATH": ("data_dir", "tfds_data_dir", "init_checkpoint", "weights", "feature_cache_dir",
             "image_cache_dir"),
    "RESUMABLE": ("verbose", "overwrite", "debug", "workdir", "backup", "image_cache",
                  "image_cache_dir", "feature_cache_dir"),
    "REPEATED": ("backbone", "alpha", "weights", "image_size", "dropout", "augment", "dataset",
                 "data_dir", "tfds_data_dir", "train_split", "validation_split_name",
                 "test_split", "validation_split", "test_split_fraction",
                 "max_examples_per_split", "synthetic_examples", "split_seed", "batch_size",
                 "loop", "seed", "deterministic", "recipe", "mixed_precision",
                 "image_cache_dir", "feature_cache_dir"),
    "FINDER": ("backbone", "alpha", "weights", "image_size", "dropout", "augment",
               "init_checkpoint", "train_bn", "mixed_precision", "dataset", "data_dir",
               "tfds_data_dir", "train_split", "validation_split", "max_examples_per_split",
               "synthetic_examples", "split_seed", "batch_size", "optimizer",
               "label_smoothing", "weight_decay", "clipnorm", "layer_lr_decay"),
    "NOT_IN_ID": ("workdir", "phase", "seed", "overwrite", "verbose", "debug",
                  "feature_cache_dir", "image_cache_dir", "image_cache"),
    "SPLIT": ("data_dir", "dataset", "tfds_data_dir", "test_split", "split_seed",
              "validation_split", "test_split_fraction", "max_examples_per_split",
              "synthetic_examples"),
    "DATA_ERROR": ("validation_split", "test_split_fraction", "max_examples_per_split",
                   "synthetic_examples", "split_seed"),
}


@pytest.mark.parametrize("role", sorted(ROLE_MEMBERS))
def test_each_role_is_the_list_it_replaced(role):
    from flags import config as config_lib
    members = config_lib.fields_with(getattr(config_lib, role))
    assert len(set(members)) == len(members)
    assert set(members) == set(ROLE_MEMBERS[role]), (
        sorted(set(members) - set(ROLE_MEMBERS[role])),
        sorted(set(ROLE_MEMBERS[role]) - set(members)))
    order = [f.name for f in dataclasses.fields(Config)]
    assert list(members) == sorted(members, key=order.index)  # Field order.


def test_every_role_is_pinned_and_an_unknown_role_is_refused():
    from flags import config as config_lib
    assert {getattr(config_lib, name) for name in ROLE_MEMBERS} == set(config_lib.ROLES)
    with pytest.raises(ValueError, match="unknown role 'nope'"):
        config_lib.fields_with("nope")


def test_every_field_declares_help_and_group():
    from flags import config as config_lib
    for field in dataclasses.fields(Config):
        assert field.metadata["help"].strip(), field.name
        assert field.metadata["group"] in config_lib.GROUP_HEADINGS, field.name
        assert field.metadata["roles"] <= set(config_lib.ROLES), field.name
