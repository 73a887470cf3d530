"""--feature_precision: the feature cache's frozen pass in bfloat16 (approximate), and
`auto` choosing it only with native bfloat16 and a faster probe."""
import logging

import keras
import numpy as np
import pytest

from loops import phases
from loops.caches import feature_cache, feature_precision
from model import build_model, set_trainable


def cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\n"
                    f"processor\t: 1\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return str(path)


@pytest.fixture
def prefix(tiny_config):
    keras.utils.set_random_seed(0)
    model = build_model(tiny_config, 2, weights=None)
    set_trainable(model, "head")
    return feature_cache.find_cut(model)[0].prefix


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    assert feature_precision.native_bf16(cpuinfo(tmp_path, "avx512f"))[0] is False
    assert feature_precision.native_bf16(cpuinfo(tmp_path, "avx512f avx512_bf16"))[0] is True
    assert feature_precision.native_bf16(cpuinfo(tmp_path, "amx_tile amx_bf16"))[0] is True
    assert feature_precision.native_bf16(str(tmp_path / "missing"))[0] is False


def test_auto_is_float32_without_native_bf16_and_probes_nothing(tmp_path, prefix):
    def no_probe():
        raise AssertionError("probed without native bfloat16")
    choice, why = feature_precision.resolve("auto", prefix, no_probe, cpuinfo(tmp_path, ""))
    assert choice == "float32" and "no native bfloat16" in why


@pytest.mark.parametrize("faster", ["float32", "bfloat16"])
def test_auto_with_native_bf16_takes_the_faster_in_a_probe(tmp_path, prefix, monkeypatch,
                                                           faster):
    calls = []

    def timed(fn, batch, calls_=1):
        calls.append(fn)
        return 1.0 if (len(calls) == 1) == (faster == "float32") else 2.0

    monkeypatch.setattr(feature_precision, "probe", timed)
    batch = np.zeros((2, 32, 32, 3), "uint8")
    choice, why = feature_precision.resolve("auto", prefix, lambda: batch,
                                            cpuinfo(tmp_path, "avx512_bf16"))
    assert choice == faster and len(calls) == 2 and "one batch took" in why


def test_bfloat16_forward_is_close_and_float32(prefix):
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    exact = feature_precision.forward(prefix, "float32")(x).numpy()
    approximate = feature_precision.forward(prefix, "bfloat16")(x)
    assert approximate.dtype == "float32"
    difference = np.linalg.norm(approximate.numpy() - exact) / np.linalg.norm(exact)
    assert 0 < difference < 0.1  # Approximate: bfloat16 keeps 8 bits of mantissa.
    eager = prefix(x, training=False).numpy()  # float32: the prefix itself, up to rounding.
    assert np.linalg.norm(eager - exact) / np.linalg.norm(exact) < 1e-5 < difference


def test_a_head_phase_trains_on_bfloat16_features(tiny_config, tmp_path, caplog):
    # VGG16: MobileNet without weights gives features too small to move the head.
    cfg = tiny_config.replace(feature_cache="disk", epochs=1, backbone="vgg16", alpha=1.0,
                              learning_rate=3e-3)
    weights = {}
    for precision in ("float32", "bfloat16"):
        with caplog.at_level(logging.INFO):
            model = phases.train(cfg.replace(feature_precision=precision),
                                 run_dir=str(tmp_path / precision)).model
        weights[precision] = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert "frozen forward pass in bfloat16" in caplog.text
    # Two feature caches: bfloat16 features never stand in for float32 ones.
    assert len(list((tmp_path / "run" / feature_cache.CACHE_DIR).iterdir())) == 2
    a, b = np.concatenate([w.ravel() for w in weights["float32"]]), \
        np.concatenate([w.ravel() for w in weights["bfloat16"]])
    assert 0 < np.linalg.norm(a - b) / np.linalg.norm(a) < 0.1
