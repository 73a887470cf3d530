"""Model-side fine-tuning tools of issue 13 that need no change of `model/build.py`:
test-time augmentation (`--tta=flip`) and trainable batch-norm (`--train_bn`).
"""
from __future__ import annotations

import math

import keras

TTA_CHOICES = ("", "flip")


def with_tta(model, tta: str):
    """`model` averaged over test-time augmentations: `flip` averages the class
    probabilities of each image and its mirror image (left-right), and returns
    their log (logits of the averaged distribution: the loss and accuracy of both
    loops apply unchanged). `""`: the model itself."""
    if not tta:
        return model
    if tta != "flip":
        raise ValueError(f"unknown test-time augmentation {tta!r}")
    inputs = keras.Input(model.inputs[0].shape[1:], name="image")
    mirrored = keras.ops.flip(inputs, axis=2)  # NHWC: the width axis.
    a = keras.ops.log_softmax(model(inputs), axis=-1)
    b = keras.ops.log_softmax(model(mirrored), axis=-1)
    logits = keras.ops.logaddexp(a, b) - math.log(2.0)
    return keras.Model(inputs, logits, name=f"{model.name}_tta_{tta}")


def unfreeze_batch_norm(model, phase: str, unfreeze_from: str | None) -> int:
    """`--train_bn`: in the finetune phase the BatchNormalization layers from
    `unfreeze_from` on train too (gamma, beta, and batch statistics in training mode,
    updating their moving averages). `model.build.set_trainable` keeps them frozen by
    default, as the Keras fine-tuning guide advises: small fine-tuning batches give
    noisy batch statistics that shift the moving averages the pretrained weights
    rely on. Returns how many layers it unfroze."""
    if phase != "finetune":
        return 0
    from model.build import _is_backbone_layer, first_trainable_position
    from model.graph import ordered_layers
    first = first_trainable_position(model, unfreeze_from)
    count = 0
    for position, layer in enumerate(ordered_layers(model)):
        if (position >= first and _is_backbone_layer(layer)
                and isinstance(layer, keras.layers.BatchNormalization)):
            layer.trainable = True
            count += 1
    return count
