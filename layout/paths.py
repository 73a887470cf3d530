"""Every file and folder name tapefit writes, in one place (no TensorFlow import).

A run directory, `<workdir>/<phase>/` (`phase_dir`):

    config.json          the run's flags (compared on resume)
    classes.json         the class names, in label order
    data.json            the data's fingerprint (a resume refuses changed data)
    identity.json        what the phase is: flags, data, seed, parent (flags/identity.py)
    skipped_files.txt    image files the pipeline could not decode
    log.csv              CSVLogger: one row per epoch
    best.weights.h5      ModelCheckpoint: the best epoch's weights (finite only)
    final.weights.h5     the finished phase's weights (their presence: finished)
    summary.json         what the phase did (epochs, best and final metrics, ...)
    checkpoints/         epoch<NN>.weights.h5 with --nosave_best_only
    tensorboard/         train/ and validation/ event files
    backup/              the resume state (state.json or Keras' training_metadata.json)
    evaluation.json      the evaluate phase's metrics
    predictions.npz      the evaluate phase's per-example predictions
A sibling `.<phase>.lock` is its lock (`lock_path`). The learning-rate finder writes
`<workdir>/lr_find_<phase>/` (`lr_find_dir`): lr_find.csv, lr_find.png,
suggestions.json, config.json. compare.py writes report.json, report.md, curves.png.

A study (sweep.py), `<study>/`:

    sweep.json  race.json  results.csv  results.md  results.png  hparams/
    trials/<trial id>/   trial.json  status.json  trial.log  .trial.lock  hparams/
                         <phase>/ (a run directory, or a link into shared/)
    shared/<phase>-s<seed>-<key>/   .phase.lock  <phase>/
    feature_cache/  image_cache/    the study's caches

The caches: `<feature cache dir>/<key>/<split>.features.npy|.labels.npy` and
`<split>.complete.json` (their sizes, SHA-256s, shapes and label range; written last);
`<image cache dir>/<key>/<split>/images.*` and `complete.json`.
"""
from __future__ import annotations

import os

# ---- a run directory ------------------------------------------------------------------------
CONFIG_JSON = "config.json"
CLASSES_JSON = "classes.json"
DATA_JSON = "data.json"
IDENTITY_JSON = "identity.json"
SKIPPED_FILES = "skipped_files.txt"
LOG_CSV = "log.csv"
BEST_WEIGHTS = "best.weights.h5"
FINAL_WEIGHTS = "final.weights.h5"
SUMMARY_JSON = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
EPOCH_WEIGHTS = "epoch{epoch:02d}.weights.h5"  # ModelCheckpoint's filepath pattern.
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_TRAIN = "train"  # Subfolders of a TensorBoard log directory.
TENSORBOARD_VALIDATION = "validation"
PROJECTOR_CONFIG = "projector_config.pbtxt"
EMBEDDING_WEIGHTS = "keras_embedding.ckpt-{epoch}.weights.h5"  # In tensorboard/train/.
EVENTS_PREFIX = "events.out.tfevents."  # TensorFlow's event files in a log folder.
EVENTS_GLOB = EVENTS_PREFIX + "*"
BACKUP_DIR = "backup"
# Inside backup/: the custom loop's exact state, Keras' BackupAndRestore's files.
BACKUP_STATE_JSON = "state.json"
KERAS_BACKUP_METADATA = "training_metadata.json"
KERAS_BACKUP_WEIGHTS = "latest.weights.h5"
EVALUATION_JSON = "evaluation.json"
PREDICTIONS_NPZ = "predictions.npz"
LOCK_SUFFIX = ".lock"
TAKEOVER_SUFFIX = ".takeover"  # <lock>.takeover serialises take-overs of a stale lock.
EVALUATE_PHASE = "evaluate"  # The phase whose folder holds evaluation.json.
# Next to evaluation.json, evaluate's interpretation (loops/interpret.py; validation/: the same
# files for --interpret_split=validation); a study's paired per-example view (research/flips.py).
INTERPRETATION_JSON, PER_CLASS_CSV, CONFUSION_CSV = ("interpretation.json", "per_class.csv",
                                                     "confusion_matrix.csv")
CONFUSION_PNG, RELIABILITY_PNG, TOP_LOSSES_PNG = ("confusion_matrix.png", "reliability.png",
                                                  "top_losses.png")
INTERPRET_VALIDATION_DIR = "validation"
FLIPS_PNG, FLIPS_CSV = "flips.png", "flips.csv"

# ---- the learning-rate finder and compare.py --------------------------------------------------
LR_FIND_PREFIX = "lr_find_"
LR_FIND_CSV = "lr_find.csv"
LR_FIND_PNG = "lr_find.png"
SUGGESTIONS_JSON = "suggestions.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES_PNG = "curves.png"

# ---- a study --------------------------------------------------------------------------------
SWEEP_JSON = "sweep.json"
RACE_JSON = "race.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
HPARAMS_DIR = "hparams"
AXES_SIGNATURE_PREFIX = ".axes-"  # hparams/.axes-<hash>: the grid its summary describes.
TRIALS_DIR = "trials"
SHARED_DIR = "shared"
TRIAL_JSON = "trial.json"
STATUS_JSON = "status.json"
TRIAL_LOG = "trial.log"
TRIAL_LOCK = ".trial.lock"
PHASE_LOCK = ".phase.lock"  # In a shared phase's work directory.

# ---- the caches -----------------------------------------------------------------------------
FEATURE_CACHE_DIR = "feature_cache"
FEATURES_SUFFIX = ".features.npy"
LABELS_SUFFIX = ".labels.npy"
FEATURES_MANIFEST_SUFFIX = ".complete.json"  # <split>.complete.json: written last.
IMAGE_CACHE_DIR = "image_cache"
IMAGE_CACHE_COMPLETE = "complete.json"
IMAGE_CACHE_PREFIX = "images"  # TF writes images.index and images.data-00000-of-00001.
IMAGE_CACHE_INDEX = IMAGE_CACHE_PREFIX + ".index"


# ---- paths ----------------------------------------------------------------------------------
def phase_dir(workdir: str, phase: str) -> str:
    """The run directory of `phase` under `workdir`."""
    return os.path.join(workdir, phase)


def run_file(workdir: str, phase: str, name: str) -> str:
    """`name` (one of the names above) in the run directory of `phase`."""
    return os.path.join(phase_dir(workdir, phase), name)


def lock_path(run_dir: str) -> str:
    """The lock file of a run directory: a hidden sibling, so the directory itself
    is not created before every check has passed. The sibling of the resolved folder:
    a run directory reached through a link (a study trial's shared phase) has one lock,
    whichever path a process names it by."""
    parent, name = os.path.split(os.path.realpath(run_dir))
    return os.path.join(parent, f".{name}{LOCK_SUFFIX}")


def lr_find_dir(workdir: str, phase: str) -> str:
    """The learning-rate finder's folder for `phase` (next to the phase's run)."""
    return os.path.join(workdir, f"{LR_FIND_PREFIX}{phase}")


def epoch_weights(run_dir: str) -> str:
    """ModelCheckpoint's filepath pattern for every epoch's weights."""
    return os.path.join(run_dir, CHECKPOINTS_DIR, EPOCH_WEIGHTS)


def trial_dir(study_dir: str, trial_id: str) -> str:
    return os.path.join(study_dir, TRIALS_DIR, trial_id)


def shared_dir(study_dir: str, name: str) -> str:
    """The work directory of a phase run that trials share (`<phase>-s<seed>-<key>`)."""
    return os.path.join(study_dir, SHARED_DIR, name)


def feature_cache_dir(workdir: str) -> str:
    """The default feature cache folder of a work directory (or a study)."""
    return os.path.join(workdir, FEATURE_CACHE_DIR)


def image_cache_dir(workdir: str) -> str:
    """The default image cache folder of a work directory (or a study)."""
    return os.path.join(workdir, IMAGE_CACHE_DIR)
