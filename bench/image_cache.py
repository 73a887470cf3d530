"""Epoch 1 of a second run: decoded-image cache on disk vs decoding vs pre-loaded.

Three ways to feed the same training batches (same photos, order and values):

* decode: `--image_cache=memory`, i.e. what every run did before the disk cache:
  `load_splits` checks every file (decoding it), epoch 1 decodes and resizes
  every photo (later epochs read the in-memory copy);
* cached: `--image_cache=disk` with the cache already written by an earlier run
  (a later phase, an evaluation or a sweep trial on the same data): no file is
  checked, epoch 1 reads the decoded images from disk;
* preloaded: the batches materialised once as float32 tensors in memory
  (`bench/pipeline.py`'s reference; nothing to compute but the step).

Every timed run builds a fresh pipeline (`input_pipeline.load_splits` +
`train_batches`) and trains `--epochs` epochs with `loops.training.custom.CustomLoop`,
runs interleaved after one warm-up run each. "load s" is the `load_splits` call.

    python bench/image_cache.py [--backbone mobilenet] [--image_size 128]
        [--examples 1024] [--epochs 2] [--repeats 3]
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import pipeline  # noqa: E402

VARIANTS = ("decode", "cached", "preloaded")


def parse_args(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--phase", default="head")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--examples", type=int, default=1024,
                        help="training photos (a multiple of --batch_size)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mobilenet_weights", default=common.DEFAULT_MOBILENET_WEIGHTS)
    args = parser.parse_args(argv)
    args.loop = "custom"
    return args


def measure(args):
    from tapefit import input_pipeline
    base = pipeline.make_config(args, common.fresh_workdir("image-cache"))
    configs = {"decode": base.replace(image_cache="memory"),
               "cached": base.replace(image_cache="disk",
                                      image_cache_dir=common.fresh_workdir("image-cache-dir"))}

    def fresh(variant):
        """(batches, load seconds) of a fresh pipeline, as a new run builds it."""
        if variant == "preloaded":
            return preloaded, 0.0
        start = common.now()
        splits = input_pipeline.load_splits(configs[variant])
        load = common.now() - start
        data, _ = input_pipeline.train_batches(splits.train, splits.sizes["train"],
                                               base.batch_size, base.seed)
        return data, load

    _, steps, n, num_classes = pipeline.real_batches(configs["decode"])
    preloaded = pipeline.preloaded_batches(configs["decode"], args.epochs)
    trainer = pipeline.Trainer(base, num_classes)
    out = {v: {"load_s": [], "epoch_s": [], "epoch_cpu_s": [], "input_s": [], "input_cpu_s": []}
           for v in VARIANTS}
    warm = {}
    # Warm-up (tracing first, with preloaded); the cached variant's writes its cache:
    # its epoch 1 against decode's is the cost of writing it (one sample each).
    for variant in ("preloaded", "decode", "cached"):
        data, load = fresh(variant)
        warm[variant] = (load, trainer.run(data, 1, steps)[0][0])
    out["first_run"] = warm
    for repeat, variant in common.interleaved(VARIANTS, args.repeats):
        data, load = fresh(variant)
        seconds, cpu = trainer.run(data, args.epochs, steps)
        out[variant]["load_s"].append(load)
        out[variant]["epoch_s"].append(seconds)
        out[variant]["epoch_cpu_s"].append(cpu)
        common.log(f"{variant} #{repeat}: load {load:.2f} s, epochs "
                   + " ".join(f"{s:.2f}" for s in seconds) + " s")
    for _repeat, variant in common.interleaved(VARIANTS, args.repeats):
        data, _ = fresh(variant)
        start, start_cpu = common.now(), time.process_time()
        for _ in data.take(steps):
            pass
        out[variant]["input_s"].append(common.now() - start)
        out[variant]["input_cpu_s"].append(time.process_time() - start_cpu)
    return out, n, steps


def main():
    args = parse_args()
    args.data_dir = common.check_data_dir(args.data_dir)
    if args.backbone == "mobilenet":
        args.mobilenet_weights = common.check_file(args.mobilenet_weights,
                                                   "--mobilenet_weights")
    common.quiet_tf()
    out, n, steps = measure(args)
    med = common.median
    rows, epoch1 = [], {}
    for variant in VARIANTS:
        r = out[variant]
        epoch1[variant] = [n / s[0] for s in r["epoch_s"]]
        rows.append([variant, f"{med(r['load_s']):.2f}", f"{med(epoch1[variant]):.1f}",
                     common.spread(epoch1[variant]),
                     f"{med([n / s for e in r['epoch_s'] for s in e[1:]] or [0]):.1f}",
                     f"{med([1e3 * c[0] / n for c in r['epoch_cpu_s']]):.2f}",
                     f"{med([n / s for s in r['input_s']]):.0f}",
                     f"{med([1e3 * c / n for c in r['input_cpu_s']]):.3f}"])
    pairs = {v: [a / b for a, b in zip(epoch1[v], epoch1["preloaded"])]
             for v in ("decode", "cached")}
    for variant in ("decode", "cached"):
        rows.append([f"ratio {variant}/preloaded", "",
                     f"{med(epoch1[variant]) / med(epoch1['preloaded']):.3f} "
                     f"(pairs {med(pairs[variant]):.3f})", "", "", "", "", ""])
    weights = "alpha 0.25, real weights" if args.backbone == "mobilenet" else "weights=none"
    text = (f"{args.backbone} ({weights}) at {args.image_size}², {args.phase} phase, custom "
            f"loop, batch {args.batch_size}, {n} photos ({steps} steps), {args.epochs} epochs "
            f"per run, {args.repeats} runs per variant interleaved (after 1 warm-up run "
            "each; the cached variant's warm-up wrote its cache), no validation.\n\n")
    text += common.table(
        ["variant", "load s", "epoch 1 img/s", "epoch 1 range", "epochs 2+ img/s",
         "CPU ms/img epoch 1", "input only epoch 1 img/s", "input only CPU ms/img"], rows)
    warm = out["first_run"]
    text += ("\n\nFirst runs (the warm-ups, one sample each): decode load "
             f"{warm['decode'][0]:.2f} s, epoch 1 {n / warm['decode'][1]:.1f} img/s; "
             f"decode + write the cache: load {warm['cached'][0]:.2f} s, epoch 1 "
             f"{n / warm['cached'][1]:.1f} img/s.")
    text += ("\n\nload s: `load_splits` (listing; without a cache also checking, i.e. "
             "decoding, every file). target: cached/preloaded >= 0.95 in epoch 1")
    common.report("image_cache: epoch 1 of a second run", text,
                  {"args": vars(args), "measure": out}, args.json)


if __name__ == "__main__":
    main()
