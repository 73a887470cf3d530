"""Classifies image files with the newest phase's best weights in --workdir.

    python predict.py --workdir=runs/catsdogs cat.jpg dog.png
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("workdir", "runs/default", "Run directory written by train.py.")
FLAGS = flags.FLAGS


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("pass one or more image files: predict.py --workdir=W IMAGE...")
    from flags.config import ConfigError
    from input_pipeline import DataError, read_image_file
    from loops import train_lib
    import numpy as np
    import keras
    try:
        model, cfg, class_names, _ = train_lib.load_trained_model(FLAGS.workdir)
        images = np.stack([read_image_file(p, cfg.image_size) for p in paths]).astype("float32")
    except (ConfigError, DataError) as e:
        sys.exit(f"error: {e}")
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(model(images, training=False)))
    for path, p in zip(paths, probabilities):
        best = int(np.argmax(p))
        print(f"{path}\t{class_names[best]}\t{p[best]:.4f}")


if __name__ == "__main__":
    app.run(main)
