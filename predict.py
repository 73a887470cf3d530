"""Classifies images with the newest phase's weights in --workdir (those evaluate scores).

    tapefit predict --workdir=runs/catsdogs cat.jpg dog.png photos/

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

from absl import flags  # noqa: E402

from tapefit.flags.definitions import define_help_flags  # noqa: E402

flags.DEFINE_string("workdir", "runs/default", "Run directory written by train.py.")
define_help_flags(doc=__doc__)
FLAGS = flags.FLAGS


def predict(argv):
    if not argv[1:]:
        sys.exit("error: pass one or more image files or folders: "
                 "tapefit predict --workdir=W IMAGE_OR_FOLDER...")
    from tapefit.flags.errors import TapefitError, escape_controls
    from tapefit.loops.classify import classify, escaped
    skipped = []
    try:
        # Missing or corrupt config.json / classes.json / weights, weights with NaN or
        # inf, unreadable images: one line each (TapefitError), no traceback.
        for found in classify(FLAGS.workdir, argv[1:], skipped):
            print(f"{escaped(found.path)}\t{escaped(found.label)}\t{found.probability:.4f}")
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
