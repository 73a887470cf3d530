"""The phases, one way through each: `run(cfg)` runs the phase `cfg.phase` names.

Every phase reads top to bottom, like Flax's `train_and_evaluate`, with the same steps:

    plan = make_plan(cfg)            # resolve and check everything; nothing written
    with locked(plan):               # one process per run directory
        prepare(plan)                # the run-directory decision, config.json, classes.json
        ...                          # run: train, score, or ramp the rate
        ...                          # finish: the files that say the phase is done

(evaluate's plan is `make_evaluation_plan`; training finishes with `finish` — final weights,
never non-finite, then the backup goes — and summary.json; evaluate and the finder write all
their files at the end, so `prepare` writes nothing for them.)

- `train(cfg)`: `--phase=head|finetune` through `RUNNERS[cfg.loop]` (loops/training/runners.py);
  returns a `Trained` (its summary, model and last epoch logs).
- `evaluate(cfg)`: `--phase=evaluate`, the newest trained phase on the test split.
- `lr_find(cfg)`: `--phase=lr_find`, the learning-rate finder (loops/lr_find.py) on the
  phase `--for_phase` names, set up as training it would be (its runner, loop, loss and
  metrics).

Entry points (train.py, research/runner.py) call `run(cfg)`; compare.py and the tests
that need the trained model call `train(cfg, run_dir=..., extra_hooks=...)`. What a phase
prints is loops/console.py's; the library it calls (building and loading models, the
checks) is loops/train_lib.py's.
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

from tapefit import input_pipeline
from tapefit.flags import identity as identity_lib
from tapefit.flags.config import Config
from tapefit.flags.errors import ConfigError, RunError
from tapefit.layout.atomic import atomic_write_json, atomic_write_text, check_writes
from tapefit.layout.paths import (
    BEST_WEIGHTS,
    CLASSES_JSON,
    CONFIG_JSON,
    DATA_JSON,
    EVALUATION_JSON,
    FINAL_WEIGHTS,
    IDENTITY_JSON,
    INTERPRETATION_JSON,
    PREDICTIONS_NPZ,
    SKIPPED_FILES,
    SUMMARY_JSON,
    lr_find_dir,
)
from tapefit.loops import lr_find as finder
from tapefit.loops import predictions
from tapefit.loops.console import divergence_advice
from tapefit.loops.rundir import run_dir as run_dir_lib
from tapefit.loops.rundir.run_lock import RunLock, check_held
from tapefit.loops.rundir.write_guard import guarded
from tapefit.loops.train_lib import (
    build,
    check_matches_head,
    configure_determinism,
    evaluation_data,
    init_checkpoint,
    is_full_disk,
    load_trained,
    save_weights,
)
from tapefit.loops.training.hooks import logs_are_finite, weights_are_finite
from tapefit.loops.training.runners import RUNNERS, CustomRunner
from tapefit.loops.training.strategy import barrier, check_supported, is_chief, make_strategy, task

__all__ = ["run", "disk_errors", "train", "evaluate", "lr_find", "Plan", "Trained", "make_plan",
           "locked", "prepare", "finish"]


# ---- plan: everything resolved and checked, nothing written --------------------------
@dataclasses.dataclass
class Plan:
    """What a phase resolved before writing anything. `kind`: "train" (head, finetune),
    "evaluate" or "lr_find"; the fields after `model` are those a kind has."""
    cfg: Config
    run_dir: str  # Where this process writes (a temporary folder on non-chief workers).
    chief: bool
    model: keras.Model
    kind: str = "train"
    state: run_dir_lib.RunDirState | None = None
    data_fingerprint: str | None = None
    strategy: object = None
    splits: input_pipeline.Splits | None = None
    steps_per_epoch: int = 0
    checkpoint: str | None = None
    extra_hooks: object = None  # extra_hooks(module) -> more hooks (compare.py).
    # The phase's initial learning rate, resolved once (`make_plan`): --learning_rate, the
    # finder's suggestion for `auto`, else the phase's default (the recipe's, if it sets
    # one: flags.config.resolve). The optimizer and the per-epoch schedule start from it.
    learning_rate: float | None = None
    evaluation: Evaluation | None = None  # kind "evaluate": what is scored, on what.
    # What the phase is (flags/identity.py): written to <phase>/identity.json, checked by
    # the study and by a run reaching the folder through a link.
    identity: dict | None = None


@dataclasses.dataclass
class Evaluation:
    """The scored weights and the test data of an evaluate plan."""
    trained: Config
    data_cfg: Config
    class_names: list
    trained_phase: str
    weights: str
    weights_note: str
    batches: object
    size: int
    example_ids: object


def make_plan(cfg: Config, run_dir: str | None = None, extra_hooks=None,
              kind: str = "train") -> Plan:
    """Resolves and checks everything a training phase (or the finder, on the phase it
    tunes) needs; writes nothing. `plan.cfg` holds the resolved learning rate of
    `--learning_rate=auto` (config.json records the number)."""
    check_supported(cfg)
    requested = cfg  # The identity is of the flags asked for (`auto`, not its number).
    if kind == "train":
        cfg = finder.resolve_learning_rate(cfg)  # --learning_rate=auto: the finder's suggestion.
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
    identity = None
    if kind == "train":
        parent = (None if cfg.phase != "finetune" or cfg.init_checkpoint
                  else identity_lib.recorded_digest(cfg.phase_dir("head")))
        identity = identity_lib.identity(requested, fingerprint, parent)
        if chief:
            check_through_link(run_dir, identity)
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
        from tapefit.loops.optim.schedules import check_unfreeze_schedule
        check_unfreeze_schedule(model, cfg)
    return Plan(cfg, run_dir, chief, model, kind=kind, state=state,
                data_fingerprint=fingerprint, strategy=strategy, splits=splits,
                steps_per_epoch=steps_per_epoch, checkpoint=checkpoint,
                extra_hooks=extra_hooks, learning_rate=cfg.resolved_learning_rate,
                identity=identity)


def check_through_link(run_dir: str, identity: dict) -> None:
    """A run folder reached through a link (a study trial's shared phase) is written only
    by the same phase run (a resume of it): anything else would change the runs of every
    trial that links it. One line naming a folder of its own."""
    if not os.path.islink(os.path.normpath(run_dir)):
        return
    record, damaged = identity_lib.read(run_dir)
    if record is not None and record["digest"] == identity["digest"]:
        return
    if record is None and not damaged and not any(
            os.path.exists(os.path.join(run_dir, name)) for name in (FINAL_WEIGHTS,
                                                                      EVALUATION_JSON)):
        return  # Nothing finished there to protect (evaluate records itself at its end).
    workdir, phase = os.path.split(os.path.normpath(run_dir))
    why = (f"its {IDENTITY_JSON} is damaged ({damaged})" if damaged else
           "it records no identity" if record is None else
           "; ".join(identity_lib.differences(identity, record)) or "another run")
    trained = "head" if phase == "finetune" else "finetune"
    raise ConfigError(
        f"{run_dir} is a link to {os.path.realpath(run_dir)} (a study's shared run), read-only "
        f"through it: this run differs ({why}); pass --workdir=<a new folder> holding links to "
        f"the trained phases (ln -s {os.path.realpath(os.path.join(workdir, trained))} "
        f"<new folder>/{trained}), and the run is written there")


def make_evaluation_plan(cfg: Config) -> Plan:
    """The newest trained phase's model with the weights `train_lib.scored_weights`
    names, and the test data (the trained run's, or the data named by --data_dir /
    --dataset / --test_split); writes nothing."""
    chief = is_chief(cfg.strategy)
    if chief:
        run_dir_lib.check_writable(cfg.workdir)
        run_dir_lib.check_not_running(cfg.run_dir)
    run_dir_lib.check_cache_dirs(cfg)
    configure_determinism(cfg)
    model, trained, class_names, phase, weights, weights_note = load_trained(cfg.workdir)
    data_cfg = evaluation_data(cfg, trained)
    from tapefit.input_pipeline.evaluation import load_test_split_with_ids
    test, size, data_classes, example_ids = load_test_split_with_ids(data_cfg)
    if tuple(data_classes) != tuple(class_names):
        raise ConfigError(
            f"the evaluation data's classes {list(data_classes)} differ from the trained ones "
            f"{class_names}; pass data with one folder per trained class")
    batches = input_pipeline.eval_batches(test, cfg.batch_size)
    identity = identity_lib.evaluation_identity(
        data_cfg, cfg, input_pipeline.data_fingerprint(data_cfg),
        identity_lib.recorded_digest(cfg.phase_dir(phase)))
    if chief:
        check_through_link(cfg.run_dir, identity)
    if cfg.tta:  # --tta=flip: the averaged predictions of each image and its mirror.
        from tapefit.model.augment import with_tta
        model = with_tta(model, cfg.tta)
    return Plan(cfg, cfg.run_dir, chief, model, kind="evaluate", evaluation=Evaluation(
        trained, data_cfg, class_names, phase, weights, weights_note, batches, size,
        example_ids), identity=identity)


# ---- lock and prepare: the only place a phase starts writing ---------------------------
@contextlib.contextmanager
def locked(plan: Plan):
    """Holds the run directory's lock (the chief's; other workers write temporary ones)."""
    if not plan.chief:
        yield
        return
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
    """Under the lock: a training phase applies the run-directory decision (`run_dir.
    inspect`'s: resume, restart, overwrite) and writes config.json, classes.json, data.json
    (and skipped_files.txt). Evaluate and the finder write every file at the end (`finish`),
    so that a failed one leaves the previous run's files as they were: nothing here."""
    if plan.kind != "train":
        return
    cfg, run_dir, splits = plan.cfg, plan.run_dir, plan.splits
    if plan.chief:  # Another process may have used the directory since the plan.
        state = run_dir_lib.inspect(cfg, run_dir, plan.data_fingerprint)
        if state != plan.state:
            raise RunError(f"{run_dir} changed while this run was starting (another "
                           "process ran in it); run the command again")
    run_dir_lib.prepare(run_dir, plan.state)
    atomic_write_json(os.path.join(run_dir, CONFIG_JSON), cfg.to_dict())
    atomic_write_json(os.path.join(run_dir, CLASSES_JSON), list(splits.class_names))
    atomic_write_json(os.path.join(run_dir, DATA_JSON), {"fingerprint": plan.data_fingerprint})
    atomic_write_json(os.path.join(run_dir, IDENTITY_JSON), plan.identity)
    if splits.skipped:
        atomic_write_text(os.path.join(run_dir, SKIPPED_FILES), "\n".join(splits.skipped) + "\n")
        logging.warning("skipped %d unreadable files, e.g. %s (full list in %s)",
                        len(splits.skipped), splits.skipped[0],
                        os.path.join(run_dir, SKIPPED_FILES))
    if plan.state.position is not None:
        logging.info("resuming from the backup at epoch %d, step %d",
                     plan.state.position.epoch + 1, plan.state.position.step)


# ---- finish -----------------------------------------------------------------------------
def finish(plan: Plan, runner, logs=None) -> bool:
    """A training phase's end: the final weights, then the backup goes (a kill before
    the final save resumes from it). Non-finite weights (a run stopped on NaN) are never
    saved: the run says so, and `best.weights.h5` stays the last finite epoch's (or is
    absent). Returns whether the final weights were saved."""
    run_dir = plan.run_dir
    finite = weights_are_finite(plan.model) and logs_are_finite(logs)
    if finite:
        save_weights(plan.model, os.path.join(run_dir, FINAL_WEIGHTS))
    else:
        best = os.path.join(run_dir, BEST_WEIGHTS)
        kept = (f"{best} holds the last finite epoch's weights" if os.path.exists(best)
                else "no checkpoint was written")
        logging.warning("training diverged: a loss or weight is NaN or infinite, so %s is not "
                        "written (%s); %s, and --overwrite", FINAL_WEIGHTS, kept,
                        divergence_advice(plan.cfg))
    check_writes()  # Not another process's backup (a lost lock).
    runner.delete_backup()
    if not plan.chief:
        shutil.rmtree(run_dir, ignore_errors=True)
    return finite


# ---- the phases ---------------------------------------------------------------------------
@dataclasses.dataclass
class Trained:
    """What `train` returns: the phase's summary (summary.json's), the trained model and
    the last epoch's logs."""
    summary: dict
    model: keras.Model
    logs: dict | None


def train(cfg: Config, run_dir: str | None = None, extra_hooks=None) -> Trained:
    """Trains the head or finetune phase in <workdir>/<phase>.

    `run_dir` overrides <workdir>/<phase> (compare.py runs both loops side by side);
    `extra_hooks(module)` returns more hooks built from `callbacks` (custom loop) or
    `keras.callbacks` (fit loop), appended after the configured ones.
    Under --strategy=multi_worker only the chief writes `run_dir`; the other
    workers run the same steps and hooks in a temporary directory.
    """
    plan = make_plan(cfg, run_dir, extra_hooks)
    cfg = plan.cfg  # With --learning_rate=auto's number.
    with locked(plan):
        prepare(plan)
        runner = RUNNERS[cfg.loop](plan)
        logs = runner.fit(*runner.data(), guarded(runner.hooks(), runner.module))
        saved = finish(plan, runner, logs)
        summary = runner.summary(logs)
        if not saved:
            summary["files"]["final"] = None
            summary["stop_reason"] = "nan"
            summary["advice"] = divergence_advice(cfg)
        if plan.chief:
            atomic_write_json(os.path.join(plan.run_dir, SUMMARY_JSON), summary)
    return Trained(summary, plan.model, logs)


def evaluate(cfg: Config) -> dict:
    """Evaluates the newest phase (its weights: `train_lib.scored_weights`) on the test
    split (the trained run's, or the data named by --data_dir / --dataset / --test_split);
    writes predictions.npz, evaluation.json and summary.json in <workdir>/evaluate."""
    plan = make_evaluation_plan(cfg)
    with locked(plan):
        prepare(plan)
        ev, model = plan.evaluation, plan.model
        if cfg.interpret_split == "validation":  # A look that does not touch the test split.
            return _interpret_validation(cfg, plan)
        logs = RUNNERS[cfg.loop].score(model, ev.batches, cfg, ev.trained)
        # Per-example predictions (predictions.npz), for paired comparisons of runs (sweep.py).
        per_example = predictions.predict(model, ev.batches) if plan.chief else None
        data = ev.data_cfg.data_dir or f"{ev.data_cfg.dataset}:{ev.data_cfg.test_split}"
        result = {"phase": "evaluate", "trained_phase": ev.trained_phase,
                  "workdir": cfg.workdir, "weights": ev.weights,
                  "weights_note": ev.weights_note, "data": data, "test_examples": ev.size,
                  **({"tta": cfg.tta} if cfg.tta else {}),
                  **{k: float(v) for k, v in logs.items()},
                  "files": {"evaluation": os.path.join(cfg.run_dir, EVALUATION_JSON)},
                  "command_flags": [f"--workdir={cfg.workdir}"]}
        if plan.chief:
            os.makedirs(cfg.run_dir, exist_ok=True)
            # Before evaluation.json, which marks the phase done.
            predictions.write(os.path.join(cfg.run_dir, PREDICTIONS_NPZ),
                              *per_example, predictions.split_description(ev.data_cfg),
                              ev.data_cfg.image_size, ev.class_names, ids=ev.example_ids)
            # Interpretation (loops/interpret.py, --interpret_split): also before evaluation.json.
            from tapefit.loops import interpret
            found = interpret.for_evaluation(cfg, ev, model, per_example)
            if found:
                result["interpretation"] = found
            atomic_write_json(os.path.join(cfg.run_dir, IDENTITY_JSON), plan.identity)
            atomic_write_json(os.path.join(cfg.run_dir, EVALUATION_JSON),
                              {k: v for k, v in result.items()
                               if k not in ("files", "command_flags")})
            atomic_write_json(os.path.join(cfg.run_dir, SUMMARY_JSON), result)
    return result


def _interpret_validation(cfg: Config, plan: Plan) -> dict:
    """`--phase=evaluate --interpret_split=validation`: the validation split predicted and
    interpreted (loops/interpret.py) in <workdir>/evaluate/validation/, with its own
    summary.json; the test split is not scored, evaluation.json not written or changed."""
    from tapefit.loops import interpret
    ev = plan.evaluation
    found = interpret.for_evaluation(cfg, ev, plan.model, None) if plan.chief else None
    result = {"phase": "evaluate", "interpreted_split": "validation",
              "trained_phase": ev.trained_phase, "workdir": cfg.workdir, "weights": ev.weights,
              "weights_note": ev.weights_note, "interpretation": found,
              "files": ({"interpretation": os.path.join(found["folder"], INTERPRETATION_JSON)}
                        if found else {}),
              "command_flags": [f"--workdir={cfg.workdir}"]}
    if plan.chief:
        atomic_write_json(os.path.join(found["folder"], SUMMARY_JSON), result)
    return result


def lr_find(cfg: Config) -> dict:
    """`--phase=lr_find`: the learning-rate finder on the phase `--for_phase` names, set
    up as training it would be (`lr_find.phase_config`); returns its summary ({} on a
    non-chief worker, which writes nothing)."""
    phase_cfg = finder.phase_config(cfg)
    out_dir = lr_find_dir(cfg.workdir, cfg.for_phase)
    plan = make_plan(phase_cfg, run_dir=out_dir, kind="lr_find")
    with locked(plan):
        prepare(plan)
        runner = CustomRunner(plan)  # The phase's optimizer and (head) feature cache.
        train_data, _ = runner.data()
        curve = finder.find_for_loop(runner.make_loop(), train_data)
        found = finder.suggestions(curve)
        if not plan.chief:
            return {}
        os.makedirs(out_dir, exist_ok=True)
        result = finder.write(out_dir, cfg, curve, found, SUMMARY_JSON)
    logging.info("learning-rate finder (%s): %s", cfg.for_phase,
                 ", ".join(f"{k} {v:.3g}" for k, v in found.items()))
    return result


PHASES = {"head": lambda cfg: train(cfg).summary, "finetune": lambda cfg: train(cfg).summary,
          "evaluate": evaluate, "lr_find": lr_find}


def run(cfg: Config) -> dict:
    """The phase cfg names; returns its summary. A full disk anywhere (checkpoints,
    logs) is a one-line error."""
    with disk_errors(cfg):
        return PHASES[cfg.phase](cfg)


@contextlib.contextmanager
def disk_errors(cfg: Config):
    """A full disk or an unwritable --workdir inside the block: a one-line `RunError`."""
    try:
        yield
    except OSError as e:
        if is_full_disk(e):
            sizes = f": {e.strerror.split(': ', 1)[1]}" if ": " in (e.strerror or "") else ""
            raise RunError(f"no space left on the device ({e.filename or cfg.workdir}{sizes}); "
                           "free some space or pass another --workdir; files saved "
                           "earlier are intact") from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise RunError(f"cannot write {e.filename or cfg.workdir} ({e.strerror}); pass a "
                           "writable --workdir") from None
        raise
