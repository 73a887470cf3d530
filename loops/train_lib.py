"""One phase of the recipe (head, finetune or evaluate), through either loop.

A phase reads top to bottom, like Flax's `train_and_evaluate`:

    plan = make_plan(cfg)            # resolve and check everything; nothing written
    with locked(plan):               # one process per run directory
        prepare(plan)                # the run-directory decision, config.json, classes.json
        runner = RUNNERS[cfg.loop](plan)
        logs = runner.fit(*runner.data(), runner.hooks())
        finish(plan, runner)         # final weights (never non-finite), backup removed

Entry points turn flags into a `Config` and call `run(cfg)`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import shutil

import keras

import input_pipeline
from callbacks.atomic_io import (
    add_write_check,
    atomic_save_weights,
    atomic_write_json,
    atomic_write_text,
    check_writes,
    read_json,
)
from flags.config import Config
from flags.errors import ConfigError, RunError
from loops import run_dir as run_dir_lib
from loops.custom import make_loss, make_metrics
from loops.hooks import logs_are_finite, weights_are_finite
from loops.keras_saving import memoize_skipsets
from loops.run_dir import (
    BEST_WEIGHTS,
    CLASSES_JSON,
    CONFIG_JSON,
    DATA_JSON,
    FINAL_WEIGHTS,
    SKIPPED_FILES,
)
from loops.run_lock import check_held
from loops.runners import RUNNERS
from loops.schedules import make_optimizer
from loops.strategy import barrier, check_supported, is_chief, make_strategy, task
from loops.write_guard import guarded
from model import build_model, set_trainable

# Every atomic write (and the guard before each writing hook) first checks that this
# process still holds its run's lock: a holder taken over after a pause stops writing.
add_write_check(check_held)

EVALUATION_JSON = "evaluation.json"
SUMMARY_JSON = "summary.json"
# Fields that define the network: a finetune or evaluate run must match its head run.
ARCHITECTURE_FIELDS = ("backbone", "alpha", "image_size", "dropout", "augment")
# Data flags `--phase=evaluate` takes from the command line when given (else the
# trained run's): evaluate a trained model on other data.
EVALUATION_DATA_FIELDS = ("data_dir", "dataset", "tfds_data_dir", "test_split",
                          "max_examples_per_split")

loss_fn = make_loss  # The one loss of both loops.
__all__ = ["run", "train_phase", "make_plan", "evaluate", "build", "load_trained_model",
           "make_strategy", "make_optimizer", "is_chief", "loss_fn"]


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
            f"`train.py --phase=head --workdir={cfg.workdir}` first or pass --init_checkpoint=PATH")
    return path


def check_matches_head(cfg: Config) -> None:
    head_config = os.path.join(cfg.phase_dir("head"), CONFIG_JSON)
    if cfg.init_checkpoint or not os.path.isfile(head_config):
        return
    head = _read_run_json(head_config, "pass --init_checkpoint=PATH instead")
    from flags.config import normalise_augment  # Old config.json files hold a boolean.
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
        set_trainable(model, cfg.phase, cfg.resolved_unfreeze_from)
        if cfg.train_bn:  # --train_bn (model/augment.py until model/build.py takes it).
            from model.augment import unfreeze_batch_norm
            unfreeze_batch_norm(model, cfg.phase, cfg.resolved_unfreeze_from)
    memoize_skipsets()  # Every checkpoint of either loop saves faster (loops/keras_saving.py).
    return model


def _is_full_disk(e: BaseException) -> bool:
    text = str(e)
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or \
        "errno = 28" in text


def save_weights(model, path):
    """Atomic `model.save_weights`; a full disk is a one-line error, the old file survives."""
    try:
        atomic_save_weights(model, path)
    except Exception as e:  # h5py reports a full disk as OSError or RuntimeError.
        if _is_full_disk(e):
            raise RunError(f"no space left on the device while saving {path}; free some "
                           "space or pass another --workdir (the previous file is intact)"
                           ) from None
        raise


# ---- plan: everything resolved and checked, nothing written --------------------------
@dataclasses.dataclass
class Plan:
    cfg: Config
    run_dir: str  # Where this process writes (a temporary folder on non-chief workers).
    chief: bool
    state: run_dir_lib.RunDirState
    data_fingerprint: str
    strategy: object
    splits: input_pipeline.Splits
    steps_per_epoch: int
    model: keras.Model
    checkpoint: str | None = None
    extra_hooks: object = None  # extra_hooks(module) -> more hooks (compare.py).


def make_plan(cfg: Config, run_dir: str | None = None, extra_hooks=None) -> Plan:
    """Resolves and checks everything a training phase needs; writes nothing."""
    check_supported(cfg)
    if cfg.epochs < 1:
        raise ConfigError(f"--epochs={cfg.epochs} trains nothing; pass --epochs=1 or more")
    checkpoint = None
    if cfg.phase == "finetune":
        checkpoint = init_checkpoint(cfg)
        check_matches_head(cfg)
    run_dir = run_dir or cfg.run_dir
    chief = is_chief(cfg.strategy)
    if chief:
        run_dir_lib.check_writable(cfg.workdir)
        run_dir_lib.check_not_running(run_dir)
    run_dir_lib.check_cache_dirs(cfg)
    fingerprint = input_pipeline.data_fingerprint(cfg)
    state = run_dir_lib.inspect(cfg, run_dir, fingerprint, writer=chief)
    configure_determinism(cfg)
    strategy = make_strategy(cfg.strategy)
    if not chief:
        task_type, index, _ = task()
        run_dir = run_dir_lib.worker_run_dir(cfg, run_dir, f"{task_type}{index}")
    # Every worker has read the chief's backup (the chief may go on), the same one.
    if not barrier(strategy, run_dir_lib.backup_token(cfg, run_dir)):
        raise ConfigError(
            f"the workers see different backups in --workdir={cfg.workdir}: to resume, "
            "--workdir must be on a file system that every worker shares")
    splits = input_pipeline.load_splits(cfg)
    steps_per_epoch = math.ceil(splits.sizes["train"] / cfg.batch_size)
    if steps_per_epoch % cfg.steps_per_execution:
        # fit() would run whole executions across the epoch boundary, shifting epochs.
        raise ConfigError(
            f"--steps_per_execution={cfg.steps_per_execution} does not divide the "
            f"{steps_per_epoch} steps of an epoch; pass a divisor of {steps_per_epoch}")
    model = build(cfg, strategy, len(splits.class_names), checkpoint)
    if cfg.unfreeze_schedule:  # The blocks' order needs the model; checked before writing.
        from loops.schedules import check_unfreeze_schedule
        check_unfreeze_schedule(model, cfg)
    return Plan(cfg, run_dir, chief, state, fingerprint, strategy, splits, steps_per_epoch,
                model, checkpoint, extra_hooks)


# ---- prepare: the only place a phase starts writing ----------------------------------
@contextlib.contextmanager
def locked(plan: Plan):
    """Holds the run directory's lock (the chief's; other workers write temporary ones)."""
    if not plan.chief:
        yield
        return
    from loops.run_lock import RunLock
    os.makedirs(os.path.dirname(run_dir_lib.lock_path(plan.run_dir)), exist_ok=True)
    with RunLock(run_dir_lib.lock_path(plan.run_dir), what="run directory",
                 subject=plan.run_dir):
        try:
            yield
        except Exception:
            # Paused inside a hook's write (Keras' own write straight to disk) and taken
            # over: whatever failed next, the cause is the lost lock (one line).
            check_held()
            raise


def prepare(plan: Plan) -> None:
    cfg, run_dir, splits = plan.cfg, plan.run_dir, plan.splits
    run_dir_lib.prepare(run_dir, plan.state)
    atomic_write_json(os.path.join(run_dir, CONFIG_JSON), cfg.to_dict())
    atomic_write_json(os.path.join(run_dir, CLASSES_JSON), list(splits.class_names))
    atomic_write_json(os.path.join(run_dir, DATA_JSON), {"fingerprint": plan.data_fingerprint})
    if splits.skipped:
        atomic_write_text(os.path.join(run_dir, SKIPPED_FILES), "\n".join(splits.skipped) + "\n")
        logging.warning("skipped %d unreadable files, e.g. %s (full list in %s)",
                        len(splits.skipped), splits.skipped[0],
                        os.path.join(run_dir, SKIPPED_FILES))
    if plan.state.position is not None:
        logging.info("resuming from the backup at epoch %d, step %d",
                     plan.state.position.epoch + 1, plan.state.position.step)


# ---- finish ---------------------------------------------------------------------------
def finish(plan: Plan, runner, logs=None) -> bool:
    """The final weights, then the backup goes (a kill before the final save resumes
    from it). Non-finite weights (a run stopped on NaN) are never saved: the run says
    so, and `best.weights.h5` stays the last finite epoch's (or is absent). Returns
    whether the final weights were saved."""
    run_dir = plan.run_dir
    finite = weights_are_finite(plan.model) and logs_are_finite(logs)
    if finite:
        save_weights(plan.model, os.path.join(run_dir, FINAL_WEIGHTS))
    else:
        best = os.path.join(run_dir, BEST_WEIGHTS)
        kept = (f"{best} holds the last finite epoch's weights" if os.path.exists(best)
                else "no checkpoint was written")
        from loops.console import divergence_advice
        logging.warning("training diverged: a loss or weight is NaN or infinite, so %s is not "
                        "written (%s); %s, and --overwrite", FINAL_WEIGHTS, kept,
                        divergence_advice(plan.cfg))
    check_writes()  # Not another process's backup (a lost lock).
    runner.delete_backup()
    if not plan.chief:
        shutil.rmtree(run_dir, ignore_errors=True)
    return finite


def _train_phase(cfg: Config, run_dir: str | None = None, extra_hooks=None):
    from loops.lr_find import resolve_learning_rate
    cfg = resolve_learning_rate(cfg)  # --learning_rate=auto: the finder's suggestion.
    plan = make_plan(cfg, run_dir, extra_hooks)
    with locked(plan):
        if plan.chief:  # Another process may have used the directory since the plan.
            state = run_dir_lib.inspect(cfg, plan.run_dir, plan.data_fingerprint)
            if state != plan.state:
                raise RunError(f"{plan.run_dir} changed while this run was starting (another "
                               "process ran in it); run the command again")
        prepare(plan)
        runner = RUNNERS[cfg.loop](plan)
        logs = runner.fit(*runner.data(), guarded(runner.hooks(), runner.module))
        saved = finish(plan, runner, logs)
        summary = runner.summary(logs)
        if not saved:
            from loops.console import divergence_advice
            summary["files"]["final"] = None
            summary["stop_reason"] = "nan"
            summary["advice"] = divergence_advice(cfg)
        if plan.chief:
            atomic_write_json(os.path.join(plan.run_dir, SUMMARY_JSON), summary)
    return plan, summary, logs


def train_phase(cfg: Config, run_dir: str | None = None, extra_hooks=None):
    """Trains one phase; returns (model, last epoch logs).

    `run_dir` overrides <workdir>/<phase> (compare.py runs both loops side by side);
    `extra_hooks(module)` returns more hooks built from `callbacks` (custom loop) or
    `keras.callbacks` (fit loop), appended after the configured ones.
    Under --strategy=multi_worker only the chief writes `run_dir`; the other
    workers run the same steps and hooks in a temporary directory.
    """
    plan, _, logs = _train_phase(cfg, run_dir, extra_hooks)
    return plan.model, logs


def train(cfg: Config) -> dict:
    """Runs the head or finetune phase in <workdir>/<phase>; returns its summary."""
    return _train_phase(cfg)[1]


# ---- evaluate ---------------------------------------------------------------------------
def newest_phase(workdir: str) -> str:
    for phase in ("finetune", "head"):
        if os.path.isfile(os.path.join(workdir, phase, BEST_WEIGHTS)):
            return phase
    raise ConfigError(
        f"no trained weights in {workdir}: run `train.py --phase=head --workdir={workdir}` first")


def trained_config(workdir: str, phase: str) -> tuple[Config, list[str]]:
    run_dir = os.path.join(workdir, phase)
    fix = f"retrain with `train.py --phase={phase} --workdir={workdir} --overwrite`"
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
    run_dir = os.path.join(workdir, phase)
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
    cfg, class_names = trained_config(workdir, phase)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, len(class_names), weights=None)
    weights, note = scored_weights(workdir, phase, cfg)
    load_weights(model, weights)
    check_finite(model, weights, f"train the {phase} phase again: `train.py --phase={phase} "
                 f"--workdir={workdir} --overwrite`")
    return model, cfg, class_names, phase, weights, note


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
        given.update({f: getattr(cfg, f) for f in ("test_split", "max_examples_per_split")})
    return trained.replace(phase="evaluate", workdir=cfg.workdir, **given)


def evaluate(cfg: Config) -> dict:
    """Evaluates the newest phase (its weights: `scored_weights`) on the test split (the
    trained run's, or the data named by --data_dir / --dataset / --test_split)."""
    from loops.custom import CustomLoop
    from loops.run_lock import RunLock

    if is_chief(cfg.strategy):
        run_dir_lib.check_writable(cfg.workdir)
        run_dir_lib.check_not_running(cfg.run_dir)
    run_dir_lib.check_cache_dirs(cfg)
    configure_determinism(cfg)
    model, trained, class_names, phase, weights, weights_note = load_trained(cfg.workdir)
    data_cfg = evaluation_data(cfg, trained)
    from input_pipeline.evaluation import load_test_split_with_ids
    test, size, data_classes, example_ids = load_test_split_with_ids(data_cfg)
    if tuple(data_classes) != tuple(class_names):
        raise ConfigError(
            f"the evaluation data's classes {list(data_classes)} differ from the trained ones "
            f"{class_names}; pass data with one folder per trained class")
    batches = input_pipeline.eval_batches(test, cfg.batch_size)
    if cfg.tta:  # --tta=flip: the averaged predictions of each image and its mirror.
        from model.augment import with_tta
        model = with_tta(model, cfg.tta)
    if cfg.loop == "fit":
        model.compile(loss=make_loss(), metrics=make_metrics(), jit_compile=cfg.jit_compile)
        logs = model.evaluate(batches, return_dict=True, verbose=0)
    else:
        logs = CustomLoop(model, make_optimizer(trained)).evaluate(batches)
    # Per-example predictions (predictions.npz), for paired comparisons of runs (sweep.py).
    from loops import predictions
    per_example = predictions.predict(model, batches) if is_chief(cfg.strategy) else None
    data = data_cfg.data_dir or f"{data_cfg.dataset}:{data_cfg.test_split}"
    result = {"phase": "evaluate", "trained_phase": phase, "workdir": cfg.workdir,
              "weights": weights, "weights_note": weights_note,
              "data": data, "test_examples": size, **({"tta": cfg.tta} if cfg.tta else {}),
              **{k: float(v) for k, v in logs.items()},
              "files": {"evaluation": os.path.join(cfg.run_dir, EVALUATION_JSON)},
              "command_flags": [f"--workdir={cfg.workdir}"]}
    if is_chief(cfg.strategy):
        os.makedirs(cfg.workdir, exist_ok=True)
        with RunLock(run_dir_lib.lock_path(cfg.run_dir), what="run directory",
                     subject=cfg.run_dir):
            os.makedirs(cfg.run_dir, exist_ok=True)
            # Before evaluation.json, which marks the phase done.
            predictions.write(os.path.join(cfg.run_dir, predictions.PREDICTIONS_NPZ),
                              *per_example, predictions.split_description(data_cfg),
                              data_cfg.image_size, class_names, ids=example_ids)
            atomic_write_json(os.path.join(cfg.run_dir, EVALUATION_JSON),
                       {k: v for k, v in result.items() if k not in ("files", "command_flags")})
            atomic_write_json(os.path.join(cfg.run_dir, SUMMARY_JSON), result)
    return result


def run(cfg: Config) -> dict:
    """The phase cfg names; returns its summary. A full disk anywhere (checkpoints,
    logs) is a one-line error."""
    try:
        if cfg.phase == "lr_find":
            from loops import lr_find
            return lr_find.run(cfg)
        return evaluate(cfg) if cfg.phase == "evaluate" else train(cfg)
    except OSError as e:
        if _is_full_disk(e):
            sizes = f": {e.strerror.split(': ', 1)[1]}" if ": " in (e.strerror or "") else ""
            raise RunError(f"no space left on the device ({e.filename or cfg.workdir}{sizes}); "
                           "free some space or pass another --workdir; files saved "
                           "earlier are intact") from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise RunError(f"cannot write {e.filename or cfg.workdir} ({e.strerror}); pass a "
                           "writable --workdir") from None
        raise
