"""--feature_precision: the feature cache's frozen pass in bfloat16 (approximate), and
`auto` choosing it only with native bfloat16 and a faster probe."""
import logging
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tapefit.layout import temporaries
from tapefit.loops import phases
from tapefit.loops.caches import feature_cache, feature_precision
from tapefit.model import build_model, set_trainable


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


def test_resolve_names_a_precision_or_asks_for_the_probe(tmp_path):
    assert feature_precision.resolve("bfloat16").precision == "bfloat16"
    assert feature_precision.resolve("float32").precision == "float32"
    without = feature_precision.resolve("auto", cpuinfo(tmp_path, "avx512f"))
    assert without.precision == "float32" and "no native bfloat16" in without.reason
    for flags in ("avx512f avx512_bf16", "amx_tile amx_bf16"):
        assert feature_precision.resolve("auto", cpuinfo(tmp_path, flags)).precision == "auto"


class Slow:
    """A stand-in batch function: its result after `seconds`."""

    def __init__(self, seconds, value):
        self.seconds, self.value = seconds, value

    def __call__(self, x):
        time.sleep(self.seconds)
        return self.value


@pytest.mark.parametrize("t16, chosen", [(0.05, "bfloat16"), (0.095, "float32"),
                                         (0.2, "float32")])
def test_in_pass_probe_takes_bfloat16_at_the_margin_with_its_features(monkeypatch, t16,
                                                                      chosen):
    monkeypatch.setattr(feature_precision, "forward", lambda prefix, p: Slow(t16, "bf16"))
    chooser = feature_precision.InPass(None, "the CPU has avx512_bf16", batches=100)
    float32_fn = object()
    batches = [np.zeros((8, 4)), np.ones((8, 4))]
    outputs = chooser.decide(lambda fn, x: fn(x), batches, [0.15, 0.1], float32_fn)
    assert chooser.precision == chosen and "a batch of 8 took 100 ms in float32" in \
        chooser.reason and "probed in the pass" in chooser.reason
    if chosen == "bfloat16":  # The two probed batches, in bfloat16, replace float32's.
        assert outputs == ["bf16", "bf16"] and isinstance(chooser.forward, Slow)
    else:
        assert outputs is None and chooser.forward is float32_fn


def test_in_pass_probe_skips_bfloat16_when_the_rest_of_the_pass_cannot_repay_it(
        monkeypatch):
    def no_copy(*args):
        raise AssertionError("a bfloat16 copy was made for a pass too short to repay it")
    monkeypatch.setattr(feature_precision, "forward", no_copy)
    chooser = feature_precision.InPass(None, "the CPU has avx512_bf16", batches=5)
    float32_fn = object()
    # 3 batches left at 0.1 s save at most 0.15 s at 2x; the probe: 0.5 s + 2 batches.
    assert chooser.decide(None, ["x0", "x1"], [0.6, 0.1], float32_fn) is None
    assert chooser.precision == "float32" and chooser.forward is float32_fn
    assert "too short for a bfloat16 probe" in chooser.reason


@pytest.mark.parametrize("wins", ["bfloat16", "float32"])
def test_a_probed_pass_caches_one_precision_only(tiny_config, tmp_path, monkeypatch, caplog,
                                                 wins):
    """The probe runs in the training split's pass: its first two batches in both
    precisions. Every cached row, those two batches' too, is the chosen precision's
    (bfloat16 rows never mix with float32 ones), and the validation split follows."""
    monkeypatch.setattr(feature_precision, "native_bf16",
                        lambda cpuinfo=None: (True, "the CPU has avx512_bf16 (test)"))
    monkeypatch.setattr(feature_precision, "PAYBACK", 0)  # Probe even this tiny pass.
    monkeypatch.setattr(feature_precision, "MARGIN", 0 if wins == "bfloat16" else 1e9)
    seen = {}
    original = feature_cache.cached_features

    def capture(cut, images, num_examples, path, batch_size, training=True, chooser=None):
        out = original(cut, images, num_examples, path, batch_size, training, chooser)
        seen["train" if training else "validation"] = (cut, images, out, path)
        return out

    monkeypatch.setattr(feature_cache, "cached_features", capture)
    cfg = tiny_config.replace(feature_cache="disk", epochs=1, feature_precision="auto",
                              synthetic_examples=80, feature_cache_dir=str(tmp_path / "f"))
    # What a killed probed run leaves in the cache's root (its pid no longer runs).
    (tmp_path / "f").mkdir()
    stale = tmp_path / "f" / (f".auto-training.{temporaries.host_tag()}-{2**22 + 12345}.tmp"
                              f"{feature_cache.FEATURES}")
    stale.write_bytes(b"half")
    with caplog.at_level(logging.INFO):
        phases.train(cfg, run_dir=str(tmp_path / "run"))
    assert f"frozen forward pass in {wins} (the CPU has avx512_bf16 (test); a batch of 8" \
        in caplog.text
    for split in ("train", "validation"):
        cut, images, out, _ = seen[split]
        got = np.stack([f for f, _ in out.as_numpy_iterator()])
        expected, other = (
            np.concatenate([feature_precision.forward(cut.prefix, p)(
                tf.cast(x, tf.float32)).numpy() for x, _ in images.batch(8)])
            for p in (wins, "float32" if wins == "bfloat16" else "bfloat16"))
        assert len(got) == len(expected) > 16  # The two probed batches and more.
        scale = np.linalg.norm(expected[:16])
        assert np.linalg.norm(got - expected) <= 1e-6 * np.linalg.norm(expected)
        assert np.linalg.norm(got[:16] - other[:16]) > 1e-4 * scale
    # On disk under the chosen precision's key: one folder, both splits; no temporary.
    assert len(list((tmp_path / "f").iterdir())) == 1 and not stale.exists()


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


@pytest.mark.parametrize("wins", ["float32", "bfloat16"])
def test_auto_reuses_the_features_an_earlier_run_left_on_disk_without_probing(
        tiny_config, tmp_path, monkeypatch, caplog, wins):
    """A sweep's trials (and a re-run) share a disk feature cache: under `auto` the
    precision whose features are there already is taken, and nothing is probed."""
    monkeypatch.setattr(feature_precision, "native_bf16",
                        lambda cpuinfo=None: (True, "the CPU has avx512_bf16 (test)"))
    monkeypatch.setattr(feature_precision, "PAYBACK", 0)
    monkeypatch.setattr(feature_precision, "MARGIN", 0 if wins == "bfloat16" else 1e9)
    cfg = tiny_config.replace(feature_cache="disk", epochs=1, feature_precision="auto",
                              feature_cache_dir=str(tmp_path / "features"))
    phases.train(cfg, run_dir=str(tmp_path / "first"))

    def no_probe(*args, **kwargs):
        raise AssertionError("probed again")
    monkeypatch.setattr(feature_precision.InPass, "decide", no_probe)
    with caplog.at_level(logging.INFO):
        phases.train(cfg, run_dir=str(tmp_path / "second"))
    assert f"frozen forward pass in {wins} (the features in {wins} are on disk" in caplog.text
    assert "loaded the features" in caplog.text and "computed the features" not in caplog.text
    assert len(list((tmp_path / "features").iterdir())) == 1
