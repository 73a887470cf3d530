"""The frozen-prefix feature cache is exact, keyed by everything that determines
the features, and off when the prefix is random."""
import logging
import os

import keras
import numpy as np
import pytest
from keras import layers

from tapefit.layout import temporaries
from tapefit.loops import phases
from tapefit.loops.caches import feature_cache
from tapefit.model import build_model, set_trainable

# Cached features come from batches of another size than the training step's,
# so they agree up to float rounding of the prefix forward.
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture
def cache_config(tiny_config):
    return tiny_config.replace(backbone="vgg16", alpha=1.0, unfreeze_from="block5_conv1",
                               synthetic_examples=36, batch_size=8, epochs=2, dropout=0.3,
                               learning_rate=3e-3)


def model_for(cfg, phase="head"):
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, 2, weights=None)
    set_trainable(model, phase, cfg.resolved_unfreeze_from)
    return model


def test_head_cut_keeps_dropout_in_the_suffix(cache_config):
    cut, reason = feature_cache.find_cut(model_for(cache_config))
    assert reason == "" and cut.layer == "head_dropout" and cut.after == "avg_pool"
    assert cut.prefix.output_shape == (None, 512)


def test_finetune_cut_is_the_first_trainable_layer(cache_config):
    cut, _ = feature_cache.find_cut(model_for(cache_config, "finetune"))
    assert cut.layer == "block5_conv1"
    assert [layer.name for layer in cut.suffix.layers][1] == "block5_conv1"


def test_suffix_of_prefix_is_the_model(cache_config):
    model = model_for(cache_config, "finetune")
    cut, _ = feature_cache.find_cut(model)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(cut.suffix(cut.prefix(x)), model(x), rtol=1e-6)


def test_cache_is_off_with_augmentation(cache_config):
    cut, reason = feature_cache.find_cut(model_for(cache_config.replace(augment=True)))
    assert cut is None and "augmentation" in reason
    assert feature_cache.resolve("auto", cut, reason, 10) == "off"


# VGG16 is a chain; MobileNetV2 has residual connections (the cut is a dominator).
RESIDUAL = dict(backbone="mobilenet_v2", unfreeze_from=None)


@pytest.mark.parametrize("phase", ["head", "finetune"])
@pytest.mark.parametrize("changes", [{}, RESIDUAL], ids=["vgg16", "mobilenet_v2"])
def test_training_on_cached_features_equals_training_on_images(cache_config, phase, changes,
                                                               tmp_path, caplog):
    cache_config = cache_config.replace(**changes)
    if phase == "finetune":
        phases.train(cache_config.replace(feature_cache="off"))
    results = {}
    for mode in ("off", "memory"):
        cfg = cache_config.replace(phase=phase, feature_cache=mode)
        with caplog.at_level(logging.INFO):
            trained = phases.train(cfg, run_dir=str(tmp_path / f"{phase}-{mode}"))
            model, logs = trained.model, trained.logs
        results[mode] = (model.get_weights(), logs)
    expected_cut = {("head", "vgg16"): "avg_pool", ("finetune", "vgg16"): "block4_pool",
                    ("head", "mobilenet_v2"): "avg_pool",
                    ("finetune", "mobilenet_v2"): "block_15_add"}[phase, cache_config.backbone]
    assert f"cut after {expected_cut} " in caplog.text  # The cache engaged, cut logged.
    (plain, plain_logs), (cached, cached_logs) = results["off"], results["memory"]
    # Relative difference of all weights together (a wrong cut differs by O(1)).
    difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(plain, cached, strict=True)))
    assert difference <= RELATIVE_TOLERANCE * np.sqrt(sum(np.sum(w ** 2) for w in plain))
    assert any(not np.array_equal(a, b) for a, b in zip(
        plain, model_for(cache_config, phase).get_weights(), strict=True))  # It trained.
    for key in plain_logs:
        assert cached_logs[key] == pytest.approx(plain_logs[key], rel=1e-5), key


def frozen(layer):
    layer.trainable = False
    return layer


def test_cut_is_the_last_dominator_before_the_first_trainable_layer():
    """A skip connection around a frozen layer moves the cut to where the paths join;
    a trainable layer on a branch moves it back to where the paths split."""
    inputs = keras.Input((4,), name="x")
    a = frozen(layers.Dense(4, name="a"))(inputs)
    b = frozen(layers.Dense(4, name="b"))(a)
    joined = layers.Add(name="join")([a, b])  # a is not a dominator: a -> join skips b.
    c = frozen(layers.Dense(4, name="c"))(joined)
    branch = layers.Dense(4, name="branch")(c)  # The first trainable layer, on a branch.
    out = layers.Dense(2, name="out")(layers.Add(name="join2")([c, branch]))
    model = keras.Model(inputs, out)
    cut, reason = feature_cache.find_cut(model)
    assert reason == "" and cut.after == "c"
    assert [layer.name for layer in cut.prefix.layers] == ["x", "a", "b", "join", "c"]
    assert {layer.name for layer in cut.suffix.layers} == {"features", "branch", "join2", "out"}
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(cut.suffix(cut.prefix(x)), model(x), rtol=1e-6)
    model.get_layer("c").trainable = True
    cut, _ = feature_cache.find_cut(model)
    assert cut.after == "join"  # Not b: the skip from a jumps over it.
    model.get_layer("a").trainable = True
    cut, reason = feature_cache.find_cut(model)
    assert cut is None and "a is trainable" in reason


def test_suffix_shares_the_models_layers_and_variables(cache_config):
    model = model_for(cache_config.replace(backbone="resnet50", unfreeze_from="conv5"),
                      "finetune")
    cut, _ = feature_cache.find_cut(model)
    assert cut.after == "conv4_block6_out"
    assert {id(v) for v in cut.suffix.trainable_variables} == {
        id(v) for v in model.trainable_variables}
    assert cut.suffix.get_layer("conv5_block1_0_conv") is model.get_layer("conv5_block1_0_conv")
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(cut.suffix(cut.prefix(x)), model(x), rtol=1e-5)


def test_frozen_backbone_dropout_is_off_and_cached(cache_config):
    """EfficientNet's stochastic depth sits in the backbone: off while frozen (inference
    mode, like batch-norm), so the head phase caches up to the pooled features."""
    model = model_for(cache_config.replace(backbone="efficientnet_b0", unfreeze_from=None))
    cut, _ = feature_cache.find_cut(model)
    assert cut.after == "avg_pool"
    assert model.get_layer("block6d_drop").rate == 0
    set_trainable(model, "finetune", "block6")
    assert model.get_layer("block6d_drop").rate > 0
    cut, _ = feature_cache.find_cut(model)
    assert cut.after == "block5c_add"


def key_of(cfg, phase="head", weights=None):
    model = model_for(cfg, phase)
    if weights is not None:
        model.set_weights(weights)
    cut, _ = feature_cache.find_cut(model)
    return feature_cache.fingerprint(cut, feature_cache.data_key(cfg))


def test_fingerprint_changes_with_every_input_of_the_features(cache_config):
    base = key_of(cache_config)
    assert key_of(cache_config) == base  # Same inputs, same key.
    other_weights = [w + 1.0 for w in model_for(cache_config).get_weights()]
    assert key_of(cache_config, weights=other_weights) != base  # Another weights file.
    assert key_of(cache_config, phase="finetune") != base  # Another cut.
    assert key_of(cache_config.replace(image_size=64)) != base  # Another image size.
    assert key_of(cache_config.replace(synthetic_examples=40)) != base  # Other data.
    assert key_of(cache_config.replace(seed=7)) != base


def test_disk_cache_is_reused_for_the_same_key_and_rebuilt_for_another(cache_config):
    cfg = cache_config.replace(feature_cache="disk", epochs=1)
    phases.train(cfg)
    cache_root = os.path.join(cfg.workdir, feature_cache.CACHE_DIR)
    first = sorted(os.listdir(cache_root))
    assert len(first) == 1
    stamp = {n: os.path.getmtime(os.path.join(cache_root, first[0], n))
             for n in os.listdir(os.path.join(cache_root, first[0]))}
    phases.train(cfg.replace(overwrite=True))
    assert sorted(os.listdir(cache_root)) == first  # Same key: reused, not rewritten.
    assert {n: os.path.getmtime(os.path.join(cache_root, first[0], n)) for n in stamp} == stamp
    phases.train(cfg.replace(overwrite=True, image_size=48))
    assert len(os.listdir(cache_root)) == 2  # Another image size: another cache.


def test_fingerprint_does_not_depend_on_generated_layer_names(cache_config):
    """Keras numbers unnamed layers per process; the same prefix keeps its cache."""
    cfg = cache_config.replace(backbone="mobilenet_v3_small", unfreeze_from=None)
    first, second = model_for(cfg), model_for(cfg)
    assert [layer.name for layer in first.layers] != [layer.name for layer in second.layers]
    keys = [feature_cache.fingerprint(feature_cache.find_cut(m)[0], feature_cache.data_key(cfg))
            for m in (first, second)]
    assert keys[0] == keys[1]


def test_a_partial_last_batch_is_padded_only_when_that_is_cheaper():
    # No full batch timed yet (a split of one batch): pad.
    assert feature_cache._pad_is_cheaper(3, 4, [], layers=20)
    # EfficientNet-like: 238 layers, 0.3 s per batch of 32 (the first traced: 2 s).
    assert feature_cache._pad_is_cheaper(12, 32, [2.0, 0.3, 0.3, 0.31], layers=238)
    # VGG16 at 224²: 21 layers, 10 s per batch of 32: 28 padded images cost 8.75 s.
    assert not feature_cache._pad_is_cheaper(28, 32, [12.0, 10.0, 10.2], layers=21)


@pytest.mark.parametrize("pad", [True, False])
def test_features_of_a_partial_last_batch_are_exact_padded_or_not(cache_config, pad,
                                                                  monkeypatch):
    import tensorflow as tf
    monkeypatch.setattr(feature_cache, "_pad_is_cheaper", lambda *args: pad)
    model = model_for(cache_config)
    cut, _ = feature_cache.find_cut(model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(10, dtype=np.int32) % 2
    split = tf.data.Dataset.from_tensor_slices((images, labels))
    features, got_labels = feature_cache._compute(cut, split, 10, 4, False, None)
    want = cut.prefix(images.astype(np.float32), training=False)
    np.testing.assert_allclose(features, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)


def test_half_written_features_of_a_dead_run_are_removed(tmp_path):
    import subprocess
    finished = subprocess.Popen(["true"])
    finished.wait()
    path = str(tmp_path / "train")
    host = temporaries.host_tag()
    dead = f"{path}.{host}-{finished.pid}.tmp{feature_cache.FEATURES}"
    live = f"{path}.{host}-{os.getpid()}.tmp{feature_cache.FEATURES}"
    for name in (dead, live):
        open(name, "wb").close()
    feature_cache._remove_dead_temporaries(path)
    assert not os.path.exists(dead) and os.path.exists(live)
    assert feature_cache._load(path, 1) is None  # No complete cache there.


@pytest.mark.parametrize("mode,said", [("memory", True), ("auto", False)])
def test_fit_loop_says_an_asked_for_cache_is_off(tiny_config, caplog, mode, said):
    with caplog.at_level(logging.INFO):
        phases.run(tiny_config.replace(loop="fit", feature_cache=mode, epochs=1))
    assert ("feature cache off: --loop=fit" in caplog.text) == said
    assert "feature cache (" not in caplog.text  # fit() never engages it.
