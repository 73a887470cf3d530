"""Finetune phase: custom loop with the frozen-prefix feature cache vs Keras fit().

Both runs start from the same head weights (written once by a child process:
the head model as built, VGG16 weights=none) and unfreeze from
`--unfreeze_from` (block5_conv1). Each run is one `phases.train(cfg)`
call in a fresh child process; runs alternate custom, fit, custom, fit, ...
The figure of merit is the per-epoch wall time after epoch 1 (epoch 1 of the
custom loop includes the one-time forward pass through the frozen prefix).

    python bench/finetune_cache.py [--epochs 3] [--examples 500] [--image_size 128]
        [--repeats 2]
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
    parser.add_argument("--unfreeze_from", default="block5_conv1")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=500,
                        help="max photos per split (train 500, validation 200 carved)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="custom,fit",
                        help="custom (cache), custom_nocache, fit")
    parser.add_argument("--feature_cache", default="auto")
    parser.add_argument("--tensorboard", action="store_true",
                        help="keep the TensorBoard hook on (off: pure compute)")
    parser.add_argument("--head_weights", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_head_weights(args, path):
    """The head-phase model as built (seeded), saved as the finetune starting point."""
    from tapefit.loops import train_lib
    from tapefit.loops.training.strategy import make_strategy
    classes = [e.name for e in os.scandir(os.path.join(args.data_dir, "train")) if e.is_dir()]
    cfg = common.phase_config(args, "custom", os.path.dirname(path), phase="head")
    model = train_lib.build(cfg, make_strategy(cfg.strategy), len(classes))
    model.save_weights(path)


def worker(args):
    if args.worker == "prep":
        write_head_weights(args, args.head_weights)
        common.emit({})
        return
    workdir = common.fresh_workdir("finetune")
    try:
        cfg = common.phase_config(args, args.worker, workdir, phase="finetune",
                                  epochs=args.epochs, unfreeze_from=args.unfreeze_from,
                                  init_checkpoint=args.head_weights)
        common.emit(common.timed_phase(cfg))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(runs):
    return {
        "total": common.median([r["total_s"] for r in runs]),
        "setup": common.median([r["setup_s"] for r in runs]),
        "epoch1": common.median([r["epoch_s"][0] for r in runs]),
        "later": common.median([s for r in runs for s in r["epoch_s"][1:]]),
        "later_range": common.spread([s for r in runs for s in r["epoch_s"][1:]]),
        "later_cpu": common.median([s for r in runs for s in r["epoch_cpu_s"][1:]]),
        "cpu_total": common.median([r["total_cpu_s"] for r in runs]),
        "rss": common.median([r["max_rss_mib"] for r in runs]),
        "val_loss": common.median([(r["last_logs"] or {}).get("val_loss") for r in runs]),
    }


def main():
    args = parse_args()
    args.data_dir = common.check_data_dir(args.data_dir)
    if args.worker:
        common.quiet_tf()
        worker(args)
        return
    variants = args.variants.split(",")
    passthrough = common.passthrough_args(sys.argv[1:])
    passthrough += ["--data_dir", args.data_dir]
    prep_dir = common.fresh_workdir("finetune-head")
    head_weights = os.path.join(prep_dir, "head.weights.h5")
    try:
        common.run_worker(os.path.abspath(__file__),
                          passthrough + ["--worker", "prep", "--head_weights", head_weights])
        runs = {v: [] for v in variants}
        for repeat, variant in common.interleaved(variants, args.repeats):
            common.log(f"run {repeat} {variant} ...")
            result = common.run_worker(
                os.path.abspath(__file__),
                passthrough + ["--worker", variant, "--head_weights", head_weights])
            runs[variant].append(result)
            common.log(f"run {repeat} {variant}: total {result['total_s']:.1f}s, epochs "
                       + " ".join(f"{s:.1f}" for s in result["epoch_s"])
                       + f", max RSS {result['max_rss_mib']:.0f} MiB, "
                       f"{result['feature_cache']}")
    finally:
        shutil.rmtree(prep_dir, ignore_errors=True)
    stats = {v: summarize(runs[v]) for v in variants}
    rows = [[v, len(runs[v]), f"{s['setup']:.1f}", f"{s['epoch1']:.1f}", f"{s['later']:.2f}",
             s["later_range"], f"{s['later_cpu']:.1f}", f"{s['total']:.1f}",
             f"{s['cpu_total']:.0f}", f"{s['rss']:.0f}", f"{s['val_loss']:.4f}"]
            for v, s in stats.items()]
    text = (f"{args.backbone} (weights=none) at {args.image_size}², finetune from "
            f"{args.unfreeze_from}, {args.epochs} epochs, batch {args.batch_size}, max "
            f"{args.examples} photos per split, feature_cache={args.feature_cache} for custom, "
            f"TensorBoard {'on' if args.tensorboard else 'off'}; one child process per run, "
            f"runs interleaved, {args.repeats} run(s) per variant.\n\n")
    text += common.table(
        ["variant", "runs", "setup s", "epoch 1 s", "epochs 2+ s (median)", "epochs 2+ range",
         "epochs 2+ CPU s", "total s", "CPU s total", "max RSS MiB", "final val_loss"], rows)
    if "custom" in stats and "fit" in stats:
        paired = [common.median(f["epoch_s"][1:]) / common.median(c["epoch_s"][1:])
                  for c, f in zip(runs["custom"], runs["fit"])]
        text += (f"\n\nratio fit/custom, per epoch after epoch 1: "
                 f"{stats['fit']['later'] / stats['custom']['later']:.2f}x (medians), "
                 f"{common.median(paired):.2f}x (median of pairs); target >= 3x")
        text += (f"\nratio fit/custom, per epoch after epoch 1, CPU time: "
                 f"{stats['fit']['later_cpu'] / stats['custom']['later_cpu']:.2f}x")
        text += (f"\nratio fit/custom, epoch 1: "
                 f"{stats['fit']['epoch1'] / stats['custom']['epoch1']:.2f}x; total: "
                 f"{stats['fit']['total'] / stats['custom']['total']:.2f}x")
    common.report("finetune_cache: custom loop + feature cache vs fit()", text,
                  {"args": vars(args), "runs": runs}, args.json)


if __name__ == "__main__":
    main()
