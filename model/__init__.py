"""Model construction and freezing for the two transfer-learning phases."""
from model.backbones import BACKBONES, resolve_weights
from model.build import (BackbonePreprocess, backbone_layer_names, build_model,
                         set_trainable)

__all__ = ["BACKBONES", "BackbonePreprocess", "backbone_layer_names", "build_model",
           "resolve_weights", "set_trainable"]
