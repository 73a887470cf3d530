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


def phase_seconds(study_dir: str) -> dict:
    """Seconds spent in each phase over the study's trials (their status.json `wall_s`;
    a trial that reused a shared phase spent none on it)."""
    total: dict = {}
    trials = os.path.join(study_dir, "trials")
    for name in os.listdir(trials):
        try:
            with open(os.path.join(trials, name, "status.json")) as f:
                walls = json.load(f).get("wall_s") or {}
        except (OSError, ValueError):
            continue
        for phase, seconds in walls.items():
            total[phase] = total.get(phase, 0.0) + float(seconds)
    return total


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
                     "finetune_runs": phase_runs(folder, "finetune"),
                     "phase_s": phase_seconds(folder)}
    ratio = out["shared"]["wall_s"] / out["unshared"]["wall_s"]
    print("| | head runs | finetune runs | wall | head phases s | finetune phases s |\n"
          "|---|---|---|---|---|---|")
    for name in ("unshared", "shared"):
        r, ph = out[name], out[name]["phase_s"]
        print(f"| {name} | {r['head_runs']} | {r['finetune_runs']} | {r['wall_s']:.0f} s "
              f"| {ph.get('head', 0):.0f} | {ph.get('finetune', 0):.0f} |")
    # What sharing can save at most: the head phases not retrained (the finetune phases
    # all run either way), at the unshared study's per-phase cost.
    un = out["unshared"]
    head_s, runs = un["phase_s"].get("head", 0.0), max(un["head_runs"], 1)
    bound = (un["wall_s"] - head_s * (1 - out["shared"]["head_runs"] / runs)) / un["wall_s"]
    print(f"\nwall shared / unshared: {ratio:.2f} (best possible with these phase costs: "
          f"{bound:.2f}); folders: {root}")
    out["best_possible_ratio"] = bound
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**out, "wall_ratio": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
