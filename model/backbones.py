"""Supported pretrained backbones and how to obtain their ImageNet weights offline-safely."""
from __future__ import annotations

import dataclasses
import os
import socket
from typing import Callable

import keras

from flags.config import ConfigError

# Where keras.applications downloads ImageNet weights from.
WEIGHTS_HOST = ("storage.googleapis.com", 443)
NETWORK_PROBE_TIMEOUT_S = 3.0
# Keras' own lower bound on the input size of these applications.
MIN_IMAGE_SIZE = 32
# Input sizes for which Keras publishes MobileNet ImageNet weights.
MOBILENET_WEIGHT_SIZES = (128, 160, 192, 224)


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    application: Callable[..., keras.Model]
    preprocess_mode: str  # keras.applications.imagenet_utils mode: "caffe" or "tf".

    def weights_file(self, alpha: float, image_size: int) -> str:
        """The file name keras.applications caches ImageNet weights under (no top)."""
        if self.name == "vgg16":
            return "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
        rows = image_size if image_size in MOBILENET_WEIGHT_SIZES else 224
        return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"

    def build(self, input_tensor, weights, alpha):
        kwargs = dict(include_top=False, weights=weights, input_tensor=input_tensor,
                      input_shape=tuple(input_tensor.shape[1:]))
        if self.name == "mobilenet":
            kwargs["alpha"] = alpha
        return self.application(**kwargs)


BACKBONES = {
    "vgg16": Backbone("vgg16", keras.applications.VGG16, "caffe"),
    "mobilenet": Backbone("mobilenet", keras.applications.MobileNet, "tf"),
}


def keras_weights_cache(file_name: str) -> str:
    """Path where keras.utils.get_file caches an application weights file."""
    from keras.src.backend import config as keras_config  # Keras' own resolution of KERAS_HOME.

    home = os.path.expanduser(keras_config.keras_home())
    if not os.access(home, os.W_OK):  # keras.utils.get_file falls back the same way.
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "models", file_name)


def network_reachable(host=WEIGHTS_HOST, timeout=NETWORK_PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(cfg) -> str | None:
    """Turns --weights into what keras.applications accepts, or a one-line error.

    `imagenet` is kept only when the weights are cached or downloadable; the
    check answers in seconds instead of waiting on download retries.
    """
    backbone = BACKBONES[cfg.backbone]
    if cfg.weights == "none":
        return None
    if cfg.weights == "imagenet":
        if cfg.backbone == "mobilenet" and cfg.alpha not in (0.25, 0.5, 0.75, 1.0):
            raise ConfigError(
                f"no ImageNet weights for --alpha={cfg.alpha}; use 0.25, 0.5, 0.75 or 1.0, "
                "or pass --weights=none")
        cached = keras_weights_cache(backbone.weights_file(cfg.alpha, cfg.image_size))
        if os.path.exists(cached) or network_reachable():
            return "imagenet"
        raise ConfigError(
            f"cannot download ImageNet weights for {cfg.backbone} (no network, not in "
            f"{os.path.dirname(cached)}): pass --weights=PATH to a local "
            f"{backbone.weights_file(cfg.alpha, cfg.image_size)} or --weights=none")
    if not os.path.isfile(cfg.weights):
        raise ConfigError(
            f"--weights={cfg.weights!r} is not a file; pass --weights=imagenet, "
            "--weights=none or the path of a Keras weights file for the backbone without top")
    return cfg.weights
