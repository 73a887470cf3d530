"""The frozen run configuration passed from entry points down to the library.

Each `Config` field declares itself once (`_flag`, flags/fields.py): its default, --help
text and heading, choices, numeric range and roles. `fields_with(ROLE)` lists the fields of
a role (the network's, the data's, those a resumption may change, ...) for every
part of the program that treats them alike; flags/definitions.py makes the absl
flags from the same declarations. Run-directory names come from `layout.paths`.

`resolve(values, explicit)` is the one resolver of a configuration (the command line's
`config_from_flags`, the sweep's grid and Python callers): it applies the `--recipe` to
the fields not given explicitly, and `Config` checks every name, type and range. Calling
`Config(**keywords)` resolves the same way, the keywords being what was given: so
`Config(recipe="tuned")` trains the tuned recipe, and `Config(lerning_rate=1e-3)` is a
`ConfigError` that says "did you mean --learning_rate".
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import numbers
from typing import Optional

from tapefit.flags.errors import ConfigError  # noqa: F401  (re-exported)

# The field machinery, the entry points' ranges and the recipes live in their own modules
# (issue 29: one job each); their names are re-exported here, where most code looks.
from tapefit.flags.fields import (  # noqa: F401  (re-exported)
    ARCHITECTURE,
    DATA,
    DATA_ERROR,
    EVALUATION_DATA,
    FINDER,
    G_DATA,
    G_DISTRIBUTION,
    G_HOOKS,
    G_MODEL,
    G_OPTIMISATION,
    G_OUTPUT,
    G_PHASE,
    G_REGULARISATION,
    G_RELIABILITY,
    G_SPEED,
    GROUP_HEADINGS,
    NOT_IN_ID,
    PATH,
    REMOTE_MONITOR_SCHEMES,
    REPEATED,
    RESUMABLE,
    ROLES,
    SPLIT,
    Range,
    check_choice,
    check_url,
    did_you_mean,
)
from tapefit.flags.fields import flag as _flag
from tapefit.flags.ranges import (  # noqa: F401  (re-exported)
    _MANY,
    DEFAULT_TOLERANCE,
    ENTRY_POINT_NUMBERS,
    ENTRY_POINT_RANGES,
    FLOAT32_MAX,
    MEMORY_LIMIT_BYTES,
)
from tapefit.flags.recipes import (  # noqa: F401  (re-exported)
    DEFAULT_UNFREEZE_FROM,
    FINETUNE_LEARNING_RATE,
    HEAD_LEARNING_RATE,
    RECIPE_FIELDS,
    RECIPES,
    apply_recipe,
    recipe_values,
)
from tapefit.layout import paths
from tapefit.layout.atomic import json_text

PHASES = ("head", "finetune", "evaluate")
# Phases that train nothing that is kept (loops/lr_find.py); not part of a sweep's phases.
TOOL_PHASES = ("lr_find",)
# --lr_suggestion: the finder's suggestions (loops/lr_find.py computes them).
LR_SUGGESTIONS = ("valley", "steep", "minimum")
# --for_phase: the phases the learning-rate finder finds a rate for.
FOR_PHASES = ("head", "finetune")
# --augment names (model/augment.py), in their canonical order; `true` (the former
# boolean flag) means flip,rotate.
AUGMENTATIONS = ("flip", "rotate", "randaugment", "mixup", "cutmix")
AUGMENT_TRUE = "flip,rotate"
LOOPS = ("custom", "fit")
BACKBONES = ("vgg16", "vgg19", "resnet50", "resnet50v2", "mobilenet", "mobilenet_v2",
             "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1",
             "efficientnet_b2", "efficientnet_b3", "efficientnetv2_b0", "convnext_tiny",
             "densenet121", "inception_v3", "xception")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "step", "exponential", "cosine", "one_cycle", "warmup_cosine")
# Per-step schedules (loops/optim/schedules.py, which imports this): a keras
# LearningRateSchedule in the optimizer.
STEP_LR_SCHEDULES = ("one_cycle", "warmup_cosine")
STRATEGIES = ("default", "mirrored", "multi_worker")
FEATURE_CACHE = ("auto", "off", "memory", "disk")
IMAGE_CACHE = ("auto", "off", "memory", "disk")
FEATURE_PRECISIONS = ("float32", "bfloat16", "auto")
MODES = ("auto", "min", "max")
# What --monitor can name: the logs of both loops (loops/training/custom.py make_metrics).
MONITORS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Seeds are 32-bit (numpy, TF): [0, SEED_LIMIT).
SEED_LIMIT = 2**32
# Larger images are no use to these backbones and run out of memory.
MAX_IMAGE_SIZE = 1024


def check_number(name: str, value, kind: str = "float") -> None:
    """`--name=value` is a number (`kind` int: a whole one) in `RANGES[name]`, or a
    one-line `ConfigError` naming the range and an example (`DataError` for the data
    flags, which the user fixes along with the data)."""
    spec = RANGES[name]
    whole = kind == "int"
    kind_ok = (not isinstance(value, bool)
               and isinstance(value, numbers.Integral if whole else numbers.Real))
    ok = kind_ok and math.isfinite(value) and spec.contains(value)
    if not ok:
        from tapefit.flags.errors import DataError
        error = DataError if name in fields_with(DATA_ERROR) else ConfigError
        what = "a whole number " if whole and not kind_ok else ""
        note = f" ({spec.note})" if spec.note else ""
        raise error(f"--{name}={value} must be {what}{spec.text()}{note}; pass e.g. "
                    f"--{name}={spec.example}")


def check_memory(cfg) -> None:
    """Ranges that depend on two flags: what a batch of images, and synthetic data
    (generated in memory), need at --image_size, in float32."""
    image = cfg.image_size ** 2 * 3 * 4
    checks = [("batch_size", cfg.batch_size, "a batch of images")]
    if cfg.dataset == "synthetic" and not cfg.data_dir:
        checks.append(("synthetic_examples", cfg.synthetic_examples, "the synthetic data"))
    for name, count, what in checks:
        if count * image > MEMORY_LIMIT_BYTES:
            most = MEMORY_LIMIT_BYTES // image
            raise ConfigError(f"--{name}={count} at --image_size={cfg.image_size} needs "
                              f"{count * image / 2**30:.0f} GiB for {what} (at most "
                              f"{MEMORY_LIMIT_BYTES // 2**30} GiB); pass --{name}={most} or "
                              "less, or a smaller --image_size")


_WIDE = (ARCHITECTURE, REPEATED, FINDER)  # The network: what every phase must agree on.
_SOURCE = (DATA, EVALUATION_DATA, SPLIT, REPEATED, FINDER)  # Where the examples come from.
_CARVED = (DATA, SPLIT, REPEATED, DATA_ERROR)  # A folder's carved validation/test splits.
_CACHE_DIR = (PATH, RESUMABLE, REPEATED, NOT_IN_ID)  # Where a shared cache lives.


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that determines a run. Serialised to `<workdir>/<phase>/config.json`.

    Each field is declared once, with `_flag` (see "one declaration per flag" above)."""

    phase: str = _flag(
        "head", G_PHASE, "head: train the new head on a frozen backbone; finetune: unfreeze "
        "from --unfreeze_from and train with a lower rate; evaluate: test the newest phase; "
        "lr_find: the learning-rate finder for --for_phase.", (NOT_IN_ID,),
        choices=PHASES + TOOL_PHASES)
    loop: str = _flag(
        "custom", G_PHASE, "custom: the tf.GradientTape loop; fit: Keras compile()+fit() with "
        "keras.callbacks.", (REPEATED,), choices=LOOPS)
    workdir: str = _flag(
        "runs/default", G_PHASE, "Run directory; each phase writes <workdir>/<phase>/.",
        (RESUMABLE, NOT_IN_ID))
    overwrite: bool = _flag(
        False, G_PHASE, "Delete and retrain a phase that already has results in --workdir.",
        (RESUMABLE, NOT_IN_ID))
    # Model.
    backbone: str = _flag(
        "vgg16", G_MODEL, "Pretrained backbone from keras.applications; its preprocessing is "
        "part of the model, which takes raw 0-255 RGB.", _WIDE, choices=BACKBONES)
    alpha: float = _flag(
        1.0, G_MODEL, "Width multiplier of the MobileNets (ImageNet weights: mobilenet 0.25, "
        "0.5, 0.75, 1.0; mobilenet_v2 0.35-1.4; mobilenet_v3_* 0.75, 1.0); no effect on the "
        "others.", _WIDE,
        range=Range(0.1, 4.0, 1.0, note="ImageNet weights exist for 0.25, 0.5, 0.75, 1.0"))
    weights: str = _flag(
        "imagenet", G_MODEL, "imagenet, none, or PATH to a Keras weights file of the backbone "
        "without top.", (PATH, REPEATED, FINDER))
    image_size: int = _flag(
        224, G_MODEL, "Images are resized to image_size x image_size.", (*_WIDE, DATA),
        range=Range(1, MAX_IMAGE_SIZE, 224, note="224 is the backbones' native size"))
    dropout: float = _flag(
        0.2, G_MODEL, "Dropout rate before the logits (0 disables the layer).", _WIDE,
        range=Range(0.0, 1.0, 0.2, high_open=True))
    augment: str = _flag(  # "" none; "flip,rotate" (was --augment); see normalise_augment.
        "", G_MODEL, "Training-time augmentation, a comma list of: flip, rotate, randaugment "
        "(layers in the model) and mixup, cutmix (mixing the examples of a batch, soft "
        "labels), e.g. --augment=flip,mixup; --augment alone means flip,rotate (random "
        "horizontal flips and small rotations), --noaugment none.", _WIDE)
    unfreeze_from: Optional[str] = _flag(
        None, G_MODEL, "finetune: this block (block5, conv5, block_12, block7, stage_3, "
        "mixed9, ...) or layer and all after it train; default: the backbone's last block or "
        "stage (an unknown name lists the blocks).")
    init_checkpoint: Optional[str] = _flag(
        None, G_PHASE, "finetune: start from these weights instead of "
        "<workdir>/head/best.weights.h5.", (PATH, FINDER))
    # Data.
    dataset: str = _flag(
        "cats_vs_dogs", G_DATA, "A tfds image-classification dataset with image/label "
        "features, or 'synthetic'.", _SOURCE)
    data_dir: Optional[str] = _flag(
        None, G_DATA, "Image folder (DIR/train, DIR/validation or DIR/val, DIR/test, one "
        "sub-folder per class); replaces --dataset.", (*_SOURCE, PATH))
    tfds_data_dir: Optional[str] = _flag(
        None, G_DATA, "Where tfds datasets are stored (tfds' default when unset).",
        (*_SOURCE, PATH))
    train_split: str = _flag(
        "train[:80%]", G_DATA, "tfds split for training.", (DATA, REPEATED, FINDER))
    validation_split_name: str = _flag(
        "train[80%:90%]", G_DATA, "tfds split for validation.", (DATA, REPEATED))
    test_split: str = _flag(
        "train[90%:]", G_DATA, "tfds split for testing.",
        (DATA, EVALUATION_DATA, SPLIT, REPEATED))
    validation_split: float = _flag(
        0.1, G_DATA, "--data_dir without a validation folder: fraction of train carved out.",
        (*_CARVED, FINDER), range=Range(0.0, 1.0, 0.1, low_open=True, high_open=True))
    test_split_fraction: float = _flag(
        0.1, G_DATA, "--data_dir without a test folder: fraction carved out for testing.",
        _CARVED, range=Range(0.0, 1.0, 0.1, low_open=True, high_open=True))
    max_examples_per_split: int = _flag(
        0, G_DATA, "Use at most this many examples per split (0: all).",
        (*_SOURCE, DATA_ERROR), range=Range(0, 10**9, 1000, note="0: all"))
    max_examples_per_class: int = _flag(
        0, G_DATA, "Use at most this many examples of each class per split (0: all), chosen "
        "with --split_seed (image folders, synthetic data) or the first ones (tfds); with "
        "--max_examples_per_split both limits hold.", (*_SOURCE, DATA_ERROR),
        range=Range(0, 10**9, 100, note="0: all"), keyed_at_default=False)
    synthetic_examples: int = _flag(
        64, G_DATA, "--dataset=synthetic: training examples.", (*_CARVED, FINDER),
        range=Range(2, 10**6, 64))
    split_seed: int = _flag(
        42, G_DATA, "Seed of the data split (carved validation/test folders, synthetic "
        "data); independent of --seed, so runs with other seeds are evaluated on the same "
        "examples.", (*_CARVED, FINDER), range=Range(0, SEED_LIMIT, 0, high_open=True))
    # Optimisation.
    batch_size: int = _flag(
        32, G_OPTIMISATION, "Global batch size.", (REPEATED, FINDER),
        range=Range(1, 2**16, 32))
    epochs: int = _flag(
        10, G_OPTIMISATION, "Epochs to train this phase.", range=Range(0, _MANY, 10))
    learning_rate: Optional[float] = _flag(  # Or "auto": loops/lr_find.resolve_learning_rate.
        None, G_OPTIMISATION, f"Initial rate (default {HEAD_LEARNING_RATE} for head, "
        f"{FINETUNE_LEARNING_RATE} for finetune), or auto: the suggestion of "
        "`--phase=lr_find` for this phase (recorded in config.json).",
        # A huge rate is a valid way to see a divergence handled (NaN stop); beyond
        # float32 the optimizer's rate variable is infinite.
        range=Range(0.0, FLOAT32_MAX, 0.001, low_open=True,
                    note="or auto: the learning-rate finder's suggestion"))
    for_phase: str = _flag(
        "head", G_OPTIMISATION, "--phase=lr_find: the phase to find a learning rate for "
        "(head or finetune); writes <workdir>/lr_find_<for_phase>/.", choices=FOR_PHASES)
    lr_suggestion: str = _flag(
        "valley", G_OPTIMISATION, "--learning_rate=auto: which suggestion of the finder to "
        "use.", choices=LR_SUGGESTIONS)
    optimizer: str = _flag(
        "adam", G_OPTIMISATION, "Optimizer; each phase starts a fresh one.", (FINDER,),
        choices=OPTIMIZERS)
    seed: int = _flag(
        42, G_OPTIMISATION, "Seed for weights, dropout, augmentation and data order.",
        (REPEATED, NOT_IN_ID), range=Range(0, SEED_LIMIT, 0, high_open=True))
    deterministic: bool = _flag(
        False, G_RELIABILITY, "Seed everything and enable TF op determinism "
        "(bitwise-repeatable runs).", (REPEATED,))
    strategy: str = _flag(
        "default", G_DISTRIBUTION, "tf.distribute strategy.", (REPEATED,), choices=STRATEGIES)
    jit_compile: bool = _flag(
        False, G_SPEED, "Compile train/test steps with XLA (both loops).", (REPEATED,))
    mixed_precision: Optional[str] = _flag(
        None, G_SPEED, "mixed_float16 or mixed_bfloat16 (default: float32).",
        (REPEATED, FINDER))
    steps_per_execution: int = _flag(
        1, G_SPEED, "Train steps per compiled call (both loops).", (REPEATED,),
        range=Range(1, _MANY, 1))
    # Fine-tuning tools (issue 13; loops/optim/schedules.py, loops/optim/optimizers.py).
    label_smoothing: float = _flag(
        0.0, G_REGULARISATION, "Label smoothing of the cross-entropy (0: off), in both loops.",
        (FINDER,), range=Range(0.0, 1.0, 0.1, high_open=True))
    weight_decay: float = _flag(
        0.0, G_REGULARISATION, "Decoupled weight decay (Adam becomes AdamW; 0: off); biases "
        "and batch-norm parameters are not decayed.", (FINDER,),
        range=Range(0.0, 1.0, 0.01))
    clipnorm: float = _flag(
        0.0, G_REGULARISATION, "Clip each variable's gradient to this L2 norm (0: off).",
        (FINDER,),
        # Smaller norms underflow in float32 (1e-38) and the gradients become 0 or NaN.
        range=Range(1e-6, 1e6, 1.0, off=0.0))
    ema: float = _flag(
        0.0, G_REGULARISATION, "Keep an exponential moving average of the weights with this "
        "momentum (e.g. 0.99; 0: off) and use it as the final weights, as Keras' use_ema "
        "does.", range=Range(0.0, 1.0, 0.99, high_open=True))
    recipe: str = _flag(
        "classic", G_PHASE, "Named settings of the fine-tuning flags: classic (every flag at "
        "its default) or tuned (one-cycle, label smoothing, discriminative rates, weight "
        "decay; chosen on validation photos, see bench/README.md). Flags given explicitly "
        "override the recipe; config.json records the resolved values.", (REPEATED,),
        choices=tuple(RECIPES))
    unfreeze_schedule: str = _flag(
        "", G_MODEL, "finetune, custom loop: gradual unfreezing, BLOCK:EPOCH,... (e.g. "
        "block5:0,block4:2: block5 trains from epoch 0, block4 from epoch 2; the head "
        "always); replaces --unfreeze_from.")
    train_bn: bool = _flag(
        False, G_MODEL, "finetune: the batch-norm layers of the unfrozen blocks train too "
        "(default: frozen, in inference mode, as the Keras fine-tuning guide advises).",
        (FINDER,))
    tta: str = _flag(
        "", G_MODEL, "evaluate: test-time augmentation; flip averages the predicted "
        "probabilities of each image and its mirror image.")
    interpret_split: str = _flag(  # loops/interpret.py; docs/interpretation.md.
        "test", G_OUTPUT, "evaluate: the split whose predictions are interpreted (per-class "
        "metrics, confusion matrix, calibration, top losses) next to evaluation.json; "
        "validation: the validation split only, in <workdir>/evaluate/validation/ (the "
        "test split is not scored); none: no interpretation.", (RESUMABLE, NOT_IN_ID),
        choices=("test", "validation", "none"))
    top_losses: int = _flag(
        16, G_OUTPUT, "evaluate: how many highest-loss photos top_losses.png shows.",
        (RESUMABLE, NOT_IN_ID), range=Range(1, 256, 16))
    gradcam: bool = _flag(
        False, G_OUTPUT, "evaluate: overlay a Grad-CAM heatmap (the backbone's last "
        "convolutional block, for the predicted class) on each top-loss photo.",
        (RESUMABLE, NOT_IN_ID))
    feature_cache: str = _flag(
        "auto", G_SPEED, "Frozen-prefix feature cache of the custom loop.", (REPEATED,),
        choices=FEATURE_CACHE)
    feature_cache_dir: Optional[str] = _flag(
        None, G_SPEED, "Where disk feature caches live (default <workdir>/feature_cache); "
        "runs that share it share their frozen features.", _CACHE_DIR)
    feature_precision: str = _flag(
        "float32", G_SPEED, "Precision of the feature cache's frozen forward pass (features "
        "are stored as float32): float32 (exact), bfloat16 (approximate; faster only on some "
        "CPUs with native bf16, AVX512-BF16/AMX, and not for every backbone), or auto "
        "(bfloat16 only where the CPU has native bf16 and a probe in the training split's "
        "pass runs it at least 1.1x as fast for this backbone).", (REPEATED,),
        choices=FEATURE_PRECISIONS)
    image_cache: str = _flag(
        "auto", G_SPEED, "Decoded-image cache: disk keeps each split's decoded, resized "
        "images under --image_cache_dir for later phases, evaluation and sweep trials "
        "(written atomically, keyed by every file's path and content); memory caches "
        "within one process only; off decodes every epoch; auto is disk except for "
        "synthetic data.", (RESUMABLE, NOT_IN_ID, REPEATED), choices=IMAGE_CACHE)
    image_cache_dir: Optional[str] = _flag(
        None, G_SPEED, "Where disk image caches live (default <workdir>/image_cache); runs "
        "that share it decode each photo once.", _CACHE_DIR)
    # Hooks (Keras-callback-like names).
    monitor: str = _flag(
        "val_loss", G_HOOKS, "Quantity for best checkpoint, early stopping and plateau "
        "reduction.")
    mode: str = _flag(
        "auto", G_HOOKS, "min, max or auto (from the monitor's name), as in Keras.",
        choices=MODES)
    save_best_only: bool = _flag(
        True, G_HOOKS, "Keep only best.weights.h5; when false also keep every epoch's "
        "weights.")
    early_stopping: bool = _flag(
        False, G_HOOKS, "Stop when --monitor has not improved for --early_stopping_patience "
        "epochs.")
    early_stopping_patience: int = _flag(
        3, G_HOOKS, "EarlyStopping(patience=...).", range=Range(0, _MANY, 3))
    min_delta: float = _flag(
        0.0, G_HOOKS, "Smallest change of --monitor that counts as improvement.",
        range=Range(-1000.0, 1000.0, 0, note="a change of --monitor smaller than this is no "
                    "improvement"))
    restore_best_weights: bool = _flag(
        False, G_HOOKS, "EarlyStopping restores the best epoch's weights at the end.")
    lr_schedule: str = _flag(
        "constant", G_OPTIMISATION, "Learning-rate schedule: constant, step, exponential, "
        "cosine are set per epoch (LearningRateScheduler); one_cycle (fastai: pct_start 0.25, "
        "div 25, div_final 1e5) and warmup_cosine (linear warm-up for --warmup_epochs, then "
        "cosine to 0) per step, inside the optimizer.", choices=LR_SCHEDULES)
    lr_decay_rate: float = _flag(
        0.1, G_OPTIMISATION, "step/exponential schedules: factor per --lr_decay_epochs.",
        range=Range(0.0, FLOAT32_MAX, 0.1, low_open=True, note="above 1 the rate grows"))
    lr_decay_epochs: int = _flag(
        10, G_OPTIMISATION, "step/exponential schedules: epochs per decay.",
        range=Range(1, _MANY, 10))
    reduce_lr_on_plateau: bool = _flag(
        False, G_OPTIMISATION, "ReduceLROnPlateau on --monitor.")
    reduce_lr_patience: int = _flag(
        2, G_OPTIMISATION, "ReduceLROnPlateau(patience=...).", range=Range(0, _MANY, 2))
    reduce_lr_factor: float = _flag(
        0.1, G_OPTIMISATION, "ReduceLROnPlateau(factor=...).",
        range=Range(0.0, 1.0, 0.1, low_open=True, high_open=True,
                    note="the rate is multiplied by it on a plateau"))
    reduce_lr_min_lr: float = _flag(
        0.0, G_OPTIMISATION, "ReduceLROnPlateau(min_lr=...).",
        range=Range(0.0, FLOAT32_MAX, 0))
    reduce_lr_cooldown: int = _flag(
        0, G_OPTIMISATION, "ReduceLROnPlateau(cooldown=...).", range=Range(0, _MANY, 0))
    # Fine-tuning tools of the schedules (listed here for --help's order).
    warmup_epochs: float = _flag(
        1.0, G_OPTIMISATION, "warmup_cosine: epochs (may be fractional) of linear warm-up "
        "from 0.", range=Range(0.0, float(_MANY), 1, high_open=True))
    layer_lr_decay: float = _flag(
        1.0, G_OPTIMISATION, "Discriminative learning rates: the head trains at the rate, the "
        "last backbone block at rate*D, the one before at rate*D^2, ... (1: off).", (FINDER,),
        range=Range(1e-3, 1.0, 0.7))
    tensorboard: bool = _flag(
        True, G_HOOKS, "Write TensorBoard logs to <run>/tensorboard/{train,validation}.",
        (REPEATED,))
    csv_log: bool = _flag(True, G_HOOKS, "Write per-epoch logs to <run>/log.csv.", (REPEATED,))
    remote_monitor_url: Optional[str] = _flag(
        None, G_HOOKS, "POST each epoch's logs as JSON to this URL (RemoteMonitor).",
        (REPEATED,))
    terminate_on_nan: bool = _flag(True, G_HOOKS, "Stop at the first non-finite loss.",
                                   (REPEATED,))
    backup: bool = _flag(
        True, G_RELIABILITY, "Back up the training state at each epoch end (and every "
        "--backup_every_steps) and resume from it when the same command is run again "
        "(--nobackup: off).", (RESUMABLE, REPEATED))
    backup_every_steps: int = _flag(
        0, G_RELIABILITY, "Also back up every N steps (0: epoch ends only).", (REPEATED,),
        range=Range(0, 10**9, 0, note="0: epoch ends only"))
    verbose: int = _flag(
        1, G_OUTPUT, "0: quiet; 1: a progress bar per epoch (one plain line per epoch when "
        "the output is not a terminal); 2: also TensorFlow's native start-up logs.",
        (RESUMABLE, NOT_IN_ID), range=Range(0, 2, 1))
    debug: bool = _flag(
        False, G_OUTPUT, "Show the full traceback of an error instead of one line.",
        (RESUMABLE, NOT_IN_ID))

    # ---- derived values -------------------------------------------------------
    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return FINETUNE_LEARNING_RATE if self.phase == "finetune" else HEAD_LEARNING_RATE

    @property
    def resolved_unfreeze_from(self) -> str:
        if self.unfreeze_schedule:  # Gradual unfreezing: the block unfrozen last, the lowest.
            return max(parse_unfreeze_schedule(self.unfreeze_schedule), key=lambda s: s[1])[0]
        return self.unfreeze_from or DEFAULT_UNFREEZE_FROM[self.backbone]

    @property
    def run_dir(self) -> str:
        return paths.phase_dir(self.workdir, self.phase)

    def phase_dir(self, phase: str) -> str:
        return paths.phase_dir(self.workdir, phase)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    # ---- validation and (de)serialisation -------------------------------------
    def __post_init__(self):
        self._check_types()
        self._normalise_learning_rate()
        object.__setattr__(self, "augment", normalise_augment(self.augment))
        for field in dataclasses.fields(self):  # The declared `choices`, in field order.
            if "choices" in field.metadata:
                check_choice(field.name, getattr(self, field.name), field.metadata["choices"])
        if self.mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(f"unknown --mixed_precision={self.mixed_precision!r}; "
                              "pass mixed_float16 or mixed_bfloat16")
        self._check_ranges()

    def _check_types(self):
        """Text and boolean fields hold text and booleans (the numeric fields are checked
        with their ranges): `Config(epochs=3, deterministic="yes")` is one line, not a
        run that reads "yes" as true."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "augment" or (value is None and field.type.startswith("Optional")):
                continue  # --augment also takes a boolean (normalise_augment).
            if field.type in ("str", "Optional[str]") and not isinstance(value, str):
                raise ConfigError(f"--{field.name}={value!r} must be text; pass e.g. "
                                  f"--{field.name}={field.default or 'VALUE'}")
            if field.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"--{field.name}={value!r} must be True or False; pass "
                                  f"--{field.name} or --no{field.name}")

    def _check_ranges(self):
        """Checks that need no data or model: one line each, naming the fix, before
        anything is written or trained."""
        if not self.workdir:
            raise ConfigError("--workdir is empty; pass a run directory, e.g. --workdir=runs/x")
        self._check_numbers()
        if self.monitor not in MONITORS:
            raise ConfigError(f"unknown --monitor={self.monitor!r}; choose one of: "
                              f"{', '.join(MONITORS)}")
        if self.remote_monitor_url:
            check_url("remote_monitor_url", self.remote_monitor_url)
        if self.image_cache_dir is not None and not self.image_cache_dir.strip():
            raise ConfigError("--image_cache_dir is empty; pass a folder, or leave it unset "
                              "for <workdir>/image_cache")
        self._check_finetune_tools()

    def _check_numbers(self):
        """Every numeric field in its `RANGES` entry (one mechanism for all of them)."""
        for field in dataclasses.fields(self):
            if field.name not in RANGES:
                continue
            value = getattr(self, field.name)
            if field.name == "learning_rate" and value in (None, "auto"):
                continue
            check_number(field.name, value, "int" if field.type == "int" else "float")
        check_memory(self)

    def _normalise_learning_rate(self):
        """--learning_rate is a number or `auto` (the flag is a string): a number
        given as text becomes a float."""
        value = self.learning_rate
        if isinstance(value, str) and value != "auto":
            try:
                object.__setattr__(self, "learning_rate", float(value))
            except ValueError:
                raise ConfigError(f"--learning_rate={value!r} is not a number; pass e.g. "
                                  "--learning_rate=0.001, or auto (the learning-rate finder's "
                                  "suggestion)") from None

    def _check_finetune_tools(self):
        """Schedules per step, regularisation, the learning-rate finder (issue 13)."""
        if self.unfreeze_schedule:
            parse_unfreeze_schedule(self.unfreeze_schedule)
            if self.loop == "fit":
                raise ConfigError("--unfreeze_schedule changes the trainable layers between "
                                  "epochs, which fit() cannot; pass --loop=custom")
            if self.unfreeze_from:
                raise ConfigError("--unfreeze_schedule names the blocks to unfreeze; drop "
                                  "--unfreeze_from")
        if self.tta not in ("", "flip"):
            raise ConfigError(f"unknown --tta={self.tta!r}; pass --tta=flip (or nothing)")
        if self.learning_rate == "auto" and self.phase == "lr_find":
            raise ConfigError("--phase=lr_find finds the learning rate: drop --learning_rate")
        if self.lr_schedule in STEP_LR_SCHEDULES and self.reduce_lr_on_plateau:
            raise ConfigError(f"--lr_schedule={self.lr_schedule} sets the rate every step and "
                              "--reduce_lr_on_plateau every epoch; pass one of them")
        if (self.lr_schedule == "warmup_cosine" and self.phase != "evaluate"
                and self.epochs and self.warmup_epochs >= self.epochs):
            raise ConfigError(f"--warmup_epochs={self.warmup_epochs} leaves no epoch of the "
                              f"--epochs={self.epochs} for the cosine decay; pass "
                              "--warmup_epochs below --epochs")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json_text(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys are: {sorted(names)}")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))


# Every numeric flag and its range: the fields' own (`_flag(range=...)`) and the entry
# points'. A test may replace an entry (`check_number` reads this dict).
RANGES = {**{f.name: f.metadata["range"] for f in dataclasses.fields(Config)
             if "range" in f.metadata}, **ENTRY_POINT_RANGES}


def fields_with(role: str) -> tuple[str, ...]:
    """The names of the `Config` fields that have `role` (one of `ROLES`), in field order."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
    return _ROLE_FIELDS[role]


def choices_of(name: str):
    """The declared choices of field `name` (a tuple), or None."""
    return _FIELDS[name].metadata.get("choices")


def key_values(cfg, role: str = DATA) -> dict:
    """`{name: value}` of `cfg`'s `role` fields, for a key (a fingerprint, a description):
    a field declared `keyed_at_default=False` only when it is not at its default, so the
    keys made before it existed stay the same."""
    values = {}
    for name in fields_with(role):
        value = getattr(cfg, name, None)
        if keyed(name, value):
            values[name] = value
    return values


def keyed(name: str, value) -> bool:
    """Whether field `name` at `value` goes into a key: always, except a field declared
    `keyed_at_default=False` at its default (so keys made before it existed stay)."""
    field = _FIELDS.get(name)
    return (field is None or field.metadata.get("keyed_at_default", True)
            or value != field.default)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_ROLE_FIELDS = {role: tuple(f.name for f in dataclasses.fields(Config)
                            if role in f.metadata["roles"]) for role in ROLES}


# ---- the one resolver ---------------------------------------------------------------------
def resolve(values: dict, explicit=None) -> Config:
    """The configuration `values` (flag values by `Config` field name) resolve to: the
    `--recipe`'s settings for the fields not in `explicit` (default: every key of
    `values`, as for a Python caller), then every check of `Config`. Used by the command
    line (`flags.definitions.config_from_flags`), the sweep's grid and `tapefit.config`."""
    check_names(values)
    explicit = set(values) if explicit is None else set(explicit)
    return _dataclass_init_config(**apply_recipe(dict(values), explicit))


def check_names(names) -> None:
    """Every name is a `Config` field, or a one-line `ConfigError` with the closest."""
    for name in names:
        if name not in _FIELDS:
            raise ConfigError(f"unknown flag --{name}{did_you_mean(name, _FIELDS)}; "
                              "`tapefit train --help` lists the flags")


def _dataclass_init_config(**values) -> Config:
    config = Config.__new__(Config)
    _DATACLASS_INIT(config, **values)
    return config


_DATACLASS_INIT = Config.__init__


def _resolving_init(self, *args, **kwargs):
    """`Config(...)`: the keywords (and positional values) are what was given; the
    recipe sets the other fields it names (as `resolve`). `dataclasses.replace` and
    `from_dict` pass every field, so a resolved configuration stays as it is."""
    if len(args) > len(_FIELDS):
        raise ConfigError(f"Config takes at most {len(_FIELDS)} values; pass flags by name")
    check_names(kwargs)
    given = {**dict(zip(_FIELDS, args)), **kwargs}
    _DATACLASS_INIT(self, **apply_recipe(given, set(given)))


_resolving_init.__doc__ = Config.__init__.__doc__
_resolving_init.__signature__ = inspect.signature(Config)
Config.__init__ = _resolving_init


def parse_unfreeze_schedule(text: str) -> list[tuple[str, int]]:
    """`block5:0,block4:2` → [("block5", 0), ("block4", 2)]: each block (or layer) and
    the epoch (0-based) from which it trains; blocks named earlier in the model must
    come at later epochs (checked against the model when the phase starts)."""
    stages = []
    for item in text.split(","):
        name, sep, epoch = item.strip().rpartition(":")
        if not sep or not name or not epoch.strip().isdigit():
            raise ConfigError(f"--unfreeze_schedule={text!r}: {item.strip()!r} is not "
                              "BLOCK:EPOCH; pass e.g. --unfreeze_schedule=block5:0,block4:2")
        stages.append((name.strip(), int(epoch)))
    names = [name for name, _ in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"--unfreeze_schedule={text!r} names a block twice; name each once")
    return stages


def normalise_augment(value) -> str:
    """--augment as a canonical comma list: booleans and true/false (the former boolean
    flag, and old config.json files) mean flip,rotate and none."""
    if value is None or value is False:
        return ""
    if value is True:
        return AUGMENT_TRUE
    text = str(value).strip().lower()
    if text in ("", "false", "none", "0", "no"):
        return ""
    if text in ("true", "1", "yes"):
        return AUGMENT_TRUE
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"unknown --augment={','.join(unknown)}; pass a comma list of: "
                          f"{', '.join(AUGMENTATIONS)} (--augment alone: {AUGMENT_TRUE})")
    return ",".join(name for name in AUGMENTATIONS if name in names)
