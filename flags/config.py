"""The frozen run configuration passed from entry points down to the library."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

PHASES = ("head", "finetune", "evaluate")
LOOPS = ("custom", "fit")
BACKBONES = ("vgg16", "mobilenet")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "step", "exponential", "cosine")
STRATEGIES = ("default", "mirrored", "multi_worker")
FEATURE_CACHE = ("auto", "off", "memory", "disk")

# Learning-rate defaults per phase: fine-tuning uses a tenth of the head rate.
HEAD_LEARNING_RATE = 1e-3
FINETUNE_LEARNING_RATE = HEAD_LEARNING_RATE / 10

# Default first trainable layer in the finetune phase, per backbone.
DEFAULT_UNFREEZE_FROM = {"vgg16": "block5_conv1", "mobilenet": "conv_dw_12"}


from flags.errors import ConfigError  # noqa: E402,F401  (re-exported)


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
    augment: bool = False
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
    learning_rate: Optional[float] = None
    optimizer: str = "adam"
    seed: int = 42
    deterministic: bool = False
    strategy: str = "default"
    jit_compile: bool = False
    mixed_precision: Optional[str] = None
    steps_per_execution: int = 1
    feature_cache: str = "auto"
    feature_cache_dir: Optional[str] = None
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
        _choice("phase", self.phase, PHASES)
        _choice("loop", self.loop, LOOPS)
        _choice("backbone", self.backbone, BACKBONES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("feature_cache", self.feature_cache, FEATURE_CACHE)
        _choice("mode", self.mode, ("auto", "min", "max"))
        if self.mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(
                    f"unknown --mixed_precision={self.mixed_precision!r}; pass mixed_float16 or mixed_bfloat16")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size={self.batch_size} must be at least 1")
        if self.epochs < 0:
            raise ConfigError(f"--epochs={self.epochs} must be at least 0")
        if self.image_size < 1:
            raise ConfigError(f"--image_size={self.image_size} must be positive")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate={self.learning_rate} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout={self.dropout} must be in [0, 1)")
        if not 0.0 < self.validation_split < 1.0:
            raise ConfigError(f"--validation_split={self.validation_split} must be in (0, 1)")
        if self.steps_per_execution < 1:
            raise ConfigError(f"--steps_per_execution={self.steps_per_execution} must be at least 1")

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


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"unknown --{name}={value!r}; choose one of: {', '.join(choices)}")
