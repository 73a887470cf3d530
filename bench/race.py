"""Race vs fixed grid (`sweep.py --race`, issue 22): 4 head learning rates, one clearly
bad (1e-6), up to 8 seeds. The same study twice, in two fresh folders, one command each:
the full grid (every rate × every seed) and the race (`--min_seeds` seeds first, one
more per round, the significantly worse dropped after each round). Reported: the
configuration each picks (the grid: best mean validation accuracy over all seeds; the
race: its winner, or the best of those left), whether they agree, the trial-epochs and
the wall time of each, and their ratios.

    python bench/race.py [--learning_rates 1e-6,1e-4,1e-3,1e-2] [--max_seeds 8]
        [--min_seeds 3] [--epochs 5] [--examples 500] [--image_size 96]
    python bench/race.py --synthetic 32 --image_size 32 --max_seeds 4 --epochs 1  # smoke run

Defaults: MobileNet(alpha=0.25) with its real weights on ../shared photos (500 per
split). A benchmark, not a test: it asserts nothing; the table goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

from _sweep_common import data_flags, run_sweep

from tapefit.research import grid, race, report, study


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
    p.add_argument("--epochs", type=int, default=5, help="5: the heads have settled, so the "
                   "scored epoch is not noise (bench/README.md: 3 epochs spent 56 %%)")
    p.add_argument("--learning_rates", default="1e-6,1e-4,1e-3,1e-2")
    p.add_argument("--min_seeds", type=int, default=3)
    p.add_argument("--max_seeds", type=int, default=8)
    p.add_argument("--race_alpha", type=float, default=0.05)
    p.add_argument("--workdir", default=None, help="where both studies go (default: a "
                   "fresh temporary folder)")
    p.add_argument("--json", default=None)
    return p.parse_args()


def grid_best(folder: str) -> tuple[str, dict]:
    """The full grid's pick: the best mean validation accuracy over every seed."""
    s = study.load(folder)
    means = {}
    for index, assignment in enumerate(grid.configurations(s)):
        values = [report.trial_metrics(t.trial_dir, s.phases).get("val_accuracy")
                  for t in grid.expand(s, folder) if t.config_index == index]
        values = [v for v in values if isinstance(v, float) and math.isfinite(v)]
        means[report.label(assignment, s)] = sum(values) / len(values) if values else math.nan
    return max((k for k in means if math.isfinite(means[k])), key=means.get), means


def main():
    args = parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="bench_race_")
    common = data_flags(args) + [f"--epochs={args.epochs}", "--phases=head",
                                 f"--axis=learning_rate={args.learning_rates}",
                                 f"--seeds={','.join(map(str, range(args.max_seeds)))}"]
    full_dir, race_dir = os.path.join(root, "grid"), os.path.join(root, "race")
    full_s = run_sweep([f"--workdir={full_dir}", *common])
    race_s = run_sweep([f"--workdir={race_dir}", *common, "--race",
                        f"--min_seeds={args.min_seeds}", f"--max_seeds={args.max_seeds}",
                        f"--race_alpha={args.race_alpha}"])
    best, means = grid_best(full_dir)
    content = json.load(open(os.path.join(race_dir, race.RACE_JSON)))
    if content["winner"]:
        race_pick = content["winner"]
    else:  # Several left: the best mean over the seeds the race ran.
        race_pick = max(content["alive"], key=lambda c: means.get(c, -math.inf))
    epochs = content["trial_epochs"]
    result = {"grid_best": best, "race_pick": race_pick, "same": best == race_pick,
              "race_winner": content["winner"], "race_rounds": content["round"],
              "dropped": [(d["configuration"], d["round"]) for d in content["dropped"]],
              "trial_epochs_race": epochs["race"], "trial_epochs_grid": epochs["full_grid"],
              "trial_epochs_ratio": epochs["ratio"], "wall_race_s": race_s,
              "wall_grid_s": full_s, "wall_ratio": race_s / full_s, "grid_means": means}
    print("| | full grid | race |\n|---|---|---|")
    print(f"| pick | {best} | {race_pick} ({'winner' if content['winner'] else 'best left'}) |")
    print(f"| trial-epochs | {epochs['full_grid']} | {epochs['race']} "
          f"({100 * epochs['ratio']:.0f} %) |")
    print(f"| wall | {full_s:.0f} s | {race_s:.0f} s ({100 * race_s / full_s:.0f} %) |")
    print(f"\nsame pick: {best == race_pick}; dropped: "
          + (", ".join(f"{c} (round {r})" for c, r in result["dropped"]) or "none")
          + f"; folders: {root}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
