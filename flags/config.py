"""The frozen run configuration passed from entry points down to the library."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
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


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric flag may take: [low, high] (`low_open`/`high_open`: the
    bound itself excluded), or `off` (a value outside the range that turns the tool
    off, e.g. --clipnorm=0). `example` goes into the error's "pass e.g."; `note`
    says why, where the range alone does not."""

    low: float
    high: float
    example: object
    low_open: bool = False
    high_open: bool = False
    off: object = None
    note: str = ""

    def contains(self, value) -> bool:
        if value == self.off and self.off is not None:
            return True
        return ((value > self.low if self.low_open else value >= self.low)
                and (value < self.high if self.high_open else value <= self.high))

    def text(self) -> str:
        interval = (f"{'(' if self.low_open else '['}{_bound(self.low)}, "
                    f"{_bound(self.high)}{')' if self.high_open else ']'}")
        if self.off is None:
            return f"in {interval}"
        return f"{_bound(self.off)} (off) or in {interval}"


def _bound(value) -> str:
    """2**32 rather than 4294967296, 1e-06 and 1 rather than 1e-06 and 1.0."""
    if isinstance(value, int) and value >= 2**16 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


# Every numeric flag and its range (`check_number`): one line naming the fix, before
# anything is written. Upper bounds are where a value stops making sense for this
# program (and would fail late: an overflow inside TensorFlow, memory, a hang), not
# what a machine can hold; `check_memory` adds what depends on two flags.
_MANY = 100_000  # Epochs, patience, steps per execution: far beyond any real run.
FLOAT32_MAX = 3.4028234663852886e38  # Rates live in float32 variables.
RANGES = {
    # Model.
    "alpha": Range(0.1, 4.0, 1.0, note="ImageNet weights exist for 0.25, 0.5, 0.75, 1.0"),
    "image_size": Range(1, MAX_IMAGE_SIZE, 224, note="224 is the backbones' native size"),
    "dropout": Range(0.0, 1.0, 0.2, high_open=True),
    # Data.
    "validation_split": Range(0.0, 1.0, 0.1, low_open=True, high_open=True),
    "test_split_fraction": Range(0.0, 1.0, 0.1, low_open=True, high_open=True),
    "max_examples_per_split": Range(0, 10**9, 1000, note="0: all"),
    "synthetic_examples": Range(2, 10**6, 64),
    "split_seed": Range(0, SEED_LIMIT, 0, high_open=True),
    # Optimisation.
    "batch_size": Range(1, 2**16, 32),
    "epochs": Range(0, _MANY, 10),
    # A huge rate is a valid way to see a divergence handled (NaN stop); beyond float32
    # the optimizer's rate variable is infinite.
    "learning_rate": Range(0.0, FLOAT32_MAX, 0.001, low_open=True,
                           note="or auto: the learning-rate finder's suggestion"),
    "seed": Range(0, SEED_LIMIT, 0, high_open=True),
    "steps_per_execution": Range(1, _MANY, 1),
    "warmup_epochs": Range(0.0, float(_MANY), 1, high_open=True),
    "label_smoothing": Range(0.0, 1.0, 0.1, high_open=True),
    "weight_decay": Range(0.0, 1.0, 0.01),
    # Smaller norms underflow in float32 (1e-38) and the gradients become 0 or NaN.
    "clipnorm": Range(1e-6, 1e6, 1.0, off=0.0),
    "ema": Range(0.0, 1.0, 0.99, high_open=True),
    "layer_lr_decay": Range(1e-3, 1.0, 0.7),
    # Hooks.
    "early_stopping_patience": Range(0, _MANY, 3),
    "min_delta": Range(-1000.0, 1000.0, 0, note="a change of --monitor smaller than this "
                       "is no improvement"),
    "lr_decay_rate": Range(0.0, FLOAT32_MAX, 0.1, low_open=True, note="above 1 the rate grows"),
    "lr_decay_epochs": Range(1, _MANY, 10),
    "reduce_lr_patience": Range(0, _MANY, 2),
    "reduce_lr_factor": Range(0.0, 1.0, 0.1, low_open=True, high_open=True,
                              note="the rate is multiplied by it on a plateau"),
    "reduce_lr_min_lr": Range(0.0, FLOAT32_MAX, 0),
    "reduce_lr_cooldown": Range(0, _MANY, 0),
    "backup_every_steps": Range(0, 10**9, 0, note="0: epoch ends only"),
    "verbose": Range(0, 2, 1),
    # Entry-point flags that are not part of Config (loops/entry.py, compare.py).
    "logical_cpus": Range(0, 16, 2, note="0 or 1: the CPU as one device"),
    "tolerance": Range(0.0, 1.0, DEFAULT_TOLERANCE, note="relative difference"),
}
# Entry-point flags in RANGES; every other entry is a Config field.
ENTRY_POINT_NUMBERS = ("logical_cpus", "tolerance")
# What one process may spend on data that lives in memory (`check_memory`).
MEMORY_LIMIT_BYTES = 8 * 2**30


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
        from flags.errors import DataError
        error = DataError if name in _DATA_NUMBERS else ConfigError
        what = "a whole number " if whole and not kind_ok else ""
        note = f" ({spec.note})" if spec.note else ""
        raise error(f"--{name}={value} must be {what}{spec.text()}{note}; pass e.g. "
                    f"--{name}={spec.example}")


_DATA_NUMBERS = ("validation_split", "test_split_fraction", "max_examples_per_split",
                 "synthetic_examples", "split_seed")


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

# Learning-rate defaults per phase: fine-tuning uses a tenth of the head default, a
# constant (not a tenth of whatever rate the head ran with, e.g. after --learning_rate=auto;
# README "Learning-rate finder" says why).
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
        self._check_ranges()

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
            _check_url("remote_monitor_url", self.remote_monitor_url)
        _choice("image_cache", self.image_cache, IMAGE_CACHE)
        _choice("feature_precision", self.feature_precision, FEATURE_PRECISIONS)
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
