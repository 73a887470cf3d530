"""Model construction (build.py) and freezing (freeze.py) for the two transfer-learning
phases."""
from tapefit.model.backbones import BACKBONES, resolve_weights
from tapefit.model.build import (
    BackbonePreprocess,
    build_model,
    check_unfreeze_from,
    preprocessing_output,
)
from tapefit.model.freeze import (
    backbone_layer_names,
    describe_blocks,
    first_trainable_position,
    set_trainable,
    unfreeze_blocks,
)

__all__ = ["BACKBONES", "BackbonePreprocess", "backbone_layer_names", "build_model",
           "check_unfreeze_from", "describe_blocks", "first_trainable_position",
           "preprocessing_output", "resolve_weights", "set_trainable", "unfreeze_blocks"]
