"""Head phase with `--augment=flip`: custom loop + flip feature cache vs Keras fit().

As `head_cache.py` (one `phases.train` call per run in a fresh child
process, runs interleaved, whole-call wall time), with horizontal-flip
augmentation: the custom loop caches both outcomes' features of every training
photo (one frozen pass over the photo and its mirror image) and picks per example
and step what the RandomFlip layer draws (loops/caches/flip_features.py); fit() runs the
flip and the whole network on the images every step.

    python bench/flip_cache.py [--backbone vgg16] [--epochs 10] [--examples 500]
        [--image_size 128] [--repeats 1] [--variants custom,fit]
"""
from __future__ import annotations

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import head_cache  # noqa: E402


def worker(args):
    workdir = common.fresh_workdir("flip")
    try:
        cfg = common.phase_config(args, args.worker, workdir, phase="head",
                                  epochs=args.epochs, augment="flip")
        common.emit(common.timed_phase(cfg))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    args = head_cache.parse_args()
    args.data_dir = common.check_data_dir(args.data_dir)
    if args.worker:
        common.quiet_tf()
        worker(args)
        return
    variants = args.variants.split(",")
    passthrough = common.passthrough_args(sys.argv[1:])
    runs = {v: [] for v in variants}
    for repeat, variant in common.interleaved(variants, args.repeats):
        result = common.run_worker(os.path.abspath(__file__),
                                   passthrough + ["--worker", variant,
                                                  "--data_dir", args.data_dir])
        runs[variant].append(result)
        common.log(f"run {repeat} {variant}: total {result['total_s']:.1f}s, epochs "
                   + " ".join(f"{s:.1f}" for s in result["epoch_s"])
                   + f", {result['feature_cache']}")
    stats = {v: head_cache.summarize(runs[v]) for v in variants}
    rows = [[v, len(runs[v]), f"{s['total']:.1f}", s["total_range"], f"{s['setup']:.1f}",
             f"{s['epoch1']:.1f}", f"{s['later']:.2f}", f"{s['after']:.1f}",
             f"{s['cpu_total']:.0f}", f"{s['cores']:.2f}", s["pass_cores"],
             f"{s['rss']:.0f}", f"{s['val_loss']:.4f}"] for v, s in stats.items()]
    text = (f"{args.backbone} (weights=none) at {args.image_size}², head phase, "
            f"--augment=flip, {args.epochs} epochs, batch {args.batch_size}, max "
            f"{args.examples} photos per split, feature_cache={args.feature_cache} for "
            "custom, TensorBoard off; one child process per run, runs interleaved, "
            f"{args.repeats} run(s) per variant.\n\n")
    text += common.table(
        ["variant", "runs", "total s (median)", "total range", "setup s", "epoch 1 s",
         "epochs 2+ s (median)", "after s", "CPU s total", "cores (CPU/wall)",
         "frozen pass cores (train, val)", "max RSS MiB", "final val_loss"], rows)
    if "custom" in stats and "fit" in stats:
        # The training photos pass twice (each and its mirror image): set-up + two passes.
        text += "\n\n" + head_cache.ratios(runs, stats, passes=2, target=5)
    common.report("flip_cache: head phase with --augment=flip, custom + cache vs fit()", text,
                  {"args": vars(args), "runs": runs}, args.json)


if __name__ == "__main__":
    main()
