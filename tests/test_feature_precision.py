"""--feature_precision: the feature cache's frozen pass in bfloat16 (approximate), and
`auto` choosing it only with native bfloat16 and a faster probe."""
import logging
import time

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


def test_auto_is_float32_without_native_bf16_and_probes_nothing(tmp_path, prefix,
                                                                 monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("probed without native bfloat16")
    monkeypatch.setattr(feature_precision, "probe", no_probe)
    monkeypatch.setattr(feature_precision, "forward", no_probe)
    choice = feature_precision.resolve("auto", prefix, 32, 1000, probe_batch=no_probe,
                                       cpuinfo=cpuinfo(tmp_path, "avx512f"))
    assert choice.precision == "float32" and "no native bfloat16" in choice.reason
    assert choice.forward is None


@pytest.mark.parametrize("flags", ["avx512f avx512_bf16", "amx_tile amx_bf16"])
@pytest.mark.parametrize("seconds, chosen", [
    ((1.0, 2.0), "float32"),
    ((1.0, 0.95), "float32"),  # Within MARGIN: approximate features must pay off.
    ((1.0, 0.5), "bfloat16")])
def test_auto_with_native_bf16_probes_random_pixels_and_keeps_the_traced_choice(
        tmp_path, prefix, monkeypatch, flags, seconds, chosen):
    calls = []

    def timed(fn, batch, calls_=2):
        calls.append((fn, batch))
        return seconds[len(calls) - 1]

    monkeypatch.setattr(feature_precision, "probe", timed)
    choice = feature_precision.resolve("auto", prefix, 32, cpuinfo=cpuinfo(tmp_path, flags))
    assert choice.precision == chosen and len(calls) == 2 and "float32" in choice.reason
    # The probe's batch: a few random images of the prefix's input, not the data.
    batch = calls[0][1].numpy()
    assert batch.shape == (feature_precision.PROBE_EXAMPLES, *prefix.input.shape[1:])
    assert batch.std() > 10
    # The chosen precision's probed, traced function is handed on for the pass.
    assert choice.forward is calls[0 if chosen == "float32" else 1][0]
    x = np.random.default_rng(1).uniform(0, 255, (2, *prefix.input.shape[1:]))
    exact = prefix(x.astype("float32"), training=False).numpy()
    got = choice.forward(x.astype("float32")).numpy()
    tolerance = 1e-5 if chosen == "float32" else 0.1
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < tolerance


def test_auto_does_not_probe_bfloat16_for_a_pass_too_short_to_repay_it(tmp_path, prefix,
                                                                       monkeypatch):
    calls = []

    def timed(fn, batch, calls_=2):
        calls.append(fn)
        # 10 ms per batch of 8: a bfloat16 probe costs ~3 * 10 / 0.63 = 48 ms; 100 images
        # take ~0.13 s (< 5 * 48 ms), 100 000 images ~125 s.
        return 0.01

    monkeypatch.setattr(feature_precision, "probe", timed)
    flags = cpuinfo(tmp_path, "avx512_bf16")
    short = feature_precision.resolve("auto", prefix, 32, 100, cpuinfo=flags)
    assert short.precision == "float32" and "too short for a bfloat16 probe" in short.reason
    assert calls == [short.forward]  # Only float32 ran; its function goes on to the pass.
    long = feature_precision.resolve("auto", prefix, 32, 100_000, cpuinfo=flags)
    assert len(calls) == 3 and "ms in bfloat16" in long.reason


def test_probe_times_the_best_call_after_a_warm_up():
    durations = iter([0.5, 0.3, 0.2])  # The warm-up (tracing) is left out.

    class Fake:
        def numpy(self):
            time.sleep(next(durations))

    assert 0.2 <= feature_precision.probe(lambda batch: Fake(), None) < 0.3


def test_a_probed_run_traces_the_chosen_pass_once(tiny_config, tmp_path, monkeypatch,
                                                  caplog):
    """The probe's float32 function is the pass's: no second forward function (a VGG16
    trace costs seconds) is made for either split."""
    monkeypatch.setattr(feature_precision, "native_bf16",
                        lambda cpuinfo=None: (True, "the CPU has avx512_bf16 (test)"))
    monkeypatch.setattr(feature_precision, "probe", lambda fn, batch, calls=2: 1.0)
    monkeypatch.setattr(feature_precision, "PAYBACK", 0)  # Probe even this tiny pass.
    made = []
    original = feature_cache.forward_function

    def counted(prefix, fn=None):
        made.append(fn)
        return original(prefix, fn)

    monkeypatch.setattr(feature_cache, "forward_function", counted)
    cfg = tiny_config.replace(feature_cache="memory", epochs=1, feature_precision="auto")
    with caplog.at_level(logging.INFO):
        phases.train(cfg, run_dir=str(tmp_path / "run"))
    assert "frozen forward pass in float32 (the CPU has avx512_bf16 (test); a batch" in \
        caplog.text
    assert len(made) == 2  # The probe's float32 and bfloat16 functions, nothing more.


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


@pytest.mark.parametrize("faster", ["float32", "bfloat16"])
def test_auto_reuses_the_features_an_earlier_run_left_on_disk_without_probing(
        tiny_config, tmp_path, monkeypatch, caplog, faster):
    """A sweep's trials (and a re-run) share a disk feature cache: under `auto` the
    precision whose features are there already is taken, and nothing is probed."""
    monkeypatch.setattr(feature_precision, "native_bf16",
                        lambda cpuinfo=None: (True, "the CPU has avx512_bf16 (test)"))
    monkeypatch.setattr(feature_precision, "PAYBACK", 0)
    probes = []

    def timed(fn, batch, calls=2):
        probes.append(fn)
        return 1.0 if (len(probes) == 1) == (faster == "float32") else 3.0

    monkeypatch.setattr(feature_precision, "probe", timed)
    cfg = tiny_config.replace(feature_cache="disk", epochs=1, feature_precision="auto",
                              feature_cache_dir=str(tmp_path / "features"))
    phases.train(cfg, run_dir=str(tmp_path / "first"))
    assert len(probes) == 2
    with caplog.at_level(logging.INFO):
        phases.train(cfg, run_dir=str(tmp_path / "second"))
    assert len(probes) == 2  # Not probed again.
    assert f"frozen forward pass in {faster} (the features in {faster} are on disk" \
        in caplog.text
    assert "loaded the features" in caplog.text and "computed the features" not in caplog.text
    assert len(list((tmp_path / "features").iterdir())) == 1
