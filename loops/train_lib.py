"""The library a phase calls (loops/phases.py runs the phases): seeding, building the
model from a config (its checkpoint, frozen layers and checks), saving weights, and
reading a trained phase back (`load_trained`, for evaluate and predict.py).

It imports no orchestration (phases, runners): both build on it.
"""
from __future__ import annotations

import errno
import logging
import os

import keras

from tapefit.callbacks.atomic_io import atomic_save_weights
from tapefit.flags.config import ARCHITECTURE, EVALUATION_DATA, Config, fields_with
from tapefit.flags.errors import ConfigError, RunError
from tapefit.layout.atomic import add_write_check, read_json
from tapefit.layout.paths import (
    BEST_WEIGHTS,
    CLASSES_JSON,
    CONFIG_JSON,
    FINAL_WEIGHTS,
    phase_dir,
    run_file,
)
from tapefit.loops.optim.optimizers import make_optimizer
from tapefit.loops.rundir.run_lock import check_held
from tapefit.loops.training.custom import make_loss
from tapefit.loops.training.hooks import weights_are_finite
from tapefit.loops.training.keras_saving import memoize_skipsets
from tapefit.loops.training.strategy import is_chief, make_strategy
from tapefit.model import build_model, set_trainable

# Every atomic write (and the guard before each writing hook) first checks that this
# process still holds its run's lock: a holder taken over after a pause stops writing.
add_write_check(check_held)

# Fields that define the network: a finetune or evaluate run must match its head run.
ARCHITECTURE_FIELDS = fields_with(ARCHITECTURE)
# Data flags `--phase=evaluate` takes from the command line when given (else the
# trained run's): evaluate a trained model on other data.
EVALUATION_DATA_FIELDS = fields_with(EVALUATION_DATA)
# Of those, the ones that pick a subset of a source (its split, how many examples):
# evaluating on another source, the trained run's subset of its own data does not apply.
EVALUATION_SUBSET_FIELDS = tuple(f for f in EVALUATION_DATA_FIELDS
                                 if f not in ("dataset", "data_dir", "tfds_data_dir"))

loss_fn = make_loss  # The one loss of both loops.
__all__ = ["build", "load_trained", "load_trained_model", "make_strategy", "make_optimizer",
           "is_chief", "loss_fn"]


# ---- small helpers -------------------------------------------------------------------
def configure_determinism(cfg: Config) -> None:
    """Seeds Python, NumPy, TF and Keras; with --deterministic also makes TF ops deterministic."""
    import tensorflow as tf
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy(cfg.mixed_precision)


def _read_run_json(path: str, fix: str):
    try:
        return read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing; {fix}") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}); {fix}") from None


def init_checkpoint(cfg: Config) -> str:
    """The weights a finetune run starts from, or a one-line error."""
    path = cfg.init_checkpoint or os.path.join(cfg.phase_dir("head"), BEST_WEIGHTS)
    if not os.path.isfile(path):
        raise ConfigError(
            f"finetune needs head weights, but {path} does not exist: run "
            f"`tapefit train --phase=head --workdir={cfg.workdir}` first or pass "
            "--init_checkpoint=PATH")
    return path


def check_matches_head(cfg: Config) -> None:
    head_config = os.path.join(cfg.phase_dir("head"), CONFIG_JSON)
    if cfg.init_checkpoint or not os.path.isfile(head_config):
        return
    head = _read_run_json(head_config, "pass --init_checkpoint=PATH instead")
    from tapefit.flags.config import normalise_augment  # Old config.json files hold a boolean.
    head = {**head, "augment": normalise_augment(head.get("augment"))}
    diffs = [f"--{k}={getattr(cfg, k)} (head: {head.get(k)})"
             for k in ARCHITECTURE_FIELDS if head.get(k) != getattr(cfg, k)]
    if diffs:
        raise ConfigError(
            f"finetune flags differ from the head run in {head_config}: {', '.join(diffs)}; "
            "pass the head run's values")


def load_weights(model, path):
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as e:
        raise ConfigError(
            f"checkpoint {path} does not fit this model ({str(e).splitlines()[0][:160]}); "
            "pass the flags of the run that wrote it") from None


def check_finite(model, path, fix="pass another checkpoint"):
    """Weights loaded from `path` are finite, or a one-line error. tapefit never saves
    non-finite weights (`finish`, the finite-only checkpoints), so such a file was
    written elsewhere or damaged: no learning rate is to blame."""
    if not weights_are_finite(model):
        raise ConfigError(f"the weights in {path} hold NaN or infinite values (tapefit never "
                          f"saves such weights: the file was written elsewhere or damaged); "
                          f"{fix}")


def check_backbone_finite(model, cfg: Config) -> None:
    """The backbone weights of --weights (a file, or Keras' ImageNet download) are
    finite: checked before anything trains, since NaN weights make every loss NaN."""
    if weights_are_finite(model):
        return
    if cfg.weights == "imagenet":
        raise ConfigError(f"the ImageNet weights of {cfg.backbone} in Keras' cache "
                          "(~/.keras/models, or $KERAS_HOME/models) hold NaN or infinite "
                          "values; delete that file so that Keras downloads it again")
    raise ConfigError(f"--weights={cfg.weights} holds NaN or infinite values; pass a file of "
                      "finite backbone weights, --weights=imagenet or --weights=none")


def build(cfg: Config, strategy, num_classes: int, checkpoint: str | None = None):
    """Seeds right before building (Keras draws layer seeds at construction)."""
    keras.utils.set_random_seed(cfg.seed)
    with strategy.scope():
        model = build_model(cfg, num_classes, weights=None if checkpoint else "from_config")
        if checkpoint:
            load_weights(model, checkpoint)
            check_finite(model, checkpoint, "pass another --init_checkpoint, or train the "
                         "head phase again (with --overwrite)")
        elif cfg.weights != "none":
            check_backbone_finite(model, cfg)
        set_trainable(model, cfg.phase, cfg.resolved_unfreeze_from, train_bn=cfg.train_bn)
    # Every checkpoint of either loop saves faster (loops/training/keras_saving.py).
    memoize_skipsets()
    return model


def is_full_disk(e: BaseException) -> bool:
    text = str(e)
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or \
        "errno = 28" in text


def save_weights(model, path):
    """Atomic `model.save_weights`; a full disk is a one-line error, the old file survives."""
    try:
        atomic_save_weights(model, path)
    except Exception as e:  # h5py reports a full disk as OSError or RuntimeError.
        if is_full_disk(e):
            raise RunError(f"no space left on the device while saving {path}; free some "
                           "space or pass another --workdir (the previous file is intact)"
                           ) from None
        raise


# ---- a trained phase, for evaluate and predict -------------------------------------------
def newest_phase(workdir: str) -> str:
    for phase in ("finetune", "head"):
        if os.path.isfile(run_file(workdir, phase, BEST_WEIGHTS)):
            return phase
    raise ConfigError(
        f"no trained weights in {workdir}: run `tapefit train --phase=head "
        f"--workdir={workdir}` first")


def trained_config(workdir: str, phase: str) -> tuple[Config, list[str]]:
    run_dir = phase_dir(workdir, phase)
    fix = f"retrain with `tapefit train --phase={phase} --workdir={workdir} --overwrite`"
    try:
        cfg = Config.from_dict(_read_run_json(os.path.join(run_dir, CONFIG_JSON), fix))
    except (TypeError, AttributeError, ConfigError) as e:
        raise ConfigError(f"{os.path.join(run_dir, CONFIG_JSON)} is not a tapefit config "
                          f"({str(e)[:100]}); {fix}") from None
    classes = _read_run_json(os.path.join(run_dir, CLASSES_JSON), fix)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"{os.path.join(run_dir, CLASSES_JSON)} is not a list of class "
                          f"names; {fix}")
    return cfg, classes


def scored_weights(workdir: str, phase: str, cfg: Config) -> tuple[str, str]:
    """The weights file evaluate and predict score for a trained phase, and what they
    are: the best epoch's (`best.weights.h5`); with --ema the phase's moving average,
    which only the end of the phase writes (`final.weights.h5`; the checkpoints during
    the phase hold the raw weights). A phase without final weights (killed, still
    running, or stopped on NaN) is unfinished: its best checkpoint so far, logged."""
    run_dir = phase_dir(workdir, phase)
    best, final = os.path.join(run_dir, BEST_WEIGHTS), os.path.join(run_dir, FINAL_WEIGHTS)
    if os.path.isfile(final):
        if cfg.ema:
            return final, f"EMA weights (--ema={cfg.ema})"
        return best, "best epoch"
    note = "unfinished: its best checkpoint so far" + (
        " (raw weights, not the --ema average)" if cfg.ema else "")
    logging.warning("the %s phase in %s is unfinished (no %s): scoring %s, %s", phase,
                    run_dir, FINAL_WEIGHTS, best, note.removeprefix("unfinished: "))
    return best, note


def load_trained(workdir: str):
    """The newest phase's model with the weights `scored_weights` names: (model, config,
    class names, phase, weights path, what the weights are)."""
    phase = newest_phase(workdir)
    check_trial_identity(workdir, ("head", "finetune"))
    cfg, class_names = trained_config(workdir, phase)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, len(class_names), weights=None)
    weights, note = scored_weights(workdir, phase, cfg)
    load_weights(model, weights)
    check_finite(model, weights, f"train the {phase} phase again: `tapefit train --phase={phase} "
                 f"--workdir={workdir} --overwrite`")
    return model, cfg, class_names, phase, weights, note


def check_trial_identity(workdir: str, phases) -> None:
    """A study trial's folder (it holds trial.json) is read only when the phases it reaches
    are the runs it names (flags/identity.py: a link to another seed's run, a head of other
    photos): one line otherwise."""
    from tapefit.research.trial_files import identity_problems  # Pure Python.
    problems = identity_problems(workdir, phases)
    if problems:
        raise ConfigError(f"{workdir} is a study trial whose {problems[0]}; remove that "
                          "phase's link or folder in the trial and run the sweep again (it is "
                          "linked to its own run or run again), or pass another --workdir")


def load_trained_model(workdir: str):
    """The newest phase's model (weights: `scored_weights`), its config and class names."""
    return load_trained(workdir)[:4]


def evaluation_data(cfg: Config, trained: Config) -> Config:
    """The trained run's data config with the data flags given on this command line."""
    default = Config()
    given = {f: getattr(cfg, f) for f in EVALUATION_DATA_FIELDS
             if getattr(cfg, f) != getattr(default, f)}
    if "dataset" in given and "data_dir" not in given:  # Another source than a folder.
        given["data_dir"] = None
    if {"dataset", "data_dir"} & set(given):
        # Other data: the trained run's subset of its own data does not apply.
        given.update({f: getattr(cfg, f) for f in EVALUATION_SUBSET_FIELDS})
    return trained.replace(phase="evaluate", workdir=cfg.workdir, **given)
