"""absl flag definitions, generated from `Config` so the two never drift apart.

`--help` (and `--helpshort`) list these flags grouped by purpose (`GROUPS`), each
with its default; `--helpfull` keeps absl's full per-module listing.
"""
from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from flags import config as config_lib

HELP = {
    "phase": "head: train the new head on a frozen backbone; finetune: unfreeze from "
             "--unfreeze_from and train with a lower rate; evaluate: test the newest phase; "
             "lr_find: the learning-rate finder for --for_phase.",
    "loop": "custom: the tf.GradientTape loop; fit: Keras compile()+fit() with keras.callbacks.",
    "workdir": "Run directory; each phase writes <workdir>/<phase>/.",
    "overwrite": "Delete and retrain a phase that already has results in --workdir.",
    "backbone": "Pretrained backbone from keras.applications; its preprocessing is part of the "
                "model, which takes raw 0-255 RGB.",
    "alpha": "Width multiplier of the MobileNets (ImageNet weights: mobilenet 0.25, 0.5, 0.75, "
             "1.0; mobilenet_v2 0.35-1.4; mobilenet_v3_* 0.75, 1.0); no effect on the others.",
    "weights": "imagenet, none, or PATH to a Keras weights file of the backbone without top.",
    "image_size": "Images are resized to image_size x image_size.",
    "dropout": "Dropout rate before the logits (0 disables the layer).",
    "augment": "Training-time augmentation, a comma list: flip, rotate, randaugment (layers in "
               "the model) and mixup, cutmix (mixing the examples of a batch, soft labels); "
               "--augment alone means flip,rotate (random horizontal flips and small "
               "rotations), --noaugment none.",
    "unfreeze_from": "finetune: this block (block5, conv5, block_12, block7, stage_3, mixed9, "
                     "...) or layer and all after it train; default: the backbone's last "
                     "block or stage (an unknown name lists the blocks).",
    "init_checkpoint": "finetune: start from these weights instead of "
                       "<workdir>/head/best.weights.h5.",
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
                     f"{config_lib.FINETUNE_LEARNING_RATE} for finetune), or auto: the "
                     "suggestion of `--phase=lr_find` for this phase (recorded in config.json).",
    "for_phase": "--phase=lr_find: the phase to find a learning rate for (head or finetune); "
                 "writes <workdir>/lr_find_<for_phase>/.",
    "lr_suggestion": "--learning_rate=auto: which suggestion of the finder to use.",
    "recipe": "Named settings of the fine-tuning flags: classic (every flag at its default) "
              "or tuned (one-cycle, label smoothing, discriminative rates, weight decay; "
              "chosen on validation photos, see bench/README.md). Flags given explicitly "
              "override the recipe; config.json records the resolved values.",
    "train_bn": "finetune: the batch-norm layers of the unfrozen blocks train too (default: "
                "frozen, in inference mode, as the Keras fine-tuning guide advises).",
    "unfreeze_schedule": "finetune, custom loop: gradual unfreezing, BLOCK:EPOCH,... (e.g. "
                         "block5:0,block4:2: block5 trains from epoch 0, block4 from epoch 2; "
                         "the head always); replaces --unfreeze_from.",
    "tta": "evaluate: test-time augmentation; flip averages the predicted probabilities of "
           "each image and its mirror image.",
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
    "feature_precision": "Precision of the feature cache's frozen forward pass (features are "
                         "stored as float32): float32 (exact), bfloat16 (approximate; fast "
                         "only on CPUs with native bf16, e.g. AVX512-BF16/AMX), or auto "
                         "(bfloat16 only where the CPU has native bf16 and a one-batch probe "
                         "shows it faster for this backbone).",
    "image_cache": "Decoded-image cache: disk keeps each split's decoded, resized images under "
                   "--image_cache_dir for later phases, evaluation and sweep trials (written "
                   "atomically, keyed by every file's path, size and time); memory caches "
                   "within one process only; off decodes every epoch; auto is disk except "
                   "for synthetic data.",
    "image_cache_dir": "Where disk image caches live (default <workdir>/image_cache); runs "
                       "that share it decode each photo once.",
    "monitor": "Quantity for best checkpoint, early stopping and plateau reduction.",
    "mode": "min, max or auto (from the monitor's name), as in Keras.",
    "save_best_only": "Keep only best.weights.h5; when false also keep every epoch's weights.",
    "early_stopping": "Stop when --monitor has not improved for --early_stopping_patience epochs.",
    "early_stopping_patience": "EarlyStopping(patience=...).",
    "min_delta": "Smallest change of --monitor that counts as improvement.",
    "restore_best_weights": "EarlyStopping restores the best epoch's weights at the end.",
    "lr_schedule": "Learning-rate schedule: constant, step, exponential, cosine are set per "
                   "epoch (LearningRateScheduler); one_cycle (fastai: pct_start 0.25, div 25, "
                   "div_final 1e5) and warmup_cosine (linear warm-up for --warmup_epochs, then "
                   "cosine to 0) per step, inside the optimizer.",
    "warmup_epochs": "warmup_cosine: epochs (may be fractional) of linear warm-up from 0.",
    "label_smoothing": "Label smoothing of the cross-entropy (0: off), in both loops.",
    "weight_decay": "Decoupled weight decay (Adam becomes AdamW; 0: off); biases and "
                    "batch-norm parameters are not decayed.",
    "clipnorm": "Clip each variable's gradient to this L2 norm (0: off).",
    "ema": "Keep an exponential moving average of the weights with this momentum (e.g. "
           "0.99; 0: off) and use it as the final weights, as Keras' use_ema does.",
    "layer_lr_decay": "Discriminative learning rates: the head trains at the rate, the last "
                      "backbone block at rate*D, the one before at rate*D^2, ... (1: off).",
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
    "verbose": "0: quiet; 1: a progress bar per epoch (one plain line per epoch when the "
               "output is not a terminal); 2: also TensorFlow's native start-up logs.",
    "debug": "Show the full traceback of an error instead of one line.",
}

# `--help` headings, in order, and the flags under each. Every `Config` field must be in
# exactly one group (`define_flags` raises otherwise); entry-point flags may be too.
GROUPS = {
    "phase and paths": ("phase", "loop", "workdir", "overwrite", "init_checkpoint", "recipe"),
    "model": ("backbone", "alpha", "weights", "image_size", "dropout", "augment",
              "unfreeze_from", "unfreeze_schedule", "train_bn", "tta"),
    "data": ("dataset", "data_dir", "tfds_data_dir", "train_split", "validation_split_name",
             "test_split", "validation_split", "test_split_fraction", "max_examples_per_split",
             "synthetic_examples", "split_seed"),
    "optimisation and schedules": ("batch_size", "epochs", "learning_rate", "for_phase",
                                   "lr_suggestion", "optimizer", "seed",
                                   "lr_schedule", "lr_decay_rate", "lr_decay_epochs",
                                   "reduce_lr_on_plateau", "reduce_lr_patience",
                                   "reduce_lr_factor", "reduce_lr_min_lr", "reduce_lr_cooldown",
                                   "warmup_epochs", "layer_lr_decay"),
    "regularisation": ("label_smoothing", "weight_decay", "clipnorm", "ema"),
    "hooks": ("monitor", "mode", "save_best_only", "early_stopping", "early_stopping_patience",
              "min_delta", "restore_best_weights", "tensorboard", "csv_log",
              "remote_monitor_url", "terminate_on_nan"),
    "speed": ("jit_compile", "mixed_precision", "steps_per_execution", "feature_cache",
              "feature_cache_dir", "feature_precision", "image_cache", "image_cache_dir"),
    "reliability": ("deterministic", "backup", "backup_every_steps"),
    "distribution": ("strategy", "logical_cpus"),
    "output": ("verbose", "debug", "json"),
}

_CHOICES = {
    "phase": config_lib.PHASES + config_lib.TOOL_PHASES, "loop": config_lib.LOOPS,
    "backbone": config_lib.BACKBONES, "for_phase": ("head", "finetune"),
    "lr_suggestion": config_lib.LR_SUGGESTIONS, "recipe": tuple(config_lib.RECIPES),
    "optimizer": config_lib.OPTIMIZERS, "lr_schedule": config_lib.LR_SCHEDULES,
    "strategy": config_lib.STRATEGIES, "feature_cache": config_lib.FEATURE_CACHE,
    "image_cache": config_lib.IMAGE_CACHE, "feature_precision": config_lib.FEATURE_PRECISIONS,
    "mode": config_lib.MODES,
}


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines one flag per `Config` field, with the field's default.

    Raises `ValueError` (a programming error) when a field has no help text or no
    `--help` group.
    """
    check_groups()
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
        elif name == "augment":  # --augment, --noaugment or --augment=flip,mixup,...
            flags.DEFINE_flag(flags.Flag(_AugmentParser(), flags.ArgumentSerializer(), name,
                                         default, help_text, boolean=True),
                              flag_values=flag_values)
        elif name == "learning_rate":  # A number or "auto" (Config converts it).
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
        elif kind in ("float", "Optional[float]"):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    flags.DEFINE_integer("logical_cpus", 0, HELP["logical_cpus"], flag_values=flag_values)


class _AugmentParser(flags.ArgumentParser):
    """--augment: a boolean-style flag (--augment, --noaugment) that also takes a comma
    list of augmentations; the value is `Config`'s canonical string."""

    def parse(self, argument):
        try:
            return config_lib.normalise_augment(argument)
        except config_lib.ConfigError:
            return argument  # Config rejects it with its one-line error.

    def flag_type(self):
        return "string"


def check_groups(fields=None) -> None:
    """Every `Config` field has a `HELP` text and exactly one `GROUPS` heading."""
    names = [f.name for f in dataclasses.fields(config_lib.Config)] if fields is None else fields
    grouped = [name for members in GROUPS.values() for name in members]
    for name in names:
        if name not in HELP:
            raise ValueError(f"Config field {name!r} has no help text: add it to HELP in "
                             "flags/definitions.py")
        if grouped.count(name) != 1:
            raise ValueError(f"Config field {name!r} is in {grouped.count(name)} --help groups: "
                             "put it in exactly one of GROUPS in flags/definitions.py")


def define_output_flags(flag_values=flags.FLAGS) -> None:
    """Entry-point output options (not part of `Config`: they change no result)."""
    flags.DEFINE_boolean("json", False, "Print the phase's summary as JSON (as written to "
                         "<run>/summary.json) instead of the human summary.",
                         flag_values=flag_values)


def grouped_help(flag_values=flags.FLAGS, module=None, groups=None) -> str:
    """The flags of `--help`: under each `GROUPS` heading (plus `groups`, a mapping of
    further headings to flag names) the defined flags of that group, then any other key
    flag of `module` (default: the main module) under "other"."""
    groups = {**GROUPS, **(groups or {})}
    module = sys.argv[0] if module is None else module
    shown, sections = set(), []
    for heading, names in groups.items():
        members = [flag_values[name] for name in names if name in flag_values]
        shown.update(id(f) for f in members)
        if members:
            sections.append((heading, members))
    rest = sorted((f for f in flag_values.get_key_flags_for_module(module)
                   if id(f) not in shown), key=lambda f: f.name)
    if rest:
        sections.append(("other", rest))
    lines = []
    for heading, members in sections:
        lines.append(f"\n{heading}:")
        for flag in members:
            lines.append(_flag_help(flag))
    return "\n".join(lines) + "\n"


def _flag_help(flag) -> str:
    """One flag as absl's help shows it: `--[no]name: help` and `(default: ...)`."""
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    text = flags.text_wrap(f"{name}: {flag.help}", indent="    ", firstline_indent="  ")
    default = flag.default_as_str or "unset"
    return text + "\n" + flags.text_wrap(f"(default: {default})", indent="    ")


class _GroupedHelpFlag(app.HelpFlag):
    """absl's `--help`/`-?`, printing `grouped_help()` instead of the main module's flags."""

    groups = None

    def __init__(self):
        super().__init__()
        self.allow_override = True  # Replaces absl's own (already defined) help flag.

    def parse(self, arg):
        if self._parse(arg):
            doc = (sys.modules["__main__"].__doc__ or "").rstrip()
            sys.stdout.write(f"{doc}\n\nflags:\n")
            sys.stdout.write(grouped_help(groups=self.groups))
            sys.stdout.write("\nTry --helpfull to get a list of all flags (absl's included).\n")
            sys.stdout.flush()
            sys.exit(1)  # As absl's --help and --helpfull.


class _GroupedHelpshortFlag(_GroupedHelpFlag):
    NAME = "helpshort"
    SHORT_NAME = None


def define_help_flags(groups=None) -> None:
    """Makes `--help`/`--helpshort` print the flags grouped by purpose (call at import
    time of an entry point, after its flags are defined or not: the help is built when
    it is asked for). `groups`: further headings -> flag names (e.g. a sweep's own)."""
    app.define_help_flags()  # absl's first (idempotent), then ours over them.
    for flag_class in (_GroupedHelpFlag, _GroupedHelpshortFlag):
        flag = flag_class()
        flag.groups = groups
        flags.DEFINE_flag(flag)


def config_from_flags(flag_values=flags.FLAGS, **overrides) -> config_lib.Config:
    """The frozen config for the parsed flags (the only place flags are read)."""
    values = {f.name: flag_values[f.name].value for f in dataclasses.fields(config_lib.Config)}
    values.update(overrides)
    # --recipe: its settings for flags not given explicitly (config.json records them).
    explicit = {name for name in values if flag_values[name].present} | set(overrides)
    values = config_lib.apply_recipe(values, explicit)
    return config_lib.Config(**values)
