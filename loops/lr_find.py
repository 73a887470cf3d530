"""fastai's learning-rate finder: `python train.py --phase=lr_find --for_phase=head|finetune`.

The phase named by `--for_phase` is set up exactly as training it would be (its
model, frozen layers, checkpoint, optimizer and loss; in the head phase the
frozen-prefix feature cache, so the finder costs about one frozen pass over the
training images plus 100 steps of the head). Then, as fastai's `LRFinder`:

- the learning rate of step i (i = 0 … 99) is 1e-7 · (10 / 1e-7) ** (i / 100);
- the training loss of each step is smoothed, avg = β·avg + (1 − β)·loss with
  β = 0.98, and debiased, smoothed = avg / (1 − β^(i + 1));
- it stops after the step whose smoothed loss exceeds 4× the best one so far (or is
  not finite);
- the suggestions come from the smoothed curve without its first 10 and last 5
  points: `valley` (half way into the longest decreasing stretch), `steep` (the
  steepest descent in log(lr)) and `minimum` (a tenth of the rate at the lowest loss).

Model weights and optimizer state are restored afterwards. The phase itself
(`loops.phases.lr_find`: plan, lock, prepare, run, finish like every phase) writes
`<workdir>/lr_find_<phase>/{lr_find.csv, lr_find.png, suggestions.json, config.json,
summary.json}` with `write_csv`, `plot` and `suggestions`; its console summary is
`loops.console.summary_text`. A later `--learning_rate=auto` (see
`resolve_learning_rate`) trains that phase at the suggestion `--lr_suggestion` names.

This module is the algorithm and its files: of loops/ it imports only `loops.rundir.run_dir`
(which imports nothing of the phases).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os

import numpy as np

from tapefit.flags.config import FINDER, LR_SUGGESTIONS, Config, fields_with
from tapefit.flags.errors import ConfigError, RunError
from tapefit.layout.atomic import atomic_save, atomic_write_json, atomic_write_text, read_json
from tapefit.layout.paths import (
    CONFIG_JSON,
    LR_FIND_CSV,
    LR_FIND_PNG,
    SUGGESTIONS_JSON,
    lr_find_dir,
)

START_LR = 1e-7
END_LR = 10.0
NUM_IT = 100
BETA = 0.98
STOP_FACTOR = 4.0
SKIP_START_FRACTION = 10  # fastai drops the first num_it // 10 points ...
SKIP_END = 5  # ... and the last 5 before suggesting.
SUGGESTIONS = LR_SUGGESTIONS  # ("valley", "steep", "minimum"): --lr_suggestion's choices.


# ---- the algorithm (no TensorFlow) ---------------------------------------------------------
def ramp(step: int, start=START_LR, end=END_LR, num_it=NUM_IT) -> float:
    """fastai's exponential schedule: start · (end / start) ** (step / num_it)."""
    return start * (end / start) ** (step / num_it)


@dataclasses.dataclass
class Curve:
    lrs: list
    losses: list  # Raw loss of each step.
    smoothed: list  # Smoothed and debiased.
    stopped_early: bool


def find(step_fn, num_it=NUM_IT, start=START_LR, end=END_LR, beta=BETA,
         stop_factor=STOP_FACTOR) -> Curve:
    """Runs `step_fn(lr) -> loss` (one training step at rate lr) along the ramp."""
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    for i in range(num_it):
        lr = ramp(i, start, end, num_it)
        loss = float(step_fn(lr))
        avg = beta * avg + (1 - beta) * loss
        smooth = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(smooth)
        if smooth < best:
            best = smooth
        if not math.isfinite(smooth) or smooth > stop_factor * best:
            return Curve(lrs, losses, smoothed, True)
    return Curve(lrs, losses, smoothed, False)


def suggestion_window(curve: Curve, num_it=NUM_IT):
    """fastai's window: the smoothed curve without its first num_it // 10 and last 5
    points, cut before the first non-finite value (the whole curve when that leaves
    fewer than 2 points, e.g. a run that diverged at once)."""
    lrs = np.asarray(curve.lrs[num_it // SKIP_START_FRACTION:-SKIP_END], np.float64)
    losses = np.asarray(curve.smoothed[num_it // SKIP_START_FRACTION:-SKIP_END], np.float64)
    if len(lrs) < 2:
        lrs, losses = np.asarray(curve.lrs), np.asarray(curve.smoothed)
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        lrs, losses = lrs[:bad[0]], losses[:bad[0]]
    return lrs, losses


def valley(lrs, losses) -> float:
    """fastai's `valley`: the longest decreasing subsequence of the losses; the rate
    about half way into it (start + ⌊len/3⌋ + ⌊len/6⌋, as fastai computes it)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def steep(lrs, losses) -> float:
    """fastai's `steep`: the rate where the loss falls fastest in log(lr)."""
    grads = (losses[1:] - losses[:-1]) / (np.log(lrs[1:]) - np.log(lrs[:-1]))
    return float(lrs[int(np.argmin(grads))])


def minimum(lrs, losses) -> float:
    """fastai's `minimum`: a tenth of the rate at the lowest loss."""
    return float(lrs[int(np.argmin(losses))]) / 10


def suggestions(curve: Curve, num_it=NUM_IT) -> dict:
    lrs, losses = suggestion_window(curve, num_it)
    if len(lrs) < 2:
        raise RunError(f"the loss diverged after {len(curve.lrs)} step(s) of the learning-rate "
                       "finder, too few to suggest a rate; check the data and --weights")
    return {"valley": valley(lrs, losses), "steep": steep(lrs, losses),
            "minimum": minimum(lrs, losses)}


# ---- files ------------------------------------------------------------------------------
def write(out_dir: str, cfg, curve: Curve, found: dict, summary_name: str) -> dict:
    """The finder's files in `out_dir`, every one at the end (a failed finder leaves the
    previous run's files, config.json and suggestions.json together); returns the summary
    (also written to `summary_name`)."""
    atomic_write_json(os.path.join(out_dir, CONFIG_JSON), cfg.to_dict())
    write_csv(curve, os.path.join(out_dir, LR_FIND_CSV))
    plot(curve, found, os.path.join(out_dir, LR_FIND_PNG),
         f"learning-rate finder, {cfg.for_phase} phase")
    result = {"phase": "lr_find", "for_phase": cfg.for_phase, "run_dir": out_dir,
              "steps": len(curve.lrs), "stopped_early": curve.stopped_early,
              "suggestions": found, "default_suggestion": cfg.lr_suggestion,
              "files": {"csv": os.path.join(out_dir, LR_FIND_CSV),
                        "plot": os.path.join(out_dir, LR_FIND_PNG),
                        "suggestions": os.path.join(out_dir, SUGGESTIONS_JSON)}}
    atomic_write_json(os.path.join(out_dir, SUGGESTIONS_JSON),
                      {k: result[k] for k in ("for_phase", "steps", "stopped_early",
                                              "suggestions")})
    atomic_write_json(os.path.join(out_dir, summary_name), result)
    return result


def write_csv(curve: Curve, path: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", "learning_rate", "loss", "smoothed_loss"])
    for i, (lr, loss, smooth) in enumerate(zip(curve.lrs, curve.losses, curve.smoothed)):
        writer.writerow([i, repr(lr), repr(loss), repr(smooth)])
    atomic_write_text(path, out.getvalue())


def plot(curve: Curve, found: dict, path: str, title: str) -> None:
    """fastai's plot: smoothed loss against log(lr), the last 5 points left out, the
    suggestions marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = -SKIP_END if len(curve.lrs) > SKIP_END + 1 else None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve.lrs[:end], curve.smoothed[:end])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    for (name, lr), marker in zip(found.items(), ("o", "v", "s")):
        i = int(np.argmin(np.abs(np.log(curve.lrs) - math.log(lr))))
        ax.plot(lr, curve.smoothed[i], marker, label=f"{name}: {lr:.2e}")
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    atomic_save(lambda tmp: fig.savefig(tmp, format="png"), path)
    plt.close(fig)


# ---- the phase it tunes --------------------------------------------------------------------
def phase_config(cfg):
    """The config of the phase the finder tunes: a constant rate the finder sets.
    With gradual unfreezing, every block the schedule names trains (its last stage)."""
    staged = ({"unfreeze_schedule": "", "unfreeze_from": cfg.resolved_unfreeze_from}
              if cfg.unfreeze_schedule else {})
    return cfg.replace(phase=cfg.for_phase, learning_rate=None, lr_schedule="constant",
                       reduce_lr_on_plateau=False, overwrite=True, **staged)


def snapshot(model, optimizer):
    return ([np.array(v.numpy()) for v in model.weights],
            [np.array(v.numpy()) for v in optimizer.variables])


def restore(model, optimizer, saved) -> None:
    weights, slots = saved
    for variable, value in zip(model.weights, weights):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, slots):
        variable.assign(value)


def find_for_loop(loop, train_data, num_it=NUM_IT, **kwargs) -> Curve:
    """The finder on a `CustomLoop` (optimizer built); weights and optimizer restored."""
    import tensorflow as tf
    optimizer = loop.optimizer
    saved = snapshot(loop.model, optimizer)
    iterator = iter(loop.strategy.experimental_distribute_dataset(train_data))
    one = tf.constant(1)

    def step(lr):
        loop.reset_metrics()  # The tracker's mean is then this batch's loss.
        optimizer.learning_rate = lr
        return loop._to_python(loop._train_function(iterator, one))["loss"]

    try:
        return find(step, num_it, **kwargs)
    finally:
        restore(loop.model, optimizer, saved)


# What the loss-vs-rate curve depends on: the model, the data, and how a step is taken.
# Not the seed (another shuffle of the same data), epochs, schedules or callbacks: the
# finder ramps the rate itself and its suggestion is the schedule's peak.
FINDER_FIELDS = fields_with(FINDER)  # Role FINDER, flags/config.py.


def finder_differences(cfg, config_path: str) -> list[str]:
    """The flags of `cfg` (the phase to train) that the finder's run (its config.json)
    had otherwise: `--flag=now (was then)`; the unfreeze point compared as resolved."""
    from tapefit.loops.rundir.run_dir import _normalised
    try:
        found = Config.from_dict(read_json(config_path))
    except FileNotFoundError:
        return [f"unknown ({config_path} is missing)"]
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
        return [f"unknown ({config_path} is unreadable: {type(e).__name__})"]
    found = phase_config(found)
    differences = [f"--{k}={getattr(cfg, k)} (was {getattr(found, k)})" for k in FINDER_FIELDS
                   if _normalised(k, getattr(cfg, k)) != _normalised(k, getattr(found, k))]
    if cfg.phase == "finetune" and found.resolved_unfreeze_from != cfg.resolved_unfreeze_from:
        differences.append(f"--unfreeze_from={cfg.resolved_unfreeze_from} "
                           f"(was {found.resolved_unfreeze_from})")
    return differences


def resolve_learning_rate(cfg):
    """`--learning_rate=auto`: the suggestion `--lr_suggestion` of the phase's finder
    run; the config then holds (and config.json records) the number."""
    if cfg.learning_rate != "auto":
        return cfg
    path = os.path.join(lr_find_dir(cfg.workdir, cfg.phase), SUGGESTIONS_JSON)
    fix = (f"run `tapefit train --phase=lr_find --for_phase={cfg.phase} --workdir={cfg.workdir}` "
           "first, or pass --learning_rate=NUMBER")
    try:
        found = read_json(path)["suggestions"]
        value = float(found[cfg.lr_suggestion])
    except FileNotFoundError:
        raise ConfigError(f"--learning_rate=auto needs {path}; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}); {fix}") from None
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{path} suggests {cfg.lr_suggestion}={value}; {fix}")
    differences = finder_differences(cfg, os.path.join(os.path.dirname(path), CONFIG_JSON))
    if differences:
        raise ConfigError(f"the learning-rate finder in {os.path.dirname(path)} ran with other "
                          f"flags: {', '.join(differences)}; run it again with this run's "
                          "flags, or pass --learning_rate=NUMBER")
    logging.info("--learning_rate=auto: %s suggestion %.3g from %s", cfg.lr_suggestion,
                 value, path)
    return cfg.replace(learning_rate=value)
