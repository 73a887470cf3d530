"""Which weights evaluate and predict score (EMA, an unfinished phase with a warning),
non-finite weights refused up front, and divergence advice that blames the rate
only when plausible.
"""
import os

import pytest

from tapefit.flags.config import Config, ConfigError

# ---- which weights evaluate and predict score --------------------------------------------------

def test_evaluate_scores_the_ema_weights_and_says_which(tiny_config):
    """Before: --ema's average reached only final.weights.h5 while evaluate and predict
    read best.weights.h5 (the raw weights)."""
    from tapefit.loops import console, phases, train_lib
    cfg = tiny_config.replace(ema=0.9, epochs=1, synthetic_examples=16, backup=False)
    phases.run(cfg)
    result = phases.run(cfg.replace(phase="evaluate"))
    assert result["weights"] == os.path.join(cfg.workdir, "head", "final.weights.h5")
    assert "EMA" in result["weights_note"]
    assert "EMA" in console.phase_summary(result)
    import numpy as np

    from tapefit.model import build_model
    scored, trained, classes, _ = train_lib.load_trained_model(cfg.workdir)
    for name, differs in (("final.weights.h5", False), ("best.weights.h5", True)):
        other = build_model(trained, len(classes), weights=None)
        other.load_weights(os.path.join(cfg.workdir, "head", name))
        same = all(np.array_equal(a, b)
                   for a, b in zip(scored.get_weights(), other.get_weights(), strict=True))
        assert same != differs, name  # predict's model: the EMA weights, not the raw ones.


def test_an_unfinished_phase_is_scored_with_a_warning(tiny_config, caplog):
    """Before: evaluate silently scored an unfinished finetune's best weights."""
    import logging

    from tapefit.loops import phases
    cfg = tiny_config.replace(epochs=1, synthetic_examples=16, backup=False)
    phases.run(cfg)
    os.remove(os.path.join(cfg.workdir, "head", "final.weights.h5"))  # As if killed.
    with caplog.at_level(logging.WARNING):
        result = phases.run(cfg.replace(phase="evaluate"))
    assert result["weights"].endswith("best.weights.h5")
    assert result["weights_note"].startswith("unfinished")
    warned = [r.getMessage() for r in caplog.records if "unfinished" in r.getMessage()]
    assert len(warned) == 1 and "head phase" in warned[0], warned


# ---- non-finite weights: refused up front, no blame on the rate --------------------------------

def test_nan_backbone_weights_are_refused_before_anything_is_written(tmp_path, tiny_config):
    """Before: training ran, the loss was NaN and the advice was "lower --learning_rate"."""
    import keras
    import numpy as np

    from tapefit.loops import phases
    backbone = keras.applications.MobileNet(weights=None, include_top=False, alpha=0.25,
                                            input_shape=(32, 32, 3))
    values = backbone.get_weights()
    values[0][0, 0, 0, 0] = np.nan
    backbone.set_weights(values)
    path = str(tmp_path / "nan.weights.h5")
    backbone.save_weights(path)
    cfg = tiny_config.replace(weights=path)
    with pytest.raises(ConfigError, match="holds NaN or infinite values") as error:
        phases.run(cfg)
    assert "learning_rate" not in str(error.value)
    assert not os.path.exists(cfg.workdir)


def test_nan_checkpoint_is_refused_without_blaming_the_rate(tiny_config):
    import numpy as np

    from tapefit.loops import phases, train_lib
    cfg = tiny_config.replace(epochs=1, synthetic_examples=16, backup=False)
    phases.run(cfg)
    model, _, _, _ = train_lib.load_trained_model(cfg.workdir)
    values = model.get_weights()
    values[-1][:] = np.nan
    model.set_weights(values)
    model.save_weights(os.path.join(cfg.workdir, "head", "best.weights.h5"))
    with pytest.raises(ConfigError, match="hold NaN or infinite values") as error:
        train_lib.load_trained_model(cfg.workdir)
    assert "learning_rate" not in str(error.value) and "--overwrite" in str(error.value)


def test_divergence_advice_blames_the_rate_only_when_plausible():
    from tapefit.loops.console import divergence_advice, phase_summary
    assert "lower --learning_rate (now 0.1" in divergence_advice(Config(learning_rate=0.1))
    tiny = divergence_advice(Config(learning_rate=1e-7))
    assert "lower --learning_rate" not in tiny and "too small to be the cause" in tiny
    fp16 = divergence_advice(Config(learning_rate=1e-8, mixed_precision="mixed_float16"))
    assert "float16 overflows" in fp16
    text = phase_summary({"phase": "head", "stop_reason": "nan", "advice": tiny})
    assert "lower --learning_rate" not in text and tiny in text
