import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from tapefit.flags.config import Config, ConfigError
from tapefit.flags.definitions import config_from_flags, define_flags
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
# input_pipeline/folders.py, loops/rundir/run_dir.py, loops/training/runners.py, loops/lr_find.py,
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


# Flags added since, and their roles (the lists above stay as they were replaced).
ADDED_SINCE = {
    "max_examples_per_class": ("DATA", "EVALUATION_DATA", "SPLIT", "REPEATED", "FINDER",
                               "DATA_ERROR"),
    # Issue 32: evaluate's interpretation (change no result).
    **{name: ("RESUMABLE", "NOT_IN_ID") for name in ("interpret_split", "top_losses", "gradcam")},
}

# Roles given to existing flags since (issue 29: the next command repeats every flag that
# shapes the run, --strategy too).
ROLES_GIVEN_SINCE = {
    "REPEATED": ("strategy", "jit_compile", "steps_per_execution", "feature_cache",
                 "feature_precision", "image_cache", "tensorboard", "csv_log",
                 "remote_monitor_url", "terminate_on_nan", "backup", "backup_every_steps"),
}


@pytest.mark.parametrize("role", sorted(ROLE_MEMBERS))
def test_each_role_is_the_list_it_replaced(role):
    from tapefit.flags import config as config_lib
    members = config_lib.fields_with(getattr(config_lib, role))
    assert len(set(members)) == len(members)
    expected = set(ROLE_MEMBERS[role]) | {name for name, roles in ADDED_SINCE.items()
                                          if role in roles} | set(ROLES_GIVEN_SINCE.get(role, ()))
    assert set(members) == expected, (sorted(set(members) - expected),
                                      sorted(expected - set(members)))
    order = [f.name for f in dataclasses.fields(Config)]
    assert list(members) == sorted(members, key=order.index)  # Field order.


def test_every_role_is_pinned_and_an_unknown_role_is_refused():
    from tapefit.flags import config as config_lib
    assert {getattr(config_lib, name) for name in ROLE_MEMBERS} == set(config_lib.ROLES)
    with pytest.raises(ValueError, match="unknown role 'nope'"):
        config_lib.fields_with("nope")


def test_every_field_declares_help_and_group():
    from tapefit.flags import config as config_lib
    for field in dataclasses.fields(Config):
        assert field.metadata["help"].strip(), field.name
        assert field.metadata["group"] in config_lib.GROUP_HEADINGS, field.name
        assert field.metadata["roles"] <= set(config_lib.ROLES), field.name


# ---- --max_examples_per_class: the flag added in one declaration (issue 23) ------------
def _class_counts(ds, num_classes=2):
    return np.bincount([int(label) for _, label in ds.as_numpy_iterator()],
                       minlength=num_classes).tolist()


def test_max_examples_per_class_is_declared_once():
    from tapefit.flags import config as config_lib
    for role in (config_lib.DATA, config_lib.EVALUATION_DATA, config_lib.SPLIT,
                 config_lib.REPEATED, config_lib.FINDER, config_lib.DATA_ERROR):
        assert "max_examples_per_class" in config_lib.fields_with(role), role
    # At its default it leaves data keys as they were before it existed.
    assert "max_examples_per_class" not in config_lib.key_values(Config())
    assert config_lib.key_values(Config(max_examples_per_class=3))[
        "max_examples_per_class"] == 3
    assert parse("--max_examples_per_class=5").max_examples_per_class == 5
    with pytest.raises(ConfigError, match=r"--max_examples_per_class=-1 must be in \[0, "):
        Config(max_examples_per_class=-1)


def test_max_examples_per_class_of_a_folder_is_seeded(tmp_path):
    from PIL import Image

    from tapefit.input_pipeline import folders
    for split, counts in (("train", (7, 3)), ("test", (4, 2))):
        for name, count in zip(("a", "b"), counts, strict=True):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(
                    tmp_path / split / name / f"{i}.png")

    def load(**changes):
        return folders.load(Config(data_dir=str(tmp_path), image_size=8, image_cache="off",
                                   validation_split=0.2, **changes))
    first, again = load(max_examples_per_class=2), load(max_examples_per_class=2)
    assert first.ids == again.ids  # The same choice on every run.
    assert _class_counts(first.train) == [2, 2] and _class_counts(first.test) == [2, 2]
    both = load(max_examples_per_class=2, max_examples_per_split=3)
    assert both.sizes["train"] == 3 and max(_class_counts(both.train)) <= 2
    assert folders.data_fingerprint(Config(data_dir=str(tmp_path))) != \
        folders.data_fingerprint(Config(data_dir=str(tmp_path), max_examples_per_class=2))


def test_max_examples_per_class_of_synthetic_and_tfds_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from tapefit import input_pipeline
    from tapefit.input_pipeline import synthetic, tfds_source
    splits = synthetic.load(Config(dataset="synthetic", image_size=8, max_examples_per_class=5))
    assert splits.sizes == {"train": 10, "validation": 10, "test": 10}
    assert _class_counts(splits.train) == [5, 5]
    monkeypatch.setattr(tfds_source, "network_available", lambda hosts: True)
    with tfds.testing.mock_data(num_examples=12):
        splits = input_pipeline.load_splits(Config(
            image_size=8, tfds_data_dir=str(tmp_path / "tfds"), image_cache="off",
            max_examples_per_class=2))
    for split in ("train", "validation", "test"):
        counts = _class_counts(getattr(splits, split))
        assert max(counts) <= 2 and sum(counts) == splits.sizes[split], (split, counts)
