import os

import keras
import numpy as np
import pytest

from tapefit.flags.config import Config, ConfigError
from tapefit.model import backbone_layer_names, backbones, build_model, set_trainable

VGG_BLOCK5 = ["block5_conv1/kernel", "block5_conv1/bias", "block5_conv2/kernel",
              "block5_conv2/bias", "block5_conv3/kernel", "block5_conv3/bias"]


def trainable_paths(model):
    return [v.path for v in model.trainable_variables]


@pytest.fixture(scope="module")
def vgg():
    return build_model(Config(weights="none", image_size=32), num_classes=2)


def test_head_phase_trains_only_the_head(vgg):
    set_trainable(vgg, "head")
    assert trainable_paths(vgg) == ["logits/kernel", "logits/bias"]


def test_unfreeze_from_block5_conv1_trains_exactly_block5_and_head(vgg):
    set_trainable(vgg, "finetune", "block5_conv1")
    assert trainable_paths(vgg) == VGG_BLOCK5 + ["logits/kernel", "logits/bias"]
    frozen = {v.path for v in vgg.non_trainable_variables}
    assert "block4_conv3/kernel" in frozen and "block1_conv1/kernel" in frozen


def test_unknown_layer_names_it_and_lists_the_blocks(vgg):
    with pytest.raises(ConfigError) as e:
        set_trainable(vgg, "finetune", "blok5_conv1")
    message = str(e.value)
    assert "'blok5_conv1'" in message and "\n" not in message
    assert "block1, block2, block3, block4, block5" in message


def test_block_name_unfreezes_the_whole_block(vgg):
    set_trainable(vgg, "finetune", "block5")
    assert trainable_paths(vgg) == VGG_BLOCK5 + ["logits/kernel", "logits/bias"]


def test_mobilenet_default_block_trains_what_conv_dw_12_trained():
    """The default moved from the layer conv_dw_12 to its block: the same variables train."""
    cfg = Config(backbone="mobilenet", alpha=0.25, weights="none", image_size=32)
    model = build_model(cfg, 2)
    set_trainable(model, "finetune", "conv_dw_12")
    by_layer = trainable_paths(model)
    set_trainable(model, "finetune", cfg.resolved_unfreeze_from)
    assert cfg.resolved_unfreeze_from == "block_12" and trainable_paths(model) == by_layer


def test_mobilenet_finetune_keeps_batchnorm_frozen():
    model = build_model(Config(backbone="mobilenet", alpha=0.25, weights="none", image_size=32), 3)
    set_trainable(model, "finetune", "conv_dw_12")
    assert trainable_paths(model) == [
        "conv_dw_12/kernel", "conv_pw_12/kernel", "conv_dw_13/kernel", "conv_pw_13/kernel",
        "logits/kernel", "logits/bias"]
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize("backbone,module", [
    ("vgg16", keras.applications.vgg16), ("mobilenet", keras.applications.mobilenet)])
def test_model_takes_raw_pixels_and_preprocesses_inside(backbone, module):
    cfg = Config(backbone=backbone, alpha=0.25, weights="none", image_size=32, dropout=0.0)
    model = build_model(cfg, 2)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    inside = model.get_layer("preprocess")(images)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inside),
                               module.preprocess_input(images.copy()), rtol=1e-6)


def test_image_size_below_backbone_minimum_is_an_error():
    with pytest.raises(ConfigError, match="--image_size=16 is too small"):
        build_model(Config(weights="none", image_size=16), 2)


def test_weights_file_is_loaded_into_the_backbone(tmp_path):
    source = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None,
                                          input_shape=(32, 32, 3))
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    cfg = Config(backbone="mobilenet", alpha=0.25, weights=path, image_size=32)
    model = build_model(cfg, 2)
    np.testing.assert_array_equal(model.get_layer("conv_pw_13").kernel.numpy(),
                                  source.get_layer("conv_pw_13").kernel.numpy())


def test_weights_file_of_another_backbone_is_a_one_line_error(tmp_path):
    source = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None,
                                          input_shape=(32, 32, 3))
    path = str(tmp_path / "mobilenet.weights.h5")
    source.save_weights(path)
    with pytest.raises(ConfigError) as e:
        build_model(Config(backbone="vgg16", weights=path, image_size=32), 2)
    assert "does not fit vgg16" in str(e.value) and "\n" not in str(e.value)


def test_missing_weights_file_is_an_error():
    with pytest.raises(ConfigError, match="is not a file"):
        build_model(Config(weights="/nonexistent.h5", image_size=32), 2)


def test_imagenet_without_network_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setattr(backbones, "network_reachable", lambda *a, **k: False)
    with pytest.raises(ConfigError) as e:
        build_model(Config(weights="imagenet", image_size=32), 2)
    assert "--weights=PATH" in str(e.value) and "--weights=none" in str(e.value)


def test_imagenet_uses_the_keras_cache_without_network(monkeypatch, tmp_path):
    """A weights file already in KERAS_HOME/models is used, no download attempted."""
    monkeypatch.setattr(backbones, "network_reachable", lambda *a, **k: False)
    source = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None,
                                          input_shape=(128, 128, 3))
    cached = backbones.keras_weights_cache("mobilenet_2_5_128_tf_no_top.h5")
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    save_legacy_h5(source, cached)  # The layout of Keras' released weight files.
    try:
        model = build_model(Config(backbone="mobilenet", alpha=0.25, image_size=128), 2)
    finally:
        os.remove(cached)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(),
                                  source.get_layer("conv1").kernel.numpy())


def save_legacy_h5(model, path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def test_backbone_layer_names_exclude_input_preprocess_and_head(vgg):
    names = backbone_layer_names(vgg)
    assert names[0] == "block1_conv1" and names[-1] == "block5_pool"
