"""What the default backups cost: epoch wall time with `--backup` (the default) vs
`--nobackup`, custom loop, both variants interleaved in this one process.

    python bench/backup_cost.py [--backbones vgg16,mobilenet] [--epochs 5] [--repeats 2]

A backup at every epoch end writes every model variable (frozen ones included),
the optimizer's slots, the running metrics and the hooks' states to an .npz and
fsyncs it; the head phase on cached features has the shortest epochs, so it is
where the cost shows most. Synthetic 128x128 images, weights none (the cost does
not depend on weight values). Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tapefit.flags.config import Config  # noqa: E402


def epoch_times(cfg: Config) -> list[float]:
    from tapefit.loops import phases

    start = []

    def hooks(module):
        return [module.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: start.append(time.perf_counter()))]

    phases.train(cfg, extra_hooks=hooks)
    # The loop saves its backup after on_epoch_end: time from one epoch start to the
    # next. Epoch 1 also fills the feature cache: left out.
    return [b - a for a, b in zip(start, start[1:])][1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="vgg16,mobilenet")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for backbone in args.backbones.split(","):
        results = {True: [], False: []}
        for repeat in range(args.repeats):
            for backup in (True, False):
                workdir = tempfile.mkdtemp(prefix="tapefit-backup-bench-")
                cfg = Config(workdir=workdir, backbone=backbone, alpha=0.25 if
                             backbone == "mobilenet" else 1.0, weights="none", image_size=128,
                             dataset="synthetic", synthetic_examples=args.examples,
                             epochs=args.epochs, verbose=0, backup=backup, tensorboard=False)
                results[backup] += epoch_times(cfg)
                print(f"{backbone} repeat {repeat} backup={backup} done", file=sys.stderr)
        on, off = statistics.median(results[True]), statistics.median(results[False])
        rows.append((backbone, off, on, on - off, on / off))
    print("| backbone (head, cached features) | epoch, --nobackup (s) | epoch, backups (s) "
          "| cost per epoch (s) | ratio |")
    print("|---|---|---|---|---|")
    for backbone, off, on, cost, ratio in rows:
        print(f"| {backbone} | {off:.3f} | {on:.3f} | {cost:+.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
