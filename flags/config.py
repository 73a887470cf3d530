"""The frozen run configuration passed from entry points down to the library."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import urllib.parse
from typing import Optional

PHASES = ("head", "finetune", "evaluate")
# Phases that train nothing that is kept (loops/lr_find.py); not part of a sweep's phases.
TOOL_PHASES = ("lr_find",)
LR_SUGGESTIONS = ("valley", "steep", "minimum")
# --augment names (model/augment.py), in their canonical order; `true` (the former
# boolean flag) means flip,rotate.
AUGMENTATIONS = ("flip", "rotate", "randaugment", "mixup", "cutmix")
AUGMENT_TRUE = "flip,rotate"
# compare.py: relative tolerance between the loops when not --deterministic.
DEFAULT_TOLERANCE = 1e-5
LOOPS = ("custom", "fit")
BACKBONES = ("vgg16", "vgg19", "resnet50", "resnet50v2", "mobilenet", "mobilenet_v2",
             "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1",
             "efficientnet_b2", "efficientnet_b3", "efficientnetv2_b0", "convnext_tiny",
             "densenet121", "inception_v3", "xception")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "step", "exponential", "cosine", "one_cycle", "warmup_cosine")
# Per-step schedules (loops/schedules.py): a keras LearningRateSchedule in the optimizer.
STEP_LR_SCHEDULES = ("one_cycle", "warmup_cosine")
STRATEGIES = ("default", "mirrored", "multi_worker")
FEATURE_CACHE = ("auto", "off", "memory", "disk")
IMAGE_CACHE = ("auto", "off", "memory", "disk")
FEATURE_PRECISIONS = ("float32", "bfloat16", "auto")
MODES = ("auto", "min", "max")
# What --monitor can name: the logs of both loops (loops/custom.py make_metrics).
MONITORS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Seeds are 32-bit (numpy, TF): [0, SEED_LIMIT).
SEED_LIMIT = 2**32
# Larger images are no use to these backbones and run out of memory.
MAX_IMAGE_SIZE = 1024
REMOTE_MONITOR_SCHEMES = ("http", "https")

# Learning-rate defaults per phase: fine-tuning uses a tenth of the head rate.
HEAD_LEARNING_RATE = 1e-3
FINETUNE_LEARNING_RATE = HEAD_LEARNING_RATE / 10

# Default first trainable block in the finetune phase, per backbone: its last block
# or stage (model/backbones.py holds the same values; tests check they agree).
DEFAULT_UNFREEZE_FROM = {
    "vgg16": "block5", "vgg19": "block5", "resnet50": "conv5", "resnet50v2": "conv5",
    "mobilenet": "block_12", "mobilenet_v2": "block_16",
    "mobilenet_v3_small": "expanded_conv_10", "mobilenet_v3_large": "expanded_conv_14",
    "efficientnet_b0": "block7", "efficientnet_b1": "block7", "efficientnet_b2": "block7",
    "efficientnet_b3": "block7", "efficientnetv2_b0": "block6h", "convnext_tiny": "stage_3",
    "densenet121": "conv5", "inception_v3": "mixed9", "xception": "block14"}


from flags.errors import ConfigError  # noqa: E402,F401  (re-exported)

# --recipe: named settings of the fine-tuning flags, per phase (`apply_recipe`). A flag
# given explicitly overrides its recipe value; config.json records the resolved values.
# `classic` is the behaviour before recipes (every flag at its default). `tuned` was
# chosen with bench/recipes.py on the train/validation photos (bench/README.md:
# candidate `tuned_hot_head`).
RECIPES = {
    "classic": {},
    "tuned": {
        "head": {"lr_schedule": "one_cycle", "learning_rate": 1e-2, "label_smoothing": 0.1},
        "finetune": {"lr_schedule": "one_cycle", "learning_rate": 1e-3,
                     "label_smoothing": 0.1, "layer_lr_decay": 0.7, "weight_decay": 0.01},
    },
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that determines a run. Serialised to `<workdir>/<phase>/config.json`."""

    phase: str = "head"
    loop: str = "custom"
    workdir: str = "runs/default"
    overwrite: bool = False
    # Model.
    backbone: str = "vgg16"
    alpha: float = 1.0
    weights: str = "imagenet"
    image_size: int = 224
    dropout: float = 0.2
    augment: str = ""  # "" none; "flip,rotate" (was --augment); see normalise_augment.
    unfreeze_from: Optional[str] = None
    init_checkpoint: Optional[str] = None
    # Data.
    dataset: str = "cats_vs_dogs"
    data_dir: Optional[str] = None
    tfds_data_dir: Optional[str] = None
    train_split: str = "train[:80%]"
    validation_split_name: str = "train[80%:90%]"
    test_split: str = "train[90%:]"
    validation_split: float = 0.1
    test_split_fraction: float = 0.1
    max_examples_per_split: int = 0
    synthetic_examples: int = 64
    split_seed: int = 42
    # Optimisation.
    batch_size: int = 32
    epochs: int = 10
    learning_rate: Optional[float] = None  # Or "auto": loops/lr_find.resolve_learning_rate.
    for_phase: str = "head"
    lr_suggestion: str = "valley"
    optimizer: str = "adam"
    seed: int = 42
    deterministic: bool = False
    strategy: str = "default"
    jit_compile: bool = False
    mixed_precision: Optional[str] = None
    steps_per_execution: int = 1
    # Fine-tuning tools (issue 13; loops/schedules.py, loops/optimizers.py).
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    clipnorm: float = 0.0
    ema: float = 0.0
    layer_lr_decay: float = 1.0
    recipe: str = "classic"
    train_bn: bool = False
    unfreeze_schedule: str = ""
    tta: str = ""
    feature_cache: str = "auto"
    feature_cache_dir: Optional[str] = None
    feature_precision: str = "float32"
    image_cache: str = "auto"
    image_cache_dir: Optional[str] = None
    # Hooks (Keras-callback-like names).
    monitor: str = "val_loss"
    mode: str = "auto"
    save_best_only: bool = True
    early_stopping: bool = False
    early_stopping_patience: int = 3
    min_delta: float = 0.0
    restore_best_weights: bool = False
    lr_schedule: str = "constant"
    lr_decay_rate: float = 0.1
    lr_decay_epochs: int = 10
    reduce_lr_on_plateau: bool = False
    reduce_lr_patience: int = 2
    reduce_lr_factor: float = 0.1
    reduce_lr_min_lr: float = 0.0
    reduce_lr_cooldown: int = 0
    tensorboard: bool = True
    csv_log: bool = True
    remote_monitor_url: Optional[str] = None
    terminate_on_nan: bool = True
    backup: bool = True
    backup_every_steps: int = 0
    verbose: int = 1
    debug: bool = False

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
        return os.path.join(self.workdir, self.phase)

    def phase_dir(self, phase: str) -> str:
        return os.path.join(self.workdir, phase)

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    # ---- validation and (de)serialisation -------------------------------------
    def __post_init__(self):
        self._normalise_learning_rate()
        object.__setattr__(self, "augment", normalise_augment(self.augment))
        _choice("phase", self.phase, PHASES + TOOL_PHASES)
        _choice("loop", self.loop, LOOPS)
        _choice("backbone", self.backbone, BACKBONES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("feature_cache", self.feature_cache, FEATURE_CACHE)
        _choice("mode", self.mode, MODES)
        if self.mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(f"unknown --mixed_precision={self.mixed_precision!r}; "
                              "pass mixed_float16 or mixed_bfloat16")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size={self.batch_size} must be at least 1")
        if self.epochs < 0:
            raise ConfigError(f"--epochs={self.epochs} must be at least 0")
        if self.image_size < 1:
            raise ConfigError(f"--image_size={self.image_size} must be positive")
        if self.learning_rate not in (None, "auto") and not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate={self.learning_rate} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout={self.dropout} must be in [0, 1)")
        if not 0.0 < self.validation_split < 1.0:
            raise ConfigError(f"--validation_split={self.validation_split} must be in (0, 1)")
        if self.steps_per_execution < 1:
            raise ConfigError(
                f"--steps_per_execution={self.steps_per_execution} must be at least 1")
        self._check_ranges()

    def _check_ranges(self):
        """Checks that need no data or model: one line each, naming the fix, before
        anything is written or trained."""
        if not self.workdir:
            raise ConfigError("--workdir is empty; pass a run directory, e.g. --workdir=runs/x")
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"--alpha={self.alpha} must be a positive number; pass e.g. "
                              "--alpha=1.0 (ImageNet weights exist for 0.25, 0.5, 0.75, 1.0)")
        for name in ("seed", "split_seed"):
            value = getattr(self, name)
            if not 0 <= value < SEED_LIMIT:
                raise ConfigError(f"--{name}={value} must be in [0, 2**32); pass e.g. --{name}=0")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"--image_size={self.image_size} is too large; pass --image_size "
                              f"of at most {MAX_IMAGE_SIZE} (224 is the backbones' native size)")
        if self.learning_rate not in (None, "auto") and not math.isfinite(self.learning_rate):
            raise ConfigError(f"--learning_rate={self.learning_rate} is not a finite number; "
                              "pass e.g. --learning_rate=0.001")
        if not (0.0 < self.reduce_lr_factor < 1.0):
            raise ConfigError(f"--reduce_lr_factor={self.reduce_lr_factor} must be in (0, 1) "
                              "(the rate is multiplied by it on a plateau); pass e.g. 0.1")
        if not (self.reduce_lr_min_lr >= 0 and math.isfinite(self.reduce_lr_min_lr)):
            raise ConfigError(f"--reduce_lr_min_lr={self.reduce_lr_min_lr} must be a number of "
                              "at least 0; pass e.g. --reduce_lr_min_lr=0")
        if not (self.lr_decay_rate > 0 and math.isfinite(self.lr_decay_rate)):
            raise ConfigError(f"--lr_decay_rate={self.lr_decay_rate} must be a positive number; "
                              "pass e.g. --lr_decay_rate=0.1")
        if self.lr_decay_epochs < 1:
            raise ConfigError(f"--lr_decay_epochs={self.lr_decay_epochs} must be at least 1")
        if self.monitor not in MONITORS:
            raise ConfigError(f"unknown --monitor={self.monitor!r}; choose one of: "
                              f"{', '.join(MONITORS)}")
        if not math.isfinite(self.min_delta):
            raise ConfigError(f"--min_delta={self.min_delta} is not a finite number; pass e.g. "
                              "--min_delta=0")
        for name in ("early_stopping_patience", "reduce_lr_patience", "reduce_lr_cooldown",
                     "backup_every_steps", "max_examples_per_split"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"--{name}={value} must be at least 0")
        if self.verbose not in (0, 1, 2):
            raise ConfigError(f"--verbose={self.verbose} must be 0, 1 or 2")
        if self.remote_monitor_url:
            _check_url("remote_monitor_url", self.remote_monitor_url)
        _choice("image_cache", self.image_cache, IMAGE_CACHE)
        _choice("feature_precision", self.feature_precision, FEATURE_PRECISIONS)
        if self.image_cache_dir is not None and not self.image_cache_dir.strip():
            raise ConfigError("--image_cache_dir is empty; pass a folder, or leave it unset "
                              "for <workdir>/image_cache")
        self._check_finetune_tools()

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
        _choice("for_phase", self.for_phase, ("head", "finetune"))
        _choice("lr_suggestion", self.lr_suggestion, LR_SUGGESTIONS)
        _choice("recipe", self.recipe, tuple(RECIPES))
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
        def number(name, low, high, example, low_open=False, high_open=False):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and math.isfinite(value) and (
                (value > low if low_open else value >= low)
                and (value < high if high_open else value <= high))
            if not ok:
                interval = (f"{'(' if low_open else '['}{low}, "
                            f"{high}{')' if high_open else ']'}")
                raise ConfigError(f"--{name}={value} must be in {interval}; pass e.g. "
                                  f"--{name}={example}")
        number("warmup_epochs", 0, math.inf, 1, high_open=True)
        number("label_smoothing", 0, 1, 0.1, high_open=True)
        number("weight_decay", 0, math.inf, 0.01, high_open=True)
        number("clipnorm", 0, math.inf, 1.0, high_open=True)
        number("ema", 0, 1, 0.99, high_open=True)
        number("layer_lr_decay", 0, 1, 0.7, low_open=True)
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
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

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


def recipe_values(recipe: str, phase: str) -> dict:
    """The flag values `--recipe` sets for `phase` (lr_find: those of its --for_phase
    but the rate and schedule, which the finder sets itself)."""
    if recipe not in RECIPES:
        _choice("recipe", recipe, tuple(RECIPES))
    return dict(RECIPES[recipe].get(phase, {}))


def apply_recipe(values: dict, explicit=()) -> dict:
    """`values` (Config field values) with the recipe's settings for their phase,
    except the fields in `explicit` (flags given on the command line)."""
    phase = values.get("phase", "head")
    settings = recipe_values(values.get("recipe", "classic"),
                             values.get("for_phase", "head") if phase == "lr_find" else phase)
    if phase == "lr_find":
        settings = {k: v for k, v in settings.items()
                    if k not in ("learning_rate", "lr_schedule")}
    return {**values, **{k: v for k, v in settings.items() if k not in set(explicit)}}


def _check_url(name: str, url: str) -> None:
    """http(s)://host[:port][/path] only: no file://, ftp:// or other schemes."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is no number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in REMOTE_MONITOR_SCHEMES or not parts.hostname:
        raise ConfigError(f"--{name}={url!r} is not an http:// or https:// URL with a host; "
                          f"pass e.g. --{name}=http://localhost:9000")


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"unknown --{name}={value!r}; choose one of: {', '.join(choices)}")
