"""The feature cache under `--augment=flip` is exact: both outcomes' features are
cached and picked per example and step by the RandomFlip layer's own random draw."""
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from tapefit.loops import phases
from tapefit.loops.caches import feature_cache
from tapefit.loops.caches.flip_features import PickFlip, both_outcomes, flip_images
from tapefit.model import build_model, set_trainable

STEPS = 6


def flip_layer(seed=3):
    keras.utils.set_random_seed(0)
    return layers.RandomFlip("horizontal", seed=seed)


def test_pick_flip_flips_the_same_examples_at_the_same_steps_as_random_flip():
    """Per example and step: RandomFlip on images vs PickFlip on [x, flip(x)] with an
    identically seeded layer (the identity as the 'prefix', so the features are the
    images): the same output, hence the same decisions."""
    images = np.random.default_rng(0).uniform(0, 255, (STEPS, 8, 5, 7, 3)).astype("float32")
    on_images, on_features = flip_layer(), flip_layer()
    pick = PickFlip(on_features)
    run_images = tf.function(lambda x: on_images(x, training=True))
    run_pick = tf.function(lambda x: pick(both_outcomes(tf.identity, x), training=True))
    decisions = []
    for step in range(STEPS):
        expected = run_images(images[step]).numpy()
        np.testing.assert_array_equal(run_pick(images[step]).numpy(), expected)
        flipped = [np.array_equal(e, flip_images(images[step][i:i + 1])[0])
                   for i, e in enumerate(expected)]
        decisions.append(flipped)
    decisions = np.array(decisions)
    assert 0 < decisions.mean() < 1  # Both outcomes occur...
    assert len({tuple(d) for d in decisions}) > 1  # ...and change from step to step.
    # The layers' generators advanced alike: the next draws agree too.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(on_images.generator.state),
                                  keras.ops.convert_to_numpy(on_features.generator.state))


def test_pick_flip_in_inference_returns_the_images_features():
    x = np.random.default_rng(1).uniform(0, 255, (4, 5, 6, 3)).astype("float32")
    pick = PickFlip(flip_layer())
    np.testing.assert_array_equal(pick(both_outcomes(tf.identity, x), training=False), x)


# ---- the cache in training --------------------------------------------------------------

# Relative difference of the trained (trainable) weights: cached features come from
# other batches than the training step's (and the mirror images' from all-mirrored
# batches), so they agree up to float rounding of the prefix forward, which training
# amplifies. Measured here: head 3.2e-7, finetune 2.7e-5 (block5 trains on the
# cached block4 features); a wrong flip decision (no flips at all) gives 5.6e-2.
RELATIVE_TOLERANCE = 1e-4


@pytest.fixture
def flip_config(tiny_config):
    return tiny_config.replace(backbone="vgg16", alpha=1.0, unfreeze_from="block5_conv1",
                               synthetic_examples=36, batch_size=8, epochs=2, dropout=0.3,
                               learning_rate=3e-3, augment="flip")


def model_for(cfg, phase="head"):
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, 2, weights=None)
    set_trainable(model, phase, cfg.resolved_unfreeze_from)
    return model


@pytest.mark.parametrize("phase", ["head", "finetune"])
def test_flip_cut_caches_both_outcomes(flip_config, phase):
    model = model_for(flip_config, phase)
    cut, reason = feature_cache.find_cut(model)
    assert reason == "" and isinstance(cut.flip, layers.RandomFlip)
    assert cut.after == {"head": "avg_pool", "finetune": "block4_pool"}[phase]
    assert cut.suffix.input_shape[1] == 2  # [features, mirror image's features]
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    both = both_outcomes(lambda images: cut.prefix(images, training=False), x)
    expected = model(x, training=False)  # (RandomFlip flips unless told otherwise.)
    np.testing.assert_allclose(cut.suffix(both, training=False), expected, rtol=1e-5)


def test_flip_with_rotation_keeps_the_cache_off(flip_config):
    cut, reason = feature_cache.find_cut(model_for(flip_config.replace(augment="flip,rotate")))
    assert cut is None and "augment_rotate" in reason


def weights_distance(a, b):
    """Relative difference of lists of weights, all together."""
    difference = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(a, b, strict=True)))
    return difference / np.sqrt(sum(np.sum(x ** 2) for x in a))


@pytest.mark.parametrize("phase", ["head", "finetune"])
def test_training_on_cached_flips_equals_flipping_the_images(flip_config, phase, tmp_path,
                                                             caplog):
    """Cached custom vs uncached custom vs fit(), with the flip drawn per step: the
    same weights up to float rounding; and the flips matter (no augmentation gives
    other weights)."""
    if phase == "finetune":
        phases.train(flip_config.replace(feature_cache="off"))
    weights, logs = {}, {}
    variants = {"cached": dict(feature_cache="memory"), "uncached": dict(feature_cache="off"),
                "fit": dict(loop="fit"), "no_flip": dict(feature_cache="off", augment="")}
    for name, changes in variants.items():
        cfg = flip_config.replace(phase=phase, **changes)
        if name == "no_flip" and phase == "finetune":
            continue
        with caplog.at_level(logging.INFO):
            trained = phases.train(cfg, run_dir=str(tmp_path / name))
            model, logs[name] = trained.model, trained.logs
        weights[name] = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
        if name == "cached":
            assert "two outcomes cached" in caplog.text  # The flip cache engaged.
    for other in ("uncached", "fit"):
        assert weights_distance(weights[other], weights["cached"]) <= RELATIVE_TOLERANCE
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert logs["cached"][key] == pytest.approx(logs[other][key], rel=1e-5), key
    if "no_flip" in weights:
        assert weights_distance(weights["no_flip"], weights["cached"]) > 100 * RELATIVE_TOLERANCE
