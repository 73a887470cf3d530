"""Classifies images with the newest phase's weights in --workdir (those evaluate scores).

    python predict.py --workdir=runs/catsdogs cat.jpg dog.png photos/

One line per image: `FILE<TAB>CLASS<TAB>PROBABILITY`. A folder stands for every image
under it (recursively, as evaluate reads a test folder; unreadable ones are skipped and
counted on stderr). File and class names are printed escaped, so that each line is one
image: a backslash as `\\\\`, tab, newline and carriage return as `\\t`, `\\n`, `\\r`, other
control and format characters as `\\xNN` / `\\uNNNN`, bytes that are not UTF-8 as `\\xNN`.
"""
import sys

if __name__ == "__main__" and not __package__:  # `python predict.py` in a checkout:
    import _checkout  # noqa: F401  (its own tapefit, installed, or one line)

from tapefit.flags.quiet import silence_native_logs

if __name__ == "__main__":
    silence_native_logs()  # Before anything imports TensorFlow.

from absl import app, flags  # noqa: E402

from tapefit.flags.definitions import define_help_flags  # noqa: E402

flags.DEFINE_string("workdir", "runs/default", "Run directory written by train.py.")
define_help_flags()
FLAGS = flags.FLAGS
BATCH = 32  # Images per model call (a folder may hold thousands).


def escaped(name) -> str:
    """`name` (a str or a file name) safe to print as one field of one line: see the
    module docstring. Distinct names stay distinct."""
    from tapefit.flags.errors import escape_controls
    return escape_controls(name, backslash=True)


def image_paths(args):
    """The image files `args` name: a file as given, a folder as every image file under
    it (sorted), with the entries under folders that are no regular files."""
    import os

    from tapefit.flags.errors import DataError
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


def predict(argv):
    if not argv[1:]:
        raise app.UsageError("pass one or more image files or folders: "
                             "tapefit predict --workdir=W IMAGE_OR_FOLDER...")
    import logging

    import keras
    import numpy as np

    from tapefit.flags.errors import DataError, RunError, TapefitError, escape_controls
    from tapefit.input_pipeline import read_image_file
    from tapefit.loops import train_lib
    try:
        paths, skipped = image_paths(argv[1:])
        # Missing or corrupt config.json / classes.json / weights, weights with NaN or
        # inf, unreadable images: one line each (TapefitError), no traceback.
        model, cfg, class_names, phase, weights, note = train_lib.load_trained(FLAGS.workdir)
        if not note.startswith("unfinished"):  # Else train_lib has warned.
            logging.info("scoring %s (%s phase, %s)", weights, phase, note)
        for start in range(0, len(paths), BATCH):
            images, names = [], []
            for path, in_folder in paths[start:start + BATCH]:
                try:
                    images.append(read_image_file(path, cfg.image_size))
                except DataError:
                    if not in_folder:  # Named on the command line: an error.
                        raise
                    skipped.append(path)  # Found under a folder: skipped, as evaluate.
                    continue
                names.append(path)
            if not names:
                continue
            logits = model(np.stack(images).astype("float32"), training=False)
            probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
            if not np.isfinite(probabilities).all():
                raise RunError(f"the model in {FLAGS.workdir}/{phase} ({weights}) gives NaN "
                               "or infinite outputs on finite weights; retrain the phase with "
                               "--overwrite")
            for path, p in zip(names, probabilities, strict=True):
                best = int(np.argmax(p))
                print(f"{escaped(path)}\t{escaped(class_names[best])}\t{p[best]:.4f}")
    except TapefitError as e:
        sys.exit(f"error: {escape_controls(str(e))}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable files under the folders, e.g. "
              f"{escaped(skipped[0])}", file=sys.stderr)


def main(argv=None):
    """The `tapefit predict` command (absl's `app.run`; `argv` defaults to `sys.argv`)."""
    from tapefit.loops.entry import app_run
    app_run(predict, argv)


if __name__ == "__main__":
    main()
