"""Classifies image files with the newest phase's best weights in --workdir.

    python predict.py --workdir=runs/catsdogs cat.jpg dog.png
"""
import sys

from flags.quiet import silence_native_logs

if __name__ == "__main__":
    silence_native_logs()  # Before anything imports TensorFlow.

from absl import app, flags  # noqa: E402

from flags.definitions import define_help_flags  # noqa: E402

flags.DEFINE_string("workdir", "runs/default", "Run directory written by train.py.")
define_help_flags()
FLAGS = flags.FLAGS


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("pass one or more image files: predict.py --workdir=W IMAGE...")
    import keras
    import numpy as np

    from flags.errors import RunError, TapefitError
    from input_pipeline import printable, read_image_file
    from loops import train_lib
    try:
        # Missing or corrupt config.json / classes.json / weights, weights with NaN or
        # inf, unreadable images: one line each (TapefitError), no traceback.
        model, cfg, class_names, phase = train_lib.load_trained_model(FLAGS.workdir)
        images = np.stack([read_image_file(p, cfg.image_size) for p in paths]).astype("float32")
        logits = model(images, training=False)
        probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
        if not np.isfinite(probabilities).all():
            raise RunError(f"the model in {FLAGS.workdir}/{phase} gives NaN or infinite "
                           "outputs; retrain it with a lower --learning_rate (and --overwrite)")
    except TapefitError as e:
        sys.exit(f"error: {e}")
    for path, p in zip(paths, probabilities, strict=True):
        best = int(np.argmax(p))
        # File names need not be UTF-8: undecodable bytes are printed escaped (\xff).
        print(f"{printable(path)}\t{class_names[best]}\t{p[best]:.4f}")


if __name__ == "__main__":
    app.run(main)
