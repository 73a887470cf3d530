"""loops/training/keras_saving.py: Keras' skip sets computed once, the same files written."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state
from keras.src.layers import layer as layer_module
from keras.src.saving import saving_lib

from tapefit.loops.training import keras_saving
from tests.conftest import h5_datasets


def _small_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _count_reference_layers(monkeypatch):
    """Counts bare `Layer()` constructions: get_attr_skipset's reference objects."""
    calls = []
    original = layer_module.Layer.__init__

    def counting(self, *args, **kwargs):
        if type(self) is layer_module.Layer:
            calls.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(layer_module.Layer, "__init__", counting)
    return calls


def test_save_weights_builds_no_reference_layers_once_memoized(monkeypatch, tmp_path):
    keras.backend.clear_session()
    model = _small_model()
    calls = _count_reference_layers(monkeypatch)
    model.save_weights(str(tmp_path / "a.weights.h5"))
    if not calls:
        pytest.skip("this Keras caches its skip sets itself")
    keras_saving.memoize_skipsets()
    calls.clear()
    model.save_weights(str(tmp_path / "b.weights.h5"))
    model.save_weights(str(tmp_path / "c.weights.h5"))
    assert calls == []


def test_memoized_sets_are_the_ones_keras_computes():
    keras.backend.clear_session()
    fresh = {t: set(saving_lib.get_attr_skipset(t)) for t in keras_saving.OBJECT_TYPES}
    keras_saving.memoize_skipsets()
    for obj_type, expected in fresh.items():
        assert saving_lib.get_attr_skipset(obj_type) == expected, obj_type


def test_same_file_contents_with_and_without_memo(tmp_path):
    keras.backend.clear_session()
    model = _small_model()
    plain = tmp_path / "plain.weights.h5"
    model.save_weights(str(plain))
    keras_saving.memoize_skipsets()
    memo = tmp_path / "memo.weights.h5"
    model.save_weights(str(memo))
    a, b = h5_datasets(plain), h5_datasets(memo)
    assert sorted(a) == sorted(b) and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_clear_session_drops_the_memo_and_build_fills_it_again(tmp_path):
    keras.backend.clear_session()
    keras_saving.memoize_skipsets()
    key = "saving_attr_skiplist_Layer"
    assert global_state.get_global_attribute(key) is not None
    keras.backend.clear_session()
    assert global_state.get_global_attribute(key) is None

    from tapefit.flags.config import Config
    from tapefit.loops import train_lib
    from tapefit.loops.training import strategy as strategy_lib
    cfg = Config(phase="head", backbone="mobilenet", alpha=0.25, weights="none", image_size=32,
                 workdir=str(tmp_path))
    train_lib.build(cfg, strategy_lib.make_strategy(cfg.strategy), 2)
    assert global_state.get_global_attribute(key) is not None
