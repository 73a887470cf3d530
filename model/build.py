"""The classifier: raw 0–255 RGB → backbone preprocess → backbone → GAP → Dropout → logits.

Which of its layers train is model/freeze.py's (`set_trainable`); this module imports it
(`check_unfreeze_from`), never the reverse.
"""
from __future__ import annotations

import warnings

import keras
from keras import layers

from tapefit.flags.config import ConfigError
from tapefit.model import augment
from tapefit.model.backbones import BACKBONES, check_alpha, resolve_weights
from tapefit.model.freeze import first_trainable_position
from tapefit.model.graph import ordered_layers
from tapefit.model.names import (
    AUGMENT_PREFIX,
    AVG_POOL,
    HEAD_DROPOUT,
    LOGITS,
    MODEL_PREFIX,
    PREPROCESS,
)

AUGMENTATION_ROTATION = augment.ROTATION  # fraction of a full turn (model/augment.py)
# Layers that only rescale or normalize pixels (ours, or the application's own).
PREPROCESSING_LAYERS = (layers.Rescaling, layers.Normalization)


@keras.saving.register_keras_serializable(package="tapefit")
class BackbonePreprocess(layers.Layer):
    """Applies `keras.applications.imagenet_utils.preprocess_input` inside the model.

    A saved model therefore classifies raw 0–255 RGB images.
    """

    def __init__(self, mode, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        return keras.applications.imagenet_utils.preprocess_input(inputs, mode=self.mode)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def build_model(cfg, num_classes: int, weights="from_config") -> keras.Model:
    """Builds the full classifier with a flat layer graph (backbone layers by name).

    `weights` overrides `cfg.weights` (None when a checkpoint will be loaded).
    Keras draws dropout and augmentation seeds at construction: callers seed
    (keras.utils.set_random_seed) right before calling this.
    """
    backbone = BACKBONES[cfg.backbone]
    if cfg.image_size < backbone.min_size:
        raise ConfigError(
            f"--image_size={cfg.image_size} is too small for {cfg.backbone}; "
            f"pass --image_size={backbone.min_size} or more")
    if num_classes < 2:
        raise ConfigError(f"need at least 2 classes, got {num_classes}")
    check_alpha(cfg)
    if weights == "from_config":
        weights = resolve_weights(cfg)
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    # --augment: flip, rotate, randaugment here (model/augment.py; mixup and cutmix mix
    # the training batches instead).
    for layer in augment.model_layers(cfg.augment, cfg.seed):
        x = layer(x)
    if backbone.preprocess_mode:  # Otherwise the application preprocesses raw pixels itself.
        x = BackbonePreprocess(backbone.preprocess_mode, name=PREPROCESS)(x)
    try:
        with warnings.catch_warnings():  # Keras warns per layer of a file that does not fit.
            warnings.filterwarnings("ignore", module=r"keras\.src\.saving")
            features = backbone.build(x, weights, cfg.alpha).output
    except (ValueError, KeyError, OSError, TypeError) as e:  # e.g. another architecture's file.
        if isinstance(weights, str) and weights != "imagenet":
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(
                f"--weights={weights} does not fit {cfg.backbone} without top "
                f"({first}); pass a matching file or --weights=none") from None
        raise
    x = layers.GlobalAveragePooling2D(name=AVG_POOL)(features)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, seed=cfg.seed, name=HEAD_DROPOUT)(x)
    outputs = layers.Dense(num_classes, name=LOGITS)(x)
    return keras.Model(inputs, outputs, name=f"{MODEL_PREFIX}{cfg.backbone}")


def check_unfreeze_from(cfg) -> None:
    """The one-line ConfigError of `set_trainable` for an unknown `cfg.resolved_unfreeze_from`,
    before anything runs: builds the model without weights (and clears Keras' session)."""
    try:
        first_trainable_position(build_model(cfg, 2, weights=None), cfg.resolved_unfreeze_from)
    finally:
        keras.backend.clear_session()


def preprocessing_output(model):
    """The tensor the backbone's first real layer receives: the raw input after our
    `preprocess` layer or the application's own Rescaling/Normalization layers."""
    output = model.inputs[0]
    for layer in ordered_layers(model)[1:]:
        if layer.name.startswith(AUGMENT_PREFIX) or isinstance(
                layer, (BackbonePreprocess, *PREPROCESSING_LAYERS)):
            output = layer.output
        else:
            return output
    return output

