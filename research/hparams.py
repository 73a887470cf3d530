"""TensorBoard HParams for a study (`tensorboard.plugins.hparams.api`).

- `<study>/hparams/`: the experiment (`hp.hparams_config`: the axes and the metrics);
- `<study>/trials/<id>/hparams/`: the trial's session: `hp.hparams(values, trial_id=group)`,
  where the group is the trial id without the seed, so the dashboard groups (averages)
  the seeds of one configuration, and the trial's final metrics as scalars.

`<study>/tensorboard/` (research/tensorboard_runs.py, rewritten here as trials finish) links
each distinct run once, the sessions named by their trial ids:
`tensorboard --logdir=<study>/tensorboard` shows them next to every phase's training curves.
"""
from __future__ import annotations

import glob
import math
import os

from tapefit.layout import paths
from tapefit.research import grid, tensorboard_runs

HPARAMS_DIR = paths.HPARAMS_DIR
# (summary tag, display name); the values come from research.report.collect.
METRICS = (("test_accuracy", "test accuracy"), ("test_loss", "test loss"),
           ("val_accuracy", "validation accuracy (final, last phase)"),
           ("val_loss", "validation loss (best, last phase)"))


def _value(value):
    return "none" if value is None else value


def _hparams(study: grid.Study):
    from tensorboard.plugins.hparams import api as hp

    out = []
    for axis in study.axes:
        for i, name in enumerate(axis.names):
            values = [_value(v[i]) for v in axis.values]
            kinds = {type(v) for v in values}
            domain = None
            if len(kinds) == 1 and kinds <= {bool, int, float, str}:
                domain = hp.Discrete(values)
            out.append(hp.HParam(name, domain))
    return out


def _written(folder: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(folder), paths.EVENTS_GLOB)))


def write_experiment(study: grid.Study, study_dir: str) -> None:
    """The experiment summary at <study>/hparams, rewritten when the grid changes, and
    <study>/tensorboard/, every distinct run of the study once (tensorboard_runs).

    TensorBoard keeps the first experiment summary it reads for a run (its tag's
    metadata is read once), so a changed grid (a value or an axis added) replaces the
    folder's event files instead of adding one: the dashboard then lists the new values,
    and filtering keeps the new configurations (restart a running TensorBoard)."""
    _write_experiment(study, study_dir)
    tensorboard_runs.write_index(study_dir, study)


def _write_experiment(study: grid.Study, study_dir: str) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    folder = os.path.join(study_dir, HPARAMS_DIR)
    name = paths.AXES_SIGNATURE_PREFIX + _signature(study)
    signature = os.path.join(folder, name)
    if os.path.exists(signature):
        return
    os.makedirs(folder, exist_ok=True)
    old = [os.path.join(folder, n) for n in os.listdir(folder)
           if n.startswith(paths.EVENTS_PREFIX)
           or (n.startswith(paths.AXES_SIGNATURE_PREFIX) and n != name)]
    writer = tf.summary.create_file_writer(folder, filename_suffix=".experiment")
    with writer.as_default():
        hp.hparams_config(hparams=_hparams(study),
                          metrics=[hp.Metric(tag, display_name=name) for tag, name in METRICS])
    writer.close()
    for path in old:  # The previous grid's summary: only after the new one is complete.
        try:
            os.remove(path)
        except OSError:
            pass
    open(signature, "w").close()


def _signature(study: grid.Study) -> str:
    import hashlib
    import json
    text = json.dumps([[a.names, a.values] for a in study.axes], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def write_trial(trial_dir: str, assignment: dict, group_id: str, metrics: dict) -> None:
    """The trial's session: its axis values, group id and finished metrics (once),
    linked into its study's tensorboard/ folder as the run named by the trial id."""
    folder = os.path.join(trial_dir, HPARAMS_DIR)
    if not _written(folder):
        _write_session(folder, assignment, group_id, metrics)
    tensorboard_runs.link_session(trial_dir)


def _write_session(folder: str, assignment: dict, group_id: str, metrics: dict) -> None:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        hp.hparams({name: _value(value) for name, value in assignment.items()},
                   trial_id=group_id)
        for tag, _ in METRICS:
            value = metrics.get(tag)
            if value is not None and math.isfinite(value):
                tf.summary.scalar(tag, value, step=0)
    writer.close()
