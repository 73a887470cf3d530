"""The supported keras.applications backbones: preprocessing, minimum input size,
block names for --unfreeze_from, and offline-safe ImageNet weights."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable

import keras

from tapefit.flags.config import DEFAULT_UNFREEZE_FROM, ConfigError

# Where keras.applications downloads ImageNet weights from.
WEIGHTS_HOST = ("storage.googleapis.com", 443)
NETWORK_PROBE_TIMEOUT_S = 3.0
# ImageNet statistics of the "torch" preprocessing mode (keras.applications.imagenet_utils).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STDDEV = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """How a family names its blocks: `pattern` matches a layer name; its named groups
    `stage` and `block` (either may be absent) give the names, via `stage`/`block` formats.
    A block starts after the last single-tensor boundary before its first layer."""

    pattern: str
    stage: str | None = None
    block: str | None = None

    def names(self, layer_name: str) -> list[str]:
        """The stage and block names `layer_name` belongs to (none, one or both)."""
        match = re.match(self.pattern, layer_name)
        if not match:
            return []
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        names = []
        for fmt in (self.stage, self.block):
            try:
                names.append(fmt.format(**groups))
            except (AttributeError, KeyError):  # No such format, or its group did not match.
                pass
        return names


VGG_BLOCKS = Blocks(r"^(?P<stage>block\d+)_", stage="{stage}")
RESNET_BLOCKS = Blocks(r"^(?P<stage>conv\d+)_(?:(?P<block>block\d+)_)?", stage="{stage}",
                       block="{stage}_{block}")
EFFICIENTNET_BLOCKS = Blocks(r"^(?P<stage>block\d+)(?P<block>[a-z])_", stage="{stage}",
                             block="{stage}{block}")


@dataclasses.dataclass(frozen=True)
class Backbone:
    name: str
    application: Callable[..., keras.Model]
    # imagenet_utils mode applied by our "preprocess" layer ("caffe", "tf", "torch"), or
    # None when the application preprocesses raw 0-255 RGB itself; `preprocess_as` is
    # then the imagenet_utils mode its own layers compute.
    preprocess_mode: str | None
    preprocess_as: str
    min_size: int  # Keras' own lower bound (obtain_input_shape's min_size).
    blocks: Blocks
    weights_name: str  # File name keras.applications caches ImageNet weights under (no top).
    imagenet_alphas: tuple[float, ...] = ()  # Width multipliers with ImageNet weights.
    imagenet_sizes: tuple[int, ...] = ()  # Sizes with their own weights file (else 224).

    @property
    def default_unfreeze(self) -> str:
        """The first block that trains in the finetune phase by default (its last block
        or stage): `flags.config.DEFAULT_UNFREEZE_FROM`, where flags/ can read it
        without importing Keras."""
        return DEFAULT_UNFREEZE_FROM[self.name]

    @property
    def has_alpha(self) -> bool:
        return bool(self.imagenet_alphas)

    def weights_file(self, alpha: float, image_size: int) -> str:
        """The file name keras.applications caches ImageNet weights under (no top)."""
        rows = image_size if image_size in self.imagenet_sizes else 224
        return self.weights_name.format(alpha=alpha, rows=rows,
                                        mobilenet_alpha={1.0: "1_0", 0.75: "7_5", 0.5: "5_0",
                                                         0.25: "2_5"}.get(alpha, alpha))

    def build(self, input_tensor, weights, alpha) -> keras.Model:
        """The application on `input_tensor` (its layers join the caller's graph)."""
        kwargs = dict(include_top=False, input_tensor=input_tensor,
                      input_shape=tuple(input_tensor.shape[1:]))
        if self.has_alpha:
            kwargs["alpha"] = alpha
        if self.name.startswith("efficientnet_"):
            return _efficientnet_v1(self, kwargs, weights)
        return self.application(weights=weights, **kwargs)


def _efficientnet_v1(backbone, kwargs, weights):
    """EfficientNet (V1) normalizes inside the model with a Normalization layer whose
    statistics come from the weights file, plus an extra Rescaling only when built with
    weights="imagenet" (Keras' fix for tensorflow#49930). We always build without that
    layer (one architecture, whatever the weights source: checkpoints fit each other)
    and set the statistics so that the stem computes exactly the "torch" preprocessing
    the ImageNet weights expect: (x / 255 - mean) / std."""
    app = backbone.application(weights=None, **kwargs)
    if weights == "imagenet":
        from keras.src.applications import efficientnet as keras_efficientnet
        from keras.src.utils import file_utils  # What the applications call.
        file_name = backbone.weights_file(1.0, 224)
        weights = file_utils.get_file(
            file_name, keras_efficientnet.BASE_WEIGHTS_PATH + file_name, cache_subdir="models",
            file_hash=keras_efficientnet.WEIGHTS_HASHES[backbone.name[-2:]][1])
    if weights is not None:
        app.load_weights(weights)
    normalization = next(layer for layer in app.layers
                         if isinstance(layer, keras.layers.Normalization))
    normalization.adapt_mean.assign(IMAGENET_MEAN)
    normalization.adapt_variance.assign([s * s for s in IMAGENET_STDDEV])
    normalization.finalize_state()
    return app


def _backbones(*items: Backbone) -> dict[str, Backbone]:
    return {b.name: b for b in items}


A = keras.applications
MOBILENET_V3_BLOCKS = Blocks(r"^(?P<block>expanded_conv(?:_\d+)?)_", block="{block}")
BACKBONES = _backbones(
    Backbone("vgg16", A.VGG16, "caffe", "caffe", 32, VGG_BLOCKS,
             "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("vgg19", A.VGG19, "caffe", "caffe", 32, VGG_BLOCKS,
             "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("resnet50", A.ResNet50, "caffe", "caffe", 32, RESNET_BLOCKS,
             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("resnet50v2", A.ResNet50V2, "tf", "tf", 32, RESNET_BLOCKS,
             "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("mobilenet", A.MobileNet, "tf", "tf", 32,
             Blocks(r"^conv_(?:dw|pw|pad)_(?P<block>\d+)", block="block_{block}"),
             "mobilenet_{mobilenet_alpha}_{rows}_tf_no_top.h5",
             imagenet_alphas=(0.25, 0.5, 0.75, 1.0), imagenet_sizes=(128, 160, 192, 224)),
    Backbone("mobilenet_v2", A.MobileNetV2, "tf", "tf", 32,
             Blocks(r"^(?P<block>block_\d+|expanded_conv)_", block="{block}"),
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5",
             imagenet_alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
             imagenet_sizes=(96, 128, 160, 192, 224)),
    Backbone("mobilenet_v3_small", A.MobileNetV3Small, None, "tf", 32, MOBILENET_V3_BLOCKS,
             "weights_mobilenet_v3_small_224_{alpha}_float_no_top_v2.h5",
             imagenet_alphas=(0.75, 1.0)),
    Backbone("mobilenet_v3_large", A.MobileNetV3Large, None, "tf", 32, MOBILENET_V3_BLOCKS,
             "weights_mobilenet_v3_large_224_{alpha}_float_no_top_v2.h5",
             imagenet_alphas=(0.75, 1.0)),
    *(Backbone(f"efficientnet_b{i}", getattr(A, f"EfficientNetB{i}"), None, "torch", 32,
               EFFICIENTNET_BLOCKS, f"efficientnetb{i}_notop.h5")
      for i in range(4)),
    Backbone("efficientnetv2_b0", A.EfficientNetV2B0, None, "torch", 32, EFFICIENTNET_BLOCKS,
             "efficientnetv2-b0_notop.h5"),
    Backbone("convnext_tiny", A.ConvNeXtTiny, None, "torch", 32,
             Blocks(r"^convnext_[a-z]+_(?P<stage>stage_\d+)_(?P<block>block_\d+)_",
                    stage="{stage}", block="{stage}_{block}"),
             "convnext_tiny_notop.h5"),
    Backbone("densenet121", A.DenseNet121, "torch", "torch", 32, RESNET_BLOCKS,
             "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # Inception blocks are named by the concatenation that ends them (mixed0 ... mixed10).
    Backbone("inception_v3", A.InceptionV3, "tf", "tf", 75,
             Blocks(r"^(?P<block>mixed\d+)$", block="{block}"),
             "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("xception", A.Xception, "tf", "tf", 71, VGG_BLOCKS,
             "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
)


def keras_weights_cache(file_name: str) -> str:
    """Path where keras.utils.get_file caches an application weights file."""
    from keras.src.backend import (
        config as keras_config,  # Keras' own resolution of KERAS_HOME.
    )

    home = os.path.expanduser(keras_config.keras_home())
    if not os.access(home, os.W_OK):  # keras.utils.get_file falls back the same way.
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "models", file_name)


def network_reachable(host=WEIGHTS_HOST, timeout=NETWORK_PROBE_TIMEOUT_S) -> bool:
    """Whether Keras' weights host answers (input_pipeline.network, the one probe)."""
    from tapefit.input_pipeline.network import network_available
    return network_available([host[0]], timeout=timeout)


def check_alpha(cfg) -> None:
    backbone = BACKBONES[cfg.backbone]
    if not backbone.has_alpha and cfg.alpha != 1.0:
        users = ", ".join(b.name for b in BACKBONES.values() if b.has_alpha)
        # Not an error: a study may sweep backbones with one --alpha for the MobileNets.
        logging.warning("--alpha=%s has no effect on %s (only on %s)", cfg.alpha,
                        cfg.backbone, users)


def resolve_weights(cfg) -> str | None:
    """Turns --weights into what keras.applications accepts, or a one-line error.

    `imagenet` is kept only when the weights are cached or downloadable; the
    check answers in seconds instead of waiting on download retries.
    """
    backbone = BACKBONES[cfg.backbone]
    if cfg.weights == "none":
        return None
    if cfg.weights == "imagenet":
        if backbone.has_alpha and cfg.alpha not in backbone.imagenet_alphas:
            raise ConfigError(
                f"no ImageNet weights for {cfg.backbone} with --alpha={cfg.alpha}; use "
                + ", ".join(str(a) for a in backbone.imagenet_alphas) + ", or --weights=none")
        file_name = backbone.weights_file(cfg.alpha, cfg.image_size)
        cached = keras_weights_cache(file_name)
        if os.path.exists(cached) or network_reachable():
            return "imagenet"
        raise ConfigError(
            f"cannot download ImageNet weights for {cfg.backbone} (no network, not in "
            f"{os.path.dirname(cached)}): pass --weights=PATH to a local {file_name} "
            "or --weights=none")
    if not os.path.isfile(cfg.weights):
        raise ConfigError(
            f"--weights={cfg.weights!r} is not a file; pass --weights=imagenet, "
            "--weights=none or the path of a Keras weights file for the backbone without top")
    return cfg.weights
