"""Classifying image files with a trained run (`tapefit predict`, `tapefit.predict`): the
newest phase's weights in a run directory (those evaluate scores), in batches, so that a
folder of thousands of photos is never decoded at once.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from tapefit.flags.errors import DataError, RunError, escape_controls

BATCH = 32  # Images per model call.


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's class: `label` (the most probable class), its `probability`, and
    every class's (`probabilities`, by class name)."""
    path: str
    label: str
    probability: float
    probabilities: dict


def escaped(name) -> str:
    """`name` (a str or a file name) safe to print as one field of one line (predict's
    module docstring). Distinct names stay distinct."""
    return escape_controls(name, backslash=True)


def image_paths(args):
    """The image files `args` name: a file as given, a folder as every image file under
    it (sorted), with the entries under folders that are no regular files. Returns
    ([(path, found_in_a_folder)], [other entries])."""
    from tapefit.input_pipeline.folders import image_files
    paths, others = [], []
    for arg in args:
        if os.path.isdir(arg):
            found, other = image_files(arg)
            if not found:
                raise DataError(f"no image files (JPEG, PNG, GIF, BMP) under {escaped(arg)}; "
                                "pass a folder of images or image files")
            paths += [(p, True) for p in found]
            others += other
        else:
            paths.append((arg, False))
    return paths, others


def classify(workdir: str, args, skipped: list | None = None):
    """Yields a `Prediction` per image that `args` (files and folders) name, in order.
    An unreadable file named in `args` is a `DataError`; one found under a folder is
    skipped and appended to `skipped` (as evaluate skips it). A missing or damaged run
    is a one-line `TapefitError` before any image is read."""
    import keras

    from tapefit.input_pipeline import read_image_file
    from tapefit.loops import train_lib
    paths, others = image_paths(args)
    if skipped is not None:
        skipped += others
    model, cfg, class_names, phase, weights, note = train_lib.load_trained(workdir)
    if not note.startswith("unfinished"):  # Else train_lib has warned.
        logging.info("scoring %s (%s phase, %s)", weights, phase, note)
    for start in range(0, len(paths), BATCH):
        images, names = [], []
        for path, in_folder in paths[start:start + BATCH]:
            try:
                images.append(read_image_file(path, cfg.image_size))
            except DataError:
                if not in_folder:  # Named by the caller: an error.
                    raise
                if skipped is not None:
                    skipped.append(path)  # Found under a folder: skipped, as evaluate.
                continue
            names.append(path)
        if not names:
            continue
        logits = model(np.stack(images).astype("float32"), training=False)
        probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
        if not np.isfinite(probabilities).all():
            raise RunError(f"the model in {workdir}/{phase} ({weights}) gives NaN or infinite "
                           "outputs on finite weights; retrain the phase with --overwrite")
        for path, p in zip(names, probabilities, strict=True):
            best = int(np.argmax(p))
            yield Prediction(path, class_names[best], float(p[best]),
                             {name: float(v) for name, v in zip(class_names, p, strict=True)})
