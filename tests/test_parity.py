"""custom loop == fit(), bit for bit, under --deterministic (and the check can fail)."""
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tapefit.loops import compare_lib, phases, train_lib
from tests.conftest import ROOT


@pytest.fixture
def parity_config(tiny_config):
    """Every hook on, shuffling, a partial last batch, dropout and augmentation."""
    return tiny_config.replace(
        backbone="vgg16", unfreeze_from="block5_conv3",  # Random VGG16 features are learnable.
        synthetic_examples=44, batch_size=16, epochs=4, dropout=0.3, augment=True,
        learning_rate=5e-3, lr_schedule="step", lr_decay_epochs=2, lr_decay_rate=0.5,
        reduce_lr_on_plateau=True, reduce_lr_patience=1, reduce_lr_factor=0.5,
        early_stopping=True, early_stopping_patience=2, restore_best_weights=True,
        save_best_only=False, tensorboard=True, csv_log=True, terminate_on_nan=True)


def same_files(run_a, run_b, relative):
    return filecmp.cmp(os.path.join(run_a, relative), os.path.join(run_b, relative),
                       shallow=False)


def tensorboard_scalars(log_dir):
    from tensorboard.backend.event_processing import event_accumulator
    scalars = {}
    for writer in ("train", "validation"):
        acc = event_accumulator.EventAccumulator(
            os.path.join(log_dir, writer), size_guidance={"tensors": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            scalars[(writer, tag)] = [(e.step, float(np.asarray(
                __import__("tensorflow").make_ndarray(e.tensor_proto)))) for e in acc.Tensors(tag)]
    return scalars


def assert_parity(report, run_dir):
    assert report["equal"], report
    assert report["max_abs_weight_diff"] == 0.0
    assert report["max_abs_metric_diff"] == 0.0
    custom, fit = os.path.join(run_dir, "custom"), os.path.join(run_dir, "fit")
    assert same_files(custom, fit, "log.csv")
    assert same_files(custom, fit, "best.weights.h5") or _same_weights(custom, fit)
    assert sorted(os.listdir(os.path.join(custom, "checkpoints"))) == \
        sorted(os.listdir(os.path.join(fit, "checkpoints")))
    ours = tensorboard_scalars(os.path.join(custom, "tensorboard"))
    keras_ = tensorboard_scalars(os.path.join(fit, "tensorboard"))
    assert ours.keys() == keras_.keys() and ("train", "epoch_loss") in ours
    assert ours == keras_


def _same_weights(custom, fit):
    import h5py
    def arrays(path):
        out = []
        with h5py.File(os.path.join(path, "best.weights.h5")) as f:
            f.visititems(lambda n, o: out.append((n, o[()])) if hasattr(o, "shape") else None)
        return out
    return all(a[0] == b[0] and np.array_equal(a[1], b[1])
               for a, b in zip(arrays(custom), arrays(fit)))


def test_head_parity_with_every_hook(parity_config):
    report = compare_lib.compare(parity_config)
    assert report["epochs"]["custom"] >= 2
    assert_parity(report, parity_config.run_dir)
    for name in ("report.json", "report.md", "curves.png"):
        assert os.path.isfile(os.path.join(parity_config.run_dir, name))


def test_finetune_parity_with_every_hook(parity_config):
    phases.run(parity_config.replace(epochs=1, augment=True))
    cfg = parity_config.replace(phase="finetune", epochs=3)
    report = compare_lib.compare(cfg)
    assert_parity(report, cfg.run_dir)


def test_a_different_learning_rate_is_reported_as_different(parity_config):
    cfg = parity_config.replace(epochs=2, early_stopping=False)
    report = compare_lib.compare(cfg, fit_changes={"learning_rate": 1e-2})
    assert not report["equal"]
    assert report["max_abs_weight_diff"] > 0


def test_parity_when_early_stopping_and_plateau_reduction_fire(parity_config):
    """min_delta larger than any epoch's gain: LR is cut and training stops early,
    restoring the best weights, identically in both loops."""
    cfg = parity_config.replace(min_delta=0.05, early_stopping_patience=2, reduce_lr_patience=1,
                                lr_schedule="constant")
    report = compare_lib.compare(cfg)
    assert report["epochs"] == {"custom": 3, "fit": 3}
    rates = [logs["learning_rate"] for logs in report["logs"]["custom"]]
    assert rates[2] == pytest.approx(rates[1] * 0.5)
    assert_parity(report, cfg.run_dir)


def test_parity_with_xla_and_several_steps_per_execution(tmp_path):
    """XLA has no deterministic MaxPool gradient, so no --deterministic (and a fresh
    process: op determinism cannot be switched off): the relative tolerance applies."""
    out = subprocess.run(
        [sys.executable, "compare.py", f"--workdir={tmp_path}", "--backbone=vgg16",
         "--weights=none", "--image_size=32", "--dataset=synthetic", "--synthetic_examples=48",
         "--batch_size=16", "--epochs=2", "--dropout=0.3", "--learning_rate=0.005",
         "--verbose=0", "--jit_compile", "--steps_per_execution=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    report = json.load(open(tmp_path / "head" / "report.json"))
    assert report["equal"] and report["tolerance"] == compare_lib.DEFAULT_TOLERANCE
    assert report["config"]["jit_compile"] and report["epochs"] == {"custom": 2, "fit": 2}


def test_steps_per_execution_must_divide_an_epoch(parity_config):
    from tapefit.flags.config import ConfigError
    with pytest.raises(ConfigError, match="does not divide the 3 steps"):
        phases.train(parity_config.replace(steps_per_execution=2))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_in_both_loops_alike(parity_config, policy):
    import keras
    cfg = parity_config.replace(mixed_precision=policy, epochs=1, early_stopping=False,
                                augment=False)
    try:
        report = compare_lib.compare(cfg)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert report["equal"], {k: report[k] for k in ("max_abs_weight_diff", "max_abs_metric_diff")}
    assert all(np.isfinite(v) for v in report["logs"]["custom"][0].values())


# ---- issue 13: fine-tuning tools, each bitwise equal between the loops ----------------
def _tensorboard_rates(run_dir):
    scalars = tensorboard_scalars(os.path.join(run_dir, "custom", "tensorboard"))
    return [value for _, value in scalars[("train", "epoch_learning_rate")]]


@pytest.mark.parametrize("changes", [
    dict(lr_schedule="one_cycle"),
    dict(lr_schedule="warmup_cosine", warmup_epochs=1.5),
    dict(label_smoothing=0.2, weight_decay=0.05, clipnorm=0.05, ema=0.8),
    dict(augment="flip,rotate,mixup,cutmix"),
    dict(augment="flip,randaugment"),
], ids=["one_cycle", "warmup_cosine", "smoothing_decay_clipnorm_ema", "mixup_cutmix",
        "flip_randaugment"])
def test_head_parity_with_finetune_tools(parity_config, changes):
    """Per-step schedules (inside the optimizer, no LearningRateScheduler) and the
    regularisers: the same weights, logs and TensorBoard scalars in both loops."""
    cfg = parity_config.replace(epochs=3, early_stopping=False, reduce_lr_on_plateau=False,
                                **changes)
    report = compare_lib.compare(cfg)
    assert report["epochs"] == {"custom": 3, "fit": 3}
    assert_parity(report, cfg.run_dir)
    rates = _tensorboard_rates(cfg.run_dir)
    if "lr_schedule" in changes:  # The rate moves within the phase, step by step.
        assert len(set(rates)) == 3 and "learning_rate" not in report["logs"]["custom"][0]
    else:
        lr = cfg.learning_rate  # The epoch schedule (step, halving every 2 epochs) as before.
        assert rates == pytest.approx([lr, lr, lr / 2])


def test_finetune_parity_with_layer_lr_decay(parity_config):
    """Discriminative rates live in the optimizer: block5 at LR/2, block4 at LR/4."""
    phases.run(parity_config.replace(epochs=1))
    cfg = parity_config.replace(phase="finetune", epochs=2, unfreeze_from="block4",
                                layer_lr_decay=0.5, lr_schedule="one_cycle",
                                reduce_lr_on_plateau=False, early_stopping=False)
    report = compare_lib.compare(cfg)
    assert_parity(report, cfg.run_dir)
    # The check can fail: another decay in fit() alone changes the backbone's weights.
    other = compare_lib.compare(cfg.replace(overwrite=True), fit_changes={"layer_lr_decay": 0.6})
    assert not other["equal"]
    differing = {layer["name"].split("/")[0] for layer in other["layers"]
                 if layer["max_abs_diff"] > 0}
    assert any(name.startswith("block4") for name in differing)


def test_finetune_parity_with_train_bn_and_flip_tta_evaluation(tiny_config):
    """--train_bn (MobileNet: batch-norm in the unfrozen blocks trains, in training mode)
    and --tta=flip at evaluate, in both loops."""
    import keras

    from tapefit.model.freeze import unfreeze_batch_norm
    tiny = tiny_config.replace(unfreeze_from="block_12", epochs=1, learning_rate=5e-3)
    phases.run(tiny)
    cfg = tiny.replace(phase="finetune", epochs=2, train_bn=True)
    report = compare_lib.compare(cfg)
    assert report["equal"] and report["max_abs_weight_diff"] == 0.0
    moving = [l for l in report["layers"] if "conv_pw_13_bn/moving_mean" in l["name"]]
    assert moving  # The batch statistics moved in both loops alike.
    plan_model = train_lib.build(cfg, __import__("tensorflow").distribute.get_strategy(), 2,
                                 report["config"]["init_checkpoint"])
    bn = plan_model.get_layer("conv_pw_13_bn")
    assert bn.trainable and not plan_model.get_layer("conv_pw_11_bn").trainable
    assert unfreeze_batch_norm(plan_model, "head", "block_12") == 0
    keras.backend.clear_session()
    # Evaluate the custom run's weights through both loops, with and without TTA.
    import shutil
    shutil.copytree(os.path.join(cfg.run_dir, "custom"), cfg.run_dir, dirs_exist_ok=True)
    results = {(loop, tta): phases.run(cfg.replace(phase="evaluate", loop=loop, tta=tta))
               for loop in ("custom", "fit") for tta in ("", "flip")}
    for tta in ("", "flip"):
        assert results[("custom", tta)]["loss"] == results[("fit", tta)]["loss"]
        assert results[("custom", tta)]["accuracy"] == results[("fit", tta)]["accuracy"]
    assert results[("custom", "flip")]["tta"] == "flip" and "tta" not in results[("fit", "")]
