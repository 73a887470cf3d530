"""The classifier: raw 0–255 RGB → backbone preprocess → backbone → GAP → Dropout → logits."""
from __future__ import annotations

import keras
from keras import layers

from flags.config import ConfigError
from model.backbones import BACKBONES, MIN_IMAGE_SIZE, resolve_weights

HEAD_LAYERS = ("avg_pool", "head_dropout", "logits")
AUGMENTATION_ROTATION = 0.05  # fraction of a full turn


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
    if cfg.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"--image_size={cfg.image_size} is too small for {cfg.backbone}; "
            f"pass --image_size={MIN_IMAGE_SIZE} or more")
    if num_classes < 2:
        raise ConfigError(f"need at least 2 classes, got {num_classes}")
    backbone = BACKBONES[cfg.backbone]
    if weights == "from_config":
        weights = resolve_weights(cfg)
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    x = inputs
    if cfg.augment:
        x = layers.RandomFlip("horizontal", seed=cfg.seed, name="augment_flip")(x)
        x = layers.RandomRotation(AUGMENTATION_ROTATION, seed=cfg.seed, name="augment_rotate")(x)
    x = BackbonePreprocess(backbone.preprocess_mode, name="preprocess")(x)
    try:
        features = backbone.build(x, weights, cfg.alpha).output
    except ValueError as e:  # e.g. a weights file for another architecture.
        if isinstance(weights, str) and weights != "imagenet":
            raise ConfigError(
                f"--weights={weights} does not fit {cfg.backbone} without top "
                f"({str(e).splitlines()[0]}); pass a matching file or --weights=none") from None
        raise
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"tapefit_{cfg.backbone}")


def backbone_layer_names(model) -> list[str]:
    """Names of the backbone's layers, in order (what --unfreeze_from accepts)."""
    skip = {"image", "preprocess", *HEAD_LAYERS}
    return [l.name for l in model.layers
            if l.name not in skip and not l.name.startswith("augment_")]


def set_trainable(model, phase: str, unfreeze_from: str | None = None) -> None:
    """Freezes the model for a phase.

    head: only the head trains. finetune: `unfreeze_from` and every layer after
    it train, except BatchNormalization layers, which stay frozen (and so in
    inference mode) as the Keras fine-tuning guide advises.
    """
    names = backbone_layer_names(model)
    if phase == "finetune":
        if unfreeze_from not in names:
            raise ConfigError(
                f"unknown layer {unfreeze_from!r} for --unfreeze_from; layers are: "
                + ", ".join(names))
        first = names.index(unfreeze_from)
    else:
        first = len(names)
    trainable = set(names[first:])
    for layer in model.layers:
        if layer.name in names:
            layer.trainable = (layer.name in trainable
                               and not isinstance(layer, layers.BatchNormalization))
        else:
            layer.trainable = True
