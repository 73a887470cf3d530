"""Phase sharing (issue 22): a head + finetune study with a 4-value finetune axis × 3
seeds, with sharing (the default: one head run per seed) and with `--noshare_phases`
(one head run per trial, as before), each a fresh folder and one `sweep.py` command.
Reported: head runs trained (3 vs 12), finetune runs, wall time of each and the ratio.

    python bench/phase_sharing.py [--finetune_learning_rates 1e-4,3e-4,1e-3,3e-3]
        [--seeds 0,1,2] [--epochs 3] [--examples 500] [--image_size 96]
    python bench/phase_sharing.py --synthetic 32 --image_size 32 --epochs 1 --seeds 0  # smoke

Defaults: MobileNet(alpha=0.25) with its real weights on ../shared photos (500 per
split). A benchmark, not a test: it asserts nothing; the table goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from _sweep_common import data_flags, phase_runs, run_sweep


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="../shared/data/catsdogs")
    p.add_argument("--weights", default="../shared/weights/mobilenet_2_5_224_tf_no_top.h5")
    p.add_argument("--synthetic", type=int, default=0, help="synthetic examples instead of "
                   "photos (a smoke run)")
    p.add_argument("--backbone", default="mobilenet")
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--image_size", type=int, default=96)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--examples", type=int, default=500, help="max photos per split")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--finetune_learning_rates", default="1e-4,3e-4,1e-3,3e-3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    return p.parse_args()


def main():
    args = parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="bench_sharing_")
    common = data_flags(args) + [f"--epochs={args.epochs}", "--phases=head,finetune",
                                 f"--axis=finetune.learning_rate={args.finetune_learning_rates}",
                                 f"--seeds={args.seeds}"]
    out = {}
    for name, extra in (("unshared", ["--noshare_phases"]), ("shared", [])):
        folder = os.path.join(root, name)
        seconds = run_sweep([f"--workdir={folder}", *common, *extra])
        out[name] = {"wall_s": seconds, "head_runs": phase_runs(folder, "head"),
                     "finetune_runs": phase_runs(folder, "finetune")}
    ratio = out["shared"]["wall_s"] / out["unshared"]["wall_s"]
    print("| | head runs | finetune runs | wall |\n|---|---|---|---|")
    for name in ("unshared", "shared"):
        r = out[name]
        print(f"| {name} | {r['head_runs']} | {r['finetune_runs']} | {r['wall_s']:.0f} s |")
    print(f"\nwall shared / unshared: {ratio:.2f}; folders: {root}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**out, "wall_ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
