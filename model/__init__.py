"""Model construction and freezing for the two transfer-learning phases."""
from model.backbones import BACKBONES, resolve_weights
from model.build import (
    BackbonePreprocess,
    backbone_layer_names,
    build_model,
    check_unfreeze_from,
    describe_blocks,
    first_trainable_position,
    preprocessing_output,
    set_trainable,
    unfreeze_blocks,
)

__all__ = ["BACKBONES", "BackbonePreprocess", "backbone_layer_names", "build_model",
           "check_unfreeze_from", "describe_blocks", "first_trainable_position",
           "preprocessing_output", "resolve_weights", "set_trainable", "unfreeze_blocks"]
