"""The classifier: raw 0–255 RGB → backbone preprocess → backbone → GAP → Dropout → logits."""
from __future__ import annotations

import warnings

import keras
from keras import layers

from flags.config import ConfigError
from model import augment
from model.backbones import BACKBONES, check_alpha, resolve_weights
from model.graph import last_boundary_before, ordered_layers, topological_nodes

HEAD_LAYERS = ("avg_pool", "head_dropout", "logits")
AUGMENTATION_ROTATION = augment.ROTATION  # fraction of a full turn (model/augment.py)
MODEL_PREFIX = "tapefit_"
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
        x = BackbonePreprocess(backbone.preprocess_mode, name="preprocess")(x)
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
    x = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"{MODEL_PREFIX}{cfg.backbone}")


def backbone_of(model):
    """The registry entry a model from `build_model` was built with."""
    return BACKBONES[model.name.removeprefix(MODEL_PREFIX)]


def _is_backbone_layer(layer) -> bool:
    return not (isinstance(layer, keras.layers.InputLayer) or layer.name == "preprocess"
                or layer.name in HEAD_LAYERS or layer.name.startswith("augment_"))


def backbone_layer_names(model) -> list[str]:
    """Names of the backbone's layers, in a topological order (what --unfreeze_from
    accepts besides block names)."""
    return [layer.name for layer in ordered_layers(model) if _is_backbone_layer(layer)]


def unfreeze_blocks(model) -> dict[str, int]:
    """Block (and stage) names of the backbone → position of their first layer in
    `graph.ordered_layers(model)`, in order."""
    blocks = backbone_of(model).blocks
    starts = {}
    for position, layer in enumerate(ordered_layers(model)):
        if _is_backbone_layer(layer):
            for name in blocks.names(layer.name):
                starts.setdefault(name, position)
    return starts


def describe_blocks(model) -> str:
    """The block names, stages with their blocks abbreviated: `conv5 (conv5_block1…3)`."""
    blocks = backbone_of(model).blocks
    groups: dict[str, list[str]] = {}
    for layer in ordered_layers(model):
        if _is_backbone_layer(layer):
            names = blocks.names(layer.name)
            if names:
                children = groups.setdefault(names[0], [])
                if len(names) == 2 and names[1] not in children:
                    children.append(names[1])
    return ", ".join(f"{top} ({children[0]}…{children[-1]})" if len(children) > 1
                     else top for top, children in groups.items())


def first_trainable_position(model, unfreeze_from: str) -> int:
    """Where fine-tuning starts in `graph.ordered_layers(model)`.

    A block starts right after the last single-tensor boundary before its first
    layer, so a block's shortcut branch trains with it whatever the layer order; a
    layer name starts at that layer (it and every layer after it in the order).
    """
    blocks = unfreeze_blocks(model)
    if unfreeze_from in blocks:
        return last_boundary_before(topological_nodes(model), blocks[unfreeze_from]) + 1
    layers_in_order = ordered_layers(model)
    for position, layer in enumerate(layers_in_order):
        if layer.name == unfreeze_from and _is_backbone_layer(layer):
            return position
    raise ConfigError(
        f"unknown block or layer {unfreeze_from!r} for --unfreeze_from of "
        f"{backbone_of(model).name}; its blocks are: {describe_blocks(model)} "
        "(or pass the name of one of its layers)")


def check_unfreeze_from(cfg) -> None:
    """The one-line ConfigError of `set_trainable` for an unknown `cfg.resolved_unfreeze_from`,
    before anything runs: builds the model without weights (and clears Keras' session)."""
    try:
        first_trainable_position(build_model(cfg, 2, weights=None), cfg.resolved_unfreeze_from)
    finally:
        keras.backend.clear_session()


def set_trainable(model, phase: str, unfreeze_from: str | None = None) -> None:
    """Freezes the model for a phase.

    head: only the head trains. finetune: the block or layer `unfreeze_from` and
    every layer after it train, except BatchNormalization layers, which stay frozen
    (and so in inference mode) as the Keras fine-tuning guide advises. A frozen
    part runs in inference mode: its batch-norm uses the moving statistics and its
    dropout (EfficientNet's stochastic depth) is off; unfrozen blocks keep theirs.
    """
    first = first_trainable_position(model, unfreeze_from) if phase == "finetune" else None
    for position, layer in enumerate(ordered_layers(model)):
        if not _is_backbone_layer(layer):
            layer.trainable = True
            continue
        train = first is not None and position >= first
        layer.trainable = train and not isinstance(layer, layers.BatchNormalization)
        if isinstance(layer, layers.Dropout):
            rate = layer.__dict__.setdefault("_tapefit_rate", layer.rate)
            layer.rate = rate if train else 0.0


def preprocessing_output(model):
    """The tensor the backbone's first real layer receives: the raw input after our
    `preprocess` layer or the application's own Rescaling/Normalization layers."""
    output = model.inputs[0]
    for layer in ordered_layers(model)[1:]:
        if layer.name.startswith("augment_") or isinstance(
                layer, (BackbonePreprocess, *PREPROCESSING_LAYERS)):
            output = layer.output
        else:
            return output
    return output
