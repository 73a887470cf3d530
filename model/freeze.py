"""Which layers of a `build_model` classifier train in a phase, in one call:
`set_trainable(model, phase, unfreeze_from, train_bn=...)` (batch-norm included), and the
names `--unfreeze_from` accepts (the backbone's blocks, stages and layers).

Imports of model/ only the registry (backbones.py), the graph helpers (graph.py) and the
layer names (names.py): build.py and augment.py may import this module, never the reverse.
"""
from __future__ import annotations

import keras

from tapefit.flags.errors import ConfigError
from tapefit.model.backbones import BACKBONES
from tapefit.model.graph import last_boundary_before, ordered_layers, topological_nodes
from tapefit.model.names import AUGMENT_PREFIX, HEAD_LAYERS, MODEL_PREFIX, PREPROCESS


def backbone_of(model):
    """The registry entry a model from `build_model` was built with."""
    return BACKBONES[model.name.removeprefix(MODEL_PREFIX)]


def is_backbone_layer(layer) -> bool:
    """Whether `layer` is the backbone's own (not the input, augmentation, our
    preprocessing or the head)."""
    return not (isinstance(layer, keras.layers.InputLayer) or layer.name == PREPROCESS
                or layer.name in HEAD_LAYERS or layer.name.startswith(AUGMENT_PREFIX))


def backbone_layer_names(model) -> list[str]:
    """Names of the backbone's layers, in a topological order (what --unfreeze_from
    accepts besides block names)."""
    return [layer.name for layer in ordered_layers(model) if is_backbone_layer(layer)]


def unfreeze_blocks(model) -> dict[str, int]:
    """Block (and stage) names of the backbone → position of their first layer in
    `graph.ordered_layers(model)`, in order."""
    blocks = backbone_of(model).blocks
    starts = {}
    for position, layer in enumerate(ordered_layers(model)):
        if is_backbone_layer(layer):
            for name in blocks.names(layer.name):
                starts.setdefault(name, position)
    return starts


def describe_blocks(model) -> str:
    """The block names, stages with their blocks abbreviated: `conv5 (conv5_block1…3)`."""
    blocks = backbone_of(model).blocks
    groups: dict[str, list[str]] = {}
    for layer in ordered_layers(model):
        if is_backbone_layer(layer):
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
        if layer.name == unfreeze_from and is_backbone_layer(layer):
            return position
    raise ConfigError(
        f"unknown block or layer {unfreeze_from!r} for --unfreeze_from of "
        f"{backbone_of(model).name}; its blocks are: {describe_blocks(model)} "
        "(or pass the name of one of its layers)")


def set_trainable(model, phase: str, unfreeze_from: str | None = None,
                  train_bn: bool = False) -> None:
    """Freezes the model for a phase: the one call for it.

    head: only the head trains. finetune: the block or layer `unfreeze_from` and
    every layer after it train, except BatchNormalization layers, which stay frozen
    (and so in inference mode) as the Keras fine-tuning guide advises, unless
    `train_bn` (`--train_bn`: `unfreeze_batch_norm`). A frozen part runs in inference
    mode: its batch-norm uses the moving statistics and its dropout (EfficientNet's
    stochastic depth) is off; unfrozen blocks keep theirs.
    """
    first = first_trainable_position(model, unfreeze_from) if phase == "finetune" else None
    for position, layer in enumerate(ordered_layers(model)):
        if not is_backbone_layer(layer):
            layer.trainable = True
            continue
        train = first is not None and position >= first
        layer.trainable = train and not isinstance(layer, keras.layers.BatchNormalization)
        if isinstance(layer, keras.layers.Dropout):
            rate = layer.__dict__.setdefault("_tapefit_rate", layer.rate)
            layer.rate = rate if train else 0.0
    if train_bn:
        unfreeze_batch_norm(model, phase, unfreeze_from)


def unfreeze_batch_norm(model, phase: str, unfreeze_from: str | None) -> int:
    """What `train_bn` adds to `set_trainable`: in the finetune phase the
    BatchNormalization layers from `unfreeze_from` on train too (gamma, beta, and batch
    statistics in training mode, updating their moving averages). Frozen by default:
    small fine-tuning batches give noisy batch statistics that shift the moving averages
    the pretrained weights rely on. Returns how many layers it unfroze."""
    if phase != "finetune":
        return 0
    first = first_trainable_position(model, unfreeze_from)
    count = 0
    for position, layer in enumerate(ordered_layers(model)):
        if (position >= first and is_backbone_layer(layer)
                and isinstance(layer, keras.layers.BatchNormalization)):
            layer.trainable = True
            count += 1
    return count
