"""Two-phase transfer learning: `--phase=head`, then `--phase=finetune`, then `--phase=evaluate`.

    python train.py --phase=head --workdir=runs/catsdogs
    python train.py --phase=finetune --unfreeze_from=block5_conv1 --workdir=runs/catsdogs
    python train.py --phase=evaluate --workdir=runs/catsdogs

Flags are read here only; the library receives a frozen `Config`.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from flags.definitions import config_from_flags, define_flags  # noqa: E402

define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from flags.config import ConfigError
    from input_pipeline import DataError
    try:
        from loops.strategy import split_cpu
        split_cpu(FLAGS.logical_cpus)
        from loops import train_lib
        result = train_lib.run(config_from_flags())
    except (ConfigError, DataError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
