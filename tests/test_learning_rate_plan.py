"""The learning rate is resolved once, into the plan (issue 29): `Plan.learning_rate` is
--learning_rate, or the phase's default (the recipe's when it sets one), and the
optimizer and the per-epoch schedule both start from it."""
import pytest

from tapefit.callbacks import LearningRateScheduler
from tapefit.flags.config import HEAD_LEARNING_RATE, Config
from tapefit.loops import phases
from tapefit.loops.training.runners import CustomRunner


@pytest.mark.parametrize("changes,expected", [
    ({}, HEAD_LEARNING_RATE),
    ({"learning_rate": 0.02}, 0.02),
    ({"recipe": "tuned"}, 1e-2),  # The tuned recipe's head rate.
])
def test_the_plan_holds_the_rate_the_optimizer_and_the_schedule_start_from(
        tiny_config, changes, expected):
    values = {**tiny_config.to_dict(), **changes}
    given = set(tiny_config.to_dict()) - {"learning_rate", "lr_schedule", "label_smoothing"}
    cfg = Config(**{k: v for k, v in values.items() if k in given | set(changes)})
    plan = phases.make_plan(cfg)
    assert plan.learning_rate == pytest.approx(expected)
    runner = CustomRunner(plan)
    rate = runner.optimizer.learning_rate
    initial = float(rate(0)) if callable(rate) else float(rate.numpy())
    if cfg.lr_schedule == "one_cycle":  # Starts at the peak / 25 (fastai's div).
        assert initial == pytest.approx(expected / 25, rel=1e-5)
    else:
        assert initial == pytest.approx(expected, rel=1e-6)
        schedulers = [h for h in runner.hooks() if isinstance(h, LearningRateScheduler)]
        assert [s.schedule.initial for s in schedulers] == [pytest.approx(expected)]



def test_the_optimizer_and_the_schedule_read_the_plans_rate_not_the_configs(tiny_config):
    """The plan is the one place: a runner built on a plan whose rate differs from the
    configuration's starts from the plan's."""
    plan = phases.make_plan(tiny_config)
    plan.learning_rate = 0.123
    runner = CustomRunner(plan)
    assert float(runner.optimizer.learning_rate.numpy()) == pytest.approx(0.123)
    schedulers = [h for h in runner.hooks() if isinstance(h, LearningRateScheduler)]
    assert [s.schedule.initial for s in schedulers] == [pytest.approx(0.123)]
