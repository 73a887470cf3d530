"""Head phase: custom loop with the frozen-prefix feature cache vs Keras fit().

Each run is one `loops.phases.train(cfg)` call in a fresh child
process (a fresh run directory, nothing cached from an earlier run); runs
alternate custom, fit, custom, fit, ... The custom time is the whole call, so
it includes the one-time forward pass that fills the cache (epoch 1) as well
as data checks, model build, validation and checkpoints, exactly as for fit.

    python bench/head_cache.py [--backbone vgg16] [--epochs 10] [--examples 500]
        [--image_size 128] [--repeats 1] [--variants custom,fit]

Any --backbone of tapefit works (weights=none): for residual networks (resnet50,
efficientnet_b0, ...) the cache cuts at the pooled features, a dominator of the graph.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=500,
                        help="max photos per split (train 500, validation 200 carved)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", default="custom,fit",
                        help="custom (cache), custom_nocache, custom_auto and custom_bf16 "
                        "(the cache with --feature_precision=auto, bfloat16), fit")
    parser.add_argument("--feature_cache", default="auto")
    parser.add_argument("--tensorboard", action="store_true",
                        help="keep the TensorBoard hook on (off: pure compute)")
    parser.add_argument("--backup", action=argparse.BooleanOptionalAction, default=True,
                        help="per-epoch backups (--backup, tapefit's default) in both loops")
    return parser.parse_args(argv)


def worker(args):
    workdir = common.fresh_workdir("head")
    try:
        cfg = common.phase_config(args, args.worker, workdir, phase="head",
                                  epochs=args.epochs, backup=args.backup)
        common.emit(common.timed_phase(cfg))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(runs):
    """Per-variant medians over its runs."""
    later = [common.median(r["epoch_s"][1:]) for r in runs]
    return {
        "total": common.median([r["total_s"] for r in runs]),
        "total_range": common.spread([r["total_s"] for r in runs]),
        "setup": common.median([r["setup_s"] for r in runs]),
        "epoch1": common.median([r["epoch_s"][0] for r in runs]),
        "later": common.median(later),
        "epochs_sum": common.median([sum(r["epoch_s"]) for r in runs]),
        "after": common.median([r["after_s"] for r in runs]),
        "cpu_total": common.median([r["total_cpu_s"] for r in runs]),
        "cores": common.median([r["total_cpu_s"] / r["total_s"] for r in runs]),
        "pass_cores": pass_cores(runs),
        "rss": common.median([r["max_rss_mib"] for r in runs]),
        "val_loss": common.median([(r["last_logs"] or {}).get("val_loss") for r in runs]),
    }


def pass_cores(runs) -> str:
    """The cores the frozen pass kept busy (its log line: CPU s / wall s of the process
    during the pass), per split, median over runs; "–" without a feature cache."""
    import re
    per_split = {}
    for r in runs:
        for i, message in enumerate(m for m in r["feature_cache"] if "computed" in m):
            found = re.search(r"([0-9.]+) cores", message)
            if found:
                per_split.setdefault(i, []).append(float(found.group(1)))
    return ", ".join(f"{common.median(v):.2f}" for _, v in sorted(per_split.items())) or "–"


def ratios(runs, stats, passes: int, target: float) -> str:
    """The fit/custom ratios of one invocation, the ceiling and the ratio to it.

    The ceiling is what no cache removes: the set-up both loops pay (data checks,
    model build) and `passes` passes of the frozen layers over the photos (1 for the
    head phase; 2 with flips: each photo and its mirror image), each costing what one
    of fit's later epochs costs (a frozen backbone has no backward pass). So a custom
    run can be at most fit's total / (fit's set-up + `passes` later fit epochs) times
    faster. "ratio / ceiling" is the median of pairs over that ceiling: a frozen pass
    that leaves a core idle, or a stall, shows in that one line."""
    paired = [f["total_s"] / c["total_s"] for c, f in zip(runs["custom"], runs["fit"])]
    ceiling = [f["total_s"] / (f["setup_s"] + passes * common.median(f["epoch_s"][1:]))
               for f in runs["fit"]]
    no_teardown = [(f["total_s"] - f["after_s"]) / (c["total_s"] - c["after_s"])
                   for c, f in zip(runs["custom"], runs["fit"])]
    fraction = common.median(paired) / common.median(ceiling)
    medians = stats["fit"]["total"] / stats["custom"]["total"]
    pairs = ", ".join(f"{r:.2f}" for r in paired)
    return "\n".join([
        f"ratio fit/custom, total wall time: {medians:.2f}x (medians), "
        f"{common.median(paired):.2f}x (median of pairs: {pairs}); target >= {target:g}x",
        f"ratio fit/custom, total minus 'after s' (the end-of-run iterator teardown): "
        f"{common.median(no_teardown):.2f}x (median of pairs)",
        f"ratio fit/custom, total CPU time: "
        f"{stats['fit']['cpu_total'] / stats['custom']['cpu_total']:.2f}x",
        f"ratio fit/custom, epochs 2+: {stats['fit']['later'] / stats['custom']['later']:.1f}x",
        f"ceiling fit/custom, were the custom run only fit's setup + {passes} later fit "
        f"epoch{'s' if passes > 1 else ''}: {common.median(ceiling):.2f}x (median over fit "
        "runs)",
        f"ratio / ceiling: {fraction:.2f}; cores (CPU/wall) custom "
        f"{stats['custom']['cores']:.2f}, fit {stats['fit']['cores']:.2f}; frozen pass "
        f"cores {stats['custom']['pass_cores']} (train, val)"])


def main():
    args = parse_args()
    args.data_dir = common.check_data_dir(args.data_dir)
    if args.worker:
        common.quiet_tf()
        worker(args)
        return
    variants = args.variants.split(",")
    passthrough = common.passthrough_args(sys.argv[1:])
    runs = {v: [] for v in variants}
    for repeat, variant in common.interleaved(variants, args.repeats):
        common.log(f"run {repeat} {variant} ...")
        result = common.run_worker(os.path.abspath(__file__),
                                   passthrough + ["--worker", variant,
                                                  "--data_dir", args.data_dir])
        runs[variant].append(result)
        common.log(f"run {repeat} {variant}: total {result['total_s']:.1f}s, epochs "
                   + " ".join(f"{s:.1f}" for s in result["epoch_s"])
                   + f", max RSS {result['max_rss_mib']:.0f} MiB, {result['feature_cache']}")
    stats = {v: summarize(runs[v]) for v in variants}
    rows = [[v, len(runs[v]), f"{s['total']:.1f}", s["total_range"], f"{s['setup']:.1f}",
             f"{s['epoch1']:.1f}", f"{s['later']:.2f}", f"{s['epochs_sum']:.1f}",
             f"{s['after']:.1f}", f"{s['cpu_total']:.0f}", f"{s['cores']:.2f}",
             s["pass_cores"],
             f"{s['rss']:.0f}", f"{s['val_loss']:.4f}"] for v, s in stats.items()]
    text = (f"{args.backbone} (weights=none) at {args.image_size}², head phase, "
            f"{args.epochs} epochs, batch {args.batch_size}, max {args.examples} photos per "
            f"split, feature_cache={args.feature_cache} for custom, TensorBoard "
            f"{'on' if args.tensorboard else 'off'}, backups {'on' if args.backup else 'off'}; "
            f"one child process per run, runs "
            f"interleaved, {args.repeats} run(s) per variant.\n\n")
    text += common.table(
        ["variant", "runs", "total s (median)", "total range", "setup s", "epoch 1 s",
         "epochs 2+ s (median)", "sum of epochs s", "after s", "CPU s total",
         "cores (CPU/wall)", "frozen pass cores (train, val)", "max RSS MiB",
         "final val_loss"], rows)
    if "custom" in stats and "fit" in stats:
        text += "\n\n" + ratios(runs, stats, passes=1, target=8)
    for other in (v for v in variants if v in common.VARIANT_PRECISION and "custom" in stats):
        paired = [o["total_s"] / c["total_s"] for c, o in zip(runs["custom"], runs[other])]
        text += (f"\n{other}/custom, total wall time: {common.median(paired):.3f} (median of "
                 "pairs: " + ", ".join(f"{r:.3f}" for r in paired) + "); the choice: "
                 + "; ".join(sorted({m.split("(", 1)[0].split(": ", 1)[1].strip()
                                     for r in runs[other] for m in r["feature_cache"]
                                     if "forward pass in" in m})))
    common.report("head_cache: custom loop + feature cache vs fit()", text,
                  {"args": vars(args), "runs": runs}, args.json)


if __name__ == "__main__":
    main()
