"""A head-phase sweep (`sweep.py`, one process) vs the same trials as separate
`train.py --loop=fit` runs.

Six trials: 3 learning rates × 2 seeds, 3 epochs, VGG16 at 128², 500 photos per split
of ../shared. The backbone is "pretrained" as in a real study: its weights come from one
file (`--weights=PATH`) that every trial and fit run loads, so they do not depend on
`--seed` (ImageNet's cannot be downloaded here: the file holds seeded random weights,
which costs the same to run). Each side is timed from outside, as a user would
see it: the wall time of its command(s), Python and TensorFlow start-up included,
and the CPU time of those processes (all threads).

    python bench/sweep.py [--epochs 3] [--examples 500] [--image_size 128]
        [--learning_rates 1e-3,3e-3,1e-2] [--seeds 0,1] [--repeats 1] [--variants sweep,fit]

Issue 22's "12-trial study faster than one fit() run" (4 rates x 3 seeds, 10 epochs; the
fit side is one `train.py --loop=fit` run of the same phase, its ratio printed last):

    python bench/sweep.py --learning_rates 1e-4,1e-3,3e-3,1e-2 --seeds 0,1,2 --epochs 10 \
        --sample 1
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=500, help="max photos per split")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning_rates", default="1e-3,3e-3,1e-2")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", default="sweep,fit", help="sweep (one sweep.py), fit "
                        "(one train.py --loop=fit per trial), custom (one train.py per trial)")
    parser.add_argument("--sample", type=int, default=0,
                        help="fit/custom: run only the first N of the per-trial commands and "
                             "scale their time by trials/N (an estimate, marked as such; for "
                             "slow machines: the per-trial runs all do the same work)")
    return parser.parse_args(argv)


def backbone_weights_file(args) -> str:
    """A weights file of the backbone without top (seeded random values), made once."""
    path = os.path.join(common.fresh_workdir("weights"), f"{args.backbone}_notop.weights.h5")
    code = ("import keras, sys; keras.utils.set_random_seed(0); "
            f"m = keras.applications.{ {'vgg16': 'VGG16', 'vgg19': 'VGG19'}[args.backbone] }("
            f"include_top=False, weights=None, input_shape=({args.image_size}, "
            f"{args.image_size}, 3)); m.save_weights(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, path], check=True, capture_output=True)
    return path


def base_flags(args) -> list[str]:
    return [f"--backbone={args.backbone}", f"--weights={args.weights}",
            f"--image_size={args.image_size}",
            f"--data_dir={args.data_dir}", f"--max_examples_per_split={args.examples}",
            f"--batch_size={args.batch_size}", f"--epochs={args.epochs}", "--verbose=0"]


def timed(commands, log) -> dict:
    """Runs the commands one after the other; wall and CPU time of them all."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = common.now()
    walls = []
    for cmd in commands:
        t0 = common.now()
        proc = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True)
        walls.append(common.now() - t0)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
        log(f"  {walls[-1]:.1f} s: {' '.join(cmd[1:3])} ...")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": common.now() - start, "cpu_s": cpu, "command_wall_s": walls}


def run_variant(args, variant: str) -> dict:
    workdir = common.fresh_workdir(f"sweep-{variant}")
    rates = args.learning_rates.split(",")
    seeds = args.seeds.split(",")
    python = sys.executable
    if variant == "sweep":
        commands = [[python, "sweep.py", f"--workdir={workdir}", "--phases=head",
                     f"--axis=learning_rate={args.learning_rates}", f"--seeds={args.seeds}",
                     "--noprogress", *base_flags(args)]]
    else:
        loop = "fit" if variant == "fit" else "custom"
        commands = [[python, "train.py", "--phase=head", f"--loop={loop}",
                     f"--workdir={os.path.join(workdir, f'lr{lr}-s{seed}')}",
                     f"--learning_rate={lr}", f"--seed={seed}", *base_flags(args)]
                    for seed in seeds for lr in rates]
    trials = len(rates) * len(seeds)
    if variant != "sweep" and args.sample:
        commands = commands[:args.sample]
    result = timed(commands, common.log)
    result["one_run_wall_s"] = result["command_wall_s"][0]
    if variant != "sweep" and len(commands) < trials:  # --sample: scaled, an estimate.
        result["sampled"] = f"{len(commands)} of {trials} runs, scaled"
        result["wall_s"] *= trials / len(commands)
        result["cpu_s"] *= trials / len(commands)
    result["trials"] = trials
    result["val_loss"] = final_val_losses(workdir, variant)
    if variant == "sweep":
        result["trial_wall_s"] = trial_walls(workdir)
    return result


def trial_walls(workdir) -> list[float]:
    """Each sweep trial's head-phase seconds (its status.json), slowest first: the trial
    that computed the frozen features first, then those that loaded them."""
    walls = []
    trials = os.path.join(workdir, "trials")
    for name in os.listdir(trials):
        try:
            with open(os.path.join(trials, name, "status.json")) as f:
                walls.append(float(json.load(f)["wall_s"]["head"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(walls, reverse=True)


def final_val_losses(workdir, variant):
    """The last val_loss of every trial (a sanity check that both sides trained alike)."""
    import csv
    out = []
    for root, _, names in sorted(os.walk(workdir)):
        if "log.csv" in names and os.path.basename(root) == "head":
            with open(os.path.join(root, "log.csv")) as f:
                rows = list(csv.DictReader(f))
            if not rows:
                common.log(f"  no epochs in {root}/log.csv: {sorted(os.listdir(root))}")
                continue
            out.append(float(rows[-1]["val_loss"]))
    return sorted(out)


def main():
    args = parse_args()
    args.data_dir = common.check_data_dir(args.data_dir)
    args.weights = backbone_weights_file(args)
    variants = args.variants.split(",")
    runs = {v: [] for v in variants}
    for repeat, variant in common.interleaved(variants, args.repeats):
        common.log(f"run {repeat} {variant} ...")
        runs[variant].append(run_variant(args, variant))
    rows = []
    for variant in variants:
        walls = [r["wall_s"] for r in runs[variant]]
        cpus = [r["cpu_s"] for r in runs[variant]]
        trials = runs[variant][0]["trials"]
        sampled = runs[variant][0].get("sampled")
        rows.append([variant + (f" ({sampled})" if sampled else ""), len(walls),
                     f"{common.median(walls):.1f}", common.spread(walls),
                     f"{common.median(walls) / trials:.1f}", f"{common.median(cpus):.0f}",
                     ", ".join(f"{v:.4f}" for v in runs[variant][-1]["val_loss"])])
    text = common.table(["variant", "runs", "total wall s (median)", "range", "wall s / trial",
                         "CPU s", "final val_loss of the trials (sorted)"], rows)
    walls = runs["sweep"][-1].get("trial_wall_s") if "sweep" in runs else None
    if walls:
        total = common.median([r["wall_s"] for r in runs["sweep"]])
        text += (f"\n\nWhere the study's {total:.0f} s went: its slowest trial "
                 f"{walls[0]:.0f} s (the one that computed the frozen features), the other "
                 f"{len(walls) - 1} trials {sum(walls[1:]):.0f} s together (median "
                 f"{common.median(walls[1:]) if len(walls) > 1 else 0:.1f} s), and "
                 f"{total - sum(walls):.0f} s outside the trials (start-up, fingerprint "
                 f"and image cache, report).")
    if "sweep" in runs and "fit" in runs:
        wall = common.median([r["wall_s"] for r in runs["fit"]]) / common.median(
            [r["wall_s"] for r in runs["sweep"]])
        cpu = common.median([r["cpu_s"] for r in runs["fit"]]) / common.median(
            [r["cpu_s"] for r in runs["sweep"]])
        pairs = [f["wall_s"] / s["wall_s"]
                 for f, s in zip(runs["fit"], runs["sweep"], strict=True)]
        one = common.median([r["one_run_wall_s"] for r in runs["fit"]]) / common.median(
            [r["wall_s"] for r in runs["sweep"]])
        note = runs["fit"][0].get("sampled")
        note = f" (fit: {note}: an estimate)" if note else ""
        text += (f"\n\n```\nratio fit/sweep{note}, total wall time: {wall:.2f}x (medians), "
                 f"{common.median(pairs):.2f}x (median of pairs); target >= 8x\n"
                 f"ratio fit/sweep, total CPU time: {cpu:.2f}x\n"
                 f"ratio (one fit run) / (whole study), wall: {one:.2f}x; target >= 1.0\n```")
    text += (f"\n\n{len(args.learning_rates.split(','))} learning rates × "
             f"{len(args.seeds.split(','))} seeds, head phase, {args.epochs} epochs, "
             f"{args.backbone} (one backbone weights file, seeded random) at "
             f"{args.image_size}², max {args.examples} photos "
             f"per split, batch {args.batch_size}; load average at the end "
             f"{common.loadavg():.1f}.")
    common.report("sweep", text, runs, args.json)
    print(json.dumps({v: [r["command_wall_s"] for r in rs] for v, rs in runs.items()}))


if __name__ == "__main__":
    main()
