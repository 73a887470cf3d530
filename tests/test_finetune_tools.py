"""Issue 13: schedules per step, regularisation, discriminative rates, LR finder."""
import math

import keras
import numpy as np
import pytest

from tapefit.flags.config import Config, ConfigError
from tapefit.loops.optim import optimizers as optimizers_lib
from tapefit.loops.optim import schedules
from tapefit.loops.training.custom import SmoothedCrossentropy, make_loss


def lr_at(optimizer_or_schedule, step):
    return float(keras.ops.convert_to_numpy(optimizer_or_schedule(step)))


# ---- (1) schedules per step ------------------------------------------------------------
def test_one_cycle_follows_fastai():
    """pct_start 0.25, div 25, div_final 1e5: from LR/25 up to LR at a quarter of the
    steps, then down to LR/1e5, along half cosines (fastai's combined_cos)."""
    lr, total = 0.01, 40
    cfg = Config(lr_schedule="one_cycle", learning_rate=lr, epochs=4)
    schedule = schedules.learning_rate(cfg, steps_per_epoch=10)
    assert isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
    assert lr_at(schedule, 0) == pytest.approx(lr / 25)
    assert lr_at(schedule, 10) == pytest.approx(lr)  # The peak at 25 %.
    assert lr_at(schedule, 5) == pytest.approx(lr / 25 + (lr - lr / 25) / 2)  # Half way up.
    assert lr_at(schedule, 25) == pytest.approx(lr / 2 + lr / 1e5 / 2)  # Half way down.
    assert lr_at(schedule, total) == pytest.approx(lr / 1e5, abs=lr * 1e-6)  # float32
    got = [lr_at(schedule, s) for s in range(total)]
    want = [schedules.one_cycle_reference(lr, total, s) for s in range(total)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=lr * 1e-6)
    assert max(got) == pytest.approx(lr) and got.index(max(got)) == 10


def test_warmup_cosine_warms_up_linearly_then_decays_to_zero():
    lr = 0.02
    cfg = Config(lr_schedule="warmup_cosine", learning_rate=lr, epochs=5, warmup_epochs=1.5)
    schedule = schedules.learning_rate(cfg, steps_per_epoch=4)  # 6 warm-up steps of 20.
    assert lr_at(schedule, 0) == 0.0
    assert lr_at(schedule, 3) == pytest.approx(lr / 2)
    assert lr_at(schedule, 6) == pytest.approx(lr)
    assert lr_at(schedule, 6 + 7) == pytest.approx(lr / 2, rel=1e-5)  # Half of 14 decay steps.
    assert lr_at(schedule, 20) == pytest.approx(0.0, abs=1e-9)


def test_epoch_schedules_keep_a_plain_rate_and_step_schedules_need_the_phase_length():
    assert schedules.learning_rate(Config(lr_schedule="cosine", learning_rate=0.1), 10) == 0.1
    # Without steps (--phase=evaluate: nothing trains) a step schedule is the plain rate.
    assert schedules.learning_rate(Config(lr_schedule="one_cycle", learning_rate=0.1)) == 0.1
    assert schedules.make_schedule(Config(lr_schedule="one_cycle")).kind == "constant"


def test_runners_make_no_learning_rate_scheduler_for_a_step_schedule(tiny_config):
    from tapefit.loops import phases
    from tapefit.loops.training.runners import CustomRunner
    for kind, expected in (("step", True), ("one_cycle", False)):
        plan = phases.make_plan(tiny_config.replace(lr_schedule=kind))
        names = [name for name, _ in CustomRunner(plan)._specs()]
        assert ("LearningRateScheduler" in names) == expected
        optimizer_rate = CustomRunner(plan).optimizer._learning_rate
        assert isinstance(optimizer_rate, keras.optimizers.schedules.LearningRateSchedule) \
            == (not expected)


@pytest.mark.parametrize("changes, message", [
    (dict(lr_schedule="one_cycle", reduce_lr_on_plateau=True), "pass one of them"),
    (dict(lr_schedule="warmup_cosine", warmup_epochs=3, epochs=3), "below --epochs"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(clipnorm=math.inf), "clipnorm"),
    (dict(ema=1.0), "ema"),
    (dict(layer_lr_decay=0.0), "layer_lr_decay"),
    (dict(layer_lr_decay=1.5), "layer_lr_decay"),
])
def test_bad_finetune_tool_flags_are_one_line_errors(changes, message):
    with pytest.raises(ConfigError, match=message) as e:
        Config(**changes)
    assert "\n" not in str(e.value)


# ---- (2) regularisation -------------------------------------------------------------------
def test_make_loss_without_arguments_is_todays_loss():
    assert type(make_loss()) is keras.losses.SparseCategoricalCrossentropy
    assert type(make_loss(Config())) is keras.losses.SparseCategoricalCrossentropy
    assert type(make_loss(Config(label_smoothing=0.1))) is SmoothedCrossentropy


def test_label_smoothing_against_a_hand_computed_loss():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], np.float32)
    labels = np.array([0, 1])
    eps, k = 0.3, 3
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = np.full((2, k), eps / k)
    target[np.arange(2), labels] += 1 - eps
    want = float(np.mean(-(target * log_p).sum(axis=1)))
    loss = make_loss(Config(label_smoothing=eps))
    assert float(loss(labels, logits)) == pytest.approx(want, rel=1e-6)
    plain = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits))
    assert float(SmoothedCrossentropy(0.0)(labels, logits)) == pytest.approx(plain, rel=1e-6)
    # Soft labels (mixup, cutmix) pass through.
    assert float(loss(target.astype(np.float32), logits)) != pytest.approx(want)


def test_optimizer_regularisers():
    plain = optimizers_lib.make_optimizer(Config(learning_rate=0.1))
    assert type(plain) is keras.optimizers.Adam and not plain.use_ema
    assert plain.weight_decay is None and plain.clipnorm is None
    opt = optimizers_lib.make_optimizer(Config(learning_rate=0.1, weight_decay=0.01, clipnorm=2.0,
                                          ema=0.9))
    assert type(opt) is keras.optimizers.AdamW
    assert opt.weight_decay == 0.01 and opt.clipnorm == 2.0
    assert opt.use_ema and opt.ema_momentum == 0.9
    sgd = optimizers_lib.make_optimizer(Config(optimizer="sgd", weight_decay=0.01))
    assert type(sgd) is keras.optimizers.SGD and sgd.weight_decay == 0.01


def test_weight_decay_spares_biases_and_batch_norm():
    kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
    bias = keras.Variable(np.ones(2, np.float32), name="bias")
    gamma = keras.Variable(np.ones(2, np.float32), name="gamma")
    opt = optimizers_lib.make_optimizer(Config(optimizer="sgd", learning_rate=0.5,
                                               weight_decay=0.1))
    zeros = [np.zeros((2, 2), np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32)]
    opt.apply_gradients(zip(zeros, [kernel, bias, gamma]))
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.5 * 0.1)
    assert (bias.numpy() == 1).all() and (gamma.numpy() == 1).all()


# ---- (3) discriminative learning rates ------------------------------------------------------
@pytest.fixture
def mobilenet(tiny_config):
    from tapefit.model import build_model, set_trainable
    cfg = tiny_config.replace(phase="finetune")
    keras.utils.set_random_seed(0)
    model = build_model(cfg, 3, weights=None)
    set_trainable(model, "finetune", "block_12")
    return model


def test_layer_multipliers_follow_the_backbone_blocks(mobilenet):
    multipliers = optimizers_lib.layer_lr_multipliers(mobilenet, 0.5)
    assert "logits" not in multipliers  # The head: the full rate.
    assert multipliers["conv_dw_13"] == multipliers["conv_pw_13_bn"] == 0.5
    assert multipliers["conv_dw_12"] == multipliers["conv_pad_12"] == 0.25
    assert multipliers["conv_pw_1"] == 0.5 ** 13
    assert multipliers["conv1"] == 0.5 ** 13  # The stem goes with the first block.
    names = [name for name, _ in optimizers_lib.backbone_blocks(mobilenet)]
    assert names == [f"block_{i}" for i in range(1, 14)]


def test_layer_lr_decay_scales_each_update_not_the_gradient(mobilenet):
    """SGD: the step of a variable is rate * multiplier * gradient; Adam: the same
    gradient gives steps in the ratio of the multipliers (a gradient scale would
    cancel in Adam's normalisation)."""
    variables = mobilenet.trainable_variables
    names = [v.path for v in variables]
    assert names[-2:] == ["logits/kernel", "logits/bias"]
    grads = [np.full(v.shape, 0.1, np.float32) for v in variables]
    for optimizer in ("sgd", "adam"):
        start = [v.numpy().copy() for v in variables]
        cfg = Config(optimizer=optimizer, learning_rate=0.01, layer_lr_decay=0.5)
        opt = optimizers_lib.make_optimizer(cfg, model=mobilenet)
        assert isinstance(opt, optimizers_lib.OPTIMIZERS[optimizer])
        opt.apply_gradients(zip(grads, variables))
        steps = {v.path: float(np.max(np.abs(v.numpy() - s))) for v, s in zip(variables, start)}
        full = steps["logits/kernel"]
        assert full == pytest.approx(0.01 * (0.1 if optimizer == "sgd" else 1.0), rel=1e-4)
        assert steps["conv_pw_13/kernel"] == pytest.approx(full * 0.5, rel=1e-4)
        assert steps["conv_dw_12/kernel"] == pytest.approx(full * 0.25, rel=1e-4)
        for v, s in zip(variables, start):
            v.assign(s)


def test_layer_lr_decay_of_one_is_the_plain_optimizer(mobilenet):
    opt = optimizers_lib.make_optimizer(Config(layer_lr_decay=1.0), model=mobilenet)
    assert type(opt) is keras.optimizers.Adam
    # Evaluation makes the trained run's optimizer without a model: nothing trains.
    assert type(optimizers_lib.make_optimizer(Config(layer_lr_decay=0.5))) is keras.optimizers.Adam


# ---- (4) the learning-rate finder ---------------------------------------------------------
from tapefit.loops import lr_find  # noqa: E402


def test_finder_ramp_is_fastais_exponential_schedule():
    assert lr_find.ramp(0) == pytest.approx(1e-7)
    assert lr_find.ramp(50) == pytest.approx(1e-3)
    assert lr_find.ramp(99) == pytest.approx(1e-7 * 1e8 ** 0.99)
    curve = lr_find.find(lambda lr: 1.0)
    assert len(curve.lrs) == 100 and not curve.stopped_early
    assert curve.lrs == [lr_find.ramp(i) for i in range(100)]


def test_finder_smooths_and_debiases_the_loss():
    losses = iter([1.0, 0.5, 2.0])
    curve = lr_find.find(lambda lr: next(losses), num_it=3)
    # avg_1 = 0.02; avg_2 = 0.98 * 0.02 + 0.02 * 0.5 = 0.0296; debiased by 1 - 0.98^i.
    assert curve.smoothed[0] == pytest.approx(1.0)
    assert curve.smoothed[1] == pytest.approx(0.0296 / 0.0396)
    assert curve.smoothed[2] == pytest.approx((0.98 * 0.0296 + 0.04) / (1 - 0.98 ** 3))
    assert curve.losses == [1.0, 0.5, 2.0]


@pytest.mark.parametrize("jump, steps", [(1000.0, 21), (5.0, 100), (math.nan, 21)])
def test_finder_stops_after_the_step_that_exceeds_four_times_the_best(jump, steps):
    """Twenty steps at loss 1, then `jump`: the smoothed loss at step 20 is
    (0.98 (1 - 0.98^20) + 0.02 jump) / (1 - 0.98^21): 58.8 for 1000 (stop, the step
    is recorded), 1.23 for 5 (go on); NaN stops too."""
    losses = [1.0] * 20 + [jump] + [1.0] * 79
    stream = iter(losses)
    curve = lr_find.find(lambda lr: next(stream))
    assert len(curve.lrs) == steps and curve.stopped_early == (steps < 100)
    if jump == 1000.0:
        assert curve.smoothed[-1] == pytest.approx(
            (0.98 * (1 - 0.98 ** 20) + 20) / (1 - 0.98 ** 21))


def test_suggestions_against_hand_computed_indices():
    lrs = np.array([lr_find.ramp(i) for i in range(8)])
    losses = np.array([5.0, 4.0, 6.0, 3.0, 2.0, 7.0, 1.0, 8.0])
    # Longest decreasing run 5, 4, 3, 2, 1 ends at 6; fastai's start is 6 - 5 = 1;
    # 5/3 sections: index 1 + 1 + 0 = 2.
    assert lr_find.valley(lrs, losses) == lrs[2]
    # Equal steps in log(lr): the steepest is the largest drop, 7 -> 1 (from index 5).
    assert lr_find.steep(lrs, losses) == lrs[5]
    assert lr_find.minimum(lrs, losses) == pytest.approx(lrs[6] / 10)


def test_suggestions_skip_the_first_tenth_and_the_last_five_points():
    """A loss that is lowest in the first ten and last five steps: those are ignored."""
    losses = [0.0] * 10 + list(np.linspace(3.0, 1.0, 85)) + [0.0] * 5
    curve = lr_find.Curve([lr_find.ramp(i) for i in range(100)], losses, losses, False)
    found = lr_find.suggestions(curve)
    assert found["minimum"] == pytest.approx(lr_find.ramp(94) / 10)
    lrs = np.array(curve.lrs[10:95])
    assert found["valley"] == lr_find.valley(lrs, np.array(losses[10:95]))


def test_finder_restores_weights_and_optimizer_exactly(tiny_config):
    from tapefit.loops import phases
    from tapefit.loops.training.custom import CustomLoop
    from tapefit.loops.training.runners import CustomRunner
    plan = phases.make_plan(tiny_config.replace(feature_cache="off"))
    runner = CustomRunner(plan)
    train_data, _ = runner.data()
    loop = CustomLoop(plan.model, runner.optimizer, plan.strategy)
    before = [v.numpy().copy() for v in plan.model.weights]
    slots = [v.numpy().copy() for v in runner.optimizer.variables]
    changed = []
    real_find = lr_find.find

    def find_and_look(step_fn, num_it, **kwargs):
        curve = real_find(step_fn, num_it, **kwargs)
        changed.append(any((v.numpy() != b).any() for v, b in zip(plan.model.weights, before)))
        return curve

    lr_find.find, saved = find_and_look, lr_find.find
    try:
        curve = lr_find.find_for_loop(loop, train_data, num_it=6, start=1e-3, end=1.0)
    finally:
        lr_find.find = saved
    assert changed == [True] and len(curve.lrs) == 6
    assert all(math.isfinite(x) for x in curve.losses)
    assert all((v.numpy() == b).all() for v, b in zip(plan.model.weights, before))
    assert all((v.numpy() == s).all() for v, s in zip(runner.optimizer.variables, slots))


def test_lr_find_phase_then_learning_rate_auto(tiny_config):
    import json
    import os

    from tapefit.loops import phases
    cfg = tiny_config.replace(epochs=1)
    with pytest.raises(ConfigError, match="--phase=lr_find --for_phase=head"):
        phases.run(cfg.replace(learning_rate="auto"))
    result = phases.run(cfg.replace(phase="lr_find", for_phase="head"))
    out = os.path.join(cfg.workdir, "lr_find_head")
    assert sorted(os.listdir(out)) == ["config.json", "lr_find.csv", "lr_find.png",
                                       "suggestions.json", "summary.json"]
    found = json.load(open(os.path.join(out, "suggestions.json")))["suggestions"]
    assert found == result["suggestions"] and set(found) == {"valley", "steep", "minimum"}
    rows = open(os.path.join(out, "lr_find.csv")).read().splitlines()
    assert rows[0] == "step,learning_rate,loss,smoothed_loss" and len(rows) == 1 + result["steps"]
    assert not os.path.exists(os.path.join(cfg.workdir, "head"))  # Nothing trained is kept.
    # A suggestion measured with other flags is refused, naming them; nothing is written.
    with pytest.raises(ConfigError, match=rf"--batch_size={2 * cfg.batch_size} "
                                          rf"\(was {cfg.batch_size}\)"):
        phases.run(cfg.replace(learning_rate="auto", batch_size=2 * cfg.batch_size))
    assert not os.path.exists(os.path.join(cfg.workdir, "head"))
    # Another seed is the same curve up to the shuffle: accepted.
    phases.run(cfg.replace(learning_rate="auto", lr_suggestion="steep", seed=cfg.seed + 1))
    saved = json.load(open(os.path.join(cfg.workdir, "head", "config.json")))
    assert saved["learning_rate"] == found["steep"] and saved["lr_suggestion"] == "steep"


def test_learning_rate_flag_takes_numbers_and_auto():
    assert Config(learning_rate="0.01").learning_rate == 0.01
    assert Config(learning_rate="auto").learning_rate == "auto"
    with pytest.raises(ConfigError, match="not a number"):
        Config(learning_rate="fast")
    with pytest.raises(ConfigError, match="drop --learning_rate"):
        Config(phase="lr_find", learning_rate="auto")


# ---- (7) recipes ------------------------------------------------------------------------------
def _parsed(*argv):
    from absl import flags as absl_flags

    from tapefit.flags.definitions import config_from_flags, define_flags
    flag_values = absl_flags.FlagValues()
    define_flags(flag_values)
    flag_values(["train.py", *argv])
    return config_from_flags(flag_values)


def test_recipe_sets_flags_that_are_not_given_and_explicit_flags_win():
    from tapefit.flags.config import RECIPES
    tuned = RECIPES["tuned"]
    head = _parsed("--recipe=tuned")
    assert head.recipe == "tuned"
    for name, value in tuned["head"].items():
        assert getattr(head, name) == value
    finetune = _parsed("--recipe=tuned", "--phase=finetune", "--learning_rate=5e-4",
                       "--label_smoothing=0")
    assert finetune.learning_rate == 5e-4 and finetune.label_smoothing == 0.0  # Explicit.
    assert finetune.layer_lr_decay == tuned["finetune"]["layer_lr_decay"]
    assert finetune.to_dict()["layer_lr_decay"] == tuned["finetune"]["layer_lr_decay"]
    classic = _parsed("--phase=finetune")
    assert classic == Config(phase="finetune")
    finder = _parsed("--recipe=tuned", "--phase=lr_find", "--for_phase=finetune")
    assert finder.learning_rate is None and finder.lr_schedule == "constant"
    assert finder.layer_lr_decay == tuned["finetune"]["layer_lr_decay"]
    with pytest.raises(ConfigError, match="unknown --recipe"):
        _parsed("--recipe=magic")


# ---- --augment ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    (True, "flip,rotate"), (False, ""), ("true", "flip,rotate"), ("none", ""),
    ("mixup, flip", "flip,mixup"), ("cutmix,randaugment,rotate", "rotate,randaugment,cutmix")])
def test_augment_spec_is_normalised_and_old_booleans_keep_their_meaning(value, expected):
    assert Config(augment=value).augment == expected


def test_unknown_augmentation_is_a_one_line_error():
    with pytest.raises(ConfigError, match="unknown --augment=blur"):
        Config(augment="flip,blur")
    assert _parsed("--augment").augment == "flip,rotate"
    assert _parsed("--noaugment").augment == ""
    assert _parsed("--augment=cutmix").augment == "cutmix"


def _mixed(spec, first_step=0, steps=4):
    import tensorflow as tf

    from tapefit.model.augment import mix_batches
    images = np.arange(6 * 8 * 8 * 3, dtype=np.float32).reshape(6, 8, 8, 3) % 255
    labels = np.array([0, 1, 2, 0, 1, 2])
    batches = tf.data.Dataset.from_tensors((images, labels)).repeat().skip(first_step)
    out = mix_batches(batches, spec, 3, seed=5, first_step=first_step)
    return images, labels, [(x.numpy(), y.numpy()) for x, y in out.take(steps)]


@pytest.mark.parametrize("spec", ["mixup", "cutmix", "mixup,cutmix"])
def test_mixed_batches_are_consistent_deterministic_and_resumable(spec):
    images, labels, batches = _mixed(spec)
    onehot = np.eye(3)[labels]
    for x, y in batches:
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
        # Each mixed image is w * its own + (1 - w) * another (per example for mixup,
        # per pixel for cutmix); the label keeps the own image's weight.
        own_weight = (y * onehot).sum(axis=1)
        assert (own_weight >= 0.5 - 1e-6).all() or "cutmix" in spec
        assert not np.array_equal(x, images) or "cutmix" in spec
    again = _mixed(spec)[2]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(batches, again))
    resumed = _mixed(spec, first_step=2, steps=2)[2]
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches[2:], resumed))
    assert not np.array_equal(batches[0][0], batches[1][0])  # Each step its own draw.


def test_cutmix_label_weights_are_the_pasted_area():
    images, labels, batches = _mixed("cutmix", steps=8)
    for x, y in batches:
        kept = (x == images).all(axis=-1).mean(axis=(1, 2))  # Pixels still the own image's.
        onehot = np.eye(3)[labels]
        own = (y * onehot).sum(axis=1)
        same_class = (y.max(axis=1) > 1 - 1e-6)
        np.testing.assert_allclose(own[~same_class], kept[~same_class], atol=1e-6)


def test_mixing_makes_soft_label_loss_and_accuracy():
    from tapefit.loops.training.custom import SoftLabelAccuracy, make_metrics
    cfg = Config(augment="mixup")
    assert type(make_loss(cfg)) is SmoothedCrossentropy
    assert type(make_metrics(cfg)[0]) is SoftLabelAccuracy
    assert type(make_metrics()[0]) is keras.metrics.SparseCategoricalAccuracy
    metric = make_metrics(cfg)[0]
    metric.update_state(np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([[2.0, 0.0], [3.0, 0.0]]))
    metric.update_state(np.array([1]), np.array([[0.0, 1.0]]))  # Integer labels too.
    assert float(metric.result()) == pytest.approx(2 / 3)


def test_model_augmentation_layers_follow_the_spec():
    from tapefit.model.augment import model_layers
    names = [layer.name for layer in model_layers("flip,rotate,randaugment,mixup", 1)]
    assert names == ["augment_flip", "augment_rotate", "augment_randaugment"]
    assert model_layers("mixup,cutmix", 1) == []


# ---- (5) --tta=flip, --train_bn ---------------------------------------------------------------
def test_flip_tta_averages_the_probabilities_of_an_image_and_its_mirror():
    from tapefit.model.augment import with_tta
    inputs = keras.Input((2, 3, 1))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    model.set_weights([np.random.default_rng(1).normal(size=(6, 2)).astype(np.float32),
                       np.array([0.1, -0.2], np.float32)])
    x = np.random.default_rng(0).normal(size=(4, 2, 3, 1)).astype(np.float32)
    assert with_tta(model, "") is model
    got = np.exp(keras.ops.convert_to_numpy(with_tta(model, "flip")(x)))
    soft = lambda z: np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # noqa: E731
    want = (soft(model(x).numpy()) + soft(model(x[:, :, ::-1]).numpy())) / 2
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(want, soft(model(x).numpy()))


def test_train_bn_unfreezes_batch_norm_of_the_unfrozen_blocks_only(mobilenet):
    from tapefit.model.freeze import unfreeze_batch_norm
    assert not mobilenet.get_layer("conv_pw_13_bn").trainable  # The default: frozen.
    assert unfreeze_batch_norm(mobilenet, "finetune", "block_12") == 4
    assert mobilenet.get_layer("conv_pw_13_bn").trainable
    assert mobilenet.get_layer("conv_dw_12_bn").trainable
    assert not mobilenet.get_layer("conv_pw_11_bn").trainable
    assert any("conv_pw_13_bn/gamma" == v.path for v in mobilenet.trainable_variables)


# ---- (6) gradual unfreezing -----------------------------------------------------------------
def _unfreezing_run(cfg):
    from tapefit.loops import phases
    seen = []

    def hooks(module):
        def begin(epoch, logs=None):
            model = hook.model
            seen.append(({v.path.split("/")[0] for v in model.trainable_variables},
                         {v.path: v.numpy().copy() for v in model.weights}))
        hook = module.LambdaCallback(on_epoch_begin=begin)
        return [hook]

    model = phases.train(cfg, extra_hooks=hooks).model
    return model, seen


def test_gradual_unfreezing_trains_the_scheduled_blocks_per_epoch(tiny_config, caplog):
    from tapefit.loops import phases
    head = tiny_config.replace(backbone="vgg16", unfreeze_from=None, synthetic_examples=32,
                               batch_size=16, epochs=1, learning_rate=5e-3)
    phases.run(head)
    cfg = head.replace(phase="finetune", epochs=3, unfreeze_schedule="block5:1,block4:2",
                       feature_cache="off")
    assert cfg.resolved_unfreeze_from == "block4"
    model, seen = _unfreezing_run(cfg)
    trainable = [layers for layers, _ in seen]
    block5 = {f"block5_conv{i}" for i in (1, 2, 3)}
    block4 = {f"block4_conv{i}" for i in (1, 2, 3)}
    assert trainable == [{"logits"}, {"logits", *block5}, {"logits", *block5, *block4}]
    weights = [w for _, w in seen] + [{v.path: v.numpy() for v in model.weights}]

    def moved(name, epoch):
        return not np.array_equal(weights[epoch][name], weights[epoch + 1][name])
    assert [moved("logits/kernel", e) for e in range(3)] == [True, True, True]
    assert [moved("block5_conv3/kernel", e) for e in range(3)] == [False, True, True]
    assert [moved("block4_conv1/kernel", e) for e in range(3)] == [False, False, True]
    assert not moved("block3_conv3/kernel", 2)
    # The feature cache is re-cut at each stage, just before the lowest trainable
    # block: the same run up to float rounding (which Adam amplifies in single
    # elements whose gradient is about 0: compared by norm, a stale or misplaced cut
    # would differ by whole steps).
    import logging
    import os
    caplog.set_level(logging.INFO)
    cached, cached_seen = _unfreezing_run(cfg.replace(
        feature_cache="memory", workdir=cfg.workdir + "_cached",
        init_checkpoint=os.path.join(cfg.workdir, "head", "best.weights.h5")))
    cuts = [r.getMessage().split("cut after ")[1].split(" ")[0] for r in caplog.records
            if "cut after" in r.getMessage()]
    assert cuts == ["avg_pool", "block4_pool", "block3_pool"]
    assert [layers for layers, _ in cached_seen] == trainable
    for a, b in zip(model.weights, cached.weights):
        assert np.linalg.norm(a.numpy() - b.numpy()) <= 1e-3 * np.linalg.norm(a.numpy())


@pytest.mark.parametrize("changes, message", [
    (dict(loop="fit"), "pass --loop=custom"),
    (dict(unfreeze_from="block_12"), "drop --unfreeze_from"),
    (dict(unfreeze_schedule="block_12"), "not BLOCK:EPOCH"),
    (dict(unfreeze_schedule="block_12:1,block_12:2"), "twice"),
])
def test_unfreeze_schedule_errors(changes, message):
    values = {"phase": "finetune", "unfreeze_schedule": "block_13:0,block_12:2", **changes}
    with pytest.raises(ConfigError, match=message):
        Config(**values)


def test_a_bottom_up_schedule_is_refused_before_anything_is_written(tiny_config):
    import os

    from tapefit.loops import phases
    head = tiny_config.replace(epochs=1)
    phases.run(head)
    cfg = head.replace(phase="finetune", unfreeze_from=None,
                       unfreeze_schedule="block_12:0,block_13:2")
    with pytest.raises(ConfigError, match="from the top down"):
        phases.run(cfg)
    assert not os.path.exists(cfg.run_dir)


def test_unfreeze_schedule_must_go_from_the_top_down(mobilenet, tiny_config):
    cfg = tiny_config.replace(phase="finetune", unfreeze_from=None,
                              unfreeze_schedule="block_12:0,block_13:2")
    with pytest.raises(ConfigError, match="from the top down"):
        schedules.check_unfreeze_schedule(mobilenet, cfg)


def test_lr_find_for_the_finetune_phase_leaves_the_head_run_alone(tiny_config):
    import filecmp
    import os
    import shutil

    from tapefit.loops import phases
    cfg = tiny_config.replace(epochs=1)
    phases.run(cfg)
    best = os.path.join(cfg.workdir, "head", "best.weights.h5")
    shutil.copy(best, best + ".before")
    result = phases.run(cfg.replace(phase="lr_find", for_phase="finetune"))
    assert result["run_dir"] == os.path.join(cfg.workdir, "lr_find_finetune")
    assert all(lr > 0 for lr in result["suggestions"].values())
    assert filecmp.cmp(best, best + ".before", shallow=False)
    assert not os.path.exists(os.path.join(cfg.workdir, "finetune"))
    saved = json_load(os.path.join(result["run_dir"], "config.json"))
    assert saved["phase"] == "lr_find" and saved["for_phase"] == "finetune"


def json_load(path):
    import json
    with open(path) as f:
        return json.load(f)


def test_exact_resume_continues_the_step_schedule_and_the_mixing(tiny_config):
    """One-cycle reads the optimizer's step count and mixup the stream position: a run
    interrupted mid-epoch and resumed from its backup ends bit-identical."""
    import os

    from tapefit.loops import phases
    cfg = tiny_config.replace(backbone="vgg16", unfreeze_from=None, synthetic_examples=32,
                              batch_size=8, epochs=3, learning_rate=3e-3, dropout=0.0,
                              lr_schedule="one_cycle", augment="mixup", backup=True,
                              backup_every_steps=2)
    straight = phases.train(cfg.replace(workdir=cfg.workdir + "_straight")).model
    expected = [w.numpy() for w in straight.weights]
    batches = []

    def interrupting(module):
        def on_batch_end(batch, logs=None):
            batches.append(batch)
            if len(batches) == 7:  # Epoch 2, after the backup at its step 2.
                raise KeyboardInterrupt
        return [module.LambdaCallback(on_train_batch_end=on_batch_end)]

    with pytest.raises(KeyboardInterrupt):
        phases.train(cfg, extra_hooks=interrupting)
    assert os.path.isdir(os.path.join(cfg.run_dir, "backup"))
    resumed = phases.train(cfg).model
    assert all(np.array_equal(w.numpy(), e) for w, e in zip(resumed.weights, expected))


def test_recipe_end_to_end_through_train_py(tmp_path):
    """As a user: `--recipe=tuned` for head and finetune; config.json records the
    resolved values, an explicit flag wins."""
    import json
    import subprocess
    import sys

    from tapefit.flags.config import RECIPES
    from tests.conftest import ROOT
    common = ["--recipe=tuned", f"--workdir={tmp_path}", "--dataset=synthetic",
              "--weights=none", "--backbone=mobilenet", "--alpha=0.25", "--image_size=32",
              "--synthetic_examples=16", "--batch_size=8", "--epochs=1", "--verbose=0"]
    for phase, extra in (("head", []), ("finetune", ["--weight_decay=0.02"])):
        out = subprocess.run([sys.executable, "train.py", f"--phase={phase}", *common, *extra],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        saved = json.load(open(tmp_path / phase / "config.json"))
        expected = {**RECIPES["tuned"][phase], **({"weight_decay": 0.02} if extra else {})}
        assert {k: saved[k] for k in expected} == expected and saved["recipe"] == "tuned"


def test_the_model_holds_the_in_model_augmentations_of_the_spec(tiny_config):
    from tapefit.model import build_model
    for spec, names in (("", []), ("flip,rotate", ["augment_flip", "augment_rotate"]),
                        ("flip,mixup", ["augment_flip"]), ("cutmix", []),
                        ("randaugment", ["augment_randaugment"])):
        model = build_model(tiny_config.replace(augment=spec), 2, weights=None)
        assert [layer.name for layer in model.layers
                if layer.name.startswith("augment_")] == names
