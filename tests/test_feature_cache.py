"""The frozen-prefix feature cache is exact, keyed by everything that determines
the features, and off when the prefix is random."""
import os

import keras
import numpy as np
import pytest

from loops import feature_cache, train_lib
from model import build_model, set_trainable

# Cached features come from batches of another size than the training step's,
# so they agree up to float rounding of the prefix forward.
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture
def cache_config(tiny_config):
    return tiny_config.replace(backbone="vgg16", unfreeze_from="block5_conv1",
                               synthetic_examples=36, batch_size=8, epochs=2, dropout=0.3,
                               learning_rate=3e-3)


def model_for(cfg, phase="head"):
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, 2, weights=None)
    set_trainable(model, phase, cfg.resolved_unfreeze_from)
    return model


def test_head_cut_keeps_dropout_in_the_suffix(cache_config):
    cut, reason = feature_cache.find_cut(model_for(cache_config))
    assert reason == "" and cut.layer == "head_dropout"
    assert cut.prefix.output_shape == (None, 512)


def test_finetune_cut_is_the_first_trainable_layer(cache_config):
    cut, _ = feature_cache.find_cut(model_for(cache_config, "finetune"))
    assert cut.layer == "block5_conv1"
    assert [l.name for l in cut.suffix.layers][1] == "block5_conv1"


def test_suffix_of_prefix_is_the_model(cache_config):
    model = model_for(cache_config, "finetune")
    cut, _ = feature_cache.find_cut(model)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(cut.suffix(cut.prefix(x)), model(x), rtol=1e-6)


def test_cache_is_off_with_augmentation(cache_config):
    cut, reason = feature_cache.find_cut(model_for(cache_config.replace(augment=True)))
    assert cut is None and "augmentation" in reason
    assert feature_cache.resolve("auto", cut, reason, 10) == "off"


@pytest.mark.parametrize("phase", ["head", "finetune"])
def test_training_on_cached_features_equals_training_on_images(cache_config, phase, tmp_path):
    if phase == "finetune":
        train_lib.train_phase(cache_config.replace(feature_cache="off"))
    results = {}
    for mode in ("off", "memory"):
        cfg = cache_config.replace(phase=phase, feature_cache=mode)
        model, logs = train_lib.train_phase(cfg, run_dir=str(tmp_path / f"{phase}-{mode}"))
        results[mode] = (model.get_weights(), logs)
    (plain, plain_logs), (cached, cached_logs) = results["off"], results["memory"]
    scale = max(float(np.max(np.abs(w))) for w in plain)
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(plain, cached))
    assert worst <= RELATIVE_TOLERANCE * scale
    assert any(not np.array_equal(a, b) for a, b in zip(
        plain, model_for(cache_config, phase).get_weights()))  # It trained.
    for key in plain_logs:
        assert cached_logs[key] == pytest.approx(plain_logs[key], rel=1e-5), key


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
    train_lib.train_phase(cfg)
    cache_root = os.path.join(cfg.workdir, feature_cache.CACHE_DIR)
    first = sorted(os.listdir(cache_root))
    assert len(first) == 1
    stamp = {n: os.path.getmtime(os.path.join(cache_root, first[0], n))
             for n in os.listdir(os.path.join(cache_root, first[0]))}
    train_lib.train_phase(cfg.replace(overwrite=True))
    assert sorted(os.listdir(cache_root)) == first  # Same key: reused, not rewritten.
    assert {n: os.path.getmtime(os.path.join(cache_root, first[0], n)) for n in stamp} == stamp
    train_lib.train_phase(cfg.replace(overwrite=True, image_size=48))
    assert len(os.listdir(cache_root)) == 2  # Another image size: another cache.
