"""Every keras.applications backbone: builds at its minimum size, preprocesses raw
0–255 RGB exactly as its Keras family expects, names its blocks for --unfreeze_from,
trains one head and one finetune step in both loops with frozen batch-norm
statistics that do not move, and names the ImageNet file Keras would download."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tapefit.flags import config as config_lib
from tapefit.flags.config import Config, ConfigError
from tapefit.loops.training.custom import CustomLoop
from tapefit.model import (
    backbone_layer_names,
    backbones,
    build_model,
    check_unfreeze_from,
    describe_blocks,
    first_trainable_position,
    preprocessing_output,
    set_trainable,
    unfreeze_blocks,
)
from tapefit.model.graph import ordered_layers

ALL = list(backbones.BACKBONES)
A = keras.applications
FAMILY = {"vgg16": A.vgg16, "vgg19": A.vgg19, "resnet50": A.resnet50,
          "resnet50v2": A.resnet_v2, "mobilenet": A.mobilenet, "mobilenet_v2": A.mobilenet_v2,
          "mobilenet_v3_small": A.mobilenet_v3, "mobilenet_v3_large": A.mobilenet_v3,
          "efficientnet_b0": A.efficientnet, "efficientnet_b1": A.efficientnet,
          "efficientnet_b2": A.efficientnet, "efficientnet_b3": A.efficientnet,
          "efficientnetv2_b0": A.efficientnet_v2, "convnext_tiny": A.convnext,
          "densenet121": A.densenet, "inception_v3": A.inception_v3, "xception": A.xception}
# Families whose application preprocesses raw pixels itself (include_preprocessing), with
# the Keras constructor building that preprocessing (EfficientNet V1 is checked against
# the formula: its statistics come from the ImageNet file in Keras).
OWN_PREPROCESSING = {"mobilenet_v3_small": A.MobileNetV3Small,
                     "mobilenet_v3_large": A.MobileNetV3Large,
                     "efficientnetv2_b0": A.EfficientNetV2B0, "convnext_tiny": A.ConvNeXtTiny}


def config(name, **changes):
    values = dict(backbone=name, weights="none", image_size=backbones.BACKBONES[name].min_size,
                  dropout=0.2)
    return Config(**{**values, **changes})


def raw_images(size, n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def numpy(x):
    return keras.ops.convert_to_numpy(x)


def test_flags_constants_match_the_registry():
    """flags/ must not import model/: its copies of the names and defaults agree."""
    assert config_lib.BACKBONES == tuple(backbones.BACKBONES)
    assert config_lib.DEFAULT_UNFREEZE_FROM == {
        name: b.default_unfreeze for name, b in backbones.BACKBONES.items()}


@pytest.fixture(scope="module", params=ALL)
def built(request):
    """One model per backbone for the tests of this module (built once)."""
    keras.utils.set_random_seed(0)
    cfg = config(request.param)
    yield cfg, build_model(cfg, 2)
    keras.backend.clear_session()


def test_preprocessing_is_the_familys_applied_once(built):
    cfg, model = built
    backbone = backbones.BACKBONES[cfg.backbone]
    images = raw_images(cfg.image_size)
    inside = numpy(keras.Model(model.inputs[0], preprocessing_output(model))(images))
    # The values the family's ImageNet weights expect, from Keras' own functions.
    expected = keras.applications.imagenet_utils.preprocess_input(
        images.copy(), mode=backbone.preprocess_as)
    np.testing.assert_allclose(inside, expected, rtol=1e-5, atol=1e-5)
    if backbone.preprocess_mode:
        np.testing.assert_allclose(
            inside, FAMILY[cfg.backbone].preprocess_input(images.copy()), rtol=1e-6, atol=1e-6)
    else:  # The family's preprocess_input is a pass-through; the application's layers do it.
        np.testing.assert_array_equal(FAMILY[cfg.backbone].preprocess_input(images.copy()),
                                      images)
        assert "preprocess" not in [layer.name for layer in model.layers]
        if cfg.backbone in OWN_PREPROCESSING:
            keras_app = OWN_PREPROCESSING[cfg.backbone](
                include_top=False, weights=None, input_shape=images.shape[1:])
            keras_inside = numpy(keras.Model(keras_app.inputs[0],
                                             preprocessing_output(keras_app))(images))
            np.testing.assert_allclose(inside, keras_inside, rtol=1e-6, atol=1e-6)


def test_default_and_every_block_resolve(built):
    cfg, model = built
    blocks = unfreeze_blocks(model)
    default = config_lib.DEFAULT_UNFREEZE_FROM[cfg.backbone]
    layers = ordered_layers(model)
    assert default in blocks
    assert first_trainable_position(model, default) > len(layers) // 2  # Near the top.
    positions = [first_trainable_position(model, name) for name in blocks]
    names = backbone_layer_names(model)
    assert all(layers[p].name in names for p in positions)
    listing = describe_blocks(model)
    assert default in listing and len(listing) < 400


def variables_by_path(model):
    return {v.path: numpy(v).copy() for v in model.weights}


# TensorFlow has no eager CPU kernel for the input gradient of grouped convolutions
# (ConvNeXt's depthwise layers); compiled tf.functions, as both loops run, have one.
# ConvNeXt's steps are therefore traced, which takes long: its finetune step runs in
# the custom loop only.
GRAPH_ONLY = {"convnext_tiny"}


@pytest.fixture
def eager_functions(built):
    """Runs the loops' tf.functions eagerly: the same operations, without tracing the
    graphs of seventeen backbones (minutes on two CPU cores)."""
    tf.config.run_functions_eagerly(built[0].backbone not in GRAPH_ONLY)
    yield
    tf.config.run_functions_eagerly(False)


def one_step(model, loop, size):
    """One training step on three images, in the custom loop or through fit()."""
    # Unbalanced labels: the bias gradient is nonzero whether the random network's
    # logits vanish (p = 1/2) or saturate (p one-hot).
    x, y = raw_images(size, n=3, seed=1), np.array([0, 0, 1])
    optimizer = keras.optimizers.Adam(1e-2)
    if loop == "custom":
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        CustomLoop(model, optimizer).fit(data, epochs=1, steps_per_epoch=1)
    else:
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=3, epochs=1, verbose=0, shuffle=False)
    return optimizer


def got_gradient(optimizer, variable) -> bool:
    """Adam's first moment after one step is 0.1 × the gradient: nonzero iff the
    variable received a gradient. (Randomly initialised deep nets with frozen
    batch-norm can pass gradients too small to move a float32 weight visibly.)"""
    momentum = optimizer._momentums[optimizer._get_variable_index(variable)]
    return bool(np.any(numpy(momentum) != 0))


@pytest.mark.parametrize("loop", ["custom", "fit"])
def test_head_and_finetune_steps_move_only_what_is_unfrozen(built, loop, eager_functions):
    """Frozen variables — including every batch-norm's moving mean and variance —
    stay bit-identical through a training step; the unfrozen ones move."""
    cfg, model = built
    for phase in ("head", "finetune"):
        if phase == "finetune" and loop == "fit" and cfg.backbone in GRAPH_ONLY:
            continue
        set_trainable(model, phase, cfg.resolved_unfreeze_from)
        trainable = {v.path for v in model.trainable_variables}
        batchnorm = [layer for layer in model.layers
                     if isinstance(layer, keras.layers.BatchNormalization)]
        assert all(not layer.trainable for layer in batchnorm)
        before = variables_by_path(model)
        optimizer = one_step(model, loop, cfg.image_size)
        after = variables_by_path(model)
        frozen = [p for p in before if p not in trainable]
        moved = [p for p in frozen if not np.array_equal(before[p], after[p])]
        assert moved == [], f"{phase}: frozen variables moved: {moved[:5]}"
        assert not np.array_equal(before["logits/bias"], after["logits/bias"])
        if phase == "finetune":
            backbone = [v for v in model.trainable_variables if not v.path.startswith("logits/")]
            assert backbone and all(got_gradient(optimizer, v) for v in backbone)
        if batchnorm:
            stats = [v.path for layer in batchnorm for v in layer.non_trainable_variables]
            assert stats and all(p in frozen for p in stats)


def test_unknown_block_lists_the_blocks_in_one_line():
    model = build_model(config("resnet50"), 2)
    with pytest.raises(ConfigError) as e:
        set_trainable(model, "finetune", "conv5_blok1")
    message = str(e.value)
    assert "'conv5_blok1'" in message and "\n" not in message
    assert "conv5 (conv5_block1…conv5_block3)" in message
    assert "conv5_block1_1_conv" not in message  # Blocks, not 175 layer names.


def test_block_trains_its_shortcut_branch_and_layer_name_starts_at_the_layer():
    model = build_model(config("resnet50"), 2)
    set_trainable(model, "finetune", "conv5")
    block = {v.path for v in model.trainable_variables}
    assert "conv5_block1_0_conv/kernel" in block and "conv5_block1_1_conv/kernel" in block
    assert not any(p.startswith("conv4_") for p in block)
    set_trainable(model, "finetune", "conv5_block3")
    assert {v.path for v in model.trainable_variables} == {
        p for p in block if not p.startswith(("conv5_block1", "conv5_block2"))}
    set_trainable(model, "finetune", "conv5_block3_2_conv")
    paths = {v.path for v in model.trainable_variables}
    assert "conv5_block3_2_conv/kernel" in paths and "conv5_block3_1_conv/kernel" not in paths


def test_image_size_below_the_familys_minimum_is_a_one_line_error():
    with pytest.raises(ConfigError) as e:
        build_model(Config(backbone="inception_v3", weights="none", image_size=74), 2)
    assert str(e.value) == ("--image_size=74 is too small for inception_v3; "
                            "pass --image_size=75 or more")
    with pytest.raises(ConfigError, match="pass --image_size=71 or more"):
        build_model(Config(backbone="xception", weights="none", image_size=64), 2)


def test_alpha_for_a_backbone_without_width_multiplier_is_ignored_with_a_warning(caplog):
    model = build_model(config("resnet50", alpha=0.5), 2)
    assert "--alpha=0.5 has no effect on resnet50" in caplog.text
    assert model.get_layer("conv1_conv").filters == 64


class Requested(Exception):
    pass


@pytest.mark.parametrize("name,alpha,size", [
    ("mobilenet_v2", 0.35, 96), ("mobilenet_v3_small", 0.75, 32), ("resnet50", 1.0, 32),
    ("efficientnet_b0", 1.0, 32), ("convnext_tiny", 1.0, 32), ("xception", 1.0, 71)])
def test_offline_error_names_the_file_keras_downloads(monkeypatch, name, alpha, size):
    """The file name in the error is the one Keras' own application asks get_file for."""
    from keras.src.utils import file_utils

    def get_file(fname, *args, **kwargs):
        raise Requested(fname)

    monkeypatch.setattr(file_utils, "get_file", get_file)
    backbone = backbones.BACKBONES[name]
    kwargs = {"alpha": alpha} if backbone.has_alpha else {}
    with pytest.raises(Requested) as requested:
        backbone.application(include_top=False, weights="imagenet", input_shape=(size, size, 3),
                             **kwargs)
    monkeypatch.setattr(backbones, "network_reachable", lambda *a, **k: False)
    with pytest.raises(ConfigError) as e:
        build_model(Config(backbone=name, alpha=alpha, image_size=size), 2)
    assert f"a local {requested.value.args[0]} or --weights=none" in str(e.value)


def test_efficientnet_weights_file_loads_and_keeps_imagenet_normalization(tmp_path):
    source = A.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    source.get_layer("top_conv").kernel.assign(
        np.full(source.get_layer("top_conv").kernel.shape, 0.01, "float32"))
    path = str(tmp_path / "b0.weights.h5")
    source.save_weights(path)
    model = build_model(config("efficientnet_b0", weights=path), 2)
    np.testing.assert_array_equal(numpy(model.get_layer("top_conv").kernel), np.float32(0.01))
    images = raw_images(32)
    inside = numpy(keras.Model(model.inputs[0], preprocessing_output(model))(images))
    np.testing.assert_allclose(
        inside, A.imagenet_utils.preprocess_input(images.copy(), mode="torch"), rtol=1e-5,
        atol=1e-5)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0"])
def test_incompatible_weights_file_is_a_one_line_error(tmp_path, name):
    other = A.MobileNet(alpha=0.25, include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "mobilenet.weights.h5")
    other.save_weights(path)
    junk = tmp_path / "junk.h5"
    junk.write_text("not a weights file")
    for weights in (path, str(junk)):
        with pytest.raises(ConfigError) as e:
            build_model(config(name, weights=weights), 2)
        assert f"does not fit {name}" in str(e.value) and "\n" not in str(e.value)


def test_check_unfreeze_from_accepts_blocks_and_layers_and_lists_blocks():
    check_unfreeze_from(config("vgg16", unfreeze_from="block4"))
    check_unfreeze_from(config("vgg16", unfreeze_from="block4_conv2"))
    with pytest.raises(ConfigError, match="its blocks are: block1, block2, block3, block4, block5"):
        check_unfreeze_from(config("vgg16", unfreeze_from="block6"))
