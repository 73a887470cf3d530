"""Two-phase transfer learning: `--phase=head`, then `--phase=finetune`, then `--phase=evaluate`.

    python train.py --phase=head --workdir=runs/catsdogs
    python train.py --phase=finetune --unfreeze_from=block5_conv1 --workdir=runs/catsdogs
    python train.py --phase=evaluate --workdir=runs/catsdogs

Flags are read here only; the library receives a frozen `Config`.
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402

from flags.definitions import define_flags  # noqa: E402
from loops.entry import run_command  # noqa: E402

define_flags()


def train(cfg):
    from loops import train_lib
    print(json.dumps(train_lib.run(cfg), indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(lambda argv: run_command(argv, train))
