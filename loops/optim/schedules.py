"""Learning-rate schedules, shared by both loops (the optimizer factory that uses
them: `loops.optim.optimizers.make_optimizer`).

Two kinds of schedule, one `--lr_schedule` flag:

- **Per epoch** (`constant`, `step`, `exponential`, `cosine`): a
  `schedule(epoch, lr) -> lr` function for a LearningRateScheduler hook, so the
  fit path (keras.callbacks) and the custom path (callbacks/) set the same
  learning rate at the same moment. The optimizer holds a plain rate, which
  ReduceLROnPlateau may lower.
- **Per step** (`one_cycle`, `warmup_cosine`): a
  `keras.optimizers.schedules.LearningRateSchedule` given to the optimizer as its
  learning rate, evaluated at `optimizer.iterations` in every update (so an exact
  resume continues the schedule where it stopped). No LearningRateScheduler hook
  is made for them (`is_step_schedule`): Keras refuses to set the rate of an
  optimizer built with a schedule, and the epoch hooks would fight over it;
  `--reduce_lr_on_plateau` with a step schedule is refused by `Config`.
"""
from __future__ import annotations

import dataclasses
import math

import keras

from tapefit.callbacks.base import Callback
from tapefit.flags.config import STEP_LR_SCHEDULES

# fastai's fit_one_cycle defaults.
ONE_CYCLE_PCT_START = 0.25
ONE_CYCLE_DIV = 25.0
ONE_CYCLE_DIV_FINAL = 1e5



def is_step_schedule(cfg) -> bool:
    """Per-step schedules (keras LearningRateSchedule objects inside the optimizer),
    declared in flags/config.py (`STEP_LR_SCHEDULES`)."""
    return cfg.lr_schedule in STEP_LR_SCHEDULES


def learning_rate(cfg, steps_per_epoch: int | None = None, base: float | None = None):
    """The optimizer's `learning_rate`: the initial rate `base` (None: the configuration's
    own), or a per-step schedule from it."""
    base = cfg.resolved_learning_rate if base is None else base
    if not is_step_schedule(cfg) or steps_per_epoch is None:
        return base
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.lr_schedule == "one_cycle":
        return OneCycle(base, total)
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    # Linear from 0 to `base` over the warmup steps, then a half cosine down to 0.
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=total - warmup, alpha=0.0,
        warmup_target=base, warmup_steps=warmup)


@keras.saving.register_keras_serializable(package="tapefit")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """fastai's one-cycle learning rate (`fit_one_cycle`), per step.

    Cosine from `max_lr / div` up to `max_lr` over the first `pct_start` of the
    `total_steps`, then cosine down to `max_lr / div_final`; step `i` of the phase
    is at position `i / total_steps` (fastai's `pct_train`). fastai also cycles
    Adam's beta_1 (0.95 → 0.85 → 0.95); Keras optimizers take a constant beta_1, so
    the momentum stays at its default here.
    """

    def __init__(self, max_lr, total_steps, pct_start=ONE_CYCLE_PCT_START,
                 div=ONE_CYCLE_DIV, div_final=ONE_CYCLE_DIV_FINAL):
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div = float(div)
        self.div_final = float(div_final)

    def __call__(self, step):
        ops = keras.ops
        pos = ops.cast(step, "float32") / float(self.total_steps)
        start, peak = self.max_lr / self.div, self.max_lr
        end = self.max_lr / self.div_final
        # fastai's combined_cos: pos in [0, pct) -> warm-up half, [pct, 1] -> annealing.
        up = ops.minimum(pos / self.pct_start, 1.0)
        down = ops.clip((pos - self.pct_start) / (1.0 - self.pct_start), 0.0, 1.0)
        warm = _cos(start, peak, up)
        anneal = _cos(peak, end, down)
        return ops.where(pos < self.pct_start, warm, anneal)

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "div": self.div, "div_final": self.div_final}


def _cos(start, end, pos):
    """fastai's sched_cos: from `start` (pos 0) to `end` (pos 1) along half a cosine."""
    return start + (1.0 + keras.ops.cos(math.pi * (1.0 - pos))) * (end - start) / 2.0


def one_cycle_reference(max_lr, total_steps, step, pct_start=ONE_CYCLE_PCT_START,
                        div=ONE_CYCLE_DIV, div_final=ONE_CYCLE_DIV_FINAL) -> float:
    """fastai's formula in plain Python (float64), for tests and plots."""
    pos = step / total_steps

    def cos(a, b, p):
        return a + (1 + math.cos(math.pi * (1 - p))) * (b - a) / 2

    if pos < pct_start:
        return cos(max_lr / div, max_lr, pos / pct_start)
    return cos(max_lr, max_lr / div_final, min((pos - pct_start) / (1 - pct_start), 1.0))


@dataclasses.dataclass(frozen=True)
class EpochSchedule:
    """Picklable per-epoch schedule; `constant` keeps the current rate so that
    plateau reductions persist."""

    kind: str
    initial: float
    decay_rate: float
    decay_epochs: int
    epochs: int

    def __call__(self, epoch: int, lr: float) -> float:
        if self.kind == "constant":
            return lr
        if self.kind == "step":
            return self.initial * self.decay_rate ** (epoch // self.decay_epochs)
        if self.kind == "exponential":
            return self.initial * self.decay_rate ** (epoch / self.decay_epochs)
        if self.kind == "cosine":
            return 0.5 * self.initial * (1.0 + math.cos(math.pi * epoch / max(self.epochs, 1)))
        raise ValueError(f"unknown schedule {self.kind!r}")


def make_schedule(cfg, base: float | None = None) -> EpochSchedule:
    """The per-epoch schedule (for a step schedule: `constant`, which leaves the
    optimizer's rate alone; `is_step_schedule` tells the runners to make no
    LearningRateScheduler at all)."""
    kind = "constant" if is_step_schedule(cfg) else cfg.lr_schedule
    base = cfg.resolved_learning_rate if base is None else base
    return EpochSchedule(kind, base, cfg.lr_decay_rate,
                         max(cfg.lr_decay_epochs, 1), cfg.epochs)


class UnfreezeSchedule(Callback):
    """Gradual unfreezing (`--unfreeze_schedule=block5:0,block4:2`, custom loop only):
    at the start of each epoch the blocks whose epoch has come train (and everything
    after them); before the first block's epoch only the head trains.

    The phase is built with the union of all stages trainable (`Config.
    resolved_unfreeze_from` is the block unfrozen last), so the optimizer holds the
    slots of every weight that will train. At a stage change the hook sets the new
    trainable layers and calls `on_change(epoch)`: the runner re-cuts the frozen-prefix
    feature cache just before the new lowest trainable block (its features computed
    once more, from the images) and the loop traces its steps again for the new
    trainable set and input (`CustomLoop.switch_data`); without the cache the loop only
    traces again. Stateless: the stage is a function of the epoch, so a resumed run is
    in the right stage. fit() cannot change the trainable set mid-fit: `Config`
    refuses `--loop=fit`.
    """

    def __init__(self, model, cfg, on_change):
        super().__init__()
        from tapefit.model import first_trainable_position
        self.net, self.cfg, self.on_change = model, cfg, on_change
        self.stages = check_unfreeze_schedule(model, cfg)
        self.position = {name: first_trainable_position(model, name)
                         for name, _ in self.stages}
        self.current = None
        self.history = []  # (epoch, unfreeze_from or None) at each change.

    def stage(self, epoch: int):
        """The lowest block that trains at `epoch` (None: the head only)."""
        started = [name for name, start in self.stages if start <= epoch]
        return min(started, key=self.position.get) if started else None

    def apply(self, epoch: int) -> bool:
        """Makes the layers of `epoch`'s stage trainable; whether they changed."""
        unfreeze_from = self.stage(epoch)
        if self.history and unfreeze_from == self.current:
            return False
        from tapefit.model import set_trainable
        set_trainable(self.net, "finetune" if unfreeze_from else "head", unfreeze_from,
                      train_bn=self.cfg.train_bn)
        self.current = unfreeze_from
        self.history.append((epoch, unfreeze_from))
        return True

    def on_epoch_begin(self, epoch, logs=None):
        if self.apply(epoch):
            self.on_change(epoch)


def check_unfreeze_schedule(model, cfg) -> list[tuple[str, int]]:
    """The schedule's stages; blocks lower in the model must come at later epochs."""
    from tapefit.flags.config import parse_unfreeze_schedule
    from tapefit.flags.errors import ConfigError
    from tapefit.model import first_trainable_position
    stages = parse_unfreeze_schedule(cfg.unfreeze_schedule)
    ordered = sorted(stages, key=lambda s: -first_trainable_position(model, s[0]))
    epochs = [epoch for _, epoch in ordered]
    if epochs != sorted(epochs):
        raise ConfigError(f"--unfreeze_schedule={cfg.unfreeze_schedule}: a lower block would "
                          "train before a higher one; unfreeze from the top down, e.g. "
                          "block5:0,block4:2")
    return stages
