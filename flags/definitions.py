"""absl flag definitions, generated from `Config` so the two never drift apart."""
from __future__ import annotations

import dataclasses

from absl import flags

from flags import config as config_lib

HELP = {
    "phase": "head: train the new head on a frozen backbone; finetune: unfreeze from "
             "--unfreeze_from and train with a lower rate; evaluate: test the newest phase.",
    "loop": "custom: the tf.GradientTape loop; fit: Keras compile()+fit() with keras.callbacks.",
    "workdir": "Run directory; each phase writes <workdir>/<phase>/.",
    "overwrite": "Delete and retrain a phase that already has results in --workdir.",
    "backbone": "Pretrained backbone from keras.applications.",
    "alpha": "MobileNet width multiplier (0.25, 0.5, 0.75 or 1.0 for ImageNet weights).",
    "weights": "imagenet, none, or PATH to a Keras weights file of the backbone without top.",
    "image_size": "Images are resized to image_size x image_size.",
    "dropout": "Dropout rate before the logits (0 disables the layer).",
    "augment": "Random horizontal flips and small rotations inside the model (training only).",
    "unfreeze_from": "finetune: this layer and all after it train (default: block5_conv1 for "
                     "vgg16, conv_dw_12 for mobilenet).",
    "init_checkpoint": "finetune: start from these weights instead of <workdir>/head/best.weights.h5.",
    "dataset": "A tfds image-classification dataset with image/label features, or 'synthetic'.",
    "data_dir": "Image folder (DIR/train, DIR/validation or DIR/val, DIR/test, one sub-folder "
                "per class); replaces --dataset.",
    "tfds_data_dir": "Where tfds datasets are stored (tfds' default when unset).",
    "train_split": "tfds split for training.",
    "validation_split_name": "tfds split for validation.",
    "test_split": "tfds split for testing.",
    "validation_split": "--data_dir without a validation folder: fraction of train carved out.",
    "test_split_fraction": "--data_dir without a test folder: fraction carved out for testing.",
    "max_examples_per_split": "Use at most this many examples per split (0: all).",
    "synthetic_examples": "--dataset=synthetic: training examples.",
    "split_seed": "Seed of the data split (carved validation/test folders, synthetic data); "
                  "independent of --seed, so runs with other seeds are evaluated on the same "
                  "examples.",
    "batch_size": "Global batch size.",
    "epochs": "Epochs to train this phase.",
    "learning_rate": f"Initial rate (default {config_lib.HEAD_LEARNING_RATE} for head, "
                     f"{config_lib.FINETUNE_LEARNING_RATE} for finetune).",
    "optimizer": "Optimizer; each phase starts a fresh one.",
    "seed": "Seed for weights, dropout, augmentation and data order.",
    "deterministic": "Seed everything and enable TF op determinism (bitwise-repeatable runs).",
    "strategy": "tf.distribute strategy.",
    "logical_cpus": "Split the CPU into this many logical devices (to try --strategy=mirrored "
                    "without GPUs).",
    "jit_compile": "Compile train/test steps with XLA (both loops).",
    "mixed_precision": "mixed_float16 or mixed_bfloat16 (default: float32).",
    "steps_per_execution": "Train steps per compiled call (both loops).",
    "feature_cache": "Frozen-prefix feature cache of the custom loop.",
    "feature_cache_dir": "Where disk feature caches live (default <workdir>/feature_cache); "
                         "runs that share it share their frozen features.",
    "monitor": "Quantity for best checkpoint, early stopping and plateau reduction.",
    "mode": "min, max or auto (from the monitor's name), as in Keras.",
    "save_best_only": "Keep only best.weights.h5; when false also keep every epoch's weights.",
    "early_stopping": "Stop when --monitor has not improved for --early_stopping_patience epochs.",
    "early_stopping_patience": "EarlyStopping(patience=...).",
    "min_delta": "Smallest change of --monitor that counts as improvement.",
    "restore_best_weights": "EarlyStopping restores the best epoch's weights at the end.",
    "lr_schedule": "Per-epoch learning-rate schedule.",
    "lr_decay_rate": "step/exponential schedules: factor per --lr_decay_epochs.",
    "lr_decay_epochs": "step/exponential schedules: epochs per decay.",
    "reduce_lr_on_plateau": "ReduceLROnPlateau on --monitor.",
    "reduce_lr_patience": "ReduceLROnPlateau(patience=...).",
    "reduce_lr_factor": "ReduceLROnPlateau(factor=...).",
    "reduce_lr_min_lr": "ReduceLROnPlateau(min_lr=...).",
    "reduce_lr_cooldown": "ReduceLROnPlateau(cooldown=...).",
    "tensorboard": "Write TensorBoard logs to <run>/tensorboard/{train,validation}.",
    "csv_log": "Write per-epoch logs to <run>/log.csv.",
    "remote_monitor_url": "POST each epoch's logs as JSON to this URL (RemoteMonitor).",
    "terminate_on_nan": "Stop at the first non-finite loss.",
    "backup": "Back up the training state at each epoch end (and every --backup_every_steps) "
              "and resume from it when the same command is run again (--nobackup: off).",
    "backup_every_steps": "Also back up every N steps (0: epoch ends only).",
    "verbose": "0: quiet; 1: a progress bar per epoch.",
    "debug": "Show the full traceback of an error instead of one line.",
}

_CHOICES = {
    "phase": config_lib.PHASES, "loop": config_lib.LOOPS, "backbone": config_lib.BACKBONES,
    "optimizer": config_lib.OPTIMIZERS, "lr_schedule": config_lib.LR_SCHEDULES,
    "strategy": config_lib.STRATEGIES, "feature_cache": config_lib.FEATURE_CACHE,
    "mode": ("auto", "min", "max"),
}


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines one flag per `Config` field, with the field's default."""
    for field in dataclasses.fields(config_lib.Config):
        name, default, kind = field.name, field.default, field.type
        help_text = HELP[name]
        if name in _CHOICES:
            # Validated by Config, whose error is one line that lists the choices.
            flags.DEFINE_string(name, default, f"{help_text} One of: {', '.join(_CHOICES[name])}.",
                                flag_values=flag_values)
        elif kind == "bool":
            flags.DEFINE_boolean(name, default, help_text, flag_values=flag_values)
        elif kind == "int":
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif kind in ("float", "Optional[float]"):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    flags.DEFINE_integer("logical_cpus", 0, HELP["logical_cpus"], flag_values=flag_values)


def config_from_flags(flag_values=flags.FLAGS, **overrides) -> config_lib.Config:
    """The frozen config for the parsed flags (the only place flags are read)."""
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(config_lib.Config)}
    values.update(overrides)
    return config_lib.Config(**values)
